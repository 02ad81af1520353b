"""Step and batch progress on stderr: a rich bar, one JSON object per step, or nothing."""

import json
import sys
import time

from vqclip.cli.app import err_console


class StepReporter:
    """Turns the optimiser's per-step callback into a rich bar, JSON lines, or nothing, on stderr.

    For batches (`images` given) a second bar counts the images, with its own ETA.
    """

    def __init__(self, mode: str, steps: int, images: int | None = None):
        self.mode, self.steps, self.images = mode, steps, images
        self.progress = None
        self.latest = None
        self.image = 0
        self.stage = None  # the stage of a --transformer run the bar shows

    def __enter__(self):
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[loss]}"),
                console=err_console(),
            )
            self.progress.__enter__()
            if self.images is not None:
                self.batch_task = self.progress.add_task("batch", total=self.images, rate="", loss="")
            self.task = self.progress.add_task("generating", total=self.steps, rate="", loss="")
        self.start = time.perf_counter()
        return self

    def next_image(self, label: str) -> None:
        """A new image of a batch starts."""
        self.image += 1
        self.latest = None
        self.start = time.perf_counter()
        if self.progress:
            self.progress.reset(self.task, total=self.steps, description=label[:40], rate="", loss="")

    def image_done(self) -> None:
        if self.progress and self.images is not None:
            self.progress.advance(self.batch_task)

    def __call__(self, state: dict) -> None:
        stage = state.get("stage")
        if stage != self.stage:  # a new stage of a --transformer run: a fresh bar and ETA
            self.stage = stage
            self.start = time.perf_counter()
            if self.progress:
                self.progress.reset(self.task, total=state.get("steps", self.steps), description=stage or "generating")
        self.latest = state
        elapsed = time.perf_counter() - self.start
        i = state["i"]
        total = state.get("steps", self.steps)
        if self.mode == "bar":
            rate = i / elapsed if elapsed else 0.0
            rate_text = f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it" if rate else ""
            loss = "" if state["loss"] != state["loss"] else f"loss {state['loss']:.4f}"  # NaN: no loss in this stage
            self.progress.update(self.task, completed=i, total=total, rate=rate_text, loss=loss)
        elif self.mode == "json":
            record = {
                "step": i,
                "steps": total,
                "loss": None if state["loss"] != state["loss"] else round(state["loss"], 6),
                "phase": state.get("phase", 0),
                "elapsed": round(elapsed, 3),
                "eta": round(elapsed / i * (total - i), 3),
            }
            if stage:
                record["stage"] = stage
            if self.images is not None:
                record.update(image=self.image, images=self.images)
            print(json.dumps(record), file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)
