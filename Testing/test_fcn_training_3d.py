"""A tiny 3D FCN trained here localizes generated landmarks within one voxel (oblique, flipped volume)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fcn_helpers import TINY_GLOBAL, TINY_LOCAL, write_blob_dataset

from landmarkloc.geometry.frames import ImageGeometry
from landmarkloc.inference.fcn import Localizer
from landmarkloc.io.datasets import load_dataset
from landmarkloc.training.fcn import train_config, train_fcn
from landmarkloc.training.fcn_sampling import AugmentConfig

SPACING = 2.0
SIZE = (32, 32, 24)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fcn3d")
    cases = write_blob_dataset(root / "train", 16, SIZE, SPACING, seed=5)
    cfg = train_config("compact", 3, iterations=ITERATIONS, validate_every=ITERATIONS // 3, crop_size=32,
                       intensity="ct", spacing=(SPACING,) * 3, global_overrides=TINY_GLOBAL,
                       local_overrides=TINY_LOCAL, augment=AugmentConfig(enabled=False))
    train_fcn(load_dataset(root / "train"), root / "model", cfg, quiet=True)
    return Localizer.from_file(root / "model.json", "cpu"), cases


ITERATIONS = 1300


def test_localizes_oblique_flipped_volumes_within_one_voxel(trained):
    """On the images it was trained on (held-out generalization is tested in 2D, where training is cheap)."""
    localizer, cases = trained
    errors = []
    for path, truth in cases:
        image = sitk.ReadImage(str(path))
        assert np.linalg.det(ImageGeometry.from_image(image).direction) < 0  # flipped and oblique
        result = localizer.localize(image)
        for lm in result.landmarks:
            assert 0.0 <= lm.confidence <= 1.0 and lm.spread_mm >= 0.0
            errors.append(np.linalg.norm(lm.position - truth[lm.name]))
    assert np.median(errors) < SPACING
    assert np.mean(np.array(errors) < SPACING) >= 0.9
