"""Delta-guided fusion (CoDiEmb: each checkpoint's change from the base, weighted per element by its magnitude
``|delta_k|^p / sum_j |delta_j|^p``) and baselines, streaming over safetensors.

Public API:
    - :func:`delta_fuse`: CoDiEmb delta-guided fusion of fine-tuned checkpoints around their base.
    - :func:`fuse`: any registered method by name (``delta``, ``uniform``, ``task_arithmetic``, ``ties``,
      ``dare_ties``, ``dare_linear``; the last three need mergekit).
    - :func:`get_method`, :func:`register`, :func:`registered_methods`: the method registry.
    - :func:`register_mergekit_method`: make ``codiemb_delta`` available to mergekit / ``SentenceTransformer.merge``.
"""

import importlib
from typing import Any

# Attributes are imported on first use (PEP 562): `codiemb --help` and the config/push code must not pay for torch,
# safetensors and mergekit.
_LAZY = {
    "FusionResult": "core", "delta_fuse": "core", "fuse": "core",
    "FusionError": "errors", "FusionWriteError": "errors",
    "register_mergekit_method": "mergekit_plugin",
    "DeltaGuidedFusion": "methods.delta", "delta_guided_weights": "methods.delta",
    "FusionMethod": "method", "MergeOutput": "method", "get_method": "registry", "register": "method",
    "registered_methods": "registry",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"hf_codiemb.fusion.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'hf_codiemb.fusion' has no attribute {name!r}")


__all__ = [
    "DeltaGuidedFusion",
    "FusionError",
    "FusionMethod",
    "FusionResult",
    "FusionWriteError",
    "MergeOutput",
    "delta_fuse",
    "delta_guided_weights",
    "fuse",
    "get_method",
    "register",
    "register_mergekit_method",
    "registered_methods",
]
