"""Step 3 of a generation: load the models a config names. Joins configs, weights and devices: taming
yaml -> model config, checkpoint -> strictly loaded model; `load_models` gathers a run's VQGAN (or GPT and
its first stage), CLIPs and upscaler, once, and readies them for speed.

The yaml files are read as plain data (`yaml.safe_load`); their `target:` class paths only tell which
kind of model the file describes, nothing is instantiated from them.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from vqclip.checkpoint import load_strict, read_checkpoint, state_dict_of
from vqclip.errors import UsageError, WeightsError
from vqclip.events import ProgressFn, ignore
from vqclip.models.vqgan import VQGAN, VQGANConfig

TRANSFORMER_PREFIX = "first_stage_model."  # where a Net2NetTransformer checkpoint keeps its VQGAN


def read_yaml(path: str | Path) -> dict:
    """A taming model.yaml / *-project.yaml as plain data."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise WeightsError(f"Cannot read the model config {path}: {err}.") from err
    if not isinstance(data, dict) or "model" not in data:
        raise WeightsError(f"{path} is not a taming model config (no top-level 'model:' entry).")
    return data


def vqgan_section(data: dict) -> dict:
    """The VQGAN part of a taming config: `model` itself, or a transformer's `first_stage_config`."""
    model = data["model"]
    params = model.get("params", {})
    if "first_stage_config" in params:
        return params["first_stage_config"]
    return model


def vqgan_config(data: dict) -> VQGANConfig:
    """VQGANConfig from a parsed taming yaml (VQModel, GumbelVQ, or a transformer's first stage)."""
    section = vqgan_section(data)
    params = section.get("params", {})
    dd = params.get("ddconfig")
    if dd is None or "embed_dim" not in params or "n_embed" not in params:
        raise WeightsError("The model config has no VQGAN ddconfig / embed_dim / n_embed.")
    return VQGANConfig(
        embed_dim=int(params["embed_dim"]),
        n_embed=int(params["n_embed"]),
        z_channels=int(dd["z_channels"]),
        resolution=int(dd["resolution"]),
        in_channels=int(dd.get("in_channels", 3)),
        out_ch=int(dd.get("out_ch", 3)),
        ch=int(dd["ch"]),
        ch_mult=tuple(int(m) for m in dd["ch_mult"]),
        num_res_blocks=int(dd["num_res_blocks"]),
        attn_resolutions=tuple(int(r) for r in dd.get("attn_resolutions", ())),
        double_z=bool(dd.get("double_z", False)),
        gumbel=str(section.get("target", "")).endswith("GumbelVQ"),
    )


def vqgan_state_dict(sd: dict) -> dict:
    """Keep the VQGAN tensors: strip a transformer's `first_stage_model.` prefix, drop the training loss."""
    if any(k.startswith(TRANSFORMER_PREFIX) for k in sd):
        sd = {k[len(TRANSFORMER_PREFIX) :]: v for k, v in sd.items() if k.startswith(TRANSFORMER_PREFIX)}
    return {k: v for k, v in sd.items() if not k.startswith("loss.")}


def find_config(checkpoint: Path) -> Path | None:
    """A yaml beside a checkpoint: `<stem>.yaml`, `model.yaml`, or taming's `../configs/*.yaml` layout."""
    candidates = [checkpoint.with_suffix(".yaml"), checkpoint.parent / "model.yaml"]
    configs = checkpoint.parent.parent / "configs"
    if configs.is_dir():
        candidates += sorted(configs.glob("*.yaml"))
    return next((c for c in candidates if c.is_file()), None)


def load_vqgan(
    checkpoint: str | Path,
    config: str | Path | dict | None = None,
    device=None,
    *,
    offline: bool | None = None,
    progress: ProgressFn = ignore,
) -> VQGAN:
    """Load a taming VQGAN (VQModel or GumbelVQ, or a transformer's first stage), strictly, in eval mode.

    Args:
        checkpoint: a registry name (downloaded on first use) or a path to a `.ckpt` file.
        config: the model's yaml (path or parsed dict); by default the registry's, or one beside the file.
        device: where to put the model (default CPU).
        offline: never download (default: VQCLIP_OFFLINE / HF_HUB_OFFLINE).
        progress: receives the download's Progress events.
    """
    ckpt_path, config = _resolve(checkpoint, config, offline, progress)
    data = config if isinstance(config, dict) else read_yaml(config)
    model = _build_vqgan(data, vqgan_state_dict(state_dict_of(read_checkpoint(ckpt_path))), str(ckpt_path))
    return model.to(device) if device is not None else model


def _build(cls, config, sd: dict, source: str):
    """A frozen model from its config and state dict: allocated once on the meta device, then filled strictly."""
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device="cpu")
    load_strict(model, sd, source)
    return model.eval().requires_grad_(False)


def _build_vqgan(data: dict, sd: dict, source: str) -> VQGAN:
    return _build(VQGAN, vqgan_config(data), sd, source)


def _resolve(checkpoint, config, offline, progress):
    """(checkpoint path, config) for a registry name or a local path."""
    from vqclip.registry import fetch_model, looks_like_path

    path = Path(checkpoint).expanduser()
    if not looks_like_path(str(checkpoint)):
        local = fetch_model(str(checkpoint), kind="vqgan", offline=offline, progress=progress)
        path, config = local.checkpoint, config if config is not None else local.config
    elif not path.is_file():
        raise UsageError(f"VQGAN checkpoint {checkpoint} does not exist.")
    if config is None:  # a local file, or a user entry with only a `path`: the yaml beside it
        config = find_config(path)
        if config is None:
            raise UsageError(
                f"No config found beside {path}: expected {path.with_suffix('.yaml').name}, model.yaml or "
                "../configs/*.yaml.",
                "Pass the model's yaml with --vqgan-config (Python: config=...), or give a user entry `config`.",
            )
    return path, config


def transformer_parts(data: dict):
    """(GPTConfig, Conditioning) from a Net2NetTransformer *-project.yaml."""
    from vqclip.models.gpt import Conditioning, GPTConfig

    params = data["model"].get("params", {})
    gpt = params.get("transformer_config", {}).get("params")
    if gpt is None:
        raise WeightsError("The config is not a taming transformer (no transformer_config).")
    cfg = GPTConfig(**{k: int(gpt[k]) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")})
    cond = params.get("cond_stage_config", {})
    cond = {"target": cond} if isinstance(cond, str) else cond
    target = str(cond.get("target", ""))
    if target.endswith("Labelator"):
        conditioning = Conditioning("class", n_classes=int(cond.get("params", {}).get("n_classes", 1000)))
    elif target.endswith("SOSProvider") or target == "__is_unconditional__" or params.get("unconditional"):
        conditioning = Conditioning("unconditional", sos_token=int(params.get("sos_token", 0)))
    else:
        raise WeightsError(
            f"Transformers conditioned on {target or 'an image'} are not supported; "
            "use a class-conditional (cin_transformer) or unconditional one."
        )
    return cfg, conditioning


def load_transformer(checkpoint: str | Path, config=None, device=None, *, offline=None, progress: ProgressFn = ignore):
    """(GPT, VQGAN, Conditioning) from a taming Net2NetTransformer checkpoint, loaded strictly."""
    from vqclip.models.gpt import GPT

    ckpt_path, config = _resolve(checkpoint, config, offline, progress)
    data = config if isinstance(config, dict) else read_yaml(config)
    gpt_cfg, conditioning = transformer_parts(data)
    sd = state_dict_of(read_checkpoint(ckpt_path))
    gpt_sd = {
        k[len("transformer.") :]: v
        for k, v in sd.items()
        # `attn.mask` is the constant causal mask; attention here is causal by construction
        if k.startswith("transformer.") and not k.endswith(".attn.mask")
    }
    gpt = _build(GPT, gpt_cfg, gpt_sd, f"{ckpt_path} (transformer)")
    vqgan = _build_vqgan(data, vqgan_state_dict(sd), str(ckpt_path))
    if device is not None:
        gpt, vqgan = gpt.to(device), vqgan.to(device)
    return gpt, vqgan, conditioning


def resolve_upscaler(name: str, offline=None, progress: ProgressFn = ignore) -> tuple[Path, str]:
    """An upscaler's weights and their sha256: a registry name (downloaded and verified on first use) or a
    local file."""
    from vqclip.cache import sha256_file
    from vqclip.registry import fetch_model, looks_like_path

    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UsageError(f"Upscaler weights {name} do not exist.")
        return path, sha256_file(path)
    local = fetch_model(name, kind="upscaler", offline=offline, progress=progress)
    return local.checkpoint, local.sha256


@dataclass
class Models:
    """Everything a run loads once and reuses across prompts."""

    vqgan: torch.nn.Module
    vqgan_record: dict  # {"name", "sha256"}: the VQGAN that ran (a transformer's first stage is named as such)
    clips: list  # list[vqclip.models.clip.ClipModel]
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    gpt: torch.nn.Module | None = None  # the taming GPT of --transformer
    conditioning: object = None  # how that GPT is conditioned (vqclip.models.gpt.Conditioning)
    upscaler: object = None  # Real-ESRGAN (spandrel), loaded when the config asks for --upscale
    upscaler_record: dict | None = None  # its name and sha256

    @property
    def precision(self) -> str:
        """The precision that runs: fp32, bf16 or fp16."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def names(self) -> dict:
        """Names and sha256 of the models, for the metadata."""
        record = {"vqgan": self.vqgan_record, "clip": [{"name": c.name, "sha256": c.sha256} for c in self.clips]}
        if self.upscaler_record is not None:
            record["upscaler"] = self.upscaler_record
        return record


def load_models(cfg, offline: bool | None = None, progress: ProgressFn = ignore, checked=None) -> Models:
    """Load (downloading on first use) the models a GenerationConfig names, frozen, on its device.

    `checked` is what vqclip.validate.validate(cfg) returned (the config is validated here when it is not
    given). The device is resolved first, so an unavailable one fails before any weights are read.
    """
    from vqclip.clip_loading import load_clip
    from vqclip.device import image_path_params, resolve_device, resolve_precision
    from vqclip.validate import validate

    checked = checked or validate(cfg)

    device = resolve_device(cfg.device)
    gpt = conditioning = None
    if cfg.transformer:  # the GPT's codes belong to its own first stage: that is the VQGAN
        gpt, vqgan, conditioning = load_transformer(cfg.transformer, device=device, offline=offline, progress=progress)
        vqgan_name = f"{cfg.transformer} (first stage)"
        sha = _sha256(cfg.transformer, "transformer")
    else:
        vqgan = load_vqgan(cfg.vqgan, cfg.vqgan_config, device=device, offline=offline, progress=progress)
        vqgan_name, sha = cfg.vqgan, _sha256(cfg.vqgan, "vqgan")
    clips = [load_clip(source, device=device, offline=offline, progress=progress) for source in checked.clips]
    dtype = resolve_precision(cfg.precision, device, image_path_params(vqgan, clips))  # auto: by the work too
    models = Models(vqgan, {"name": vqgan_name, "sha256": sha}, clips, device, dtype, gpt, conditioning)
    if cfg.upscale > 1:
        load_upscaler_into(models, offline=offline, progress=progress, precision=cfg.precision)
    prepare_for_speed(models, cfg)
    return models


def load_upscaler_into(
    models: Models, name: str | None = None, offline=None, progress: ProgressFn = ignore, precision: str = "auto"
) -> None:
    """Load the upscaler (the registry's Real-ESRGAN by default) into `models`, once."""
    from vqclip.pretrained import DEFAULT_UPSCALER
    from vqclip.upscale import load_upscaler

    if models.upscaler is not None:
        return
    name = name or DEFAULT_UPSCALER
    path, sha256 = resolve_upscaler(name, offline=offline, progress=progress)
    models.upscaler = load_upscaler(path, models.device, precision)
    models.upscaler_record = {"model": name, "sha256": sha256}


def prepare_for_speed(models: Models, cfg) -> None:
    """Channels-last decoder (not on MPS), CLIP image towers kept in the autocast dtype (the text towers stay
    fp32: they run once per prompt), no encoder unless the run encodes images, torch.compile if asked; on
    the CPU, freed memory kept for the next step (memory.keep_freed_memory)."""
    if models.device.type == "cpu":
        from vqclip.memory import keep_freed_memory

        keep_freed_memory()
    if models.device.type != "mps":
        models.vqgan.use_channels_last()
    if models.dtype is not None:
        for clip in models.clips:
            clip.cast_image_tower(models.dtype)
    if not cfg.encodes_images:
        models.vqgan.drop_encoder()
    if cfg.compile:
        models.vqgan.decoder.compile()
        for clip in models.clips:
            clip.compile()


def _sha256(name: str, kind: str) -> str | None:
    """A checkpoint's sha256: a registry file's download stamp, or the hash of a local file."""
    from vqclip.cache import sha256_file
    from vqclip.registry import fetch_model, looks_like_path

    if looks_like_path(name):
        return sha256_file(Path(name).expanduser())
    return fetch_model(name, kind=kind, offline=True).sha256  # already fetched: this only finds the files
