"""One progress event for every long job: optimisation steps, sliding-window GPT calls, upscaling tiles,
downloaded bytes. Library code reports through a `progress` callable that receives these; only the CLI
draws them (vqclip.cli.progress)."""

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """`done` of `total` units of one job.

    job: what is running: "optimize", "sliding", "upscale" or "download".
    unit: what is counted: "step", "call", "tile" or "byte".
    stage: the stage of a multi-stage run ("base", "transformer", "refine") or a file's label; "" if none.
    loss: the optimisation loss after this step (None where the job has no loss).
    phase: the story phase of an optimisation step.
    extra: job-specific figures that a reporter may show (e.g. per-prompt losses).
    """

    job: str
    done: int
    total: int | None
    unit: str = "step"
    stage: str = ""
    loss: float | None = None
    phase: int = 0
    extra: dict = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]


def ignore(event: Progress) -> None:
    """The default `progress` callable: report nothing."""


@dataclass
class Step:
    """The state after one CLIP-guided step, for callers that watch the image (frames, previews)."""

    i: int  # steps done in the run (a canvas counts its base steps, then its refinement's)
    steps: int  # steps of the whole run
    loss: float
    losses: list[float]
    phase: int  # story phase
    stage: str  # "" for a plain run; "base" or "refine" on a large canvas
    z: object  # the latent (a detached torch.Tensor)
    image: Callable  # () -> PIL.Image of the latent, decoded in fp32
    index: int = 0  # which image of a batched step (--n, batch --pack); 0 for a single image
