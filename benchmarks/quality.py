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
    python benchmarks/quality.py --cut-method latest --label latest --seeds 3 --save-images
    python benchmarks/quality.py --rescore latest       # the verdicts again from the saved images
    python benchmarks/quality.py --compare reference latest original   # side by side, the same runs

Each recorded image is also measured for coherence (vqclip.shapes.coherence): how many pieces the prompt's
colour falls into, the share of it in the largest, and the fragment-aware verdict (the judge on the largest
piece alone, which must also hold most of the colour); both verdicts are in the table.

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
from vqclip.shapes.coherence import fragment_verdict
from vqclip.shapes.judge import load_judge, to_tensor
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


def suite(n: int = 24, seeds: int = 1, first: int = 0, start: int = 0) -> list[Case]:
    """n cases; case k has shape k mod 5, colour k mod 6, background k mod 3, so 24 cover every value. Seed
    r of a prompt (r = first, ..., first + seeds - 1) is 1000 + k + 1000 r; all prompts of one seed come
    before the next. `start` skips the first prompts."""
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    return [
        Case(SHAPES[k % 5], colours[k % 6], backgrounds[k % 3], 1000 + k + 1000 * r)
        for r in range(first, first + seeds)
        for k in range(start, n)
    ]


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


class Watch:
    """Looks at one run's images as it goes: every JUDGE_EVERY steps both verdicts (the judge, and the
    fragment-aware one of vqclip.shapes.coherence) for the first step each calls the picture right, and at
    the recorded steps the full record. The time spent looking is not counted as the run's."""

    def __init__(self, case: Case, the_judge, records=RECORDS):
        self.case, self.the_judge, self.records = case, the_judge, records
        self.row = {"case": case, "prompt": case.prompt, "seed": case.seed, "records": [], "images": []}
        self.row |= {"first_right_step": None, "first_right_seconds": None, "first_right_one_piece_step": None}
        self.optimising, self.since = 0.0, time.perf_counter()

    def __call__(self, i: int, image) -> None:
        """After step i; `image()` gives its picture."""
        self.optimising += time.perf_counter() - self.since
        if i % JUDGE_EVERY == 0 or i in self.records:
            picture = image()
            case, row = self.case, self.row
            seen = fragment_verdict(picture, case.shape, case.colour, case.background, self.the_judge)
            seconds = round(self.optimising, 2)
            if row["first_right_step"] is None and seen["right"]["all"]:
                row["first_right_step"], row["first_right_seconds"] = i, seconds
            if row["first_right_one_piece_step"] is None and seen["right_one_piece"]:
                row["first_right_one_piece_step"] = i
            if i in self.records:
                row["records"].append({"step": i, "seconds": seconds, **seen})
                row["images"].append(picture)
        self.since = time.perf_counter()


def run_case(case: Case, cfg: GenerationConfig, models, the_judge, records=RECORDS) -> dict:
    """One prompt: the verdicts and the image at each recorded step, and the first step (and seconds of
    optimisation) at which the judge calls the image right."""
    cfg = replace(cfg, prompt=case.prompt, seed=case.seed, steps=max(records))
    watch = Watch(case, the_judge, records)
    vqclip.generate(cfg, models=models, callback=lambda state: watch(state.i, state.image))
    return watch.row


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
    """Per recorded step: judge accuracy per attribute and overall, the fragment-aware verdict ("one_piece"),
    the mean number of pieces and share of the largest, CLIP B top-1 and similarity, CLIP A top-1 and how
    often it ranks first an image the judge calls wrong ("fooled"), s/step."""
    out = []
    for k, rec in enumerate(rows[0]["records"]):
        recs = [r["records"][k] for r in rows]
        n = len(recs)
        out.append(
            {
                "step": rec["step"],
                "of": n,
                **{a: sum(r["right"][a] for r in recs) / n for a in ("shape", "colour", "background", "all")},
                "one_piece": sum(r.get("right_one_piece", False) for r in recs) / n,
                "pieces": sum(r.get("pieces", 0) for r in recs) / n,
                "largest_share": sum(r.get("largest_share", 0.0) for r in recs) / n,
                "clip_b_top1": sum(r["clip_b_top1"] for r in recs) / n,
                "clip_b_similarity": sum(r["clip_b_similarity"] for r in recs) / n,
                "clip_a_top1": sum(r["clip_a_top1"] for r in recs) / n,
                "fooled": sum(r["clip_a_top1"] and not r["right"]["all"] for r in recs) / n,
                "seconds": sum(r["seconds"] for r in recs) / n,
                "seconds_per_step": sum(r["seconds"] for r in recs) / n / rec["step"],
            }
        )
    return out


def first_right(rows: list[dict], key: str = "first_right_step") -> dict:
    """How many cases a verdict ever called right (`key`: the judge's first_right_step, or the fragment-aware
    first_right_one_piece_step), and the median steps (and, for the judge, seconds) until it did."""
    seconds = "first_right_seconds" if key == "first_right_step" else None
    hits = sorted((r[key], r[seconds] if seconds else None) for r in rows if r.get(key) is not None)
    if not hits:
        return {"cases": 0, "of": len(rows), "median_step": None, "median_seconds": None}
    mid = hits[len(hits) // 2]
    return {"cases": len(hits), "of": len(rows), "median_step": mid[0], "median_seconds": mid[1]}


def markdown(summary: list[dict], first: dict, first_one_piece: dict | None = None) -> str:
    lines = [
        "| steps | shape | colour | background | all three | one piece | pieces | largest share | CLIP B top-1 "
        "| CLIP A top-1 | fooled | s/step | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['step']} | {s['shape']:.0%} | {s['colour']:.0%} | {s['background']:.0%} | **{s['all']:.0%}** | "
            f"**{s['one_piece']:.0%}** | {s['pieces']:.2f} | {s['largest_share']:.2f} | {s['clip_b_top1']:.0%} | "
            f"{s['clip_a_top1']:.0%} | {s['fooled']:.0%} | {s['seconds_per_step']:.3f} | {s['seconds']:.1f} |"
        )
    lines.append("")
    lines.append(
        f"First judged right (looking every {JUDGE_EVERY} steps): {first['cases']} of {first['of']} runs, "
        f"median {first['median_step']} steps / {first['median_seconds']} s."
    )
    if first_one_piece is not None:
        lines.append(
            f"First right in one piece: {first_one_piece['cases']} of {first_one_piece['of']} runs, median "
            f"{first_one_piece['median_step']} steps."
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
        if "right_one_piece" in last:  # the fragment-aware verdict: "1" one piece and right, else the pieces
            mark += " 1" if last["right_one_piece"] else f" x{last['pieces']}"
        short = row["prompt"].removeprefix("a ").replace(" background", "")
        draw.text((x, y + side + 2), f"{short} s{row['seed']}", fill="black", font=font)
        draw.text(
            (x, y + side + 14),
            f"judge: {last['judge'].replace(' on ', '/')} {mark}",
            fill="black" if last["right"]["all"] and last.get("right_one_piece", True) else "red",
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
    p.add_argument("--seeds", type=int, default=1, help="seeds per prompt (1000 + k, then + 1000, + 2000, ...)")
    p.add_argument("--first-seed", type=int, default=0, help="start at the prompts' seed number R (0: 1000 + k)")
    p.add_argument("--from-case", type=int, default=0, help="skip the suite's first K prompts (with --cases N: K..N-1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--save-images", action="store_true", help="keep each recorded image in OUT/LABEL/")
    p.add_argument("--append", action="store_true", help="add to OUT/LABEL.jsonl instead of starting it anew")
    p.add_argument("--rescore", metavar="LABEL", help="recompute the verdicts of OUT/LABEL.jsonl from its images")
    return p


def image_path(out: Path, label: str, seed: int, step: int) -> Path:
    return out / label / f"s{seed}-{step:03d}.png"


def writer(out: Path, label: str, settings: dict, env: dict, save_images: bool, append: bool = False):
    """A `sink(row)` that appends the row to OUT/LABEL.jsonl at once (a partial run is still usable) and,
    with save_images, writes its recorded images; and the file to close."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / f"{label}.jsonl", "a" if append else "w")

    def sink(row):
        env["load_now"] = [round(v, 2) for v in os.getloadavg()]
        fields = {k: v for k, v in row.items() if k not in ("case", "images")}
        f.write(json.dumps({"label": label, "settings": settings, "machine": env, **fields}) + "\n")
        f.flush()
        if save_images:
            (out / label).mkdir(exist_ok=True)
            for record, image in zip(row["records"], row["images"], strict=True):
                image.save(image_path(out, label, row["seed"], record["step"]))

    return sink, f


def rescore(out: Path, label: str) -> list[dict]:
    """The rows of OUT/LABEL.jsonl with the recorded images' verdicts and coherence measured again from the
    saved images (the first-right steps stay as the run found them); the file is rewritten."""
    the_judge = load_judge()
    rows = [json.loads(line) for line in (out / f"{label}.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row["images"] = []
        case = next(c for c in suite(24, 10) if c.seed == row["seed"])
        for record in row["records"]:
            image = Image.open(image_path(out, label, row["seed"], record["step"])).convert("RGB")
            record.update(fragment_verdict(image, case.shape, case.colour, case.background, the_judge))
            row["images"].append(image)
    with open(out / f"{label}.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps({k: v for k, v in row.items() if k != "images"}) + "\n")
    return rows


def report(rows: list[dict], out: Path, label: str, header: str) -> None:
    """The contact sheet OUT/LABEL.png and the table on stdout."""
    contact_sheet(rows, out / f"{label}.png")
    print(f"\n{label}: {len(rows)} runs, {header}\n")
    print(markdown(summarise(rows), first_right(rows), first_right(rows, "first_right_one_piece_step")))


def compare(out: Path, labels: list[str]) -> str:
    """Side by side: the runs that every label has (the same prompts and seeds), per recorded step both
    verdicts and the coherence, the median first right step, per pair of labels the runs that only one of
    them got right (fragment-aware verdict, last step), and each label's contact sheet of those runs
    (OUT/side-LABEL.png) where its images were saved."""
    runs = {}
    for label in labels:
        rows = [json.loads(line) for line in (out / f"{label}.jsonl").read_text().splitlines() if line.strip()]
        runs[label] = {(r["prompt"], r["seed"]): r for r in rows}
    shared = sorted(set.intersection(*(set(r) for r in runs.values())), key=lambda k: (k[1], k[0]))
    n = len(shared)
    lines = [f"| of {n} runs (same prompts and seeds) | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    steps = [rec["step"] for rec in runs[labels[0]][shared[0]]["records"]] if shared else []
    for k, step in enumerate(steps):
        for name, get in (
            ("judge: all three right", lambda rec: rec["right"]["all"]),
            ("fragment-aware: right, one piece", lambda rec: rec["right_one_piece"]),
        ):
            counts = [sum(get(runs[lb][key]["records"][k]) for key in shared) for lb in labels]
            best = max(counts)
            cells = [f"**{c}**" if c == best else str(c) for c in counts]
            lines.append(f"| {name}, step {step} | " + " | ".join(cells) + " |")
        for name, field in (("mean pieces", "pieces"), ("mean largest share", "largest_share")):
            values = [sum(runs[lb][key]["records"][k][field] for key in shared) / max(n, 1) for lb in labels]
            lines.append(f"| {name}, step {step} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    for name, key in (("judge", "first_right_step"), ("fragment-aware", "first_right_one_piece_step")):
        cells = []
        for lb in labels:
            found = first_right([runs[lb][s] for s in shared], key)
            cells.append(f"{found['median_step']} ({found['cases']} runs)")
        lines.append(f"| median first right step, {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for label in labels:  # the contact sheets of the shared runs, where their images were saved
        rows = [runs[label][key] for key in shared]
        paths = [image_path(out, label, r["seed"], r["records"][-1]["step"]) for r in rows]
        if rows and all(p.exists() for p in paths):
            sheet = [r | {"images": [Image.open(p).convert("RGB")]} for r, p in zip(rows, paths, strict=True)]
            contact_sheet(sheet, out / f"side-{label}.png")
            lines.append(f"Contact sheet: {out / f'side-{label}.png'}")
    for other in labels[1:]:
        a, b = labels[0], other
        only = [
            sum(
                runs[x][s]["records"][-1]["right_one_piece"] and not runs[y][s]["records"][-1]["right_one_piece"]
                for s in shared
            )
            for x, y in ((a, b), (b, a))
        ]
        lines.append(f"Fragment-aware, last step: right only with {a} {only[0]}, only with {b} {only[1]}.")
    return "\n".join(lines)


def main():
    p = settings_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=max(RECORDS))
    p.add_argument("--label", default="default", help="names the output files")
    p.add_argument("--cutn", type=int)
    p.add_argument("--cut-pow", type=float)
    p.add_argument("--cut-method")
    p.add_argument("--lr", type=float)
    p.add_argument("--augment", help="comma-separated, or 'none'")
    p.add_argument("--precision")
    p.add_argument("--compare", nargs="+", metavar="LABEL", help="the side-by-side table of these labels' runs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare:
        print(compare(args.out, args.compare))
        return
    if args.rescore:
        report(rescore(args.out, args.rescore), args.out, args.rescore, "rescored from the saved images")
        return
    settings = {
        "cutn": args.cutn,
        "cut_pow": args.cut_pow,
        "cut_method": args.cut_method,
        "lr": args.lr,
        "precision": args.precision,
    }
    overrides = {k: v for k, v in settings.items() if v is not None}
    if args.augment is not None:
        overrides["augment"] = () if args.augment == "none" else tuple(args.augment.split(","))
    records = tuple(r for r in RECORDS if r <= args.steps)
    env = machine()
    sink, f = writer(args.out, args.label, overrides, env, args.save_images, args.append)
    with f:
        rows = run_suite(
            suite(args.cases, args.seeds, args.first_seed, args.from_case), records, sink=sink, **overrides
        )
    report(rows, args.out, args.label, f"settings {overrides or 'default'}; {env}")


if __name__ == "__main__":
    main()
