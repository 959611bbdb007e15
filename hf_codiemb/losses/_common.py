"""Shared helpers of the CoDiEmb losses (citation, pairwise STS scoring, cross-rank size checks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from sentence_transformers import util
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from .functional import check_scores

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

    task = "sts"  # the task whose columns it takes (hf_codiemb.training_checks.loss_task)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        scores = embed_pair_scores(self.model, sentence_features, self.similarity_fct, type(self).__name__)
        return self.compute_from_scores(scores, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        """The loss of the two column embeddings ``[sentence_A, sentence_B]`` (each ``(B, D)``) against ``labels``."""
        if len(embeddings) != 2:
            raise ValueError(f"{type(self).__name__} expects 2 embedding columns, got {len(embeddings)}.")
        return self.compute_from_scores(self.similarity_fct(embeddings[0], embeddings[1]), labels)

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
