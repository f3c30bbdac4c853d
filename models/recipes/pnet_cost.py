"""FLOPs and CPU time per patch of Pnet variants at inference (the oneDNN path of landmarkloc.networks.layers).

    OMP_NUM_THREADS=1 python models/recipes/pnet_cost.py [--threads 1] [--batch 63]

Prints, per variant, GFLOP per patch (torch's FLOP counter: 2 per multiply-add) and the median wall time of
a batch (the 63 patches of one 8-organ query at K = 15) divided by its size.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from landmarkloc.networks.pnet import Pnet, PnetConfig

VARIANTS = {
    "shipped (32^3, b 8, no stem)": PnetConfig(3, (32, 32, 32), base_channels=8, convs_per_block=2),
    "stem 2 (32^3, b 8)": PnetConfig(3, (32, 32, 32), base_channels=8, convs_per_block=2, stem_stride=2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=63)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, config in VARIANTS.items():
        net = Pnet(config).eval()
        x = torch.rand(args.batch, 1, *config.patch_shape)
        with FlopCounterMode(display=False) as counter:  # (the counter sees aten convolutions, not oneDNN's)
            net(x[:1])
        with torch.inference_mode():
            net(x)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t0)
        ms = sorted(times)[len(times) // 2] / args.batch * 1000
        params = sum(p.numel() for p in net.parameters())
        print(f"{name:32s} {counter.get_total_flops() / 1e9:6.3f} GFLOP/patch  {ms:6.2f} ms/patch "
              f"({args.threads} thread(s), batch {args.batch})  {params / 1e6:.2f} M parameters")


if __name__ == "__main__":
    main()
