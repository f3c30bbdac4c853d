<<<<<<< HEAD
"""Localization with trained models (global-to-local FCN, one-shot agent)."""
=======
"""Localization with trained models: global-to-local FCN, one-shot agent, baselines."""
>>>>>>> main
