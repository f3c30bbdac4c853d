"""FCN architecture: shapes, strides, presets and independence of the local bank."""

import pytest
import torch

from landmarkloc.errors import InputError, ModelError
from landmarkloc.networks.fcn import FCN, FCNConfig, global_config, local_config


@pytest.mark.parametrize("ndim", [2, 3])
def test_paper_global_architecture_matches_the_paper(ndim):
    cfg = global_config("paper", ndim, 4)
    assert cfg.stem_kernel == 7 and cfg.stem_stride == 2 and cfg.stem_channels == 16
    assert cfg.stage_channels == (32, 64, 128, 256) and cfg.stage_blocks == (3, 4, 6, 3)
    assert cfg.pool_before == (True, True, False, False)
    assert cfg.head_channels == 256 and cfg.head_layers == 2
    assert cfg.patch_size == 8
    net = FCN(cfg)
    convs = [m for m in net.features.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convs[0].kernel_size == (7,) * ndim and convs[0].stride == (2,) * ndim
    # 16 residual pairs (3 + 4 + 6 + 3) of two 3^D convolutions each
    three = [c for c in convs if c.kernel_size == (3,) * ndim]
    assert len(three) == 2 * 16
    local = local_config("paper", ndim, 4)
    assert local.patch_size == 2 and local.stage_channels == (32, 64) and local.head_channels == 64


@pytest.mark.parametrize("ndim,size", [(2, (40, 24)), (3, (16, 24, 8))])
def test_one_output_cell_per_patch_for_any_image_size(ndim, size):
    cfg = global_config("compact", ndim, 3)
    net = FCN(cfg).eval()
    with torch.inference_mode():
        logits, disp = net(torch.randn(1, 1, *size))
    grid = tuple(s // cfg.patch_size for s in size)
    assert logits.shape == (1, 3, *grid)
    assert disp.shape == (1, 3, ndim, *grid)


def test_local_bank_networks_are_independent():
    cfg = local_config("compact", 3, 3)
    net = FCN(cfg).eval()
    x = torch.randn(2, 3, 8, 8, 8)
    with torch.inference_mode():
        base_l, base_d = net(x)
        y = x.clone()
        y[:, 1] = torch.randn(2, 8, 8, 8)
        l2, d2 = net(y)
    assert torch.allclose(base_l[:, [0, 2]], l2[:, [0, 2]])
    assert torch.allclose(base_d[:, [0, 2]], d2[:, [0, 2]])
    assert not torch.allclose(base_l[:, 1], l2[:, 1])


def test_config_round_trip_and_refusals():
    cfg = global_config("compact", 2, 5, head_channels=48)
    assert FCNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelError):
        FCNConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ModelError):
        global_config("huge", 3, 1)
    with pytest.raises(ModelError):
        FCNConfig(ndim=4)


def test_training_presets():
    from landmarkloc.training.fcn import network_configs, train_config

    paper2d = train_config("paper", 2, global_overrides={"head_channels": 128})
    g, loc, _ = network_configs(paper2d, 19)
    assert g.patch_size == 32 and g.head_channels == 128  # the paper's ceph network pools before all stages
    assert paper2d.iterations == 300_000 and loc.patch_size == 2
    compact = train_config("compact", 3, use_local=False)
    assert network_configs(compact, 4)[1] is None
    with pytest.raises(InputError):
        train_config("compact", 3, lr_schedule="sawtooth")


def test_stacked_banks_compute_what_each_bank_computes():
    from landmarkloc.networks.fcn import stack_banks

    torch.manual_seed(0)
    banks = [FCN(local_config("compact", 2, 3)).eval() for _ in range(2)]
    for bank in banks:  # non-trivial batch-norm statistics
        for module in bank.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    stacked = FCN(local_config("compact", 2, 6)).eval()
    stacked.load_state_dict(stack_banks([b.state_dict() for b in banks]))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits, disp = stacked(torch.cat([x, x], dim=1))
        for m, bank in enumerate(banks):
            lg, dp = bank(x)
            assert torch.allclose(logits[:, 3 * m:3 * (m + 1)], lg, atol=1e-5)
            assert torch.allclose(disp[:, 3 * m:3 * (m + 1)], dp, atol=1e-5)
