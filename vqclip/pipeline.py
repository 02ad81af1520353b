"""A generation is one pass: validate -> load -> prepare (resolve, plan) -> run -> write.

    validate    vqclip.validate.validate(cfg)          no model needed; the CLI and the API alike
    load        vqclip.loading.load_models(cfg)        once per process (a batch reuses them)
    prepare     vqclip.job.prepare(cfg, models)        seed, size, memory plan, notes: once per image
    run         run(job, models)                       here: the plain or the large-canvas run, then upscaling
    write       vqclip.render.render(job, models, out) the PNG, frames, and what is kept on a signal or error

`generate()` does the first four for the Python API.
"""

import time
from dataclasses import dataclass, replace

import torch

from vqclip.config import GenerationConfig
from vqclip.errors import OutOfMemoryError
from vqclip.events import ProgressFn, ignore
from vqclip.guidance import StepFn, decode, run_guided
from vqclip.job import Job, prepare
from vqclip.loading import Models, load_models, load_upscaler_into
from vqclip.validate import validate


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
    path: object = None  # where the PNG was written (vqclip.render), a Path
    video: object = None  # where the --video was written (vqclip.render), a Path


def run(
    job: Job, models: Models, *, progress: ProgressFn = ignore, on_step: StepFn | None = None, upscale: bool = True
) -> Result:
    """Run a prepared job: the plain CLIP-guided optimisation or the large-canvas stages, then (unless
    `upscale` is False) the Real-ESRGAN upscale the config asks for."""
    cfg = job.cfg
    start = time.perf_counter()
    canvas = None
    try:
        if cfg.transformer:
            from vqclip.canvas import run_canvas

            z, loss, done, canvas = run_canvas(job, models, progress=progress, on_step=on_step)
        else:
            z, loss, done = run_guided(
                models,
                cfg,
                job.plan,
                progress=progress,
                on_step=on_step,
                stop_after=job.stop_after,
                drop_text_towers=job.drop_text_towers,
            )
        image = decode(models, z)
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        raise out_of_memory(cfg) from err
    result = Result(
        image,
        cfg,
        loss,
        time.perf_counter() - start,
        done,
        models.names(),
        str(models.device),
        models.precision,
        job.plan,
        z,
        complete=done >= cfg.steps,
        inputs=job.inputs,
        canvas=canvas,
    )
    if upscale and cfg.upscale > 1:
        upscale_result(result, models, progress=progress)
    return result


def upscale_result(result: Result, models: Models, tile: int = 256, progress: ProgressFn = ignore) -> None:
    """Upscale a result in place with the run's Real-ESRGAN (loaded once per Models)."""
    from vqclip.upscale import upscale_image

    load_upscaler_into(models, precision=result.config.precision)
    factor = result.config.upscale
    result.image = upscale_image(models.upscaler, result.image, factor, tile, progress=progress)
    result.upscale = {**models.upscaler_record, "factor": factor, "tile": tile}


def out_of_memory(cfg: GenerationConfig) -> OutOfMemoryError:
    w, h = cfg.size
    return OutOfMemoryError(
        f"Out of memory at {w}x{h} with {cfg.cutn} cutouts.",
        "Try a smaller --size or --cutn, or --max-memory below what the device has so the plan checkpoints.",
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
        callback: called after every optimisation step with a vqclip.guidance.Step (its `image()` decodes
            the current latent).
        offline: never download (default: VQCLIP_OFFLINE / HF_HUB_OFFLINE).

    Returns a Result with the PIL image, the resolved config (seed and size filled in) and the loss.
    """
    cfg = prompt if isinstance(prompt, GenerationConfig) else replace(config or GenerationConfig(prompt), prompt=prompt)
    checked = validate(cfg)
    own = models is None  # models loaded here serve this call only
    models = models or load_models(cfg, offline=offline, progress=progress, checked=checked)
    return run(prepare(cfg, models, last_job=own), models, progress=progress, on_step=callback)
