from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.distributed as dist
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.model import SentenceTransformer
from sentence_transformers.util import all_gather_with_grad, cos_sim
from torch import Tensor, nn

from ._common import CODIEMB_CITATION, check_same_sizes_across_ranks, function_name

logger = logging.getLogger(__name__)


InBatchPositives = Literal["slot", "all"]
IN_BATCH_POSITIVES: tuple[str, ...] = ("slot", "all")


def multi_positive_info_nce(
    query_embeddings: Tensor,
    positive_embeddings: Tensor,
    negative_embeddings: Tensor | None = None,
    temperature: float = 0.02,
    in_batch_negatives: bool = True,
    similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
    query_offset: int = 0,
    in_batch_positives: InBatchPositives = "slot",
) -> Tensor:
    """Multi-positive InfoNCE with hard negatives, on embeddings (the core of :class:`MultiPositiveInfoNCELoss`).

    Query ``i`` owns row ``query_offset + i`` of the passage tensors and has ``P`` positive *slots*. For each slot
    ``p`` it runs one softmax and takes ``-log`` of the probability of its own ``p``-th positive; the result is the
    mean over queries and slots. The candidates of that softmax depend on ``in_batch_positives``:

    - ``"slot"`` (default, the reference's semantics): the ``p``-th positive of EVERY row plus every hard negative
      of every row (``M + M * N`` columns). Other rows' positives of other slots are not candidates.
    - ``"all"`` (ours, not the reference's): the query's own ``p``-th positive, every positive of every OTHER row
      and every hard negative of every row (``1 + (M - 1) * P + M * N`` columns).

    In both, the query's own other positives are never candidates (siblings do not compete), and with
    ``in_batch_negatives=False`` the candidates are only the query's own ``p``-th positive and its own hard
    negatives (both modes then agree). Without any candidate besides the positive, every term is ``log 1 = 0``.

    Args:
        query_embeddings: ``(B, D)`` embeddings of the queries whose loss is computed.
        positive_embeddings: ``(M, P, D)`` positives of ``M >= query_offset + B`` rows (``M = B`` on one device,
            ``M = world_size * B`` after gathering).
        negative_embeddings: ``(M, N, D)`` hard negatives of the same rows, or ``None`` (``N = 0``).
        temperature: Similarities are divided by it.
        in_batch_negatives: Whether passages of other rows are candidates.
        similarity_fct: Similarity MATRIX function ``(B, D) x (K, D) -> (B, K)``, e.g. ``util.cos_sim``.
        query_offset: Row of the passage tensors owned by the first query (``rank * B`` when gathering).
        in_batch_positives: ``"slot"`` (reference) or ``"all"`` (ours), see above.

    Returns:
        Scalar loss tensor.
    """
    if in_batch_positives not in IN_BATCH_POSITIVES:
        raise ValueError(f"in_batch_positives must be one of {IN_BATCH_POSITIVES}, got {in_batch_positives!r}.")
    if query_embeddings.dim() != 2 or positive_embeddings.dim() != 3:
        raise ValueError(
            "Expected query embeddings of shape (B, D) and positive embeddings of shape (M, P, D), got "
            f"{tuple(query_embeddings.shape)} and {tuple(positive_embeddings.shape)}."
        )
    batch_size = query_embeddings.size(0)
    num_rows, num_positives, dim = positive_embeddings.shape
    if negative_embeddings is not None and negative_embeddings.size(1) == 0:
        negative_embeddings = None
    if negative_embeddings is not None and (
        negative_embeddings.dim() != 3 or negative_embeddings.size(0) != num_rows or negative_embeddings.size(2) != dim
    ):
        raise ValueError(
            f"Negative embeddings must have shape ({num_rows}, N, {dim}), got {tuple(negative_embeddings.shape)}."
        )
    if query_offset < 0 or query_offset + batch_size > num_rows:
        raise ValueError(
            f"query_offset={query_offset} with {batch_size} queries does not fit {num_rows} passage rows."
        )
    if num_positives == 0:
        raise ValueError("At least one positive per query is required.")

    device = query_embeddings.device
    owner = torch.arange(query_offset, query_offset + batch_size, device=device)
    row_ids = torch.arange(batch_size, device=device)

    pos_logits = similarity_fct(query_embeddings, positive_embeddings.reshape(-1, dim)) / temperature
    pos_logits = pos_logits.view(batch_size, num_rows, num_positives)
    target_logits = pos_logits[row_ids, owner]  # (B, P)

    # Candidates besides the target, per query: (B, C) shared by all slots, or (B, P, C) per slot.
    per_slot: list[Tensor] = []
    shared: list[Tensor] = []
    if in_batch_negatives and num_rows > 1:
        # Positives of the other rows (the query's own row is masked: its other slots are siblings, and its slot-p
        # positive is the target itself).
        own_row = torch.arange(num_rows, device=device).unsqueeze(0) == owner.unsqueeze(1)  # (B, M)
        other_rows = pos_logits.masked_fill(own_row.unsqueeze(2), float("-inf"))
        if in_batch_positives == "slot":
            per_slot.append(other_rows.transpose(1, 2))  # (B, P, M): slot p sees every other row's p-th positive
        else:
            shared.append(other_rows.reshape(batch_size, -1))  # (B, M * P): every positive of every other row
    if negative_embeddings is not None:
        num_negatives = negative_embeddings.size(1)
        if in_batch_negatives:
            neg_logits = similarity_fct(query_embeddings, negative_embeddings.reshape(-1, dim)) / temperature
            shared.append(neg_logits.reshape(batch_size, -1))
        else:
            own_negatives = negative_embeddings[owner]  # (B, N, D)
            neg_logits = similarity_fct(query_embeddings, own_negatives.reshape(-1, dim)) / temperature
            shared.append(neg_logits.view(batch_size, batch_size, num_negatives)[row_ids, row_ids])
    if not per_slot and not shared:
        logger.warning("MultiPositiveInfoNCE has no negatives (no hard negatives, no in-batch ones): loss is 0.")
        return (target_logits * 0).sum()

    candidates = [logits.unsqueeze(1).expand(-1, num_positives, -1) for logits in shared] + per_slot
    # Every (query, slot) has at least one finite candidate, so logsumexp and its gradient stay finite.
    log_negatives = torch.logsumexp(torch.cat(candidates, dim=2), dim=2)  # (B, P)
    # -log(e^s / (e^s + Z)) = softplus(log Z - s): exact for well-separated positives (no 1 + tiny rounding).
    return torch.nn.functional.softplus(log_negatives - target_logits).mean()


class MultiPositiveInfoNCELoss(nn.Module):
    task = "ir"  # the task whose columns it takes (hf_codiemb.training_checks.loss_task)

    def __init__(
        self,
        model: SentenceTransformer,
        num_positives: int = 2,
        temperature: float = 0.02,
        in_batch_negatives: bool = True,
        gather_across_devices: bool = False,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
        in_batch_positives: InBatchPositives = "slot",
    ) -> None:
        """
        Multi-positive InfoNCE with hard negatives, the CoDiEmb Information Retrieval (IR) objective. Each query
        comes with ``num_positives`` positive *slots* and any number of hard negatives. For every query ``q`` and
        slot ``p``, with ``q``'s ``p``-th positive ``q_p``::

            loss = -log( exp(s(q, q_p) / t) / sum_{c in C_p} exp(s(q, c) / t) )

        averaged over all slots and queries. With the default ``in_batch_positives="slot"`` the candidates ``C_p``
        are the ``p``-th positive of every query of the batch plus the hard negatives of every query (of all devices
        with ``gather_across_devices``): one softmax per slot, as the reference code computes it
        (``ContrastiveLoss._loss_ir`` in its "all" mode). Other queries' positives of other slots are not
        candidates, and the query's own other positives never are (siblings do not compete).

        ``in_batch_positives="all"`` is OUR variant, not the reference's: ``C_p`` holds every positive of every
        other query (all slots) besides the hard negatives, i.e. about ``(P - 1) * B`` more in-batch negatives. With
        ``num_positives=1`` both variants are the same loss, equal to sentence-transformers'
        :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss` with
        ``scale = 1 / temperature``. With ``in_batch_negatives=False`` (ours) ``C_p`` holds only the query's own
        ``p``-th positive and its own hard negatives.

        With ``gather_across_devices=True`` the passages of all ranks are gathered with gradients
        (``sentence_transformers.util.all_gather_with_grad``) and every rank computes the loss of its local queries
        against all passages. With DDP's gradient averaging this gives exactly the loss and gradient of a single
        process holding the concatenated batch (the reference gathers the queries too and computes the whole
        batch on every rank, which gives the same gradient). All ranks must hold the same number of queries and
        columns (checked; a clear error is raised otherwise). Without an initialised process group gathering is a
        no-op.

        Args:
            model: SentenceTransformer model.
            num_positives: Number of positive columns following the query column (paper: 2).
            temperature: Temperature of the softmax over cosine similarities (paper: 0.02).
            in_batch_negatives: Use the passages of the other queries as extra negatives.
            gather_across_devices: Gather passages across ranks (needs ``in_batch_negatives``; ignored otherwise).
            similarity_fct: Similarity MATRIX function, default ``util.cos_sim`` (the reference: dot product of
                normalised embeddings, the same thing).
            in_batch_positives: ``"slot"`` (default, the reference's candidates) or ``"all"`` (ours, see above).

        References:
            - CoDiEmb: https://arxiv.org/abs/2508.11442 (reference code: TencentCloudADP/youtu-embedding,
              ``training/CoDiEmb/train/loss.py``, ``ContrastiveLoss._loss_ir``)

        Relations:
            - With ``num_positives=1``: :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss`
              (``scale = 1 / temperature``) on ``(query, positive, negative_1, ..., negative_n)`` columns.

        Requirements:
            1. (query, positive_0, ..., positive_{k-1}, negative_0, ..., negative_{m-1}) tuples with
               ``k = num_positives`` and ``m >= 0`` (what ``CoDiEmbDataCollator`` produces for IR datasets).
            2. With ``gather_across_devices``: equal local batch sizes on every rank.

        Inputs:
            +------------------------------------------------------------------+--------+
            | Inputs                                                           | Labels |
            +==================================================================+========+
            | (query, positive_0, ..., positive_{k-1}, negative_0, ..., neg_m) | none   |
            +------------------------------------------------------------------+--------+

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from hf_codiemb.losses import MultiPositiveInfoNCELoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "query": ["what is the capital of France", "who wrote Hamlet"],
                    "positive_0": ["Paris is the capital of France.", "Hamlet is a play by Shakespeare."],
                    "positive_1": ["France's capital city is Paris.", "Shakespeare wrote Hamlet around 1600."],
                    "negative_0": ["Lyon is a city in France.", "Macbeth is a tragedy."],
                })
                loss = MultiPositiveInfoNCELoss(model, num_positives=2)
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        if num_positives < 1:
            raise ValueError(f"num_positives must be >= 1, got {num_positives}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        if in_batch_positives not in IN_BATCH_POSITIVES:
            raise ValueError(f"in_batch_positives must be one of {IN_BATCH_POSITIVES}, got {in_batch_positives!r}.")
        self.model = model
        self.num_positives = num_positives
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives
        self.gather_across_devices = gather_across_devices
        self.similarity_fct = similarity_fct
        self.in_batch_positives = in_batch_positives
        if gather_across_devices and not in_batch_negatives:
            logger.warning("gather_across_devices=True has no effect with in_batch_negatives=False.")

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 1 + self.num_positives:
            raise ValueError(
                f"{type(self).__name__} expects a query column and {self.num_positives} positive columns "
                f"(num_positives={self.num_positives}), got {len(sentence_features)} columns in total."
            )
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """Loss from the column embeddings ``[query, pos_0, ..., pos_{k-1}, neg_0, ...]`` (each ``(B, D)``)."""
        queries = embeddings[0]
        positives = torch.stack(embeddings[1 : 1 + self.num_positives], dim=1)
        negative_columns = embeddings[1 + self.num_positives :]
        negatives = torch.stack(negative_columns, dim=1) if negative_columns else None
        offset = 0
        if self.gather_across_devices and self.in_batch_negatives and dist.is_available() and dist.is_initialized():
            check_same_sizes_across_ranks(
                {
                    "batch": queries.size(0),
                    "positives": positives.size(1),
                    "negatives": 0 if negatives is None else negatives.size(1),
                    "dim": queries.size(1),
                },
                type(self).__name__,
                queries.device,
            )
            positives = all_gather_with_grad(positives)
            if negatives is not None:
                negatives = all_gather_with_grad(negatives)
            offset = dist.get_rank() * queries.size(0)
        return multi_positive_info_nce(
            queries,
            positives,
            negatives,
            temperature=self.temperature,
            in_batch_negatives=self.in_batch_negatives,
            similarity_fct=self.similarity_fct,
            query_offset=offset,
            in_batch_positives=self.in_batch_positives,
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "num_positives": self.num_positives,
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "gather_across_devices": self.gather_across_devices,
            "similarity_fct": function_name(self.similarity_fct),
            "in_batch_positives": self.in_batch_positives,
        }

    @property
    def citation(self) -> str:
        return CODIEMB_CITATION
