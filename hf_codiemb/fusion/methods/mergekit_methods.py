"""mergekit's merge methods as fusion baselines (optional dependency), tensor by tensor: TIES, DARE, Model Stock and
the per-input weighted average (``linear``).

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
from hf_codiemb.fusion.errors import FusionError
from hf_codiemb.fusion.method import FusionMethod, MergeOutput, MethodParameter, register


def mergekit_available() -> bool:
    """Whether a mergekit with the in-memory ``merge_tensors`` API (>= 0.1.5) is importable."""
    try:
        from mergekit.merge_methods import merge_tensors  # noqa: F401
    except ImportError:
        return False
    return True


class _MergekitMethod(FusionMethod):
    """Shared implementation: whole tensors go through a mergekit method with the base as input 0 (TIES / DARE's
    parameters; other methods override :attr:`parameter_specs`, ``__init__`` and :meth:`mergekit_parameters`)."""

    mergekit_name: str = ""
    parameter_specs = (
        MethodParameter("density", float, 0.5, "fraction of each task vector kept"),
        MethodParameter("weight", float, 1.0, "weight of each task vector"),
        MethodParameter("seed", int, 0, "seed of the random drop (dare)"),
    )
    requires_base = True
    elementwise = False  # sparsification ranks the whole tensor
    seed = 0  # of a random drop (DARE); the other methods draw nothing

    def __init__(self, density: float = 0.5, weight: float = 1.0, seed: int = 0, **extra: Any) -> None:
        self.require_mergekit()
        self.density = float(density)
        self.weight = float(weight)
        self.seed = int(seed)
        self.extra = extra

    def require_mergekit(self) -> None:
        if not mergekit_available():
            raise MissingDependencyError(
                f"Fusion method {self.name!r} needs mergekit>=0.1.5: pip install 'mergekit>=0.1.5' "
                "(or use --method delta / uniform / task_arithmetic)"
            )

    def mergekit_parameters(self, num_inputs: int) -> dict[str, Any]:
        """The ``parameters`` of ``mergekit.merge_methods.merge_tensors`` for ``num_inputs`` tensors (base first)."""
        return {"density": self.density, "weight": self.weight, **self.extra}

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
                parameters=self.mergekit_parameters(1 + len(checkpoints)),
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


@register
class ModelStock(_MergekitMethod):
    """Model Stock (Jang et al. 2024) through mergekit: the average of the checkpoints pulled towards the base by a
    ratio ``t = K cos / (1 + (K - 1) cos)`` from the mean cosine between their task vectors, per tensor
    (``granularity: tensor``) or per output row (``filter``). Needs the base and at least 2 checkpoints."""

    name = "model_stock"
    mergekit_name = "model_stock"
    description = "Model Stock via mergekit: the checkpoints' average interpolated towards the base by their geometry"
    reference = "https://arxiv.org/abs/2403.19522"
    parameter_specs = (
        MethodParameter("granularity", str, "tensor", "one ratio per tensor or per output row (mergekit's "
                        "filter_wise)", ("tensor", "filter")),
    )  # fmt: skip

    def __init__(self, granularity: str = "tensor") -> None:
        self.require_mergekit()
        self.granularity = granularity

    def mergekit_parameters(self, num_inputs: int) -> dict[str, Any]:
        if num_inputs < 3:
            raise FusionError("fusion method 'model_stock' needs the base and at least 2 checkpoints")
        return {"filter_wise": self.granularity == "filter"}

    def parameters(self) -> dict[str, Any]:
        return {"granularity": self.granularity}


@register
class WeightedAverage(_MergekitMethod):
    """The weighted average of the checkpoints, one weight per input, through mergekit's ``linear`` (the base is not
    used): ``sum_k w_k theta_k / sum_k w_k`` (``normalize``, as mergekit) or ``sum_k w_k theta_k``."""

    name = "linear"
    mergekit_name = "linear"
    description = "Weighted average of the checkpoints via mergekit (per-input weights)"
    reference = "https://arxiv.org/abs/2203.05482"
    requires_base = False
    parameter_specs = (
        MethodParameter("weights", tuple, None, "weight of each checkpoint, e.g. [0.7, 0.3] (default: equal)"),
        MethodParameter("normalize", str, "true", "divide by the sum of the weights", ("true", "false")),
    )

    def __init__(self, weights: Sequence[float] | None = None, normalize: str = "true") -> None:
        self.require_mergekit()
        if weights is not None and any(weight < 0 for weight in weights):
            raise FusionError(f"fusion method 'linear': weights must be >= 0, got {list(weights)}")
        if weights is not None and normalize == "true" and sum(weights) <= 0:
            raise FusionError(f"fusion method 'linear': weights must not all be 0, got {list(weights)}")
        self.weights = None if weights is None else tuple(float(weight) for weight in weights)
        self.normalize = normalize

    def merge(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        *,
        delta_norms: torch.Tensor | None = None,
        name: str = "",
    ) -> MergeOutput:
        from mergekit.merge_methods import merge_tensors

        weights = self.weights if self.weights is not None else (1.0,) * len(checkpoints)
        if len(weights) != len(checkpoints):
            raise FusionError(
                f"fusion method 'linear': {len(weights)} weights given for {len(checkpoints)} checkpoints"
            )
        merged = merge_tensors(
            list(checkpoints),
            "linear",
            parameters={"weight": list(weights), "normalize": self.normalize == "true"},
            name=name or None,
        )
        return MergeOutput(merged.to(checkpoints[0].dtype), None)

    def parameters(self) -> dict[str, Any]:
        return {"weights": None if self.weights is None else list(self.weights), "normalize": self.normalize}
