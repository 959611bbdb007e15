"""Reading data files as text: paths, UTF-8 lines (gzip and a byte order mark handled), JSON Lines, tsv fields.

Every problem raises :class:`~hf_codiemb.data.rules.DataFormatError` naming the file and the 1-based line.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

from hf_codiemb.data.rules import DataFormatError
from hf_codiemb.errors import DataError, DataFileNotFoundError

# Files larger than this get a progress bar while they are read.
PROGRESS_BAR_MIN_BYTES = 32 * 1024 * 1024
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"


def check_path(source: str | os.PathLike[str]) -> pathlib.Path:
    """Return ``source`` as a path of an existing regular file, or raise a user error naming it."""
    path = pathlib.Path(source)
    if path.is_dir():
        raise DataError(f"{os.path.abspath(path)}: is a directory, not a data file (give the .jsonl/.tsv file in it)")
    if not path.is_file():
        raise DataFileNotFoundError(f"data file not found: {os.path.abspath(path)}")
    return path


def is_gzip(path: pathlib.Path) -> bool:
    """Whether the file starts with the gzip magic bytes (whatever its suffix)."""
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def data_suffix(path: pathlib.Path) -> str:
    """The suffix that tells the format: ``.jsonl`` for ``x.jsonl`` and for ``x.jsonl.gz``."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _maybe_progress(lines: Iterable[bytes], path: pathlib.Path) -> Iterable[bytes]:
    """Wrap ``lines`` in a progress bar when ``path`` is big enough for one to be useful."""
    if path.stat().st_size < PROGRESS_BAR_MIN_BYTES:
        return lines
    return tqdm(lines, desc=f"Reading {path.name}", unit=" lines")


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


def iter_text_lines(
    path: pathlib.Path, name: str, progress: bool = True, columns: tuple[str, ...] | None = None
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line of a UTF-8 text file, without its line terminator.

    gzip-compressed files (detected from their first bytes, whatever their suffix) are decompressed on the fly and
    numbered by their decompressed lines; a UTF-8 byte order mark at the start is skipped. Bytes that are not
    UTF-8 and a corrupt or truncated gzip stream raise :class:`DataFormatError` naming the file and the line; for
    bytes that are not UTF-8 also the field (``columns`` names a tab-separated file's columns).
    """
    compressed = is_gzip(path)
    line_number = 0
    try:
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as handle:
            for line_number, raw in enumerate(_maybe_progress(handle, path) if progress else handle, start=1):
                if line_number == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM) :]
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


def iter_jsonl(path: pathlib.Path, name: str, progress: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every non-blank line of a JSON Lines file (plain or gzip)."""
    for line_number, line in iter_text_lines(path, name, progress):
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


def iter_tsv_rows(path: pathlib.Path, name: str, progress: bool = True) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)``; one record per physical line, split at tabs (quotes are plain text)."""
    for line_number, line in iter_text_lines(path, name, progress):
        fields = line.split("\t")
        if all(not field.strip() for field in fields):
            continue
        yield line_number, fields


def iter_byte_chunks(path: pathlib.Path, chunk_bytes: int) -> Iterator[bytes]:
    """Chunks of about ``chunk_bytes`` ending at a line end (plain or gzip file; a leading UTF-8 BOM removed)."""
    with (gzip.open(path, "rb") if is_gzip(path) else path.open("rb")) as handle:
        first = True
        while True:
            chunk = handle.read(chunk_bytes)
            if not chunk:
                return
            if not chunk.endswith(b"\n"):
                chunk += handle.readline()
            if first and chunk.startswith(UTF8_BOM):
                chunk = chunk[len(UTF8_BOM) :]
            first = False
            yield chunk


# STS tsv layouts: the STS Benchmark's 8 columns, or ``s1 <TAB> s2 <TAB> score``.
STSB_HEADER = ("split", "genre", "dataset", "year", "sid", "score", "sentence1", "sentence2")
TSV_HEADER_NAMES = {"score", "label", "similarity", "gold", "labels"}


def detect_tsv_format(path: pathlib.Path, name: str) -> str:
    """``"stsb"`` or ``"tsv"`` from the number of fields of the first non-blank line."""
    for line, fields in iter_tsv_rows(path, name, progress=False):
        if len(fields) >= len(STSB_HEADER):
            return "stsb"
        if len(fields) == 3:
            return "tsv"
        raise DataFormatError(
            name, line, None, f"has {len(fields)} tab-separated fields; expected 3 (s1, s2, score) or 8 (STS-B)"
        )
    raise DataFormatError(name, None, None, "contains no records")


def iter_stsb_rows(path: pathlib.Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """STS Benchmark tsv: ``split, genre, dataset, year, sid, score, sentence1, sentence2`` (header optional).

    Extra trailing fields (some distributions append source notes) are ignored.
    """
    for line, fields in iter_tsv_rows(path, name):
        if line == 1 and [field.strip().lower() for field in fields[: len(STSB_HEADER)]] == list(STSB_HEADER):
            continue
        if len(fields) < len(STSB_HEADER):
            raise DataFormatError(
                name, line, STSB_HEADER[len(fields)], f"missing: the line has {len(fields)} tab-separated fields, expected 8"
            )
        yield line, {"sentence1": fields[6], "sentence2": fields[7], "score": fields[5]}


def iter_plain_tsv_rows(path: pathlib.Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Generic / Chinese STS-B tsv: ``s1 <TAB> s2 <TAB> score``; a header line naming the score is skipped."""
    for line, fields in iter_tsv_rows(path, name):
        if line == 1 and len(fields) == 3 and fields[2].strip().lower() in TSV_HEADER_NAMES:
            continue
        if len(fields) != 3:
            field = ("sentence1", "sentence2", "score")[len(fields)] if len(fields) < 3 else None
            problem = f"the line has {len(fields)} tab-separated fields, expected 3 (s1, s2, score)"
            raise DataFormatError(name, line, field, ("missing: " if field else "") + problem)
        yield line, {"sentence1": fields[0], "sentence2": fields[1], "score": fields[2]}
