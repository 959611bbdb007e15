from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentence_transformers import util
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from torch import Tensor

from ._common import PairScoreLoss, function_name
from .functional import soft_spearman_loss


class SoftSpearmanLoss(PairScoreLoss):
    def __init__(
        self,
        model: SentenceTransformer | None,
        regularization_strength: float = 0.05,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = util.pairwise_cos_sim,
        eps: float = 1e-12,
    ) -> None:
        """
        Differentiable Spearman loss for Semantic Textual Similarity (STS)::

            loss = 1 - pearson(soft_rank(c), rank(y))

        where ``rank(y)`` are the gold ranks (ties sharing their average rank) and
        ``soft_rank(c)_i = sum_j sigmoid((c_i - c_j) / regularization_strength) - 0.5`` is a pairwise-sigmoid soft
        rank of the predicted similarities. As ``regularization_strength -> 0`` the soft rank becomes the hard rank
        and the loss becomes ``1 - spearman(c, y)``; larger values give smoother, less vanishing gradients.
        ``regularization_strength`` is on the scale of the predicted scores (cosines in [-1, 1]).
        A batch with no variance in either side (one pair, all gold equal) gives loss 0 with zero gradients.

        This loss is ours: the reference code has no differentiable Spearman term, and in
        :class:`CoDiEmbSTSLoss` its weight is 0 unless a recipe sets ``soft_spearman_weight``.

        Args:
            model: SentenceTransformer model (may be ``None`` when only :meth:`compute_from_scores` is used).
            regularization_strength: Sigmoid temperature of the soft rank.
            similarity_fct: Function computing the PAIRWISE similarity of two embedding batches.
            eps: Variance below which a side of the batch counts as constant (loss 0).

        References:
            - CoDiEmb: https://arxiv.org/abs/2508.11442 (order-aware STS objectives; the reference code has no
              soft-Spearman term, it is an optional addition of hf_codiemb)
            - Soft ranks: Blondel et al., "Fast Differentiable Sorting and Ranking", https://arxiv.org/abs/2002.08871
              (regularised isotonic variant; here the simpler pairwise-sigmoid relaxation is used)

        Requirements:
            - Sentence pairs with a float gold similarity score.

        Relations:
            - :class:`CoDiEmbSTSLoss` adds it as its ``soft_spearman`` component when ``soft_spearman_weight > 0``.
            - :class:`PearsonLoss` is the same correlation on the scores themselves instead of their (soft) ranks.

        Inputs:
            +--------------------------------+------------------------+
            | Inputs                         | Labels                 |
            +================================+========================+
            | (sentence_A, sentence_B) pairs | float similarity score |
            +--------------------------------+------------------------+

        Example:
            ::

                import torch
                from hf_codiemb.losses import SoftSpearmanLoss

                loss = SoftSpearmanLoss(model=None, regularization_strength=0.05)
                predicted = torch.tensor([0.9, 0.2, 0.5, 0.4], requires_grad=True)
                value = loss.compute_from_scores(predicted, torch.tensor([5.0, 1.0, 3.0, 3.0]))
                value.backward()
        """
        super().__init__()
        if not regularization_strength > 0:
            raise ValueError(f"regularization_strength must be positive, got {regularization_strength}.")
        self.model = model
        self.regularization_strength = regularization_strength
        self.similarity_fct = similarity_fct
        self.eps = eps

    def _loss(self, predicted: Tensor, gold: Tensor) -> Tensor:
        return soft_spearman_loss(predicted, gold, self.regularization_strength, self.eps)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "regularization_strength": self.regularization_strength,
            "similarity_fct": function_name(self.similarity_fct),
            "eps": self.eps,
        }

    @property
    def citation(self) -> None:
        """None: this loss is ours, not the maths of a paper (the CoDiEmb reference code has no such term)."""
        return None
