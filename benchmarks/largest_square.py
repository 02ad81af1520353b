"""The largest square canvas the memory plan accepts under each cap, per precision, with and without decoder
checkpointing (CLIP chunks of 1 allowed; a single run, so the text towers are dropped). Pure arithmetic on
the plan's estimate: the models are built on the meta device, so this takes seconds and no memory.

    python benchmarks/largest_square.py [--caps 3 4 6 8 16] [--cutn 32]
"""

import argparse

from vqclip.bench import bench_config, random_models
from vqclip.memory import largest_square

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", type=float, nargs="+", default=[3, 4, 6, 8, 16], help="GiB")
    parser.add_argument("--cutn", type=int, default=32)
    args = parser.parse_args()
    models = {
        p: random_models(bench_config((256, 256), precision=p, device="cpu"), shapes_only=True)
        for p in ("bf16", "fp32")
    }
    print("| cap | bf16, no ckpt | bf16, ckpt | fp32, no ckpt | fp32, ckpt |")
    print("|---|---|---|---|---|")
    for cap in args.caps:
        sides = [
            largest_square(models[p], args.cutn, int(cap * GIB), checkpointing=ckpt, text_towers=False)
            for p in ("bf16", "fp32")
            for ckpt in (False, True)
        ]
        print(f"| {cap:g} GiB | " + " | ".join(str(s) for s in sides) + " |")


if __name__ == "__main__":
    main()
