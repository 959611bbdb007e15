"""Shared helpers of the CoDiEmb losses (citation, input validation, pairwise STS scoring)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from sentence_transformers import util
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

CODIEMB_CITATION = """
@misc{zhang2025codiemb,
    title={CoDiEmb: A Collaborative yet Distinct Framework for Unified Representation Learning in Information Retrieval and Semantic Textual Similarity},
    author={Zhang, Bowen and Song, Zixin and Chen, Chunquan and Zhang, Qian-Wen and Yin, Di and Sun, Xing},
    year={2025},
    eprint={2508.11442},
    archivePrefix={arXiv},
    primaryClass={cs.CL},
    url={https://arxiv.org/abs/2508.11442},
}
"""


def function_name(fct: Callable) -> str:
    """Name of a similarity function for ``get_config_dict`` (``util.similarity_fct_name`` when it knows it)."""
    try:
        return util.similarity_fct_name(fct)
    except Exception:  # noqa: BLE001 - an unknown callable just gets its own name
        return getattr(fct, "__name__", repr(fct))


def check_scores(predicted: Tensor, gold: Tensor, loss_name: str) -> tuple[Tensor, Tensor]:
    """Validate a pair of 1-D score tensors and bring them to a common floating dtype.

    Raises:
        ValueError: if the shapes differ, are not 1-D (after flattening a trailing size-1 axis), or a gold score is
            NaN or infinite (the message names the first offending position).
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
    gold = gold.to(device=predicted.device, dtype=predicted.dtype)
    finite = torch.isfinite(gold)
    if not bool(finite.all()):
        position = int((~finite).nonzero()[0, 0])
        value = float(gold[position])
        raise ValueError(f"{loss_name}: gold score at position {position} is {value} (gold scores must be finite).")
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


def safe_pearson_loss(x: Tensor, y: Tensor, eps: float = 1e-12) -> Tensor:
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


def embed_pair_scores(
    model: torch.nn.Module | None,
    sentence_features: Iterable[dict[str, Tensor]],
    similarity_fct: Callable[[Tensor, Tensor], Tensor],
    loss_name: str,
) -> Tensor:
    """Embed the two columns of an STS batch and return the pairwise similarity of each pair (1-D)."""
    if model is None:
        raise ValueError(f"{loss_name} was created without a model; use compute_from_scores(predicted, gold) instead.")
    embeddings = embed_columns(model, sentence_features)
    if len(embeddings) != 2:
        raise ValueError(f"{loss_name} expects exactly 2 input columns (sentence1, sentence2), got {len(embeddings)}.")
    return similarity_fct(embeddings[0], embeddings[1])


class PairScoreLoss(nn.Module):
    """Base of the STS losses: embed (sentence_A, sentence_B) pairs, score them, compare with the gold scores.

    Subclasses set ``self.model`` and ``self.similarity_fct`` and implement ``_loss(predicted, gold)`` on validated
    1-D tensors; :meth:`compute_from_scores` is the public entry point on scores computed elsewhere.
    """

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        scores = embed_pair_scores(self.model, sentence_features, self.similarity_fct, type(self).__name__)
        return self.compute_from_scores(scores, labels)

    def compute_from_scores(self, predicted: Tensor, gold: Tensor) -> Tensor:
        """The loss of 1-D predicted scores (e.g. cosine similarities) against 1-D gold scores.

        Raises:
            ValueError: on mismatched shapes or a non-finite gold score.
        """
        predicted, gold = check_scores(predicted, gold, type(self).__name__)
        return self._loss(predicted, gold)

    def _loss(self, predicted: Tensor, gold: Tensor) -> Tensor:
        raise NotImplementedError


def check_same_sizes_across_ranks(sizes: dict[str, int], loss_name: str, device: torch.device) -> None:
    """Raise one clear error on every rank when the ranks would all-gather differently shaped tensors.

    ``sizes`` names the local sizes that must agree (e.g. ``{"batch": 16, "positives": 2}``); every rank calls this
    with the same keys. Without an initialised process group it does nothing.

    Raises:
        ValueError: naming each rank's sizes, when they differ.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    local = torch.tensor(list(sizes.values()), device=device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    per_rank = [tuple(int(v) for v in t.tolist()) for t in gathered]
    if len(set(per_rank)) > 1:
        described = ", ".join(
            f"rank {rank}: " + " ".join(f"{key}={value}" for key, value in zip(sizes, values))
            for rank, values in enumerate(per_rank)
        )
        raise ValueError(
            f"{loss_name}(gather_across_devices=True) needs the same local batch size and number of columns on every "
            f"rank, got {described}. Use a sampler that emits equal full batches per rank (e.g. drop the last "
            "incomplete batch)."
        )
