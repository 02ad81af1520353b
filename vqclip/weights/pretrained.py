"""The weights registry, as data: every public model vqclip can fetch, with its mirrors and checksums.

Sources and link status: ../shared/reference/checkpoints.md (sections 1, 3, 5, 6). URLs are tried in
order; sizes and sha256 are checked where known, and where they are not the first complete download's
sha256 is recorded beside the file and checked from then on. Users add entries in a TOML file
(see `vqclip.weights.registry`).
"""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FileSpec:
    """One file of a model: where to get it and how to know it is the right one."""

    filename: str  # name in the cache folder of the model
    urls: tuple[str, ...] = ()  # tried in order: original host first, then verified mirrors
    size: int | None = None  # bytes, where known
    sha256: str | None = None  # full hex digest, where known


@dataclass(frozen=True)
class WeightSpec:
    """A registry entry: a VQGAN, a transformer, a CLIP model (fetched by open_clip) or an upscaler."""

    name: str
    kind: str  # "vqgan" | "transformer" | "clip" | "upscaler"
    description: str = ""
    checkpoint: FileSpec | None = None  # None for CLIP: open_clip / huggingface_hub fetch those
    config: FileSpec | None = None  # the taming yaml, when it is downloaded
    config_data: dict | None = field(default=None, hash=False)  # the taming yaml inline, when known
    clip_arch: str | None = None  # open_clip architecture, e.g. "ViT-B-32-quickgelu"
    clip_tag: str | None = None  # open_clip pretrained tag, e.g. "openai"
    license: str = ""
    path: str | None = None  # a local checkpoint (user entries): used as is, never downloaded
    local_config: str | None = None  # a local taming yaml (user entries)
    clip_hub: str | None = None  # open_clip's `hf_hub` for the tag, so listing needs no open_clip import
    approx_size: int | None = None  # bytes, about, where no exact size is published (`models list`: "~")
    size_source: str = ""  # where approx_size comes from


def _heibox_share(share: str, path: str) -> str:
    return f"https://heibox.uni-heidelberg.de/d/{share}/files/?p={path}&dl=1"


def _hf(repo: str, path: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/main/{path}"


def _taming_f16(n_embed: int) -> dict:
    """The model.yaml shared by taming's f16 VQGANs (ch_mult 1,1,2,2,4; attention at 16)."""
    return {
        "model": {
            "target": "taming.models.vqgan.VQModel",
            "params": {
                "embed_dim": 256,
                "n_embed": n_embed,
                "ddconfig": {
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
                },
            },
        }
    }


_GUMBEL_F8_8192 = {
    "model": {
        "target": "taming.models.vqgan.GumbelVQ",
        "params": {
            "embed_dim": 256,
            "n_embed": 8192,
            "ddconfig": {
                "double_z": False,
                "z_channels": 256,
                "resolution": 256,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 128,
                "ch_mult": [1, 1, 2, 4],
                "num_res_blocks": 2,
                "attn_resolutions": [32],
                "dropout": 0.0,
            },
        },
    }
}

_TAMING = "MIT (taming-transformers)"

_VQGANS = [
    WeightSpec(
        name="vqgan_imagenet_f16_16384",
        kind="vqgan",
        description="ImageNet, f=16, 16384 codes (default)",
        checkpoint=FileSpec(
            "model.ckpt",
            (
                _heibox_share("a7530b09fed84f80a887", "%2Fckpts%2Flast.ckpt"),
                "https://heibox.uni-heidelberg.de/f/867b05fc8c4841768640/?dl=1",
                _hf("Somnai/pytti-vqgan-checkpoints", "imagenet/imagenet.ckpt"),
                _hf("datasets/erwann/face_editor_model_ckpt", "imagenet.ckpt"),
            ),
            size=980_092_370,
            sha256="845a68805098cb666420d5db93df53f3a3b6dd443e6dd85c05759c5b998cd663",
        ),
        config_data=_taming_f16(16384),
        license=_TAMING,
    ),
    WeightSpec(
        name="vqgan_imagenet_f16_1024",
        kind="vqgan",
        description="ImageNet, f=16, 1024 codes",
        checkpoint=FileSpec(
            "model.ckpt",
            (
                _heibox_share("8088892a516d4e3baf92", "%2Fckpts%2Flast.ckpt"),
                "https://heibox.uni-heidelberg.de/f/140747ba53464f49b476/?dl=1",
                _hf("Nehc/vqgan_imagenet_f16_1024", "ckpts/last.ckpt"),
            ),
        ),
        config_data=_taming_f16(1024),
        license=_TAMING,
        approx_size=958_000_000,
        size_source='"958 MB": nerdyrodent/VQGAN-CLIP download_models.sh; the Hub mirror Nehc/vqgan_imagenet_f16_1024',
    ),
    WeightSpec(
        name="vqgan_gumbel_f8_8192",
        kind="vqgan",
        description="GumbelVQ, OpenImages, f=8, 8192 codes",
        checkpoint=FileSpec(
            "model.ckpt",
            (
                _heibox_share("2e5662443a6b4307b470", "%2Fckpts%2Flast.ckpt"),
                "https://heibox.uni-heidelberg.de/f/34a747d5765840b5a99d/?dl=1",
                _hf("neggles/vaedump", "taming/vq-gumbel-f8-8192/model.ckpt"),
                _hf("Somnai/pytti-vqgan-checkpoints", "openimages/openimages.ckpt"),
            ),
            size=376_581_823,
            sha256="5cd6c74810ab97e00e942c25403f73afc081e8b19987b31ec0d9ff5b68e7ab14",
        ),
        config_data=_GUMBEL_F8_8192,
        license=_TAMING,
    ),
    WeightSpec(
        name="wikiart_16384",
        kind="vqgan",
        description="EleutherAI WikiArt, f=16, 16384 codes",
        checkpoint=FileSpec(
            "model.ckpt",
            (
                "https://github.com/pixray/pixray/releases/download/v1.7.1/vqgan_wikiart_16384.ckpt",
                _hf("Somnai/pytti-vqgan-checkpoints", "wikiart/wikiart.ckpt"),
            ),
            size=1_005_327_541,
            sha256="bd08bb46301f98be1712bb2be9f8868cea30b53137cd985d4d6e8da8b3e02c36",
        ),
        config=FileSpec(
            "model.yaml",
            (
                "https://github.com/pixray/pixray/releases/download/v1.7.1/vqgan_wikiart_16384.yaml",
                _hf("Somnai/pytti-vqgan-checkpoints", "wikiart/wikiart.yaml"),
            ),
            size=920,
        ),
        license="MIT (EleutherAI retrain of taming-transformers)",
    ),
    WeightSpec(
        name="coco_first_stage",
        kind="vqgan",
        description="COCO transformer's, f=16, 8192 codes",
        checkpoint=FileSpec(
            "model.ckpt",
            (
                "https://batbot.ai/models/VQGAN/coco_first_stage.ckpt",
                _hf("Somnai/pytti-vqgan-checkpoints", "coco/coco.ckpt"),
            ),
            size=296_030_214,
            sha256="106cc20fde571df14afc4349d62218d8213cf47177c682ecaa78a8c28b12f9de",
        ),
        config=FileSpec(
            "model.yaml",
            (
                "https://batbot.ai/models/VQGAN/coco_first_stage.yaml",
                _hf("Somnai/pytti-vqgan-checkpoints", "coco/coco.yaml"),
            ),
            size=458,
        ),
        license=_TAMING,
    ),
]

_KOOFR_CIN = "https://app.koofr.net/content/links/90cbd5aa-ef70-4f5e-99bc-f12e5a89380e/files/get"
_CIN_RUN = "%2F2021-04-03T19-39-50_cin_transformer"

_TRANSFORMERS = [
    WeightSpec(
        name="cin_transformer",
        kind="transformer",
        description="ImageNet class-conditional GPT, 1.4B",
        checkpoint=FileSpec("model.ckpt", (f"{_KOOFR_CIN}/last.ckpt?path={_CIN_RUN}%2Fcheckpoints%2Flast.ckpt",)),
        config=FileSpec(
            "project.yaml",
            (
                f"{_KOOFR_CIN}/2021-04-03T19-39-50-project.yaml"
                f"?path={_CIN_RUN}%2Fconfigs%2F2021-04-03T19-39-50-project.yaml",
            ),
        ),
        license=_TAMING,
        approx_size=5_600_000_000,
        size_source="at least its 1.4B fp32 weights (n_embd 1536, 48 layers; the file also holds optimiser state)",
    ),
    WeightSpec(
        name="sflckr",
        kind="transformer",
        description="S-FLCKR landscapes GPT, f=16",
        checkpoint=FileSpec(
            "model.ckpt",
            (_heibox_share("73487ab6e5314cb5adba", "%2Fcheckpoints%2Flast.ckpt"),),
            size=4_263_525_412,
            sha256="8a8adea3da8dab412675772831370dd948e0aa97bb11a9488a2f328b58dbc929",
        ),
        config=FileSpec(
            "project.yaml",
            (_heibox_share("73487ab6e5314cb5adba", "%2Fconfigs%2F2020-11-09T13-31-51-project.yaml"),),
            size=1603,
        ),
        license=_TAMING,
    ),
]

_UPSCALERS = [
    WeightSpec(
        name="realesrgan_x4plus",
        kind="upscaler",
        description="Real-ESRGAN x4plus (spandrel)",
        checkpoint=FileSpec(
            "RealESRGAN_x4plus.pth",
            (
                "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
                _hf("fofr/comfyui", "upscale_models/RealESRGAN_x4plus.pth"),
            ),
            size=67_040_989,
            sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
        ),
        license="BSD-3-Clause (Real-ESRGAN)",
    ),
]


def clip_arch(arch: str, tag: str) -> str:
    """The open_clip architecture for weights: the OpenAI weights were trained with QuickGELU, and
    open_clip's "-quickgelu" configs (one for each OpenAI ViT and ResNet) match them exactly."""
    if tag == "openai" and arch.startswith(("ViT", "RN")) and not arch.endswith("-quickgelu"):
        return f"{arch}-quickgelu"
    return arch


_CLIP_SIZES = (
    "the fp32 weights file on the Hub: 605 MB listed for timm/vit_base_patch32_clip_224.openai, the others "
    "4 bytes x their parameters (../shared/reference/checkpoints.md, section 5.4)"
)


def _clip(arch: str, tag: str, description: str, hub: str, size: int) -> WeightSpec:
    return WeightSpec(
        name=f"{arch}/{tag}",
        kind="clip",
        description=description,
        clip_arch=clip_arch(arch, tag),
        clip_tag=tag,
        license="MIT (OpenAI CLIP)" if tag == "openai" else "MIT (open_clip)",
        clip_hub=hub,
        approx_size=size,
        size_source=_CLIP_SIZES,
    )


# hub: open_clip's `hf_hub` of the tag (tests/test_newcomer.py checks them against the installed open_clip)
_CLIPS = [
    _clip(
        "ViT-B-32",
        "openai",
        "OpenAI ViT-B/32, 224 px (default)",
        "timm/vit_base_patch32_clip_224.openai/",
        605_000_000,
    ),
    _clip("ViT-B-16", "openai", "OpenAI ViT-B/16, 224 px", "timm/vit_base_patch16_clip_224.openai/", 598_000_000),
    _clip("ViT-L-14", "openai", "OpenAI ViT-L/14, 224 px", "timm/vit_large_patch14_clip_224.openai/", 1_710_000_000),
    _clip("RN50", "openai", "OpenAI ResNet-50, 224 px", "timm/resnet50_clip.openai/", 408_000_000),
    _clip("RN101", "openai", "OpenAI ResNet-101, 224 px", "timm/resnet101_clip.openai/", 479_000_000),
    _clip(
        "ViT-B-32",
        "laion2b_s34b_b79k",
        "LAION-2B ViT-B/32, 224 px",
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/",
        605_000_000,
    ),
]

# The shapes world's small models ship inside the package (vqclip/shapes/weights, checked by its SHA256SUMS):
# local paths, never downloaded, so `--vqgan shapes_f8 --clip shapes-a` works with no network at all.
_SHAPES_WEIGHTS = Path(__file__).parents[1] / "shapes" / "weights"
_SHAPES = [
    WeightSpec(
        name="shapes_f8",
        kind="vqgan",
        description="shapes world, f=8, 512 codes (shipped)",
        license="MIT",
        path=str(_SHAPES_WEIGHTS / "shapes_f8.ckpt"),
        local_config=str(_SHAPES_WEIGHTS / "shapes_f8.yaml"),
    ),
    *(
        WeightSpec(
            name=f"shapes-{which}",
            kind="clip",
            description=f"shapes world, {arch} ({role})",
            clip_arch=f"shapes-{which}",
            license="MIT",
            path=str(_SHAPES_WEIGHTS / f"shapes-{which}.pt"),
            local_config=str(_SHAPES_WEIGHTS / f"shapes-{which}.json"),  # the open_clip model config
        )
        for which, arch, role in (
            ("a", "ResNet 64 px", "guides; shipped"),
            ("b", "ViT 48 px", "scores; shipped"),
        )
    ),
]

PRETRAINED: dict[str, WeightSpec] = {s.name: s for s in _VQGANS + _TRANSFORMERS + _UPSCALERS + _CLIPS + _SHAPES}

DEFAULT_VQGAN = "vqgan_imagenet_f16_16384"
DEFAULT_CLIP = "ViT-B-32/openai"
DEFAULT_UPSCALER = "realesrgan_x4plus"
