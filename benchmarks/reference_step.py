"""The reference implementation's optimisation step, rebuilt from its own libraries, to time next to
`vqclip bench` (issue 16: "at most 0.6x of the reference's step time, measured side by side").

The reference is nerdyrodent/VQGAN-CLIP `generate.py` with its defaults: the imagenet f16 16384 VQGAN,
CLIP ViT-B/32, 32 cutouts by `--cut_method latest` with augments Af Pe Ji Er, one text prompt, Adam at lr
0.1. One step is its `train(i)` minus the `checkin` it runs every 50th step (an extra no-grad decode and a
PNG save): zero the gradient, `synth(z)` (nearest-code quantisation with a straight-through gradient,
`post_quant_conv`, taming's Decoder, then [-1, 1] -> [0, 1] under a clamp that lets inward gradients
through), `MakeCutouts`, CLIP normalisation, `perceptor.encode_image`, the spherical-distance prompt loss,
one backward, `opt.step()`, then z clamped to the codebook's per-channel range. fp32, NCHW, on the CPU.

The modules are the originals: taming's Encoder, Decoder and VectorQuantizer2 (taming-transformers-rom1504,
the pip build of taming-transformers), OpenAI's `clip.model.CLIP` (clip-anytorch, the pip build of
openai/CLIP) and kornia's augmentations. The glue around them (the two autograd functions, the quantiser,
the cutouts, the prompt loss) is rewritten here op for op. Weights are random: no download is needed, and
dense layers cost the same whatever their values.

Where this reproduction had to choose:
- `MakeCutouts` for `latest` does not crop: each of the cutn cutouts is (adaptive avg-pool + adaptive
  max-pool) / 2 of the whole image to 224x224, recomputed per cutout, then the augmentations on the batch
  and per-cutout noise. The random-size crops (`size = rand**cut_pow * (max - min) + min`) belong to the
  non-default cut methods (`original`, `updated`, `nrupdated`), which are not reproduced.
- The reference loads taming's `VQModel`, which needs pytorch-lightning (and, in taming's `main.py`, a
  lightning API removed in lightning 2.0). This script assembles the same submodules in a plain `nn.Module` with
  the same attribute names and the same `decode`; the training loss the reference deletes is never built.
  The encoder stays resident, as it does in the reference.
- The whole CLIP model stays resident (the reference never drops its text tower); the prompt is encoded
  once with it, as the reference does.
- The CPU by default; `--device cuda` runs it as the reference does on a GPU: everything on the GPU and
  CLIP's weights in fp16 (`clip.load` on CUDA applies `clip.model.convert_weights`), the step timed with
  synchronisation and its peak taken from `torch.cuda.max_memory_allocated`.
- torch is the one vqclip is measured with (2.14.1), not the 1.9 of the reference's README, so the two
  sides differ by their code alone. kornia is pinned at the version this script was checked with.

Peak memory is the process's peak RSS (Linux VmHWM), reset by writing "5" to /proc/self/clear_refs once
the models are built, the prompt encoded and z initialised; the peak covers the warm-up and timed steps,
so it includes the resident weights. Each size runs in its own process, so each peak is its own.

Install (a venv of its own, so the project's stays clean; taming and clip without their declared
dependencies, which would pull in pytorch-lightning):

    python3 -m venv /work/refvenv
    /work/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 kornia==0.9.0 numpy pillow ftfy regex \
        einops tqdm "setuptools<81"
    /work/refvenv/bin/pip install --no-deps taming-transformers-rom1504==0.0.6 clip-anytorch==2.6.0

Run (one JSON line per size on stdout; take timings on a quiet machine):

    /work/refvenv/bin/python benchmarks/reference_step.py --size 256 --size 384 --cutn 32 --steps 3 --threads 2
    vqclip bench --size 256 --size 384 --cutn 32 --steps 3 --threads 2 --json   # the other side

Sanity check (small and fast; not a timing):

    /work/refvenv/bin/python benchmarks/reference_step.py --size 128 --cutn 8 --steps 1 --threads 1
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import clip
import kornia
import kornia.augmentation as K
import torch
import torch.nn.functional as F
from clip.model import CLIP
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn, optim
from torchvision import transforms

# taming's vqgan_imagenet_f16_16384.yaml, model.params (the reference's default --vqgan_config).
VQGAN_EMBED_DIM = 256
VQGAN_N_EMBED = 16384
VQGAN_DDCONFIG = {
    "double_z": False,
    "z_channels": 256,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "dropout": 0.0,
}

# What clip.model.build_model reads off the ViT-B/32 checkpoint (the reference's default --clip_model).
VIT_B_32 = {
    "embed_dim": 512,
    "image_resolution": 224,
    "vision_layers": 12,
    "vision_width": 768,
    "vision_patch_size": 32,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 512,
    "transformer_heads": 8,
    "transformer_layers": 12,
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PROMPT = "A cute, smiling, Nerdy Rodent"  # the reference's default prompt (weight 1, no stop)
LR = 0.1  # the reference's default --learning_rate, with its default --optimiser Adam
NOISE_FAC = 0.1  # MakeCutouts.noise_fac
FAST_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16")


# ---- the reference's glue, op for op ---------------------------------------------------------------


class ReplaceGrad(torch.autograd.Function):
    """Forward `x_forward`, send the gradient to `x_backward` (summed to its shape)."""

    @staticmethod
    def forward(ctx, x_forward, x_backward):
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad):
        return None, grad.sum_to_size(ctx.shape)


class ClampWithGrad(torch.autograd.Function):
    """Clamp, but let the gradient through wherever following it moves the value back into range."""

    @staticmethod
    def forward(ctx, x, low, high):
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        inward = grad * (x - x.clamp(ctx.low, ctx.high)) >= 0
        return grad * inward, None, None


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Each row of x (..., D) replaced by its nearest code, via a one-hot matmul; gradient straight to x."""
    dist = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
    codes = F.one_hot(dist.argmin(-1), codebook.shape[0]).to(dist.dtype) @ codebook
    return ReplaceGrad.apply(codes, x)


class VQGAN(nn.Module):
    """taming's VQModel without lightning and without its training loss: the same submodules under the same
    names, and the same `decode`."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder(**VQGAN_DDCONFIG)
        self.decoder = Decoder(**VQGAN_DDCONFIG)
        self.quantize = VectorQuantizer2(VQGAN_N_EMBED, VQGAN_EMBED_DIM, beta=0.25)
        self.quant_conv = nn.Conv2d(VQGAN_DDCONFIG["z_channels"], VQGAN_EMBED_DIM, 1)
        self.post_quant_conv = nn.Conv2d(VQGAN_EMBED_DIM, VQGAN_DDCONFIG["z_channels"], 1)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))


class MakeCutouts(nn.Module):
    """`--cut_method latest` with the default augments ['Af', 'Pe', 'Ji', 'Er'], in that order."""

    def __init__(self, cut_size: int, cutn: int):
        super().__init__()
        self.cutn = cutn
        self.augs = nn.Sequential(
            K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros", keepdim=True),
            K.RandomPerspective(distortion_scale=0.7, p=0.7),
            K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
            K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True, p=0.7),
        )
        self.av_pool = nn.AdaptiveAvgPool2d((cut_size, cut_size))
        self.max_pool = nn.AdaptiveMaxPool2d((cut_size, cut_size))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # The whole image pooled once per cutout (not cached): the randomness is in the augmentations.
        cutouts = [(self.av_pool(image) + self.max_pool(image)) / 2 for _ in range(self.cutn)]
        batch = self.augs(torch.cat(cutouts, dim=0))
        facs = batch.new_empty([self.cutn, 1, 1, 1]).uniform_(0, NOISE_FAC)
        return batch + facs * torch.randn_like(batch)


class Prompt(nn.Module):
    """Weighted mean squared great-circle distance from the cutouts' embeddings to a target embedding."""

    def __init__(self, embed: torch.Tensor, weight: float = 1.0, stop: float = float("-inf")):
        super().__init__()
        self.register_buffer("embed", embed)
        self.register_buffer("weight", torch.as_tensor(weight))
        self.register_buffer("stop", torch.as_tensor(stop))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        a = F.normalize(embeds.unsqueeze(1), dim=2)
        b = F.normalize(self.embed.unsqueeze(0), dim=2)
        dists = a.sub(b).norm(dim=2).div(2).arcsin().pow(2).mul(2) * self.weight.sign()
        return self.weight.abs() * ReplaceGrad.apply(dists, torch.maximum(dists, self.stop)).mean()


# ---- one configuration ---------------------------------------------------------------------------------


class ReferenceRun:
    """The reference's state after its set-up (models, prompt, z, optimiser), and its step."""

    def __init__(self, size: int, cutn: int, device: str = "cpu"):
        self.vqgan = VQGAN().eval().requires_grad_(False).to(device)
        self.perceptor = CLIP(**VIT_B_32).eval().requires_grad_(False).to(device)
        if device != "cpu":  # clip.load keeps the model in fp16 on a GPU
            from clip.model import convert_weights

            convert_weights(self.perceptor)
        self.make_cutouts = MakeCutouts(self.perceptor.visual.input_resolution, cutn)
        self.normalize = transforms.Normalize(mean=CLIP_MEAN, std=CLIP_STD)

        # z: random codes, laid out (1, e_dim, h, w) by a permute (so not contiguous), as in the reference.
        f = 2 ** (self.vqgan.decoder.num_resolutions - 1)
        toks = size // f
        codebook = self.vqgan.quantize.embedding.weight
        n_toks, e_dim = self.vqgan.quantize.n_e, self.vqgan.quantize.e_dim
        self.z_min = codebook.min(dim=0).values[None, :, None, None]
        self.z_max = codebook.max(dim=0).values[None, :, None, None]
        one_hot = F.one_hot(torch.randint(n_toks, [toks * toks]), n_toks).float().to(device)
        self.z = (one_hot @ codebook).view([-1, toks, toks, e_dim]).permute(0, 3, 1, 2)
        self.z.requires_grad_(True)

        embed = self.perceptor.encode_text(clip.tokenize(PROMPT).to(device)).float()
        self.prompts = [Prompt(embed)]
        self.opt = optim.Adam([self.z], lr=LR)

    def synth(self, z: torch.Tensor) -> torch.Tensor:
        z_q = vector_quantize(z.movedim(1, 3), self.vqgan.quantize.embedding.weight).movedim(3, 1)
        return ClampWithGrad.apply(self.vqgan.decode(z_q).add(1).div(2), 0, 1)

    def step(self) -> float:
        """The reference's `train(i)` without its periodic `checkin`; returns the loss."""
        self.opt.zero_grad(set_to_none=True)
        out = self.synth(self.z)
        embeds = self.perceptor.encode_image(self.normalize(self.make_cutouts(out))).float()
        loss = sum(prompt(embeds) for prompt in self.prompts)
        loss.backward()
        self.opt.step()
        with torch.inference_mode():
            self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))
        return loss.item()


def _proc_status(field: str) -> int | None:
    """A /proc/self/status memory field (VmHWM, VmRSS) in bytes, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine() -> dict:
    """The CPU model and the flags that make bf16/fp16 fast, cores, threads and library versions."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        first = ""
    info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name", ""),
        "cpu_flags": [f for f in FAST_FLAGS if f in flags],
        "fast_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kornia": kornia.__version__,
    }


def measure(size: int, cutn: int, steps: int, threads: int | None, device: str = "cpu") -> dict:
    """Median step time (wall and process CPU) over `steps` steps after one warm-up, and the peak RSS (on
    CUDA: the peak of torch's allocator, as `vqclip bench` reports it there)."""
    cuda = device != "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    load_before = [round(v, 2) for v in os.getloadavg()]
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):  # taming's Decoder prints z's shape; stdout is for JSON
        run = ReferenceRun(size, cutn, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peak_reset = reset_peak_rss()
    rss_at_reset = _proc_status("VmRSS")
    z_start = run.z.detach().clone()

    losses = [run.step()]  # warm-up
    wall, cpu = [], []
    for _ in range(steps):
        sync()
        t, c = time.perf_counter(), time.process_time()
        losses.append(run.step())
        sync()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    peak = torch.cuda.max_memory_allocated() if cuda else _proc_status("VmHWM")

    return {
        "implementation": "reference (nerdyrodent/VQGAN-CLIP generate.py, rebuilt)",
        "size": size,
        "cutn": cutn,
        "steps": steps,
        "device": device,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "step_s": statistics.median(wall),
        "step_cpu_s": statistics.median(cpu),
        "peak_memory": peak,
        "peak_memory_gib": round(peak / 2**30, 3) if peak else None,
        "peak_reset": peak_reset,  # False: the peak is the process's lifetime peak, model building included
        "rss_at_reset": rss_at_reset,
        "losses": losses,
        "z_max_change": (run.z.detach() - z_start).abs().max().item(),
        "machine": machine(),
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, action="append", help="Square canvas side in pixels (repeatable; 256).")
    parser.add_argument("--cutn", type=int, default=32, help="Cutouts per step (default 32, the reference's).")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps after one warm-up; the median is reported.")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="Where the step runs (cpu).")
    parser.add_argument("--in-process", action="store_true", help="Measure one size in this process (internal).")
    args = parser.parse_args(argv)
    sizes = args.size or [256]

    if args.in_process:
        if len(sizes) != 1:
            parser.error("--in-process measures exactly one --size")
        print(json.dumps(measure(sizes[0], args.cutn, args.steps, args.threads, args.device)), flush=True)
        return

    # Each size in a fresh process, so its peak memory is its own.
    for size in sizes:
        child = [sys.executable, str(Path(__file__).resolve()), "--in-process", "--size", str(size)]
        child += ["--cutn", str(args.cutn), "--steps", str(args.steps), "--device", args.device]
        if args.threads:
            child += ["--threads", str(args.threads)]
        done = subprocess.run(child, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"reference_step: size {size} failed (exit {done.returncode})")
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
