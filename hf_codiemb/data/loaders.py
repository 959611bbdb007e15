"""Loading IR and STS training data: files (JSON Lines, tsv) and :class:`datasets.Dataset` objects.

A file goes first to the Arrow reader (:mod:`hf_codiemb.data.arrow_reader`: fast, cached); when it refuses the
file, or for layouts it does not read, the file is read line by line here with the same rules
(:mod:`hf_codiemb.data.rules`), which name the line and field of a broken record. Either way the suspicious
records are counted once (:mod:`hf_codiemb.data.suspicious`) and logged once per file.
"""

from __future__ import annotations

import itertools
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset

from hf_codiemb.columns import IR_COLUMNS, STS_COLUMNS, TASKS
from hf_codiemb.data import arrow_reader, rules
from hf_codiemb.data.rules import DataFormatError
from hf_codiemb.data.suspicious import (
    FLAGS_COLUMN,
    HASH_COLUMN,
    counts_from_columns,
    warn_suspicious_counts,
    warn_suspicious_records,
)
from hf_codiemb.data.text_files import (
    JSONL_SUFFIXES,
    check_path,
    data_suffix,
    detect_tsv_format,
    iter_jsonl,
    iter_plain_tsv_rows,
    iter_stsb_rows,
)

logger = logging.getLogger(__name__)

IR_FORMATS = ("auto", *rules.IR_RECORD_FORMATS, "dataset")
STS_FORMATS = ("auto", "unified", "reference", "stsb", "tsv", "dataset")


def _source_name(source: Any, name: str | None) -> str:
    """The name errors and warnings give a source: a file's full path (whatever ``name`` says), else ``name``."""
    if not isinstance(source, Dataset):
        return os.path.abspath(os.fspath(source))
    if name is not None:
        return name
    return f"dataset {source.info.dataset_name!r}" if source.info.dataset_name else "dataset"


def _check_max_records(max_records: int | None) -> None:
    if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
        raise ValueError(f"max_records must be a positive integer or None, got {max_records!r}")


def _first_record(path: pathlib.Path, name: str) -> tuple[int, dict[str, Any]]:
    for line, record in iter_jsonl(path, name, progress=False):
        return line, record
    raise DataFormatError(name, None, None, "contains no records")


# Teacher scores of IR records: only distillation reads them, and it refuses a dataset without them, so the warning
# about a partly present column names the first record that lacks it.
TEACHER_SCORE_COLUMNS = ("positive_scores", "negative_scores")


def _optional_columns(
    present: dict[str, int], total: int, optional: list[str], name: str, first_missing: Callable[[str], int] | None = None
) -> list[str]:
    """The optional columns present in every record; warn about those present in only some (``first_missing``: the
    1-based number of the first record without a column, named for the teacher scores)."""
    kept = []
    for column in optional:
        count = present.get(column, 0)
        if count == total:
            kept.append(column)
        elif count and column in TEACHER_SCORE_COLUMNS and first_missing is not None:
            logger.warning("%s: %r is present in %d of %d records only (the first without it: record %d); dropping the "
                           "column, so distillation (distill_weight > 0) refuses this dataset", name, column, count,
                           total, first_missing(column))  # fmt: skip
        elif count:
            logger.warning("%s: %r is present in %d of %d records only; dropping the column", name, column, count, total)
    return kept


def _log_instructions(instructions: set[str], name: str) -> None:
    if instructions:
        logger.info("%s: %d distinct instruction(s) in the records, e.g. %r", name, len(instructions),
                    next(iter(sorted(instructions))))  # fmt: skip


def _finish_records(
    rows: Iterable[dict[str, Any]], task: str, optional: list[str], name: str, max_records: int | None, refused: str | None
) -> Dataset:
    """The dataset of the first ``max_records`` records read line by line (columns, instructions, suspicious records
    logged; ``refused``: why the Arrow reader refused the file, logged once it is known to be valid)."""
    records = list(itertools.islice(rows, max_records))
    if not records:
        raise DataFormatError(name, None, None, "contains no records")
    present = {column: sum(column in record for record in records) for column in optional}

    def first_missing(column: str) -> int:
        return next(number for number, record in enumerate(records, start=1) if column not in record)

    columns = list(IR_COLUMNS if task == "ir" else STS_COLUMNS) + _optional_columns(
        present, len(records), optional, name, first_missing
    )
    _log_instructions({record["instruction"] for record in records if "instruction" in record}, name)
    dataset = Dataset.from_dict({column: [record[column] for record in records] for column in columns})
    warn_suspicious_records(dataset, task, name)
    if refused is not None:
        _warn_line_by_line(name, refused)
    return dataset


def _finish_arrow(dataset: Dataset, task: str, optional: list[str], name: str) -> Dataset:
    """The dataset of the Arrow reader (columns, instructions, suspicious records from its stored columns)."""
    if not dataset.num_rows:
        raise DataFormatError(name, None, None, "contains no records")
    table = dataset.data
    present = {column: dataset.num_rows - table.column(column).null_count for column in optional}

    def first_missing(column: str) -> int:
        return int(pc.index(pc.is_null(table.column(column)), True).as_py()) + 1

    columns = list(IR_COLUMNS if task == "ir" else STS_COLUMNS) + _optional_columns(
        present, dataset.num_rows, optional, name, first_missing
    )
    _log_instructions(set(table.column("instruction").unique().drop_null().to_pylist()), name)
    scores = table.column("score") if task == "sts" else None
    counts = counts_from_columns(table.column(HASH_COLUMN), table.column(FLAGS_COLUMN), scores, task)
    warn_suspicious_counts(counts, task, name)
    return dataset.select_columns(columns)


def _warn_line_by_line(name: str, reason: str) -> None:
    logger.warning(
        "%s: valid, but read line by line (slower, not cached) because the Arrow reader refused it: %s",
        name,
        rules.short_repr(reason, 200),
    )


def _read_fast(
    source: Any, task: str, record_format: str, name: str, **options: Any
) -> tuple[Dataset | None, str | None]:
    """The Arrow reader's dataset of a file, or ``(None, reason)`` when it refused the file."""
    if isinstance(source, Dataset) or record_format not in arrow_reader.ARROW_FORMATS[task]:
        return None, None
    path = check_path(source)
    return arrow_reader.try_arrow(lambda: arrow_reader.read_with_arrow(path, task, record_format, **options), name)


# --------------------------------------------------------------------------------------------------------------
# IR
# --------------------------------------------------------------------------------------------------------------


def _iter_ir_records(source: Any, record_format: str, name: str) -> Iterator[tuple[int, dict[str, Any], str]]:
    """Yield ``(line, raw_record, record_format)`` from a file or dataset (``auto``: the first record decides)."""
    rows = enumerate(source, start=1) if isinstance(source, Dataset) else iter_jsonl(check_path(source), name)
    fixed = None if record_format in ("auto", "dataset") else record_format
    for line, record in rows:
        if fixed is None:
            fixed = rules.detect_ir_record_format(record, name, line)
        yield line, record, fixed


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

    A file is read, screened and normalised in Arrow (vectorised, chunk by chunk) and cached in the ``datasets``
    cache, keyed by the file's path, size and modification time and the options: the result is memory-mapped, and
    loading the same file again (e.g. on the other ranks of a DDP job) reuses it. When the Arrow reader refuses the
    file, the line-by-line reader reads it again to report the first broken record with its line and field.

    Args:
        source: a JSON Lines file (unified, FlagEmbedding or the reference's layout) or a
            :class:`datasets.Dataset` whose columns are those of one of these layouts.
        format: ``"auto"`` (detected from the first record), ``"unified"``, ``"flagembedding"``,
            ``"reference"`` or ``"dataset"``.
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
    if format not in IR_FORMATS:
        raise ValueError(f"unknown IR data format {format!r}; expected one of {IR_FORMATS}")
    if format == "dataset" and not isinstance(source, Dataset):
        raise TypeError(f"format='dataset' needs a datasets.Dataset, got {type(source).__name__}")
    source_name = _source_name(source, name)
    optional = ["positive_scores", "negative_scores"] + (["instruction"] if keep_instruction else [])
    record_format = format
    if format == "auto" and not isinstance(source, Dataset):
        line, record = _first_record(check_path(source), source_name)
        record_format = rules.detect_ir_record_format(record, source_name, line)
    dataset, refused = _read_fast(source, "ir", record_format, source_name, max_records=max_records,
                                  cache_dir=cache_dir)  # fmt: skip
    if dataset is not None:
        dataset = _finish_arrow(dataset, "ir", optional, source_name)
    else:
        records = (rules.parse_ir_record(raw, layout, source_name, line)
                   for line, raw, layout in _iter_ir_records(source, record_format, source_name))  # fmt: skip
        dataset = _finish_records(records, "ir", optional, source_name, max_records, refused)
    logger.info("Loaded %d IR records from %s", dataset.num_rows, source_name)
    return dataset


# --------------------------------------------------------------------------------------------------------------
# STS
# --------------------------------------------------------------------------------------------------------------


def _sts_file_format(path: pathlib.Path, format: str, name: str) -> str:
    """The layout of an STS file: ``format``, or for ``auto`` the suffix, the first record or the first line."""
    if format != "auto":
        return format
    if data_suffix(path) not in JSONL_SUFFIXES:
        return detect_tsv_format(path, name)
    _, record = _first_record(path, name)
    return "reference" if rules.is_reference_record(record) else "unified"


def _iter_sts_pairs(
    source: Any, record_format: str, name: str, score_range: tuple[float, float] | None
) -> Iterator[dict[str, Any]]:
    """The validated pairs of a source, in order."""
    if isinstance(source, Dataset):
        columns = set(source.column_names)
        unified = "query" in columns and "positives" in columns
        if not unified and not {"sentence1", "sentence2"} <= columns:
            raise DataFormatError(name, None, None, f"has columns {sorted(columns)}; expected sentence1, sentence2, "
                                  "score (or the unified query, positives, positive_scores)")  # fmt: skip
        for row_number, row in enumerate(source, start=1):
            if unified:
                yield from rules.sts_pairs_from_record(row, name, row_number, score_range)
            else:
                yield rules.sts_pair_from_row(row, name, row_number, score_range)
        return
    path = check_path(source)
    if record_format in ("unified", "reference"):
        for line, record in iter_jsonl(path, name):
            yield from rules.sts_pairs_from_record(record, name, line, score_range)
        return
    rows = iter_stsb_rows(path, name) if record_format == "stsb" else iter_plain_tsv_rows(path, name)
    for line, row in rows:
        yield rules.sts_pair_from_row(row, name, line, score_range)


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
        source: a unified or reference-layout JSON Lines file (``.jsonl``/``.json``), an STS Benchmark tsv (8
            columns, header optional, CRLF tolerated, quotes are plain text), a ``s1 <TAB> s2 <TAB> score`` tsv
            (e.g. the Chinese STS-B ``.data`` files), or a :class:`datasets.Dataset` with ``sentence1, sentence2,
            score`` (``label`` is accepted for ``score``) or the unified columns.
        format: ``"auto"``, ``"unified"``, ``"reference"``, ``"stsb"``, ``"tsv"`` or ``"dataset"``. ``"auto"``
            picks a JSON layout for JSON suffixes (from the first record), else looks at the number of fields of
            the first line.
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
    if format not in STS_FORMATS:
        raise ValueError(f"unknown STS data format {format!r}; expected one of {STS_FORMATS}")
    if format == "dataset" and not isinstance(source, Dataset):
        raise TypeError(f"format='dataset' needs a datasets.Dataset, got {type(source).__name__}")
    source_name = _source_name(source, name)
    optional = ["instruction"] if keep_instruction else []
    record_format = format
    if not isinstance(source, Dataset):
        record_format = _sts_file_format(check_path(source), format, source_name)
    dataset, refused = _read_fast(source, "sts", record_format, source_name, score_range=score_range,
                                  max_records=max_records, cache_dir=cache_dir)  # fmt: skip
    if dataset is not None:
        dataset = _finish_arrow(dataset, "sts", optional, source_name)
    else:
        pairs = _iter_sts_pairs(source, record_format, source_name, score_range)
        dataset = _finish_records(pairs, "sts", optional, source_name, max_records, refused)
    logger.info("Loaded %d STS pairs from %s", dataset.num_rows, source_name)
    return dataset


def load_dataset_for_task(task: str, source: str | os.PathLike[str] | Dataset, **kwargs: Any) -> Dataset:
    """Load ``source`` as a dataset of ``task`` (``"ir"`` or ``"sts"``); ``kwargs`` go to the task's loader."""
    loaders = {"ir": load_ir_dataset, "sts": load_sts_dataset}
    key = task.lower() if isinstance(task, str) else task
    if key not in loaders:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return loaders[key](source, **kwargs)
