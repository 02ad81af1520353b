"""Step 5 of a generation: run a prepared job and write what it makes. This is the one place that decides
what is kept when something goes wrong, so that nothing finished is ever lost:

- a signal (Ctrl-C, SIGTERM, SIGHUP; the CLI turns the last two into `Interrupted`) writes the latest
  image to OUTPUT.partial.png and raises Interrupted with its path;
- OUTPUT.partial.png and the --save-every preview OUTPUT.progress.png are replaced or removed only when
  vqclip wrote them for this same image (a resumed run's earlier attempt); any other file of that name
  is kept, and ours goes to OUTPUT.partial-1.png (or -2, ...) instead;
- a closed frame pipe ends the run quietly with the latest image saved the same way;
- a frame sink that fails otherwise (a full device) is dropped, and the run goes on to its PNG;
- a failed PNG write keeps the image in a fallback folder named in the error;
- a failed upscale keeps the image as generated.
"""

import json
import tempfile
from pathlib import Path

from vqclip.config import GenerationConfig
from vqclip.errors import FramePipeClosed, Interrupted, OutputError, VqclipError
from vqclip.events import ProgressFn, Step, ignore
from vqclip.metadata import parameters, read_record, record
from vqclip.models import Models
from vqclip.output import FrameSink, OutputOptions, VideoPipeBroken, png_info, save_png
from vqclip.pipeline.prepare import Job
from vqclip.pipeline.run import Result, make_result, run, run_many, upscale


class PipeClosed(Exception):
    """The reader of the frame stream went away."""


def fallback_dir() -> Path:
    return Path(tempfile.gettempdir()) / "vqclip-rescued"


def save(result: Result, path: Path, overwrite: bool) -> Path:
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


def same_image(path: Path, cfg: GenerationConfig) -> bool:
    """Whether `path` is a PNG that vqclip wrote with exactly these settings and seed."""
    if not path.exists():
        return False
    try:
        return read_record(path)["config"] == json.loads(json.dumps(cfg.to_dict()))  # as the record holds it
    except Exception:  # anything a file of the user's can raise (not an image, a bomb, no record): not ours
        return False


def write_partial(result: Result, path: Path) -> Path:
    """The latest image of an interrupted run: it replaces an earlier attempt at the same image, and
    nothing else."""
    return save(result, path, overwrite=same_image(path, result.config))


class _Watcher:
    """Follows the steps: keeps the latest, writes the progress preview and the frames."""

    def __init__(self, job: Job, out: OutputOptions):
        self.job, self.out = job, out
        self.latest: Step | None = None
        self.sink = (
            FrameSink(out.frames, out.video, overwrite=out.overwrite) if (out.frames is not None or out.video) else None
        )
        self.sink_error: OSError | None = None
        self.progress_path: Path | None = None  # where this run's preview went: the only one it replaces

    def __call__(self, step: Step) -> None:
        self.latest = step
        out = self.out
        if out.save_every and step.i % out.save_every == 0 and step.i < step.steps:
            # the first preview takes a free name (never a file that was there), the later ones replace it
            self.progress_path = save_png(
                step.image(), self.progress_path or out.progress_path, overwrite=bool(self.progress_path)
            )
        if self.sink is not None and step.i % self.job.cfg.frames_every == 0:
            try:
                self.sink.write(step.image())
            except BrokenPipeError as err:
                if not isinstance(err, VideoPipeBroken):
                    raise PipeClosed from err  # the reader of --frames - went away: the run ends quietly
                sink, self.sink = self.sink, None  # ffmpeg died: the frames stop, the run and its PNG go on
                sink.close(abort=True)
                self.sink_error = OSError(f"ffmpeg stopped with exit code {sink.proc.returncode}")
            except OSError as err:  # e.g. a full device: the frames stop, the run and its PNG go on
                self.sink_error, sink, self.sink = err, self.sink, None
                sink.close(abort=True)

    def partial(self, models: Models) -> Result | None:
        """The latest image as an incomplete result, or None before the first step."""
        step = self.latest
        if step is None:
            return None
        return make_result(self.job, models, step.z, step.loss, step.i)

    def finish(self) -> Path | None:
        """Close the frames; returns where the video went, if any."""
        sink, self.sink = self.sink, None
        return sink.close() if sink is not None else None

    def close(self) -> None:
        if self.progress_path is not None:
            self.progress_path.unlink(missing_ok=True)
        if self.sink is not None:
            self.sink, sink = None, self.sink
            sink.close(abort=True)


def write(job: Job, models: Models, out: OutputOptions, progress: ProgressFn = ignore) -> Result:
    """Run the job and write its PNG (and frames); returns the result, with `path` where it was written.
    See the module docstring for what is kept when the run is interrupted or a write fails."""
    watcher = _Watcher(job, out)
    try:
        try:
            result = run(job, models, progress=progress, on_step=watcher)
        except (KeyboardInterrupt, Interrupted, PipeClosed) as err:
            partial = watcher.partial(models)
            saved = write_partial(partial, out.partial_path) if partial is not None else None
            if isinstance(err, PipeClosed):
                closed = FramePipeClosed("The frame pipe was closed.")
                closed.saved = saved
                raise closed from None
            raise _interrupted(err, [saved] if saved else [], partial and partial.steps_done) from None
        result = finish(result, models, out, progress)
        try:
            result.video = watcher.finish()
        except (OSError, VqclipError) as err:
            error = OutputError(f"{getattr(err, 'message', err)} The final image is in {result.path}.")
            error.saved = result.path
            raise error from err
    finally:
        watcher.close()  # removes the preview, and discards a video that did not finish
    if watcher.sink_error is not None:
        err = watcher.sink_error
        error = OutputError(f"Writing the frames failed ({err.strerror or err}); the final image is in {result.path}.")
        error.saved = result.path
        raise error
    return result


def finish(result: Result, models: Models, out: OutputOptions, progress: ProgressFn = ignore) -> Result:
    """A finished run's image: upscaled when its config asks (a failed upscale keeps the image as generated),
    saved, and its interrupted attempt's OUTPUT.partial.png removed."""
    if result.config.upscale > 1:
        try:
            result = upscale(result, models, progress=progress)
        except (VqclipError, RuntimeError, MemoryError) as err:
            saved = save(result, out.path, out.overwrite)
            error = VqclipError(f"Upscaling failed ({err}); the image as generated is in {saved}.")
            error.saved = saved
            raise error from err
    result.path = save(result, out.path, out.overwrite)
    if result.complete and same_image(out.partial_path, result.config):  # it replaces its interrupted attempt
        out.partial_path.unlink()
    return result


def _interrupted(err, saved: list, steps_done) -> Interrupted:
    """The Interrupted that goes up, naming where the latest image(s) went."""
    signal_name, code = (err.signal_name, err.exit_code) if isinstance(err, Interrupted) else ("Ctrl-C", 130)
    error = Interrupted(signal_name, code, saved[0] if saved else None, steps_done)
    error.saved_each = saved
    if len(saved) > 1:  # the paths on stdout, one a line, as finished images' are
        error.message = f"Interrupted ({signal_name}) after {steps_done} steps; the latest images are in {', '.join(map(str, saved))}."
        error.saved = "\n".join(map(str, saved))
    return error


def write_many(jobs: list[Job], models: Models, outs: list[OutputOptions], progress: ProgressFn = ignore) -> list:
    """Run jobs in one batched step (vqclip.pipeline.run.run_many) and write each image with its own record,
    as `write` writes one (one job is `write`). Frames, videos and previews are refused before a batched step
    (they follow one image); an interrupted step writes each image's latest to its OUTPUT.partial.png."""
    if len(jobs) == 1:
        return [write(jobs[0], models, outs[0], progress)]
    latest: dict = {}

    def keep(step: Step) -> None:
        latest[step.index] = step

    try:
        results = run_many(jobs, models, progress=progress, on_step=keep)
    except (KeyboardInterrupt, Interrupted) as err:
        saved = []
        for index, step in sorted(latest.items()):
            partial = make_result(
                jobs[index], models, step.z, step.loss, step.i, batch={"images": len(jobs), "index": index}
            )
            saved.append(write_partial(partial, outs[index].partial_path))
        raise _interrupted(err, saved, latest[0].i if latest else None) from None
    return [finish(r, models, out, progress) for r, out in zip(results, outs, strict=True)]
