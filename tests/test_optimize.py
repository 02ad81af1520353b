"""The optimisation loop on the fixture VQGAN and a tiny real open_clip model: prompt stops, image-prompt
targets, chunk-independent cutouts, the fp32 decode of kept pixels, and fp16 with dynamic loss scaling."""

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from vqclip import load_vqgan
from vqclip.cutouts import Cutouts
from vqclip.guidance import Guide, Target, area_size, spherical_dist
from vqclip.optimize import clip_losses, decode_image, optimize

# As tests/test_memory_precision.py's bf16 vs fp32 test: final losses within 5% after 30 steps.
PRECISION_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def vqgan(fixtures):
    return load_vqgan(fixtures / "vqgan_tiny_f16.ckpt")


@pytest.fixture(scope="module")
def clip(tiny_clip):
    import open_clip

    from vqclip.models.clip import wrap_clip

    config, weights = tiny_clip.rsplit(":", 1)
    model = open_clip.create_model(Path(config).stem, pretrained=weights).eval().requires_grad_(False)
    return wrap_clip("tiny", model, None, None)


def _targets(clip, n=2, seed=0):
    embeds = torch.randn(n, clip.model.visual.output_dim, generator=torch.Generator().manual_seed(seed))
    return [Target(e, w) for e, w in zip(embeds, (1.0, -0.5), strict=False)]


def _guide(clip, cutn=8, augment=("affine", "perspective", "jitter", "erasing")):
    return Guide(clip, Cutouts(clip.input_size, cutn, augment=augment, noise_fac=0.1), [_targets(clip)])


def _latent(vqgan, size=64, seed=0):
    f = vqgan.factor
    idx = torch.randint(vqgan.config.n_embed, (1, size // f, size // f), generator=torch.Generator().manual_seed(seed))
    return vqgan.embed(idx).float()


# ---- prompt stops -----------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1.0, -0.7])
def test_a_stop_past_the_distance_stops_the_gradient_and_the_loss_stays_the_raw_distance(weight):
    gen = torch.Generator().manual_seed(0)
    image_embeds = torch.randn(16, 32, generator=gen).requires_grad_(True)
    prompt = torch.randn(32, generator=gen)
    d = spherical_dist(image_embeds.detach(), prompt)  # (16,)
    raw = abs(weight) * (d * (1 if weight > 0 else -1)).mean()

    stop = float(d.max()) + 0.1 if weight > 0 else -float(d.min()) + 0.1  # every cutout is past it
    loss = Target(prompt, weight, stop).loss(image_embeds)
    loss.backward()
    assert torch.equal(image_embeds.grad, torch.zeros_like(image_embeds))
    assert loss.item() == pytest.approx(raw.item(), rel=1e-6)

    image_embeds.grad = None
    Target(prompt, weight, float("-inf")).loss(image_embeds).backward()
    free = image_embeds.grad.clone()
    image_embeds.grad = None
    signed = (d * (1 if weight > 0 else -1)).sort().values
    middle = float(signed[7:9].mean())  # half the cutouts are past this stop
    Target(prompt, weight, middle).loss(image_embeds).backward()
    pulled = (d * (1 if weight > 0 else -1)) > middle
    assert torch.equal(image_embeds.grad[~pulled], torch.zeros_like(free[~pulled]))
    assert_close(image_embeds.grad[pulled], free[pulled])


def test_an_image_prompt_pulls_by_the_mean_distance_to_all_its_cutouts():
    gen = torch.Generator().manual_seed(1)
    image_embeds, prompt_embeds = torch.randn(5, 32, generator=gen), torch.randn(7, 32, generator=gen)
    pairs = torch.tensor([[spherical_dist(a, b) for b in prompt_embeds] for a in image_embeds])
    assert Target(prompt_embeds, 0.5).loss(image_embeds).item() == pytest.approx(0.5 * pairs.mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    "image, canvas, expected",
    [((300, 600), (64, 64), (45, 91)), ((600, 300), (128, 96), (157, 78)), ((20, 30), (256, 256), (20, 30))],
)
def test_image_prompts_keep_their_aspect_at_the_canvas_area(image, canvas, expected):
    assert area_size(*image, canvas) == expected


# ---- cutouts drawn once: the CLIP chunk size changes nothing -------------------------------------------


def test_losses_and_gradient_do_not_depend_on_the_clip_chunk(vqgan, clip):
    guide = _guide(clip, cutn=6)
    image = decode_image(vqgan, _latent(vqgan))
    results = []
    for chunk in (1, 2, 6):
        pixels = image.clone().requires_grad_(True)
        losses = clip_losses(guide, guide.phases[0], pixels, torch.Generator().manual_seed(5), chunk)
        results.append((torch.stack(losses), pixels.grad))
    for losses, grad in results[:2]:
        assert_close(losses, results[2][0], atol=1e-6, rtol=1e-5)
        assert_close(grad, results[2][1], atol=1e-8, rtol=1e-4)


def test_the_loop_is_reproduced_from_its_generator_alone(vqgan, clip):
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        z = _latent(vqgan)
        steps = list(optimize(vqgan, [_guide(clip, 4)], z, 2, generator=torch.Generator().manual_seed(2), clip_chunk=3))
        runs.append([(s.i, s.loss, s.losses) for s in steps] + [z.detach()])
    assert runs[0][:2] == runs[1][:2]
    assert torch.equal(runs[0][2], runs[1][2])
    assert [i for i, _, _ in runs[0][:2]] == [1, 2] and len(runs[0][0][2]) == 2


# ---- precision ----------------------------------------------------------------------------------------


def test_kept_pixels_are_decoded_in_fp32_inside_any_autocast(vqgan):
    z = _latent(vqgan)
    fp32 = decode_image(vqgan, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = decode_image(vqgan, z)
        plain = vqgan.decode(z)  # what an autocast decode would have kept
    assert inside.dtype == torch.float32 and torch.equal(inside, fp32)
    assert plain.dtype == torch.bfloat16


def _run(vqgan, clip, dtype, steps=30, weight=1.0, lr=1.0):
    guide = Guide(clip, Cutouts(clip.input_size, 4), [[Target(_targets(clip, n=1)[0].embed, weight)]])
    z = _latent(vqgan, seed=3)
    loop = optimize(vqgan, [guide], z, steps, generator=torch.Generator().manual_seed(3), lr=lr, dtype=dtype)
    return list(loop), z


def test_fp16_with_loss_scaling_follows_the_fp32_losses(vqgan, clip):
    fp32, _ = _run(vqgan, clip, None)
    fp16, z = _run(vqgan, clip, torch.float16)
    for a, b in zip(fp32, fp16, strict=True):
        assert abs(b.loss - a.loss) < PRECISION_TOLERANCE * abs(a.loss), (a.i, a.loss, b.loss)
    assert not any(s.skipped for s in fp16) and fp16[-1].scale > 1 and torch.isfinite(z).all()


def test_fp16_loss_scaling_keeps_gradients_that_fp16_flushes_to_zero(vqgan, clip):
    """A prompt of weight 1e-5 has gradients around 1e-9 a pixel, below fp16's smallest subnormal (6e-8):
    unscaled they vanish and z would not move; scaled, the fp16 step is the fp32 step."""
    start = _latent(vqgan, seed=3)
    (fp32,), _ = _run(vqgan, clip, None, steps=1, weight=1e-5)
    (fp16,), _ = _run(vqgan, clip, torch.float16, steps=1, weight=1e-5)
    moved32, moved16 = (fp32.z - start).flatten(), (fp16.z - start).flatten()
    assert moved32.norm() > 1
    assert torch.cosine_similarity(moved16, moved32, 0) > 0.95
    assert moved16.norm() == pytest.approx(moved32.norm().item(), rel=0.1)


class _OverflowAt:
    """Wraps a CLIP so that its backward overflows (an inf gradient, or `bad`) on chosen calls of encode_image."""

    def __init__(self, clip, calls, bad=float("inf")):
        self.clip, self.calls, self.n, self.bad = clip, set(calls), 0, bad

    def __getattr__(self, name):
        return getattr(self.clip, name)

    def encode_image(self, x):
        out = self.clip.encode_image(x)
        self.n += 1
        if self.n in self.calls:
            out.register_hook(lambda grad: grad * self.bad)
        return out


def test_fp16_overflow_skips_the_step_lowers_the_scale_and_recovers(vqgan, clip):
    guide = _guide(clip, cutn=4, augment=())
    guide.clip = _OverflowAt(clip, calls={3})  # one call a step: the third step overflows
    z = _latent(vqgan, seed=4)
    latents = [z.detach().clone()]
    steps = []
    for step in optimize(vqgan, [guide], z, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float16):
        steps.append(step)
        latents.append(step.z)
    assert [s.skipped for s in steps] == [False, False, True, False, False, False]
    assert torch.equal(latents[3], latents[2])  # the overflowing step left z as it was
    assert not torch.equal(latents[4], latents[3])  # and the next one moved it again
    assert steps[2].scale == steps[1].scale / 2 and steps[3].scale == steps[2].scale
    for latent in latents:
        assert torch.isfinite(decode_image(vqgan, latent)).all()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_step_whose_gradient_is_not_finite_is_skipped_and_z_never_takes_a_nan(vqgan, clip, dtype):
    guide = _guide(clip, cutn=4, augment=())
    guide.clip = _OverflowAt(clip, calls={3}, bad=float("nan"))  # the third step's gradient is NaN
    z = _latent(vqgan, seed=4)
    latents = [z.detach().clone()]
    steps = []
    for step in optimize(vqgan, [guide], z, 5, generator=torch.Generator().manual_seed(0), dtype=dtype):
        steps.append(step)
        latents.append(step.z)
    assert [s.skipped for s in steps] == [False, False, True, False, False]
    assert torch.equal(latents[3], latents[2]) and not torch.equal(latents[4], latents[3])
    assert all(torch.isfinite(latent).all() for latent in latents)


def test_nearly_opposite_directions_have_a_finite_distance_gradient():
    """Rounding can put the half chord of opposite directions at 1, where arcsin's gradient is infinite."""
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))  # one where the old formula gave NaN
    x = (v * 3).requires_grad_(True)
    d = spherical_dist(x, -v)
    d.backward()
    assert d.item() == pytest.approx(torch.pi**2 / 2, rel=5e-3)  # 2 * (pi / 2) ** 2: half a great circle
    assert torch.isfinite(x.grad).all()
