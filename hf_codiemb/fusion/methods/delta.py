"""CoDiEmb delta-guided fusion (METHOD.md section 6).

With ``theta_0`` the base weights and ``delta_k = theta_k - theta_0`` the move of checkpoint ``k``:

    w_k = |delta_k|^p / (sum_j |delta_j|^p + eps)        merged = theta_0 + sum_k w_k * delta_k

computed per element (``granularity="element"``) or with ``|delta_k|`` replaced by the L2 norm of the whole
tensor (``granularity="tensor"``). ``p = 0`` is the uniform Model Soup, large ``p`` approaches "take the largest
move". Where every delta is zero the weights are uniform (``1/K``) and the result equals the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from hf_codiemb.fusion.registry import FusionMethod, MergeOutput, register

Granularity = Literal["element", "tensor"]


def delta_guided_weights(magnitudes: torch.Tensor, p: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """Fusion weights from non-negative move magnitudes.

    Args:
        magnitudes: ``(K, ...)`` tensor of ``|delta_k|`` (element granularity) or ``||delta_k||`` (tensor).
        p: the exponent; ``0`` gives uniform weights.
        eps: guards the denominator.

    Returns:
        ``(K, ...)`` weights that sum to 1 over ``K`` (up to ``eps``). Magnitudes are divided by their maximum over
        ``K`` before the power (the ratio is unchanged), so large ``p`` neither overflows nor underflows; positions
        where all magnitudes are zero get uniform weights ``1/K``.
    """
    if p < 0:
        raise ValueError(f"p must be >= 0, got {p}")
    k = magnitudes.shape[0]
    if p == 0:
        return torch.full_like(magnitudes, 1.0 / k)
    peak = magnitudes.amax(dim=0, keepdim=True)
    all_zero = peak == 0
    scaled = magnitudes / torch.where(all_zero, torch.ones_like(peak), peak)
    powered = scaled.pow_(p) if scaled.is_floating_point() else scaled.pow(p)
    weights = powered / (powered.sum(dim=0, keepdim=True) + eps)
    return torch.where(all_zero, torch.full_like(weights, 1.0 / k), weights)


@register
class DeltaGuidedFusion(FusionMethod):
    """CoDiEmb delta-guided fusion: weight each checkpoint's move by its magnitude to the power ``p``.

    Args:
        p: exponent of the magnitudes (``0`` = uniform Model Soup, default ``1``).
        granularity: ``"element"`` (a weight per parameter element) or ``"tensor"`` (per tensor, from the
            L2 norm of the whole delta tensor).
        eps: guards the denominator.

    References:
        CoDiEmb, arXiv 2508.11442 (the paper states per-parameter weights from each checkpoint's deviation
        from its initialisation); the exact formula is the project's, see ``docs``/METHOD.md section 6.
    """

    name = "delta"
    description = "CoDiEmb delta-guided fusion (per-parameter weights from |theta_k - theta_0|^p)"
    reference = "https://arxiv.org/abs/2508.11442"
    requires_base = True
    elementwise = True

    def __init__(self, p: float = 1.0, granularity: Granularity = "element", eps: float = 1e-12) -> None:
        if granularity not in ("element", "tensor"):
            raise ValueError(f"granularity must be 'element' or 'tensor', got {granularity!r}")
        if p < 0:
            raise ValueError(f"p must be >= 0, got {p}")
        self.p = float(p)
        self.granularity: Granularity = granularity
        self.eps = float(eps)

    @property
    def needs_delta_norms(self) -> bool:
        return self.granularity == "tensor"

    def merge(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        *,
        delta_norms: torch.Tensor | None = None,
        name: str = "",
    ) -> MergeOutput:
        if base is None:
            raise ValueError("Delta-guided fusion needs the base model")
        k = len(checkpoints)
        merged = base.clone()
        if self.granularity == "tensor":
            if delta_norms is None:
                raise ValueError("Tensor granularity needs whole-tensor delta norms")
            weights = delta_guided_weights(delta_norms.to(base.dtype), self.p, self.eps)
            for weight, checkpoint in zip(weights.tolist(), checkpoints):
                merged.add_(checkpoint - base, alpha=weight)
            return MergeOutput(merged, weights * base.numel())
        deltas = torch.stack([checkpoint - base for checkpoint in checkpoints])  # (K, ...)
        weights = delta_guided_weights(deltas.abs(), self.p, self.eps)
        merged.add_((weights * deltas).sum(dim=0))
        return MergeOutput(merged, weights.reshape(k, -1).sum(dim=1))

    def parameters(self) -> dict[str, Any]:
        return {"p": self.p, "granularity": self.granularity, "eps": self.eps}
