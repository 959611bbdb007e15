"""Delta-guided fusion (CoDiEmb, METHOD.md section 6) and baselines, streaming over safetensors.

Public API:
    - :func:`delta_fuse`: CoDiEmb delta-guided fusion of fine-tuned checkpoints around their base.
    - :func:`fuse`: any registered method by name (``delta``, ``uniform``, ``task_arithmetic``, ``ties``,
      ``dare_ties``, ``dare_linear``; the last three need mergekit).
    - :func:`get_method`, :func:`register`, :func:`registered_methods`: the method registry.
    - :func:`register_mergekit_method`: make ``codiemb_delta`` available to mergekit / ``SentenceTransformer.merge``.
"""

from hf_codiemb.fusion.core import FusionResult, delta_fuse, fuse
from hf_codiemb.fusion.errors import FusionError, FusionWriteError
from hf_codiemb.fusion.mergekit_plugin import register_mergekit_method
from hf_codiemb.fusion.methods.delta import DeltaGuidedFusion, delta_guided_weights
from hf_codiemb.fusion.registry import FusionMethod, MergeOutput, get_method, register, registered_methods

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
