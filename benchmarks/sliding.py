"""Wall-clock of the sliding-window GPT pass: the reference raster order vs the batched wavefront.

A random GPT (4 layers, 256 wide, 8 heads, vocab 16384, block 256: the cost of dense layers does not
depend on the weight values), greedy decoding, one grid per size. Prints one JSON line per size.

    .venv/bin/python benchmarks/sliding.py [--sizes 32 64]
"""

import argparse
import json
import time

import torch

from vqclip.models.gpt import GPT, GPTConfig
from vqclip.sliding import sample_tokens, schedule


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=16384, block_size=256, n_layer=args.layers, n_head=8, n_embd=args.width)
    gpt = GPT(cfg).eval()
    for side in args.sizes:
        grid = torch.randint(0, cfg.vocab_size, (1, side, side))
        cond = torch.tensor([[0]])
        row = {
            "tokens": f"{side}x{side}",
            "layers": args.layers,
            "width": args.width,
            "threads": torch.get_num_threads(),
        }
        outs = {}
        for order in ("raster", "wavefront"):
            start = time.perf_counter()
            outs[order] = sample_tokens(gpt, grid, cond, greedy=True, order=order)
            row[f"{order}_s"] = round(time.perf_counter() - start, 2)
            row[f"{order}_calls"] = len(schedule(side, side, order=order))
        row["speedup"] = round(row["raster_s"] / row["wavefront_s"], 2)
        row["identical"] = bool(torch.equal(outs["raster"], outs["wavefront"]))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
