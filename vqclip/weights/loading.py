"""Loading every model: joins configs, weights and devices. Taming
yaml -> model config, checkpoint -> strictly loaded model; the pipeline's load step
(vqclip.pipeline.load) gathers a run's VQGAN (or GPT and its first stage), CLIPs and upscaler with them.

The yaml files are read as plain data (`yaml.safe_load`); their `target:` class paths only tell which
kind of model the file describes, nothing is instantiated from them.
"""

from pathlib import Path

import torch
import yaml

from vqclip.errors import UsageError, WeightsError
from vqclip.events import ProgressFn, ignore
from vqclip.models.vqgan import VQGAN, VQGANConfig
from vqclip.weights.checkpoint import load_strict, read_checkpoint, state_dict_of

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
    return load_vqgan_file(checkpoint, config, device, offline, progress)[0]


def load_vqgan_file(checkpoint, config, device, offline, progress) -> tuple[VQGAN, str]:
    """(VQGAN, its checkpoint's sha256)."""
    ckpt_path, config, sha256 = _resolve(checkpoint, config, offline, progress)
    data = config if isinstance(config, dict) else read_yaml(config)
    model = _build_vqgan(data, vqgan_state_dict(state_dict_of(read_checkpoint(ckpt_path))), str(ckpt_path))
    return (model.to(device) if device is not None else model), sha256


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
    """(checkpoint path, config, sha256) for a registry name, a local path or a resolved ModelSource."""
    from vqclip.weights.cache import sha256_file
    from vqclip.weights.registry import ModelSource, fetch_model, resolve_model

    source = checkpoint
    if not isinstance(source, ModelSource):
        source = resolve_model(str(checkpoint), ("vqgan", "transformer"), "VQGAN checkpoint")
    if source.spec is not None:
        local = fetch_model(source.spec, kind="vqgan", offline=offline, progress=progress)
        path, config, sha256 = local.checkpoint, config if config is not None else local.config, None
    else:
        path, sha256 = source.path, None
    if config is None:  # a local file, or a user entry with only a `path`: the yaml beside it
        config = find_config(path)
        if config is None:
            raise UsageError(
                f"No config found beside {path}: expected {path.with_suffix('.yaml').name}, model.yaml or "
                "../configs/*.yaml.",
                "Pass the model's yaml with --vqgan-config (Python: config=...), or give a user entry `config`.",
            )
    if source.spec is not None:
        sha256 = local.sha256
    else:
        sha256 = sha256_file(path)
    return path, config, sha256


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
    return load_transformer_file(checkpoint, config, device, offline, progress)[:3]


def load_transformer_file(checkpoint, config, device, offline, progress):
    """(GPT, VQGAN, Conditioning, the checkpoint's sha256)."""
    from vqclip.models.gpt import GPT

    ckpt_path, config, sha256 = _resolve(checkpoint, config, offline, progress)
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
    return gpt, vqgan, conditioning, sha256


def resolve_upscaler(name, offline=None, progress: ProgressFn = ignore) -> tuple[Path, str]:
    """An upscaler's weights and their sha256: a registry name (downloaded and verified on first use), a
    local file, or the ModelSource validation resolved."""
    from vqclip.weights.cache import sha256_file
    from vqclip.weights.registry import ModelSource, fetch_model, resolve_model

    source = name if isinstance(name, ModelSource) else resolve_model(str(name), ("upscaler",), "Upscaler weights")
    if source.path is not None:
        return source.path, sha256_file(source.path)
    local = fetch_model(source.spec, kind="upscaler", offline=offline, progress=progress)
    return local.checkpoint, local.sha256


def fetch_upscaler(name=None, device="cpu", offline=None, progress: ProgressFn = ignore, precision: str = "auto"):
    """(Real-ESRGAN model, its record {"model", "sha256"}): the registry's default unless `name` is given; its
    precision follows `precision` (vqclip.device.upscaler_precision)."""
    from vqclip.upscale import load_upscaler
    from vqclip.weights.pretrained import DEFAULT_UPSCALER

    name = name or DEFAULT_UPSCALER
    path, sha256 = resolve_upscaler(name, offline=offline, progress=progress)
    label = getattr(name, "name", name)
    return load_upscaler(path, device, precision), {"model": label, "sha256": sha256}


def ready_for_speed(vqgan, clips, device, dtype, compile: bool) -> None:
    """Channels-last decoder (not on MPS), CLIP image towers kept in the autocast dtype (the text towers stay
    fp32: they run once per prompt), torch.compile if asked; on the CPU, freed memory kept for the next step
    (memory.keep_freed_memory), and memory freed at load given back."""
    from vqclip.memory import keep_freed_memory, release_freed_memory

    if device.type == "cpu":
        release_freed_memory()
        keep_freed_memory()
    if device.type != "mps":
        vqgan.use_channels_last()
    if dtype is not None:
        for clip in clips:
            clip.cast_image_tower(dtype)
    if compile:
        vqgan.decoder.compile()
        for clip in clips:
            clip.compile()
