from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentence_transformers import util
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from torch import Tensor

from ._common import CODIEMB_CITATION, PairScoreLoss, function_name
from .functional import pearson_loss


class PearsonLoss(PairScoreLoss):
    def __init__(
        self,
        model: SentenceTransformer | None,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = util.pairwise_cos_sim,
        eps: float = 1e-12,
    ) -> None:
        """
        Pearson-correlation loss for Semantic Textual Similarity (STS), one of the order-aware STS objectives of
        CoDiEmb. For a batch of pairs with predicted similarity ``c_i`` (cosine of the two embeddings) and gold
        score ``y_i`` it computes::

            loss = 1 - pearson(c, y)

        The loss only depends on the linear agreement of predictions and gold scores across the batch, so gold
        scores may be on any scale (0-5, 0-1, binary labels...). A batch in which the gold or the predicted scores
        have no variance (e.g. a batch of one pair, or all gold scores equal) has loss 0 with zero, finite
        gradients, never NaN.

        This is the reference's ``PearsonCorrelationLoss`` (CoDiEmb code, ``training/CoDiEmb/train/loss.py``;
        population moments, 0 when all gold scores are equal). One deliberate difference: when the PREDICTED scores
        have no variance the reference divides by zero (NaN/inf); ours returns 0 with zero gradients.

        Args:
            model: SentenceTransformer model (may be ``None`` when only :meth:`compute_from_scores` is used).
            similarity_fct: Function computing the PAIRWISE similarity of two embedding batches.
                Default ``util.pairwise_cos_sim``.
            eps: Variance below which a side of the batch counts as constant (loss 0).

        References:
            - CoDiEmb: https://arxiv.org/abs/2508.11442 (reference code: TencentCloudADP/youtu-embedding,
              ``PearsonCorrelationLoss``; ours also handles constant predictions, where the reference divides by 0)

        Requirements:
            - Sentence pairs with a float gold similarity score; batches of more than one pair.

        Relations:
            - :class:`CoDiEmbSTSLoss` uses it as its ``pearson`` component (weight 2 in the reference).
            - sentence-transformers' ``CosineSimilarityLoss`` regresses each cosine onto its gold score; this loss
              only asks for linear agreement across the batch, so the gold scale does not matter.

        Inputs:
            +--------------------------------+------------------------+
            | Inputs                         | Labels                 |
            +================================+========================+
            | (sentence_A, sentence_B) pairs | float similarity score |
            +--------------------------------+------------------------+

        Example:
            ::

                import torch
                from hf_codiemb.losses import PearsonLoss

                loss = PearsonLoss(model=None)
                predicted = torch.tensor([0.9, 0.2, 0.5], requires_grad=True)
                value = loss.compute_from_scores(predicted, torch.tensor([5.0, 1.0, 3.0]))
                value.backward()
        """
        super().__init__()
        self.model = model
        self.similarity_fct = similarity_fct
        self.eps = eps

    def _loss(self, predicted: Tensor, gold: Tensor) -> Tensor:
        return pearson_loss(predicted, gold, self.eps)

    def get_config_dict(self) -> dict[str, Any]:
        return {"similarity_fct": function_name(self.similarity_fct), "eps": self.eps}

    @property
    def citation(self) -> str:
        return CODIEMB_CITATION
