"""The reference's loop in the shapes world, judged as benchmarks/quality.py judges vqclip: the same prompts
and seeds, the same records (judge, fragment-aware verdict, coherence, CLIP B and CLIP A), JSON lines,
contact sheet and table, so that the two tables stand side by side (issue 25).

The reference is nerdyrodent/VQGAN-CLIP `generate.py` at its defaults: random codebook tokens, 32 cutouts
by `--cut_method latest` (the whole image pooled, (adaptive avg + adaptive max) / 2, to CLIP's size, then
kornia's RandomAffine(15, 0.1, shear 5, zeros padding), RandomPerspective(0.7), ColorJitter(0.1 x 4),
RandomErasing, each p = 0.7, then noise up to 0.1 per cutout), CLIP's normalisation, the squared
spherical distance to the prompt, Adam at lr 0.1, z clamped to the codebook's range after each step. Its
glue (the quantiser with a straight-through gradient, the clamp that lets inward gradients through, the
cutouts, the loss) is rewritten here op for op, as in benchmarks/reference_step.py, with kornia's own
augmentations drawing from torch's global generator as the reference's do.

Where this reproduction had to choose:
- The networks are the shipped shapes models as vqclip loads them: its taming-layout VQGAN decoder (parity-
  tested against taming in tests/test_vqgan_parity.py) and open_clip's CLIP A (the OpenAI layout the
  reference's `clip.model.CLIP` builds). taming-transformers and OpenAI's clip package cannot be installed
  here (no network); the networks compute the same functions, and the loop around them is the reference's.
- The seed: the reference draws its initial tokens before it calls `torch.manual_seed`, so its seed does
  not fix the picture; here the seed is set first, so every run can be repeated.
- Steps: the reference's loop runs `--iterations` + 1 updates; here exactly `--steps`, as vqclip counts.
- The pictures are rounded to 8 bits as vqclip writes them (the reference's `to_pil_image` truncates).

    python benchmarks/reference_quality.py --threads 1 --seeds 3 --save-images   # the suite, 3 seeds
    python benchmarks/quality.py --rescore reference                            # rescore its saved images
"""

import time

import torch
import torch.nn.functional as F
from quality import RECORDS, ClipRank, Watch, base_config, machine, report, settings_parser, suite, writer
from torch import nn, optim

import vqclip
from vqclip.images import to_pil
from vqclip.shapes import CLIP_A, CLIP_B
from vqclip.shapes.judge import load_judge

CUTN, LR, NOISE_FAC = 32, 0.1, 0.1  # the reference's defaults (-cuts, -lr; MakeCutouts.noise_fac)


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
        return grad * (grad * (x - x.clamp(ctx.low, ctx.high)) >= 0), None, None


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Each row of x (..., D) replaced by its nearest code, via a one-hot matmul; gradient straight to x."""
    dist = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
    codes = F.one_hot(dist.argmin(-1), codebook.shape[0]).to(dist.dtype) @ codebook
    return ReplaceGrad.apply(codes, x)


class MakeCutouts(nn.Module):
    """`--cut_method latest` with the default augments ['Af', 'Pe', 'Ji', 'Er'], in that order."""

    def __init__(self, cut_size: int, cutn: int):
        super().__init__()
        import kornia.augmentation as K

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
        cutouts = [(self.av_pool(image) + self.max_pool(image)) / 2 for _ in range(self.cutn)]
        batch = self.augs(torch.cat(cutouts, dim=0))
        facs = batch.new_empty([self.cutn, 1, 1, 1]).uniform_(0, NOISE_FAC)
        return batch + facs * torch.randn_like(batch)


def prompt_loss(embeds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference's Prompt (weight 1, no stop): the mean squared great-circle distance to the target."""
    a = F.normalize(embeds.unsqueeze(1), dim=2)
    b = F.normalize(target.unsqueeze(0), dim=2)
    return a.sub(b).norm(dim=2).div(2).arcsin().pow(2).mul(2).mean()


def run_reference(models, prompt: str, seed: int, steps: int, size: int, on_step) -> None:
    """The reference's generation of `prompt`; `on_step(i, image)` after each update, `image()` its picture."""
    vqgan, clip = models.vqgan, models.clips[0]
    torch.manual_seed(seed)
    codebook = vqgan.codebook.float()
    n_toks, e_dim = codebook.shape
    toks = size // vqgan.factor
    one_hot = F.one_hot(torch.randint(n_toks, [toks * toks]), n_toks).float()
    z = (one_hot @ codebook).view([-1, toks, toks, e_dim]).permute(0, 3, 1, 2)
    z.requires_grad_(True)
    z_min = codebook.min(dim=0).values[None, :, None, None]
    z_max = codebook.max(dim=0).values[None, :, None, None]
    make_cutouts = MakeCutouts(clip.input_size, CUTN)
    with torch.no_grad():
        target = clip.encode_text([prompt]).float()
    opt = optim.Adam([z], lr=LR)

    def synth(z):
        z_q = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
        return ClampWithGrad.apply(vqgan.decode(z_q).float().add(1).div(2), 0, 1)

    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        embeds = clip.encode_image(make_cutouts(synth(z))).float()  # ClipModel normalises as the reference does
        prompt_loss(embeds, target).backward()
        opt.step()
        with torch.no_grad():
            z.copy_(z.maximum(z_min).minimum(z_max))

        def image(z=z):
            with torch.no_grad():
                return to_pil(synth(z.detach()))

        on_step(i + 1, image)


def run_suite(cases, records=RECORDS, log=print, sink=None) -> list[dict]:
    """Every case through the reference's loop; the models load once; rows as benchmarks/quality.py's."""
    models = vqclip.load_models(base_config(precision="fp32", device="cpu"))
    the_judge, clips = load_judge(), (ClipRank(CLIP_B, "clip_b"), ClipRank(CLIP_A, "clip_a"))
    rows = []
    for case in cases:
        watch = Watch(case, the_judge, records)
        watch.since = time.perf_counter()
        run_reference(models, case.prompt, case.seed, max(records), 128, watch)
        row = watch.row
        for record, image in zip(row["records"], row["images"], strict=True):
            for clip in clips:
                record.update(clip(image, case))
        last = row["records"][-1]
        log(
            f"{case.prompt!r:48} seed {case.seed}: judged {last['judge']!r} right={last['right']['all']} "
            f"one piece={last['right_one_piece']} ({last['pieces']} pieces) ({last['seconds']:.0f} s)"
        )
        if sink is not None:
            sink(row)
        rows.append(row)
    return rows


def main():
    p = settings_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=max(RECORDS))
    p.add_argument("--label", default="reference", help="names the output files")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    records = tuple(r for r in RECORDS if r <= args.steps)
    env = machine()
    settings = {"tool": "reference (nerdyrodent generate.py, rebuilt)", "cut_method": "latest", "cutn": CUTN}
    sink, f = writer(args.out, args.label, settings, env, args.save_images, args.append)
    with f:
        rows = run_suite(suite(args.cases, args.seeds, args.first_seed, args.from_case), records, sink=sink)
    report(rows, args.out, args.label, f"settings {settings}; {env}")


if __name__ == "__main__":
    main()
