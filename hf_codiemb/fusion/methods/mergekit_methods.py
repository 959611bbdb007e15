"""TIES and DARE baselines, delegated tensor by tensor to mergekit (optional dependency).

The methods are registered always; instantiating one without mergekit (>= 0.1.5) raises a
:class:`~hf_codiemb.errors.MissingDependencyError` (an ``ImportError``) that says how to install it. Each tensor is
merged with ``mergekit.merge_methods.merge_tensors`` with the base as input 0; DARE's random drop is seeded per tensor
(from ``seed`` and the tensor name) so runs are reproducible.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch

from hf_codiemb.errors import MissingDependencyError
from hf_codiemb.fusion.registry import FusionMethod, MergeOutput, MethodParameter, register


def mergekit_available() -> bool:
    """Whether a mergekit with the in-memory ``merge_tensors`` API (>= 0.1.5) is importable."""
    try:
        from mergekit.merge_methods import merge_tensors  # noqa: F401
    except ImportError:
        return False
    return True


class _MergekitMethod(FusionMethod):
    """Shared implementation: whole tensors go through a mergekit method with the base as input 0."""

    mergekit_name: str = ""
    parameter_specs = (
        MethodParameter("density", float, 0.5, "fraction of each task vector kept"),
        MethodParameter("weight", float, 1.0, "weight of each task vector"),
        MethodParameter("seed", int, 0, "seed of the random drop (dare)"),
    )
    requires_base = True
    elementwise = False  # sparsification ranks the whole tensor

    def __init__(self, density: float = 0.5, weight: float = 1.0, seed: int = 0, **extra: Any) -> None:
        if not mergekit_available():
            raise MissingDependencyError(
                f"Fusion method {self.name!r} needs mergekit>=0.1.5: pip install 'mergekit>=0.1.5' "
                "(or use --method delta / uniform / task_arithmetic)"
            )
        self.density = float(density)
        self.weight = float(weight)
        self.seed = int(seed)
        self.extra = extra

    def merge(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        *,
        delta_norms: torch.Tensor | None = None,
        name: str = "",
    ) -> MergeOutput:
        from mergekit.merge_methods import merge_tensors

        if base is None:
            raise ValueError(f"{self.name} needs the base model")
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed + zlib.crc32(name.encode()))
        try:
            merged = merge_tensors(
                [base, *checkpoints],
                self.mergekit_name,
                base_index=0,
                parameters={"density": self.density, "weight": self.weight, **self.extra},
                name=name or None,
            )
        finally:
            torch.random.set_rng_state(generator_state)
        return MergeOutput(merged.to(base.dtype), None)

    def parameters(self) -> dict[str, Any]:
        return {"density": self.density, "weight": self.weight, "seed": self.seed, **self.extra}


@register
class Ties(_MergekitMethod):
    """TIES merging (trim, elect sign, disjoint mean) through mergekit."""

    name = "ties"
    mergekit_name = "ties"
    description = "TIES merging via mergekit"
    reference = "https://arxiv.org/abs/2306.01708"


@register
class DareTies(_MergekitMethod):
    """DARE (random drop and rescale) with TIES sign election, through mergekit."""

    name = "dare_ties"
    mergekit_name = "dare_ties"
    description = "DARE-TIES merging via mergekit"
    reference = "https://arxiv.org/abs/2311.03099"


@register
class DareLinear(_MergekitMethod):
    """DARE (random drop and rescale) with a linear combination, through mergekit."""

    name = "dare_linear"
    mergekit_name = "dare_linear"
    description = "DARE linear merging via mergekit"
    reference = "https://arxiv.org/abs/2311.03099"
