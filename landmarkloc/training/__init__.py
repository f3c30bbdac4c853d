"""Trainers for the FCN and the RPR projection network (single process or torchrun DDP)."""
