"""From FCN outputs to landmark estimates with a confidence.

Every output cell votes for a landmark position: its patch centre plus the
predicted displacement. The estimate is the posterior-weighted average of all
votes (Noothout et al. 2020); the regression-only variants weigh all votes
equally and the classification-only variant votes with the patch centres.

Beyond the paper, two numbers tell a user how far to trust an estimate:

* ``confidence``: the classification posterior mass of the cells near the
  estimate, clipped to 1. The posteriors of a calibrated classifier sum to the
  expected number of patches that contain the landmark, so this is close to 1
  when the landmark is in view and close to 0 when it is not (e.g. outside the
  field of view). Without a classification head: the fraction of votes that
  land near the estimate.
* ``spread_mm``: the weighted RMS distance of the votes from the estimate in mm.

Points are continuous indices in ITK order; grids are indexed [..., k, j, i]
(see :mod:`landmarkloc.networks.fcn_encoding`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from landmarkloc.networks.fcn_encoding import Variant, cell_centres, inverse_log


@dataclass
class VoteSummary:
    """Per-landmark results of one network pass over one (sub-)image."""

    estimate: np.ndarray  # (L, D) continuous ITK indices of the network input
    confidence: np.ndarray  # (L,)
    spread_mm: np.ndarray  # (L,)
    probability: torch.Tensor  # (L, *grid) classification posteriors (ones without a classifier)
    votes: np.ndarray  # (L, N, D) vote positions, continuous indices
    weights: np.ndarray  # (L, N) vote weights
    members_mm: np.ndarray | None = None  # (L,) RMS distance of ensemble members' estimates from their mean

    def rows(self, rows) -> VoteSummary:
        """The summary of some landmarks only."""
        rows = list(rows)
        return VoteSummary(self.estimate[rows], self.confidence[rows], self.spread_mm[rows], self.probability[rows],
                           self.votes[rows], self.weights[rows],
                           None if self.members_mm is None else self.members_mm[rows])


def cast_votes(class_logits: torch.Tensor, displacement: torch.Tensor, patch_size: int, variant: Variant):
    """Vote positions (L, N, D), weights (L, N) and posteriors (L, *grid) of one image."""
    n, ndim = displacement.shape[:2]
    grid = tuple(displacement.shape[2:])
    centres = cell_centres(grid, patch_size, device=displacement.device)  # (D, *grid)
    if variant.regression == "log":
        offsets = inverse_log(displacement.float())
    elif variant.regression == "linear":
        offsets = displacement.float()
    else:
        offsets = torch.zeros_like(displacement, dtype=torch.float32)
    positions = (centres[None] + offsets).reshape(n, ndim, -1).transpose(1, 2)  # (L, N, D)
    if variant.classification:
        prob = torch.sigmoid(class_logits.float())
    else:
        prob = torch.ones((n, *grid), dtype=torch.float32, device=displacement.device)
    return positions, prob.reshape(n, -1), prob


def summarize_votes(class_logits: torch.Tensor, displacement: torch.Tensor, patch_size: int,
                    variant: Variant, spacing) -> VoteSummary:
    """Weighted-average estimate, confidence and spread for all landmarks of one image.

    ``class_logits`` (L, *grid), ``displacement`` (L, D, *grid) for one image;
    ``spacing`` (D,) of the network input grid, for the spread in mm.
    """
    positions, weights, prob = cast_votes(class_logits, displacement, patch_size, variant)
    ndim = positions.shape[2]
    total = weights.sum(dim=1)  # (L,)
    estimate = (positions * weights[..., None]).sum(dim=1) / total.clamp_min(1e-12)[:, None]
    estimate = torch.where(total[:, None] > 0, estimate, torch.full_like(estimate, float("nan")))
    spacing_t = torch.as_tensor(np.asarray(spacing, dtype=np.float32), device=positions.device)
    offsets_mm = (positions - estimate[:, None]) * spacing_t
    sq = (offsets_mm ** 2).sum(dim=2)  # (L, N)
    spread = torch.sqrt((sq * weights).sum(dim=1) / total.clamp_min(1e-12))

    centres = cell_centres(prob.shape[1:], patch_size, device=positions.device)
    centres = centres.reshape(ndim, -1).T  # (N, D)
    near_radius = patch_size * math.sqrt(ndim)  # voxels: covers the 2^D cells around any point
    near = ((centres[None] - estimate[:, None]) ** 2).sum(dim=2) <= near_radius ** 2  # (L, N)
    if variant.classification:
        confidence = (weights * near).sum(dim=1).clamp(max=1.0)
    else:
        vote_near = ((positions - estimate[:, None]) ** 2).sum(dim=2) <= near_radius ** 2
        confidence = vote_near.float().mean(dim=1)
    return VoteSummary(
        estimate=estimate.double().cpu().numpy(),
        confidence=confidence.cpu().numpy().astype(np.float64),
        spread_mm=spread.cpu().numpy().astype(np.float64),
        probability=prob,
        votes=positions.cpu().numpy(),
        weights=weights.cpu().numpy(),
    )


def combine_members(summary: VoteSummary, members: int, spacing) -> VoteSummary:
    """One summary per landmark from an ensemble's (members x L) rows of the same sub-images.

    The estimate is the mean of the members' estimates; confidence, spread and
    posteriors are averaged; the votes of all members are kept (weights divided
    by the number of members). ``members_mm`` is how far the members' estimates
    lie from their mean (RMS, mm): independently trained networks that disagree
    on a sub-image signal a point not to trust.
    """
    if members <= 1:
        return summary
    n = summary.estimate.shape[0] // members
    est = summary.estimate.reshape(members, n, -1)
    mean = est.mean(axis=0)  # undefined (NaN) where a member has no estimate, as for a single network
    offsets = (est - mean[None]) * np.asarray(spacing, dtype=np.float64)
    members_mm = np.sqrt((offsets ** 2).sum(axis=2).mean(axis=0))
    grid = summary.probability.shape[1:]
    votes = summary.votes.reshape(members, n, *summary.votes.shape[1:]).transpose(1, 0, 2, 3)
    weights = summary.weights.reshape(members, n, -1).transpose(1, 0, 2)
    return VoteSummary(
        estimate=mean,
        confidence=summary.confidence.reshape(members, n).mean(axis=0),
        spread_mm=summary.spread_mm.reshape(members, n).mean(axis=0),
        probability=summary.probability.reshape(members, n, *grid).mean(dim=0),
        votes=votes.reshape(n, -1, votes.shape[-1]),
        weights=weights.reshape(n, -1) / members,
        members_mm=members_mm,
    )
