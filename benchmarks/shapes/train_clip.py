"""Train one of the shapes world's two tiny CLIPs contrastively on (cutout of a render, caption) pairs.

The image tower sees what vqclip's optimisation shows a CLIP: crops between the CLIP's input size and the
whole image that hold the whole shape, area-resized, half of them with the same kornia augmentations and
noise (`vqclip.cutouts`), half with the noise only. Each batch is groups of one colour on one background
in every shape, so the shape is what tells a group's images apart; captions naming only the shape and an
auxiliary linear shape classifier on the image embedding (not saved) get the shape learnt at all (see
`clip_loss`). The captions use the training phrasings only; zero-shot accuracy is reported on held-out
renders with the training phrasing and with the held-out phrasings. Several images of one class share a
batch, so the contrastive targets treat every caption of the image's class as a positive (soft InfoNCE).

Saved in OpenAI CLIP's state-dict layout (QuickGELU, vocabulary 49408, context 77, widths multiples of
64 so OpenAI's loader infers the heads) in fp16, with an open_clip model config beside it:

    python benchmarks/shapes/train_clip.py --model a --threads 1   # -> shapes-a.json + shapes-a.pt
    python benchmarks/shapes/train_clip.py --model b --threads 1   # -> shapes-b.json + shapes-b.pt

Deterministic given --model, --seed, --steps, --threads and the torch/numpy/Pillow/kornia versions.
"""

import json
import time
from dataclasses import replace

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


def hard_batch(rng: np.random.Generator, size: int = 128) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """BATCH renders in groups that share colour and background and differ only in shape.

    In a batch of random scenes almost every other caption already differs in colour or background, so
    nothing needs the shape; here every image's nearest rivals are its group's other shapes. Returns the
    images (uint8), the labels and each shape's bounding circle (x, y, radius in pixels).
    """
    images, labels, circles = [], [], []
    for _ in range(BATCH // GROUP):
        colour, background = (
            list(COLOURS)[rng.integers(len(COLOURS))],
            list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        )
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


def main():
    p = parser(__doc__.splitlines()[0], seed=-1, steps=-1)
    p.add_argument("--model", choices=sorted(MODELS), required=True)
    args = p.parse_args()
    spec = MODELS[args.model]
    args.seed = spec["seed"] if args.seed < 0 else args.seed
    args.steps = spec["steps"] if args.steps < 0 else args.steps
    started = time.perf_counter()
    rng = setup(args)
    held_out, held_labels = renders(rng, 1000)
    tokens, shape_tokens = caption_tokens(TRAIN_TEMPLATES), shape_caption_tokens()
    model = open_clip.CLIP(**spec["config"])
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens[:, 0]), model.encode_text(tokens[:, 0]))
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
