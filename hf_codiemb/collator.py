"""Data collator that samples positives and hard negatives of IR rows, then tokenizes like sentence-transformers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch.utils.data
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from hf_codiemb.columns import IR_LIST_COLUMNS
from hf_codiemb.errors import TrainingDataError

# The teacher scores of IR rows: dropped, or with ``keep_teacher_scores`` turned into the batch's labels.
DROPPED_COLUMNS = ("positive_scores", "negative_scores")


def sample_indices(count: int, k: int, rng: random.Random) -> list[int]:
    """``k`` indices into ``count`` items: without replacement when there are enough, with replacement otherwise.

    The same draws as sampling the items themselves (``rng.sample(items, k)`` / ``rng.choice(items)`` look only at
    the length), so ``[items[i] for i in sample_indices(len(items), k, rng)]`` is :func:`sample_texts`.
    """
    if k == 0:
        return []
    if count >= k:
        return rng.sample(range(count), k)
    return [rng.choice(range(count)) for _ in range(k)]


def sample_texts(texts: list[str], k: int, rng: random.Random) -> list[str]:
    """``k`` texts from ``texts``: without replacement when there are enough, with replacement otherwise."""
    return [texts[index] for index in sample_indices(len(texts), k, rng)]


@dataclass
class CoDiEmbDataCollator(SentenceTransformerDataCollator):
    """
    Collator for mixed IR/STS training with sentence-transformers.

    IR rows (``query``, ``positives`` list, ``negatives`` list) are expanded into the columns
    ``query, positive_0 .. positive_{k+-1}, negative_0 .. negative_{k--1}``: ``num_positives`` positives and
    ``num_negatives`` hard negatives are sampled for every row at every step (without replacement when the row has
    enough, with replacement when fewer), as in the CoDiEmb reference. STS rows (``sentence1``, ``sentence2``,
    ``score``) pass through unchanged. Tokenization, prompts and labels are then handled by
    :class:`~sentence_transformers.sentence_transformer.data_collator.SentenceTransformerDataCollator`.

    The sampling of a batch is a pure function of ``(seed, epoch, index of the batch in the epoch)``: each batch gets
    its own :class:`random.Random` seeded from these three, so a run resumed from a checkpoint samples exactly the
    positives and negatives of the uninterrupted run, with nothing to save in the checkpoint. The trainer calls
    :meth:`set_epoch` at every epoch start (with the number of batches a resumed epoch skips); dataloader workers are
    accounted for (batch ``i`` of an epoch goes to worker ``i % num_workers``). Evaluation batches are sampled from a
    separate stream (:meth:`evaluation_sampling`) that restarts at every evaluation and never moves the training one.

    Token limits per column (FlagEmbedding's ``query_max_len`` / ``passage_max_len``): ``query_max_length``
    truncates the IR ``query`` column, ``passage_max_length`` the ``positive_*`` / ``negative_*`` columns; each
    column is still tokenized in one batch call, and a column without a limit (STS sentences, or a limit left
    unset) gets the model's ``max_seq_length`` as before.

    Teacher scores (``positive_scores`` / ``negative_scores``, FlagEmbedding's ``pos_scores`` / ``neg_scores``) are
    dropped, unless ``keep_teacher_scores``: then each IR row's ``label`` is the scores of its sampled positives,
    then of its sampled negatives (the same draws as the texts, so score ``k`` belongs to column ``k``), and the
    batch's labels are a ``(B, num_positives + num_negatives)`` tensor for the IR loss's distillation
    (:class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss` with ``distill_weight > 0``). A row without scores is then
    refused, naming its dataset, its query and the field.

    Args:
        num_positives: Positives per IR query and step.
        num_negatives: Hard negatives per IR query and step (0 = in-batch negatives only).
        seed: Seed of the sampling.
        query_max_length: Token limit of IR queries (prompt included); None = the model's max_seq_length.
        passage_max_length: Token limit of IR positives and negatives; None = the model's max_seq_length.
        keep_teacher_scores: Pass the teacher scores of the sampled positives and negatives as the labels [ours].
    """

    num_positives: int = 2
    num_negatives: int = 4
    #: Hard negatives per query of named datasets (a row's ``dataset_name``), overriding ``num_negatives``.
    dataset_num_negatives: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    query_max_length: int | None = None
    passage_max_length: int | None = None
    keep_teacher_scores: bool = False
    _column: str | None = field(default=None, init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)
    _epoch: int = field(default=0, init=False, repr=False)
    _first_batch: int = field(default=0, init=False, repr=False)
    _num_processes: int = field(default=1, init=False, repr=False)
    _process_index: int = field(default=0, init=False, repr=False)
    _batches_collated: int = field(default=0, init=False, repr=False)
    _evaluating: bool = field(default=False, init=False, repr=False)
    _eval_batches_collated: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, first_batch: int = 0, num_processes: int = 1, process_index: int = 0) -> None:
        """Key the sampling of the coming training batches on ``(seed, epoch, batch index)``.

        Args:
            epoch: The epoch about to start.
            first_batch: How many of this process's batches of the epoch are skipped (a run resumed mid-epoch skips
                the batches it already trained on; they are never collated).
            num_processes: The number of training processes; batch ``j`` of process ``r`` is batch
                ``j * num_processes + r`` of the epoch (accelerate hands batch ``i`` to process ``i % num_processes``).
            process_index: This process's index.
        """
        self._epoch = epoch
        self._first_batch = first_batch
        self._num_processes = num_processes
        self._process_index = process_index
        self._batches_collated = 0

    @contextmanager
    def evaluation_sampling(self) -> Iterator[None]:
        """Within this context, batches are sampled from the evaluation stream, restarted at its first batch."""
        evaluating, self._evaluating, self._eval_batches_collated = self._evaluating, True, 0
        try:
            yield
        finally:
            self._evaluating = evaluating

    def _next_batch_rng(self) -> random.Random:
        """The random generator of the batch being collated (advances the batch counter of its stream)."""
        worker = torch.utils.data.get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        if self._evaluating:
            local = self._eval_batches_collated * num_workers + worker_id
            self._eval_batches_collated += 1
            return random.Random(f"eval:{self.seed}:{self._process_index}:{local}")
        local = self._first_batch + self._batches_collated * num_workers + worker_id
        self._batches_collated += 1
        batch_index = local * self._num_processes + self._process_index
        return random.Random(f"train:{self.seed}:{self._epoch}:{batch_index}")

    def expand_ir_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One IR row as the flat columns the IR loss expects."""
        expanded: dict[str, Any] = {key: value for key, value in row.items() if key not in (*IR_LIST_COLUMNS, *DROPPED_COLUMNS)}
        positives, negatives = row["positives"], row.get("negatives") or []
        num_negatives = self.dataset_num_negatives.get(row.get("dataset_name"), self.num_negatives)
        if not positives:
            raise ValueError(f"IR row with query {row.get('query')!r} has no positives")
        if num_negatives and not negatives:
            raise ValueError(
                f"IR row with query {row.get('query')!r} has no negatives but num_negatives={num_negatives}; "
                "mine hard negatives for it or train with num_negatives=0"
            )
        positive_indices = sample_indices(len(positives), self.num_positives, self._rng)
        negative_indices = sample_indices(len(negatives), num_negatives, self._rng)
        for i, index in enumerate(positive_indices):
            expanded[f"positive_{i}"] = positives[index]
        for i, index in enumerate(negative_indices):
            expanded[f"negative_{i}"] = negatives[index]
        if self.keep_teacher_scores:
            expanded["label"] = [
                *self._teacher_scores(row, "positive_scores", "positives", positive_indices),
                *self._teacher_scores(row, "negative_scores", "negatives", negative_indices),
            ]
        return expanded

    @staticmethod
    def _teacher_scores(row: dict[str, Any], field: str, texts_field: str, indices: list[int]) -> list[float]:
        """The teacher scores of the sampled texts ``indices`` of ``row[texts_field]``, or a located error."""
        if not indices:
            return []
        scores, texts = row.get(field), row.get(texts_field) or []
        if scores is None or len(scores) != len(texts) or any(score is None for score in scores):
            dataset = row.get("dataset_name")
            where = f"Training dataset {dataset!r}, " if dataset else ""
            problem = "missing" if scores is None else f"{len(scores)} scores for {len(texts)} {texts_field}"
            raise TrainingDataError(
                f"{where}IR row with query {row.get('query')!r}, field {field!r}: {problem}; distillation "
                "(distill_weight > 0) needs one teacher score per positive and negative."
            )
        return [float(scores[index]) for index in indices]

    def column_max_length(self, column: str) -> int | None:
        """The token limit of ``column``: the query or passage limit for IR columns, None (the model's) otherwise."""
        if column == "query":
            return self.query_max_length
        if column.startswith(("positive_", "negative_")):
            return self.passage_max_length
        return None

    def _get_task_for_column(self, column_name: str, column_position: int, router_mapping: dict[str, str]) -> str | None:
        # The parent resolves a column's task, then its max length (from the task only): remember the column.
        self._column = column_name
        return super()._get_task_for_column(column_name, column_position, router_mapping)

    def _get_max_length_for_task(self, task: str | None) -> int | None:
        limit = self.column_max_length(self._column) if self._column is not None else None
        return limit if limit is not None else super()._get_max_length_for_task(task)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        self._rng = self._next_batch_rng()
        if features and "positives" in features[0]:
            features = [self.expand_ir_row(row) for row in features]
        return super().__call__(features)
