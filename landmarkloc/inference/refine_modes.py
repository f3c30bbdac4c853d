"""The one-shot refinement modes, apart from the torch code so that the command line's --help stays fast."""

REFINE_MODES = ("none", "affine", "ncc", "local-affine")
DEFAULT_REFINE_MODE = "local-affine"  # chosen on the IXI validation split (docs/oneshot.md)
