"""`vqclip bench`."""

import json
import sys

import click

from vqclip.cli.app import cli, info
from vqclip.cli.options import parse_bytes
from vqclip.config import DEVICES, PRECISIONS, parse_size
from vqclip.errors import VqclipError
from vqclip.weights.pretrained import DEFAULT_CLIP, DEFAULT_VQGAN

# ---- bench -------------------------------------------------------------------------------------


@cli.command()
@click.option("--size", "sizes", multiple=True, default=("256",), show_default=True, help="Canvas size(s).")
@click.option(
    "--precision", "precisions", multiple=True, default=("auto",), show_default=True, type=click.Choice(PRECISIONS)
)
@click.option("--cutn", default=32, show_default=True, type=click.IntRange(1))
@click.option("--steps", default=3, show_default=True, type=click.IntRange(1), help="Timed steps (median).")
@click.option("--vqgan", default=DEFAULT_VQGAN, show_default=True)
@click.option("--clip", multiple=True, default=(DEFAULT_CLIP,), show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--random-weights/--real-weights",
    default=True,
    show_default=True,
    help="Random weights cost the same as real ones and need no download.",
)
@click.option("--max-memory", callback=parse_bytes, help="Memory cap for the plan, e.g. 6G.")
@click.option("--checkpointing", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="Torch threads (default: torch's). With 1, CPU seconds measure the work even on a busy machine.",
)
@click.option(
    "--n",
    "ns",
    multiple=True,
    default=(1,),
    show_default=True,
    type=click.IntRange(1),
    help="Images per batched step (generate's --n); repeat to compare (images/s in the table).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per configuration on stdout.")
@click.option(
    "--isolate/--no-isolate",
    default=True,
    show_default=True,
    help="Run each configuration in its own process, so peak memory is its own.",
)
def bench(
    sizes,
    precisions,
    cutn,
    steps,
    vqgan,
    clip,
    device,
    random_weights,
    max_memory,
    checkpointing,
    threads,
    ns,
    as_json,
    isolate,
):
    """Measure step time per stage, peak memory, FLOPs and FLOP rate of the generation step."""
    import subprocess

    rows = []
    for size, precision, n in ((s, p, n) for s in sizes for p in precisions for n in ns):
        parse_size(size)
        if isolate:
            argv = [
                sys.executable,
                "-m",
                "vqclip",
                "bench",
                "--no-isolate",
                "--json",
                "--size",
                size,
                "--precision",
                precision,
                "--cutn",
                str(cutn),
                "--steps",
                str(steps),
                "--vqgan",
                vqgan,
                "--device",
                device,
                "--checkpointing",
                checkpointing,
                "--random-weights" if random_weights else "--real-weights",
                "--n",
                str(n),
            ]
            argv += [a for c in clip for a in ("--clip", c)]
            if max_memory:
                argv += ["--max-memory", str(max_memory)]
            if threads:
                argv += ["--threads", str(threads)]
            info(f"bench {size} {precision} n={n} ...")
            done = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
            if done.returncode != 0:
                raise VqclipError(
                    f"The benchmark of {size} at {precision} with --n {n} failed (exit {done.returncode})."
                )
            row = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            from vqclip.bench import bench_config, run_bench

            cfg = bench_config(parse_size(size), cutn, precision, device, vqgan, clip)
            row = run_bench(cfg, steps, random_weights, max_memory, checkpointing, threads, n)
        rows.append(row)
        if as_json:
            click.echo(json.dumps(row))
    if not as_json:
        _bench_table(rows)


def _load_text(load: list) -> str:
    return " -> ".join("?" if v is None else f"{v:.1f}" for v in load)


def machine_line(row: dict) -> str:
    """The machine a row was taken on, in one line: CPU or GPU, fast-precision flags, cores."""
    m = row["machine"]
    where = f"{m['cpu']}; GPU {m['gpu']} (capability {m['capability']})" if "gpu" in m else m["cpu"]
    flags = ", ".join(m["cpu_flags"]) or "none of avx512_bf16, amx_bf16, avx512_fp16, amx_fp16"
    fast = ", ".join(p for p in ("bf16", "fp16") if m[f"fast_{p}"]) or "neither"
    return f"{where}; {m['cores']} cores; CPU flags: {flags}; fast bf16/fp16: {fast}; torch {m['torch']}"


def _bench_table(rows):
    from rich.console import Console
    from rich.table import Table

    from vqclip.bench import STAGES

    gib = 2**30
    table = Table(
        "size",
        "precision",
        "n",
        "weights",
        "plan",
        "step s",
        "images/s",
        *STAGES,
        "peak GiB",
        "est. GiB",
        "GFLOP",
        "GFLOP/s",
        "of matmul",
        "CPU s",
        "of matmul (CPU s)",
        "threads",
        "load",
        box=None,
    )
    for r in rows:
        plan = r["plan"]
        plan_text = f"{'ckpt' if plan['checkpointing'] else 'no ckpt'}, chunk {plan['clip_chunk']}"
        table.add_row(
            "x".join(map(str, r["size"])),
            r["precision"],
            str(r.get("n", 1)),
            r["weights"],
            plan_text,
            f"{r['step_s']:.2f}",
            f"{r.get('images_per_s', 1 / r['step_s']):.2f}",
            *(f"{r['stages_s'][s]:.2f}" for s in STAGES),
            f"{r['peak_memory'] / gib:.2f}",
            f"{plan['estimate'] / gib:.2f}",
            f"{r['flops_per_step'] / 1e9:.0f}",
            f"{r['flop_rate'] / 1e9:.0f}",
            f"{r['rate_fraction']:.0%}",
            f"{r['step_cpu_s']:.2f}",
            f"{r['cpu_rate_fraction']:.0%}",
            str(r["threads"]),
            _load_text(r["load"]),
        )
    console = Console(width=220)
    for line in dict.fromkeys(machine_line(r) for r in rows):
        console.print(line)
    console.print(table)
