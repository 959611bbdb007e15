"""The STS losses as functions of predicted and gold scores: the maths behind the loss classes.

Every function takes 1-D ``predicted`` scores (e.g. the cosine similarity of each pair's embeddings) and 1-D ``gold``
scores of one batch, already validated by :func:`check_scores`, and returns a scalar tensor. The loss classes
(:class:`~hf_codiemb.losses.PearsonLoss`, :class:`~hf_codiemb.losses.RankKLLoss`, :class:`~hf_codiemb.losses.PROLoss`,
:class:`~hf_codiemb.losses.SoftSpearmanLoss`) and their combination :class:`~hf_codiemb.losses.CoDiEmbSTSLoss` all
call these functions, so each formula is written once.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def check_scores(predicted: Tensor, gold: Tensor, loss_name: str) -> tuple[Tensor, Tensor]:
    """Validate a pair of 1-D score tensors and bring them to a common floating dtype.

    Raises:
        ValueError: if the shapes differ, are not 1-D (after flattening a trailing size-1 axis), or a gold score is
            NaN or infinite (the message names the first offending position; checked when the gold scores are in
            host memory, since reading an accelerator's tensor would stall the training step).
    """
    if predicted.dim() == 2 and predicted.size(1) == 1:
        predicted = predicted.squeeze(1)
    if gold.dim() == 2 and gold.size(1) == 1:
        gold = gold.squeeze(1)
    if predicted.dim() != 1 or gold.dim() != 1:
        raise ValueError(
            f"{loss_name} expects 1-D predicted and gold scores, got shapes {tuple(predicted.shape)} "
            f"and {tuple(gold.shape)}."
        )
    if predicted.numel() != gold.numel():
        raise ValueError(
            f"{loss_name} expects one gold score per predicted score, got {predicted.numel()} predicted "
            f"and {gold.numel()} gold scores."
        )
    if not predicted.is_floating_point():
        raise ValueError(f"{loss_name} expects floating-point predicted scores, got dtype {predicted.dtype}.")
    if predicted.dtype in (torch.float16, torch.bfloat16):
        predicted = predicted.float()
    if gold.device.type == "cpu":
        # Checked in host memory only: on an accelerator the check would stall the step (a host sync); there the
        # trainer has refused non-finite scores per row before training, and a non-finite loss names its step.
        finite = torch.isfinite(gold)
        if not bool(finite.all()):
            position = int((~finite).nonzero()[0, 0])
            value = float(gold[position])
            raise ValueError(f"{loss_name}: gold score at position {position} is {value} (gold scores must be finite).")
    gold = gold.to(device=predicted.device, dtype=predicted.dtype)
    return predicted, gold


def average_ranks(values: Tensor) -> Tensor:
    """0-based ascending ranks of a 1-D tensor, ties sharing their average rank (like ``rankdata(...) - 1``).

    Uses an ``(n, n)`` comparison, which is cheap at STS batch sizes and has no data-dependent control flow.
    The result carries no gradient.
    """
    values = values.detach()
    lower = (values.unsqueeze(0) < values.unsqueeze(1)).sum(dim=1)
    equal = (values.unsqueeze(0) == values.unsqueeze(1)).sum(dim=1)
    return (lower + (equal - 1) / 2).to(values.dtype)


def pearson_loss(x: Tensor, y: Tensor, eps: float = 1e-12) -> Tensor:
    """``1 - pearson(x, y)``, and exactly 0 (with zero, finite gradients) when either side has no variance.

    ``eps`` bounds the variance below which a side counts as constant. Uses population (biased) moments, which
    give the same correlation as the unbiased ones.
    """
    if x.numel() < 2:
        return (x * 0).sum()
    xc = x - x.mean()
    yc = y - y.mean()
    var_x = (xc * xc).mean()
    var_y = (yc * yc).mean()
    ok = (var_x > eps) & (var_y > eps)
    # Double-where: the sqrt is evaluated on safe values, so the masked branch cannot produce inf * 0 = NaN grads.
    denominator = torch.sqrt(torch.where(ok, var_x, torch.ones_like(var_x))) * torch.sqrt(
        torch.where(ok, var_y, torch.ones_like(var_y))
    )
    pearson = (xc * yc).mean() / denominator
    return torch.where(ok, 1 - pearson, torch.zeros_like(pearson))


def rank_kl_loss(
    predicted: Tensor,
    gold: Tensor,
    temperature: float = 0.05,
    reduction: Literal["batchmean", "sum"] = "batchmean",
    all_equal_gold: Literal["uniform_target", "zero"] = "uniform_target",
) -> Tensor:
    """``KL(softmax(r / t) || softmax(c / t))`` with ``r`` the gold ranks normalised to [0, 1] (see ``RankKLLoss``).

    ``reduction="batchmean"`` divides the sum by ``n`` (the reference); ``all_equal_gold`` decides a batch whose gold
    scores are all equal: ``"uniform_target"`` (the reference) or ``"zero"`` (ours).
    """
    n = predicted.numel()
    if n < 2:
        return (predicted * 0).sum()
    normalised_ranks = average_ranks(gold) / (n - 1)
    log_target = F.log_softmax(normalised_ranks / temperature, dim=0)
    log_pred = F.log_softmax(predicted / temperature, dim=0)
    kl = (log_target.exp() * (log_target - log_pred)).sum()
    if reduction == "batchmean":
        kl = kl / n
    if all_equal_gold == "uniform_target":
        return kl
    has_order = gold.max() > gold.min()
    return torch.where(has_order, kl, torch.zeros_like(kl))


def pro_loss(predicted: Tensor, gold: Tensor, temperature: float = 0.05, eps: float = 1e-8) -> Tensor:
    """The PRO listwise loss (see ``PROLoss``): ``- mean_k log p_k`` over the items with a lower competitor."""
    if predicted.numel() < 2:
        return (predicted * 0).sum()
    return _ProListwise.apply(predicted / temperature, gold, eps)


def soft_rank(values: Tensor, regularization_strength: float) -> Tensor:
    """Pairwise-sigmoid soft rank of a 1-D tensor: ``sum_j sigmoid((v_i - v_j) / s) - 0.5``.

    0-based and ascending; tends to the hard rank (ties: average rank) as ``s -> 0``. Differentiable everywhere.
    """
    diff = (values.unsqueeze(1) - values.unsqueeze(0)) / regularization_strength
    return torch.sigmoid(diff).sum(dim=1) - 0.5


def soft_spearman_loss(
    predicted: Tensor, gold: Tensor, regularization_strength: float = 0.05, eps: float = 1e-12
) -> Tensor:
    """``1 - pearson(soft_rank(predicted), rank(gold))`` (see ``SoftSpearmanLoss``)."""
    if predicted.numel() < 2:
        return (predicted * 0).sum()
    return pearson_loss(soft_rank(predicted, regularization_strength), average_ranks(gold), eps)


class _ProListwise(torch.autograd.Function):
    """Vectorised PRO on temperature-scaled logits, with an analytic backward.

    Forward: for every item k, a masked log-sum-exp over its own gap-weighted logit and the gap-weighted logits of
    its competitors (items with a gold score lower by more than ``eps``), as one ``(n, n)`` matrix. Backward: the
    gradient of ``-log p_k`` w.r.t. a logit is ``softmax probability - [own]`` times the gap weight of that logit,
    which reduces to one matrix-vector product; this avoids recording ~10 ``(n, n)`` autograd nodes.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, gold: Tensor, eps: float) -> Tensor:
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
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        exp_competitors, exp_own, normaliser, gap, has_lower, gap_to_min, count = ctx.saved_tensors
        row_weight = grad_output * has_lower.to(normaliser.dtype) / count  # d loss / d(-log p_k)
        prob_scale = row_weight / normaliser
        grad = (exp_competitors * gap).t().mv(prob_scale)  # sum_k p_kj * gap_kj
        grad = grad + (exp_own * prob_scale - row_weight) * gap_to_min
        return grad, None, None
