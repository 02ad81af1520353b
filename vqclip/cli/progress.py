"""The one reporter: draws vqclip.events.Progress on stderr as rich bars, one JSON object per event, or
nothing. Every long job (optimisation steps, GPT calls, upscaling tiles, downloads, the images of a batch)
reports the same event shape, so this is the only drawing code."""

import json
import sys
import time

from vqclip.cli.app import err_console
from vqclip.events import Progress

UNITS = {"step": "it", "call": "call", "tile": "tile", "image": "image", "frame": "frame"}
OUTER = ("batch", "restyle")  # jobs over many images (prompts, frames): their bar stays above the steps


class Reporter:
    """A callable that takes Progress events; a context manager around the run that shows them.

    mode: "bar" (rich, only when stderr is a terminal or `force_bar`), "json" or "none". Messages and
    output lines printed through `message` and `output` appear above a live bar instead of through it.
    """

    def __init__(self, mode: str = "bar"):
        self.mode = mode
        self.console = err_console()
        self.progress = None
        self.tasks = {}  # (job, stage) -> (task id, start time)
        self.latest: Progress | None = None

    def __enter__(self):
        if self.mode == "bar":
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bars

            self.progress = Bars(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[amount]}"),  # 12/300, or 12.3/980.1 MB for a download
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[loss]}"),
                console=self.console,
                redirect_stdout=False,  # stdout carries data; never let it be drawn on stderr
                redirect_stderr=False,
                transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
            self.progress = None

    # ---- lines of text -------------------------------------------------------------------------

    def message(self, text: str) -> None:
        """A line for the user on stderr (above a live bar); nothing with --quiet."""
        if self.mode != "none":
            self.console.print(text, markup=False, highlight=False)

    def output(self, text: str) -> None:
        """A line of data on stdout. When a bar is live on the same terminal, it goes above the bar."""
        if self.progress is not None and sys.stdout.isatty() and self.console.is_terminal:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    # ---- events --------------------------------------------------------------------------------

    def __call__(self, event: Progress) -> None:
        note = event.extra.get("note")
        if note:  # a word from a long job (a download retrying, waiting for another process)
            self.message(f"{event.stage}: {note}" if event.stage else note)
            return
        if event.job not in OUTER:
            self.latest = event
        if self.mode == "json":
            self._json(event)
        elif self.progress is not None:
            self._bar(event)

    def _task(self, event: Progress):
        key = (event.job, "" if event.job in OUTER else event.stage)
        if key not in self.tasks:
            if event.job not in OUTER:
                self._drop_bars()  # a new stage or job: the last one's bar goes
            label = {"batch": "batch", "restyle": "frames", "optimize": event.stage or "generating"}.get(
                event.job, event.stage or event.job
            )
            task = self.progress.add_task(label[:40], total=event.total, rate="", loss="", amount="")
            self.tasks[key] = (task, time.perf_counter(), event.done)  # the rate counts from here
        return self.tasks[key]

    def _bar(self, event: Progress) -> None:
        task, start, first = self._task(event)
        if event.job in OUTER:  # a new image starts: its step bars start afresh
            self._drop_bars()
            self.progress.update(task, completed=event.done, total=event.total, amount=amount(event))
            return
        elapsed = time.perf_counter() - start
        rate = (event.done - first) / elapsed if event.done > first and elapsed else 0.0
        if event.unit == "byte":
            rate_text = f"{rate / 1e6:.1f} MB/s" if rate else ""
        else:
            unit = UNITS.get(event.unit, event.unit)
            rate_text = f"{rate:.2f} {unit}/s" if rate >= 1 else f"{1 / rate:.2f} s/{unit}" if rate else ""
        loss = f"loss {event.loss:.4f}" if event.loss is not None else ""
        self.progress.update(
            task, completed=event.done, total=event.total, rate=rate_text, loss=loss, amount=amount(event)
        )

    def _drop_bars(self) -> None:
        for key in [k for k in self.tasks if k[0] not in OUTER]:
            task = self.tasks.pop(key)[0]
            self.progress.remove_task(task)

    def _json(self, event: Progress) -> None:
        key = (event.job, event.stage)
        start = self.tasks.setdefault(key, (None, time.perf_counter(), event.done))[1]
        elapsed = time.perf_counter() - start
        record = {"job": event.job, "done": event.done, "total": event.total, "unit": event.unit}
        if event.stage:
            record["stage"] = event.stage
        if event.job == "optimize":
            record.update(step=event.done, steps=event.total, phase=event.phase)
        if event.loss is not None:
            record["loss"] = round(event.loss, 6)
        record["elapsed"] = round(elapsed, 3)
        if event.total and event.done:
            record["eta"] = round(elapsed / event.done * (event.total - event.done), 3)
        print(json.dumps(record), file=sys.stderr, flush=True)


def amount(event: Progress) -> str:
    """How far a job is, for the bar: "12/300", or in MB or GB for bytes ("12.3/980.1 MB", "1.20/4.26 GB")."""
    if event.unit != "byte":
        return f"{event.done}/{event.total}" if event.total is not None else str(event.done)
    scale, unit, digits = (1e9, "GB", 2) if (event.total or event.done) >= 1e9 else (1e6, "MB", 1)
    done = f"{event.done / scale:.{digits}f}"
    return f"{done}/{event.total / scale:.{digits}f} {unit}" if event.total else f"{done} {unit}"
