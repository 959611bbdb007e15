"""Expose delta-guided fusion to mergekit, and through it to ``SentenceTransformer.merge``.

After :func:`register_mergekit_method`, mergekit knows a method named ``codiemb_delta`` (base required) with
parameters ``p``, ``granularity`` and ``eps``::

    from sentence_transformers import SentenceTransformer
    from hf_codiemb.fusion import register_mergekit_method

    register_mergekit_method()
    merged = SentenceTransformer.merge(
        ["run-a", "run-b"], method="codiemb_delta", base_model="base", parameters={"p": 1.0}
    )

That path holds every model in memory (mergekit's in-memory API); :func:`hf_codiemb.fusion.delta_fuse` is the
streaming equivalent and gives the same weights.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

MERGEKIT_METHOD_NAME = "codiemb_delta"


def register_mergekit_method() -> str:
    """Register ``codiemb_delta`` in mergekit's method registry (idempotent); return the method name.

    Raises:
        ImportError: mergekit >= 0.1.5 is not installed.
    """
    try:
        import torch
        from mergekit.merge_methods import (
            BasePolicy,
            InputContract,
            TensorGroup,
            merge_method,
            register,
            registered_methods,
        )
    except ImportError as exc:
        raise ImportError("The mergekit integration needs mergekit>=0.1.5: pip install 'mergekit>=0.1.5'") from exc

    if any(method.spec.name == MERGEKIT_METHOD_NAME for method in registered_methods()):
        return MERGEKIT_METHOD_NAME

    from hf_codiemb.fusion.methods.delta import DeltaGuidedFusion

    def codiemb_delta(group: TensorGroup, p: float = 1.0, granularity: str = "element", eps: float = 1e-12) -> torch.Tensor:
        base = group.base.tensor
        checkpoints = [entry.tensor for entry in group.non_base]
        method = DeltaGuidedFusion(p=p, granularity=granularity, eps=eps)
        norms = None
        if method.needs_delta_norms:
            norms = torch.stack([torch.linalg.vector_norm((c - base).double()) for c in checkpoints])
        dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
        merged = method.merge(base.to(dtype), [c.to(dtype) for c in checkpoints], delta_norms=norms).merged
        return merged.to(base.dtype)

    # The annotations must be real objects (mergekit reads them with get_type_hints).
    codiemb_delta.__annotations__ = {
        "group": TensorGroup, "p": float, "granularity": str, "eps": float, "return": torch.Tensor,
    }
    method = merge_method(
        codiemb_delta,
        name=MERGEKIT_METHOD_NAME,
        pretty_name="CoDiEmb delta-guided fusion",
        reference_url="https://arxiv.org/abs/2508.11442",
        contract=InputContract(base=BasePolicy.REQUIRED, min_inputs=2),
    )
    register(method)
    logger.debug("Registered mergekit method %r", MERGEKIT_METHOD_NAME)
    return MERGEKIT_METHOD_NAME
