"""Uniform weight averaging (Model Soup, Wortsman et al. 2022): ``merged = mean_k theta_k``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hf_codiemb.fusion.method import ChunkWorkspace, FusionMethod, MergeOutput, register


@register
class UniformSoup(FusionMethod):
    """The uniform Model Soup: the plain average of the checkpoints (the base is not used)."""

    name = "uniform"
    description = "Uniform Model Soup: the plain average of the checkpoints"
    reference = "https://arxiv.org/abs/2203.05482"
    requires_base = False
    elementwise = True
    propagates_non_finite = True

    def merge(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        *,
        delta_norms: torch.Tensor | None = None,
        name: str = "",
    ) -> MergeOutput:
        return _average(checkpoints, checkpoints[0].clone())

    def merge_chunk(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        workspace: ChunkWorkspace,
        *,
        delta_norms: torch.Tensor | None = None,
        name: str = "",
    ) -> MergeOutput:
        """:meth:`merge` accumulated in a reused buffer (same bits)."""
        first = checkpoints[0]
        return _average(checkpoints, workspace.get("uniform.merged", first.shape, first.dtype).copy_(first))


def _average(checkpoints: Sequence[torch.Tensor], merged: torch.Tensor) -> MergeOutput:
    """Sum ``checkpoints[1:]`` into ``merged`` (which holds ``checkpoints[0]``) and divide by K."""
    k = len(checkpoints)
    for checkpoint in checkpoints[1:]:
        merged.add_(checkpoint)
    merged.div_(k)
    return MergeOutput(merged, torch.full((k,), merged.numel() / k, dtype=torch.float64))
