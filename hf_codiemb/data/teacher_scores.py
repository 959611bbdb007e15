"""Teacher scores of IR records, for distillation: every sampled positive and negative needs one.

IR records may carry teacher scores (e.g. a reranker's) of their positives and negatives: ``positive_scores`` /
``negative_scores`` in the unified format, ``pos_scores`` / ``neg_scores`` in FlagEmbedding's (the loaders read both
into ``positive_scores`` / ``negative_scores``). Only distillation reads them (``distill_weight > 0``, see
:class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss`); it needs one finite score per text of every row, and refuses a
dataset otherwise before training starts, naming the dataset, the row and the field.
"""

from __future__ import annotations

import math
from typing import Any

from datasets import Dataset

from hf_codiemb.errors import TrainingDataError

TEACHER_SCORE_FIELDS = {"positives": "positive_scores", "negatives": "negative_scores"}


def _problem(scores: Any, texts: list[str]) -> str | None:
    """What is wrong with the teacher scores of one row's texts, or ``None``."""
    if scores is None:
        return "missing"
    if not isinstance(scores, (list, tuple)):
        return f"must be a list of numbers, got {type(scores).__name__}"
    if len(scores) != len(texts):
        return f"has {len(scores)} scores for {len(texts)} texts (must be one score per text)"
    for index, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            return f"item {index} is {score!r}, not a finite number"
    return None


def check_teacher_scores(name: str, dataset: Dataset, num_negatives: int) -> None:
    """Refuse IR dataset ``name`` unless every row has a finite teacher score per positive (and, when negatives are
    sampled, per negative).

    Args:
        name: The dataset's name in the training run.
        dataset: Its rows (``positives``, ``negatives``, ``positive_scores``, ``negative_scores``).
        num_negatives: Hard negatives sampled per query for this dataset (0: negative scores are not needed).

    Raises:
        TrainingDataError: ``Training dataset 'x' (ir), row N, field 'positive_scores': ...`` (rows counted from 0,
            as the other training-data checks do).
    """
    columns = set(dataset.column_names)
    fields = ["positives"] + (["negatives"] if num_negatives > 0 else [])
    for texts_field in fields:
        field = TEACHER_SCORE_FIELDS[texts_field]
        if field not in columns:
            raise TrainingDataError(
                f"Training dataset {name!r} (ir): no {field!r} column, but distillation (distill_weight > 0) needs a "
                "teacher score per positive and negative of every record (unified: positive_scores / "
                "negative_scores; FlagEmbedding: pos_scores / neg_scores). Add the scores or set distill_weight: 0."
            )
    for texts_field in fields:
        field = TEACHER_SCORE_FIELDS[texts_field]
        if texts_field not in columns:
            continue
        for row, (texts, scores) in enumerate(zip(dataset[texts_field], dataset[field])):
            problem = _problem(scores, texts or [])
            if problem is not None and (texts or scores is not None):
                raise TrainingDataError(
                    f"Training dataset {name!r} (ir), row {row}, field {field!r}: {problem}; distillation "
                    "(distill_weight > 0) needs one teacher score per positive and negative."
                )
