"""The fast path: a data file read in Arrow chunks by a ``datasets`` builder, cached in the datasets cache.

A file is read in byte chunks by pyarrow (JSON Lines: ``pyarrow.json`` with an explicit schema, as the ``datasets``
JSON builder does; tsv: split at newlines and tabs in Arrow) and written by :class:`CodiembDataFile` into the
datasets cache (``HF_DATASETS_CACHE`` or ``cache_dir``), keyed by the file's path, size and modification time and
the loader's options; the result is memory-mapped, and a second load (a second run, the other ranks of a DDP job)
reuses it. (``datasets.load_dataset("json")`` itself does not serve: it casts numbers to strings and back, falls
back to pandas on what pyarrow refuses, and picks decompression by suffix; the rules want the values as written.)

This module decides nothing about validity. A vectorised *screen* marks the rows the rules could refuse (a
superset: missing values, empty texts or texts starting with white space, non-finite or out-of-range scores, list
lengths that differ, another task); those rows alone are checked by the one rule set (:mod:`hf_codiemb.data.rules`).
When a row is refused, or pyarrow cannot parse a chunk, the reader gives up (:class:`ArrowReadRejected`) and the
loader reads the file line by line with the same rules, which name the line and field of the first broken record.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import io
import logging
import os
import pathlib
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as paj
from datasets import Dataset
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from hf_codiemb.data import rules
from hf_codiemb.data.suspicious import FLAGS_COLUMN, HASH_COLUMN, record_hashes_and_flags
from hf_codiemb.data.text_files import PROGRESS_BAR_MIN_BYTES, STSB_HEADER, TSV_HEADER_NAMES, iter_byte_chunks

logger = logging.getLogger(__name__)

# Part of the cache key: bump when the checks or the output of the Arrow reader change.
CACHE_VERSION = "2"
CHUNK_BYTES = 8 << 20
# The characters for which ``str.isspace()`` is true: what ``str.strip()`` removes (a test checks the list).
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WHITESPACE_CHARS = pa.array(list(PY_WHITESPACE))
TEXT_LIST = pa.list_(pa.string())
SCORE_LIST = pa.list_(pa.float64())
SCHEMAS = {
    "ir": pa.schema(
        [("query", pa.string()), ("positives", TEXT_LIST), ("negatives", TEXT_LIST), ("positive_scores", SCORE_LIST),
         ("negative_scores", SCORE_LIST), ("instruction", pa.string()), (HASH_COLUMN, pa.uint64()),
         (FLAGS_COLUMN, pa.uint8())]
    ),
    "sts": pa.schema(
        [("sentence1", pa.string()), ("sentence2", pa.string()), ("score", pa.float64()),
         ("instruction", pa.string()), (HASH_COLUMN, pa.uint64()), (FLAGS_COLUMN, pa.uint8())]
    ),
}
# Record layouts the Arrow reader reads (the reference's nested triples are read line by line).
ARROW_FORMATS = {"ir": ("unified", "flagembedding"), "sts": ("unified", "stsb", "tsv")}


class ArrowReadRejected(Exception):
    """A chunk that the Arrow reader cannot vouch for; the line-by-line reader locates and reports the problem."""


# --------------------------------------------------------------------------------------------------------------
# The screen: rows the rules could refuse (never fewer)
# --------------------------------------------------------------------------------------------------------------


def _mask(values: pa.Array | pa.ChunkedArray, null_is: bool) -> np.ndarray:
    return np.asarray(pc.fill_null(values, null_is).to_numpy(zero_copy_only=False), dtype=bool)


def _suspect_texts(texts: pa.Array) -> np.ndarray:
    """Items a text rule could refuse: missing, empty, or starting with white space (only those can be blank)."""
    starts_blank = pc.or_(pc.equal(pc.binary_length(texts), 0),
                          pc.is_in(pc.utf8_slice_codeunits(texts, 0, 1), _WHITESPACE_CHARS))  # fmt: skip
    return _mask(starts_blank, True)


def _rows_of_items(lists: pa.Array, item_mask: np.ndarray, num_rows: int) -> np.ndarray:
    """Rows of a list column with at least one marked item."""
    rows = np.zeros(num_rows, dtype=bool)
    if item_mask.any():
        rows[pc.list_parent_indices(lists).to_numpy()[item_mask]] = True
    return rows


def _suspect_text_list(lists: pa.Array, required: bool) -> np.ndarray:
    """Rows whose list of texts a rule could refuse: missing (when required), empty (when required), bad items."""
    num_rows = len(lists)
    rows = _rows_of_items(lists, _suspect_texts(pc.list_flatten(lists)), num_rows)
    if required:
        rows |= _mask(pc.equal(pc.list_value_length(lists), 0), True)
    return rows


def _suspect_scores(values: pa.Array, score_range: tuple[float, float] | None) -> np.ndarray:
    """Scores a score rule could refuse: missing, not finite, outside ``score_range``."""
    suspect = pc.invert(pc.is_finite(values))
    if score_range is not None:
        suspect = pc.or_(suspect, pc.or_(pc.less(values, score_range[0]), pc.greater(values, score_range[1])))
    return _mask(suspect, True)


def _suspect_score_lists(
    scores: pa.Array, texts: pa.Array, rows_checked: np.ndarray, score_range: tuple[float, float] | None
) -> np.ndarray:
    """Rows (of ``rows_checked``) whose scores a rule could refuse: absent, not one per text, a bad score."""
    num_rows = len(scores)
    absent = _mask(pc.is_null(scores), True)
    mismatch = _mask(pc.not_equal(pc.list_value_length(scores), pc.list_value_length(texts)), False)
    bad_items = _rows_of_items(scores, _suspect_scores(pc.list_flatten(scores), score_range), num_rows)
    return rows_checked & (absent | mismatch | bad_items)


def _suspect_task(tasks: pa.Array, task: str) -> np.ndarray:
    return _mask(pc.not_equal(pc.utf8_lower(tasks), task), False)


def _recheck(batch: pa.RecordBatch | pa.Table, suspects: np.ndarray, check: Callable[[dict[str, Any]], Any]) -> None:
    """Apply the rule set to the suspect rows; the first refusal rejects the chunk."""
    indices = np.flatnonzero(suspects)
    if not len(indices):
        return
    for row in batch.take(pa.array(indices)).to_pylist():
        try:
            check(row)
        except rules.DataFormatError as exc:
            raise ArrowReadRejected(f"field {exc.field!r}: {exc.problem}") from None


# --------------------------------------------------------------------------------------------------------------
# Chunks -> normalised tables
# --------------------------------------------------------------------------------------------------------------


def _with_stats(arrays: dict[str, pa.Array], task: str) -> pa.Table:
    """The normalised table of a chunk, with the hash and flag columns of :mod:`hf_codiemb.data.suspicious`."""
    hashes, flags = record_hashes_and_flags(arrays, task)
    schema = SCHEMAS[task]
    return pa.Table.from_arrays([*(arrays[name] for name in schema.names[:-2]), hashes, flags], schema=schema)


def ir_table_from_batch(batch: pa.RecordBatch, record_format: str) -> pa.Table:
    """Screen a batch of IR records (parsed with the layout's field names), re-check suspects, normalise it."""
    pos_field, neg_field, pos_scores_field, neg_scores_field, instruction_field = rules.IR_FIELDS[record_format]
    columns = dict(zip(batch.schema.names, batch.columns))
    positives, negatives = columns[pos_field], columns[neg_field]
    with_scores = {field: _mask(pc.is_valid(columns[field]), False) for field in (pos_scores_field, neg_scores_field)}
    suspects = (
        _suspect_task(columns["task"], "ir")
        | _suspect_texts(columns["query"])
        | _suspect_text_list(positives, required=True)
        | _suspect_text_list(negatives, required=False)
        | _suspect_score_lists(columns[pos_scores_field], positives, with_scores[pos_scores_field], None)
        | _suspect_score_lists(
            columns[neg_scores_field], pc.fill_null(negatives, pa.scalar([], TEXT_LIST)), with_scores[neg_scores_field], None
        )
    )
    _recheck(batch, suspects, lambda row: rules.parse_ir_record(row, record_format, "", None))
    arrays = {
        "query": columns["query"],
        "positives": positives,
        "negatives": pc.fill_null(negatives, pa.scalar([], TEXT_LIST)),
        "positive_scores": columns[pos_scores_field],
        "negative_scores": columns[neg_scores_field],
        "instruction": columns[instruction_field],
    }
    return _with_stats(arrays, "ir")


def sts_table_from_unified_batch(batch: pa.RecordBatch, score_range: tuple[float, float] | None) -> pa.Table:
    """Screen a batch of unified STS records, re-check suspects, turn each into its pairs (positives, negatives)."""
    columns = dict(zip(batch.schema.names, batch.columns))
    query, positives = columns["query"], columns["positives"]
    negatives = pc.fill_null(columns["negatives"], pa.scalar([], TEXT_LIST))
    suspects = (
        _suspect_task(columns["task"], "sts")
        | _suspect_texts(query)
        | _suspect_text_list(positives, required=True)
        | _suspect_text_list(negatives, required=False)
    )
    for texts, field in ((positives, "positive_scores"), (negatives, "negative_scores")):
        has_texts = _mask(pc.greater(pc.list_value_length(texts), 0), False)
        suspects |= _suspect_score_lists(columns[field], texts, has_texts, score_range)
    _recheck(batch, suspects, lambda row: rules.sts_pairs_from_record(row, "", None, score_range))
    parents, sides, sentence2, scores = [], [], [], []
    for texts, field, side in ((positives, "positive_scores", 0), (negatives, "negative_scores", 1)):
        has_texts = pc.greater(pc.list_value_length(texts), 0)
        kept_scores = pc.filter(columns[field], has_texts)
        values = pc.list_flatten(kept_scores) if len(kept_scores) else pa.array([], pa.float64())
        text_parents = pc.list_parent_indices(texts).to_numpy()
        parents.append(text_parents)
        sides.append(np.full(len(text_parents), side, dtype=np.int64))
        sentence2.append(pc.list_flatten(texts))
        scores.append(values.cast(pa.float64()))
    parent = np.concatenate(parents)
    order = pa.array(np.argsort(parent * 2 + np.concatenate(sides), kind="stable"))
    parent_index = pa.array(parent[order.to_numpy()])
    arrays = {
        "sentence1": pc.take(query, parent_index),
        "sentence2": pc.take(pa.concat_arrays(sentence2), order),
        "score": pc.take(pa.concat_arrays(scores), order),
        "instruction": pc.take(columns["instruction"], parent_index),
    }
    return _with_stats(arrays, "sts")


def _is_blank_line(lines: pa.Array) -> pa.Array:
    return pc.equal(pc.binary_length(pc.utf8_trim(lines, PY_WHITESPACE)), 0)


def sts_table_from_tsv_chunk(
    chunk: bytes, record_format: str, first: bool, score_range: tuple[float, float] | None
) -> pa.Table:
    """Split one chunk of a tsv file into lines and fields in Arrow, screen and re-check it, return its pairs."""
    lines = pc.list_flatten(pc.split_pattern(pa.array([chunk], pa.binary()), b"\n")).cast(pa.string())
    lines = pc.utf8_rtrim(lines, characters="\r\n")
    if first and len(lines):
        fields = lines[0].as_py().split("\t")
        header = [field.strip().lower() for field in fields]
        if (record_format == "stsb" and header[: len(STSB_HEADER)] == list(STSB_HEADER)) or (
            record_format == "tsv" and len(fields) == 3 and header[2] in TSV_HEADER_NAMES
        ):
            lines = lines.slice(1)
    lines = pc.filter(lines, pc.invert(_is_blank_line(lines)))
    fields = pc.split_pattern(lines, "\t")
    counts = pc.list_value_length(fields)
    if record_format == "stsb":
        wrong_count, positions = pc.less(counts, len(STSB_HEADER)), (6, 7, 5)
    else:
        wrong_count, positions = pc.not_equal(counts, 3), (0, 1, 2)
    if pc.any(wrong_count).as_py():  # a layout problem: the line-by-line reader names the line
        raise ArrowReadRejected("a line with another number of fields")
    sentence1, sentence2, score_text = (pc.list_element(fields, position) for position in positions)
    score = pc.cast(pc.utf8_trim_whitespace(score_text), pa.float64())  # raises on a non-number
    suspects = _suspect_texts(sentence1) | _suspect_texts(sentence2) | _suspect_scores(score, score_range)
    rows = pa.table({"sentence1": sentence1, "sentence2": sentence2, "score": score_text})
    _recheck(rows, suspects, lambda row: rules.sts_pair_from_row(row, "", None, score_range))
    arrays = {"sentence1": sentence1, "sentence2": sentence2, "score": score,
              "instruction": pa.nulls(len(score), pa.string())}  # fmt: skip
    return _with_stats(arrays, "sts")


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


def _json_chunk_table(
    parse_options: paj.ParseOptions,
    task: str,
    record_format: str,
    score_range: tuple[float, float] | None,
    chunk: bytes,
) -> pa.Table:
    """One JSON Lines chunk as the task's table: parsed, its strings checked to be UTF-8 (the JSON reader does not
    check it), screened and normalised."""
    parsed = _read_json_chunk(chunk, parse_options)
    parsed.validate(full=True)
    batches = parsed.combine_chunks().to_batches()  # one batch: fewer, larger compute calls
    if task == "ir":
        tables = [ir_table_from_batch(batch, record_format) for batch in batches]
    else:
        tables = [sts_table_from_unified_batch(batch, score_range) for batch in batches]
    return pa.concat_tables(tables) if tables else SCHEMAS[task].empty_table()


def _ahead(chunks: Iterator[bytes], to_table: Callable[[bytes], pa.Table]) -> Iterator[pa.Table]:
    """``to_table`` of each chunk, one chunk ahead in a worker thread: the next chunk is parsed and screened (pyarrow
    releases the GIL in its kernels) while the caller writes this one to the cache. Tables and errors come in chunk
    order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="codiemb-reader") as pool:
        pending: concurrent.futures.Future | None = None
        for chunk in chunks:
            future = pool.submit(to_table, chunk)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()


# --------------------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------------------


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
    chunk_bytes: int = CHUNK_BYTES


class CodiembDataFile(datasets.ArrowBasedBuilder):
    """A ``datasets`` builder that reads, screens and normalises one IR or STS data file (see the loaders)."""

    BUILDER_CONFIG_CLASS = _DataFileConfig

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(SCHEMAS[self.config.task]))

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={})]

    def _generate_tables(self) -> Iterator[tuple[Any, pa.Table]]:
        config = self.config
        score_range = None if config.score_low is None else (config.score_low, config.score_high)
        if config.task == "ir":
            fields = ["task", "query", *rules.IR_FIELDS[config.record_format]]
        else:
            fields = ["task", "query", "positives", "negatives", "positive_scores", "negative_scores", "instruction"]
        types = [pa.string(), pa.string(), TEXT_LIST, TEXT_LIST, SCORE_LIST, SCORE_LIST, pa.string()]
        parse_options = paj.ParseOptions(
            explicit_schema=pa.schema(list(zip(fields, types))), unexpected_field_behavior="ignore"
        )
        remaining = config.max_records
        chunks = iter_byte_chunks(pathlib.Path(config.path), config.chunk_bytes)
        if config.task == "sts" and config.record_format in ("stsb", "tsv"):
            tables = (
                sts_table_from_tsv_chunk(chunk, config.record_format, index == 0, score_range)
                for index, chunk in enumerate(chunks)
            )
        else:
            tables = _ahead(chunks, functools.partial(_json_chunk_table, parse_options, config.task,
                                                      config.record_format, score_range))  # fmt: skip
        for index, table in enumerate(tables):
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


def read_with_arrow(
    path: pathlib.Path,
    task: str,
    record_format: str,
    *,
    score_range: tuple[float, float] | None = None,
    max_records: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Read a data file through :class:`CodiembDataFile` (cached); raise on anything the screen cannot clear."""
    stat = path.stat()
    builder = CodiembDataFile(
        cache_dir=os.fspath(cache_dir) if cache_dir is not None else datasets.config.HF_DATASETS_CACHE,
        dataset_name="codiemb_data_file",
        hash=CACHE_VERSION,
        path=str(path.resolve()),
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        task=task,
        record_format=record_format,
        score_low=None if score_range is None else float(score_range[0]),
        score_high=None if score_range is None else float(score_range[1]),
        max_records=max_records,
        chunk_bytes=CHUNK_BYTES,
    )
    with _progress_bars(stat.st_size >= PROGRESS_BAR_MIN_BYTES):
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=datasets.Split.TRAIN)
    logger.debug("%s: read with the Arrow reader, cached in %s", path, builder.cache_dir)
    return dataset


# What the Arrow reader raises on input it cannot vouch for, or when the cache cannot be written (OSError: a
# read-only or full disk); anything else is a bug and is raised.
_REFUSALS = (ArrowReadRejected, pa.ArrowException, UnicodeError, EOFError, zlib.error, OSError)


def try_arrow(read: Callable[[], Dataset], name: str) -> tuple[Dataset | None, str | None]:
    """Run the Arrow reader; when it refuses the input return the reason (the line-by-line reader takes over)."""
    try:
        return read(), None
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None or (cause.__context__ is not None and not cause.__suppress_context__):
            cause = cause.__cause__ or cause.__context__
        if not isinstance(cause, _REFUSALS):
            raise
        reason = f"{type(cause).__name__}: {cause}"
        logger.debug("%s: the Arrow reader refused the file (%s); reading it line by line", name, reason)
        return None, reason
