"""`vqclip restyle` in the shapes world (issue 27): a red circle moving left to right on white, rendered by
the shapes renderer and encoded as an H.264 video, restyled with "a blue circle on a black background" by the
shipped models, with the default coherence and as independent per-frame runs (--blend 1: every frame starts
from its own codes, as nerdyrodent's video_styler.sh does) at the same steps, over several seeds. Reports per
variant: the frames the judge calls blue on black (colour and background; also all three with the shape),
the circle's centroid against the input's (mean and worst distance, in fractions of the side), and the
flicker (mean absolute difference of consecutive frames) relative to the input's own. Writes a GIF of the
input and both restyles side by side (first seed) and prints one JSON line per run, then a summary.

    .venv/bin/python benchmarks/restyle_flicker.py --threads 1 [--frames 16] [--size 64] [--seeds 0,1,2]
        [--steps 40] [--gif benchmarks/restyle_flicker.gif] [-- extra restyle options]
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a blue circle on a black background"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="per frame [default: restyle's]")
    parser.add_argument("--variants", default="default,independent")
    parser.add_argument("--gif", default="benchmarks/restyle_flicker.gif")
    parser.add_argument("extra", nargs="*", help="more restyle options (after --)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads (main() keeps a set value)

    import imageio_ffmpeg
    import numpy as np
    from PIL import Image

    from vqclip.cli import main as vqclip
    from vqclip.shapes.judge import judge, load_judge
    from vqclip.shapes.video import centroid_errors, moving_shape, relative_flicker

    work = Path(tempfile.mkdtemp(prefix="restyle-bench-"))
    source = moving_shape(args.frames, args.size)
    video = work / "input.mp4"
    writer = imageio_ffmpeg.write_frames(str(video), (args.size, args.size), fps=12, macro_block_size=8)
    writer.send(None)
    for frame in source:
        writer.send(np.asarray(frame).tobytes())
    writer.close()
    variants = {"default": [], "independent": ["--blend", "1"]}
    shapes = ["--vqgan", "shapes_f8", "--clip", "shapes-a", "--size", str(args.size), "--device", "cpu"]
    shapes += ["--steps", str(args.steps)] if args.steps else []
    model = load_judge()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    print(f"# {cpu}, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    rows, gif_rows = [], {}
    for seed in args.seeds.split(","):
        for name in args.variants.split(","):
            out = work / f"{name}-{seed}"
            cpu0, t0 = _cpu(), time.perf_counter()
            argv = ["restyle", str(video), PROMPT, *shapes, "--seed", seed, "--frames", str(out), "-q"]
            try:
                vqclip(argv + variants[name] + args.extra)
            except SystemExit as exit:
                if exit.code:
                    raise
            cpu_s, wall = _cpu() - cpu0, time.perf_counter() - t0
            frames = [Image.open(p).convert("RGB") for p in sorted(out.glob("frame-*.png"))]
            verdicts = judge(frames, model)
            errors = centroid_errors(frames, source)
            row = {
                "variant": name,
                "seed": int(seed),
                "frames": len(frames),
                "blue_on_black": sum(v.colour == "blue" and v.background == "black" for v in verdicts),
                "all_three": sum(v.check("circle", "blue", "black")["all"] for v in verdicts),
                "centroid_mean": round(float(np.mean(errors)), 4),
                "centroid_max": round(float(np.max(errors)), 4),
                "relative_flicker": round(relative_flicker(frames, source), 3),
                "cpu_s": round(cpu_s, 1),
                "wall_s": round(wall, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if seed == args.seeds.split(",")[0]:
                gif_rows[name] = frames
    _summary(rows)
    if args.gif:
        _gif([source] + list(gif_rows.values()), Path(args.gif), args.size)
        print(f"# GIF: {args.gif} (rows: input, {', '.join(gif_rows)})", file=sys.stderr)


def _cpu() -> float:
    """CPU seconds of this process and its children so far (user + sys)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _summary(rows):
    import numpy as np

    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        n = sum(r["frames"] for r in mine)
        summary = {
            "variant": name,
            "seeds": len(mine),
            "blue_on_black": f"{sum(r['blue_on_black'] for r in mine)} of {n}",
            "all_three": f"{sum(r['all_three'] for r in mine)} of {n}",
            "centroid_mean": round(float(np.mean([r["centroid_mean"] for r in mine])), 4),
            "centroid_max": max(r["centroid_max"] for r in mine),
            "relative_flicker": [r["relative_flicker"] for r in mine],
            "relative_flicker_mean": round(float(np.mean([r["relative_flicker"] for r in mine])), 3),
            "cpu_s": round(sum(r["cpu_s"] for r in mine), 1),
        }
        print(json.dumps(summary), flush=True)


def _gif(rows, path: Path, size: int):
    """One frame per video frame: the rows side by side (input, default, independent), 64 colours."""
    from PIL import Image

    frames = []
    for k in range(len(rows[0])):
        sheet = Image.new("RGB", (size * len(rows) + 4 * (len(rows) - 1), size), (128, 128, 128))
        for i, row in enumerate(rows):
            sheet.paste(row[k], (i * (size + 4), 0))
        frames.append(sheet.quantize(64))
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=120, loop=0)


if __name__ == "__main__":
    main()
