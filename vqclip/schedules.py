"""How the latent is stepped and when the loop ends: the optimiser (torch's own, by name), the learning-rate
schedule, and the `Tracker` behind --keep best and --auto-stop.

- optimisers: nerdyrodent's `-opt` list without DiffGrad and AdamP (they need the torch-optimizer package)
  plus NAdam; Adam is the reference's and the default;
- schedules: constant; drop, pixray's: the rate divided by 10 for the last quarter of the steps; cosine,
  from the rate down to 0 over the steps;
- the tracker scores the image of every step by the guiding CLIPs' loss on one fixed set of cutouts per
  guide (and per region), drawn once from a generator of its own seeded from the run's seed, so that steps
  are compared on the same cutouts and the run's own draws are not moved. It keeps the best latent of the
  story's last phase (--keep best) and says when the loss has not improved for `patience` steps
  (--auto-stop); a new story phase starts the count again.
"""

import math

import torch

from vqclip.config import KEEPS, OPTIMIZERS  # noqa: F401  (the names, without torch, for the CLI)
from vqclip.config import LR_SCHEDULES as SCHEDULES

EVAL_SEED_OFFSET = 0x5EED  # the tracker's generator: the run's seed plus this (the run's draws stay as they were)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """torch's optimiser by its lower-case name, with torch's defaults besides the learning rate."""
    table = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "radam": torch.optim.RAdam,
        "nadam": torch.optim.NAdam,
        "adamax": torch.optim.Adamax,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
    }
    if name not in table:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {name!r}")
    return table[name](params, lr=lr)


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning rate's multiplier at step `step` (0-based) of `steps`."""
    if schedule == "constant":
        return 1.0
    if schedule == "drop":
        return 0.1 if step >= round(0.75 * steps) else 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / steps))
    raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")


class Tracker:
    """Scores each step's image on fixed cutouts; keeps the best latent and says when to stop."""

    def __init__(self, seed: int, keep_best: bool = False, patience: int = 0):
        self.generator = torch.Generator().manual_seed((seed + EVAL_SEED_OFFSET) % 2**63)
        self.keep_best, self.patience = keep_best, patience
        self.draws: dict = {}  # (guide index, region index or -1) -> the fixed CutoutDraw
        self.phase = None
        self.best_loss, self.best_step, self.best_z = math.inf, None, None
        self.last_loss, self.last_step = math.nan, None
        self.stopped_at: int | None = None  # the steps done when --auto-stop ended the run

    def _draw(self, key, cutouts, height: int, width: int):
        if key not in self.draws:
            self.draws[key] = cutouts.draw(height, width, self.generator)
        return self.draws[key]

    @torch.no_grad()
    def guide_loss(self, guides, phase: int, image: torch.Tensor, chunk: int | None = None) -> float:
        """The summed target losses of every guide (global prompts and regions) on the fixed cutouts."""
        total = 0.0
        for g, guide in enumerate(guides):
            parts = [(-1, image, guide.phases[phase])]
            for r, region in enumerate(guide.regions):
                x0, y0, x1, y1 = region.box
                parts.append((r, region.masked(image[:, :, y0:y1, x0:x1]), region.targets))
            for r, pixels, targets in parts:
                if not targets:
                    continue
                draw = self._draw((g, r), guide.cutouts, pixels.shape[2], pixels.shape[3])
                n = len(draw)
                step = chunk or n
                for start in range(0, n, step):
                    part = draw[start : start + step]
                    embeds = guide.clip.encode_image(guide.cutouts(pixels, part)).float()
                    total += sum(float(t.loss(embeds)) * len(part) / n for t in targets)
        return total

    def observe(self, done: int, phase: int, z: torch.Tensor, loss: float) -> None:
        """The image of latent `z`, after `done` steps in story phase `phase`, scored `loss`."""
        if phase != self.phase:
            self.phase, self.best_loss, self.best_step, self.best_z = phase, math.inf, None, None
        self.last_loss, self.last_step = loss, done
        if loss < self.best_loss:
            self.best_loss, self.best_step = loss, done
            self.best_z = z.detach().clone() if self.keep_best else None

    def should_stop(self, done: int) -> bool:
        """Whether `patience` steps have passed since the best loss of this phase."""
        return bool(self.patience) and self.best_step is not None and done - self.best_step >= self.patience

    def record(self) -> dict:
        """What the PNG record says about it."""
        out = {"guide_loss": round(self.last_loss, 6), "scored_step": self.last_step}
        out |= {"best_step": self.best_step, "best_guide_loss": round(self.best_loss, 6)}
        if self.stopped_at is not None:
            out["stopped_at"] = self.stopped_at
        return out
