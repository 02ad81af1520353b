"""A shapes-world step on a quiet machine and beside one competing CPU-bound process: torch's defaults
(as many threads as cores, libgomp's spinning wait) against what the CLI does (threads fitted to the free
cores, vqclip.threads), or other OpenMP settings.

    python benchmarks/busy.py                          # 128 and 256 px, auto precision, before and after
    python benchmarks/busy.py --sizes 128 --repeats 5 --policies default vqclip PASSIVE spin:1000 threads:1

Each measurement is a fresh process (libgomp reads the policy when torch loads) that loads the shipped
models (`--vqgan shapes_f8 --clip shapes-a`, 32 cutouts, the demo's prompt), runs 2 warm-up steps and
times `--steps` steps (vqclip.bench.bench_step: median wall seconds per step, and process CPU seconds).
The figure that matters is the wall time: what a user waits.
"busy" starts `python -c "while True: pass"` before the process and stops it after. The configurations are
interleaved within each repeat, and the table gives the median over repeats with /proc/loadavg before and
after each; JSON lines go to stdout, the table to stderr.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def policy_env(policy: str) -> dict:
    """`vqclip` (what the CLI does: threads fitted to the free cores, vqclip.threads), `default` (nothing
    set: torch's threads, libgomp spins), `PASSIVE`/`ACTIVE` (OMP_WAIT_POLICY), `spin:N` (GOMP_SPINCOUNT=N:
    spin N times, then sleep), or `threads:N` (OMP_NUM_THREADS=N)."""
    if policy == "default":
        return {}
    if policy == "vqclip":
        return {"BUSY_AS_THE_CLI": "1"}
    if policy.startswith("threads:"):
        return {"OMP_NUM_THREADS": policy[8:]}
    if policy.startswith("spin:"):
        return {"GOMP_SPINCOUNT": policy[5:]}
    return {"OMP_WAIT_POLICY": policy}


def child(size: int, precision: str, steps: int) -> dict:
    """One measurement, in this process (torch is loaded here, under the policy in the environment)."""
    sys.path.insert(0, str(ROOT))  # this checkout's vqclip, whatever the environment has installed
    if os.environ.pop("BUSY_AS_THE_CLI", None):
        from vqclip.threads import fit_threads_to_free_cores

        fit_threads_to_free_cores()  # what vqclip's main() does before torch loads
    import torch

    from vqclip.bench import bench_step, machine
    from vqclip.config import GenerationConfig
    from vqclip.pipeline.load import load_models

    cfg = GenerationConfig(
        "a red star on a white background",
        vqgan="shapes_f8",
        clip=("shapes-a",),
        size=(size, size),
        precision=precision,
    )
    models = load_models(cfg, offline=True)
    result = bench_step(models, cfg, steps=steps, warmup=2)
    return {
        "step_s": result["step_s"],
        "step_cpu_s": result["step_cpu_s"],
        "precision": models.precision,
        "threads": torch.get_num_threads(),
        "machine": machine(models.device),
    }


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def measure(size: int, precision: str, steps: int, policy: str, busy: bool, threads: int | None) -> dict:
    unset = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in unset} | policy_env(policy)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(VQCLIP_OFFLINE="1", HF_HUB_OFFLINE="1")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if hog:
            time.sleep(0.5)  # let it take its core
        before = loadavg()
        argv = [sys.executable, __file__, "--child", "--sizes", str(size), "--precision", precision]
        done = subprocess.run(
            [*argv, "--steps", str(steps)], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True
        )
        after = loadavg()
    finally:
        if hog:
            hog.kill()
            hog.wait()
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {**row, "size": size, "policy": policy, "busy": busy, "load": [before, after]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the measured process [default: torch's]")
    parser.add_argument("--policies", nargs="+", default=["default", "vqclip"], help=policy_env.__doc__)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.sizes[0], args.precision, args.steps)))
        return

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the competing process
    rows = []
    for _ in range(args.repeats):
        for size in args.sizes:
            for policy in args.policies:
                for busy in (False, True):
                    row = measure(size, args.precision, args.steps, policy, busy, args.threads)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(rows[0]["machine"], file=sys.stderr)
    header = "size  policy      threads precision  quiet s (CPU s)    busy s (CPU s)     busy/quiet  loads"
    print(header + " (1-min load before->after, quiet runs then busy runs)", file=sys.stderr)
    for size in args.sizes:
        for policy in args.policies:
            got = {
                b: [r for r in rows if r["size"] == size and r["policy"] == policy and r["busy"] == b] for b in (0, 1)
            }
            q, b = (statistics.median(r["step_s"] for r in got[k]) for k in (0, 1))
            qc, bc = (statistics.median(r["step_cpu_s"] for r in got[k]) for k in (0, 1))
            loads = " ".join("{}->{}".format(*r["load"]) for r in got[0] + got[1])
            first = got[0][0]
            threads = f"{first['threads']}/{got[1][0]['threads']}"
            print(
                f"{size:<5} {policy:<11} {threads:<7} {first['precision']:<10} {q:6.3f} ({qc:6.3f})    "
                f"{b:6.3f} ({bc:6.3f})    {b / q:6.2f}x     {loads}",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
