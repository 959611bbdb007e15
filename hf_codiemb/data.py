"""The unified CoDiEmb data format: loading and validation.

One record is one training example of one task (see ``docs/design.md``, "Dataset columns"):

- **IR** datasets have the columns ``query`` (str), ``positives`` (list[str], at least one) and ``negatives``
  (list[str], possibly empty), plus ``positive_scores`` / ``negative_scores`` (list[float]) when every record
  of the source has them.
- **STS** datasets have the columns ``sentence1`` (str), ``sentence2`` (str) and ``score`` (float).

Accepted inputs:

- JSON Lines in the unified format: ``task``, ``query``, ``positives``, ``negatives``, optional
  ``positive_scores`` / ``negative_scores`` and ``instruction``. An STS triple ``(s1, s2, y)`` is
  ``{"task": "sts", "query": s1, "positives": [s2], "positive_scores": [y]}``.
- JSON Lines in the FlagEmbedding format ``{query, pos, neg}`` (optional ``pos_scores`` / ``neg_scores`` /
  ``prompt``), for IR.
- The STS Benchmark tsv (``split, genre, dataset, year, sid, score, sentence1, sentence2``), the Chinese
  STS-B / generic ``s1 <TAB> s2 <TAB> score`` tsv, for STS.
- A :class:`datasets.Dataset` with the corresponding columns.

Every record is validated; a record that breaks the format raises :class:`DataFormatError` naming the
source, the 1-based line (or row) and the field.

Files are read in Arrow: pyarrow parses them in chunks, each chunk is validated and normalised with vectorised Arrow
compute, and a ``datasets`` builder writes the result into the datasets cache (``HF_DATASETS_CACHE``, or
``cache_dir``), keyed by the file's path, size and modification time and the loader's options. The dataset is
memory-mapped from there, and loading the same file again (a second run, the other ranks of a DDP job) reuses it.
When the Arrow reader refuses a file, the line-by-line reader reads it to report the first broken record with its
line and field (and loads it, with a warning, when only the Arrow reader refused it).

Files are read as UTF-8 (a byte order mark is skipped); gzip-compressed files are decompressed on the fly, whatever
their suffix. Loaded data that is valid but probably wrong (duplicated records, a query equal to one of its
passages, all-equal STS scores) is logged once per file by :func:`warn_suspicious_records`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib.resources
import io
import itertools
import json
import logging
import math
import os
import pathlib
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as paj
import xxhash
from datasets import Dataset
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from tqdm.auto import tqdm

from hf_codiemb.columns import IR_COLUMNS, STS_COLUMNS, TASKS, task_columns  # the first three re-exported
from hf_codiemb.errors import DataError, DataFileNotFoundError

logger = logging.getLogger(__name__)

__all__ = [
    "IR_COLUMNS",
    "STS_COLUMNS",
    "TASKS",
    "DataFormatError",
    "demo_data_path",
    "ir_task_from_sts_pairs",
    "ir_train_from_sts_pairs",
    "labelled_pairs_from_ir_records",
    "load_dataset_for_task",
    "load_ir_dataset",
    "load_sts_dataset",
    "suspicious_record_counts",
    "warn_suspicious_records",
]


# Files larger than this get a tqdm progress bar while they are read.
_PROGRESS_BAR_MIN_BYTES = 32 * 1024 * 1024
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}


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


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _source_name(source: Any, name: str | None) -> str:
    """The name errors and warnings give a source: a file's full path (whatever ``name`` says), else ``name``."""
    if not isinstance(source, Dataset):
        return os.path.abspath(os.fspath(source))
    if name is not None:
        return name
    return f"dataset {source.info.dataset_name!r}" if source.info.dataset_name else "dataset"


def _check_path(source: str | os.PathLike[str]) -> pathlib.Path:
    path = pathlib.Path(source)
    if path.is_dir():
        raise DataError(f"{os.path.abspath(path)}: is a directory, not a data file (give the .jsonl/.tsv file in it)")
    if not path.is_file():
        raise DataFileNotFoundError(f"data file not found: {os.path.abspath(path)}")
    return path


def _maybe_progress(lines: Iterable[str], path: pathlib.Path) -> Iterable[str]:
    """Wrap ``lines`` in a progress bar when ``path`` is big enough for one to be useful."""
    if path.stat().st_size < _PROGRESS_BAR_MIN_BYTES:
        return lines
    return tqdm(lines, desc=f"Reading {path.name}", unit=" lines")


_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"


def _is_gzip(path: pathlib.Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _data_suffix(path: pathlib.Path) -> str:
    """The suffix that tells the format: ``.jsonl`` for ``x.jsonl`` and for ``x.jsonl.gz``."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _field_of_bad_bytes(raw: bytes, columns: tuple[str, ...] | None) -> str | None:
    """The field of a line that holds its first byte that is not UTF-8: the key of a JSON object line, else the
    tab-separated column (named by ``columns``, or ``"column N"``); ``None`` when it cannot be told."""
    text = raw.decode("utf-8", "surrogateescape")  # each bad byte becomes one character U+DC80..U+DCFF

    def escaped(value: Any) -> bool:
        return isinstance(value, str) and any("\udc80" <= char <= "\udcff" for char in value)

    if columns is None:
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict):
            for key, value in record.items():
                if escaped(key) or escaped(value) or (isinstance(value, list) and any(map(escaped, value))):
                    return str(key)
            return None
    first = next(index for index, char in enumerate(text) if "\udc80" <= char <= "\udcff")
    column = text[:first].count("\t")
    return columns[column] if columns and column < len(columns) else f"column {column + 1}"


def _iter_text_lines(
    path: pathlib.Path, name: str, progress: bool = True, columns: tuple[str, ...] | None = None
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line of a UTF-8 text file, without its line terminator.

    gzip-compressed files (detected from their first bytes, whatever their suffix) are decompressed on the fly and
    numbered by their decompressed lines; a UTF-8 byte order mark at the start is skipped. Bytes that are not
    UTF-8 and a corrupt or truncated gzip stream raise :class:`DataFormatError` naming the file and the line; for
    bytes that are not UTF-8 also the field (:func:`_field_of_bad_bytes`; ``columns`` names a tab-separated file's
    columns).
    """
    compressed = _is_gzip(path)
    line_number = 0
    try:
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as handle:
            for line_number, raw in enumerate(_maybe_progress(handle, path) if progress else handle, start=1):
                if line_number == 1 and raw.startswith(_UTF8_BOM):
                    raw = raw[len(_UTF8_BOM) :]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataFormatError(
                        name,
                        line_number,
                        _field_of_bad_bytes(raw, columns),
                        f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line); "
                        "save the file as UTF-8",
                    ) from None
                yield line_number, text.rstrip("\r\n")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataFormatError(
            name, line_number + 1, None, f"corrupt or truncated gzip data ({exc or type(exc).__name__})"
        ) from None


def _iter_jsonl(path: pathlib.Path, name: str, progress: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every non-blank line of a JSON Lines file (plain or gzip)."""
    for line_number, line in _iter_text_lines(path, name, progress):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(
                name, line_number, None, f"invalid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        if not isinstance(record, dict):
            raise DataFormatError(name, line_number, None, f"must be a JSON object, got {type(record).__name__}")
        yield line_number, record


def _iter_dataset_rows(dataset: Dataset) -> Iterator[tuple[int, dict[str, Any]]]:
    yield from enumerate(dataset, start=1)


def _require_text(record: Mapping[str, Any], field: str, name: str, line: int | None) -> str:
    if field not in record or record[field] is None:
        raise DataFormatError(name, line, field, "missing")
    value = record[field]
    if not isinstance(value, str):
        raise DataFormatError(name, line, field, f"must be a string, got {type(value).__name__} {_short_repr(value)}")
    if not value.strip():
        raise DataFormatError(name, line, field, f"must be a non-empty string, got {value!r}")
    _check_unicode(value, field, name, line)
    return value


def _check_unicode(text: str, field: str, name: str, line: int | None, item: int | None = None) -> None:
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


def _require_text_list(
    record: Mapping[str, Any], field: str, name: str, line: int | None, *, allow_empty: bool, default_empty: bool
) -> list[str]:
    expected = "a list of strings" if allow_empty else "a non-empty list of strings"
    if field not in record or record[field] is None:
        if default_empty:
            return []
        raise DataFormatError(name, line, field, f"missing (must be {expected})")
    value = record[field]
    if not isinstance(value, list):
        raise DataFormatError(
            name, line, field, f"must be {expected}, got {type(value).__name__} {_short_repr(value)}"
        )
    if not value and not allow_empty:
        raise DataFormatError(name, line, field, f"must be {expected}, got []")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise DataFormatError(
                name, line, field, f"item {index} must be a string, got {type(item).__name__} {_short_repr(item)}"
            )
        if not item.strip():
            raise DataFormatError(name, line, field, f"item {index} must be a non-empty string, got {item!r}")
        _check_unicode(item, field, name, line, index)
    return list(value)


def _check_score(
    value: Any, field: str, name: str, line: int | None, score_range: tuple[float, float] | None
) -> float:
    """Convert ``value`` to a finite float inside ``score_range`` or raise :class:`DataFormatError`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataFormatError(name, line, field, "missing score")
    if isinstance(value, bool):
        raise DataFormatError(name, line, field, f"must be a number, got {value!r}")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DataFormatError(name, line, field, f"must be a number, got {_short_repr(value)}") from None
    if not math.isfinite(score):
        raise DataFormatError(name, line, field, f"must be a finite number, got {value!r}")
    if score_range is not None:
        low, high = score_range
        if not low <= score <= high:
            raise DataFormatError(
                name, line, field, f"score {score:g} is outside the declared range [{low:g}, {high:g}]"
            )
    return score


def _optional_scores(
    record: Mapping[str, Any], field: str, expected_len: int, name: str, line: int | None
) -> list[float] | None:
    """Validate an optional list of scores that must match its texts one to one."""
    if field not in record or record[field] is None:
        return None
    value = record[field]
    if not isinstance(value, list):
        raise DataFormatError(name, line, field, f"must be a list of numbers, got {type(value).__name__}")
    if len(value) != expected_len:
        raise DataFormatError(
            name, line, field, f"has {len(value)} scores for {expected_len} texts (must be one score per text)"
        )
    return [_check_score(item, field, name, line, None) for item in value]


def _check_task(record: Mapping[str, Any], expected: str, name: str, line: int | None) -> None:
    task = record.get("task")
    if task is None:
        return
    if not isinstance(task, str) or task.lower() != expected:
        raise DataFormatError(
            name,
            line,
            "task",
            f"is {task!r} but this source is loaded as a {expected!r} dataset "
            "(every dataset file belongs to exactly one task)",
        )


def _check_max_records(max_records: int | None) -> None:
    if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
        raise ValueError(f"max_records must be a positive integer or None, got {max_records!r}")


# --------------------------------------------------------------------------------------------------------------
# IR
# --------------------------------------------------------------------------------------------------------------

_IR_FORMATS = ("auto", "unified", "flagembedding", "dataset")
# Field names per IR record format: (positives, negatives, positive scores, negative scores, instruction)
_IR_FIELDS = {
    "unified": ("positives", "negatives", "positive_scores", "negative_scores", "instruction"),
    "flagembedding": ("pos", "neg", "pos_scores", "neg_scores", "prompt"),
}


def _detect_ir_record_format(record: Mapping[str, Any], name: str, line: int | None) -> str:
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


def _parse_ir_record(record: Mapping[str, Any], record_format: str, name: str, line: int | None) -> dict[str, Any]:
    """Validate one IR record and convert it to the unified columns."""
    pos_field, neg_field, pos_scores_field, neg_scores_field, instruction_field = _IR_FIELDS[record_format]
    _check_task(record, "ir", name, line)
    query = _require_text(record, "query", name, line)
    positives = _require_text_list(record, pos_field, name, line, allow_empty=False, default_empty=False)
    negatives = _require_text_list(record, neg_field, name, line, allow_empty=True, default_empty=True)
    parsed: dict[str, Any] = {"query": query, "positives": positives, "negatives": negatives}
    positive_scores = _optional_scores(record, pos_scores_field, len(positives), name, line)
    negative_scores = _optional_scores(record, neg_scores_field, len(negatives), name, line)
    if positive_scores is not None:
        parsed["positive_scores"] = positive_scores
    if negative_scores is not None:
        parsed["negative_scores"] = negative_scores
    instruction = record.get(instruction_field)
    if instruction is not None:
        if not isinstance(instruction, str):
            raise DataFormatError(name, line, instruction_field, f"must be a string, got {type(instruction).__name__}")
        parsed["instruction"] = instruction
    return parsed


def _iter_ir_source(source: Any, format: str, name: str) -> Iterator[tuple[int, dict[str, Any], str]]:
    """Yield ``(line, raw_record, record_format)`` from a file or dataset."""
    if format not in _IR_FORMATS:
        raise ValueError(f"unknown IR data format {format!r}; expected one of {_IR_FORMATS}")
    if isinstance(source, Dataset):
        rows = _iter_dataset_rows(source)
    else:
        if format == "dataset":
            raise TypeError(f"format='dataset' needs a datasets.Dataset, got {type(source).__name__}")
        rows = _iter_jsonl(_check_path(source), name)
    record_format = format if format in _IR_FIELDS else None
    for line, record in rows:
        if record_format is None:  # auto: the first record decides, later records must follow it
            record_format = _detect_ir_record_format(record, name, line)
        yield line, record, record_format


def load_ir_dataset(
    source: str | os.PathLike[str] | Dataset,
    *,
    format: str = "auto",
    name: str | None = None,
    max_records: int | None = None,
    keep_instruction: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load and validate an IR training dataset.

    A file is read, validated and normalised in Arrow (vectorised, chunk by chunk) and cached in the ``datasets``
    cache, keyed by the file's path, size and modification time and the options: the result is memory-mapped, and
    loading the same file again (e.g. on the other ranks of a DDP job) reuses it. When the Arrow reader refuses the
    file, the line-by-line reader reads it again to report the first broken record with its line and field.

    Args:
        source: a JSON Lines file (unified or FlagEmbedding format) or a :class:`datasets.Dataset` whose
            columns are those of one of these formats.
        format: ``"auto"`` (detected from the first record), ``"unified"``, ``"flagembedding"`` or
            ``"dataset"``.
        name: the name of a :class:`datasets.Dataset` source in error messages and logs (files are always named
            by their full path).
        max_records: keep only the first ``max_records`` records.
        keep_instruction: keep an ``instruction`` column when every record has one. Off by default: the
            trainer takes instructions from the per-dataset ``prompts`` of the training arguments
            (``docs/design.md``), and an extra text column would be fed to the model.
        cache_dir: the cache folder of files read in Arrow; defaults to the ``datasets`` cache (HF_DATASETS_CACHE).

    Returns:
        A dataset with the columns ``query``, ``positives``, ``negatives`` and, when every record has them,
        ``positive_scores`` / ``negative_scores``.

    Raises:
        DataFormatError: a record breaks the format (the message names source, line and field).
        DataFileNotFoundError: ``source`` is a path that does not exist (a ``FileNotFoundError``).
        DataError: ``source`` is a directory.
    """
    _check_max_records(max_records)
    source_name = _source_name(source, name)
    arrow_refused = None
    if not isinstance(source, Dataset) and format in ("auto", *_IR_FIELDS):
        path = _check_path(source)
        record_format = format if format in _IR_FIELDS else _first_ir_record_format(path, source_name)
        dataset, arrow_refused = _try_arrow(
            lambda: _read_with_arrow(path, "ir", record_format, max_records=max_records, cache_dir=cache_dir),
            source_name,
        )
        if dataset is not None:
            return _finish_arrow_ir(dataset, source_name, keep_instruction)
    records: list[dict[str, Any]] = []
    for line, raw, record_format in _iter_ir_source(source, format, source_name):
        records.append(_parse_ir_record(raw, record_format, source_name, line))
        if max_records is not None and len(records) >= max_records:
            break
    if not records:
        raise DataFormatError(source_name, None, None, "contains no records")
    columns = list(IR_COLUMNS) + _consistent_optional_columns(
        records, ["positive_scores", "negative_scores"] + (["instruction"] if keep_instruction else []), source_name
    )
    _log_instructions(records, source_name)
    warn_suspicious_records(records, "ir", source_name)
    if arrow_refused is not None:
        _warn_line_by_line(source_name, arrow_refused)
    logger.info("Loaded %d IR records from %s", len(records), source_name)
    return Dataset.from_dict({column: [record[column] for record in records] for column in columns})


def _first_ir_record_format(path: pathlib.Path, name: str) -> str:
    """The format of the first record of a JSON Lines file (``format="auto"``: the first record decides)."""
    for line, record in _iter_jsonl(path, name, progress=False):
        return _detect_ir_record_format(record, name, line)
    raise DataFormatError(name, None, None, "contains no records")


def _finish_arrow_ir(dataset: Dataset, name: str, keep_instruction: bool) -> Dataset:
    """What :func:`load_ir_dataset` does after reading records, for the Arrow reader's dataset."""
    if not dataset.num_rows:
        raise DataFormatError(name, None, None, "contains no records")
    optional = ["positive_scores", "negative_scores"] + (["instruction"] if keep_instruction else [])
    columns = list(IR_COLUMNS) + _consistent_arrow_columns(dataset, optional, name)
    _log_arrow_instructions(dataset, name)
    _warn_suspicious_counts(_stats_counts(dataset, "ir"), "ir", name)
    logger.info("Loaded %d IR records from %s", dataset.num_rows, name)
    return dataset.select_columns(columns)


def _consistent_optional_columns(records: list[dict[str, Any]], optional: list[str], name: str) -> list[str]:
    """Return the optional columns present in every record; warn about those present in only some."""
    kept = []
    for column in optional:
        count = sum(column in record for record in records)
        if count == len(records):
            kept.append(column)
        elif count:
            logger.warning(
                "%s: %r is present in %d of %d records only; dropping the column", name, column, count, len(records)
            )
    return kept


def _log_instructions(records: list[dict[str, Any]], name: str) -> None:
    instructions = {record["instruction"] for record in records if "instruction" in record}
    if instructions:
        logger.info(
            "%s: %d distinct instruction(s) in the records, e.g. %r",
            name,
            len(instructions),
            next(iter(instructions)),
        )


# --------------------------------------------------------------------------------------------------------------
# STS
# --------------------------------------------------------------------------------------------------------------

_STS_FORMATS = ("auto", "unified", "stsb", "tsv", "dataset")
_STSB_HEADER = ("split", "genre", "dataset", "year", "sid", "score", "sentence1", "sentence2")
_TSV_HEADER_NAMES = {"score", "label", "similarity", "gold", "labels"}


def _sts_pairs_from_unified(
    record: Mapping[str, Any], name: str, line: int | None, score_range: tuple[float, float] | None
) -> list[dict[str, Any]]:
    """Turn one unified STS record into its ``(sentence1, sentence2, score)`` pairs.

    ``query=s1, positives=[s2], positive_scores=[y]`` is one pair; several positives (and negatives with
    ``negative_scores``) give one pair each.
    """
    _check_task(record, "sts", name, line)
    sentence1 = _require_text(record, "query", name, line)
    positives = _require_text_list(record, "positives", name, line, allow_empty=False, default_empty=False)
    negatives = _require_text_list(record, "negatives", name, line, allow_empty=True, default_empty=True)
    pairs = []
    for texts, field in ((positives, "positive_scores"), (negatives, "negative_scores")):
        if not texts:
            continue
        scores = record.get(field)
        if scores is None:
            raise DataFormatError(name, line, field, "missing score (STS records need one score per text)")
        if not isinstance(scores, list):
            raise DataFormatError(name, line, field, f"must be a list of numbers, got {type(scores).__name__}")
        if len(scores) != len(texts):
            raise DataFormatError(name, line, field, f"has {len(scores)} scores for {len(texts)} texts")
        for text, score in zip(texts, scores):
            pairs.append(
                {
                    "sentence1": sentence1,
                    "sentence2": text,
                    "score": _check_score(score, field, name, line, score_range),
                }
            )
    instruction = record.get("instruction")
    if instruction is not None:
        if not isinstance(instruction, str):
            raise DataFormatError(name, line, "instruction", f"must be a string, got {type(instruction).__name__}")
        for pair in pairs:
            pair["instruction"] = instruction
    return pairs


def _sts_pair_from_row(
    row: Mapping[str, Any], name: str, line: int | None, score_range: tuple[float, float] | None
) -> dict[str, Any]:
    """Validate a ``sentence1, sentence2, score`` row (a dataset row or a parsed tsv line)."""
    score_field = "score" if "score" in row else ("label" if "label" in row else "score")
    return {
        "sentence1": _require_text(row, "sentence1", name, line),
        "sentence2": _require_text(row, "sentence2", name, line),
        "score": _check_score(row.get(score_field), score_field, name, line, score_range),
    }


def _iter_tsv_rows(path: pathlib.Path, name: str, progress: bool = True) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)``; one record per physical line, split at tabs (quotes are plain text)."""
    for line_number, line in _iter_text_lines(path, name, progress):
        fields = line.split("\t")
        if all(not field.strip() for field in fields):
            continue
        yield line_number, fields


def _detect_tsv_format(path: pathlib.Path, name: str) -> str:
    for line, fields in _iter_tsv_rows(path, name, progress=False):
        if len(fields) >= len(_STSB_HEADER):
            return "stsb"
        if len(fields) == 3:
            return "tsv"
        raise DataFormatError(
            name, line, None, f"has {len(fields)} tab-separated fields; expected 3 (s1, s2, score) or 8 (STS-B)"
        )
    raise DataFormatError(name, None, None, "contains no records")


def _iter_stsb_rows(path: pathlib.Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """STS Benchmark tsv: ``split, genre, dataset, year, sid, score, sentence1, sentence2`` (header optional).

    Extra trailing fields (some distributions append source notes) are ignored.
    """
    for line, fields in _iter_tsv_rows(path, name):
        if line == 1 and [field.strip().lower() for field in fields[: len(_STSB_HEADER)]] == list(_STSB_HEADER):
            continue
        if len(fields) < len(_STSB_HEADER):
            missing = _STSB_HEADER[len(fields)] if len(fields) < len(_STSB_HEADER) else None
            raise DataFormatError(
                name, line, missing, f"missing: the line has {len(fields)} tab-separated fields, expected 8"
            )
        yield line, {"sentence1": fields[6], "sentence2": fields[7], "score": fields[5]}


def _iter_plain_tsv_rows(path: pathlib.Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Generic / Chinese STS-B tsv: ``s1 <TAB> s2 <TAB> score``; a header line naming the score is skipped."""
    for line, fields in _iter_tsv_rows(path, name):
        if line == 1 and len(fields) == 3 and fields[2].strip().lower() in _TSV_HEADER_NAMES:
            continue
        if len(fields) != 3:
            field = ("sentence1", "sentence2", "score")[len(fields)] if len(fields) < 3 else None
            problem = f"the line has {len(fields)} tab-separated fields, expected 3 (s1, s2, score)"
            raise DataFormatError(name, line, field, ("missing: " if field else "") + problem)
        yield line, {"sentence1": fields[0], "sentence2": fields[1], "score": fields[2]}


def _iter_sts_pairs(
    source: Any, format: str, name: str, score_range: tuple[float, float] | None
) -> Iterator[dict[str, Any]]:
    if format not in _STS_FORMATS:
        raise ValueError(f"unknown STS data format {format!r}; expected one of {_STS_FORMATS}")
    if isinstance(source, Dataset):
        yield from _iter_sts_dataset(source, name, score_range)
        return
    if format == "dataset":
        raise TypeError(f"format='dataset' needs a datasets.Dataset, got {type(source).__name__}")
    path = _check_path(source)
    if format == "auto":
        format = "unified" if _data_suffix(path) in _JSONL_SUFFIXES else _detect_tsv_format(path, name)
    if format == "unified":
        for line, record in _iter_jsonl(path, name):
            yield from _sts_pairs_from_unified(record, name, line, score_range)
        return
    rows = _iter_stsb_rows(path, name) if format == "stsb" else _iter_plain_tsv_rows(path, name)
    for line, row in rows:
        yield _sts_pair_from_row(row, name, line, score_range)


def _iter_sts_dataset(
    dataset: Dataset, name: str, score_range: tuple[float, float] | None
) -> Iterator[dict[str, Any]]:
    columns = set(dataset.column_names)
    unified = "query" in columns and "positives" in columns
    if not unified and not {"sentence1", "sentence2"} <= columns:
        raise DataFormatError(
            name,
            None,
            None,
            f"has columns {sorted(columns)}; expected sentence1, sentence2, score "
            "(or the unified query, positives, positive_scores)",
        )
    for row_number, row in _iter_dataset_rows(dataset):
        if unified:
            yield from _sts_pairs_from_unified(row, name, row_number, score_range)
        else:
            yield _sts_pair_from_row(row, name, row_number, score_range)


def load_sts_dataset(
    source: str | os.PathLike[str] | Dataset,
    *,
    format: str = "auto",
    score_range: tuple[float, float] | None = (0.0, 5.0),
    name: str | None = None,
    max_records: int | None = None,
    keep_instruction: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load and validate an STS dataset.

    Files are read in Arrow and cached as :func:`load_ir_dataset` describes.

    Args:
        source: a unified JSON Lines file (``.jsonl``/``.json``), an STS Benchmark tsv (8 columns, header
            optional, CRLF tolerated, quotes are plain text), a ``s1 <TAB> s2 <TAB> score`` tsv (e.g. the
            Chinese STS-B ``.data`` files), or a :class:`datasets.Dataset` with ``sentence1, sentence2, score``
            (``label`` is accepted for ``score``) or the unified columns.
        format: ``"auto"``, ``"unified"``, ``"stsb"``, ``"tsv"`` or ``"dataset"``. ``"auto"`` picks unified
            for JSON suffixes, else looks at the number of fields of the first line.
        score_range: the declared ``(low, high)`` range of the gold scores (inclusive); a score outside it
            is an error. ``None`` disables the check.
        name: the name of a :class:`datasets.Dataset` source in error messages and logs (files are always named
            by their full path).
        max_records: keep only the first ``max_records`` pairs.
        keep_instruction: keep an ``instruction`` column (the task instruction of unified records) when every
            pair has one; :func:`hf_codiemb.instructions.split_by_instruction` turns it into per-dataset prompts.
        cache_dir: the cache folder of files read in Arrow; defaults to the ``datasets`` cache (HF_DATASETS_CACHE).

    Returns:
        A dataset with the columns ``sentence1``, ``sentence2`` (str) and ``score`` (float) (+ ``instruction``).

    Raises:
        DataFormatError: a record breaks the format (missing / non-numeric / NaN / out-of-range score,
            empty sentence, bad JSON, wrong task, ...), naming source, line and field.
        DataFileNotFoundError: ``source`` is a path that does not exist (a ``FileNotFoundError``).
        DataError: ``source`` is a directory.
    """
    _check_max_records(max_records)
    if score_range is not None and not score_range[0] <= score_range[1]:
        raise ValueError(f"score_range must be (low, high) with low <= high, got {score_range!r}")
    source_name = _source_name(source, name)
    if format not in _STS_FORMATS:
        raise ValueError(f"unknown STS data format {format!r}; expected one of {_STS_FORMATS}")
    arrow_refused = None
    if not isinstance(source, Dataset) and format != "dataset":
        path = _check_path(source)
        record_format = format
        if format == "auto":
            record_format = "unified" if _data_suffix(path) in _JSONL_SUFFIXES else _detect_tsv_format(path, source_name)
        dataset, arrow_refused = _try_arrow(
            lambda: _read_with_arrow(
                path, "sts", record_format, score_range=score_range, max_records=max_records, cache_dir=cache_dir
            ),
            source_name,
        )
        if dataset is not None:
            return _finish_arrow_sts(dataset, source_name, keep_instruction)
    pairs: list[dict[str, Any]] = []
    for pair in _iter_sts_pairs(source, format, source_name, score_range):
        pairs.append(pair)
        if max_records is not None and len(pairs) >= max_records:
            break
    if not pairs:
        raise DataFormatError(source_name, None, None, "contains no records")
    logger.info("Loaded %d STS pairs from %s", len(pairs), source_name)
    warn_suspicious_records(pairs, "sts", source_name)
    if arrow_refused is not None:
        _warn_line_by_line(source_name, arrow_refused)
    columns = list(STS_COLUMNS) + (_consistent_optional_columns(pairs, ["instruction"], source_name) if keep_instruction else [])
    return Dataset.from_dict({column: [pair[column] for pair in pairs] for column in columns})


def _finish_arrow_sts(dataset: Dataset, name: str, keep_instruction: bool) -> Dataset:
    """What :func:`load_sts_dataset` does after reading pairs, for the Arrow reader's dataset."""
    if not dataset.num_rows:
        raise DataFormatError(name, None, None, "contains no records")
    logger.info("Loaded %d STS pairs from %s", dataset.num_rows, name)
    _warn_suspicious_counts(_stats_counts(dataset, "sts"), "sts", name)
    columns = list(STS_COLUMNS) + (_consistent_arrow_columns(dataset, ["instruction"], name) if keep_instruction else [])
    return dataset.select_columns(columns)


# --------------------------------------------------------------------------------------------------------------
# Arrow-native reading of data files (cached in the datasets cache)
# --------------------------------------------------------------------------------------------------------------
#
# A data file is read in byte chunks by pyarrow (JSON Lines: ``pyarrow.json`` with an explicit schema, as the
# ``datasets`` JSON builder does; tsv: split at newlines and tabs in Arrow), each chunk is validated and normalised
# with vectorised Arrow compute, and written by a ``datasets`` builder into the datasets cache (HF_DATASETS_CACHE),
# keyed by the file's path, size and modification time and by the loader's options. The result is memory-mapped: a
# second load of the same file (and every other rank of a DDP job) reuses it. When the Arrow reader or a check
# fails, nothing of the chunk is trusted: the loader reads the file again with the line-by-line reader above, which
# reports the first broken record with file, line and field (or, for an input only the Arrow reader refuses, loads
# it). Per-record hashes and flags for :func:`warn_suspicious_records` are computed per chunk and stored in two
# private columns, dropped from the returned dataset.

# Part of the cache key: bump when the checks or the output of the Arrow reader change.
_ARROW_CACHE_VERSION = "1"
_ARROW_CHUNK_BYTES = 8 << 20
_HASH_COLUMN = "_codiemb_record_hash"
_FLAGS_COLUMN = "_codiemb_flags"
# Flag bits: IR query in its positives / negatives, a text both positive and negative; STS identical sentences.
_FLAG_QUERY_IS_POSITIVE, _FLAG_QUERY_IS_NEGATIVE, _FLAG_POSITIVE_IS_NEGATIVE, _FLAG_IDENTICAL_PAIR = 1, 2, 4, 8
# The characters for which ``str.isspace()`` is true: what ``str.strip()`` removes (a test checks the list).
_PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_TEXT_LIST = pa.list_(pa.string())
_SCORE_LIST = pa.list_(pa.float64())
_ARROW_SCHEMAS = {
    "ir": pa.schema(
        [
            ("query", pa.string()),
            ("positives", _TEXT_LIST),
            ("negatives", _TEXT_LIST),
            ("positive_scores", _SCORE_LIST),
            ("negative_scores", _SCORE_LIST),
            ("instruction", pa.string()),
            (_HASH_COLUMN, pa.uint64()),
            (_FLAGS_COLUMN, pa.uint8()),
        ]
    ),
    "sts": pa.schema(
        [
            ("sentence1", pa.string()),
            ("sentence2", pa.string()),
            ("score", pa.float64()),
            ("instruction", pa.string()),
            (_HASH_COLUMN, pa.uint64()),
            (_FLAGS_COLUMN, pa.uint8()),
        ]
    ),
}


class _ArrowReadRejected(Exception):
    """A chunk that the Arrow reader cannot vouch for; the line-by-line reader locates and reports the problem."""


def _reject_if(condition: bool, reason: str) -> None:
    if condition:
        raise _ArrowReadRejected(reason)


def _any_true(mask: pa.Array | pa.ChunkedArray) -> bool:
    return bool(pc.any(mask).as_py())


_WHITESPACE_CHARS = pa.array(list(_PY_WHITESPACE))


def _is_blank(texts: pa.Array) -> pa.Array:
    """Whether each string is empty once ``str.strip()`` has removed its whitespace."""
    return pc.equal(pc.binary_length(pc.utf8_trim(texts, _PY_WHITESPACE)), 0)


def _check_texts(texts: pa.Array, what: str) -> None:
    """Reject null items and items that ``str.strip()`` would empty."""
    _reject_if(texts.null_count > 0, f"{what}: a missing text")
    # Only an empty string or one that starts with whitespace can be blank: trim those only.
    candidates = pc.or_(
        pc.equal(pc.binary_length(texts), 0), pc.is_in(pc.utf8_slice_codeunits(texts, 0, 1), _WHITESPACE_CHARS)
    )
    if _any_true(candidates):
        _reject_if(_any_true(_is_blank(pc.filter(texts, candidates))), f"{what}: an empty text")


def _check_task_column(tasks: pa.Array, task: str) -> None:
    if tasks.null_count < len(tasks):
        _reject_if(_any_true(pc.not_equal(pc.utf8_lower(tasks), task)), f"a record of another task than {task!r}")


def _check_score_values(values: pa.Array, score_range: tuple[float, float] | None, what: str) -> None:
    """Reject missing and non-finite scores and scores outside ``score_range``."""
    _reject_if(values.null_count > 0, f"{what}: a missing score")
    _reject_if(_any_true(pc.invert(pc.is_finite(values))), f"{what}: a score that is not finite")
    if score_range is not None and len(values):
        outside = pc.or_(pc.less(values, score_range[0]), pc.greater(values, score_range[1]))
        _reject_if(_any_true(outside), f"{what}: a score outside the declared range")


def _check_scores(scores: pa.Array, texts: pa.Array, what: str) -> None:
    """Optional IR scores: where given, one finite number per text."""
    _reject_if(_any_true(pc.not_equal(pc.list_value_length(scores), pc.list_value_length(texts))),
               f"{what}: not one score per text")  # fmt: skip
    _check_score_values(pc.list_flatten(scores), None, what)


def _row_hashes(parts: list[pa.Array]) -> pa.Array:
    """A 64-bit hash of each row's texts (xxh3 of the texts joined with control characters)."""
    joined = pc.binary_join_element_wise(*parts, "\x1f")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    offset_type = np.int64 if pa.types.is_large_string(joined.type) else np.int32
    offsets = np.frombuffer(joined.buffers()[1], dtype=offset_type)[joined.offset : joined.offset + len(joined) + 1]
    data = joined.buffers()[2]
    view = memoryview(data) if data is not None else memoryview(b"")
    hashes = np.fromiter(
        (xxhash.xxh3_64_intdigest(view[start:end]) for start, end in itertools.pairwise(offsets.tolist())),
        dtype=np.uint64,
        count=len(joined),
    )
    return pa.array(hashes, type=pa.uint64())


def _rows_with_match(texts: pa.Array, values: pa.Array, num_rows: int) -> np.ndarray:
    """Boolean mask of the rows of which one item of ``texts`` (a list column) equals the row's ``values``."""
    mask = np.zeros(num_rows, dtype=bool)
    parents = pc.list_parent_indices(texts).to_numpy()
    flat = pc.list_flatten(texts)
    # Compare the texts only where the byte lengths are equal (rare): lengths are cheap.
    lengths = pc.binary_length(flat).to_numpy(zero_copy_only=False)
    value_lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
    same_length = np.flatnonzero(lengths == value_lengths[parents])
    if len(same_length):
        candidates = pa.array(same_length)
        equal = pc.equal(pc.take(flat, candidates), pc.take(values, pa.array(parents[same_length])))
        mask[parents[same_length][equal.to_numpy(zero_copy_only=False)]] = True
    return mask


def _rows_sharing_a_text(first: pa.Array, second: pa.Array, num_rows: int) -> np.ndarray:
    """Boolean mask of the rows whose lists ``first`` and ``second`` have a text in common."""

    def keyed(texts: pa.Array) -> tuple[pa.Array, pa.Array]:
        parents = pc.list_parent_indices(texts)
        return parents, pc.binary_join_element_wise(pc.cast(parents, pa.string()), pc.list_flatten(texts), "\x1f")

    mask = np.zeros(num_rows, dtype=bool)

    def length_keys(texts: pa.Array) -> pa.Array:  # (row, byte length) of every item, as one int64
        parents = pc.list_parent_indices(texts).to_numpy().astype(np.int64)
        return pa.array(parents << 32 | pc.binary_length(pc.list_flatten(texts)).to_numpy(zero_copy_only=False))

    second_keys = length_keys(second)
    same_length = pc.is_in(second_keys, value_set=length_keys(first)).to_numpy(zero_copy_only=False)
    if not same_length.any():
        return mask  # no row has a text in both lists with the same byte length (the usual case)
    # Compare the texts of the rows with such a pair only.
    rows = np.unique(pc.list_parent_indices(second).to_numpy()[same_length])
    _, first_keys = keyed(pc.take(first, pa.array(rows)))
    second_parents, second_keys = keyed(pc.take(second, pa.array(rows)))
    found = pc.is_in(second_keys, value_set=first_keys).to_numpy(zero_copy_only=False)
    mask[rows[second_parents.to_numpy()[found]]] = True
    return mask


def _ir_table_from_batch(batch: pa.RecordBatch, record_format: str) -> pa.Table:
    """Validate a batch of IR records (parsed with the format's field names) and normalise it."""
    pos_field, neg_field, pos_scores_field, neg_scores_field, instruction_field = _IR_FIELDS[record_format]
    num_rows = batch.num_rows
    columns = dict(zip(batch.schema.names, batch.columns))
    _check_task_column(columns["task"], "ir")
    query = columns["query"]
    _reject_if(query.null_count > 0, "a record without a query")
    _check_texts(query, "query")
    positives = columns[pos_field]
    _reject_if(positives.null_count > 0, "a record without positives")
    _reject_if(_any_true(pc.equal(pc.list_value_length(positives), 0)), "a record with no positive")
    _check_texts(pc.list_flatten(positives), "positives")
    negatives = pc.fill_null(columns[neg_field], pa.scalar([], _TEXT_LIST))
    _check_texts(pc.list_flatten(negatives), "negatives")
    _check_scores(columns[pos_scores_field], positives, "positive scores")
    _check_scores(columns[neg_scores_field], negatives, "negative scores")
    hashes = _row_hashes([query, pc.binary_join(positives, "\x1e"), pc.binary_join(negatives, "\x1e")])
    flags = (
        _rows_with_match(positives, query, num_rows) * _FLAG_QUERY_IS_POSITIVE
        + _rows_with_match(negatives, query, num_rows) * _FLAG_QUERY_IS_NEGATIVE
        + _rows_sharing_a_text(positives, negatives, num_rows) * _FLAG_POSITIVE_IS_NEGATIVE
    ).astype(np.uint8)
    arrays = [query, positives, negatives, columns[pos_scores_field], columns[neg_scores_field],
              columns[instruction_field], hashes, pa.array(flags, type=pa.uint8())]  # fmt: skip
    return pa.Table.from_arrays(arrays, schema=_ARROW_SCHEMAS["ir"])


def _sts_table_from_unified_batch(batch: pa.RecordBatch, score_range: tuple[float, float] | None) -> pa.Table:
    """Validate a batch of unified STS records and turn each into its pairs (positives, then negatives)."""
    columns = dict(zip(batch.schema.names, batch.columns))
    _check_task_column(columns["task"], "sts")
    query = columns["query"]
    _reject_if(query.null_count > 0, "a record without a query")
    _check_texts(query, "query")
    positives = columns["positives"]
    _reject_if(positives.null_count > 0, "a record without positives")
    _reject_if(_any_true(pc.equal(pc.list_value_length(positives), 0)), "a record with no positive")
    negatives = pc.fill_null(columns["negatives"], pa.scalar([], _TEXT_LIST))
    parents, sides, sentence2, scores = [], [], [], []
    for texts, scores_column, side in ((positives, columns["positive_scores"], 0),
                                       (negatives, columns["negative_scores"], 1)):  # fmt: skip
        _check_texts(pc.list_flatten(texts), "positives" if side == 0 else "negatives")
        # Only rows with texts need scores (the line-by-line reader does not look at the others either).
        with_texts = pc.greater(pc.list_value_length(texts), 0)
        kept_scores, kept_texts = pc.filter(scores_column, with_texts), pc.filter(texts, with_texts)
        _reject_if(kept_scores.null_count > 0, "scores: missing scores")
        _reject_if(_any_true(pc.not_equal(pc.list_value_length(kept_scores), pc.list_value_length(kept_texts))),
                   "scores: not one score per text")  # fmt: skip
        values = pc.list_flatten(kept_scores) if len(kept_scores) else pa.array([], pa.float64())
        _check_score_values(values, score_range, "scores")
        text_parents = pc.list_parent_indices(texts).to_numpy()
        parents.append(text_parents)
        sides.append(np.full(len(text_parents), side, dtype=np.int64))
        sentence2.append(pc.list_flatten(texts))
        scores.append(values)
    parent = np.concatenate(parents)
    order = np.argsort(parent * 2 + np.concatenate(sides), kind="stable")
    parent_index = pa.array(parent[order])
    sentence1 = pc.take(query, parent_index)
    sentence2_array = pc.take(pa.concat_arrays(sentence2), pa.array(order))
    score_array = pc.take(pa.concat_arrays([s.cast(pa.float64()) for s in scores]), pa.array(order))
    instruction = pc.take(columns["instruction"], parent_index)
    return _sts_table(sentence1, sentence2_array, score_array, instruction)


def _sts_table(sentence1: pa.Array, sentence2: pa.Array, score: pa.Array, instruction: pa.Array) -> pa.Table:
    hashes = _row_hashes([sentence1, sentence2, pc.cast(score, pa.string())])
    flags = np.asarray(pc.equal(sentence1, sentence2).to_numpy(zero_copy_only=False), dtype=np.uint8)
    flags *= _FLAG_IDENTICAL_PAIR
    arrays = [sentence1, sentence2, score, instruction, hashes, pa.array(flags, type=pa.uint8())]
    return pa.Table.from_arrays(arrays, schema=_ARROW_SCHEMAS["sts"])


def _sts_table_from_tsv_chunk(
    chunk: bytes, record_format: str, first: bool, score_range: tuple[float, float] | None
) -> pa.Table:
    """Split one chunk of a tsv file into lines and fields in Arrow, validate it and return its pairs."""
    lines = pc.list_flatten(pc.split_pattern(pa.array([chunk], pa.binary()), b"\n")).cast(pa.string())
    lines = pc.utf8_rtrim(lines, characters="\r\n")
    if first and len(lines):
        fields = lines[0].as_py().split("\t")
        header = [field.strip().lower() for field in fields]
        if (record_format == "stsb" and header[: len(_STSB_HEADER)] == list(_STSB_HEADER)) or (
            record_format == "tsv" and len(fields) == 3 and header[2] in _TSV_HEADER_NAMES
        ):
            lines = lines.slice(1)
    lines = pc.filter(lines, pc.invert(_is_blank(lines)))
    fields = pc.split_pattern(lines, "\t")
    counts = pc.list_value_length(fields)
    if record_format == "stsb":
        _reject_if(_any_true(pc.less(counts, len(_STSB_HEADER))), "a line with fewer than 8 fields")
        positions = (6, 7, 5)
    else:
        _reject_if(_any_true(pc.not_equal(counts, 3)), "a line without exactly 3 fields")
        positions = (0, 1, 2)
    sentence1, sentence2, score_text = (pc.list_element(fields, position) for position in positions)
    _check_texts(sentence1, "sentence1")
    _check_texts(sentence2, "sentence2")
    score = pc.cast(pc.utf8_trim_whitespace(score_text), pa.float64())  # raises on a non-number
    _check_score_values(score, score_range, "score")
    return _sts_table(sentence1, sentence2, score, pa.nulls(len(score), pa.string()))


def _iter_byte_chunks(path: pathlib.Path, chunk_bytes: int) -> Iterator[bytes]:
    """Chunks of about ``chunk_bytes`` ending at a line end (plain or gzip file; a leading UTF-8 BOM removed)."""
    with (gzip.open(path, "rb") if _is_gzip(path) else path.open("rb")) as handle:
        first = True
        while True:
            chunk = handle.read(chunk_bytes)
            if not chunk:
                return
            if not chunk.endswith(b"\n"):
                chunk += handle.readline()
            if first and chunk.startswith(_UTF8_BOM):
                chunk = chunk[len(_UTF8_BOM) :]
            first = False
            yield chunk


def _read_json_chunk(chunk: bytes, parse_options: paj.ParseOptions) -> pa.Table:
    """Parse a chunk of JSON Lines in blocks of 1 MiB (in parallel), in one block when a line is longer."""
    try:
        return paj.read_json(io.BytesIO(chunk), read_options=paj.ReadOptions(block_size=1 << 20),
                             parse_options=parse_options)  # fmt: skip
    except pa.ArrowInvalid as exc:
        if "straddling" not in str(exc) or len(chunk) <= 1 << 20:
            raise
    return paj.read_json(io.BytesIO(chunk), read_options=paj.ReadOptions(block_size=len(chunk)),
                         parse_options=parse_options)  # fmt: skip


@dataclasses.dataclass
class _DataFileConfig(datasets.BuilderConfig):
    """What the Arrow reader reads and how; every field is part of the cache key."""

    path: str = ""
    size: int = 0
    mtime_ns: int = 0
    task: str = "ir"
    record_format: str = "unified"
    score_low: float | None = None
    score_high: float | None = None
    max_records: int | None = None
    chunk_bytes: int = _ARROW_CHUNK_BYTES


class CodiembDataFile(datasets.ArrowBasedBuilder):
    """A ``datasets`` builder that reads, validates and normalises one IR or STS data file (see the loaders)."""

    BUILDER_CONFIG_CLASS = _DataFileConfig

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(_ARROW_SCHEMAS[self.config.task]))

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={})]

    def _generate_tables(self) -> Iterator[tuple[Any, pa.Table]]:
        config = self.config
        path = pathlib.Path(config.path)
        score_range = None if config.score_low is None else (config.score_low, config.score_high)
        if config.task == "ir":
            fields = ["task", "query", *_IR_FIELDS[config.record_format]]
            types = [pa.string(), pa.string(), _TEXT_LIST, _TEXT_LIST, _SCORE_LIST, _SCORE_LIST, pa.string()]
        else:
            fields = ["task", "query", "positives", "negatives", "positive_scores", "negative_scores", "instruction"]
            types = [pa.string(), pa.string(), _TEXT_LIST, _TEXT_LIST, _SCORE_LIST, _SCORE_LIST, pa.string()]
        parse_options = paj.ParseOptions(
            explicit_schema=pa.schema(list(zip(fields, types))), unexpected_field_behavior="ignore"
        )
        remaining = config.max_records
        for index, chunk in enumerate(_iter_byte_chunks(path, config.chunk_bytes)):
            if config.task == "sts" and config.record_format in ("stsb", "tsv"):
                table = _sts_table_from_tsv_chunk(chunk, config.record_format, index == 0, score_range)
            else:
                parsed = _read_json_chunk(chunk, parse_options)
                parsed.validate(full=True)  # the JSON reader does not check that strings are UTF-8
                batches = parsed.combine_chunks().to_batches()  # one batch: fewer, larger compute calls
                if config.task == "ir":
                    tables = [_ir_table_from_batch(batch, config.record_format) for batch in batches]
                else:
                    tables = [_sts_table_from_unified_batch(batch, score_range) for batch in batches]
                table = pa.concat_tables(tables) if tables else _ARROW_SCHEMAS[config.task].empty_table()
            if remaining is not None and table.num_rows >= remaining:
                yield index, table.slice(0, remaining)
                return
            if remaining is not None:
                remaining -= table.num_rows
            yield index, table


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn the datasets progress bars off for small files (and restore the previous state)."""
    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _read_with_arrow(
    path: pathlib.Path,
    task: str,
    record_format: str,
    *,
    score_range: tuple[float, float] | None = None,
    max_records: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Read a data file through :class:`CodiembDataFile` (cached); raise on anything the Arrow checks refuse."""
    stat = path.stat()
    builder = CodiembDataFile(
        cache_dir=os.fspath(cache_dir) if cache_dir is not None else datasets.config.HF_DATASETS_CACHE,
        dataset_name="codiemb_data_file",
        hash=_ARROW_CACHE_VERSION,
        path=str(path.resolve()),
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        task=task,
        record_format=record_format,
        score_low=None if score_range is None else float(score_range[0]),
        score_high=None if score_range is None else float(score_range[1]),
        max_records=max_records,
        chunk_bytes=_ARROW_CHUNK_BYTES,
    )
    with _progress_bars(stat.st_size >= _PROGRESS_BAR_MIN_BYTES):
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=datasets.Split.TRAIN)
    logger.debug("%s: read with the Arrow reader, cached in %s", path, builder.cache_dir)
    return dataset


# What the Arrow reader raises on input it cannot vouch for, or when the cache cannot be written (OSError: a
# read-only or full disk); anything else is a bug and is raised.
_ARROW_REFUSALS = (_ArrowReadRejected, pa.ArrowException, UnicodeError, EOFError, zlib.error, OSError)


def _try_arrow(read: Callable[[], Dataset], name: str) -> tuple[Dataset | None, str | None]:
    """Run the Arrow reader; when it refuses the input return the reason (the line-by-line reader takes over)."""
    try:
        return read(), None
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None or (cause.__context__ is not None and not cause.__suppress_context__):
            cause = cause.__cause__ or cause.__context__
        if not isinstance(cause, _ARROW_REFUSALS):
            raise
        reason = f"{type(cause).__name__}: {cause}"
        logger.debug("%s: the Arrow reader refused the file (%s); reading it line by line", name, reason)
        return None, reason


def _warn_line_by_line(name: str, reason: str) -> None:
    logger.warning(
        "%s: valid, but read line by line (slower, not cached) because the Arrow reader refused it: %s",
        name,
        _short_repr(reason, 200),
    )


def _stats_counts(dataset: Dataset, task: str) -> dict[str, int]:
    """:func:`suspicious_record_counts` from the hash and flag columns of the Arrow reader."""
    table = dataset.data
    hashes = table.column(_HASH_COLUMN)
    flags = pc.cast(table.column(_FLAGS_COLUMN), pa.int64())
    total = table.num_rows

    def flagged(bit: int) -> int:
        return int(pc.sum(pc.not_equal(pc.bit_wise_and(flags, bit), 0)).as_py() or 0)

    counts = {"records": total, "duplicates": total - int(pc.count_distinct(hashes).as_py() or 0)}
    if task == "ir":
        counts["query_is_positive"] = flagged(_FLAG_QUERY_IS_POSITIVE)
        counts["query_is_negative"] = flagged(_FLAG_QUERY_IS_NEGATIVE)
        counts["positive_is_negative"] = flagged(_FLAG_POSITIVE_IS_NEGATIVE)
    else:
        counts["identical_pairs"] = flagged(_FLAG_IDENTICAL_PAIR)
        counts["distinct_scores"] = int(pc.count_distinct(table.column("score")).as_py() or 0)
    return counts


def _consistent_arrow_columns(dataset: Dataset, optional: list[str], name: str) -> list[str]:
    """:func:`_consistent_optional_columns` for the Arrow reader's dataset (a column absent from a record is null)."""
    kept = []
    total = dataset.num_rows
    for column in optional:
        count = total - dataset.data.column(column).null_count
        if count == total:
            kept.append(column)
        elif count:
            logger.warning(
                "%s: %r is present in %d of %d records only; dropping the column", name, column, count, total
            )
    return kept


def _log_arrow_instructions(dataset: Dataset, name: str) -> None:
    instructions = pc.unique(dataset.data.column("instruction")).drop_null()
    if len(instructions):
        logger.info(
            "%s: %d distinct instruction(s) in the records, e.g. %r", name, len(instructions), instructions[0].as_py()
        )


# --------------------------------------------------------------------------------------------------------------
# Suspicious (valid but probably wrong) data
# --------------------------------------------------------------------------------------------------------------


def suspicious_record_counts(rows: Dataset | Iterable[Mapping[str, Any]], task: str) -> dict[str, int]:
    """Count the records of a loaded dataset that are valid but probably a mistake.

    Args:
        rows: records with the columns this module produces (IR: ``query``, ``positives``, ``negatives``; STS:
            ``sentence1``, ``sentence2``, ``score``), e.g. the :class:`datasets.Dataset` of a loader.
        task: ``"ir"`` or ``"sts"``.

    Returns:
        The counts, every key present:

        - ``records``: the number of records;
        - ``duplicates``: records equal, in every column, to an earlier record;
        - IR only: ``query_is_positive`` / ``query_is_negative``: records whose query text is also one of their
          positives / negatives; ``positive_is_negative``: records with a text that is both a positive and a
          negative;
        - STS only: ``identical_pairs``: pairs whose two sentences are the same text; ``distinct_scores``: the
          number of different gold scores (``1`` with two or more pairs means every score is equal: the
          correlation and ranking losses get no signal and Spearman is undefined).
    """
    columns = task_columns(task)
    if isinstance(rows, Dataset):
        present = [column for column in columns if column in rows.column_names]
        rows = [dict(zip(present, values)) for values in zip(*(rows[column] for column in present))]
    seen: set[tuple] = set()
    counts = Counter()
    scores: set[float] = set()
    for row in rows:
        counts["records"] += 1
        if task == "ir":
            query, positives, negatives = row["query"], row["positives"], row.get("negatives") or []
            key: tuple = (query, tuple(positives), tuple(negatives))
            counts["query_is_positive"] += query in positives
            counts["query_is_negative"] += query in negatives
            counts["positive_is_negative"] += not set(positives).isdisjoint(negatives)
        else:
            key = (row["sentence1"], row["sentence2"], float(row["score"]))
            counts["identical_pairs"] += row["sentence1"] == row["sentence2"]
            scores.add(float(row["score"]))
        counts["duplicates"] += key in seen
        seen.add(key)
    keys = ["records", "duplicates"] + (
        ["query_is_positive", "query_is_negative", "positive_is_negative"] if task == "ir" else ["identical_pairs"]
    )
    result = {key: counts[key] for key in keys}
    if task == "sts":
        result["distinct_scores"] = len(scores)
    return result


def warn_suspicious_records(rows: Dataset | Iterable[Mapping[str, Any]], task: str, source: str) -> dict[str, int]:
    """Log one warning for ``source`` listing the suspicious records of a dataset, with counts; return the counts.

    The loaders call it once per file; see :func:`suspicious_record_counts` for what is counted. Nothing is logged
    when nothing is suspicious.
    """
    counts = suspicious_record_counts(rows, task)
    _warn_suspicious_counts(counts, task, source)
    return counts


def _warn_suspicious_counts(counts: dict[str, int], task: str, source: str) -> None:
    """The warning of :func:`warn_suspicious_records` for counts already computed."""
    total = counts["records"]
    findings = []
    if counts["duplicates"]:
        findings.append(f"{counts['duplicates']} duplicated record(s)")
    if task == "ir":
        for key, what in (
            ("query_is_positive", "the query equal to one of its positives"),
            ("query_is_negative", "the query equal to one of its negatives"),
            ("positive_is_negative", "a text that is both a positive and a negative"),
        ):
            if counts[key]:
                findings.append(f"{counts[key]} record(s) with {what}")
    else:
        if counts["identical_pairs"]:
            findings.append(f"{counts['identical_pairs']} pair(s) of two identical sentences")
        if total > 1 and counts["distinct_scores"] == 1:
            findings.append(
                "every gold score is equal (no signal for the STS losses; Spearman is undefined)"
            )
    if findings:
        logger.warning("%s: suspicious data in %d records: %s", source, total, "; ".join(findings))


# --------------------------------------------------------------------------------------------------------------
# Dispatch, demo data
# --------------------------------------------------------------------------------------------------------------


def load_dataset_for_task(task: str, source: str | os.PathLike[str] | Dataset, **kwargs: Any) -> Dataset:
    """Load ``source`` as a dataset of ``task`` (``"ir"`` or ``"sts"``); ``kwargs`` go to the task's loader."""
    loaders = {"ir": load_ir_dataset, "sts": load_sts_dataset}
    key = task.lower() if isinstance(task, str) else task
    if key not in loaders:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return loaders[key](source, **kwargs)


def demo_data_path(name: str) -> pathlib.Path:
    """Path of a demo data file shipped in ``hf_codiemb/demo_data`` (e.g. ``"ir_train.jsonl"``).

    The demo data is authored by the project (Apache-2.0); see ``hf_codiemb/demo_data/README.md``.
    """
    resource = importlib.resources.files("hf_codiemb") / "demo_data" / name
    path = pathlib.Path(str(resource))
    if not path.is_file():
        available = sorted(
            entry.name
            for entry in (importlib.resources.files("hf_codiemb") / "demo_data").iterdir()
            if entry.name.endswith(".jsonl")
        )
        raise DataFileNotFoundError(f"no demo data file {name!r}; available: {available}")
    return path


# --------------------------------------------------------------------------------------------------------------
# Tasks constructed from STS pairs
# --------------------------------------------------------------------------------------------------------------


def _sts_rows(sts_dataset: Dataset | Iterable[Mapping[str, Any]]) -> list[tuple[str, str, float]]:
    return [(row["sentence1"], row["sentence2"], float(row["score"])) for row in sts_dataset]


def ir_task_from_sts_pairs(
    sts_dataset: Dataset | Iterable[Mapping[str, Any]], min_score: float = 4.0
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """Build a paraphrase-retrieval IR evaluation task from STS pairs.

    - **corpus**: every distinct sentence of the split (``sentence1`` and ``sentence2`` of all pairs, whatever
      their score), deduplicated by exact text, ids ``"c0", "c1", ...`` in order of first appearance.
    - **queries**: the distinct ``sentence1`` of the pairs scored ``>= min_score``, ids ``"q0", "q1", ...``.
    - **relevant**: for each query, the corpus ids of the ``sentence2`` of all its pairs scored
      ``>= min_score``.

    Choice on identical texts: a pair whose two sentences are exactly identical gives no relevant document
    (retrieving the query's own text is trivial), and a query left with no relevant document is dropped.
    The query's own text stays in the corpus (other queries may need it); :func:`hf_codiemb.evaluation.evaluate_ir`
    ignores a retrieved document whose text equals the query's when it is not relevant, as BEIR ignores
    identical ids.

    Returns:
        ``(queries, corpus, relevant)``, dictionaries ready for ``InformationRetrievalEvaluator``.
    """
    rows = _sts_rows(sts_dataset)
    corpus_ids: dict[str, str] = {}
    for sentence1, sentence2, _ in rows:
        for text in (sentence1, sentence2):
            if text not in corpus_ids:
                corpus_ids[text] = f"c{len(corpus_ids)}"
    query_relevant: dict[str, set[str]] = {}
    for sentence1, sentence2, score in rows:
        if score >= min_score and sentence1 != sentence2:
            query_relevant.setdefault(sentence1, set()).add(corpus_ids[sentence2])
    queries = {f"q{index}": text for index, text in enumerate(query_relevant)}
    relevant = {qid: query_relevant[text] for qid, text in queries.items()}
    corpus = {cid: text for text, cid in corpus_ids.items()}
    logger.info(
        "STS-derived IR task: %d queries, %d corpus sentences (min_score=%g)", len(queries), len(corpus), min_score
    )
    return queries, corpus, relevant


def ir_train_from_sts_pairs(
    sts_dataset: Dataset | Iterable[Mapping[str, Any]],
    min_score: float = 4.0,
    num_negatives: int = 4,
    seed: int = 0,
    max_negative_score: float | None = None,
) -> Dataset:
    """Build IR training records from STS pairs (a *constructed* task, not a real retrieval dataset).

    Each pair scored ``>= min_score`` gives ``query = sentence1``, ``positives = [sentence2]``. Its
    ``num_negatives`` negatives are drawn (seeded) first from the sentences of the same ``sentence1``'s
    low-scored pairs (score ``<= max_negative_score``, default ``min_score / 2``), which are topically close
    but not paraphrases, then from random other sentences of the split. A negative is never the query, the
    positive, or any sentence paired with the query at a score above ``max_negative_score``.

    This lets IR training run on STS Benchmark English, which has no retrieval data; results on it measure
    paraphrase retrieval only.

    Returns:
        A dataset with the IR columns ``query``, ``positives``, ``negatives``.
    """
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    if max_negative_score is None:
        max_negative_score = min_score / 2
    rows = _sts_rows(sts_dataset)
    rng = random.Random(seed)
    all_sentences = list(dict.fromkeys(text for s1, s2, _ in rows for text in (s1, s2)))
    close: dict[str, list[str]] = {}
    related: dict[str, set[str]] = {}
    for sentence1, sentence2, score in rows:
        for a, b in ((sentence1, sentence2), (sentence2, sentence1)):
            if score <= max_negative_score:
                close.setdefault(a, []).append(b)
            else:
                related.setdefault(a, set()).add(b)
    records: dict[str, list] = {"query": [], "positives": [], "negatives": []}
    for sentence1, sentence2, score in rows:
        if score < min_score or sentence1 == sentence2:
            continue
        excluded = {sentence1, sentence2} | related.get(sentence1, set())
        negatives = _draw_negatives(close.get(sentence1, []), all_sentences, excluded, num_negatives, rng)
        records["query"].append(sentence1)
        records["positives"].append([sentence2])
        records["negatives"].append(negatives)
    if not records["query"]:
        raise ValueError(f"no STS pair is scored >= min_score={min_score}")
    logger.info("Constructed %d IR training records from STS pairs", len(records["query"]))
    return Dataset.from_dict(records)


def labelled_pairs_from_ir_records(
    ir_dataset: Dataset | Iterable[Mapping[str, Any]],
    num_negatives: int | None = None,
    positive_score: float = 1.0,
    negative_score: float = 0.0,
) -> Dataset:
    """Turn IR records into scored STS-style pairs, so that a pair loss (e.g. CoSENT) can train on IR data.

    Each record gives ``(query, positive, positive_score)`` for every positive and ``(query, negative,
    negative_score)`` for its first ``num_negatives`` negatives (all of them when ``None``), in record order.
    This is how single-loss baselines ("CoSENT only") see retrieval data: relevance becomes a binary score.

    Returns:
        A dataset with the STS columns ``sentence1``, ``sentence2``, ``score``.
    """
    if num_negatives is not None and num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0 or None, got {num_negatives}")
    if not positive_score > negative_score:
        raise ValueError(f"positive_score ({positive_score}) must be > negative_score ({negative_score})")
    pairs: dict[str, list] = {"sentence1": [], "sentence2": [], "score": []}
    for row in ir_dataset:
        negatives = list(row.get("negatives") or [])
        labelled = [(text, positive_score) for text in row["positives"]]
        labelled += [(text, negative_score) for text in negatives[:num_negatives]]
        for text, score in labelled:
            pairs["sentence1"].append(row["query"])
            pairs["sentence2"].append(text)
            pairs["score"].append(float(score))
    if not pairs["sentence1"]:
        raise ValueError("the IR records give no pair (no records, or no positives)")
    return Dataset.from_dict(pairs)


def _draw_negatives(
    close: list[str], pool: list[str], excluded: set[str], count: int, rng: random.Random
) -> list[str]:
    """Draw ``count`` distinct negatives: close ones first (shuffled), then random ones from ``pool``."""
    candidates = [text for text in dict.fromkeys(close) if text not in excluded]
    rng.shuffle(candidates)
    negatives = candidates[:count]
    chosen = set(negatives) | excluded
    available = len(pool) - len(chosen & set(pool))
    while len(negatives) < count and available > 0:
        text = pool[rng.randrange(len(pool))]
        if text not in chosen:
            negatives.append(text)
            chosen.add(text)
            available -= 1
    return negatives
