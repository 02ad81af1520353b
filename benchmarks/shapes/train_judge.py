"""Train the shapes world's independent judge (`vqclip.shapes.judge.Judge`): a CNN with three heads
(shape, colour, background) trained with cross-entropy on whole renders with one to three copies of the
shape, degraded (blur, noise, brightness) so that it reads VQGAN decodes as well as clean renders.

    python benchmarks/shapes/train_judge.py --threads 1      # writes vqclip/shapes/weights/judge.pt

Deterministic given --seed, --steps, --threads and the torch/numpy/Pillow/kornia versions.
"""

import time

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from common import Log, as_float, parser, renders, report, setup

from vqclip.shapes.judge import INPUT_SIZE, Judge

BATCH = 64


def degrade() -> torch.nn.Module:
    """What a decoded image may look like next to a clean render: softer edges, noise, a brightness shift."""
    return torch.nn.Sequential(
        K.RandomGaussianBlur((5, 5), (0.1, 1.5), p=0.5),
        K.RandomGaussianNoise(std=0.05, p=0.5),
        K.ColorJitter(brightness=0.08, contrast=0.08, p=0.5),
    )


@torch.no_grad()
def accuracy(model: Judge, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy of each head and of all three together."""
    right = (
        torch.cat([torch.stack([lg.argmax(-1) for lg in model(as_float(c))], 1) for c in images.split(256)]) == labels
    )
    hits = torch.cat([right.all(1, keepdim=True), right], 1).float().mean(0)
    return {k: round(v.item(), 4) for k, v in zip(("all", "shape", "colour", "background"), hits, strict=True)}


def main():
    args = parser(__doc__.splitlines()[0], seed=3, steps=1500).parse_args()
    started = time.perf_counter()
    rng = setup(args)
    # rendered at the judge's input size: the same box filter as a 128-pixel render area-resized to 64
    pool, pool_labels = renders(rng, 6000, size=INPUT_SIZE, copies=(1, 1, 1, 2, 3))
    held_out, held_labels = renders(rng, 1000)  # judged at 128 pixels, as in the benchmark
    held_multi, multi_labels = renders(rng, 500, copies=(2, 3))
    model = Judge()
    augment = degrade()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.05)
    log = Log(args.steps, every=100)
    for step in range(1, args.steps + 1):
        pick = torch.randint(len(pool), (BATCH,))
        x = augment(as_float(pool[pick])).clamp(0, 1)
        x = torch.where(torch.rand(BATCH, 1, 1, 1) < 0.5, x, x.flip(-1))
        logits = model(x)
        loss = sum(F.cross_entropy(lg, pool_labels[pick, k]) for k, lg in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log(step, loss=loss.item())
    model.eval()
    figures = {
        "held_out": accuracy(model, held_out, held_labels),
        "held_out_2_3_copies": accuracy(model, held_multi, multi_labels),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "judge.pt"
    torch.save(model.state_dict(), path)
    report(path, started, **figures)


if __name__ == "__main__":
    main()
