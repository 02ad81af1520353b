"""What the shapes VQGAN can draw at all: the quality suite's 24 target scenes (each rendered from its
case's seed), passed through the VQGAN (decode(encode(render))) and, with an argument, then optimised for
N Adam steps (lr 0.1, bf16 autocast, as vqclip's loop) on the pixel MSE to the render itself, then judged.
No CLIP is involved, so this bounds what any guiding CLIP can reach with this VQGAN:

    python benchmarks/shapes/vqgan_ceiling.py 150 --threads 1
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqclip.optimize import synth
from vqclip.shapes import WEIGHTS
from vqclip.shapes.judge import judge, load_judge
from vqclip.shapes.scenes import render_array, sample_scene
from vqclip.weights.loading import load_vqgan

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quality import suite  # noqa: E402


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("steps", type=int, nargs="?", default=0, help="pixel-MSE Adam steps after encoding (0: none)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    vq = load_vqgan(WEIGHTS / "shapes_f8.ckpt", WEIGHTS / "shapes_f8.yaml").eval()
    for param in vq.parameters():
        param.requires_grad_(False)
    the_judge = load_judge()
    totals = {"reconstructed": 0, "pixel_optimised": 0}
    for case in suite(24):
        rng = np.random.default_rng(case.seed)
        scene = sample_scene(rng, shape=case.shape, colour=case.colour, background=case.background)
        x = torch.from_numpy(render_array(scene).copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            z0 = vq.encode_codes(x * 2 - 1)
            verdict = judge(to_pil(synth(vq, z0)), the_judge)[0]
        right = verdict.check(case.shape, case.colour, case.background)["all"]
        totals["reconstructed"] += right
        line = f"{case.prompt:45} reconstructed: {verdict} {right}"
        if args.steps:
            z = z0.clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=0.1)
            for _ in range(args.steps):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    image = synth(vq, z)
                loss = (image.float() - x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                verdict = judge(to_pil(synth(vq, z)), the_judge)[0]
            right = verdict.check(case.shape, case.colour, case.background)["all"]
            totals["pixel_optimised"] += right
            line += f" | pixel-optimised: {verdict} {right}"
        print(line, flush=True)
    print(f"judged fully right of 24: {totals}")


if __name__ == "__main__":
    main()
