"""The FCN's training loss: L1 on the (log-)displacements plus alpha x BCE on the presence maps.

The targets come from :func:`landmarkloc.networks.fcn_encoding.fcn_targets`.
"""

from __future__ import annotations

import torch.nn.functional as F

from landmarkloc.networks.fcn_encoding import Variant


def fcn_loss(class_logits, displacement, class_target, regression_target, annotated, variant: Variant,
             alpha: float):
    """``L1(displacement) + alpha * BCE(classification)`` over annotated landmarks.

    Shapes: logits/class_target (B, L, *grid); displacement/regression_target
    (B, L, D, *grid); annotated (B, L). Returns ``(total, parts)`` with the
    detached regression and classification terms in ``parts``.
    """
    mask = annotated.to(class_logits.dtype)
    grid_elems = class_target[0, 0].numel()
    denom = mask.sum().clamp_min(1.0)
    total = class_logits.new_zeros(())
    parts = {}
    if variant.regression is not None:
        l1 = (displacement.float() - regression_target).abs()
        per_lm = l1.flatten(2).mean(dim=2)  # (B, L)
        reg = (per_lm * mask).sum() / denom
        total = total + reg
        parts["regression"] = float(reg.detach())
    if variant.classification:
        bce = F.binary_cross_entropy_with_logits(class_logits.float(), class_target, reduction="none")
        per_lm = bce.flatten(2).sum(dim=2) / grid_elems
        cls = (per_lm * mask).sum() / denom
        total = total + alpha * cls
        parts["classification"] = float(cls.detach())
    return total, parts
