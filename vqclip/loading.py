"""Joins configs, weights and devices: taming yaml -> model config, checkpoint -> strictly loaded model.

The yaml files are read as plain data (`yaml.safe_load`); their `target:` class paths only tell which
kind of model the file describes, nothing is instantiated from them.
"""

from pathlib import Path

import torch
import yaml

from vqclip.checkpoint import load_strict, read_checkpoint, state_dict_of
from vqclip.errors import UsageError, WeightsError
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
    quiet: bool = False,
) -> VQGAN:
    """Load a taming VQGAN (VQModel or GumbelVQ, or a transformer's first stage), strictly, in eval mode.

    Args:
        checkpoint: a registry name (downloaded on first use) or a path to a `.ckpt` file.
        config: the model's yaml (path or parsed dict); by default the registry's, or one beside the file.
        device: where to put the model (default CPU).
        offline: never download (default: VQCLIP_OFFLINE / HF_HUB_OFFLINE).
        quiet: no download progress on stderr.
    """
    ckpt_path, config = _resolve(checkpoint, config, offline, quiet)
    data = config if isinstance(config, dict) else read_yaml(config)
    model = _build_vqgan(data, vqgan_state_dict(state_dict_of(read_checkpoint(ckpt_path))), str(ckpt_path))
    return model.to(device) if device is not None else model


def _build_vqgan(data: dict, sd: dict, source: str) -> VQGAN:
    """A frozen VQGAN from parsed yaml data and its state dict (allocated once, then filled strictly)."""
    with torch.device("meta"):
        model = VQGAN(vqgan_config(data))
    model = model.to_empty(device="cpu")
    load_strict(model, sd, source)
    return model.eval().requires_grad_(False)


def _resolve(checkpoint, config, offline, quiet):
    """(checkpoint path, config) for a registry name or a local path."""
    from vqclip.registry import fetch_model, looks_like_path

    path = Path(checkpoint).expanduser()
    if not looks_like_path(str(checkpoint)):
        local = fetch_model(str(checkpoint), kind="vqgan", offline=offline, quiet=quiet)
        return local.checkpoint, config if config is not None else local.config
    if not path.is_file():
        raise UsageError(f"VQGAN checkpoint {checkpoint} does not exist.")
    if config is None:
        config = find_config(path)
        if config is None:
            raise UsageError(
                f"No config found beside {path}: expected {path.with_suffix('.yaml').name} or model.yaml.",
                "Pass the model's yaml with --vqgan-config (Python: config=...).",
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


def load_transformer(checkpoint: str | Path, config=None, device=None, *, offline=None, quiet=False):
    """(GPT, VQGAN, Conditioning) from a taming Net2NetTransformer checkpoint, loaded strictly."""
    from vqclip.models.gpt import GPT

    ckpt_path, config = _resolve(checkpoint, config, offline, quiet)
    data = config if isinstance(config, dict) else read_yaml(config)
    gpt_cfg, conditioning = transformer_parts(data)
    sd = state_dict_of(read_checkpoint(ckpt_path))
    gpt_sd = {
        k[len("transformer.") :]: v
        for k, v in sd.items()
        # `attn.mask` is the constant causal mask; attention here is causal by construction
        if k.startswith("transformer.") and not k.endswith(".attn.mask")
    }
    with torch.device("meta"):
        gpt = GPT(gpt_cfg)
    gpt = gpt.to_empty(device="cpu")
    load_strict(gpt, gpt_sd, f"{ckpt_path} (transformer)")
    gpt.eval().requires_grad_(False)
    vqgan = _build_vqgan(data, vqgan_state_dict(sd), str(ckpt_path))
    if device is not None:
        gpt, vqgan = gpt.to(device), vqgan.to(device)
    return gpt, vqgan, conditioning
