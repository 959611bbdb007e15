"""CoDiEmb losses: multi-positive InfoNCE for IR and order-aware losses for STS (one loss per module)."""

from __future__ import annotations

from .cached_multi_positive_info_nce import CachedMultiPositiveInfoNCELoss
from .codiemb_sts import CoDiEmbSTSLoss
from .functional import soft_rank
from .matryoshka import CoDiEmbMatryoshkaLoss
from .multi_positive_info_nce import (
    MultiPositiveInfoNCELoss,
    masked_multi_positive_info_nce,
    multi_positive_info_nce,
)
from .pearson import PearsonLoss
from .pro import PROLoss
from .rank_kl import RankKLLoss
from .soft_spearman import SoftSpearmanLoss
from .teacher_distillation import teacher_distillation_kl

__all__ = [
    "CachedMultiPositiveInfoNCELoss",
    "CoDiEmbMatryoshkaLoss",
    "CoDiEmbSTSLoss",
    "MultiPositiveInfoNCELoss",
    "PROLoss",
    "PearsonLoss",
    "RankKLLoss",
    "SoftSpearmanLoss",
    "masked_multi_positive_info_nce",
    "multi_positive_info_nce",
    "soft_rank",
    "teacher_distillation_kl",
]
