"""Valid but probably wrong data: the one count of suspicious records, computed in Arrow.

:func:`record_hashes_and_flags` computes, for a table of loaded records, a 64-bit hash of each record and a flag
byte per record; the Arrow reader stores both per chunk (in the cache, two private columns) and the line-by-line
reader computes them on its loaded table, so both count with :func:`counts_from_columns`, the one implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from datasets import Dataset

logger = logging.getLogger(__name__)

HASH_COLUMN = "_codiemb_record_hash"
FLAGS_COLUMN = "_codiemb_flags"
# Flag bits: IR query in its positives / negatives, a text both positive and negative; STS identical sentences.
FLAG_QUERY_IS_POSITIVE, FLAG_QUERY_IS_NEGATIVE, FLAG_POSITIVE_IS_NEGATIVE, FLAG_IDENTICAL_PAIR = 1, 2, 4, 8
_TEXT_LIST = pa.list_(pa.string())


def _row_hashes(parts: list[pa.Array]) -> pa.Array:
    """A 64-bit hash of each row's texts (xxh3 of the texts joined with control characters)."""
    joined = pc.binary_join_element_wise(*parts, "\x1f")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    offset_type = np.int64 if pa.types.is_large_string(joined.type) else np.int32
    offsets = np.frombuffer(joined.buffers()[1], dtype=offset_type)[joined.offset : joined.offset + len(joined) + 1]
    data = joined.buffers()[2]
    view = memoryview(data) if data is not None else memoryview(b"")
    bounds = offsets.tolist()
    rows = map(view.__getitem__, map(slice, bounds[:-1], bounds[1:]))  # C-level iteration: no Python frame per row
    hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, rows), dtype=np.uint64, count=len(joined))
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
        equal = pc.equal(pc.take(flat, pa.array(same_length)), pc.take(values, pa.array(parents[same_length])))
        mask[parents[same_length][equal.to_numpy(zero_copy_only=False)]] = True
    return mask


def _rows_sharing_a_text(first: pa.Array, second: pa.Array, num_rows: int) -> np.ndarray:
    """Boolean mask of the rows whose lists ``first`` and ``second`` have a text in common."""

    def keyed(texts: pa.Array) -> tuple[pa.Array, pa.Array]:
        parents = pc.list_parent_indices(texts)
        return parents, pc.binary_join_element_wise(pc.cast(parents, pa.string()), pc.list_flatten(texts), "\x1f")

    def length_keys(texts: pa.Array) -> pa.Array:  # (row, byte length) of every item, as one int64
        parents = pc.list_parent_indices(texts).to_numpy().astype(np.int64)
        return pa.array(parents << 32 | pc.binary_length(pc.list_flatten(texts)).to_numpy(zero_copy_only=False))

    mask = np.zeros(num_rows, dtype=bool)
    same_length = pc.is_in(length_keys(second), value_set=length_keys(first)).to_numpy(zero_copy_only=False)
    if not same_length.any():
        return mask  # no row has a text in both lists with the same byte length (the usual case)
    rows = np.unique(pc.list_parent_indices(second).to_numpy()[same_length])
    _, first_keys = keyed(pc.take(first, pa.array(rows)))
    second_parents, second_keys = keyed(pc.take(second, pa.array(rows)))
    found = pc.is_in(second_keys, value_set=first_keys).to_numpy(zero_copy_only=False)
    mask[rows[second_parents.to_numpy()[found]]] = True
    return mask


def record_hashes_and_flags(columns: Mapping[str, pa.Array], task: str) -> tuple[pa.Array, pa.Array]:
    """The hash and flag columns of loaded records (IR: ``query, positives, negatives``; STS: the pair columns)."""
    if task == "ir":
        query, positives, negatives = columns["query"], columns["positives"], columns["negatives"]
        num_rows = len(query)
        hashes = _row_hashes([query, pc.binary_join(positives, "\x1e"), pc.binary_join(negatives, "\x1e")])
        flags = (
            _rows_with_match(positives, query, num_rows) * FLAG_QUERY_IS_POSITIVE
            + _rows_with_match(negatives, query, num_rows) * FLAG_QUERY_IS_NEGATIVE
            + _rows_sharing_a_text(positives, negatives, num_rows) * FLAG_POSITIVE_IS_NEGATIVE
        ).astype(np.uint8)
    else:
        sentence1, sentence2, score = columns["sentence1"], columns["sentence2"], columns["score"]
        hashes = _row_hashes([sentence1, sentence2, pc.cast(score, pa.string())])
        flags = np.asarray(pc.equal(sentence1, sentence2).to_numpy(zero_copy_only=False), dtype=np.uint8)
        flags *= FLAG_IDENTICAL_PAIR
    return hashes, pa.array(flags, type=pa.uint8())


def counts_from_columns(hashes: pa.Array, flags: pa.Array, scores: pa.Array | None, task: str) -> dict[str, int]:
    """:func:`suspicious_record_counts` from the hash and flag columns (and, for STS, the scores)."""
    total = len(hashes)
    flags = pc.cast(flags, pa.int64())

    def flagged(bit: int) -> int:
        return int(pc.sum(pc.not_equal(pc.bit_wise_and(flags, bit), 0)).as_py() or 0)

    counts = {"records": total, "duplicates": total - int(pc.count_distinct(hashes).as_py() or 0)}
    if task == "ir":
        counts["query_is_positive"] = flagged(FLAG_QUERY_IS_POSITIVE)
        counts["query_is_negative"] = flagged(FLAG_QUERY_IS_NEGATIVE)
        counts["positive_is_negative"] = flagged(FLAG_POSITIVE_IS_NEGATIVE)
    else:
        counts["identical_pairs"] = flagged(FLAG_IDENTICAL_PAIR)
        counts["distinct_scores"] = int(pc.count_distinct(scores).as_py() or 0)
    return counts


def _record_columns(rows: Dataset | Iterable[Mapping[str, Any]], task: str) -> dict[str, pa.Array]:
    """The columns the count looks at, as Arrow arrays (a missing ``negatives`` is empty)."""
    if isinstance(rows, Dataset):
        table = rows.data
        names = set(table.column_names)
        columns = {name: table.column(name).combine_chunks() for name in ("query", "positives", "negatives",
                   "sentence1", "sentence2", "score") if name in names}  # fmt: skip
        if task == "ir" and "negatives" not in columns:
            columns["negatives"] = pa.array([[]] * table.num_rows, _TEXT_LIST)
        return columns
    rows = list(rows)
    if task == "ir":
        return {
            "query": pa.array([row["query"] for row in rows], pa.string()),
            "positives": pa.array([list(row["positives"]) for row in rows], _TEXT_LIST),
            "negatives": pa.array([list(row.get("negatives") or []) for row in rows], _TEXT_LIST),
        }
    return {
        "sentence1": pa.array([row["sentence1"] for row in rows], pa.string()),
        "sentence2": pa.array([row["sentence2"] for row in rows], pa.string()),
        "score": pa.array([float(row["score"]) for row in rows], pa.float64()),
    }


def suspicious_record_counts(rows: Dataset | Iterable[Mapping[str, Any]], task: str) -> dict[str, int]:
    """Count the records of a loaded dataset that are valid but probably a mistake.

    Args:
        rows: records with the columns the loaders produce (IR: ``query``, ``positives``, ``negatives``; STS:
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
    columns = _record_columns(rows, task)
    hashes, flags = record_hashes_and_flags(columns, task)
    return counts_from_columns(hashes, flags, columns.get("score"), task)


def warn_suspicious_records(rows: Dataset | Iterable[Mapping[str, Any]], task: str, source: str) -> dict[str, int]:
    """Log one warning for ``source`` listing the suspicious records of a dataset, with counts; return the counts.

    The loaders call it once per file; see :func:`suspicious_record_counts` for what is counted. Nothing is logged
    when nothing is suspicious.
    """
    counts = suspicious_record_counts(rows, task)
    warn_suspicious_counts(counts, task, source)
    return counts


def warn_suspicious_counts(counts: dict[str, int], task: str, source: str) -> None:
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
            findings.append("every gold score is equal (no signal for the STS losses; Spearman is undefined)")
    if findings:
        logger.warning("%s: suspicious data in %d records: %s", source, total, "; ".join(findings))
