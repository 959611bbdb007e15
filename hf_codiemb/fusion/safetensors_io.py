"""Lazy safetensors reading and a streaming safetensors writer.

Headers are read (and validated) with ``safetensors.safe_open``; tensor data is then viewed through private memory
maps without a copy (and the touched pages dropped from resident memory once used), or copied with positioned
reads (``os.preadv``) into caller-owned buffers. Writing uses :class:`StreamingSafetensorsWriter`, which writes the
header first (all shapes and dtypes are known from the inputs' headers) and then appends each tensor's bytes as
they are produced, so at most one tensor chunk is held in memory. The format is the plain safetensors layout (8-byte little-endian header length, JSON
header padded to 8 bytes, raw little-endian data), loadable by ``safetensors.safe_open`` and transformers.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import safe_open

from hf_codiemb.model_folder import (
    ADAPTER_WEIGHT_PREFIX,
    BACKEND_EXPORT_FOLDERS,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_WEIGHTS_FILE,
    shard_files,
)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_SAFETENSORS = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


@dataclass(frozen=True)
class TensorInfo:
    """Header entry of one tensor: which file holds it, its dtype string and shape."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int] | None = None  # absolute byte range of the tensor's data in ``file``

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def torch_dtype(self) -> torch.dtype:
        return SAFETENSORS_DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes, shapes and byte offsets of one safetensors file, without reading any data.

    Raises:
        ValueError: the file is truncated or not a safetensors file (the message names it).
    """
    try:
        with safe_open(str(path), framework="pt") as handle:  # validates the header against the file size
            names = list(handle.keys())
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
    except Exception as exc:  # safetensors raises its own SafetensorError (truncated, corrupt header)
        raise ValueError(f"{path} is not a valid safetensors file (truncated or corrupt?): {exc}") from exc
    start = 8 + length
    infos = {}
    for name in names:
        entry = header[name]
        begin, end = entry["data_offsets"]
        infos[name] = TensorInfo(Path(path), entry["dtype"], tuple(entry["shape"]), (start + begin, start + end))
    return infos


def weight_groups(folder: Path) -> dict[str, dict[str, TensorInfo]]:
    """All safetensors weights of a model folder, grouped by the output file that will hold them.

    Keys are POSIX paths relative to ``folder`` (``"model.safetensors"``, ``"2_Dense/model.safetensors"``); a sharded
    checkpoint (``model.safetensors.index.json``) becomes one group named ``model.safetensors`` in its folder.
    Hidden folders, ``checkpoint-*`` subfolders and ONNX/OpenVINO exports are skipped.
    """
    groups: dict[str, dict[str, TensorInfo]] = {}
    sharded_files: set[Path] = set()
    for index_path in sorted(folder.rglob(SAFETENSORS_INDEX_FILE)):
        if _skipped(index_path.relative_to(folder)):
            continue
        infos: dict[str, TensorInfo] = {}
        for shard in sorted(shard_files(index_path)):
            shard_path = index_path.parent / shard
            sharded_files.add(shard_path)
            infos.update(read_header(shard_path))
        key = (index_path.parent.relative_to(folder) / SAFETENSORS_WEIGHTS_FILE).as_posix()
        groups[key] = infos
    for path in sorted(folder.rglob("*.safetensors")):
        relative = path.relative_to(folder)
        if path in sharded_files or _skipped(relative) or path.name.startswith(ADAPTER_WEIGHT_PREFIX):
            continue
        groups[relative.as_posix()] = read_header(path)
    return groups


def _skipped(relative: Path) -> bool:
    return any(
        part.startswith((".", "checkpoint-")) or part in BACKEND_EXPORT_FOLDERS
        for part in relative.parts[:-1]
    )


class LazyReader:
    """Reads whole tensors or row ranges of safetensors files on demand, zero-copy where it can.

    :meth:`view` returns a tensor over a private, copy-on-write memory map of the file: no copy and no allocation,
    the data comes straight from the page cache into the arithmetic. Pages of a mapping that were touched count as
    resident memory until they are dropped, so the streaming pipeline calls :meth:`release` once a chunk is done,
    which keeps RSS at a chunk per input rather than growing towards K+1 model sizes. :meth:`read` returns a copy
    (positioned reads, optionally into a caller's buffer). Tensors whose header entry has no byte offsets fall back
    to ``safe_open``.
    """

    def __init__(self) -> None:
        self._files: dict[Path, int] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> LazyReader:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap and close every file opened so far (a mapping still viewed by a live tensor is left to the GC)."""
        with self._lock:
            for mapping in self._maps.values():
                try:
                    mapping.close()
                except BufferError:
                    pass
            self._maps.clear()
            for descriptor in self._files.values():
                os.close(descriptor)
            self._files.clear()

    @staticmethod
    def _byte_range(info: TensorInfo, rows: tuple[int, int] | None) -> tuple[tuple[int, ...], int, int]:
        """(shape, first byte, end byte) of rows ``[start, stop)`` (or the whole tensor) in the file."""
        assert info.data_offsets is not None
        shape = chunk_shape(info.shape, rows)
        begin, end = info.data_offsets
        if rows is not None and info.shape and info.shape[0]:
            row_bytes = (end - begin) // info.shape[0]
            begin, end = begin + rows[0] * row_bytes, begin + rows[1] * row_bytes
        return shape, begin, end

    def _direct(self, info: TensorInfo) -> bool:
        return info.data_offsets is not None and sys.byteorder == "little"

    def read(
        self,
        name: str,
        info: TensorInfo,
        rows: tuple[int, int] | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A copy of the tensor ``name`` (or rows ``[start, stop)`` of its first dimension).

        Args:
            name: the tensor's name (for the ``safe_open`` fallback and error messages).
            info: its header entry.
            rows: a row range, or ``None`` for the whole tensor.
            out: a flat, contiguous buffer of the tensor's dtype with at least as many elements as are read; the
                result is then a view of it (overwritten by the next read into the same buffer).
        """
        if not self._direct(info):
            tensor = self._read_safe_open(name, info, rows)
            return out[: tensor.numel()].view(tensor.shape).copy_(tensor) if out is not None else tensor
        shape, begin, _ = self._byte_range(info, rows)
        numel = math.prod(shape)
        target = torch.empty(numel, dtype=info.torch_dtype) if out is None else out[:numel]
        if numel:
            self._read_into(info.file, target, begin, name)
        return target.view(shape)

    def view(self, name: str, info: TensorInfo, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor ``name`` (or rows of it) as a zero-copy view of the file's copy-on-write mapping.

        Writing into the view changes only this process's copy of the pages (never the file). Call :meth:`release`
        with the same arguments once the data is no longer needed. Falls back to :meth:`read` where the file cannot
        be mapped.
        """
        if not self._direct(info) or not hasattr(mmap.mmap, "madvise"):
            return self.read(name, info, rows)
        shape, begin, end = self._byte_range(info, rows)
        numel = math.prod(shape)
        if not numel:
            return torch.empty(shape, dtype=info.torch_dtype)
        mapping = self._mapping(info.file)
        if end > len(mapping):
            raise OSError(f"{info.file} is truncated: tensor {name!r} ends past the end of the file")
        return torch.frombuffer(mapping, dtype=info.torch_dtype, count=numel, offset=begin).view(shape)

    def release(self, info: TensorInfo, rows: tuple[int, int] | None = None) -> None:
        """Drop the pages of ``view(info, rows)`` from this process's resident memory (the OS page cache keeps
        them; a later view faults them back in)."""
        mapping = self._maps.get(info.file)
        if mapping is None or info.data_offsets is None:
            return
        _, begin, end = self._byte_range(info, rows)
        start = begin - begin % mmap.PAGESIZE
        if end > start:
            mapping.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _descriptor(self, path: Path) -> int:
        descriptor = self._files.get(path)
        if descriptor is None:
            with self._lock:
                descriptor = self._files.get(path)
                if descriptor is None:
                    descriptor = self._files[path] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return descriptor

    def _mapping(self, path: Path) -> mmap.mmap:
        mapping = self._maps.get(path)
        if mapping is None:
            descriptor = self._descriptor(path)
            with self._lock:
                mapping = self._maps.get(path)
                if mapping is None:
                    mapping = self._maps[path] = mmap.mmap(descriptor, 0, access=mmap.ACCESS_COPY)
        return mapping

    def _read_into(self, path: Path, target: torch.Tensor, offset: int, name: str) -> None:
        descriptor = self._descriptor(path)
        view = memoryview(target.view(torch.uint8).numpy())
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                count = os.preadv(descriptor, [view[done:]], offset + done)
            else:  # pragma: no cover - platforms without preadv (Windows)
                os.lseek(descriptor, offset + done, os.SEEK_SET)
                chunk = os.read(descriptor, len(view) - done)
                view[done : done + len(chunk)] = chunk
                count = len(chunk)
            if count == 0:
                raise OSError(f"{path} is truncated: tensor {name!r} ends past the end of the file")
            done += count

    @staticmethod
    def _read_safe_open(name: str, info: TensorInfo, rows: tuple[int, int] | None) -> torch.Tensor:
        with safe_open(str(info.file), framework="pt") as handle:
            if rows is None or not info.shape:
                return handle.get_tensor(name)
            return handle.get_slice(name)[rows[0] : rows[1]]


def chunk_shape(shape: tuple[int, ...], rows: tuple[int, int] | None) -> tuple[int, ...]:
    """The shape of rows ``[start, stop)`` of a tensor of ``shape`` (``shape`` itself for ``None`` or 0-d)."""
    if rows is None or not shape:
        return shape
    return (rows[1] - rows[0], *shape[1:])


def row_chunks(shape: tuple[int, ...], max_elements: int) -> Iterator[tuple[int, int] | None]:
    """Row ranges of at most ``max_elements`` elements (whole tensor, ``None``, when it is small or 0-d)."""
    total = 1
    for dim in shape:
        total *= dim
    if not shape or total <= max_elements:
        yield None
        return
    row = total // shape[0] if shape[0] else 1
    step = max(1, max_elements // max(row, 1))
    for start in range(0, shape[0], step):
        yield (start, min(start + step, shape[0]))


class StreamingSafetensorsWriter:
    """Write a safetensors file tensor by tensor, in a fixed order declared up front.

    Args:
        path: the file to create.
        specs: ``(name, dtype, shape)`` of every tensor, in the order they will be written.
        metadata: string metadata stored under ``__metadata__`` (``{"format": "pt"}`` by default).

    Call :meth:`write` with the tensors (or consecutive row chunks of a tensor) in order, then :meth:`close`,
    which checks every declared byte was written.
    """

    def __init__(
        self,
        path: Path,
        specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        self._expected: list[tuple[str, torch.dtype, int]] = []
        for name, dtype, shape in specs:
            numel = 1
            for dim in shape:
                numel *= dim
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            header[name] = {
                "dtype": TORCH_TO_SAFETENSORS[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._expected.append((name, dtype, nbytes))
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close()/abort())
        self._file.write(struct.pack("<Q", len(encoded)))
        self._file.write(encoded)
        self._position = 0  # index into self._expected
        self._written = 0  # bytes of the current tensor written so far

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` (the whole tensor ``name`` or its next row chunk)."""
        if self._position >= len(self._expected):
            raise ValueError(f"Unexpected tensor {name!r}: all declared tensors were written")
        expected_name, dtype, nbytes = self._expected[self._position]
        if name != expected_name:
            raise ValueError(f"Expected tensor {expected_name!r} next, got {name!r}")
        if tensor.dtype != dtype:
            raise ValueError(f"Tensor {name!r} has dtype {tensor.dtype}, declared {dtype}")
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(data))
        self._written += data.nbytes
        if self._written > nbytes:
            raise ValueError(f"Tensor {name!r}: more bytes written than its declared shape holds")
        if self._written == nbytes:
            self._position += 1
            self._written = 0

    def close(self) -> None:
        """Flush and close; raise if some declared tensor was not (fully) written."""
        complete = self._position == len(self._expected)
        self._file.flush()
        self._file.close()
        if not complete:
            missing = self._expected[self._position][0]
            raise ValueError(f"Streaming writer closed before tensor {missing!r} was fully written")

    def abort(self) -> None:
        """Close the file without the completeness check (the caller deletes it)."""
        if not self._file.closed:
            self._file.close()
