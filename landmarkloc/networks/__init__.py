"""Network architectures (one code path for 2D and 3D)."""
