"""The one rule set of a record: what a valid IR record and a valid STS pair are.

Every reader applies these functions and nothing else decides whether a record is valid: the line-by-line reader
calls them on every record, the Arrow reader (:mod:`hf_codiemb.data.arrow_reader`) calls them on the rows its
vectorised screen could not clear, and on the first refusal the file is read line by line so that the error names
its line. A refusal is a :class:`DataFormatError` naming the source, the 1-based line (or row) and the field.

Record layouts (see ``docs/design.md``, "Dataset columns"):

- ``unified``: ``task``, ``query``, ``positives``, ``negatives``, ``positive_scores``, ``negative_scores``,
  ``instruction``;
- ``flagembedding``: ``query``, ``pos``, ``neg``, ``pos_scores``, ``neg_scores``, ``prompt`` (IR only);
- ``reference`` (TencentCloudADP/youtu-embedding, ``training/CoDiEmb``): ``task_type``, ``query`` =
  ``[task instruction, instance instruction, text]``, ``positives`` / ``negatives`` = lists of such triples,
  ``positive_scores``, ``negative_scores``; :func:`unified_from_reference` maps it onto the unified layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hf_codiemb.errors import DataError

IR_RECORD_FORMATS = ("unified", "flagembedding", "reference")
# Field names per IR record layout: (positives, negatives, positive scores, negative scores, instruction)
IR_FIELDS = {
    "unified": ("positives", "negatives", "positive_scores", "negative_scores", "instruction"),
    "flagembedding": ("pos", "neg", "pos_scores", "neg_scores", "prompt"),
    "reference": ("positives", "negatives", "positive_scores", "negative_scores", "instruction"),
}
# The reference strips these characters from each part of a triple and keeps 512 characters of an instance
# instruction (its collator's ``build_query`` / ``build_passage``).
REFERENCE_STRIP = "\t\n :"
REFERENCE_INSTANCE_CHARS = 512


class DataFormatError(DataError):
    """A record that breaks the unified data format (a :class:`~hf_codiemb.errors.DataError`).

    Attributes:
        source: the file path or dataset name.
        line: the 1-based line number (files) or row number (datasets), or ``None`` for a whole-source problem.
        field: the offending field (column), or ``None`` when the record as a whole is malformed.
        problem: what is wrong, without the location.
    """

    def __init__(self, source: str, line: int | None, field: str | None, problem: str) -> None:
        self.source = str(source)
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(self._format())

    def _format(self) -> str:
        parts = [self.source]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts) + f": {self.problem}"

    def __reduce__(self):  # keep the exception picklable (multiprocessing, datasets.map)
        return (type(self), (self.source, self.line, self.field, self.problem))


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------------
# Field rules
# --------------------------------------------------------------------------------------------------------------


def check_unicode(text: str, field: str, name: str, line: int | None, item: int | None = None) -> None:
    """Reject text that cannot be encoded as UTF-8: a lone surrogate (e.g. a JSON ``"\\ud800"`` escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = f"item {item} " if item is not None else ""
        raise DataFormatError(
            name,
            line,
            field,
            f"{where}contains a lone surrogate {text[exc.start]!r} at character {exc.start + 1}, which is not valid "
            "Unicode (a broken \\uXXXX escape?)",
        ) from None


def require_text(record: Mapping[str, Any], field: str, name: str, line: int | None) -> str:
    """The non-blank string ``record[field]``."""
    if field not in record or record[field] is None:
        raise DataFormatError(name, line, field, "missing")
    value = record[field]
    if not isinstance(value, str):
        raise DataFormatError(name, line, field, f"must be a string, got {type(value).__name__} {short_repr(value)}")
    if not value.strip():
        raise DataFormatError(name, line, field, f"must be a non-empty string, got {value!r}")
    check_unicode(value, field, name, line)
    return value


def require_text_list(
    record: Mapping[str, Any], field: str, name: str, line: int | None, *, allow_empty: bool, default_empty: bool
) -> list[str]:
    """The list of non-blank strings ``record[field]`` (``[]`` for a missing field when ``default_empty``)."""
    expected = "a list of strings" if allow_empty else "a non-empty list of strings"
    if field not in record or record[field] is None:
        if default_empty:
            return []
        raise DataFormatError(name, line, field, f"missing (must be {expected})")
    value = record[field]
    if not isinstance(value, list):
        raise DataFormatError(name, line, field, f"must be {expected}, got {type(value).__name__} {short_repr(value)}")
    if not value and not allow_empty:
        raise DataFormatError(name, line, field, f"must be {expected}, got []")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise DataFormatError(
                name, line, field, f"item {index} must be a string, got {type(item).__name__} {short_repr(item)}"
            )
        if not item.strip():
            raise DataFormatError(name, line, field, f"item {index} must be a non-empty string, got {item!r}")
        check_unicode(item, field, name, line, index)
    return list(value)


def check_score(value: Any, field: str, name: str, line: int | None, score_range: tuple[float, float] | None) -> float:
    """Convert ``value`` to a finite float inside ``score_range`` or raise :class:`DataFormatError`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataFormatError(name, line, field, "missing score")
    if isinstance(value, bool):
        raise DataFormatError(name, line, field, f"must be a number, got {value!r}")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DataFormatError(name, line, field, f"must be a number, got {short_repr(value)}") from None
    if not math.isfinite(score):
        raise DataFormatError(name, line, field, f"must be a finite number, got {value!r}")
    if score_range is not None:
        low, high = score_range
        if not low <= score <= high:
            raise DataFormatError(name, line, field, f"score {score:g} is outside the declared range [{low:g}, {high:g}]")
    return score


def scores_for(
    record: Mapping[str, Any],
    field: str,
    texts: list[str],
    name: str,
    line: int | None,
    *,
    required: bool,
    score_range: tuple[float, float] | None = None,
) -> list[float] | None:
    """The scores of ``field``, one finite number per text of ``texts``; ``None`` when absent and not required."""
    value = record.get(field)
    if value is None:
        if required:
            raise DataFormatError(name, line, field, "missing score (STS records need one score per text)")
        return None
    if not isinstance(value, list):
        raise DataFormatError(name, line, field, f"must be a list of numbers, got {type(value).__name__}")
    if len(value) != len(texts):
        raise DataFormatError(
            name, line, field, f"has {len(value)} scores for {len(texts)} texts (must be one score per text)"
        )
    return [check_score(item, field, name, line, score_range) for item in value]


def check_task(record: Mapping[str, Any], expected: str, name: str, line: int | None, field: str = "task") -> None:
    """A record's task, when it names one, must be the task its source is loaded as."""
    task = record.get(field)
    if task is None:
        return
    if not isinstance(task, str) or task.lower() != expected:
        raise DataFormatError(
            name,
            line,
            field,
            f"is {task!r} but this source is loaded as a {expected!r} dataset "
            "(every dataset file belongs to exactly one task)",
        )


def optional_instruction(record: Mapping[str, Any], field: str, name: str, line: int | None) -> str | None:
    """The record's task instruction (a string) or ``None``."""
    instruction = record.get(field)
    if instruction is not None and not isinstance(instruction, str):
        raise DataFormatError(name, line, field, f"must be a string, got {type(instruction).__name__}")
    return instruction


# --------------------------------------------------------------------------------------------------------------
# The reference's layout
# --------------------------------------------------------------------------------------------------------------


def is_reference_record(record: Mapping[str, Any]) -> bool:
    """Whether a record is in the reference's layout (``task_type``, or a list-valued ``query``)."""
    return "task_type" in record or isinstance(record.get("query"), list)


def _reference_triple(value: Any, field: str, name: str, line: int | None, item: int | None) -> tuple[str, str]:
    """``(task instruction, text)`` of a reference triple; the text is the instance instruction + the text."""
    where = f"item {item} " if item is not None else ""
    if not isinstance(value, list) or len(value) != 3 or not all(isinstance(part, str) for part in value):
        raise DataFormatError(
            name,
            line,
            field,
            f"{where}must be a list of 3 strings [task instruction, instance instruction, text], got "
            f"{short_repr(value)}",
        )
    task_instruction, instance, text = (part.strip(REFERENCE_STRIP) for part in value)
    if not text.strip():
        raise DataFormatError(name, line, field, f"{where}has an empty text (its third string), got {value[2]!r}")
    return task_instruction, instance[:REFERENCE_INSTANCE_CHARS] + text


def unified_from_reference(record: Mapping[str, Any], name: str, line: int | None) -> dict[str, Any]:
    """Map a record of the reference's layout onto the unified layout (what its collator builds).

    The query's task instruction becomes ``instruction`` (the prompt ``instruction_template`` of the query, and of
    both sentences of an STS pair); the instance instruction is kept in front of the text, as the reference does
    (each part stripped of tabs, newlines, blanks and colons; 512 characters of the instance instruction).
    Passages' task instructions are ignored for IR (the reference gives passages no task instruction); an STS
    record's must be the query's or empty, since both sentences are encoded with one prompt.
    """
    instruction, query = _reference_triple(record.get("query"), "query", name, line, None)
    unified: dict[str, Any] = {"task": record.get("task_type"), "query": query}
    for field in ("positives", "negatives"):
        value = record.get(field)
        if value is None:
            continue
        if not isinstance(value, list):
            raise DataFormatError(name, line, field, f"must be a list of [task instruction, instance instruction, "
                                  f"text] triples, got {type(value).__name__} {short_repr(value)}")  # fmt: skip
        texts = []
        for index, triple in enumerate(value):
            task_instruction, text = _reference_triple(triple, field, name, line, index)
            if str(record.get("task_type", "")).lower() == "sts" and task_instruction not in ("", instruction):
                raise DataFormatError(name, line, field, f"item {index} has the task instruction "
                                      f"{task_instruction!r}, the query {instruction!r} (an STS pair has one)")  # fmt: skip
            texts.append(text)
        unified[field] = texts
    for field in ("positive_scores", "negative_scores"):
        if field in record:
            unified[field] = record[field]
    if instruction:
        unified["instruction"] = instruction
    return unified


# --------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------


def detect_ir_record_format(record: Mapping[str, Any], name: str, line: int | None) -> str:
    """The layout of an IR record: ``reference``, ``unified`` or ``flagembedding``."""
    if is_reference_record(record):
        return "reference"
    if "positives" in record:
        return "unified"
    if "pos" in record:
        return "flagembedding"
    raise DataFormatError(
        name,
        line,
        "positives",
        "missing (expected the unified format with 'positives' or the FlagEmbedding format with 'pos')",
    )


def _query_and_texts(
    record: Mapping[str, Any], task: str, fields: tuple[str, str], name: str, line: int | None, *, reference: bool
) -> tuple[Mapping[str, Any], str, list[str], list[str]]:
    """``(record in the unified layout, query, positives, negatives)`` of a record of ``task``: the task checked,
    the query a non-blank string, at least one positive, the negatives possibly absent (``fields``: their names)."""
    if reference:
        check_task(record, task, name, line, "task_type")
        record = unified_from_reference(record, name, line)
    check_task(record, task, name, line)
    query = require_text(record, "query", name, line)
    positives = require_text_list(record, fields[0], name, line, allow_empty=False, default_empty=False)
    negatives = require_text_list(record, fields[1], name, line, allow_empty=True, default_empty=True)
    return record, query, positives, negatives


def parse_ir_record(record: Mapping[str, Any], record_format: str, name: str, line: int | None) -> dict[str, Any]:
    """Validate one IR record of ``record_format`` and return it in the unified columns."""
    pos_field, neg_field, pos_scores_field, neg_scores_field, instruction_field = IR_FIELDS[record_format]
    record, query, positives, negatives = _query_and_texts(
        record, "ir", (pos_field, neg_field), name, line, reference=record_format == "reference"
    )
    parsed: dict[str, Any] = {"query": query, "positives": positives, "negatives": negatives}
    for field, key, texts in ((pos_scores_field, "positive_scores", positives),
                              (neg_scores_field, "negative_scores", negatives)):  # fmt: skip
        scores = scores_for(record, field, texts, name, line, required=False)
        if scores is not None:
            parsed[key] = scores
    instruction = optional_instruction(record, instruction_field, name, line)
    if instruction is not None:
        parsed["instruction"] = instruction
    return parsed


def sts_pairs_from_record(
    record: Mapping[str, Any], name: str, line: int | None, score_range: tuple[float, float] | None
) -> list[dict[str, Any]]:
    """Turn one unified (or reference) STS record into its ``(sentence1, sentence2, score)`` pairs.

    ``query=s1, positives=[s2], positive_scores=[y]`` is one pair; several positives (and negatives with
    ``negative_scores``) give one pair each.
    """
    record, sentence1, positives, negatives = _query_and_texts(
        record, "sts", ("positives", "negatives"), name, line, reference=is_reference_record(record)
    )
    pairs = []
    for texts, field in ((positives, "positive_scores"), (negatives, "negative_scores")):
        if not texts:
            continue
        scores = scores_for(record, field, texts, name, line, required=True, score_range=score_range)
        pairs += [{"sentence1": sentence1, "sentence2": text, "score": score} for text, score in zip(texts, scores)]
    instruction = optional_instruction(record, "instruction", name, line)
    if instruction is not None:
        for pair in pairs:
            pair["instruction"] = instruction
    return pairs


def sts_pair_from_row(
    row: Mapping[str, Any], name: str, line: int | None, score_range: tuple[float, float] | None
) -> dict[str, Any]:
    """Validate a ``sentence1, sentence2, score`` row (a dataset row or a parsed tsv line)."""
    score_field = "score" if "score" in row else ("label" if "label" in row else "score")
    return {
        "sentence1": require_text(row, "sentence1", name, line),
        "sentence2": require_text(row, "sentence2", name, line),
        "score": check_score(row.get(score_field), score_field, name, line, score_range),
    }
