"""The shapes world: renders of one coloured shape on a plain background, and small models really trained
on them on a CPU (a taming-format VQGAN, two OpenAI-layout CLIPs, an independent CNN judge), shipped with
the source so that prompt fidelity can be measured offline. Training scripts: benchmarks/shapes/.
"""

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
VQGAN = WEIGHTS / "shapes_f8.ckpt"  # its taming model.yaml is shapes_f8.yaml beside it


def clip_spec(which: str) -> str:
    """The `--clip CONFIG.json:WEIGHTS` value of CLIP "a" (guides the benchmark) or "b" (scores it)."""
    return f"{WEIGHTS / f'shapes-{which}.json'}:{WEIGHTS / f'shapes-{which}.pt'}"
