"""Step 2 of a generation: load the models a validated request names, once, and decide what they hold (the
VQGAN's encoder, the CLIP text towers). The models themselves come from `vqclip.weights`."""

from vqclip.events import ProgressFn, ignore
from vqclip.models import Models
from vqclip.pipeline.validate import Request, validate
from vqclip.weights import loading


def load_models(
    cfg,
    offline: bool | None = None,
    progress: ProgressFn = ignore,
    *,
    encoder: bool = True,
    text_towers: bool = True,
) -> Models:
    """Load (downloading on first use) the models a GenerationConfig or a validated Request names, frozen,
    on its device, readied for speed. What they hold is decided here, once, by the caller:

    Args:
        cfg: a GenerationConfig (validated here) or the vqclip.pipeline.validate.Request of one.
        offline: never download (default: VQCLIP_OFFLINE / HF_HUB_OFFLINE).
        progress: receives the downloads' Progress events.
        encoder: keep the VQGAN's encoder (40% of its weights), which init images, init="noise" and
            animation need; False when no job of these models encodes an image.
        text_towers: keep the CLIP text towers, which encode prompts; False encodes the request's prompts
            now and frees the towers (a single image: about 40% of ViT-B/32's weights), so these models can
            then serve only those prompts.
    """
    from vqclip.device import image_path_params, resolve_device, resolve_precision
    from vqclip.weights.clip import load_clip

    request = cfg if isinstance(cfg, Request) else validate(cfg)
    cfg = request.cfg
    if cfg.deterministic:  # before any CUDA work (cuBLAS reads its workspace setting once)
        from vqclip.determinism import make_deterministic

        make_deterministic()
    device = resolve_device(cfg.device)  # first, so an unavailable device fails before any weights are read
    gpt = conditioning = None
    if cfg.transformer:  # the GPT's codes belong to its own first stage: that is the VQGAN
        gpt, vqgan, conditioning, sha = loading.load_transformer_file(request.vqgan, None, device, offline, progress)
        vqgan_name = f"{cfg.transformer} (first stage)"
    else:
        vqgan, sha = loading.load_vqgan_file(request.vqgan, cfg.vqgan_config, device, offline, progress)
        vqgan_name = cfg.vqgan
    clips = tuple(load_clip(source, device=device, offline=offline, progress=progress) for source in request.clips)
    dtype = resolve_precision(cfg.precision, device, image_path_params(vqgan, clips))  # auto: by the work too
    upscaler = upscaler_record = None
    if request.upscaler is not None:
        upscaler, upscaler_record = loading.fetch_upscaler(request.upscaler, device, offline, progress, cfg.precision)
    text_embeds = ()
    if not text_towers:
        text_embeds = tuple(dict(zip(request.texts, _encode(clip, request.texts), strict=True)) for clip in clips)
        for clip in clips:
            clip.drop_text_tower()  # the memory is given back in ready_for_speed
    if not encoder:
        vqgan.drop_encoder()
    loading.ready_for_speed(vqgan, clips, device, dtype, cfg.compile)
    return Models(
        vqgan,
        {"name": vqgan_name, "sha256": sha},
        clips,
        device,
        dtype,
        gpt,
        conditioning,
        upscaler,
        upscaler_record,
        text_embeds,
    )


def _encode(clip, texts: list[str]) -> list:
    return list(clip.encode_text(texts)) if texts else []
