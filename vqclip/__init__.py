"""vqclip: text-to-image by optimising a VQGAN latent under CLIP guidance.

The public API is imported lazily so that `import vqclip` (and `vqclip --help`) never imports torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "generate", "load_models", "load_vqgan"]

_LAZY = {"load_vqgan": "vqclip.loading", "generate": "vqclip.pipeline", "load_models": "vqclip.loading"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqclip' has no attribute {name!r}")
