"""Localization with trained models: global-to-local FCN, one-shot agent, baselines."""
