from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sentence_transformers import util
from sentence_transformers.sentence_transformer.model import SentenceTransformer

from ._common import CODIEMB_CITATION, PairScoreLoss, function_name

logger = logging.getLogger(__name__)


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
        if predicted.numel() < 2:
            return (predicted * 0).sum()
        return _ProListwise.apply(predicted / self.temperature, gold, self.eps)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "eps": self.eps,
            "similarity_fct": function_name(self.similarity_fct),
        }

    @property
    def citation(self) -> str:
        return CODIEMB_CITATION


class _ProListwise(torch.autograd.Function):
    """Vectorised PRO on temperature-scaled logits, with an analytic backward.

    Forward: for every item k, a masked log-sum-exp over its own gap-weighted logit and the gap-weighted logits of
    its competitors (items with a gold score lower by more than ``eps``), as one ``(n, n)`` matrix. Backward: the
    gradient of ``-log p_k`` w.r.t. a logit is ``softmax probability - [own]`` times the gap weight of that logit,
    which reduces to one matrix-vector product; this avoids recording ~10 ``(n, n)`` autograd nodes.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, gold: Tensor, eps: float) -> Tensor:  # noqa: D102
        gap_to_min = gold - gold.min()
        # Item k has competitors iff some y_j < y_k - eps; its own weight is the largest gap, y_k - min(y).
        has_lower = gap_to_min > eps
        own_logit = logits * gap_to_min
        gap = gold.unsqueeze(1) - gold.unsqueeze(0)  # gap[k, j] = y_k - y_j
        lower = gap > eps  # lower[k, j]: item j is a competitor of item k
        # Non-competitors are filled with the finite own logit and zeroed after the exp, rather than set to -inf:
        # exp of -inf or of underflowing arguments takes a slow path on CPU. Terms below exp(-80) relative to the
        # row maximum (which contributes exp(0) = 1) cannot change the sum and are clamped there.
        competitor_logits = torch.where(lower, gap * logits.unsqueeze(0), own_logit.unsqueeze(1))
        row_max = torch.maximum(competitor_logits.amax(dim=1), own_logit)
        exp_competitors = (competitor_logits - row_max.unsqueeze(1)).clamp_min_(-80.0).exp_().mul_(lower)
        exp_own = (own_logit - row_max).clamp_min(-80.0).exp()
        competitor_sum = exp_competitors.sum(dim=1)
        normaliser = competitor_sum + exp_own
        # When the own logit is the row maximum, -log p = log1p(sum of competitor terms): keeps tiny losses exact.
        neg_log_p = torch.where(
            own_logit >= row_max, competitor_sum.log1p(), row_max + normaliser.log() - own_logit
        )
        neg_log_p = torch.where(has_lower, neg_log_p, torch.zeros_like(own_logit))
        count = has_lower.sum().clamp_min(1).to(logits.dtype)
        ctx.save_for_backward(exp_competitors, exp_own, normaliser, gap, has_lower, gap_to_min, count)
        return neg_log_p.sum() / count

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, None]:  # noqa: D102
        exp_competitors, exp_own, normaliser, gap, has_lower, gap_to_min, count = ctx.saved_tensors
        row_weight = grad_output * has_lower.to(normaliser.dtype) / count  # d loss / d(-log p_k)
        prob_scale = row_weight / normaliser
        grad = (exp_competitors * gap).t().mv(prob_scale)  # sum_k p_kj * gap_kj
        grad = grad + (exp_own * prob_scale - row_weight) * gap_to_min
        return grad, None, None
