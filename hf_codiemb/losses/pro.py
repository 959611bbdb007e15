from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentence_transformers import util
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from torch import Tensor

from ._common import CODIEMB_CITATION, PairScoreLoss, function_name
from .functional import pro_loss


class PROLoss(PairScoreLoss):
    def __init__(
        self,
        model: SentenceTransformer | None,
        temperature: float = 0.05,
        eps: float = 1e-8,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = util.pairwise_cos_sim,
    ) -> None:
        """
        PRO (listwise, gap-weighted) loss for Semantic Textual Similarity (STS). The ranking of the batch by gold
        score is decomposed into one softmax per item: item ``k`` must win against every item with a strictly lower
        gold score, and each competitor's logit is weighted by its gold-score gap, so badly ordered pairs that are
        far apart in gold score cost more.

        With ``l_i = c_i / temperature`` (predicted similarity over the temperature), ``y`` the gold scores and
        ``L(k) = {j : y_k - y_j > eps}``, for every ``k`` with a non-empty ``L(k)``::

            w_k     = max_{j in L(k)} (y_k - y_j)          # = y_k - min(y)
            log p_k = w_k * l_k - logsumexp([w_k * l_k] + [(y_k - y_j) * l_j for j in L(k)])
            loss    = - mean_k log p_k

        This matches the reference ``PROLoss`` of the CoDiEmb code (TencentCloudADP/youtu-embedding,
        ``training/CoDiEmb/train/loss.py``) exactly: same temperature placement (scores divided before weighting),
        same positive weight (the largest gap), same strict-lower test ``y_k - y_j > eps`` with ``eps = 1e-8``, the
        mean over the items that have at least one lower item, and loss 0 for batches with fewer than 2 pairs or no
        two distinct gold scores. The reference loops over the items sorted by gold score (one softmax per item);
        this implementation computes all rows at once with an ``(n, n)`` masked logit matrix and a masked
        log-sum-exp and an analytic backward (no sorting, no Python loop, no host synchronisation; first-order
        gradients only, no double backward), which gives the same value (tested to 1e-5 against a loop
        implementation); its speed against the loop is measured in ``tests/benchmarks/bench_pro_loss.py``.

        Args:
            model: SentenceTransformer model (may be ``None`` when only :meth:`compute_from_scores` is used).
            temperature: The predicted similarities are divided by it (reference: 0.05).
            eps: Gold-score gap above which an item counts as strictly lower (reference: 1e-8).
            similarity_fct: Function computing the PAIRWISE similarity of two embedding batches.

        References:
            - CoDiEmb: https://arxiv.org/abs/2508.11442
            - PRO as used there is adapted from "Large Language Model based Long-tail Query Rewriting in Taobao
              Search" (https://arxiv.org/abs/2311.03758).

        Requirements:
            - Sentence pairs with a float gold similarity score; batches with several distinct gold scores.

        Relations:
            - :class:`CoDiEmbSTSLoss` uses it as its ``pro`` component (weight 0.5 in the reference).
            - sentence-transformers' ``CoSENTLoss`` also penalises mis-ordered pairs, with one log-sum-exp over all
              pairs and no gold-gap weights.

        Inputs:
            +--------------------------------+------------------------+
            | Inputs                         | Labels                 |
            +================================+========================+
            | (sentence_A, sentence_B) pairs | float similarity score |
            +--------------------------------+------------------------+

        Example:
            ::

                import torch
                from hf_codiemb.losses import PROLoss

                loss = PROLoss(model=None, temperature=0.05)
                predicted = torch.tensor([0.9, 0.2, 0.5, 0.4], requires_grad=True)
                value = loss.compute_from_scores(predicted, torch.tensor([5.0, 1.0, 3.0, 3.0]))
                value.backward()
        """
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}.")
        self.model = model
        self.temperature = temperature
        self.eps = eps
        self.similarity_fct = similarity_fct

    def _loss(self, predicted: Tensor, gold: Tensor) -> Tensor:
        return pro_loss(predicted, gold, self.temperature, self.eps)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "eps": self.eps,
            "similarity_fct": function_name(self.similarity_fct),
        }

    @property
    def citation(self) -> str:
        return CODIEMB_CITATION
