"""Train one of the shapes world's two tiny CLIPs contrastively on (cutout of a render, caption) pairs.

The image tower sees what vqclip's optimisation shows a CLIP: random crops between the CLIP's input size
and the whole image, area-resized, with the same kornia augmentations and noise (`vqclip.cutouts`). The
captions use the training phrasings only; zero-shot accuracy is reported on held-out renders with the
training phrasing and with the held-out phrasings. Several images of one class can share a batch, so
the contrastive targets treat every caption of the image's class as a positive (soft InfoNCE).

Saved in OpenAI CLIP's state-dict layout (QuickGELU, vocabulary 49408, context 77, widths multiples of
64 so OpenAI's loader infers the heads) in fp16, with an open_clip model config beside it:

    python benchmarks/shapes/train_clip.py --model a --threads 1   # -> shapes-a.json + shapes-a.pt
    python benchmarks/shapes/train_clip.py --model b --threads 1   # -> shapes-b.json + shapes-b.pt

Deterministic given --model, --seed, --steps, --threads and the torch/numpy/Pillow/kornia versions.
"""

import json
import time

import open_clip
import torch
import torch.nn.functional as F
from common import Log, as_float, parser, renders, report, setup

from vqclip.config import DEFAULT_AUGMENTS
from vqclip.cutouts import Cutouts
from vqclip.models.clip import OPENAI_MEAN, OPENAI_STD
from vqclip.shapes.scenes import BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, SHAPES, TRAIN_TEMPLATES, all_classes

TEXT = {"context_length": 77, "vocab_size": 49408}
MODELS = {  # two different shapes of model, trained from different seeds
    "a": {  # a ResNet image tower (OpenAI's RN layout): convolutions learn the shapes in far fewer steps
        "seed": 1,
        "steps": 1200,
        "config": {
            "embed_dim": 64,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
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
BATCH = 64  # fresh renders every step: a fixed pool was learnt by heart before the shapes were


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def class_index(labels: torch.Tensor) -> torch.Tensor:
    """(N, 3) labels -> index into all_classes()."""
    return (labels[:, 0] * len(COLOURS) + labels[:, 1]) * len(BACKGROUNDS) + labels[:, 2]


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


def clip_loss(model, images, classes, tokens) -> torch.Tensor:
    """Symmetric InfoNCE between the images and one caption of every class (a random phrasing each).

    Image to text: the image's class caption among all classes'. Text to image: the images of the
    caption's class among the batch (a soft target spread over them); captions of absent classes skip it.
    """
    n_classes, n_templates, _ = tokens.shape
    texts = tokens[torch.arange(n_classes), torch.randint(n_templates, (n_classes,))]
    img = F.normalize(model.encode_image(normalise(images)), dim=-1)  # (B, D)
    txt = F.normalize(encode_text(model, texts), dim=-1)  # (n_classes, D)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()  # (B, n_classes)
    present = torch.zeros(n_classes, dtype=torch.bool)
    present[classes] = True
    same = (torch.arange(n_classes)[present, None] == classes[None, :]).float()  # (present, B)
    t2i = F.cross_entropy(logits.t()[present], same / same.sum(1, keepdim=True))
    return (F.cross_entropy(logits, classes) + t2i) / 2


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
    tokens = caption_tokens(TRAIN_TEMPLATES)
    model = open_clip.CLIP(**spec["config"])
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens[:, 0]), model.encode_text(tokens[:, 0]))
    cut = Cutouts(spec["config"]["vision_cfg"]["image_size"], BATCH, augment=DEFAULT_AUGMENTS, noise_fac=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(args.seed)  # the cutouts' boxes, augmentations and noise
    log = Log(args.steps)
    model.train()
    for step in range(1, args.steps + 1):
        images, labels = renders(rng, BATCH)
        with torch.no_grad():
            cuts = cut(as_float(images), cut.draw(128, 128, generator))  # cutout k comes from image k
        loss = clip_loss(model, cuts, class_index(labels), tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log(step, loss=loss.item(), scale=model.logit_scale.exp().item())
        if step % 500 == 0 and step < args.steps:
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
