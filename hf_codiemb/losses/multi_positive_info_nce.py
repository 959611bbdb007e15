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
from .false_negatives import (
    GISTEMBED_CITATION,
    MARGIN_STRATEGIES,
    MarginStrategy,
    embed_with_guide,
    false_negative_mask,
    guide_name,
    prepare_guide,
)
from .teacher_distillation import FLAGEMBEDDING_CITATION, teacher_distillation_kl

logger = logging.getLogger(__name__)


InBatchPositives = Literal["slot", "all"]
IN_BATCH_POSITIVES: tuple[str, ...] = ("slot", "all")


def slot_similarities(
    query_embeddings: Tensor,
    positive_embeddings: Tensor,
    negative_embeddings: Tensor | None = None,
    in_batch_negatives: bool = True,
    similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
    query_offset: int = 0,
    in_batch_positives: InBatchPositives = "slot",
) -> tuple[Tensor, Tensor | None]:
    """The similarities behind :func:`multi_positive_info_nce`, before the temperature.

    Returns:
        ``(target, candidates)``: ``target[i, p]`` is the similarity of query ``i`` with its own ``p``-th positive,
        ``candidates[i, p, c]`` that of query ``i`` with candidate ``c`` of slot ``p``'s softmax (``-inf`` where a
        column is not a candidate of that slot, e.g. the query's own positives); ``candidates`` is ``None`` when
        there is no candidate at all. The arguments are those of :func:`multi_positive_info_nce`; the column
        layout depends only on the shapes, so two embedding sets of the same rows (the model's and a guide's) give
        the same layout.
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

    pos_sims = similarity_fct(query_embeddings, positive_embeddings.reshape(-1, dim))
    pos_sims = pos_sims.view(batch_size, num_rows, num_positives)
    target = pos_sims[row_ids, owner]  # (B, P)

    # Candidates besides the target, per query: (B, C) shared by all slots, or (B, P, C) per slot.
    per_slot: list[Tensor] = []
    shared: list[Tensor] = []
    if in_batch_negatives and num_rows > 1:
        # Positives of the other rows (the query's own row is masked: its other slots are siblings, and its slot-p
        # positive is the target itself).
        own_row = torch.arange(num_rows, device=device).unsqueeze(0) == owner.unsqueeze(1)  # (B, M)
        other_rows = pos_sims.masked_fill(own_row.unsqueeze(2), float("-inf"))
        if in_batch_positives == "slot":
            per_slot.append(other_rows.transpose(1, 2))  # (B, P, M): slot p sees every other row's p-th positive
        else:
            shared.append(other_rows.reshape(batch_size, -1))  # (B, M * P): every positive of every other row
    if negative_embeddings is not None:
        num_negatives = negative_embeddings.size(1)
        if in_batch_negatives:
            neg_sims = similarity_fct(query_embeddings, negative_embeddings.reshape(-1, dim))
            shared.append(neg_sims.reshape(batch_size, -1))
        else:
            own_negatives = negative_embeddings[owner]  # (B, N, D)
            neg_sims = similarity_fct(query_embeddings, own_negatives.reshape(-1, dim))
            shared.append(neg_sims.view(batch_size, batch_size, num_negatives)[row_ids, row_ids])
    if not per_slot and not shared:
        return target, None
    candidates = [sims.unsqueeze(1).expand(-1, num_positives, -1) for sims in shared] + per_slot
    return target, torch.cat(candidates, dim=2)


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
    target, candidates = slot_similarities(
        query_embeddings, positive_embeddings, negative_embeddings, in_batch_negatives=in_batch_negatives,
        similarity_fct=similarity_fct, query_offset=query_offset, in_batch_positives=in_batch_positives,
    )  # fmt: skip
    if candidates is None:
        logger.warning("MultiPositiveInfoNCE has no negatives (no hard negatives, no in-batch ones): loss is 0.")
        return (target * 0).sum()
    # Every (query, slot) has at least one finite candidate, so logsumexp and its gradient stay finite.
    log_negatives = torch.logsumexp(candidates / temperature, dim=2)  # (B, P)
    # -log(e^s / (e^s + Z)) = softplus(log Z - s): exact for well-separated positives (no 1 + tiny rounding).
    return torch.nn.functional.softplus(log_negatives - target / temperature).mean()


def masked_multi_positive_info_nce(
    query_embeddings: Tensor,
    positive_embeddings: Tensor,
    negative_embeddings: Tensor | None = None,
    temperature: float = 0.02,
    in_batch_negatives: bool = True,
    similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
    query_offset: int = 0,
    in_batch_positives: InBatchPositives = "slot",
    *,
    margin: float,
    margin_strategy: MarginStrategy = "absolute",
    guide_embeddings: tuple[Tensor, Tensor, Tensor | None] | None = None,
    guide_similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """[ours] :func:`multi_positive_info_nce` with probable false negatives removed (GISTEmbed's margin masking).

    For query ``i`` and positive slot ``p``, a candidate ``c`` of that slot's softmax is removed when its judge
    similarity exceeds the threshold of :func:`false_negative_mask` (``s(q, c) > s(q, q_p) - m``, or the relative
    form). The judge is the trained model's own similarities (detached) or, with ``guide_embeddings``, a guide
    model's: the guide's similarities decide the mask, the trained model's similarities stay the logits. The
    positive itself is never removed (it is the target, not a candidate). A (query, slot) whose candidates are all
    removed contributes ``log 1 = 0`` with zero gradient, and still counts in the mean (so the loss of ``W`` ranks
    of ``B`` queries equals that of one process holding the ``W * B`` queries).

    Args:
        query_embeddings, positive_embeddings, negative_embeddings, temperature, in_batch_negatives, similarity_fct,
            query_offset, in_batch_positives: As :func:`~hf_codiemb.losses.multi_positive_info_nce`.
        margin: ``m >= 0`` of the threshold.
        margin_strategy: ``"absolute"`` or ``"relative"``.
        guide_embeddings: ``(queries (B, D'), positives (M, P, D'), negatives (M, N, D') or None)`` of the guide for
            the same rows (gathered like the model's), or ``None`` to judge with the model itself.
        guide_similarity_fct: Similarity matrix function of the guide; ``None``: ``similarity_fct``.

    Returns:
        ``(loss, masked)``: the scalar loss and the number of (query, slot, candidate) entries removed (a 0-dim
        integer tensor).
    """
    layout = {
        "in_batch_negatives": in_batch_negatives, "query_offset": query_offset, "in_batch_positives": in_batch_positives
    }  # fmt: skip
    target, candidates = slot_similarities(
        query_embeddings, positive_embeddings, negative_embeddings, similarity_fct=similarity_fct, **layout
    )
    if candidates is None:
        return (target * 0).sum(), torch.zeros((), dtype=torch.long, device=target.device)
    if guide_embeddings is None:
        judge_target, judge_candidates = target.detach(), candidates.detach()
    else:
        with torch.no_grad():
            judge_target, judge_candidates = slot_similarities(
                *guide_embeddings, similarity_fct=guide_similarity_fct or similarity_fct, **layout
            )
        if judge_candidates is None or judge_candidates.shape != candidates.shape:
            raise ValueError(
                "The guide embeddings must cover the same rows and columns as the model's: got candidate layouts "
                f"{None if judge_candidates is None else tuple(judge_candidates.shape)} and {tuple(candidates.shape)}."
            )
    masked = false_negative_mask(judge_target, judge_candidates, margin, margin_strategy)
    logits = (candidates / temperature).masked_fill(masked, float("-inf"))
    # A (query, slot) left without candidates: logsumexp over nothing is -inf, whose gradient would be NaN; compute
    # it on zeros and put -inf back through masked_fill, which passes no gradient (softplus(-inf) = 0).
    empty = torch.isneginf(logits).all(dim=2, keepdim=True)
    log_negatives = torch.logsumexp(logits.masked_fill(empty, 0.0), dim=2).masked_fill(empty.squeeze(2), float("-inf"))
    loss = torch.nn.functional.softplus(log_negatives - target / temperature).mean()
    return loss, masked.sum()


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
        margin: float | None = None,
        margin_strategy: MarginStrategy = "absolute",
        guide: nn.Module | str | None = None,
        distill_weight: float = 0.0,
        teacher_temperature: float = 1.0,
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

        **False-negative masking** [ours, after GISTEmbed], off by default (the reference masks nothing): with
        ``margin`` set, a candidate ``c`` of slot ``p``'s softmax (in-batch, gathered or hard negative) is removed
        when it scores above the positive: ``s(q, c) > s(q, q_p) - margin`` (``"absolute"``) or
        ``s(q, c) > s(q, q_p) - |s(q, q_p)| * margin`` (``"relative"``, i.e. ``s(q, q_p) * (1 - margin)`` for a positive
        similarity), as sentence-transformers' ``GISTEmbedLoss``. The judge is the trained model itself (its
        detached similarities) or, with ``guide``, a frozen guide model: the guide's similarities decide the mask,
        the trained model's are the logits. The positive itself is never removed; a (query, slot) whose candidates
        are all removed contributes 0. The number of removed (query, slot, candidate) entries of the last batch is
        returned by :meth:`pop_metrics` as ``masked_candidates`` (``CoDiEmbTrainer`` logs its mean per batch and
        process as ``<dataset>/masked_candidates``; it is never part of the loss). With ``margin=0`` and
        ``"absolute"`` only candidates scoring strictly above the positive are removed; an exact duplicate of the
        positive may then stay, by rounding: use a small positive margin (e.g. 0.05 with cosine similarity).

        **Distillation from teacher scores** [FlagEmbedding], off by default: with ``distill_weight > 0`` the labels
        of a batch are the teacher scores of each query's sampled positives and hard negatives (``(B, P + N)``, in
        column order; ``CoDiEmbDataCollator(keep_teacher_scores=True)`` passes a record's ``positive_scores`` /
        ``negative_scores``, FlagEmbedding's ``pos_scores`` / ``neg_scores``), and the loss adds
        ``distill_weight * KL(softmax(teacher / teacher_temperature) || softmax(s(q, c) / temperature))`` over each
        query's own candidates (its positives and its own hard negatives, never in-batch ones), averaged over the
        queries: FlagEmbedding's ``kd_loss_type="kl_div"`` (which computes the cross-entropy: the same gradient).
        The forward then returns ``{"info_nce": ..., "distill_kl": distill_weight * KL}`` (``CoDiEmbTrainer`` sums
        the components into the loss and logs each). The KL is computed per rank on its own queries, so with
        gathering it is still that of one process holding the whole batch.

        Args:
            model: SentenceTransformer model.
            num_positives: Number of positive columns following the query column (paper: 2).
            temperature: Temperature of the softmax over cosine similarities (paper: 0.02).
            in_batch_negatives: Use the passages of the other queries as extra negatives.
            gather_across_devices: Gather passages across ranks (needs ``in_batch_negatives``; ignored otherwise).
            similarity_fct: Similarity MATRIX function, default ``util.cos_sim`` (the reference: dot product of
                normalised embeddings, the same thing).
            in_batch_positives: ``"slot"`` (default, the reference's candidates) or ``"all"`` (ours, see above).
            margin: [ours] Remove candidates scoring above the positive minus this margin (``>= 0``); ``None``
                (default): no masking, the reference's loss.
            margin_strategy: [ours] ``"absolute"`` (default) or ``"relative"``, see above.
            guide: [ours] A frozen SentenceTransformer (or its name or path) whose similarities decide the mask;
                ``None``: the trained model judges. Needs ``margin``. With another vocabulary (or a shorter
                ``max_seq_length``) than the model, the texts are decoded and tokenized again for it.
            distill_weight: [FlagEmbedding] Weight of the teacher-score KL term; 0 (default) is off.
            teacher_temperature: [FlagEmbedding] Temperature of the teacher's softmax over its scores (default 1.0,
                FlagEmbedding's softmax of the raw scores).

        References:
            - CoDiEmb: https://arxiv.org/abs/2508.11442 (reference code: TencentCloudADP/youtu-embedding,
              ``training/CoDiEmb/train/loss.py``, ``ContrastiveLoss._loss_ir``)
            - GISTEmbed (the margin masking and its guide model): https://arxiv.org/abs/2402.16829,
              sentence-transformers' ``GISTEmbedLoss``
            - FlagEmbedding (the teacher-score distillation, ``knowledge_distillation`` with ``kd_loss_type="kl_div"``):
              https://github.com/FlagOpen/FlagEmbedding

        Relations:
            - With ``num_positives=1``: :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss`
              (``scale = 1 / temperature``) on ``(query, positive, negative_1, ..., negative_n)`` columns.
            - With ``num_positives=1``, ``margin`` and ``guide``:
              :class:`~sentence_transformers.sentence_transformer.losses.GISTEmbedLoss` with
              ``contrast_anchors=False, contrast_positives=False``, except that GISTEmbed's positive of another
              query is judged against the query's own positive here too (the same rule for every candidate).

        Requirements:
            1. (query, positive_0, ..., positive_{k-1}, negative_0, ..., negative_{m-1}) tuples with
               ``k = num_positives`` and ``m >= 0`` (what ``CoDiEmbDataCollator`` produces for IR datasets).
            2. With ``gather_across_devices``: equal local batch sizes on every rank.
            3. With ``distill_weight > 0``: teacher scores of every sampled positive and negative as labels.

        Inputs:
            +------------------------------------------------------------------+------------------------------------+
            | Inputs                                                           | Labels                             |
            +==================================================================+====================================+
            | (query, positive_0, ..., positive_{k-1}, negative_0, ..., neg_m) | none                               |
            +------------------------------------------------------------------+------------------------------------+
            | (query, positive_0, ..., positive_{k-1}, negative_0, ..., neg_m) | teacher scores (k + m per query),  |
            |                                                                  | with ``distill_weight > 0``        |
            +------------------------------------------------------------------+------------------------------------+

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

            With false-negative masking judged by a guide, and distillation from teacher scores (with
            :class:`~hf_codiemb.trainer.CoDiEmbTrainer`: the training arguments ``false_negative_margin``,
            ``false_negative_margin_strategy``, ``false_negative_guide``, ``distill_weight`` and
            ``teacher_temperature``; the records' ``positive_scores`` / ``negative_scores`` become the labels)::

                loss = MultiPositiveInfoNCELoss(
                    model, num_positives=2, margin=0.05, guide="BAAI/bge-small-en-v1.5", distill_weight=1.0
                )
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
        if margin is not None and (
            isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0
        ):
            raise ValueError(f"margin must be a number >= 0 (None: no masking), got {margin!r}.")
        if margin_strategy not in MARGIN_STRATEGIES:
            raise ValueError(f"margin_strategy must be one of {MARGIN_STRATEGIES}, got {margin_strategy!r}.")
        if guide is not None and margin is None:
            raise ValueError("A guide model only decides which candidates the margin removes: set margin too.")
        if isinstance(distill_weight, bool) or not isinstance(distill_weight, (int, float)) or not distill_weight >= 0:
            raise ValueError(f"distill_weight must be a number >= 0, got {distill_weight!r}.")
        if not teacher_temperature > 0:
            raise ValueError(f"teacher_temperature must be positive, got {teacher_temperature}.")
        self.margin = margin
        self.margin_strategy = margin_strategy
        self.guide, self.guide_retokenizes = (None, False) if guide is None else prepare_guide(guide, model)
        self.distill_weight = distill_weight
        self.teacher_temperature = teacher_temperature
        self._metrics: dict[str, Tensor] = {}

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> Tensor | dict[str, Tensor]:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 1 + self.num_positives:
            raise ValueError(
                f"{type(self).__name__} expects a query column and {self.num_positives} positive columns "
                f"(num_positives={self.num_positives}), got {len(sentence_features)} columns in total."
            )
        guide_embeddings = self.embed_with_guide(sentence_features) if self.guide is not None else None
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels, guide_embeddings=guide_embeddings)

    def embed_with_guide(
        self, sentence_features: list[dict[str, Tensor]], mini_batch_size: int | None = None
    ) -> list[Tensor]:
        """The guide's embeddings of every column (no gradient; ``mini_batch_size`` rows at a time if set)."""
        return embed_with_guide(self.guide, self.model, sentence_features, self.guide_retokenizes, mini_batch_size)

    def split_columns(self, embeddings: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(queries (B, D), positives (B, P, D), negatives (B, N, D) or None)`` of the column embeddings."""
        positives = torch.stack(embeddings[1 : 1 + self.num_positives], dim=1)
        negative_columns = embeddings[1 + self.num_positives :]
        return embeddings[0], positives, torch.stack(negative_columns, dim=1) if negative_columns else None

    def gathers(self) -> bool:
        """Whether the passages are gathered across ranks for this batch."""
        return bool(
            self.gather_across_devices and self.in_batch_negatives and dist.is_available() and dist.is_initialized()
        )

    def gather_passages(
        self,
        queries: Tensor,
        positives: Tensor,
        negatives: Tensor | None,
        guide: tuple[Tensor, Tensor, Tensor | None] | None = None,
        loss_name: str | None = None,
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor, Tensor | None] | None, int]:
        """The passages of every rank, when this batch gathers them (:meth:`gathers`); else the local ones.

        Checks first that every rank holds the same batch, candidate and embedding sizes (a mismatch would hang or
        mis-align the collective; the error names ``loss_name``), then gathers the positives, the negatives and the
        guide's passage columns with gradients (``all_gather_with_grad``). Returns ``(positives, negatives, guide,
        query_offset)``: the offset is the row of this rank's first query among the gathered passages (0 when
        nothing is gathered). The queries stay local.
        """
        if not self.gathers():
            return positives, negatives, guide, 0
        check_same_sizes_across_ranks(
            {
                "batch": queries.size(0),
                "positives": positives.size(1),
                "negatives": 0 if negatives is None else negatives.size(1),
                "dim": queries.size(1),
            },
            loss_name or type(self).__name__,
            queries.device,
        )
        positives = all_gather_with_grad(positives)
        if negatives is not None:
            negatives = all_gather_with_grad(negatives)
        if guide is not None:
            guide = (guide[0], all_gather_with_grad(guide[1]), None if guide[2] is None else all_gather_with_grad(guide[2]))
        return positives, negatives, guide, dist.get_rank() * queries.size(0)

    def teacher_scores(self, labels: Tensor | None, batch_size: int, num_candidates: int) -> Tensor:
        """The labels of a batch as its ``(B, P + N)`` teacher scores (``distill_weight > 0``), checked."""
        if labels is None:
            raise ValueError(
                f"{type(self).__name__}(distill_weight={self.distill_weight}) needs the teacher scores of each query's "
                "positives and negatives as the batch's labels, got none: give every IR record positive_scores and "
                "negative_scores (FlagEmbedding: pos_scores, neg_scores) and collate with "
                "CoDiEmbDataCollator(keep_teacher_scores=True)."
            )
        if labels.shape != (batch_size, num_candidates):
            raise ValueError(
                f"{type(self).__name__}: teacher scores of shape {tuple(labels.shape)}, expected ({batch_size}, "
                f"{num_candidates}): one score per sampled positive and negative of each query."
            )
        return labels

    def compute_loss_from_embeddings(
        self,
        embeddings: list[Tensor],
        labels: Tensor | None = None,
        guide_embeddings: list[Tensor] | None = None,
    ) -> Tensor | dict[str, Tensor]:
        """Loss from the column embeddings ``[query, pos_0, ..., pos_{k-1}, neg_0, ...]`` (each ``(B, D)``).

        ``labels``: the teacher scores (``distill_weight > 0``); ``guide_embeddings``: the guide's embeddings of the
        same columns (with a ``guide``). Returns the loss, or with ``distill_weight > 0`` the dict
        ``{"info_nce", "distill_kl"}``.
        """
        queries, positives, negatives = self.split_columns(embeddings)
        local_positives, local_negatives = positives, negatives
        guide = None
        if self.guide is not None and self.margin is not None:
            if guide_embeddings is None:
                raise ValueError(f"{type(self).__name__} has a guide: pass guide_embeddings (see embed_with_guide).")
            guide = self.split_columns(guide_embeddings)
        positives, negatives, guide, offset = self.gather_passages(queries, positives, negatives, guide)
        options = {
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "similarity_fct": self.similarity_fct,
            "query_offset": offset,
            "in_batch_positives": self.in_batch_positives,
        }
        if self.margin is None:
            loss = multi_positive_info_nce(queries, positives, negatives, **options)
        else:
            loss, masked = masked_multi_positive_info_nce(
                queries, positives, negatives, **options, margin=self.margin, margin_strategy=self.margin_strategy,
                guide_embeddings=guide,
            )  # fmt: skip
            self._metrics = {"masked_candidates": masked}
        if not self.distill_weight:
            return loss
        num_candidates = local_positives.size(1) + (0 if local_negatives is None else local_negatives.size(1))
        teacher = self.teacher_scores(labels, queries.size(0), num_candidates)
        kl = teacher_distillation_kl(
            queries, local_positives, local_negatives, teacher, temperature=self.temperature,
            teacher_temperature=self.teacher_temperature, similarity_fct=self.similarity_fct,
        )  # fmt: skip
        return {"info_nce": loss, "distill_kl": self.distill_weight * kl}

    def pop_metrics(self) -> dict[str, Tensor]:
        """What the last batch measured besides the loss (``masked_candidates`` with ``margin``), then forgotten.

        ``CoDiEmbTrainer`` logs these values as ``<dataset>/<name>`` (averaged over the logged batches like the loss
        components) and never adds them to the loss.
        """
        metrics, self._metrics = self._metrics, {}
        return metrics

    def train(self, mode: bool = True) -> MultiPositiveInfoNCELoss:
        super().train(mode)
        if self.guide is not None:
            self.guide.eval()  # a guide never trains: no dropout in its judgement
        return self

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "num_positives": self.num_positives,
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "gather_across_devices": self.gather_across_devices,
            "similarity_fct": function_name(self.similarity_fct),
            "in_batch_positives": self.in_batch_positives,
            **self.option_config(),
        }

    def option_config(self) -> dict[str, Any]:
        """The config of the options that are on (none by default, so the default config is the reference's)."""
        config: dict[str, Any] = {}
        if self.margin is not None:
            config.update(margin=self.margin, margin_strategy=self.margin_strategy, guide=guide_name(self.guide))
        if self.distill_weight:
            config.update(distill_weight=self.distill_weight, teacher_temperature=self.teacher_temperature)
        return config

    @property
    def citation(self) -> str:
        citation = CODIEMB_CITATION
        if self.margin is not None:
            citation += GISTEMBED_CITATION
        if self.distill_weight:
            citation += FLAGEMBEDDING_CITATION
        return citation
