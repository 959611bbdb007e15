"""CoDiEmb delta-guided fusion: per-parameter weights from each checkpoint's deviation from the base.

With ``theta_0`` the base weights and ``delta_k = theta_k - theta_0`` the move of checkpoint ``k``:

    w_k = |delta_k|^p / (sum_j |delta_j|^p + eps)        merged = theta_0 + sum_k w_k * delta_k

computed per element (``granularity="element"``) or with ``|delta_k|`` replaced by the L2 norm of the whole
tensor (``granularity="tensor"``). ``p = 0`` is the uniform Model Soup, large ``p`` approaches "take the largest
move". Where every delta is zero (more precisely: ``sum_j |delta_j|^p <= eps``) the weights are uniform (``1/K``)
and the result equals the base; elsewhere the denominator is the plain sum, so the weights sum to exactly 1 and a
single checkpoint is returned exactly.

Optional ``shares`` ``s_k`` (one per checkpoint, normalised to sum 1) weight the inputs:
``w_k = s_k |delta_k|^p / sum_j s_j |delta_j|^p``; ``p = 0`` is then the weighted soup ``sum_k s_k theta_k``, and a
share of 0 leaves that checkpoint out (shares ``(1, 0)`` give the first checkpoint). Without shares every input has
the same share (the formula above). The fusion search (:mod:`hf_codiemb.fusion.search`) varies them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from hf_codiemb.fusion.method import ChunkWorkspace, FusionMethod, MergeOutput, MethodParameter, register

Granularity = Literal["element", "tensor"]


def delta_guided_weights(magnitudes: torch.Tensor, p: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """Fusion weights ``w_k = m_k^p / sum_j m_j^p`` from non-negative move magnitudes ``m``.

    Args:
        magnitudes: ``(K, ...)`` tensor of ``|delta_k|`` (element granularity) or ``||delta_k||`` (tensor).
            Not modified.
        p: the exponent; ``0`` gives uniform weights.
        eps: guards the denominator: where ``sum_j m_j^p <= eps`` (all moves zero, or negligible) the weights are
            uniform ``1/K``. This is ``m^p / (sum + eps)`` up to ``eps`` itself, but exact in the limit
            cases: weights sum to 1, a single checkpoint gets weight exactly 1.

    Returns:
        ``(K, ...)`` weights that sum to 1 over ``K``. Where all moves are zero the weights are uniform and the
        merged value is the base. For ``p > 2`` the
        magnitudes are first divided by their maximum over ``K`` (the ratios are unchanged) so that large ``p``
        neither underflows nor overflows; ``eps`` then acts on the normalised values.
    """
    if p < 0:
        raise ValueError(f"p must be >= 0, got {p}")
    k = magnitudes.shape[0]
    if p == 0:
        return torch.full_like(magnitudes, 1.0 / k)
    if p > 2:
        peak = magnitudes.amax(dim=0, keepdim=True)
        powered = magnitudes / peak.masked_fill_(peak == 0, 1.0)
        powered.pow_(p)
    elif p == 1:
        powered = magnitudes.clone()
    else:
        powered = magnitudes.pow(p)
    return _normalise_(powered, eps)


def _normalise_(powered: torch.Tensor, eps: float) -> torch.Tensor:
    """Divide ``powered`` in place by its sum over K; where that sum is <= eps, use uniform weights 1/K."""
    total = powered.sum(dim=0, keepdim=True)
    degenerate = total <= eps
    weights = powered.div_(total.masked_fill_(degenerate, 1.0))
    if bool(degenerate.any()):
        weights.masked_fill_(degenerate.expand_as(weights), 1.0 / powered.shape[0])
    return weights


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
        from its initialisation); the exact formula, ``w_k = |delta_k|^p / sum_j |delta_j|^p``, is the project's (docs/design.md).
    """

    name = "delta"
    parameter_specs = (
        MethodParameter("p", float, 1.0, "exponent of |theta_k - theta_0| (0 = the uniform soup)"),
        MethodParameter("granularity", str, "element", "a weight per element or per tensor", ("element", "tensor")),
        MethodParameter("eps", float, 1e-12, "guard of the weights' denominator"),
        MethodParameter("shares", tuple, None, "share of each checkpoint, e.g. [0.7, 0.3] (normalised to sum 1; "
                        "default: equal shares)"),
    )
    description = "CoDiEmb delta-guided fusion (per-parameter weights from |theta_k - theta_0|^p)"
    reference = "https://arxiv.org/abs/2508.11442"
    requires_base = True
    elementwise = True
    propagates_non_finite = True

    def __init__(
        self,
        p: float = 1.0,
        granularity: Granularity = "element",
        eps: float = 1e-12,
        shares: Sequence[float] | None = None,
    ) -> None:
        if granularity not in ("element", "tensor"):
            raise ValueError(f"granularity must be 'element' or 'tensor', got {granularity!r}")
        if p < 0:
            raise ValueError(f"p must be >= 0, got {p}")
        self.p = float(p)
        self.granularity: Granularity = granularity
        self.eps = float(eps)
        self.shares = _normalised_shares(shares)

    def check_inputs(self, num_checkpoints: int) -> None:
        """Refuse ``shares`` whose length is not the number of checkpoints."""
        if self.shares is not None and len(self.shares) != num_checkpoints:
            raise ValueError(
                f"fusion method 'delta': {len(self.shares)} shares given for {num_checkpoints} checkpoints"
            )

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
        return self._merge(base, checkpoints, delta_norms, None)

    def merge_chunk(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        workspace: ChunkWorkspace,
        *,
        delta_norms: torch.Tensor | None = None,
        name: str = "",
    ) -> MergeOutput:
        """:meth:`merge` computed in the pipeline's buffers (same arithmetic, same operation order, same bits)."""
        return self._merge(base, checkpoints, delta_norms, workspace)

    def _merge(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        delta_norms: torch.Tensor | None,
        workspace: ChunkWorkspace | None,
    ) -> MergeOutput:
        """The merge; with a ``workspace`` the temporaries (and the result) live in its reused buffers."""
        if base is None:
            raise ValueError("Delta-guided fusion needs the base model")
        k = len(checkpoints)
        if self.granularity == "tensor":
            if delta_norms is None:
                raise ValueError("Tensor granularity needs whole-tensor delta norms")
            weights = delta_guided_weights(delta_norms.to(base.dtype), self.p, self.eps)
            if self.shares is not None:
                weights = _apply_shares(weights, self.shares)
            if workspace is None:
                merged = base.clone()
            else:
                merged = workspace.get("delta.merged", base.shape, base.dtype).copy_(base)
            for index, (weight, checkpoint) in enumerate(zip(weights.tolist(), checkpoints)):
                delta = checkpoint - base if workspace is None else torch.sub(
                    checkpoint, base, out=workspace.get("delta.delta", base.shape, base.dtype))
                merged.add_(delta, alpha=weight)
            return MergeOutput(merged, weights * base.numel())
        if k == 1:  # w = 1 wherever the checkpoint moved: the checkpoint itself, exactly (the pipeline writes it)
            merged = checkpoints[0] if workspace is not None else checkpoints[0].clone()
            return MergeOutput(merged, torch.full((1,), float(base.numel()), dtype=torch.float64))
        merged, weight_sums = _element_merge(base, checkpoints, self.p, self.eps, workspace, self.shares)
        return MergeOutput(merged, weight_sums)

    def parameters(self) -> dict[str, Any]:
        parameters: dict[str, Any] = {"p": self.p, "granularity": self.granularity, "eps": self.eps}
        if self.shares is not None:
            parameters["shares"] = list(self.shares)
        return parameters


def _normalised_shares(shares: Sequence[float] | None) -> tuple[float, ...] | None:
    """``shares`` divided by their sum (``None`` stays ``None``); negative, non-finite or all-zero shares are refused."""
    if shares is None:
        return None
    values = [float(share) for share in shares]
    if not values or any(not math.isfinite(share) or share < 0 for share in values) or sum(values) <= 0:
        raise ValueError(f"fusion method 'delta': shares must be non-negative numbers, not all 0, got {list(shares)}")
    total = sum(values)
    return tuple(share / total for share in values)


def _apply_shares(weights: torch.Tensor, shares: Sequence[float]) -> torch.Tensor:
    """Per-tensor weights ``w_k`` (``(K,)``) turned into ``s_k w_k / sum_j s_j w_j`` (the shares where that is 0)."""
    share_tensor = torch.tensor(shares, dtype=weights.dtype)
    shared = weights * share_tensor
    total = shared.sum()
    return share_tensor if float(total) <= 0 else shared / total


def _element_merge(
    base: torch.Tensor,
    checkpoints: Sequence[torch.Tensor],
    p: float,
    eps: float,
    workspace: ChunkWorkspace | None = None,
    shares: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise delta-guided merge in few memory passes (the hot loop of the streaming fusion).

    Computes ``m_k = |delta_k|^p``, ``S = max(sum_k m_k, eps)`` and ``merged = theta_0 + (sum_k m_k delta_k) / S``
    without materialising the ``(K, ...)`` weight tensor; the per-checkpoint weight sums ``sum_i m_k,i / S_i`` are
    dot products. Where ``sum_k m_k <= eps`` the moves are negligible (all zero in practice) and the merged value is
    the base; those positions count as uniform ``1/K`` in the weight sums, as in :func:`delta_guided_weights`.

    With a ``workspace`` (the streaming pipeline) the deltas, magnitudes and sums live in its reused buffers (no
    fresh memory per chunk) and the numerator accumulates in the first delta. The inputs are never written (in the
    pipeline they are views of the mapped input files). Both paths run the same operations in the same order (same
    bits). ``shares`` multiply the magnitudes (``m_k = s_k |delta_k|^p``); at ``p = 0`` the merge is
    ``theta_0 + sum_k s_k delta_k``.
    """
    k = len(checkpoints)

    def scratch(key: str) -> torch.Tensor:
        return workspace.get(key, base.shape, base.dtype) if workspace is not None else torch.empty_like(base)

    deltas = [torch.sub(checkpoint, base, out=scratch(f"delta.delta.{index}")) for index, checkpoint in
              enumerate(checkpoints)]
    if p == 0 and shares is not None:
        merged = deltas[0].mul_(shares[0])
        for share, delta in zip(shares[1:], deltas[1:]):
            merged.add_(delta, alpha=share)
        merged.add_(base)
        return merged, torch.tensor([share * base.numel() for share in shares], dtype=torch.float64)
    if p == 0:
        merged = deltas[0]
        for delta in deltas[1:]:
            merged.add_(delta)
        merged.div_(k).add_(base)
        return merged, torch.full((k,), base.numel() / k, dtype=torch.float64)
    magnitudes = [torch.abs(delta, out=scratch(f"delta.magnitude.{index}")) for index, delta in enumerate(deltas)]
    if p > 2:  # normalise by the largest move so that large p neither underflows nor overflows
        peak = scratch("delta.peak").copy_(magnitudes[0])
        for magnitude in magnitudes[1:]:
            torch.maximum(peak, magnitude, out=peak)
        peak.masked_fill_(peak == 0, 1.0)
        for magnitude in magnitudes:
            magnitude.div_(peak).pow_(p)
        del peak
    elif p != 1:  # p == 1: the magnitudes are the weights' numerators as they are (no pow)
        for magnitude in magnitudes:
            magnitude.pow_(p)
    if shares is not None:
        for share, magnitude in zip(shares, magnitudes):
            magnitude.mul_(share)
    total = torch.add(magnitudes[0], magnitudes[1], out=scratch("delta.total"))
    # The numerator overwrites the first delta (IEEE products commute: m_0 * d_0 and d_0 * m_0 have the same bits).
    numerator = deltas[0].mul_(magnitudes[0])
    numerator.addcmul_(magnitudes[1], deltas[1])
    for magnitude, delta in zip(magnitudes[2:], deltas[2:]):
        total.add_(magnitude)
        numerator.addcmul_(magnitude, delta)
    del deltas
    inverse = total.clamp_min_(eps).reciprocal_().reshape(-1)
    weight_sums = torch.stack([torch.dot(m.reshape(-1), inverse) for m in magnitudes]).to(torch.float64)
    weight_sums += (base.numel() - weight_sums.sum()).clamp_min(0) / k
    merged = numerator.mul_(inverse.reshape(base.shape)).add_(base)
    return merged, weight_sums
