"""Step 4 of a generation: run a prepared job (the guided stage, or the large canvas) and make its `Result`;
upscale a result; and `generate()`, the Python API's whole pass (validate -> load -> prepare -> run)."""

import time
from dataclasses import dataclass, replace

import torch

from vqclip.config import GenerationConfig
from vqclip.errors import OutOfMemoryError, UsageError
from vqclip.events import ProgressFn, ignore
from vqclip.models import Models
from vqclip.pipeline.guided import StepFn, decode, run_guided, run_guided_many
from vqclip.pipeline.prepare import Job, prepare, split
from vqclip.pipeline.validate import validate


@dataclass
class Result:
    """A generated image and everything needed to describe or reproduce it (see vqclip.metadata)."""

    image: object  # PIL.Image
    config: GenerationConfig  # resolved: the seed and size filled in
    loss: float
    seconds: float
    steps_done: int
    model_names: dict  # names and sha256 of the models used (Models.names())
    device: str  # the device and precision that ran
    precision: str
    plan: object = None  # the memory plan the run used (vqclip.memory.Plan)
    latent: torch.Tensor | None = None  # the final latent z
    complete: bool = True  # False for the latest image of an interrupted run
    inputs: dict | None = None  # resolved paths and sha256 of the input images
    canvas: dict | None = None  # what the transformer pass did (--transformer)
    upscale: dict | None = None  # the upscaler, factor and tile size (--upscale)
    path: object = None  # where the PNG was written (vqclip.pipeline.write), a Path
    video: object = None  # where the --video was written (vqclip.pipeline.write), a Path
    tracker: dict | None = None  # --keep best / --auto-stop: the step kept, where it stopped, the guide losses
    batch: dict | None = None  # made in a batched step (--n, batch --pack): {"images": N, "index": i}


def make_result(
    job: Job,
    models: Models,
    z,
    loss: float,
    steps_done: int,
    seconds: float = 0.0,
    canvas=None,
    tracker=None,
    batch=None,
) -> Result:
    """The one way a Result is made: a finished run's (one that --auto-stop ended early is finished too), or
    the latest image of an interrupted one."""
    return Result(
        decode(models, z, job.cfg.tile),
        job.cfg,
        loss,
        seconds,
        steps_done,
        models.names(),
        str(models.device),
        models.precision,
        job.plan,
        z,
        complete=steps_done >= job.total_steps or (tracker or {}).get("stopped_at") is not None,
        inputs=job.request.inputs,
        canvas=canvas,
        tracker=tracker,
        batch=batch,
    )


def run(job: Job, models: Models, *, progress: ProgressFn = ignore, on_step: StepFn | None = None) -> Result:
    """Run a prepared job: the plain CLIP-guided stage or the large-canvas stages (both stop after
    `job.stop_after` steps when it is set). Upscaling is a step of its own (`upscale`)."""
    stage = run_guided
    if job.cfg.transformer:
        from vqclip.pipeline.canvas import run_canvas

        stage = run_canvas
    start = time.perf_counter()
    try:
        out = stage(job, models, progress=progress, on_step=on_step, stop_after=job.stop_after)
        seconds = time.perf_counter() - start
        return make_result(job, models, out.z, out.loss, out.steps_done, seconds, out.canvas, out.tracker)
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        raise out_of_memory(job.cfg) from err


def run_many(jobs: list[Job], models: Models, *, progress: ProgressFn = ignore, on_step: StepFn | None = None) -> list:
    """Run jobs in one batched step (--n, `batch --pack`; made by vqclip.pipeline.prepare.split or pack):
    their Results, each what its job gives alone up to float rounding. One job is `run`."""
    if len(jobs) == 1:
        return [run(jobs[0], models, progress=progress, on_step=on_step)]
    start = time.perf_counter()
    try:
        outs = run_guided_many(jobs, models, progress=progress, on_step=on_step)
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        raise out_of_memory(jobs[0].cfg, len(jobs)) from err
    seconds = time.perf_counter() - start
    return [
        make_result(j, models, o.z, o.loss, o.steps_done, seconds, batch={"images": len(jobs), "index": i})
        for i, (j, o) in enumerate(zip(jobs, outs, strict=True))
    ]


def upscale(result: Result, models: Models, tile: int = 256, progress: ProgressFn = ignore) -> Result:
    """The result upscaled by its config's factor with the models' Real-ESRGAN, recorded; the one upscaling
    path (the API, the CLI's write step and `vqclip upscale` all come here)."""
    image, record = upscale_image(
        models.upscaler, models.upscaler_record, result.image, result.config.upscale, tile, progress
    )
    return replace(result, image=image, upscale=record)


def upscale_image(upscaler, upscaler_record: dict, image, factor: int, tile: int = 256, progress: ProgressFn = ignore):
    """(the image upscaled by `factor`, the record of the upscale: the upscaler's name and sha256, the factor
    and the tile size)."""
    from vqclip.upscale import upscale_image as esrgan

    return esrgan(upscaler, image, factor, tile, progress=progress), {**upscaler_record, "factor": factor, "tile": tile}


def out_of_memory(cfg: GenerationConfig, images: int = 1) -> OutOfMemoryError:
    w, h = cfg.size
    several = f" for {images} images in one step" if images > 1 else ""
    return OutOfMemoryError(
        f"Out of memory at {w}x{h} with {cfg.cutn} cutouts{several}.",
        "Try a smaller --size or --cutn"
        + (", fewer images in one step" if images > 1 else "")
        + ", or --max-memory below what the device has so the plan checkpoints.",
    )


def generate(
    prompt: str | GenerationConfig,
    config: GenerationConfig | None = None,
    *,
    models: Models | None = None,
    progress: ProgressFn = ignore,
    callback: StepFn | None = None,
    offline: bool | None = None,
) -> Result:
    """Generate one image from a text prompt with VQGAN+CLIP, upscaled when the config asks for it.

    Args:
        prompt: the prompt text (see vqclip.prompts), or a full GenerationConfig.
        config: the other settings (default GenerationConfig()); its prompt is replaced by `prompt`.
        models: models from `load_models` (loaded from the config when None; pass them to reuse them).
        progress: receives a vqclip.events.Progress for every step, GPT call, tile or download.
        callback: called after every optimisation step with a vqclip.events.Step (its `image()` decodes
            the current latent).
        offline: never download (default: VQCLIP_OFFLINE / HF_HUB_OFFLINE).

    Returns a Result with the PIL image, the resolved config (seed and size filled in) and the loss.
    """
    from vqclip.pipeline.load import load_models

    cfg = prompt if isinstance(prompt, GenerationConfig) else replace(config or GenerationConfig(prompt), prompt=prompt)
    if cfg.n > 1:
        raise UsageError(f"vqclip.generate makes one image; vqclip.generate_many makes the {cfg.n} of n={cfg.n}.")
    request = validate(cfg)
    if models is None:  # loaded for this request only: no more than it needs
        models = load_models(
            request, offline, progress, encoder=request.encodes_images, text_towers=bool(cfg.transformer)
        )
    result = run(prepare(request, models), models, progress=progress, on_step=callback)
    return upscale(result, models, progress=progress) if result.config.upscale > 1 else result


def generate_many(
    config: GenerationConfig,
    *,
    models: Models | None = None,
    progress: ProgressFn = ignore,
    callback: StepFn | None = None,
    offline: bool | None = None,
) -> list[Result]:
    """`config.n` images of one prompt in one batched step (--n): image i is what `generate` gives for seed
    `config.seed + i` (up to float rounding), and its config says so (n = 1). Arguments as for `generate`;
    `callback` gets each image's Step (its `index`)."""
    from vqclip.pipeline.load import load_models

    request = validate(config)
    if models is None:
        models = load_models(request, offline, progress, encoder=request.encodes_images, text_towers=False)
    results = run_many(split(prepare(request, models)), models, progress=progress, on_step=callback)
    return [upscale(r, models, progress=progress) if r.config.upscale > 1 else r for r in results]
