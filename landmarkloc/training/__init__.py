"""Trainers and training-target construction (single process or torchrun DDP)."""
