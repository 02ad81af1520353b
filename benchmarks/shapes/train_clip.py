"""Train one of the shapes world's two tiny CLIPs contrastively on (cutout of a render, caption) pairs.

Stage 1 (the default). The image tower sees what vqclip's optimisation shows a CLIP: crops between the
CLIP's input size and the whole image that hold the whole shape, area-resized, half of them with the same
kornia augmentations and noise (`vqclip.cutouts`), half with the noise only. Each batch is groups of one
colour on one background in every shape, so the shape is what tells a group's images apart; captions
naming only the shape and an auxiliary linear shape classifier on the image embedding (not saved) get the
shape learnt at all (see `clip_loss`). The captions use the training phrasings only; zero-shot accuracy is
reported on held-out renders with the training phrasing and with the held-out phrasings. Several images
of one class share a batch, so the contrastive targets treat every caption of the image's class as a
positive (soft InfoNCE).

Stage 2 (`--finetune STAGE1.pt`, CLIP A as shipped): 250 more steps from the stage-1 weights that add
what guidance draws as negatives under a "junk" caption (shuffled tiles of renders, scattered blobs, and
the decoded images of guidance runs against the model being trained), and renders decoded by the shapes
VQGAN as positives (see `robust_finetune`), so it depends on the shipped VQGAN: rerun it after the VQGAN
changes. Guidance then draws one to three coherent blobs of the prompt's colour instead of scattered
fragments.

Saved in OpenAI CLIP's state-dict layout (QuickGELU, vocabulary 49408, context 77, widths multiples of
64 so OpenAI's loader infers the heads) in fp16, with an open_clip model config beside it:

    python benchmarks/shapes/train_clip.py --model a --threads 1 --out /tmp/stage1   # stage 1
    python benchmarks/shapes/train_clip.py --model a --threads 1 --finetune /tmp/stage1/shapes-a.pt
                                                                  # stage 2 -> shapes-a.json + shapes-a.pt
    python benchmarks/shapes/train_clip.py --model b --threads 1   # -> shapes-b.json + shapes-b.pt (stage 1 only)

Deterministic given --model, --seed, --steps, --threads (and stage 2's --finetune weights, --lr and
--vqgan-pool, --adversary-life) and the torch/numpy/Pillow/kornia versions.
"""

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from common import Log, as_float, parser, renders, report, setup

from vqclip.config import DEFAULT_AUGMENTS
from vqclip.cutouts import Cutouts
from vqclip.models.clip import OPENAI_MEAN, OPENAI_STD
from vqclip.shapes.scenes import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_TEMPLATES,
    SHAPES,
    TRAIN_TEMPLATES,
    all_classes,
    render_array,
    sample_scene,
)

TEXT = {"context_length": 77, "vocab_size": 49408}
MODELS = {  # two different shapes of model, trained from different seeds
    "a": {  # a ResNet image tower (OpenAI's RN layout): convolutions learn the shapes in far fewer steps
        "seed": 1,
        "steps": 1300,
        "config": {
            "embed_dim": 64,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 32, "head_width": 64},
            "text_cfg": {**TEXT, "width": 64, "heads": 1, "layers": 3},
        },
    },
    "b": {  # a ViT image tower, as ViT-B/32 is
        "seed": 2,
        "steps": 2000,
        "config": {
            "embed_dim": 64,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 48, "layers": 2, "width": 128, "patch_size": 6, "head_width": 64},
            "text_cfg": {**TEXT, "width": 128, "heads": 2, "layers": 2},
        },
    },
}
SHAPE_TEMPLATES = ("a {shape}", "a {shape} shape", "a picture of a {shape}")  # captions naming only the shape
BATCH = 60  # fresh renders every step: a fixed pool was learnt by heart before the shapes were
GROUP = len(SHAPES)  # a batch is groups of one colour on one background in every shape (hard negatives)


def hard_batch(rng: np.random.Generator, size: int = 128, pairs=None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """BATCH renders in groups that share colour and background and differ only in shape (or one group
    per (colour, background) of `pairs`).

    In a batch of random scenes almost every other caption already differs in colour or background, so
    nothing needs the shape; here every image's nearest rivals are its group's other shapes. Returns the
    images (uint8), the labels and each shape's bounding circle (x, y, radius in pixels).
    """
    images, labels, circles = [], [], []
    for g in range(BATCH // GROUP if pairs is None else len(pairs)):
        if pairs is None:
            colour, background = (
                list(COLOURS)[rng.integers(len(COLOURS))],
                list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
            )
        else:
            colour, background = pairs[g]
        for shape in SHAPES:
            scene = sample_scene(rng, shape=shape, colour=colour, background=background)
            images.append(render_array(scene, size))
            labels.append(scene.labels)
            p = scene.placements[0]
            circles.append((p.x * size, p.y * size, p.radius * size))
    images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels), np.array(circles)


def boxes_around(rng: np.random.Generator, circles: np.ndarray, min_side: int, size: int) -> torch.Tensor:
    """(N, 3) square crops (x, y, side) between `min_side` and the image that hold the whole shape.

    vqclip's cutouts are random crops; a crop that cuts the shape away still shows its colour and
    background but teaches a wrong shape, so the CLIP trains on crops that contain it at any scale.
    """
    boxes = []
    for cx, cy, r in circles:
        need = min(size, int(np.ceil(2 * r)) + 2)
        side = int(rng.integers(max(min_side, need), size + 1))
        lo_x, hi_x = max(0, int(np.ceil(cx + r)) - side), min(size - side, int(cx - r))
        lo_y, hi_y = max(0, int(np.ceil(cy + r)) - side), min(size - side, int(cy - r))
        x = min(int(rng.integers(min(lo_x, hi_x), max(lo_x, hi_x) + 1)), size - side)
        y = min(int(rng.integers(min(lo_y, hi_y), max(lo_y, hi_y) + 1)), size - side)
        boxes.append((x, y, side))
    return torch.tensor(boxes, dtype=torch.float32)


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def class_index(labels: torch.Tensor) -> torch.Tensor:
    """(N, 3) labels -> index into all_classes()."""
    return (labels[:, 0] * len(COLOURS) + labels[:, 1]) * len(BACKGROUNDS) + labels[:, 2]


def shape_caption_tokens() -> torch.Tensor:
    """(n_shapes, n_templates, 77) tokens of the captions that name only the shape."""
    texts = [t.format(shape=s) for s in SHAPES for t in SHAPE_TEMPLATES]
    return open_clip.tokenize(texts).view(len(SHAPES), len(SHAPE_TEMPLATES), -1)


def caption_tokens(templates) -> torch.Tensor:
    """(n_classes, n_templates, 77) tokens of every class in every phrasing."""
    texts = [t.format(shape=s, colour=c, background=b) for s, c, b in all_classes() for t in templates]
    return open_clip.tokenize(texts).view(len(all_classes()), len(templates), -1)


def encode_text(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `encode_text` on only the first positions up to the longest caption's end token.

    Exact, not an approximation: under the causal mask no position sees the padding after it, and the
    embedding is read at the end token. Five times cheaper than running all 77 positions.
    """
    n = int((tokens != 0).sum(1).max())
    tokens = tokens[:, :n]
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def contrast(model, img: torch.Tensor, classes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between the images' embeddings and one caption of every class (a random phrasing each).

    Image to text: the image's class caption among all classes'. Text to image: the images of the
    caption's class among the batch (a soft target spread over them); captions of absent classes skip it.
    """
    n_classes, n_templates, _ = tokens.shape
    texts = tokens[torch.arange(n_classes), torch.randint(n_templates, (n_classes,))]
    txt = F.normalize(encode_text(model, texts), dim=-1)  # (n_classes, D)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()  # (B, n_classes)
    present = torch.zeros(n_classes, dtype=torch.bool)
    present[classes] = True
    same = (torch.arange(n_classes)[present, None] == classes[None, :]).float()  # (present, B)
    t2i = F.cross_entropy(logits.t()[present], same / same.sum(1, keepdim=True))
    return (F.cross_entropy(logits, classes) + t2i) / 2


def clip_loss(model, shape_head, images, labels, tokens, shape_tokens) -> torch.Tensor:
    """The full captions' contrastive loss, the same for captions naming only the shape ("a star"), and
    an auxiliary linear shape classifier on the image embedding (trained alongside, then discarded).

    Contrastive learning alone learns colour and background in a few hundred steps and leaves the shape
    near chance for thousands (measured: 29-37 % after 500-1200 steps, with or without the shape-only
    captions): while the image tower cannot tell the shapes apart the shape words' embeddings stay
    alike, and the other way round. The classifier breaks that tie; the captions then align with it.
    """
    embed = model.encode_image(normalise(images))  # (B, D)
    img = F.normalize(embed, dim=-1)
    loss = contrast(model, img, class_index(labels), tokens) + contrast(model, img, labels[:, 0], shape_tokens)
    return loss + F.cross_entropy(shape_head(embed), labels[:, 0])


@torch.no_grad()
def zero_shot(model, images: torch.Tensor, labels: torch.Tensor, templates) -> dict:
    """Accuracy of the nearest caption (each phrasing on its own, averaged) on whole renders at input size."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size  # a ViT keeps (h, w), a ResNet an int
    x = normalise(F.interpolate(as_float(images), size=(size, size), mode="area"))
    img = F.normalize(torch.cat([model.encode_image(c) for c in x.split(256)]), dim=-1)
    tokens = caption_tokens(templates)
    hits = torch.zeros(4)
    for t in range(len(templates)):
        txt = F.normalize(model.encode_text(tokens[:, t]), dim=-1)
        guess = torch.tensor(all_classes_labels())[(img @ txt.t()).argmax(1)]  # (N, 3)
        right = guess == labels
        hits += torch.cat([right.all(1, keepdim=True), right], 1).float().mean(0)
    hits /= len(templates)
    return {k: round(v.item(), 4) for k, v in zip(("all", "shape", "colour", "background"), hits, strict=True)}


def all_classes_labels() -> list[tuple[int, int, int]]:
    return [(SHAPES.index(s), list(COLOURS).index(c), list(BACKGROUNDS).index(b)) for s, c, b in all_classes()]


# ---------------------------------------------------------------------------------------------------------
# Stage 2 (`--finetune`): robustness to what guidance draws. Guided images are not clean renders but
# fragments, blurry blobs and off-colour pieces in the VQGAN's texture, and a CLIP that never saw them
# scores them as high as a whole shape. Fine-tuning from the stage-1 weights adds:
# - negatives with a "junk" caption (and a sixth, junk, class for the auxiliary classifier), each in a
#   colour and background of the batch, so that a caption's own renders must beat them: renders cut into
#   tiles and shuffled, scattered blurred blobs (mostly of the group's colour), and the images of a small
#   pool of guidance runs against the model being trained (adversarial; see `AdversarialPool`);
# - positives decoded by the shapes VQGAN (decode(encode(render)), a pool computed once), so the image
#   tower sees the VQGAN's texture (the first VQGAN also shifted colours, red and yellow to orange; the
#   colour-balanced one does not); without them (and with recoloured renders as junk instead) guidance
#   drew fragments again (benchmarks/RESULTS.md). Rerun stage 2 whenever the VQGAN changes.
# Also tried and dropped: renders with patches of another background as junk (no better on backgrounds).

JUNK_TEMPLATES = ("junk", "a mess", "scattered fragments", "a broken picture", "noise", "blobs")
N_JUNK = 6  # junk is class index 90 of the full captions and 5 ("shape") of the shape-only ones


def tile_shuffle(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """The render cut into k x k tiles (k = 2, 4 or 8) in a random order: the shape's pieces, never whole."""
    k = int(rng.choice((2, 4, 8)))
    side = image.shape[0] // k
    tiles = [image[i * side : (i + 1) * side, j * side : (j + 1) * side] for i in range(k) for j in range(k)]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([tiles[order[i * k + j]] for j in range(k)], 1) for i in range(k)]
    return np.concatenate(rows, 0)


def blobs(rng: np.random.Generator, colour: str, background: str, size: int = 128) -> np.ndarray:
    """3-14 small ellipses and polygons scattered on the background, mostly in `colour`, then blurred a
    little: the fragments guidance makes."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    names = list(COLOURS)
    for _ in range(int(rng.integers(3, 15))):
        fill = COLOURS[colour] if rng.random() < 0.75 else COLOURS[names[rng.integers(len(names))]]
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(2, size * 0.16, 2)
        if rng.random() < 0.5:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
        else:
            n = int(rng.integers(3, 8))
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            r = rng.uniform(0.4, 1.0, n)
            draw.polygon(
                [(cx + rx * rk * np.cos(ak), cy + ry * rk * np.sin(ak)) for ak, rk in zip(a, r, strict=True)], fill=fill
            )
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2.5))))
    return np.asarray(image)


class AdversarialPool:
    """`n` latents, each guided towards a random class's caption by the model being trained, as vqclip
    guides them (random codebook tokens to start, straight-through quantisation, the VQGAN decoder,
    cutouts with vqclip's augmentations, squared spherical distance, Adam lr 0.1, z clamped to the
    codebook's range; but 8 cutouts a latent, not 32, under bf16 autocast), one step per call for
    `per_call` of them in turn, restarted after `life` steps.
    Their decoded images are negatives: what guidance draws for a caption must score below its renders."""

    def __init__(self, vqgan, rng, generator, n=12, per_call=4, life=60, cutn=8, cut_size=64):
        from vqclip.optimize import codebook_range

        self.vqgan, self.rng, self.gen = vqgan, rng, generator
        self.n, self.per_call, self.life, self.cutn = n, per_call, life, cutn
        self.lo, self.hi = codebook_range(vqgan)
        self.cut = Cutouts(cut_size, per_call * cutn, 1.0, DEFAULT_AUGMENTS, 0.1)
        self.z = torch.zeros(n, vqgan.config.embed_dim, 16, 16)
        self.m, self.v, self.t = torch.zeros_like(self.z), torch.zeros_like(self.z), torch.zeros(n)
        self.classes = [None] * n
        self.next = 0
        for k in range(n):
            self.restart(k)
            self.t[k] = (k * life) // n  # staggered ages, so the pool always holds young and old runs
        self.images = torch.zeros(n, 3, 128, 128)

    def restart(self, k: int) -> None:
        idx = torch.randint(self.vqgan.config.n_embed, (1, 16, 16), generator=self.gen)
        with torch.no_grad():
            self.z[k] = self.vqgan.embed(idx)[0].float()
        self.m[k], self.v[k], self.t[k] = 0, 0, 0
        self.classes[k] = (
            int(self.rng.integers(len(SHAPES))),
            int(self.rng.integers(len(COLOURS))),
            int(self.rng.integers(len(BACKGROUNDS))),
        )

    def step(self, model, tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """One guidance step for the next `per_call` latents; returns their images (before the step) and labels."""
        from vqclip.guidance import spherical_dist
        from vqclip.optimize import synth

        ks = [(self.next + j) % self.n for j in range(self.per_call)]
        self.next = (self.next + self.per_call) % self.n
        for k in ks:
            if self.t[k] >= self.life:
                self.restart(k)
        labels = torch.tensor([self.classes[k] for k in ks])
        was_training = model.training
        model.eval()
        with torch.no_grad():
            txt = encode_text(model, tokens[class_index(labels), 0])
        for p in model.parameters():
            p.requires_grad_(False)
        z = self.z[ks].clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pixels = synth(self.vqgan, z)
        draw = self.cut.draw(128, 128, self.gen)
        cuts = self.cut(pixels.float().repeat_interleave(self.cutn, 0), draw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embeds = model.encode_image(normalise(cuts)).float()
        loss = spherical_dist(embeds, txt.repeat_interleave(self.cutn, 0)).mean() * len(ks)
        (grad,) = torch.autograd.grad(loss, z)
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
        with torch.no_grad():  # Adam (betas 0.9, 0.999), lr 0.1, as vqclip's loop; then clamp to the codebook range
            grad = grad.nan_to_num(0.0)
            t = self.t[ks] + 1
            m = self.m[ks] * 0.9 + grad * 0.1
            v = self.v[ks] * 0.999 + grad.pow(2) * 0.001
            mhat, vhat = m / (1 - 0.9**t).view(-1, 1, 1, 1), v / (1 - 0.999**t).view(-1, 1, 1, 1)
            self.z[ks] = torch.maximum(torch.minimum(self.z[ks] - 0.1 * mhat / (vhat.sqrt() + 1e-8), self.hi), self.lo)
            self.m[ks], self.v[ks], self.t[ks] = m, v, t
        images = pixels.detach().float().clamp(0, 1)
        return images, labels


def vqgan_pool(vqgan, rng, groups: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """`groups` hard-batch groups (one colour and background, every shape) of renders passed through the
    VQGAN (decode(encode(x))), computed once: images in [0, 1], labels, bounding circles."""
    images, labels, circles = [], [], []
    for _ in range(groups // (BATCH // GROUP)):
        im, lab, circ = hard_batch(rng)
        with torch.no_grad():
            rec = vqgan.decode(vqgan.encode_codes(as_float(im) * 2 - 1)).float().add(1).div(2).clamp(0, 1)
        images.append(rec)
        labels.append(lab)
        circles.append(circ)
    return torch.cat(images), torch.cat(labels), np.concatenate(circles)


def robust_finetune(args, spec, model, rng: np.random.Generator, generator: torch.Generator) -> None:
    """Stage 2: `args.steps` steps from the stage-1 weights in `model` with the negatives described above.
    A batch is two halves (vqclip's augmentations on the first, noise only on the second, negatives and
    positives alike, so augmentation cannot tell junk apart), each of 6 groups (5 shapes in one colour and
    background: 2 groups in the colours and backgrounds of the adversarial images, 4 at random), one
    synthetic junk image per group (tile-shuffled, blobs or off-colour, in the group's colour and
    background) and 2 adversarial images: 76 images. The positives' crops hold the whole shape (as in
    stage 1); the negatives' are vqclip's random crops."""
    from vqclip.shapes import WEIGHTS as SHIPPED
    from vqclip.weights.loading import load_vqgan

    vqgan = load_vqgan(SHIPPED / "shapes_f8.ckpt", SHIPPED / "shapes_f8.yaml").eval()
    for p in vqgan.parameters():
        p.requires_grad_(False)
    size = spec["config"]["vision_cfg"]["image_size"]
    tokens = torch.cat([caption_tokens(TRAIN_TEMPLATES), open_clip.tokenize(list(JUNK_TEMPLATES))[None]])
    shape_tokens = torch.cat([shape_caption_tokens(), open_clip.tokenize(list(JUNK_TEMPLATES[:3]))[None]])
    started = time.perf_counter()
    pool_images, pool_labels, pool_circles = vqgan_pool(vqgan, rng, args.vqgan_pool)
    print(f"VQGAN pool: {len(pool_images)} reconstructions ({time.perf_counter() - started:.0f} s)", flush=True)
    n_pool_groups = len(pool_images) // GROUP
    adversaries = AdversarialPool(vqgan, rng, generator, life=args.adversary_life)
    per_half = 38
    cut = Cutouts(size, per_half, augment=DEFAULT_AUGMENTS, noise_fac=0.1)
    plain = Cutouts(size, per_half, augment=(), noise_fac=0.1)
    shape_head = torch.nn.Linear(spec["config"]["embed_dim"], len(SHAPES) + 1)  # + junk; not saved
    params = [*model.parameters(), *shape_head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    log = Log(args.steps)
    model.train()
    bad = skipped = 0
    for step in range(1, args.steps + 1):
        adv_images, adv_labels = adversaries.step(model, tokens)
        halves = []
        for h in range(2):
            adv = adv_labels[2 * h : 2 * h + 2]
            pairs = [(colours[int(c)], backgrounds[int(b)]) for _, c, b in adv.tolist()]
            pairs += [
                (colours[rng.integers(len(colours))], backgrounds[rng.integers(len(backgrounds))]) for _ in range(2)
            ]
            fresh, fresh_labels, fresh_circles = hard_batch(rng, pairs=pairs)
            picks = rng.choice(n_pool_groups, 2, replace=False)
            rows = np.concatenate([np.arange(g * GROUP, (g + 1) * GROUP) for g in picks])
            pos = torch.cat([as_float(fresh), pool_images[rows]])
            pos_labels = torch.cat([fresh_labels, pool_labels[rows]])
            circles = np.concatenate([fresh_circles, pool_circles[rows]])
            junk = []
            for g in range(6):  # one junk image per group, in its colour and background
                member = (
                    (pos[g * GROUP + int(rng.integers(GROUP))].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                )
                _, c, b = pos_labels[g * GROUP].tolist()
                if rng.random() < 0.5:
                    array = tile_shuffle(rng, member)
                else:
                    array = blobs(rng, colours[c], backgrounds[b])
                junk.append(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div(255))
            neg = torch.cat([torch.stack(junk), adv_images[2 * h : 2 * h + 2]])
            neg_labels = torch.cat([torch.stack([pos_labels[g * GROUP] for g in range(6)]), adv])
            neg_labels[:, 0] = len(SHAPES)
            with torch.no_grad():
                draw = (cut if h == 0 else plain).draw(128, 128, generator)
                boxes = torch.cat([boxes_around(rng, circles, size, 128), draw.boxes[len(pos) :]])
                draw = replace(draw, boxes=boxes)
                images = torch.cat([pos, neg])
                cuts = cut(images, draw) if h == 0 else plain(images, replace(draw, augment=()))
            halves.append((cuts, torch.cat([pos_labels, neg_labels])))
        cuts = torch.cat([c for c, _ in halves])
        labels = torch.cat([lab for _, lab in halves])
        bad = int(bad + (~cuts.isfinite()).any())
        cuts = cuts.nan_to_num(0.0)
        junk_mask = labels[:, 0] == len(SHAPES)
        scene_labels = labels.clone()
        scene_labels[junk_mask, 0] = 0  # any shape: the class index of junk is replaced just below
        classes = torch.where(junk_mask, len(all_classes()), class_index(scene_labels))
        embed = model.encode_image(normalise(cuts))
        img = F.normalize(embed, dim=-1)
        loss = contrast(model, img, classes, tokens) + contrast(model, img, labels[:, 0], shape_tokens)
        loss = loss + F.cross_entropy(shape_head(embed), labels[:, 0])
        opt.zero_grad(set_to_none=True)
        if not loss.isfinite():
            skipped += 1
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        log(step, loss=loss.item(), scale=model.logit_scale.exp().item(), bad=bad, skipped=skipped)


def main():
    p = parser(__doc__.splitlines()[0], seed=-1, steps=-1)
    p.add_argument("--model", choices=sorted(MODELS), required=True)
    p.add_argument("--finetune", type=Path, help="stage 2: start from these stage-1 weights (see robust_finetune)")
    p.add_argument("--lr", type=float, default=3e-4, help="stage 2's peak learning rate")
    p.add_argument("--vqgan-pool", type=int, default=120, help="stage 2: groups of VQGAN reconstructions")
    p.add_argument("--adversary-life", type=int, default=60, help="stage 2: guidance steps before a pool run restarts")
    args = p.parse_args()
    spec = MODELS[args.model]
    args.seed = spec["seed"] if args.seed < 0 else args.seed
    args.steps = (spec["steps"] if args.finetune is None else 250) if args.steps < 0 else args.steps
    started = time.perf_counter()
    rng = setup(args)
    held_out, held_labels = renders(rng, 1000)
    tokens, shape_tokens = caption_tokens(TRAIN_TEMPLATES), shape_caption_tokens()
    model = open_clip.CLIP(**spec["config"])
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens[:, 0]), model.encode_text(tokens[:, 0]))
    if args.finetune is not None:
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in torch.load(args.finetune).items()}
        )
        robust_finetune(args, spec, model, rng, torch.Generator().manual_seed(args.seed))
        return finish(args, spec, model, held_out, held_labels, started)
    cut = Cutouts(spec["config"]["vision_cfg"]["image_size"], BATCH, augment=DEFAULT_AUGMENTS, noise_fac=0.1)
    plain = Cutouts(cut.cut_size, BATCH, augment=(), noise_fac=0.1)  # crop, resize and noise only
    shape_head = torch.nn.Linear(spec["config"]["embed_dim"], len(SHAPES))  # auxiliary; not saved
    opt = torch.optim.AdamW(
        [*model.parameters(), *shape_head.parameters()], lr=1e-3, betas=(0.9, 0.98), weight_decay=0.05
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(args.seed)  # the cutouts' boxes, augmentations and noise
    log = Log(args.steps)
    model.train()
    bad = skipped = 0  # batches with non-finite cutouts; steps skipped for a non-finite loss
    for step in range(1, args.steps + 1):
        images, labels, circles = hard_batch(rng)
        with torch.no_grad():
            draw = cut.draw(128, 128, generator)
            draw = replace(draw, boxes=boxes_around(rng, circles, cut.cut_size, 128))
            half = BATCH // 2  # whole groups: BATCH // 2 is a multiple of GROUP
            cuts = torch.cat(  # cutout k comes from image k
                [
                    cut(as_float(images[:half]), draw[:half]),
                    plain(as_float(images[half:]), replace(draw[half:], augment=())),
                ]
            )
        bad = int(bad + (~cuts.isfinite()).any())
        cuts = cuts.nan_to_num(0.0)  # two runs without this turned NaN after ~1200 steps
        loss = clip_loss(model, shape_head, cuts, labels, tokens, shape_tokens)
        opt.zero_grad(set_to_none=True)
        if not loss.isfinite():  # skip the step rather than poison the weights
            skipped += 1
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*model.parameters(), *shape_head.parameters()], 1.0)  # a run without diverged
        opt.step()
        sched.step()
        log(step, loss=loss.item(), scale=model.logit_scale.exp().item(), bad=bad, skipped=skipped)
        if step % 250 == 0 and step < args.steps:
            model.eval()
            print("  zero-shot", zero_shot(model, held_out[:300], held_labels[:300], TRAIN_TEMPLATES[:1]), flush=True)
            model.train()
    finish(args, spec, model, held_out, held_labels, started)


def finish(args, spec, model, held_out, held_labels, started) -> None:
    """Round to fp16, report zero-shot figures of the weights as shipped, write the config and weights."""
    model.eval()
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(half)  # report the figures of the weights as shipped (fp16)
    figures = {
        "zero_shot_train_phrasing": zero_shot(model, held_out, held_labels, TRAIN_TEMPLATES[:1]),
        "zero_shot_heldout_phrasings": zero_shot(model, held_out, held_labels, HELDOUT_TEMPLATES),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"shapes-{args.model}"
    (args.out / f"{name}.json").write_text(json.dumps(spec["config"], indent=2) + "\n")
    path = args.out / f"{name}.pt"
    torch.save(half, path)
    report(path, started, **figures)


if __name__ == "__main__":
    main()
