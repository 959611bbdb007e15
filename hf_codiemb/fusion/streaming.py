"""The streaming merge engine: every weight tensor of the inputs, chunk by chunk, into new safetensors files.

Three stages overlap: a reader thread fills the next chunk's input buffers (positioned reads), the calling thread
merges the current chunk, and a writer thread appends the previous result to the output file. Both I/O calls and
torch's kernels release the GIL, so the stages run concurrently; two sets of buffers alternate between chunks, which
keeps memory at a few chunks per input whatever the model size. Inputs are checked for NaN/inf as they stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_codiemb.fusion.errors import FusionError
from hf_codiemb.fusion.registry import ChunkWorkspace, FusionMethod
from hf_codiemb.fusion.safetensors_io import (
    LazyReader,
    StreamingSafetensorsWriter,
    TensorInfo,
    chunk_shape,
    row_chunks,
)
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


@dataclass
class _Step:
    """One unit of the pipeline, in output order."""

    kind: str  # "open" (a weight file), "copy" (a non-float tensor), "merge" (a chunk), "close" (a weight file)
    group: str
    job: TensorJob | None = None
    rows: Rows = None
    index: int = 0  # chunk index within its tensor
    name: str = ""
    info: TensorInfo | None = None


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
    steps = list(_steps(method, plan, labels, has_base, chunk_elements))
    merges = [step for step in steps if step.kind == "merge"]
    recorded = False
    writers: dict[str, StreamingSafetensorsWriter] = {}
    slots = [ChunkWorkspace(), ChunkWorkspace()]  # alternate between consecutive chunks
    slot_written: list[Future | None] = [None, None]  # the last write of each slot's buffers
    norms_workspace = ChunkWorkspace()
    weight_sums: torch.Tensor | None = None
    delta_norms: torch.Tensor | None = None
    total = sum(len(tensors) for tensors in plan.values())
    with LazyReader() as reader, tqdm(total=total, desc="Fusing tensors", unit="tensor",
                                      disable=not show_progress) as progress, \
            ThreadPoolExecutor(1, thread_name_prefix="fusion-read") as read_pool, \
            ThreadPoolExecutor(1, thread_name_prefix="fusion-write") as write_pool:
        pending_reads: dict[int, Future] = {}
        writes: list[Future] = []

        def prefetch(position: int) -> None:
            """Start reading merge step ``position`` into its slot once that slot's previous result is written."""
            if position >= len(merges) or position in pending_reads:
                return
            slot = position % 2
            after = slot_written[slot]

            def task() -> tuple[torch.Tensor | None, list[torch.Tensor]]:
                if after is not None:
                    after.result()
                return _load_rows(method, reader, merges[position].job, merges[position].rows, slots[slot])

            pending_reads[position] = read_pool.submit(task)

        try:
            prefetch(0)
            position = 0
            for step in steps:
                if step.kind == "open":
                    specs = [(name, infos[0].torch_dtype, infos[0].shape) for name, infos in plan[step.group].items()]
                    target = staging / step.group
                    target.parent.mkdir(parents=True, exist_ok=True)
                    writers[step.group] = StreamingSafetensorsWriter(target, specs)
                elif step.kind == "close":
                    writes.append(write_pool.submit(writers[step.group].close))
                elif step.kind == "copy":
                    # Buffers (position ids, ...) come unchanged from the base (or the first checkpoint).
                    writes.append(write_pool.submit(writers[step.group].write, step.name,
                                                    reader.read(step.name, step.info)))
                    progress.update(1)
                else:
                    job = step.job
                    slot = position % 2
                    base_chunk, checkpoint_chunks = pending_reads.pop(position).result()
                    prefetch(position + 1)
                    if step.index == 0:
                        weight_sums = torch.zeros(len(job.infos) - 1, dtype=torch.float64)
                        delta_norms = _delta_norms(method, reader, job, norms_workspace)
                    merged, sums = _merge_chunk(method, reader, job, base_chunk, checkpoint_chunks, slots[slot],
                                                delta_norms)
                    del base_chunk, checkpoint_chunks
                    written = write_pool.submit(writers[step.group].write, job.name, merged)
                    slot_written[slot] = written
                    writes.append(written)
                    if sums is None or weight_sums is None:
                        weight_sums = None
                    else:
                        weight_sums += sums.to(torch.float64)
                    if step.index == len(job.chunks) - 1:
                        if weight_sums is not None:
                            statistics.add(job.group, job.name, weight_sums, job.infos[0].numel)
                            recorded = True
                        progress.update(1)
                    position += 1
                    for future in [future for future in writes if future.done()]:
                        future.result()  # a failed write stops the fusion now
                    writes = [future for future in writes if not future.done()]
            for future in writes:
                future.result()
        except BaseException:
            for future in pending_reads.values():
                future.cancel()
            for writer in writers.values():
                write_pool.submit(writer.abort)
            raise
    return recorded


def _steps(
    method: FusionMethod, plan: FusionPlan, labels: list[str], has_base: bool, chunk_elements: int
) -> Iterator[_Step]:
    for group, tensors in plan.items():
        yield _Step("open", group)
        for name, infos in tensors.items():
            reference = infos[0]
            if not reference.is_float:
                yield _Step("copy", group, name=name, info=reference)
                continue
            chunks = list(row_chunks(reference.shape, chunk_elements)) if method.elementwise else [None]
            job = TensorJob(group, name, infos, labels, has_base, chunks)
            for index, rows in enumerate(chunks):
                yield _Step("merge", group, job=job, rows=rows, index=index)
        yield _Step("close", group)


def _compute_dtype(info: TensorInfo) -> torch.dtype:
    return torch.float64 if info.torch_dtype == torch.float64 else torch.float32


def _read(
    method: FusionMethod, reader: LazyReader, job: TensorJob, key: str, info: TensorInfo, rows: Rows,
    workspace: ChunkWorkspace,
) -> torch.Tensor:
    """Rows of one input in the compute dtype, in ``workspace``'s buffer ``key`` (elementwise methods) or fresh."""
    compute_dtype = _compute_dtype(job.infos[0])
    if not method.elementwise:
        return reader.read(job.name, info, rows).to(compute_dtype)
    numel = math.prod(chunk_shape(info.shape, rows))
    if info.torch_dtype == compute_dtype:
        return reader.read(job.name, info, rows, out=workspace.get(key, (numel,), compute_dtype))
    raw = reader.read(job.name, info, rows, out=workspace.get(f"{key}.raw", (numel,), info.torch_dtype))
    return workspace.get(key, raw.shape, compute_dtype).copy_(raw)


def _load_rows(
    method: FusionMethod, reader: LazyReader, job: TensorJob, rows: Rows, workspace: ChunkWorkspace
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    base = _read(method, reader, job, "input.base", job.infos[0], rows, workspace) if job.has_base else None
    checkpoints = [_read(method, reader, job, f"input.{index}", info, rows, workspace)
                   for index, info in enumerate(job.infos[1:])]
    return base, checkpoints


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
        base_chunk, checkpoint_chunks = _load_rows(method, reader, job, rows, workspace)
        for index, chunk in enumerate(checkpoint_chunks):
            squares[index] += (chunk - base_chunk).double().square().sum()
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

    The merged values are checked for NaN/inf (and the inputs too when the method does not propagate them); a
    non-finite value stops the fusion with the inputs and counts that caused it.
    """
    if not method.propagates_non_finite:
        inputs = ([base_chunk] if base_chunk is not None else []) + checkpoint_chunks
        if not all(_all_finite(chunk) for chunk in inputs):
            _refuse_non_finite(reader, job)
    output = method.merge_chunk(base_chunk, checkpoint_chunks, workspace, delta_norms=delta_norms, name=job.name)
    merged = output.merged
    if not _all_finite(merged):
        _refuse_non_finite(reader, job)
    out_dtype = job.infos[0].torch_dtype
    if merged.dtype != out_dtype:
        target = workspace.get("output", merged.shape, out_dtype) if method.elementwise else None
        merged = merged.to(out_dtype) if target is None else target.copy_(merged)
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
