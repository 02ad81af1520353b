"""Model definitions, built from a config with random weights (`vqclip.weights.loading` fills them from
checkpoints), and `Models`: what a run loads once and reuses, unchanged, across prompts."""

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Models:
    """Everything a run loads once and reuses across prompts. Runs never change it: what it holds (the
    VQGAN's encoder, the CLIP text towers, the upscaler) is decided when it is loaded."""

    vqgan: torch.nn.Module  # vqclip.models.vqgan.VQGAN
    vqgan_record: dict  # {"name", "sha256"}: the VQGAN that ran (a transformer's first stage is named as such)
    clips: tuple  # vqclip.models.clip.ClipModel, one per --clip
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    gpt: torch.nn.Module | None = None  # the taming GPT of --transformer
    conditioning: object = None  # how that GPT is conditioned (vqclip.models.gpt.Conditioning)
    upscaler: object = None  # Real-ESRGAN (spandrel), when loaded for --upscale
    upscaler_record: dict | None = None  # its name and sha256
    # per CLIP, the text embeddings encoded at load time for models loaded without their text towers
    text_embeds: tuple = field(default=(), compare=False)

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

    def encode_texts(self, index: int, texts: list[str]) -> list[torch.Tensor]:
        """The embeddings (D,) of `texts` by the `index`-th CLIP: its text tower, or what was encoded at load."""
        clip = self.clips[index]
        if clip.has_text_tower:
            return list(clip.encode_text(texts)) if texts else []
        known = self.text_embeds[index] if index < len(self.text_embeds) else {}
        missing = [t for t in texts if t not in known]
        if missing:
            from vqclip.errors import UsageError

            raise UsageError(
                f"These models were loaded without CLIP text towers, for other prompts than {missing[0]!r}.",
                "Load them with vqclip.load_models(cfg) (text_towers=True, the default) to encode any prompt.",
            )
        return [known[t] for t in texts]
