"""Target encoding, loss and vote aggregation of the FCN (pure torch, no images)."""

import math

import numpy as np
import pytest
import torch

from landmarkloc.inference.fcn_votes import summarize_votes
from landmarkloc.networks.fcn_encoding import (
    VARIANTS,
    cell_centres,
    fcn_targets,
    get_variant,
    inverse_log,
    log_transform,
)
from landmarkloc.training.fcn_loss import fcn_loss

RLOGC = get_variant("R_log+C")


def test_log_transform_is_signed_log10_and_invertible():
    d = torch.tensor([-120.0, -3.0, -0.2, 0.0, 0.5, 9.0, 99.0])
    y = log_transform(d)
    assert torch.allclose(y[-1], torch.tensor(2.0))
    assert torch.allclose(y[1], -torch.log10(torch.tensor(4.0)))
    assert torch.allclose(inverse_log(y), d, atol=1e-4)


def test_cell_centres_are_patch_centres_in_itk_order():
    c = cell_centres((2, 3), 4)  # array order (j, i): 3 cells along i, 2 along j
    assert c.shape == (2, 2, 3)
    # cell (i=2, j=1) covers voxels i 8..11, j 4..7: centre (9.5, 5.5)
    assert c[:, 1, 2].tolist() == [9.5, 5.5]


def test_targets_mark_the_one_cell_containing_the_landmark():
    lms = torch.tensor([[9.2, 5.6, 1.0], [100.0, 2.0, 2.0], [math.nan] * 3])
    cls, reg, annotated = fcn_targets(lms, (2, 2, 3), 4, RLOGC)
    assert annotated.tolist() == [True, True, False]
    assert cls[0].sum() == 1 and cls[0, 0, 1, 2] == 1  # k 0, j 1, i 2
    assert cls[1].sum() == 0  # outside the input: no positive cell
    assert cls[2].sum() == 0
    # each cell's displacement points at the landmark
    centres = cell_centres((2, 2, 3), 4)
    back = centres + inverse_log(reg[1])
    assert torch.allclose(back, lms[1].reshape(3, 1, 1, 1).expand_as(back), atol=1e-3)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_perfect_predictions_give_exact_estimates(name):
    variant = get_variant(name)
    lms = torch.tensor([[13.0, 7.3], [2.5, 25.1]])
    grid = (4, 4)
    cls, reg, _ = fcn_targets(lms, grid, 8, variant)
    logits = (cls * 2 - 1) * 30.0
    summary = summarize_votes(logits, reg, 8, variant, spacing=(0.5, 0.5))
    if variant.regression is not None:
        np.testing.assert_allclose(summary.estimate, lms.numpy(), atol=1e-3)
        assert np.all(summary.spread_mm < 1e-3)
    else:  # classification only: the centre of the positive patch
        np.testing.assert_allclose(summary.estimate, [[11.5, 3.5], [3.5, 27.5]], atol=1e-3)
    if variant.classification:
        np.testing.assert_allclose(summary.confidence, 1.0, atol=1e-6)


def test_confidence_is_low_when_no_cell_claims_the_landmark():
    lms = torch.tensor([[100.0, 100.0, 100.0]])  # far outside a 16^3 input
    cls, reg, _ = fcn_targets(lms, (2, 2, 2), 8, RLOGC)
    logits = torch.full_like(cls, -6.0)  # p = 0.0025 everywhere
    summary = summarize_votes(logits, reg, 8, RLOGC, spacing=(1, 1, 1))
    assert summary.confidence[0] < 0.05


def test_loss_is_zero_for_perfect_regression_and_ignores_unannotated_landmarks():
    lms = torch.tensor([[3.0, 4.0], [math.nan, math.nan]])
    cls, reg, annotated = fcn_targets(lms, (4, 4), 4, RLOGC)
    logits = (cls * 2 - 1) * 50.0
    total, parts = fcn_loss(logits[None], reg[None], cls[None], reg[None], annotated[None], RLOGC, alpha=2.0)
    assert parts["regression"] < 1e-6 and parts["classification"] < 1e-6
    wrong = reg.clone()
    wrong[1] += 5.0  # the unannotated landmark's prediction does not matter
    total2, _ = fcn_loss(logits[None], wrong[None], cls[None], reg[None], annotated[None], RLOGC, alpha=2.0)
    assert float(total2) < 1e-6
    wrong[0] += 1.0
    total3, parts3 = fcn_loss(logits[None], wrong[None], cls[None], reg[None], annotated[None], RLOGC, 2.0)
    assert parts3["regression"] == pytest.approx(1.0, abs=1e-5)
    only_c = get_variant("C")
    total4, parts4 = fcn_loss(logits[None], wrong[None], cls[None], reg[None], annotated[None], only_c, 2.0)
    assert "regression" not in parts4 and float(total4) < 1e-6
