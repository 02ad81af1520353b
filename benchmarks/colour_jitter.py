"""CPU seconds of the cutouts' augmentations, forward and backward: kornia's ColorJitter module against
vqclip's `colour_jitter` for the same drawn parameters, runs interleaved so that a busy machine slows both
alike. The default augmentations (affine, perspective, jitter, erasing) and the jitter alone; 32 cutouts of
224 px from a 256 px canvas by default. Prints the CPU, threads and load, then one line per variant.

    .venv/bin/python benchmarks/colour_jitter.py [--threads 1] [--draws 4] [--repeats 3]
"""

import argparse
import platform
import statistics
import subprocess
import time

import kornia.augmentation as K
import torch

from vqclip.colour_jitter import colour_jitter
from vqclip.cutouts import Cutouts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--cut-size", type=int, default=224)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cutouts = Cutouts(args.cut_size, args.cutn, augment=("affine", "perspective", "jitter", "erasing"))
    gen = torch.Generator().manual_seed(0)
    draws = [cutouts.draw(256, 256, gen) for _ in range(args.draws)]
    shape = (args.cutn, 3, args.cut_size, args.cut_size)
    cuts, grad_out = torch.rand(shape, generator=gen), torch.randn(shape, generator=gen)

    def run(draw, ours: bool, jitter_only: bool) -> float:
        x = cuts.clone().requires_grad_()
        start = time.process_time()
        y = x
        for aug, (rows, shared) in zip(cutouts.augs, draw.augment, strict=True):
            jitter = isinstance(aug, K.ColorJitter)
            if jitter_only and not jitter:
                continue
            params = {**rows, **shared}
            y = colour_jitter(y, params) if ours and jitter else aug(y, params=params)
        y.backward(grad_out)
        return time.process_time() - start

    def uptime() -> str:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model\t")), "?")
    print(f"{platform.processor() or platform.machine()}, CPU model {cpu}, {args.threads} thread(s); {uptime()}")
    times = {}
    for repeat in range(args.repeats):
        for draw in draws:
            for jitter_only in (False, True):
                for ours in (False, True) if repeat % 2 == 0 else (True, False):
                    key = ("jitter alone" if jitter_only else "default augmentations", ours)
                    times.setdefault(key, []).append(run(draw, ours, jitter_only))
    for (what, ours), values in times.items():
        name = "vqclip" if ours else "kornia"
        print(
            f"{what:22} {name}: median {statistics.median(values):.3f} CPU s (min {min(values):.3f}, n={len(values)})"
        )
    print(uptime())


if __name__ == "__main__":
    main()
