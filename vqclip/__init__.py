"""vqclip: text-to-image by optimising a VQGAN latent under CLIP guidance.

The public API is imported lazily so that `import vqclip` (and `vqclip --help`) never imports torch.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

__all__ = ["GenerationConfig", "__version__", "generate", "generate_many", "load_models", "load_vqgan"]

_LAZY = {
    "GenerationConfig": "vqclip.config",
    "load_vqgan": "vqclip.weights.loading",
    "generate": "vqclip.pipeline.run",
    "generate_many": "vqclip.pipeline.run",
    "load_models": "vqclip.pipeline.load",
}

# Modules that moved into the weights/ and pipeline/ packages: the old name still imports, with a warning.
MOVED = {
    "vqclip.loading": "vqclip.weights.loading",
    "vqclip.clip_loading": "vqclip.weights.clip",
    "vqclip.pretrained": "vqclip.weights.pretrained",
    "vqclip.registry": "vqclip.weights.registry",
    "vqclip.download": "vqclip.weights.download",
    "vqclip.cache": "vqclip.weights.cache",
    "vqclip.filetypes": "vqclip.weights.filetypes",
    "vqclip.checkpoint": "vqclip.weights.checkpoint",
    "vqclip.validate": "vqclip.pipeline.validate",
    "vqclip.job": "vqclip.pipeline.prepare",
    "vqclip.render": "vqclip.pipeline.write",
    "vqclip.canvas": "vqclip.pipeline.canvas",
    "vqclip.batch": "vqclip.pipeline.batch",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqclip' has no attribute {name!r}")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import vqclip.loading` gives vqclip.weights.loading, with a DeprecationWarning naming the new place."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
