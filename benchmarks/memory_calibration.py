"""Measure a step's memory peaks per size, precision, checkpointing and CLIP chunk, and fit the memory
plan's constants (vqclip/memory.py) to them.

Each configuration runs in its own process (CPU, random weights, the text tower dropped as in a single
run). Per step it records the peak RSS while CLIP runs (cutouts, CLIP forward and backward) and during the
decoder's backward, from Linux's resettable high-water mark (/proc/self/clear_refs), and the RSS before
the first step, which holds the libraries and the weights. Peak memory hardly depends on the machine's
load, so this can run on a busy machine; large sizes take minutes per step.

    python benchmarks/memory_calibration.py --sizes 256 384 512 768 --steps 3 > calibration.jsonl
    python benchmarks/memory_calibration.py --fit calibration.jsonl   # fits on 256-512, checks 768
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

GIB = 2**30


def _status(key: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) * 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def measure(size: int, precision: str, checkpointing: bool, chunk: int, steps: int, keep_freed: bool = True) -> dict:
    """One configuration, in this process: per step, the CLIP-phase and decoder-backward peaks. `keep_freed`:
    the allocator setting a CPU run uses (memory.keep_freed_memory); off, glibc's default."""
    import torch

    from vqclip.bench import bench_config, guides, random_models
    from vqclip.memory import drop_text_towers, keep_freed_memory, weights_bytes
    from vqclip.optimize import optimize

    if keep_freed:
        keep_freed_memory(*([int(os.environ["MMAP_THRESHOLD"])] if "MMAP_THRESHOLD" in os.environ else []))
    torch.manual_seed(0)
    cfg = bench_config((size, size), 32, precision, "cpu")
    models = random_models(cfg)
    generator = torch.Generator().manual_seed(0)
    f = models.vqgan.factor
    z = models.vqgan.embed(torch.randint(models.vqgan.config.n_embed, (1, size // f, size // f))).float()
    targets = guides(models, cfg, generator)
    drop_text_towers(models)
    resident = _status("VmRSS:")
    stages = []

    @contextlib.contextmanager
    def timer(stage):
        _reset_peak()
        yield
        stages.append((stage, _status("VmHWM:")))

    loop = optimize(
        models.vqgan,
        targets,
        z,
        steps,
        generator=generator,
        dtype=models.dtype,
        clip_chunk=chunk,
        checkpointing=checkpointing,
        timer=timer,
    )
    per_step = []
    for _ in range(steps):
        stages.clear()
        next(loop)
        # the last "backward" of a step is the decoder's (CLIP's come once per chunk, before it)
        last = max(i for i, (s, _) in enumerate(stages) if s == "backward")
        clip_phase = max(p for i, (s, p) in enumerate(stages) if s in ("cutouts", "clip", "backward") and i != last)
        per_step.append({"clip_phase": clip_phase, "decoder_backward": stages[last][1]})
    return {
        "size": size,
        "precision": precision,
        "checkpointing": checkpointing,
        "chunk": chunk,
        "keep_freed": keep_freed,
        "resident": resident,
        "weights": weights_bytes(models),
        "steps": per_step,
    }


def run_grid(args) -> None:
    """Every configuration in its own process; one JSON line each on stdout."""
    for size in args.sizes:
        for precision in args.precisions:
            for ckpt in (False, True):
                for chunk in args.chunks:
                    argv = [sys.executable, __file__, "--one", str(size), precision, str(int(ckpt)), str(chunk)]
                    argv += ["--steps", str(args.steps)] + ([] if args.keep_freed else ["--default-allocator"])
                    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
                    if done.returncode == 0:
                        print(done.stdout.strip().splitlines()[-1], flush=True)
                    else:
                        print(
                            f"# {size} {precision} ckpt={ckpt} chunk={chunk}: exit {done.returncode}", file=sys.stderr
                        )


def _lstsq(rows: list[list[float]], targets: list[float]) -> list[float]:
    import torch

    a, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64)[:, None]
    return torch.linalg.lstsq(a, b).solution[:, 0].tolist()


def _peak(run: dict) -> int:
    """A run's step peak: the highest of its steps' CLIP-phase and decoder-backward peaks."""
    return max(max(s["clip_phase"], s["decoder_backward"]) for s in run["steps"])


def fit(path: str, fit_sizes: list[int]) -> None:
    """Least-squares constants for memory.COSTS (bytes per pixel, per cutout, base) from the runs at
    `fit_sizes`, then every run's measured peak against the estimate (the other sizes are a check)."""
    runs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.startswith("{")]
    extra = [r["resident"] - r["weights"] for r in runs]
    print(
        f"CPU_RESIDENT = {statistics.mean(extra) / 2**20:.0f} MiB ({min(extra) / GIB:.3f}-{max(extra) / GIB:.3f} GiB)"
    )
    for precision in sorted({r["precision"] for r in runs}):
        for ckpt in (False, True):
            sub = [r for r in runs if r["precision"] == precision and r["checkpointing"] == ckpt]
            train = [r for r in sub if r["size"] in fit_sizes]
            if len(train) < 3:
                continue
            px, cut, base = _lstsq(
                [[r["size"] ** 2, r["chunk"], 1.0] for r in train], [_peak(r) - r["resident"] for r in train]
            )
            print(f'("{precision}", {ckpt}): StepCosts({px:.0f}, {cut / 2**20:.1f} * MIB, {base / 2**20:.0f} * MIB),')
            for r in sub:
                est = r["resident"] + px * r["size"] ** 2 + cut * r["chunk"] + base
                role = "fit" if r["size"] in fit_sizes else "check"
                print(
                    f"    {r['size']} chunk {r['chunk']:>2} ({role}): measured {_peak(r) / GIB:.2f} GiB, "
                    f"estimated {est / GIB:.2f} ({est / _peak(r) - 1:+.1%})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512, 768])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--chunks", type=int, nargs="+", default=[32, 8])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--default-allocator", dest="keep_freed", action="store_false", help="glibc's defaults, not a run's"
    )
    parser.add_argument("--one", nargs=4, metavar=("SIZE", "PRECISION", "CKPT", "CHUNK"), help=argparse.SUPPRESS)
    parser.add_argument("--fit", metavar="JSONL", help="fit the constants to a file of measurements")
    parser.add_argument("--fit-sizes", type=int, nargs="+", default=[256, 384, 512], help="the rest are checks")
    args = parser.parse_args()
    if args.fit:
        fit(args.fit, args.fit_sizes)
    elif args.one:
        size, precision, ckpt, chunk = args.one
        print(json.dumps(measure(int(size), precision, ckpt == "1", int(chunk), args.steps, args.keep_freed)))
    else:
        run_grid(args)


if __name__ == "__main__":
    main()
