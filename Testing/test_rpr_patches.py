"""Pnet shapes, patch extraction/sampling conventions and canonical orientation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from landmarkloc.errors import ModelError
from landmarkloc.geometry.resample import canonical_orientation
from landmarkloc.inference.patches import extract_patches, prepare_volume, sample_patches
from landmarkloc.io.modelfile import save_model
from landmarkloc.networks.pnet import Pnet, PnetConfig, load_rpr_model, relative_offset, rpr_metadata
from landmarkloc.training.rpr import PairSampler, rpr_preset, with_overrides


def _image(shape, spacing, seed=0):
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.uniform(0.2, 1.0, shape).astype(np.float32))
    img.SetSpacing(spacing)
    return img


@pytest.mark.parametrize("ndim,patch", [(3, (16, 24, 16)), (2, (32, 16))])
def test_pnet_outputs_one_latent_per_patch_in_2d_and_3d(ndim, patch):
    net = Pnet(PnetConfig(ndim=ndim, patch_size=patch, base_channels=2, convs_per_block=1))
    x = torch.randn(5, 1, *reversed(patch))
    assert net(x).shape == (5, ndim)
    with pytest.raises(ModelError):
        net(torch.randn(5, 1, *patch[:-1], patch[-1] + 8))


def test_pnet_config_rejects_patches_that_do_not_survive_three_poolings():
    with pytest.raises(ModelError):
        PnetConfig(ndim=3, patch_size=(20, 16, 16))
    with pytest.raises(ModelError):
        PnetConfig(ndim=2, patch_size=(16, 16, 16))


def test_relative_offset_is_bounded_by_radius_and_antisymmetric():
    a, b = torch.randn(4, 3) * 10, torch.randn(4, 3) * 10
    d = relative_offset(a, b, 30.0)
    assert torch.all(d.abs() <= 30.0)
    assert torch.allclose(d, -relative_offset(b, a, 30.0))


@pytest.mark.parametrize("ndim", [2, 3])
def test_extracted_patches_match_slicing_and_identity_sampling(ndim):
    shape = (30, 26, 22)[-ndim:]
    volume = prepare_volume(_image(shape, (2.0,) * ndim), (2.0,) * ndim, "mr", 0.0)
    patch = (16,) * ndim
    centres = np.array([[10, 12, 8][:ndim], [0] * ndim, [21, 25, 29][:ndim]])
    patches = extract_patches(volume, centres, patch)
    inner = tuple(slice(c - 8, c + 8) for c in centres[0][::-1])
    assert torch.equal(patches[0, 0], volume.data[inner])
    # a patch hanging over the border is zero outside the image
    assert float(patches[1, 0][(slice(0, 8),) * ndim].abs().max()) == 0.0
    eye = torch.eye(ndim).expand(len(centres), ndim, ndim)
    sampled = sample_patches(volume.data, torch.tensor(centres, dtype=torch.float32), patch, eye)
    assert torch.allclose(sampled, patches, atol=1e-5)


def test_canonical_orientation_undoes_flips_and_axis_swaps_without_moving_anything():
    img = _image((12, 14, 16), (1.0, 2.0, 3.0))
    img.SetOrigin((5.0, -3.0, 7.0))
    for variant in (sitk.Flip(img, [True, False, True]), sitk.PermuteAxes(img, [2, 0, 1])):
        canon = canonical_orientation(variant)
        assert np.allclose(canon.GetDirection(), np.eye(3).ravel())
        assert np.allclose(canon.GetOrigin(), img.GetOrigin())
        assert np.allclose(canon.GetSpacing(), img.GetSpacing())
        assert np.array_equal(sitk.GetArrayFromImage(canon), sitk.GetArrayFromImage(img))


def test_pairs_are_drawn_in_the_body_and_targets_are_true_offsets():
    # a ramp along x: the patch mean tells the x position, so target offsets can be checked from the patches
    arr = np.zeros((20, 20, 40), dtype=np.float32)
    arr[4:16, 4:16, 4:36] = np.linspace(0.2, 1.0, 32)[None, None, :]
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.0))
    volume = prepare_volume(img, (2.0, 2.0, 2.0), {"name": "raw", "mode": "window", "window": [0, 1]}, 0.1)
    config = with_overrides(rpr_preset("compact"), patch_size=(16, 16, 16), fine_range_mm=6.0)
    for stage in ("coarse", "fine"):
        sampler = PairSampler([volume], config, stage, torch.Generator().manual_seed(1), augment=False)
        for _ in range(20):
            c_s, c_q, target = sampler.pair_centres(volume, torch.eye(3, dtype=torch.float64))
            for c in (c_s, c_q):
                assert bool(volume.body_at(torch.round(c).long()))
            assert torch.allclose(target, (c_s - c_q) * 2.0)
            if stage == "fine":
                assert float(target.abs().max()) <= 6.0
    # with rotation augmentation the target is expressed in the rotated frame: |offset| is preserved
    rotating = with_overrides(config, augmentation=type(config.augmentation)(rotation_deg=30.0, scale=0.0))
    sampler = PairSampler([volume], rotating, "coarse", torch.Generator().manual_seed(2))
    matrix = sampler._transform(3)
    c_s, c_q, target = sampler.pair_centres(volume, matrix)
    assert torch.isclose(target.norm(), ((c_s - c_q) * 2.0).norm())


def test_rpr_model_round_trips_through_safetensors(tmp_path):
    config = PnetConfig(ndim=3, patch_size=(16, 16, 16), base_channels=2, convs_per_block=1)
    net = Pnet(config)
    meta = rpr_metadata(config, "coarse", (4.0, 4.0, 4.0), 100.0, {"name": "mr", "mode": "percentile"}, 0.1)
    save_model(tmp_path / "m", net.state_dict(), meta)
    model = load_rpr_model(tmp_path / "m.safetensors")
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(model.net(x), net.eval()(x))
    assert model.stage == "coarse" and model.radius_mm == 100.0 and len(model.sha256) == 64
    with pytest.raises(ModelError):
        save_model(tmp_path / "t", net.state_dict(), {**meta, "kind": "fcn"})
        load_rpr_model(tmp_path / "t.safetensors")


def test_masked_copies_join_the_training_volumes(tmp_path):
    from rpr_phantoms import phantom

    from landmarkloc.io.image import read_image, write_image
    from landmarkloc.training.rpr import load_volumes, rpr_preset, with_overrides

    image, _, labels = phantom(0)
    write_image(image, tmp_path / "a.nii.gz")
    write_image(image, tmp_path / "b.nii.gz")
    (tmp_path / "masks").mkdir()
    write_image(sitk.Cast(labels > 0, sitk.sitkUInt8), tmp_path / "masks" / "a.nii.gz")  # b has no mask
    config = with_overrides(rpr_preset("compact", 3), spacing=(2.5, 2.5, 2.5))
    plain = load_volumes([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"], config, read_image)
    both = load_volumes([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"], config, read_image,
                        mask_dir=tmp_path / "masks")
    assert len(plain) == 2 and len(both) == 3
    masked = both[1]
    assert masked.body.sum() < both[0].body.sum()  # only the masked structures are left as body
    assert torch.equal(both[0].data, plain[0].data)


@pytest.mark.parametrize("ndim,patch", [(3, (32, 32, 32)), (2, (64, 32))])
def test_strided_stem_cuts_the_cost_and_old_metadata_loads_without_a_stem(ndim, patch, tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    def flops(config):
        with FlopCounterMode(display=False) as counter:
            Pnet(config)(torch.randn(1, 1, *reversed(patch)))
        return counter.get_total_flops()

    plain = PnetConfig(ndim=ndim, patch_size=patch, base_channels=4, convs_per_block=2)
    stem = PnetConfig(ndim=ndim, patch_size=patch, base_channels=4, convs_per_block=2, stem_stride=2)
    assert flops(stem) < 0.4 * flops(plain)  # 3D: about a quarter
    with pytest.raises(ModelError):  # 16 does not survive a stem and three poolings with 2 cells left
        PnetConfig(ndim=ndim, patch_size=(16,) * ndim, stem_stride=2)
    old = plain.to_dict()
    del old["stem_stride"]  # model files written before the stem existed
    assert PnetConfig.from_dict(old) == plain
    net = Pnet(stem)
    save_model(tmp_path / "m", net.state_dict(), rpr_metadata(stem, "coarse", (3.0,) * ndim, 300.0,
                                                             {"name": "mr", "mode": "percentile"}, 0.1))
    assert load_rpr_model(tmp_path / "m.safetensors").net.config.stem_stride == 2


@pytest.mark.parametrize("ndim", [2, 3])
def test_view_warps_invert_and_cross_view_targets_point_at_the_same_anatomy(ndim):
    from landmarkloc.training.views import ViewConfig, ViewPairSampler, ViewWarp, labelled_volume, sample_view

    shape = (30, 34, 26)[:ndim]
    rng = np.random.default_rng(0)
    smooth = torch.from_numpy(rng.uniform(0.2, 1.0, shape).astype(np.float32))
    pool = torch.nn.functional.avg_pool3d if ndim == 3 else torch.nn.functional.avg_pool2d
    smooth = pool(smooth[None, None], 5, stride=1, padding=2)[0, 0]  # smooth: interpolation is exact enough
    image = sitk.GetImageFromArray(smooth.numpy())
    image.SetSpacing((3.0,) * ndim)
    volume = prepare_volume(image, (3.0,) * ndim, "mr")
    labels = np.ones(tuple(volume.data.shape), dtype=np.int16)
    labelled = labelled_volume(volume, labels)
    config = ViewConfig(rotation_deg=15.0, scale=0.1, elastic_mm=4.0, elastic_control_mm=30.0)
    generator = torch.Generator().manual_seed(0)
    size = tuple(reversed(volume.data.shape))
    warp_a, warp_b = (ViewWarp(size, labelled.spacing, config, generator) for _ in range(2))
    points = labelled.body[::97].to(torch.float64)
    assert torch.allclose(warp_a.forward(warp_a.inverse(points)), points, atol=1e-3)  # voxels
    assert (warp_a.forward(points) - points).abs().max() > 0.5  # it does deform
    # the patch centred where the support point's anatomy lies in view B shows what the support patch shows
    x = labelled.body[len(labelled.body) // 2][None].to(torch.float64)
    patch = (8,) * ndim
    centre = tuple(p // 2 for p in patch)
    a = sample_view(volume.data, warp_a.inverse(x), patch, warp_a)[0, 0][centre]
    b = sample_view(volume.data, warp_b.inverse(x), patch, warp_b)[0, 0][centre]
    assert torch.isclose(a, b, atol=1e-4)
    # a sampler with one view pair and no appearance change: targets are the true offsets in the query view
    sampler = ViewPairSampler([labelled], patch, ViewConfig(synthetic_probability=0.0, bias_probability=0.0,
                              anisotropy_probability=0.0, blur_probability=0.0, gamma_probability=0.0,
                              noise_probability=0.0, skull_strip_probability=0.0, pool_size=1),
                              "coarse", 20.0, generator)
    support, query, target = sampler.sample(6, cross_probability=1.0)
    assert support.shape == (6, 1, *patch) and target.shape == (6, ndim)
    assert target.norm(dim=1).max() > 10.0
