"""Typed evaluation sets: what every builder of evaluation data returns and the evaluators take."""

from __future__ import annotations

import dataclasses
from typing import Any

from datasets import Dataset


@dataclasses.dataclass
class IREvalSet:
    """A retrieval evaluation set: queries, corpus and relevant documents, with the prompts to encode them.

    Attributes:
        name: the set's name (logs, metric keys, the model card).
        queries / corpus: ``{id: text}``.
        relevant: ``{query id: {corpus id, ...}}``.
        query_prompt / corpus_prompt: the prompts training derives for the set (``None``: none).
        ignore_identical_text: skip a retrieved document whose text equals the query's when it is not relevant
            (the STS-derived tasks; BEIR sets rank it like any other).
    """

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    query_prompt: str | None = None
    corpus_prompt: str | None = None
    ignore_identical_text: bool = True

    def evaluator_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`hf_codiemb.evaluation.evaluate_ir` for this set (all but the name)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "name"}


@dataclasses.dataclass
class STSEvalSet:
    """An STS evaluation set: pairs with gold scores (``sentence1, sentence2, score``) and the prompt of both."""

    name: str
    data: Dataset
    prompt: str | None = None
