"""Data collator that samples positives and hard negatives of IR rows, then tokenizes like sentence-transformers."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

IR_LIST_COLUMNS = ("positives", "negatives")
DROPPED_COLUMNS = ("positive_scores", "negative_scores")


def sample_texts(texts: list[str], k: int, rng: random.Random) -> list[str]:
    """``k`` texts from ``texts``: without replacement when there are enough, with replacement otherwise."""
    if k == 0:
        return []
    if len(texts) >= k:
        return rng.sample(texts, k)
    return [rng.choice(texts) for _ in range(k)]


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

    Args:
        num_positives: Positives per IR query and step.
        num_negatives: Hard negatives per IR query and step (0 = in-batch negatives only).
        seed: Seed of the sampling.
    """

    num_positives: int = 2
    num_negatives: int = 4
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def expand_ir_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One IR row as the flat columns the IR loss expects."""
        expanded: dict[str, Any] = {key: value for key, value in row.items() if key not in (*IR_LIST_COLUMNS, *DROPPED_COLUMNS)}
        positives, negatives = row["positives"], row.get("negatives") or []
        if not positives:
            raise ValueError(f"IR row with query {row.get('query')!r} has no positives")
        if self.num_negatives and not negatives:
            raise ValueError(
                f"IR row with query {row.get('query')!r} has no negatives but num_negatives={self.num_negatives}; "
                "mine hard negatives for it or train with num_negatives=0"
            )
        for i, text in enumerate(sample_texts(list(positives), self.num_positives, self._rng)):
            expanded[f"positive_{i}"] = text
        for i, text in enumerate(sample_texts(list(negatives), self.num_negatives, self._rng)):
            expanded[f"negative_{i}"] = text
        return expanded

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if features and "positives" in features[0]:
            features = [self.expand_ir_row(row) for row in features]
        return super().__call__(features)
