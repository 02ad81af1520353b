"""`vqclip bench`: per-stage step times, peak memory against the plan's estimate, FLOPs and the achieved
FLOP rate, with the machine they were taken on (CPU or GPU model, fast bf16/fp16, load).

With `random_weights` the default architectures are built from their configs with random weights, which
costs exactly what the real weights cost (dense layers do not care about the values).
"""

import contextlib
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vqclip.config import GenerationConfig
from vqclip.device import (
    FAST_BF16_FLAGS,
    FAST_FP16_FLAGS,
    fast_precisions,
    hardware,
    image_path_params,
    resolve_device,
    resolve_precision,
)
from vqclip.models import Models
from vqclip.optimize import optimize_batch
from vqclip.pipeline.guided import build_guides
from vqclip.weights.loading import ready_for_speed

STAGES = ("decoder", "cutouts", "clip", "backward", "optimiser")


def random_models(cfg: GenerationConfig, shapes_only: bool = False) -> Models:
    """The architectures a config names, with random weights (for benchmarks when weights are absent), or
    with `shapes_only` on the meta device: no memory and no time, enough for the memory plan's arithmetic
    (the Models still name the device the plan is for)."""
    import open_clip

    from vqclip.errors import UsageError
    from vqclip.models.clip import wrap_clip
    from vqclip.models.vqgan import VQGAN
    from vqclip.weights.clip import _root_logging_held, parse_clip_name
    from vqclip.weights.loading import read_yaml, vqgan_config
    from vqclip.weights.registry import get_spec

    device = resolve_device(cfg.device)
    spec = get_spec(cfg.vqgan)
    if spec.config_data is not None:
        data = spec.config_data
    elif spec.local_config:
        data = read_yaml(spec.local_config)
    else:
        raise UsageError(f"Benchmarking {cfg.vqgan} with random weights needs its config inline or as a local file.")
    home = torch.device("meta") if shapes_only else device
    with home:
        vqgan = VQGAN(vqgan_config(data)).eval().requires_grad_(False)
    clips = []
    for name in cfg.clip:
        arch = parse_clip_name(name).arch
        with _root_logging_held():  # open_clip's "WARNING:root:No pretrained weights loaded": random on purpose
            model = open_clip.create_model(arch, device=home).eval().requires_grad_(False)
            tokenizer = open_clip.get_tokenizer(arch)
        clips.append(wrap_clip(name, model, tokenizer, None).to(home))
    dtype = resolve_precision(cfg.precision, device, image_path_params(vqgan, clips))
    if not cfg.encodes_images:
        vqgan.drop_encoder()
    ready_for_speed(vqgan, clips, device, dtype, cfg.compile)
    return Models(vqgan, {"name": cfg.vqgan, "sha256": None}, tuple(clips), device, dtype)


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if k.strip()}


def machine(device: torch.device) -> dict:
    """Where a figure was taken: the CPU model with the flags that decide bf16/fp16 speed, the GPU name and
    compute capability on CUDA, cores, threads, torch version and the load average."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cpu = info.get("model name") or platform.processor() or platform.machine()
    fast = fast_precisions(hardware(device))  # the rule auto precision follows (vqclip.device)
    out = {
        "cpu": cpu,
        "cpu_flags": [f for f in FAST_BF16_FLAGS + FAST_FP16_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "fast_bf16": "bf16" in fast,
        "fast_fp16": "fp16" in fast,
    }
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        out["gpu"] = torch.cuda.get_device_name(device)
        out["capability"] = f"{major}.{minor}"
    return out


def load_average() -> float | None:
    """The 1-minute load average: figures taken above about the core count are not the machine's."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # AttributeError: Windows has no load average
        return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's peak RSS (Linux clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> int:
    """Peak bytes since `reset_peak_memory`: max_memory_allocated on CUDA, peak RSS elsewhere (the
    process's lifetime peak where it cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in lines if line.startswith("VmHWM:")).split()[1]) * 1024
    try:
        import resource  # Unix only
    except ImportError:
        from vqclip.memory import process_rss

        return process_rss()  # Windows: what the process holds now, where no peak is kept
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int = 4096, repeats: int = 3) -> tuple[float, float]:
    """Achieved FLOPs per second and per process-CPU second of an n x n matmul in `dtype`: the machine's
    reference rates."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    wall, cpu = [], []
    for _ in range(repeats):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        a @ b
        _sync(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return 2 * n**3 / min(wall), 2 * n**3 / min(cpu)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Timer:
    """Wall and process CPU seconds per stage. CPU seconds are the steadier figure on a busy machine (with
    one thread: work done, whoever else runs); wall seconds are what a user waits."""

    device: torch.device
    wall: dict
    cpu: dict

    @contextlib.contextmanager
    def __call__(self, stage):
        _sync(self.device)
        t, c = time.perf_counter(), time.process_time()
        yield
        _sync(self.device)
        self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - t
        self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - c

    def clear(self):
        self.wall.clear()
        self.cpu.clear()


def guides(models: Models, cfg: GenerationConfig, generator: torch.Generator) -> list:
    """The guides a run of `cfg` builds (its prompt encoded by the models' CLIPs)."""
    from vqclip.pipeline.prepare import encode_story
    from vqclip.pipeline.validate import validate

    request = validate(cfg)
    return build_guides(models, encode_story(models, request), request, cfg.size, generator)


def bench_step(models: Models, cfg: GenerationConfig, steps: int = 3, warmup: int = 1, plan=None, n: int = 1) -> dict:
    """Median per-stage and whole-step times over `steps` steps (after `warmup`), the peak memory of the
    steps (warm-up included, model loading not), then the FLOPs of one more step (counted afterwards: the
    counter itself holds memory). Like a single run, it drops the text towers once the prompts are encoded.
    `n` images in one batched step (--n): each with its own latent, generator and cutouts."""
    from torch.utils.flop_counter import FlopCounterMode

    from vqclip.memory import drop_text_towers

    torch.manual_seed(0)
    w, h = cfg.size
    f = models.vqgan.factor
    zs = [
        models.vqgan.embed(torch.randint(models.vqgan.config.n_embed, (1, h // f, w // f))).to(models.device).float()
        for _ in range(n)
    ]
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    targets = [guides(models, cfg, g) for g in generators]
    drop_text_towers(models)  # like a single run's models, loaded with text_towers=False
    reset_peak_memory(models.device)
    chunk = plan.clip_chunk if plan else None
    timer = _Timer(models.device, {}, {})
    loop = optimize_batch(
        models.vqgan,
        targets,
        zs,
        warmup + steps + 1,
        generators=generators,
        lr=cfg.lr,
        dtype=models.dtype,
        clip_chunk=chunk,
        checkpointing=bool(plan and plan.checkpointing),
        timer=timer,
    )
    for _ in range(warmup):
        next(loop)
    per_step, cpu_per_step, stages, stages_cpu = [], [], {s: [] for s in STAGES}, {s: [] for s in STAGES}
    for _ in range(steps):
        timer.clear()
        t, c = time.perf_counter(), time.process_time()
        next(loop)
        _sync(models.device)
        per_step.append(time.perf_counter() - t)
        cpu_per_step.append(time.process_time() - c)
        for s in STAGES:
            stages[s].append(timer.wall.get(s, 0.0))
            stages_cpu[s].append(timer.cpu.get(s, 0.0))
    peak = peak_memory(models.device)
    with FlopCounterMode(display=False) as counter:
        next(loop)
    step = statistics.median(per_step)
    flops = counter.get_total_flops()
    return {
        "n": n,
        "images_per_s": n / step,  # images in one step per second of a step: throughput in images-steps
        "images_per_cpu_s": n / statistics.median(cpu_per_step),
        "step_s": step,
        "stages_s": {s: statistics.median(v) for s, v in stages.items()},
        "step_cpu_s": statistics.median(cpu_per_step),
        "stages_cpu_s": {s: statistics.median(v) for s, v in stages_cpu.items()},
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
    threads: int | None = None,
    n: int = 1,
) -> dict:
    """One benchmark configuration: the memory plan, per-stage times, FLOPs, peak memory against the
    estimate, FLOP share, and the machine with its load before and after."""
    from vqclip.memory import largest_square, make_plan
    from vqclip.pipeline.load import load_models

    if threads:
        torch.set_num_threads(threads)
    load_before = load_average()
    models = random_models(cfg) if random_weights else load_models(cfg)
    plan = make_plan(
        models, cfg.size, cfg.cutn, max_memory=max_memory, checkpointing=checkpointing, text_towers=False, images=n
    )
    result = bench_step(models, cfg, steps=steps, plan=plan, n=n)
    rate, cpu_rate = matmul_rate(models.dtype or torch.float32, models.device)
    return {
        "size": list(cfg.size),
        "cutn": cfg.cutn,
        "precision": models.precision,
        "device": models.device.type,
        "weights": "random" if random_weights else "real",
        "plan": plan.to_dict(),
        **result,
        "estimate_error": plan.estimate / result["peak_memory"] - 1,
        "matmul_rate": rate,
        "rate_fraction": result["flop_rate"] / rate,
        # the same share in CPU seconds: steadier when other processes take the cores
        "cpu_rate_fraction": result["flops_per_step"] / result["step_cpu_s"] / cpu_rate,
        # how the largest canvas under this budget grows when the plan may checkpoint (estimates)
        "largest_square": {
            "no_checkpointing": largest_square(
                models, cfg.cutn, plan.budget, checkpointing=False, text_towers=False, images=n
            ),
            "checkpointing": largest_square(
                models, cfg.cutn, plan.budget, checkpointing=True, text_towers=False, images=n
            ),
        },
        "machine": machine(models.device),
        "load": [load_before, load_average()],
        "threads": torch.get_num_threads(),
    }


def bench_config(size, cutn=32, precision="auto", device="auto", vqgan=None, clip=None) -> GenerationConfig:
    cfg = GenerationConfig(prompt="a benchmark", size=size, cutn=cutn, precision=precision, device=device)
    if vqgan:
        cfg = replace(cfg, vqgan=vqgan)
    if clip:
        cfg = replace(cfg, clip=tuple(clip))
    return cfg
