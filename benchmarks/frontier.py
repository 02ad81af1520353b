"""The quality-time frontier in the shapes world: the quality suite (benchmarks/quality.py) under one
setting changed at a time (cutouts, each augmentation, learning rate, cut_pow, precision, the cut methods and
both shipped CLIPs guiding together: issue 25), as judge
accuracy against wall-clock seconds. Writes JSON lines, a markdown table and a plot (needs the `bench`
extra: matplotlib):

    python benchmarks/frontier.py --cases 12 --steps 100

Each setting's line is written as soon as it finishes; `--resume` keeps the lines already in frontier.jsonl
(from the same --cases and --steps) and runs only the settings that are missing.

Each line records the wall seconds (the suite's own per-step figure) and the process's CPU seconds (user +
sys, model loading and judging included), which a shared machine does not inflate.

Tiny models are not the real ones: read the result as a hint, not as evidence for new defaults.
"""

import json
import os
import resource

import torch
from quality import RECORDS, first_right, machine, run_suite, settings_parser, suite, summarise

from vqclip.config import CUT_METHODS, DEFAULT_AUGMENTS, LR_SCHEDULES, OPTIMIZERS
from vqclip.shapes import CLIP_A, CLIP_B


def variants() -> dict[str, dict]:
    """Label -> GenerationConfig overrides; "default" is vqclip's defaults (bf16 autocast where it is fast)."""
    out = {"default": {}}
    out |= {f"cutn {n}": {"cutn": n} for n in (8, 16, 64)}
    out |= {f"no {a}": {"augment": tuple(x for x in DEFAULT_AUGMENTS if x != a)} for a in DEFAULT_AUGMENTS}
    out["no augmentations"] = {"augment": ()}
    out |= {f"lr {lr}": {"lr": lr} for lr in (0.05, 0.2)}
    out |= {f"cut_pow {p}": {"cut_pow": p} for p in (0.5, 2.0)}
    out["fp32"] = {"precision": "fp32"}
    out["bf16"] = {"precision": "bf16"}
    out |= {f"opt {name}": {"optimizer": name} for name in OPTIMIZERS if name != "adam"}
    out |= {f"schedule {name}": {"lr_schedule": name} for name in LR_SCHEDULES if name != "constant"}
    out |= {f"cut {name}": {"cut_method": name} for name in CUT_METHODS if name != "original"}  # issue 25
    out["CLIPs A and B"] = {"clip": (CLIP_A, CLIP_B)}  # both guide; CLIP B's scores are then not independent
    # at torch's other defaults RMSprop's first steps are ~10x Adam's at the same lr (no bias correction),
    # and Adagrad's shrink as its sums grow: each also at the lr nerdyrodent's script suggests for it
    out["opt rmsprop lr 0.01"] = {"optimizer": "rmsprop", "lr": 0.01}
    out["opt adagrad lr 0.5"] = {"optimizer": "adagrad", "lr": 0.5}
    return out


def cpu_seconds() -> float:
    """User + sys CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plot(table: dict[str, list[dict]], path) -> None:
    """Accuracy (all three right) against mean seconds, one line per setting through its recorded steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, (label, summary) in enumerate(table.items()):
        xs, ys = [s["seconds"] for s in summary], [100 * s["all"] for s in summary]
        style = {"color": "black", "linewidth": 2.5} if label == "default" else {"color": plt.cm.tab20(i % 20)}
        style["linestyle"] = ("-", "--", ":")[min(i // 10, 2)]  # up to 22 settings: colours alone repeat
        ax.plot(xs, ys, marker="o", label=label, **style)
    ax.set_xlabel("seconds of optimisation per image (mean)")
    ax.set_ylabel("judged fully right (%)")
    ax.set_title("Shapes world: quality against time (points at the recorded steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(table: dict[str, list[dict]], firsts: dict[str, dict], cpu: dict[str, float]) -> str:
    steps = [s["step"] for s in next(iter(table.values()))]
    head = " | ".join(f"all @{s}" for s in steps)
    lines = [
        f"| setting | {head} | shape @{steps[-1]} | colour @{steps[-1]} | CLIP B @{steps[-1]} | s/step | CPU s | median s to right |",
        "|---|" + "---:|" * (len(steps) + 6),
    ]
    for label, summary in table.items():
        accs = " | ".join(f"{s['all']:.0%}" for s in summary)
        last = summary[-1]
        lines.append(
            f"| {label} | {accs} | {last['shape']:.0%} | {last['colour']:.0%} | {last['clip_b_top1']:.0%} | "
            f"{last['seconds_per_step']:.3f} | {cpu.get(label, '')} | {firsts[label]['median_seconds']} |"
        )
    return "\n".join(lines)


def main():
    p = settings_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--only", help="comma-separated labels to run (default: all)")
    p.add_argument("--resume", action="store_true", help="keep finished settings in frontier.jsonl, run the rest")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    records = tuple(r for r in RECORDS if r <= args.steps)
    chosen = variants()
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "frontier.jsonl"
    table, firsts, cpu = {}, {}, {}
    if args.resume and path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["summary"][-1]["step"] != records[-1] or row.get("cases") not in (None, args.cases):
                raise SystemExit(f"{path} holds a run with other --steps or --cases; resume it with the same ones.")
            table[row["label"]], firsts[row["label"]] = row["summary"], row["first_right"]
            if "cpu_seconds" in row:
                cpu[row["label"]] = row["cpu_seconds"]
        print(f"resuming: {len(table)} settings already in {path}", flush=True)
    with open(path, "a" if args.resume else "w") as f:
        for label, overrides in chosen.items():
            if label in table:
                continue
            env, start = machine(), cpu_seconds()
            rows = run_suite(suite(args.cases), records, log=lambda _: None, **overrides)
            env["load_after"] = [round(v, 2) for v in os.getloadavg()]
            cpu[label] = round(cpu_seconds() - start, 1)
            table[label], firsts[label] = summarise(rows), first_right(rows)
            f.write(
                json.dumps(
                    {
                        "label": label,
                        "settings": overrides,
                        "cases": args.cases,
                        "machine": env,
                        "summary": table[label],
                        "first_right": firsts[label],
                        "cpu_seconds": cpu[label],
                    }
                )
                + "\n"
            )
            f.flush()
            print(
                f"{label}: {[round(s['all'], 3) for s in table[label]]} {table[label][-1]['seconds_per_step']:.3f} s/step "
                f"{cpu[label]} CPU s load {env['load_after']}",
                flush=True,
            )
    print(markdown(table, firsts, cpu))
    try:
        plot(table, args.out / "frontier.png")
    except ImportError:
        print("no plot: matplotlib is missing (pip install -e '.[bench]')")


if __name__ == "__main__":
    main()
