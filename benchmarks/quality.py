"""Prompt fidelity in the shapes world: does the image show what the prompt asks for?

A fixed suite of prompts ("a red star on a white background", every shape, colour and background) runs
at 128x128 with fixed seeds, the shapes VQGAN and CLIP A guiding. At each recorded step the image is
scored by two models that did not guide it: the judge (a CNN: shape, colour, background) and CLIP B
(which of the 90 class captions it ranks first, and its similarity to the prompt). The judge also looks
every few steps to find when it first calls the image right. CLIP A's own ranking is recorded too: an
image that CLIP A ranks as the prompt but the judge calls wrong has fooled the guide (the optimisation
reached its goal, and the guide's goal was wrong), where one that CLIP A does not rank first has not got
there. Writes JSON lines, a contact sheet and a markdown table:

    python benchmarks/quality.py                        # the suite, default settings, 200 steps
    python benchmarks/quality.py --cutn 16 --label cutn16 --cases 8 --steps 100

Timings are the optimisation's alone (judging is excluded); take them on a quiet machine.
"""

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

import vqclip
from vqclip.config import GenerationConfig
from vqclip.shapes import CLIP_A, CLIP_B, VQGAN
from vqclip.shapes.judge import judge, load_judge, to_tensor
from vqclip.shapes.scenes import BACKGROUNDS, COLOURS, SHAPES, all_classes, prompt

RECORDS = (25, 50, 100, 200)
JUDGE_EVERY = 5  # steps between the judge's looks for "first judged right"
OUT = Path(__file__).parent / "quality"


@dataclass(frozen=True)
class Case:
    shape: str
    colour: str
    background: str
    seed: int

    @property
    def prompt(self) -> str:
        return prompt(self.shape, self.colour, self.background)


def suite(n: int = 24) -> list[Case]:
    """n cases; case k has shape k mod 5, colour k mod 6, background k mod 3, so 24 cover every value."""
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    return [Case(SHAPES[k % 5], colours[k % 6], backgrounds[k % 3], 1000 + k) for k in range(n)]


def base_config(**overrides) -> GenerationConfig:
    """The suite's settings: vqclip's defaults, the shapes models, 128x128."""
    settings = {"prompt": "-", "vqgan": VQGAN, "clip": (CLIP_A,), "size": (128, 128)}
    return GenerationConfig(**(settings | overrides))


class ClipRank:
    """Does a CLIP rank the prompt's class caption first among all 90, on the whole image? Its fields are
    named `{key}_top1` and `{key}_similarity`: CLIP B ("clip_b") did not guide, CLIP A ("clip_a") did."""

    def __init__(self, spec: str, key: str):
        cfg = base_config(clip=(spec,), precision="fp32", device="cpu")
        self.clip, self.key = vqclip.load_models(cfg).clips[0], key
        self.captions = F.normalize(self.clip.encode_text([prompt(*c) for c in all_classes()]), dim=-1)  # (90, D)

    @torch.no_grad()
    def __call__(self, image: Image.Image, case: Case) -> dict:
        size = self.clip.input_size
        x = F.interpolate(to_tensor(image), size=(size, size), mode="area")
        sims = self.captions @ F.normalize(self.clip.encode_image(x).float(), dim=-1)[0]
        truth = all_classes().index((case.shape, case.colour, case.background))
        return {f"{self.key}_top1": int(sims.argmax()) == truth, f"{self.key}_similarity": round(float(sims[truth]), 4)}


def run_case(case: Case, cfg: GenerationConfig, models, the_judge, records=RECORDS) -> dict:
    """One prompt: the judge's verdict and the image at each recorded step, and the first step (and
    seconds of optimisation) at which the judge calls the image right."""
    cfg = replace(cfg, prompt=case.prompt, seed=case.seed, steps=max(records))
    row = {"case": case, "prompt": case.prompt, "seed": case.seed, "records": [], "images": []}
    row |= {"first_right_step": None, "first_right_seconds": None}
    clock = {"optimising": 0.0, "since": time.perf_counter()}

    def callback(state):
        clock["optimising"] += time.perf_counter() - clock["since"]
        i = state.i
        if i % JUDGE_EVERY == 0 or i in records:
            image = state.image()
            verdict = judge(image, the_judge)[0]
            right = verdict.check(case.shape, case.colour, case.background)
            if row["first_right_step"] is None and right["all"]:
                row["first_right_step"], row["first_right_seconds"] = i, round(clock["optimising"], 2)
            if i in records:
                seconds = round(clock["optimising"], 2)
                row["records"].append({"step": i, "seconds": seconds, "judge": str(verdict), "right": right})
                row["images"].append(image)
        clock["since"] = time.perf_counter()  # the judging above is not the optimisation's time

    vqclip.generate(cfg, models=models, callback=callback)
    return row


def run_suite(cases: list[Case], records=RECORDS, log=print, sink=None, **overrides) -> list[dict]:
    """Every case with the given settings (GenerationConfig fields); the models load once. CLIP B and
    CLIP A score each case's recorded images after its run; `sink(row)` gets each finished row (partial
    results survive)."""
    cfg = base_config(**overrides)
    models = vqclip.load_models(cfg)
    the_judge, clips = load_judge(), (ClipRank(CLIP_B, "clip_b"), ClipRank(CLIP_A, "clip_a"))
    rows = []
    for case in cases:
        row = run_case(case, cfg, models, the_judge, records)
        for record, image in zip(row["records"], row["images"], strict=True):
            for clip in clips:
                record.update(clip(image, case))
        last = row["records"][-1]
        log(
            f"{case.prompt!r:48} seed {case.seed}: judged {last['judge']!r} right={last['right']['all']} "
            f"first right at {row['first_right_step']} ({last['seconds']:.0f} s)"
        )
        if sink is not None:
            sink(row)
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per recorded step: judge accuracy per attribute and overall, CLIP B top-1 and similarity, CLIP A
    top-1 and how often it ranks first an image the judge calls wrong ("fooled"), s/step."""
    out = []
    for k, rec in enumerate(rows[0]["records"]):
        recs = [r["records"][k] for r in rows]
        n = len(recs)
        out.append(
            {
                "step": rec["step"],
                **{a: sum(r["right"][a] for r in recs) / n for a in ("shape", "colour", "background", "all")},
                "clip_b_top1": sum(r["clip_b_top1"] for r in recs) / n,
                "clip_b_similarity": sum(r["clip_b_similarity"] for r in recs) / n,
                "clip_a_top1": sum(r["clip_a_top1"] for r in recs) / n,
                "fooled": sum(r["clip_a_top1"] and not r["right"]["all"] for r in recs) / n,
                "seconds": sum(r["seconds"] for r in recs) / n,
                "seconds_per_step": sum(r["seconds"] for r in recs) / n / rec["step"],
            }
        )
    return out


def first_right(rows: list[dict]) -> dict:
    """How many cases the judge ever called right, and the median steps and seconds until it did."""
    hits = sorted((r["first_right_step"], r["first_right_seconds"]) for r in rows if r["first_right_step"] is not None)
    if not hits:
        return {"cases": 0, "of": len(rows), "median_step": None, "median_seconds": None}
    mid = hits[len(hits) // 2]
    return {"cases": len(hits), "of": len(rows), "median_step": mid[0], "median_seconds": mid[1]}


def markdown(summary: list[dict], first: dict) -> str:
    lines = [
        "| steps | shape | colour | background | all three | CLIP B top-1 | CLIP B sim | CLIP A top-1 | fooled | s/step | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['step']} | {s['shape']:.0%} | {s['colour']:.0%} | {s['background']:.0%} | **{s['all']:.0%}** | "
            f"{s['clip_b_top1']:.0%} | {s['clip_b_similarity']:.3f} | {s['clip_a_top1']:.0%} | {s['fooled']:.0%} | "
            f"{s['seconds_per_step']:.3f} | {s['seconds']:.1f} |"
        )
    lines.append("")
    lines.append(
        f"First judged right (looking every {JUDGE_EVERY} steps): {first['cases']} of {first['of']} prompts, "
        f"median {first['median_step']} steps / {first['median_seconds']} s."
    )
    return "\n".join(lines)


def contact_sheet(rows: list[dict], path: Path, columns: int = 6) -> None:
    """The final images in a grid, each captioned with its prompt and the judge's verdict."""
    side, text_h = 128, 30
    rows_n = (len(rows) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (side + 4), rows_n * (side + text_h + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=9)
    for k, row in enumerate(rows):
        x, y = (k % columns) * (side + 4) + 2, (k // columns) * (side + text_h + 4) + 2
        sheet.paste(row["images"][-1], (x, y))
        last = row["records"][-1]
        mark = "ok" if last["right"]["all"] else "WRONG"
        short = row["prompt"].removeprefix("a ").replace(" background", "")
        draw.text((x, y + side + 2), short, fill="black", font=font)
        draw.text(
            (x, y + side + 14),
            f"judge: {last['judge'].replace(' on ', '/')} {mark}",
            fill="black" if mark == "ok" else "red",
            font=font,
        )
    sheet.save(path)


def machine() -> dict:
    """The CPU and the load, recorded with every figure."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown"
    )
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return {
        "cpu": model,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "threads": torch.get_num_threads(),
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
    }


def settings_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--cases", type=int, default=24, help="the first N prompts of the suite")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    return p


def main():
    p = settings_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=max(RECORDS))
    p.add_argument("--label", default="default", help="names the output files")
    p.add_argument("--cutn", type=int)
    p.add_argument("--cut-pow", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--augment", help="comma-separated, or 'none'")
    p.add_argument("--precision")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {
        k: v
        for k, v in {"cutn": args.cutn, "cut_pow": args.cut_pow, "lr": args.lr, "precision": args.precision}.items()
        if v is not None
    }
    if args.augment is not None:
        overrides["augment"] = () if args.augment == "none" else tuple(args.augment.split(","))
    records = tuple(r for r in RECORDS if r <= args.steps)
    env = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{args.label}.jsonl", "w") as f:

        def sink(row):
            env["load_now"] = [round(v, 2) for v in os.getloadavg()]
            fields = {k: v for k, v in row.items() if k not in ("case", "images")}
            f.write(json.dumps({"label": args.label, "settings": overrides, "machine": env, **fields}) + "\n")
            f.flush()

        rows = run_suite(suite(args.cases), records, sink=sink, **overrides)
    contact_sheet(rows, args.out / f"{args.label}.png")
    summary, first = summarise(rows), first_right(rows)
    print(f"\n{args.label}: {len(rows)} prompts, settings {overrides or 'default'}; {env}\n")
    print(markdown(summary, first))


if __name__ == "__main__":
    main()
