"""Task arithmetic (Ilharco et al. 2023): ``merged = theta_0 + lambda * sum_k (theta_k - theta_0)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hf_codiemb.fusion.method import FusionMethod, MergeOutput, MethodParameter, register


@register
class TaskArithmetic(FusionMethod):
    """Add the scaled sum of the task vectors to the base.

    Args:
        scaling: ``lambda``; ``1/K`` makes it the uniform soup, ``1`` adds every task vector in full.
    """

    name = "task_arithmetic"
    parameter_specs = (MethodParameter("scaling", float, 1.0, "lambda applied to the summed task vectors"),)
    description = "Task arithmetic: theta_0 + lambda * sum_k (theta_k - theta_0)"
    reference = "https://arxiv.org/abs/2212.04089"
    requires_base = True
    elementwise = True
    propagates_non_finite = True

    def __init__(self, scaling: float = 1.0) -> None:
        self.scaling = float(scaling)

    def merge(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        *,
        delta_norms: torch.Tensor | None = None,
        name: str = "",
    ) -> MergeOutput:
        if base is None:
            raise ValueError("Task arithmetic needs the base model")
        merged = base.clone()
        for checkpoint in checkpoints:
            merged.add_(checkpoint - base, alpha=self.scaling)
        k = len(checkpoints)
        return MergeOutput(merged, torch.full((k,), self.scaling * base.numel(), dtype=torch.float64))

    def parameters(self) -> dict[str, Any]:
        return {"scaling": self.scaling}
