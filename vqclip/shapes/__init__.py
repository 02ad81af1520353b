"""The shapes world: renders of one coloured shape on a plain background, and small models really trained
on them on a CPU (a taming-format VQGAN, two OpenAI-layout CLIPs, an independent CNN judge), shipped with
the source so that prompt fidelity can be measured offline. Training scripts: benchmarks/shapes/.

The models are registry entries that need no download: `--vqgan shapes_f8 --clip shapes-a` (CLIP A
guides the quality benchmark, `shapes-b` scores it).
"""

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
VQGAN, CLIP_A, CLIP_B = "shapes_f8", "shapes-a", "shapes-b"  # registry names (vqclip.weights.pretrained)
