from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.distributed as dist
from sentence_transformers import util
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from sentence_transformers.util import all_gather, all_gather_with_grad
from torch import Tensor, nn

from . import functional as F
from ._common import CODIEMB_CITATION, check_same_sizes_across_ranks, function_name
from .functional import check_scores
from .middle_layer import embed_with_layer, middle_layer_info_nce
from .rank_kl import check_rank_kl_options


class CoDiEmbSTSLoss(nn.Module):
    task = "sts"  # the task whose columns it takes (hf_codiemb.training_checks.loss_task)

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
        multi_layer_weight: float = 1.0,
        multi_layer_index: int | None = None,
        multi_layer_threshold: float = 1.0,
        multi_layer_temperature: float = 0.02,
        gather_across_devices: bool = False,
        rank_kl_all_equal_gold: Literal["uniform_target", "zero"] = "uniform_target",
    ) -> None:
        """
        The CoDiEmb STS objective: a weighted sum of order-aware losses on the predicted similarities ``c`` (cosine
        of each pair's embeddings) and gold scores ``y`` of a batch of sentence pairs, plus the reference's auxiliary
        InfoNCE on a middle layer::

            loss = pearson_weight * (1 - pearson(c, y))           # PearsonLoss                      [reference]
                 + pro_weight * PRO(c, y)                         # PROLoss                          [reference]
                 + rank_kl_weight * RankKL(c, y)                  # RankKLLoss                       [reference]
                 + multi_layer_weight * InfoNCE_mid(y >= thr)     # middle-layer InfoNCE             [reference]
                 + soft_spearman_weight * (1 - pearson(softrank(c), rank(y)))   # SoftSpearmanLoss   [ours, off]

        The defaults are the reference's STS objective as its training scripts run it: 2 * Pearson + 0.5 * PRO +
        5 * RankKL (temperature 0.05) + 1.0 * the middle-layer InfoNCE ("multi_layer_loss", switched on in all four
        reference scripts). The middle-layer term embeds both sentences once more from the SAME forward pass (the
        hidden states of layer ``n // 2`` of the ``n`` hidden states, index 0 = the embedding layer, pooled by the
        model's own pooling module and compared by cosine), keeps the pairs with gold ``>= multi_layer_threshold``
        (1.0) and applies an in-batch ``B x B`` InfoNCE from each first sentence to its second sentence at
        temperature ``multi_layer_temperature`` (0.02, the reference's IR temperature); see
        :func:`~hf_codiemb.losses.middle_layer.middle_layer_info_nce`. ``multi_layer_weight=0`` switches it off.

        :meth:`forward` returns a dict ``{"pearson": ..., "pro": ..., "rank_kl": ..., "multi_layer": ...,
        "soft_spearman": ...}`` of the *weighted* components, holding only the components with a non-zero weight;
        the sentence-transformers trainer (and :class:`~hf_codiemb.CoDiEmbTrainer`) sums the values of such a dict
        into the training loss and logs each component separately.

        With ``gather_across_devices=True`` (the reference's ``sts_negatives_cross_device``, off in its scripts and
        here by default) the predicted scores, the gold scores and the middle-layer embeddings of all ranks are
        gathered (with gradients) before the listwise losses, so every rank computes the loss of the global batch;
        with DDP's gradient averaging this equals one process holding the concatenated batch. Without a process
        group it is a no-op.

        Differences from the reference that are deliberate: the losses are computed in float32 (the reference
        computes them in bf16 under DeepSpeed bf16); ``rank_kl_all_equal_gold="zero"`` and ``soft_spearman_weight``
        are our options (see :class:`RankKLLoss`, :class:`SoftSpearmanLoss`).

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
            multi_layer_weight: Weight of the middle-layer InfoNCE (reference: 1.0; 0 = off).
            multi_layer_index: Hidden-state index of the middle layer; ``None`` = ``n // 2`` (reference).
            multi_layer_threshold: Pairs with gold ``>=`` this are rows of the middle-layer InfoNCE (reference: 1.0).
            multi_layer_temperature: Temperature of the middle-layer InfoNCE (reference: 0.02).
            gather_across_devices: Gather the STS batch across ranks before the losses (reference option, off).
            rank_kl_all_equal_gold: ``all_equal_gold`` of :class:`RankKLLoss` (``"uniform_target"`` = reference).

        References:
            - CoDiEmb: https://arxiv.org/abs/2508.11442 (reference code: TencentCloudADP/youtu-embedding)

        Relations:
            - :class:`PearsonLoss`, :class:`PROLoss`, :class:`RankKLLoss` and :class:`SoftSpearmanLoss` are its
              score-based components, usable alone.
            - sentence-transformers' ``CoSENTLoss`` / ``CosineSimilarityLoss`` are the usual single STS losses; the
              reference code has a CoSENT implementation but does not use it in its objective.

        Requirements:
            - Sentence pairs with a float gold similarity score (any scale; ``multi_layer_threshold`` is on it).
            - At least one non-zero, all non-negative weights.
            - With ``multi_layer_weight > 0``: a transformers encoder as the model's first module.

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
        check_rank_kl_options(temperature, rank_kl_reduction, rank_kl_all_equal_gold, prefix="rank_kl_")
        if not soft_spearman_regularization > 0:
            raise ValueError(f"soft_spearman_regularization must be positive, got {soft_spearman_regularization}.")
        if not multi_layer_weight >= 0:
            raise ValueError(f"multi_layer_weight must be non-negative, got {multi_layer_weight}.")
        if not multi_layer_temperature > 0:
            raise ValueError(f"multi_layer_temperature must be positive, got {multi_layer_temperature}.")
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
        self.multi_layer_weight = multi_layer_weight
        self.multi_layer_index = multi_layer_index
        self.multi_layer_threshold = multi_layer_threshold
        self.multi_layer_temperature = multi_layer_temperature
        self.gather_across_devices = gather_across_devices
        self.rank_kl_all_equal_gold = rank_kl_all_equal_gold
    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        name = type(self).__name__
        if self.model is None:
            raise ValueError(f"{name} was created without a model; use compute_from_scores(predicted, gold) instead.")
        features = list(sentence_features)
        if len(features) != 2:
            raise ValueError(f"{name} expects exactly 2 input columns (sentence1, sentence2), got {len(features)}.")
        if self.multi_layer_weight > 0:
            (embeddings_a, layer_a), (embeddings_b, layer_b) = (
                embed_with_layer(self.model, column, self.multi_layer_index) for column in features
            )
        else:
            embeddings_a, embeddings_b = embed_columns(self.model, features)
            layer_a = layer_b = None
        scores = self.similarity_fct(embeddings_a, embeddings_b)
        gold = labels
        if self.gather_across_devices and dist.is_available() and dist.is_initialized():
            sizes = {"pairs": scores.numel()}
            if layer_a is not None:
                sizes["dim"] = layer_a.size(1)
            check_same_sizes_across_ranks(sizes, name, scores.device)
            scores = all_gather_with_grad(scores)
            gold = all_gather(gold.to(scores.device))
            if layer_a is not None:
                layer_a, layer_b = all_gather_with_grad(layer_a), all_gather_with_grad(layer_b)
        components = self.compute_components_from_scores(scores, gold)
        if layer_a is not None:
            components["multi_layer"] = self.multi_layer_weight * middle_layer_info_nce(
                layer_a,
                layer_b,
                gold,
                threshold=self.multi_layer_threshold,
                temperature=self.multi_layer_temperature,
            )
        return components

    def compute_components_from_scores(self, predicted: Tensor, gold: Tensor) -> dict[str, Tensor]:
        """The weighted score-based components (only those with a non-zero weight) as a dict of scalar tensors.

        The middle-layer InfoNCE needs embeddings, not scores: it is added by :meth:`forward` only.

        Raises:
            ValueError: on mismatched shapes or a non-finite gold score.
        """
        predicted, gold = check_scores(predicted, gold, type(self).__name__)
        t = self.temperature
        terms: dict[str, tuple[float, Callable[[], Tensor]]] = {
            "pearson": (self.pearson_weight, lambda: F.pearson_loss(predicted, gold)),
            "pro": (self.pro_weight, lambda: F.pro_loss(predicted, gold, t)),
            "rank_kl": (
                self.rank_kl_weight,
                lambda: F.rank_kl_loss(predicted, gold, t, self.rank_kl_reduction, self.rank_kl_all_equal_gold),
            ),
            "soft_spearman": (
                self.soft_spearman_weight,
                lambda: F.soft_spearman_loss(predicted, gold, self.soft_spearman_regularization),
            ),
        }
        return {name: weight * term() for name, (weight, term) in terms.items() if weight > 0}

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
            "multi_layer_weight": self.multi_layer_weight,
            "multi_layer_index": self.multi_layer_index,
            "multi_layer_threshold": self.multi_layer_threshold,
            "multi_layer_temperature": self.multi_layer_temperature,
            "gather_across_devices": self.gather_across_devices,
            "rank_kl_all_equal_gold": self.rank_kl_all_equal_gold,
        }

    @property
    def citation(self) -> str:
        return CODIEMB_CITATION
