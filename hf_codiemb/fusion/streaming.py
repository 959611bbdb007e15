"""The streaming merge engine: every weight tensor of the inputs, chunk by chunk, into new safetensors files.

Inputs are read as zero-copy views of memory-mapped files (pages dropped from resident memory after each chunk),
temporaries live in buffers reused from chunk to chunk, and a writer thread appends each merged chunk to the output
file while the next one is computed: the calling thread does the method's arithmetic and little else, and memory
stays at a few chunks per input whatever the model size. Inputs are checked for NaN/inf as they stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_codiemb.fusion.errors import FusionError
from hf_codiemb.fusion.method import ChunkWorkspace, FusionMethod
from hf_codiemb.fusion.safetensors_io import LazyReader, StreamingSafetensorsWriter, TensorInfo, row_chunks
from hf_codiemb.fusion.stats import WeightStatistics
from hf_codiemb.fusion.validate import FusionPlan

Rows = tuple[int, int] | None


@dataclass
class TensorJob:
    """One float tensor to merge: where it is in every input, and the inputs' labels for error messages.

    Attributes:
        group: the weight file (``model.safetensors``, ``2_Dense/model.safetensors``).
        name: the tensor's name.
        infos: ``[reference, checkpoint 1, ..., checkpoint K]`` header entries (reference: the base, else checkpoint 1).
        labels: the inputs' labels, aligned with ``infos``.
        has_base: whether ``infos[0]`` is a base model (read and passed to the method) or checkpoint 1 again.
        chunks: the row ranges the tensor is merged in.
    """

    group: str
    name: str
    infos: list[TensorInfo]
    labels: list[str]
    has_base: bool
    chunks: list[Rows]

    def read_inputs(self) -> list[tuple[str, TensorInfo]]:
        """(label, info) of the inputs that are read: the base (if any) and every checkpoint."""
        pairs = list(zip(self.labels, self.infos))
        return pairs if self.has_base else pairs[1:]


# Chunks whose results may wait in the writer's queue; each has its own buffers, reused once its write is done.
_WRITE_SLOTS = 4


def merge_weights(
    method: FusionMethod,
    plan: FusionPlan,
    labels: list[str],
    has_base: bool,
    staging: Path,
    statistics: WeightStatistics,
    chunk_elements: int,
    show_progress: bool,
) -> bool:
    """Merge every weight file of ``plan`` into ``staging``; return whether per-checkpoint weights were recorded.

    A writer thread appends merged chunks to the output files while the calling thread merges the next ones
    (writes and torch's kernels release the GIL); up to ``_WRITE_SLOTS`` chunks wait in its queue.

    Args:
        method: the fusion method.
        plan: group -> tensor name -> ``[reference, checkpoint 1, ..., checkpoint K]`` header entries.
        labels: the inputs' labels, aligned with a plan row.
        has_base: whether the plan's reference is a base model.
        staging: the folder the weight files are written to.
        statistics: receives each tensor's per-checkpoint weight sums.
        chunk_elements: maximum elements per input per chunk (elementwise methods).
        show_progress: show a tqdm bar over tensors.

    Raises:
        FusionError: an input (or the merged result) holds NaN/inf; the message names the inputs, the tensor and the
            number of non-finite values.
    """
    recorded = False
    total = sum(len(tensors) for tensors in plan.values())
    writers: list[StreamingSafetensorsWriter] = []
    with LazyReader() as reader, tqdm(total=total, desc="Fusing tensors", unit="tensor",
                                      disable=not show_progress) as progress, \
            ThreadPoolExecutor(1, thread_name_prefix="fusion-write") as write_pool:
        queue = _WriteQueue(write_pool)
        try:
            for group, tensors in plan.items():
                target = staging / group
                target.parent.mkdir(parents=True, exist_ok=True)
                specs = [(name, infos[0].torch_dtype, infos[0].shape) for name, infos in tensors.items()]
                writer = StreamingSafetensorsWriter(target, specs)
                writers.append(writer)
                for name, infos in tensors.items():
                    reference = infos[0]
                    if not reference.is_float:
                        # Buffers (position ids, ...) come unchanged from the base (or the first checkpoint).
                        queue.submit(writer.write, name, reader.read(name, reference))
                    else:
                        chunks = list(row_chunks(reference.shape, chunk_elements)) if method.elementwise else [None]
                        job = TensorJob(group, name, infos, labels, has_base, chunks)
                        sums = _merge_tensor(method, reader, job, writer, queue)
                        if sums is not None:
                            statistics.add(group, name, sums, reference.numel)
                            recorded = True
                    progress.update(1)
                queue.submit(writer.close)
            queue.drain()
        except BaseException:
            for writer in writers:
                write_pool.submit(writer.abort)
            raise
    return recorded


class _WriteQueue:
    """Writes in order on one thread; hands out the buffers of a slot once that slot's last write is done."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.slots = [ChunkWorkspace() for _ in range(_WRITE_SLOTS)]
        self.norms_workspace = ChunkWorkspace()  # whole-tensor statistics, computed by the calling thread only
        self._slot_writes: list[Future | None] = [None] * _WRITE_SLOTS
        self._pending: list[Future] = []
        self._next = 0

    def next_slot(self) -> int:
        """The slot for the next chunk (waits for its previous write); surfaces a failed write."""
        slot = self._next
        self._next = (slot + 1) % _WRITE_SLOTS
        previous = self._slot_writes[slot]
        if previous is not None:
            previous.result()
        for future in [f for f in self._pending if f.done()]:
            future.result()
        self._pending = [f for f in self._pending if not f.done()]
        return slot

    def submit(self, function: Callable[..., None], *args: object, slot: int | None = None) -> None:
        future = self.pool.submit(function, *args)
        self._pending.append(future)
        if slot is not None:
            self._slot_writes[slot] = future

    def drain(self) -> None:
        for future in self._pending:
            future.result()
        self._pending = []


def _merge_tensor(
    method: FusionMethod,
    reader: LazyReader,
    job: TensorJob,
    writer: StreamingSafetensorsWriter,
    queue: _WriteQueue,
) -> torch.Tensor | None:
    """Merge one float tensor chunk by chunk, queue its chunks for writing; return its per-checkpoint weight sums."""
    delta_norms = _delta_norms(method, reader, job, queue.norms_workspace)
    weight_sums: torch.Tensor | None = torch.zeros(len(job.infos) - 1, dtype=torch.float64)
    for rows in job.chunks:
        slot = queue.next_slot()
        workspace = queue.slots[slot]
        base_chunk, checkpoint_chunks = _load(method, reader, job, rows, workspace)
        merged, sums = _merge_chunk(method, reader, job, base_chunk, checkpoint_chunks, workspace, delta_norms)
        del base_chunk, checkpoint_chunks
        # The writer checks and writes `merged` later: it lives in this slot's buffers (not reused before the write
        # is done) or in the private file mapping, whose dropped pages read back from the unchanged file.
        queue.submit(_check_and_write, reader, job, writer, merged, rows, slot=slot)
        del merged
        if sums is None or weight_sums is None:
            weight_sums = None
        else:
            weight_sums += sums.to(torch.float64)
    return weight_sums


def _check_and_write(
    reader: LazyReader, job: TensorJob, writer: StreamingSafetensorsWriter, merged: torch.Tensor, rows: Rows
) -> None:
    """On the writer thread: refuse a chunk holding NaN/inf (naming the inputs that caused it), else append it, then
    drop the inputs' pages of these rows from resident memory."""
    if not _all_finite(merged):
        _refuse_non_finite(reader, job)
    writer.write(job.name, merged)
    _release(reader, job, rows)


def _compute_dtype(info: TensorInfo) -> torch.dtype:
    return torch.float64 if info.torch_dtype == torch.float64 else torch.float32


def _read(
    method: FusionMethod, reader: LazyReader, job: TensorJob, key: str, info: TensorInfo, rows: Rows,
    workspace: ChunkWorkspace,
) -> torch.Tensor:
    """Rows of one input in the compute dtype: a view of the mapped file when no conversion is needed (elementwise
    methods), else converted into ``workspace``'s buffer ``key``; whole-tensor methods get a fresh copy."""
    compute_dtype = _compute_dtype(job.infos[0])
    if not method.elementwise:
        return reader.read(job.name, info, rows).to(compute_dtype)
    values = reader.view(job.name, info, rows)
    if values.dtype == compute_dtype:
        return values
    return workspace.get(key, values.shape, compute_dtype).copy_(values)


def _load(
    method: FusionMethod, reader: LazyReader, job: TensorJob, rows: Rows, workspace: ChunkWorkspace
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    base = _read(method, reader, job, "input.base", job.infos[0], rows, workspace) if job.has_base else None
    checkpoints = [_read(method, reader, job, f"input.{index}", info, rows, workspace)
                   for index, info in enumerate(job.infos[1:])]
    return base, checkpoints


def _release(reader: LazyReader, job: TensorJob, rows: Rows) -> None:
    for _, info in job.read_inputs():
        reader.release(info, rows)


def _delta_norms(
    method: FusionMethod, reader: LazyReader, job: TensorJob, workspace: ChunkWorkspace
) -> torch.Tensor | None:
    """``||theta_k - theta_0||_2`` of the whole tensor per checkpoint (a first pass), for methods that need it."""
    if not method.needs_delta_norms:
        return None
    if not job.has_base:
        raise FusionError(f"Method {method.name!r} needs a base model")
    squares = torch.zeros(len(job.infos) - 1, dtype=torch.float64)
    for rows in job.chunks:
        base_chunk, checkpoint_chunks = _load(method, reader, job, rows, workspace)
        for index, chunk in enumerate(checkpoint_chunks):
            squares[index] += (chunk - base_chunk).double().square().sum()
        del base_chunk, checkpoint_chunks
        _release(reader, job, rows)
    return squares.sqrt()


def _merge_chunk(
    method: FusionMethod,
    reader: LazyReader,
    job: TensorJob,
    base_chunk: torch.Tensor | None,
    checkpoint_chunks: list[torch.Tensor],
    workspace: ChunkWorkspace,
    delta_norms: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Merge one chunk; return it in the output dtype, and its per-checkpoint weight sums.

    The inputs are checked for NaN/inf here when the method does not propagate them (the merged values always are,
    on the writer thread); a non-finite value stops the fusion with the inputs and counts that caused it.
    """
    if not method.propagates_non_finite:
        inputs = ([base_chunk] if base_chunk is not None else []) + checkpoint_chunks
        if not all(_all_finite(chunk) for chunk in inputs):
            _refuse_non_finite(reader, job)
    output = method.merge_chunk(base_chunk, checkpoint_chunks, workspace, delta_norms=delta_norms, name=job.name)
    merged = output.merged
    out_dtype = job.infos[0].torch_dtype
    if merged.dtype != out_dtype:
        merged = (workspace.get("output", merged.shape, out_dtype).copy_(merged) if method.elementwise
                  else merged.to(out_dtype))
    return merged, output.weight_sums


def _all_finite(values: torch.Tensor) -> bool:
    """Whether ``values`` holds no NaN/inf: one read-only reduction on the fast path (a sum is finite when every
    value is, unless it overflows, which the exact check then sorts out)."""
    if values.numel() == 0 or math.isfinite(float(values.sum())):
        return True
    return bool(torch.isfinite(values).all())


def _refuse_non_finite(reader: LazyReader, job: TensorJob) -> None:
    """Count the NaN/inf values of ``job``'s tensor in every input (re-reading it: the error path only) and raise a
    :class:`FusionError` naming the inputs, the tensor and the counts."""
    where = f"tensor {job.name!r} of {job.group}"
    found = []
    for label, info in job.read_inputs():
        nan = inf = 0
        for rows in job.chunks:
            values = reader.read(job.name, info, rows)
            nan += int(torch.isnan(values).sum())
            inf += int(torch.isinf(values).sum())
        if nan or inf:
            found.append(f"the {label} has {nan + inf} non-finite values ({nan} NaN, {inf} inf) of {info.numel}")
    if found:
        raise FusionError(f"Non-finite weights in {where}: {'; '.join(found)}. Refusing to fuse (the fused model "
                          "would contain NaN/inf); repair or leave out that input")
    raise FusionError(f"Fusing {where} gives non-finite values although every input is finite (overflow in the "
                      "method's arithmetic); nothing was written")
