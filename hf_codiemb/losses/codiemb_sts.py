from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sentence_transformers import util
from sentence_transformers.sentence_transformer.model import SentenceTransformer

from ._common import CODIEMB_CITATION, check_scores, embed_pair_scores, function_name
from .pearson import PearsonLoss
from .pro import PROLoss
from .rank_kl import RankKLLoss
from .soft_spearman import SoftSpearmanLoss

logger = logging.getLogger(__name__)


class CoDiEmbSTSLoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer | None,
        pearson_weight: float = 2.0,
        pro_weight: float = 0.5,
        rank_kl_weight: float = 5.0,
        soft_spearman_weight: float = 0.0,
        temperature: float = 0.05,
        rank_kl_reduction: Literal["batchmean", "sum"] = "batchmean",
        soft_spearman_regularization: float = 0.05,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = util.pairwise_cos_sim,
    ) -> None:
        """
        The CoDiEmb STS objective: a weighted sum of order-aware losses on the predicted similarities ``c`` (cosine
        of each pair's embeddings) and gold scores ``y`` of a batch of sentence pairs::

            loss = pearson_weight * (1 - pearson(c, y))           # PearsonLoss
                 + pro_weight * PRO(c, y)                         # PROLoss
                 + rank_kl_weight * RankKL(c, y)                  # RankKLLoss
                 + soft_spearman_weight * (1 - pearson(softrank(c), rank(y)))   # SoftSpearmanLoss

        The defaults are the reference combination (2 * Pearson + 0.5 * PRO + 5 * RankKL, temperature 0.05).
        :meth:`forward` returns a dict ``{"pearson": ..., "pro": ..., "rank_kl": ..., "soft_spearman": ...}`` of
        the *weighted* components, holding only the components with a non-zero weight; the sentence-transformers
        trainer sums the values of such a dict into the training loss and logs each component separately.
        The embeddings are computed once and shared by all components.

        The reference's auxiliary "multi_layer_loss" (an InfoNCE on a middle layer for pairs above a gold
        threshold) is not part of this loss.

        Args:
            model: SentenceTransformer model (may be ``None`` when only the ``compute_*`` methods are used).
            pearson_weight: Weight of :class:`PearsonLoss`.
            pro_weight: Weight of :class:`PROLoss`.
            rank_kl_weight: Weight of :class:`RankKLLoss`.
            soft_spearman_weight: Weight of :class:`SoftSpearmanLoss` (off by default, not in the reference).
            temperature: Temperature of PRO and Rank-KL.
            rank_kl_reduction: ``reduction`` of :class:`RankKLLoss`.
            soft_spearman_regularization: ``regularization_strength`` of :class:`SoftSpearmanLoss`.
            similarity_fct: Function computing the PAIRWISE similarity of two embedding batches.

        References:
            - CoDiEmb: https://arxiv.org/abs/2508.11442 (reference code: TencentCloudADP/youtu-embedding)

        Requirements:
            - Sentence pairs with a float gold similarity score (any scale).
            - At least one non-zero, all non-negative weights.

        Inputs:
            +--------------------------------+------------------------+
            | Inputs                         | Labels                 |
            +================================+========================+
            | (sentence_A, sentence_B) pairs | float similarity score |
            +--------------------------------+------------------------+

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from hf_codiemb.losses import CoDiEmbSTSLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "sentence1": ["A man plays guitar.", "A dog runs.", "It rains."],
                    "sentence2": ["Someone plays an instrument.", "A cat sleeps.", "The weather is wet."],
                    "score": [4.2, 0.5, 3.8],
                })
                loss = CoDiEmbSTSLoss(model)
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        weights = {
            "pearson": pearson_weight,
            "pro": pro_weight,
            "rank_kl": rank_kl_weight,
            "soft_spearman": soft_spearman_weight,
        }
        for name, weight in weights.items():
            if not weight >= 0:
                raise ValueError(f"{name}_weight must be non-negative, got {weight}.")
        if not any(weight > 0 for weight in weights.values()):
            raise ValueError("CoDiEmbSTSLoss needs at least one non-zero weight.")
        self.model = model
        self.pearson_weight = pearson_weight
        self.pro_weight = pro_weight
        self.rank_kl_weight = rank_kl_weight
        self.soft_spearman_weight = soft_spearman_weight
        self.temperature = temperature
        self.rank_kl_reduction = rank_kl_reduction
        self.soft_spearman_regularization = soft_spearman_regularization
        self.similarity_fct = similarity_fct
        # Components are scoring-only (no model): the embeddings are computed once here.
        self._components: dict[str, tuple[float, nn.Module]] = {
            "pearson": (pearson_weight, PearsonLoss(None)),
            "pro": (pro_weight, PROLoss(None, temperature=temperature)),
            "rank_kl": (rank_kl_weight, RankKLLoss(None, temperature=temperature, reduction=rank_kl_reduction)),
            "soft_spearman": (
                soft_spearman_weight,
                SoftSpearmanLoss(None, regularization_strength=soft_spearman_regularization),
            ),
        }

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        scores = embed_pair_scores(self.model, sentence_features, self.similarity_fct, type(self).__name__)
        return self.compute_components_from_scores(scores, labels)

    def compute_components_from_scores(self, predicted: Tensor, gold: Tensor) -> dict[str, Tensor]:
        """The weighted components (only those with a non-zero weight) as a dict of scalar tensors.

        Raises:
            ValueError: on mismatched shapes or a non-finite gold score.
        """
        predicted, gold = check_scores(predicted, gold, type(self).__name__)
        return {
            name: weight * loss._loss(predicted, gold)
            for name, (weight, loss) in self._components.items()
            if weight > 0
        }

    def compute_from_scores(self, predicted: Tensor, gold: Tensor) -> Tensor:
        """The total loss (sum of the weighted components) as one scalar tensor.

        Use :meth:`compute_components_from_scores` for the per-component values.
        """
        components = self.compute_components_from_scores(predicted, gold)
        return torch.stack(list(components.values())).sum()

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "pearson_weight": self.pearson_weight,
            "pro_weight": self.pro_weight,
            "rank_kl_weight": self.rank_kl_weight,
            "soft_spearman_weight": self.soft_spearman_weight,
            "temperature": self.temperature,
            "rank_kl_reduction": self.rank_kl_reduction,
            "soft_spearman_regularization": self.soft_spearman_regularization,
            "similarity_fct": function_name(self.similarity_fct),
        }

    @property
    def citation(self) -> str:
        return CODIEMB_CITATION
