"""Peak memory and time of Real-ESRGAN x4plus upscaling, untiled vs tiled, each in a fresh process.

Random weights in the published layout (RRDBNet 64 features, 23 blocks; the cost does not depend on the
values), loaded through spandrel as the real file is. Prints one JSON line per run.

    .venv/bin/python benchmarks/upscale.py [--size 192] [--tiles 0 64]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(weights: str, size: int, tile: int) -> None:
    import torch

    from vqclip.upscale import load_upscaler, upscale_tensor

    model = load_upscaler(weights)
    image = torch.rand(1, 3, size, size)
    start = time.perf_counter()
    out = upscale_tensor(model, image, tile=tile)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "input": f"{size}x{size}",
                "output": "x".join(map(str, out.shape[-2:][::-1])),
                "tile": tile,
                "seconds": round(seconds, 2),
                "peak_rss_gib": round(peak / 2**30, 3),
            }
        )
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--tiles", type=int, nargs="+", default=[0, 64])
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_upscale import _rrdbnet_state_dict

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "RealESRGAN_x4plus_random.pth"
        torch.save({"params_ema": _rrdbnet_state_dict(nf=64, gc=32, blocks=23)}, weights)
        for tile in args.tiles:
            cmd = [sys.executable, __file__, "--child", str(weights), str(args.size), str(tile)]
            print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
