"""Step 6 of a generation: run a prepared job and write what it makes. This is the one place that decides
what is kept when something goes wrong, so that nothing finished is ever lost:

- a signal (Ctrl-C, SIGTERM, SIGHUP; the CLI turns the last two into `Interrupted`) writes the latest
  image to OUTPUT.partial.png and raises Interrupted with its path;
- a closed frame pipe ends the run quietly with the latest image saved the same way;
- a frame sink that fails otherwise (a full device) is dropped, and the run goes on to its PNG;
- a failed PNG write keeps the image in a fallback folder named in the error;
- a failed upscale keeps the image as generated.
"""

import tempfile
from pathlib import Path

from vqclip.errors import FramePipeClosed, Interrupted, OutputError, VqclipError
from vqclip.events import ProgressFn, ignore
from vqclip.guidance import Step
from vqclip.job import Job
from vqclip.loading import Models
from vqclip.metadata import parameters, record
from vqclip.output import FrameSink, OutputOptions, png_info, save_png
from vqclip.pipeline import Result, run, upscale_result


class PipeClosed(Exception):
    """The reader of the frame stream went away."""


def fallback_dir() -> Path:
    return Path(tempfile.gettempdir()) / "vqclip-rescued"


def write(result: Result, path: Path, overwrite: bool) -> Path:
    """Save a result's PNG with its metadata; on a failed write keep it in the fallback folder."""
    info = png_info(parameters(result), record(result))
    try:
        return save_png(result.image, path, info, overwrite)
    except OSError as err:
        reason = err.strerror or str(err)
        try:
            rescued = save_png(result.image, fallback_dir() / path.name, info)
        except OSError:
            raise OutputError(f"Could not write {path} ({reason}), nor a copy in {fallback_dir()}.") from err
        error = OutputError(f"Could not write {path} ({reason}); the image was saved to {rescued} instead.")
        error.saved = rescued
        raise error from err


class _Watcher:
    """Follows the steps: keeps the latest, writes the progress preview and the frames."""

    def __init__(self, job: Job, out: OutputOptions):
        self.job, self.out = job, out
        self.latest: Step | None = None
        self.sink = FrameSink(out.frames, out.video) if (out.frames is not None or out.video) else None
        self.sink_error: OSError | None = None

    def __call__(self, step: Step) -> None:
        self.latest = step
        out = self.out
        if out.save_every and step.i % out.save_every == 0 and step.i < step.steps:
            save_png(step.image(), out.progress_path, overwrite=True)
        if self.sink is not None and step.i % self.job.cfg.frames_every == 0:
            try:
                self.sink.write(step.image())
            except BrokenPipeError as err:
                raise PipeClosed from err
            except OSError as err:  # e.g. a full device: the frames stop, the run and its PNG go on
                self.sink_error, self.sink = err, None

    def partial(self, models: Models) -> Result | None:
        """The latest image as an incomplete result, or None before the first step."""
        step = self.latest
        if step is None:
            return None
        cfg = self.job.cfg
        return Result(
            step.image(),
            cfg,
            step.loss,
            0.0,
            step.i,
            models.names(),
            str(models.device),
            models.precision,
            self.job.plan,
            step.z,
            complete=False,
            inputs=self.job.inputs,
        )

    def close(self) -> None:
        self.out.progress_path.unlink(missing_ok=True)
        if self.sink is not None:
            self.sink.close()


def render(job: Job, models: Models, out: OutputOptions, progress: ProgressFn = ignore) -> Result:
    """Run the job and write its PNG (and frames); returns the result, with `path` where it was written.
    See the module docstring for what is kept when the run is interrupted or a write fails."""
    watcher = _Watcher(job, out)
    try:
        result = run(job, models, progress=progress, on_step=watcher, upscale=False)
    except (KeyboardInterrupt, Interrupted, PipeClosed) as err:
        partial = watcher.partial(models)
        saved = write(partial, out.partial_path, overwrite=True) if partial is not None else None
        if isinstance(err, PipeClosed):
            closed = FramePipeClosed("The frame pipe was closed.")
            closed.saved = saved
            raise closed from None
        signal_name, code = (err.signal_name, err.exit_code) if isinstance(err, Interrupted) else ("Ctrl-C", 130)
        raise Interrupted(signal_name, code, saved, partial and partial.steps_done) from None
    finally:
        watcher.close()
    if job.cfg.upscale > 1:
        try:
            upscale_result(result, models, progress=progress)
        except (VqclipError, RuntimeError, MemoryError) as err:
            saved = write(result, out.path, out.overwrite)
            error = VqclipError(f"Upscaling failed ({err}); the image as generated is in {saved}.")
            error.saved = saved
            raise error from err
    result.path = saved = write(result, out.path, out.overwrite)
    out.partial_path.unlink(missing_ok=True)  # a resumed run replaces its interrupted attempt
    if watcher.sink_error is not None:
        err = watcher.sink_error
        error = OutputError(f"Writing the frames failed ({err.strerror or err}); the final image is in {saved}.")
        error.saved = saved
        raise error
    return result
