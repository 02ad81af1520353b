"""`vqclip bench`: per-stage step times, peak memory, FLOPs and the achieved FLOP rate.

With `random_weights` the default architectures are built from their configs with random weights, which
costs exactly what the real weights cost (dense layers do not care about the values).
"""

import contextlib
import resource
import statistics
import time
from dataclasses import dataclass, replace

import torch

from vqclip.config import GenerationConfig
from vqclip.device import resolve_device, resolve_precision
from vqclip.guidance import guides
from vqclip.loading import Models, prepare_for_speed
from vqclip.optimize import optimize

STAGES = ("decoder", "cutouts", "clip", "backward", "optimiser")


def random_models(cfg: GenerationConfig) -> Models:
    """The architectures a config names, with random weights (for benchmarks when weights are absent)."""
    import open_clip

    from vqclip.clip_loading import parse_clip_name
    from vqclip.errors import UsageError
    from vqclip.loading import read_yaml, vqgan_config
    from vqclip.models.clip import wrap_clip
    from vqclip.models.vqgan import VQGAN
    from vqclip.registry import get_spec

    device = resolve_device(cfg.device)
    spec = get_spec(cfg.vqgan)
    if spec.config_data is not None:
        data = spec.config_data
    elif spec.local_config:
        data = read_yaml(spec.local_config)
    else:
        raise UsageError(f"Benchmarking {cfg.vqgan} with random weights needs its config inline or as a local file.")
    vqgan = VQGAN(vqgan_config(data)).eval().requires_grad_(False).to(device)
    clips = []
    for name in cfg.clip:
        arch = parse_clip_name(name).arch
        model = open_clip.create_model(arch).eval().requires_grad_(False)
        clips.append(wrap_clip(name, model, open_clip.get_tokenizer(arch), None).to(device))
    models = Models(vqgan, {"name": cfg.vqgan, "sha256": None}, clips, device, resolve_precision(cfg.precision, device))
    prepare_for_speed(models, cfg)
    return models


def peak_memory(device: torch.device) -> int:
    """Peak bytes: max_memory_allocated on CUDA, the process's peak RSS elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int = 4096, repeats: int = 3) -> float:
    """Achieved FLOP/s of an n x n matmul in `dtype`: the machine's reference rate."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Timer:
    device: torch.device
    totals: dict

    @contextlib.contextmanager
    def __call__(self, stage):
        _sync(self.device)
        t = time.perf_counter()
        yield
        _sync(self.device)
        self.totals[stage] = self.totals.get(stage, 0.0) + time.perf_counter() - t


def bench_step(models: Models, cfg: GenerationConfig, steps: int = 3, warmup: int = 1, plan=None) -> dict:
    """Median per-stage and whole-step times over `steps` steps (after `warmup`), the peak memory of those
    steps, then the FLOPs of one more step (counted afterwards: the counter itself holds memory)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    w, h = cfg.size
    f = models.vqgan.factor
    z = models.vqgan.embed(torch.randint(models.vqgan.config.n_embed, (1, h // f, w // f))).to(models.device)
    generator = torch.Generator().manual_seed(0)
    targets = guides(models, cfg, generator)
    chunk = plan.clip_chunk if plan else None
    models.vqgan.set_checkpointing(bool(plan and plan.checkpointing))
    timer = _Timer(models.device, {})
    loop = optimize(
        models.vqgan,
        targets,
        z.float(),
        warmup + steps + 1,
        generator=generator,
        lr=cfg.lr,
        dtype=models.dtype,
        clip_chunk=chunk,
        timer=timer,
    )
    for _ in range(warmup):
        next(loop)
    per_step, stages = [], {s: [] for s in STAGES}
    for _ in range(steps):
        timer.totals.clear()
        t = time.perf_counter()
        next(loop)
        _sync(models.device)
        per_step.append(time.perf_counter() - t)
        for s in STAGES:
            stages[s].append(timer.totals.get(s, 0.0))
    peak = peak_memory(models.device)
    with FlopCounterMode(display=False) as counter:
        next(loop)
    step = statistics.median(per_step)
    flops = counter.get_total_flops()
    return {
        "step_s": step,
        "stages_s": {s: statistics.median(v) for s, v in stages.items()},
        "peak_memory": peak,
        "flops_per_step": flops,
        "flop_rate": flops / step,
    }


def run_bench(
    cfg: GenerationConfig,
    steps: int = 3,
    random_weights: bool = True,
    max_memory: int | None = None,
    checkpointing: str = "auto",
) -> dict:
    """One benchmark configuration: the memory plan, per-stage times, FLOPs, peak memory and FLOP share."""
    from vqclip.loading import load_models
    from vqclip.memory import largest_square, make_plan

    models = random_models(cfg) if random_weights else load_models(cfg)
    plan = make_plan(models, cfg.size, cfg.cutn, max_memory=max_memory, checkpointing=checkpointing)
    result = bench_step(models, cfg, steps=steps, plan=plan)
    dtype = models.dtype or torch.float32
    rate = matmul_rate(dtype, models.device)
    return {
        "size": list(cfg.size),
        "cutn": cfg.cutn,
        "precision": "fp32" if models.dtype is None else str(models.dtype).removeprefix("torch."),
        "device": models.device.type,
        "weights": "random" if random_weights else "real",
        "plan": plan.to_dict(),
        **result,
        "matmul_rate": rate,
        "rate_fraction": result["flop_rate"] / rate,
        # how the largest canvas under this budget grows when the plan may checkpoint (estimates)
        "largest_square": {
            "no_checkpointing": largest_square(models, cfg.cutn, plan.budget, checkpointing=False),
            "checkpointing": largest_square(models, cfg.cutn, plan.budget, checkpointing=True),
        },
        "threads": torch.get_num_threads(),
    }


def bench_config(size, cutn=32, precision="auto", device="auto", vqgan=None, clip=None) -> GenerationConfig:
    cfg = GenerationConfig(prompt="a benchmark", size=size, cutn=cutn, precision=precision, device=device)
    if vqgan:
        cfg = replace(cfg, vqgan=vqgan)
    if clip:
        cfg = replace(cfg, clip=tuple(clip))
    return cfg
