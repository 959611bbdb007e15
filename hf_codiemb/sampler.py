"""Task-balanced multi-dataset batch sampler (the CoDiEmb "dynamic" sampler)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sentence_transformers.base.sampler import SetEpochMixin
from torch.utils.data import BatchSampler, ConcatDataset

from hf_codiemb.errors import TrainingDataError

if TYPE_CHECKING:
    from datasets import Dataset

    from hf_codiemb.training_args import CoDiEmbTrainingArguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """What the sampler needs to know of one training dataset."""

    name: str
    task: str
    size: int
    batch_size: int


@dataclass(frozen=True)
class RowTextHashes:
    """The 64-bit hashes (xxh3) of the texts of every row of one dataset, row ``i`` being
    ``values[offsets[i]:offsets[i + 1]]`` (a compressed layout: 8 bytes per text, no Python object per row).

    Computed once per dataset (:func:`row_text_hashes`) so that building duplicate-free blocks never re-reads the
    Arrow table. Two different texts with the same hash (probability about ``n**2 / 2**65`` for ``n`` distinct
    texts) only make the sampler set a row aside for a later block; they never let a duplicate through.
    """

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, index: int) -> list[int]:
        """The hashes of row ``index``'s texts."""
        return self.values[self.offsets[index] : self.offsets[index + 1]].tolist()

    @classmethod
    def from_texts(cls, rows: Sequence[Sequence[str]]) -> RowTextHashes:
        """The hashes of rows given as lists of texts (tests, small in-memory data)."""
        values = np.fromiter((_text_hash(text) for texts in rows for text in texts), dtype=np.uint64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(texts) for texts in rows])
        return cls(values, offsets)


def _text_hash(text: str) -> int:
    import xxhash

    return xxhash.xxh3_64_intdigest(text.encode("utf-8"))


def row_text_hashes(dataset: Dataset, columns: Sequence[str], chunk_size: int = 65536) -> RowTextHashes:
    """The hashes of the texts of every row of ``dataset`` in ``columns`` (string columns and lists of strings).

    Reads the Arrow table once, chunk by chunk (the dataset's row order, ``select``/``shuffle`` views included).
    Empty lists contribute nothing; a row with no text at all gets no hash (it never conflicts).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import xxhash

    hash_text = xxhash.xxh3_64_intdigest
    values_parts: list[np.ndarray] = []
    counts = np.zeros(len(dataset), dtype=np.int64)
    start = 0
    for table in dataset.with_format("arrow").iter(batch_size=chunk_size):
        rows = table.num_rows
        owners: list[np.ndarray] = []
        hashes: list[np.ndarray] = []
        for name in columns:
            column = table.column(name).combine_chunks()
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
                texts = pc.list_flatten(column).to_pylist()
                owner = np.repeat(np.arange(rows, dtype=np.int64), lengths)
            else:
                texts = column.to_pylist()
                owner = np.arange(rows, dtype=np.int64)
            keep = [i for i, text in enumerate(texts) if text is not None]
            hashes.append(np.fromiter((hash_text(texts[i].encode("utf-8")) for i in keep), dtype=np.uint64,
                                      count=len(keep)))  # fmt: skip
            owners.append(owner[keep] if len(keep) != len(texts) else owner)
        owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
        order = np.argsort(owner, kind="stable")
        values_parts.append(np.concatenate(hashes)[order] if hashes else np.zeros(0, dtype=np.uint64))
        counts[start : start + rows] = np.bincount(owner, minlength=rows)
        start += rows
    offsets = np.zeros(len(dataset) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    values = np.concatenate(values_parts) if values_parts else np.zeros(0, dtype=np.uint64)
    return RowTextHashes(values, offsets)


class TaskBalancedBatchSampler(SetEpochMixin, BatchSampler):
    """
    Batch sampler over several datasets in which every optimizer update uses one dataset (hence one task) only.

    The sampler yields the global stream of per-device batches that accelerate's ``BatchSamplerShard`` deals out
    round-robin to the ranks (batch ``i`` goes to rank ``i % world_size``). It therefore emits *blocks* of
    ``world_size * gradient_accumulation_steps`` consecutive full batches drawn from one dataset: within a block,
    every rank gets ``gradient_accumulation_steps`` micro-batches of that dataset, so all ranks work on the same
    dataset at the same step (cross-device gathering cannot hang) and each update's gradient is task-pure.

    Each epoch, every dataset is shuffled with a generator seeded by ``seed + epoch`` and cut into blocks, and the
    blocks of all datasets are shuffled together. By default each block is used once per epoch, so the number of
    updates of each task is proportional to its data. ``dataset_weights`` re-weights the share of updates of each
    dataset (blocks are repeated with fresh shuffles, or dropped, to reach it): this is the IR:STS trade-off knob.
    ``dataset_passes`` [ours] instead gives each dataset the fraction of one pass over its data that an epoch makes
    (at most 1): no block repeats within an epoch, so ``N`` epochs never show an example more than ``N`` times (the
    ``task_ratio_unit: passes`` training argument).

    Only full batches are emitted (cross-device gathering needs equal local batch sizes), ``len()`` is exact and
    ``batch_size`` is ``None`` because batch sizes differ per task (accelerate drops batches of a size other than a
    sampler's ``batch_size`` unless it is ``None``).

    **Duplicate-free blocks** (``text_hashes``, the ``ir_no_duplicates`` training argument) [ours]: for a dataset
    given the hashes of its rows' texts, no text belongs to two different rows of one block, i.e. of one optimizer
    update's global batch (all ranks, all accumulation steps: what cross-device gathering compares). A row's texts
    are every text it may contribute (for IR: the query, *all* its positives and all its negatives, since the
    collator samples ``num_positives`` / ``num_negatives`` of them anew at every step), so a repeated text can never
    be one query's positive and another's in-batch negative. Blocks are filled from the epoch's shuffled pass over
    the dataset; a row that would repeat a text of the block being filled is set aside and tried first for the next
    blocks. The number of blocks per epoch is the same as without the option (``len()``, the updates per task and
    ``task_ratio`` are unchanged and exact); the rows still set aside when the epoch's last block is full are not
    used in that epoch (as the remainder of a partial block is not), and when a pass runs out before a block is
    full the block is completed from a fresh shuffled pass (those rows are used twice in the epoch; counted in
    :attr:`duplicate_free_stats`). Without duplicates in the data the blocks are exactly those of the default
    sampler. A dataset in which no block of its size can be filled without a repeated text is refused.

    Args:
        dataset: The concatenation of the training datasets, in the order of ``specs``.
        specs: One :class:`DatasetSpec` per dataset (name, task, size, per-device batch size).
        world_size: Number of data-parallel ranks.
        gradient_accumulation_steps: Micro-batches per optimizer update.
        dataset_weights: Optional share of updates per dataset name (need not sum to 1). ``None`` = proportional.
        dataset_passes: Optional fraction of a pass over its data (within ``[0, 1]``) per dataset name and epoch;
            exclusive with ``dataset_weights``. A dataset with a positive fraction gets at least one block.
        seed: Seed of the shuffles; epoch ``e`` uses ``seed + e``.
        text_hashes: Optional, per dataset: the :class:`RowTextHashes` of its rows for duplicate-free blocks, or
            ``None`` for a dataset sampled as usual.

    Raises:
        ValueError: if a dataset is too small for one block (its name, size and the needed size are in the message),
            or cannot fill a duplicate-free block.
    """

    def __init__(
        self,
        dataset: ConcatDataset,
        specs: Sequence[DatasetSpec],
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        dataset_weights: dict[str, float] | None = None,
        seed: int = 0,
        text_hashes: Sequence[RowTextHashes | None] | None = None,
        dataset_passes: dict[str, float] | None = None,
    ) -> None:
        if len(dataset.datasets) != len(specs):
            raise ValueError(f"{len(specs)} dataset specs given for {len(dataset.datasets)} datasets")
        self.text_hashes = list(text_hashes) if text_hashes is not None else [None] * len(specs)
        if len(self.text_hashes) != len(specs):
            raise ValueError(f"{len(self.text_hashes)} text hashes given for {len(specs)} datasets")
        for spec, hashes in zip(specs, self.text_hashes):
            if hashes is not None and len(hashes) != spec.size:
                raise ValueError(f"text hashes of {spec.name!r} cover {len(hashes)} rows, the dataset has {spec.size}")
        #: Per dataset name, for the last planned epoch: rows placed, rows placed twice, rows set aside and unused.
        self.duplicate_free_stats: dict[str, dict[str, int]] = {}
        self._plan: tuple[int, list[tuple[int, list[int]]]] | None = None
        super().__init__(dataset, batch_size=1, drop_last=True)
        self.batch_size = None  # batch sizes differ per task; see the class docstring
        self.dataset = dataset
        self.specs = list(specs)
        self.world_size = world_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.batches_per_block = world_size * gradient_accumulation_steps
        self.seed = seed
        self.offsets = [0, *dataset.cumulative_sizes[:-1]]
        self.available_blocks = []
        for spec in self.specs:
            block_examples = spec.batch_size * self.batches_per_block
            blocks = spec.size // block_examples
            if blocks == 0:
                raise ValueError(
                    f"Training dataset {spec.name!r} ({spec.task}) has {spec.size} examples, fewer than one "
                    f"optimizer update needs: {spec.task}_batch_size={spec.batch_size} x world_size={world_size} x "
                    f"gradient_accumulation_steps={gradient_accumulation_steps} = {block_examples}. "
                    f"Lower {spec.task}_batch_size or add data."
                )
            self.available_blocks.append(blocks)
        if dataset_passes is not None and dataset_weights is not None:
            raise ValueError("give dataset_weights (shares of updates) or dataset_passes (fractions of a pass), not both")
        self.blocks_per_epoch = (
            self._pass_blocks(dataset_passes) if dataset_passes is not None else self._target_blocks(dataset_weights)
        )

    @classmethod
    def from_args(
        cls,
        train_dataset: Mapping[str, Dataset],
        tasks: Mapping[str, str],
        args: CoDiEmbTrainingArguments,
        concatenated: ConcatDataset | None = None,
    ) -> TaskBalancedBatchSampler:
        """The sampler of named training datasets, configured from the training arguments: each task's batch size
        (``ir_batch_size`` / ``sts_batch_size``), ``task_ratio`` and ``sampling_temperature``, the world size,
        gradient accumulation and seed.

        Args:
            train_dataset: The training datasets by name, in training order.
            tasks: The task (``ir`` / ``sts``) of every dataset.
            args: The run's :class:`~hf_codiemb.training_args.CoDiEmbTrainingArguments`.
            concatenated: Their concatenation, when one exists already (the Trainer's); built otherwise.

        With ``args.ir_no_duplicates`` the IR datasets get duplicate-free blocks: the texts of each row (query,
        every positive, and every negative unless the dataset trains with 0 hard negatives) are hashed here, once,
        and epoch 0 is planned at once, so that a dataset that cannot fill such a block fails now.

        Raises:
            TrainingDataError: a dataset smaller than one optimizer update, a ratio that names a task without data, a
                dataset that cannot fill a duplicate-free block.
        """
        specs = [
            DatasetSpec(name, tasks[name], len(dataset), args.batch_size_for_task(tasks[name]))
            for name, dataset in train_dataset.items()
        ]
        text_hashes = None
        if getattr(args, "ir_no_duplicates", False):
            text_hashes = [
                row_text_hashes(dataset, ir_text_columns(dataset, args, name)) if tasks[name] == "ir" else None
                for name, dataset in train_dataset.items()
            ]
            if any(task != "ir" for task in tasks.values()):
                logger.info("ir_no_duplicates: IR batches are duplicate-free; STS batches are sampled as usual")
        try:
            passes = weights = None
            if args.task_ratio_unit == "passes" and args.task_ratio is not None:
                passes = dataset_passes_from_task_ratio(specs, args.task_ratio)
            else:
                weights = dataset_weights_from_task_ratio(
                    specs, args.task_ratio, args.sampling_temperature, args.world_size, args.gradient_accumulation_steps
                )
            sampler = cls(
                concatenated if concatenated is not None else ConcatDataset(list(train_dataset.values())),
                specs,
                world_size=args.world_size,
                gradient_accumulation_steps=args.gradient_accumulation_steps,
                dataset_weights=weights,
                seed=args.seed,
                text_hashes=text_hashes,
                dataset_passes=passes,
            )
            if text_hashes is not None:
                sampler.schedule()  # plans epoch 0: a dataset that cannot fill a duplicate-free block fails now
                for name, stats in sampler.duplicate_free_stats.items():
                    logger.info("Duplicate-free IR blocks of %s, epoch 0: %s", name, stats)
            return sampler
        except ValueError as error:  # a dataset smaller than one update, a ratio without data: the recipe's to fix
            raise TrainingDataError(str(error)) from error

    def _pass_blocks(self, dataset_passes: dict[str, float]) -> list[int]:
        """Blocks per epoch of each dataset: its fraction of one pass over its available blocks."""
        unknown = set(dataset_passes) - {spec.name for spec in self.specs}
        if unknown:
            raise ValueError(f"dataset_passes names unknown datasets: {sorted(unknown)}")
        fractions = [float(dataset_passes.get(spec.name, 0.0)) for spec in self.specs]
        for spec, fraction in zip(self.specs, fractions):
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"dataset_passes: {spec.name!r} has {fraction}, outside [0, 1]")
        if not any(fractions):
            raise ValueError("dataset_passes: at least one dataset needs a positive fraction")
        return [
            max(round(blocks * fraction), 1) if fraction > 0 else 0
            for blocks, fraction in zip(self.available_blocks, fractions)
        ]

    def _target_blocks(self, dataset_weights: dict[str, float] | None) -> list[int]:
        """Blocks per epoch of each dataset: all available ones, or the weighted share of the same total."""
        if dataset_weights is None:
            return list(self.available_blocks)
        unknown = set(dataset_weights) - {spec.name for spec in self.specs}
        if unknown:
            raise ValueError(f"dataset_weights names unknown datasets: {sorted(unknown)}")
        weights = [float(dataset_weights.get(spec.name, 0.0)) for spec in self.specs]
        if sum(weights) <= 0:
            raise ValueError("dataset_weights: at least one dataset needs a positive weight")
        total = sum(self.available_blocks)
        targets = [round(total * w / sum(weights)) for w in weights]
        # Every dataset with a positive weight gets at least one block per epoch.
        return [max(t, 1) if w > 0 else 0 for t, w in zip(targets, weights)]

    def dataset_blocks(self, dataset_idx: int, generator: torch.Generator) -> list[list[int]]:
        """The blocks (lists of global indices) of one dataset for one epoch, repeating shuffles when needed."""
        spec = self.specs[dataset_idx]
        block_examples = spec.batch_size * self.batches_per_block
        if self.text_hashes[dataset_idx] is not None:
            return self._duplicate_free_blocks(dataset_idx, generator)
        needed = self.blocks_per_epoch[dataset_idx] * block_examples
        order: list[int] = []
        while len(order) < needed:
            # Each pass over the dataset uses whole blocks only, so no example repeats inside a pass.
            perm = torch.randperm(spec.size, generator=generator).tolist()
            order.extend(perm[: self.available_blocks[dataset_idx] * block_examples])
        offset = self.offsets[dataset_idx]
        return [
            [offset + i for i in order[start : start + block_examples]] for start in range(0, needed, block_examples)
        ]

    def _duplicate_free_blocks(self, dataset_idx: int, generator: torch.Generator) -> list[list[int]]:
        """The blocks of one dataset for one epoch, no text shared by two rows of a block (see the class docstring)."""
        spec = self.specs[dataset_idx]
        hashes = self.text_hashes[dataset_idx]
        block_examples = spec.batch_size * self.batches_per_block
        blocks: list[list[int]] = []
        waiting: list[int] = []  # rows set aside, oldest first
        pass_rows: list[int] = []
        position = 0
        set_aside: set[int] = set()
        while len(blocks) < self.blocks_per_epoch[dataset_idx]:
            block: list[int] = []
            texts: set[int] = set()
            still_waiting = []
            for row in waiting:
                row_texts = hashes.row(row) if len(block) < block_examples else None
                if row_texts is not None and texts.isdisjoint(row_texts):
                    block.append(row)
                    texts.update(row_texts)
                else:
                    still_waiting.append(row)
            waiting = still_waiting
            fresh_passes = 0
            while len(block) < block_examples:
                if position == len(pass_rows):
                    if fresh_passes:  # every row was tried against this block since its last pass began
                        raise ValueError(
                            f"Training dataset {spec.name!r} ({spec.task}) cannot fill a duplicate-free block of "
                            f"{block_examples} rows ({spec.task}_batch_size={spec.batch_size} x world_size="
                            f"{self.world_size} x gradient_accumulation_steps={self.gradient_accumulation_steps}): "
                            f"only {len(block)} of its rows share no text (query, positive or negative). Lower "
                            f"{spec.task}_batch_size, or train without ir_no_duplicates."
                        )
                    pass_rows = torch.randperm(spec.size, generator=generator).tolist()
                    position = 0
                    fresh_passes += 1
                row = pass_rows[position]
                position += 1
                row_texts = hashes.row(row)
                if texts.isdisjoint(row_texts):
                    block.append(row)
                    texts.update(row_texts)
                else:
                    waiting.append(row)
                    set_aside.add(row)
            blocks.append(block)
        placed = [row for block in blocks for row in block]
        distinct = set(placed)
        self.duplicate_free_stats[spec.name] = {
            "rows_placed": len(placed),
            "rows_placed_twice": len(placed) - len(distinct),
            "rows_set_aside": len(set_aside),
            "rows_set_aside_unused": len(set(waiting) - distinct),
        }
        offset = self.offsets[dataset_idx]
        return [[offset + i for i in block] for block in blocks]

    def schedule(self) -> list[int]:
        """The dataset index of every block of the current epoch, in order (identical on every rank)."""
        return [dataset_idx for dataset_idx, _ in self._blocks()]

    def _blocks(self) -> list[tuple[int, list[int]]]:
        if self._plan is not None and self._plan[0] == self.epoch:
            return self._plan[1]
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        blocks = [
            (dataset_idx, block)
            for dataset_idx in range(len(self.specs))
            for block in self.dataset_blocks(dataset_idx, generator)
        ]
        order = torch.randperm(len(blocks), generator=generator).tolist()
        planned = [blocks[i] for i in order]
        if any(hashes is not None for hashes in self.text_hashes):  # planning them is not free: keep the epoch's
            self._plan = (self.epoch, planned)
        return planned

    def __iter__(self) -> Iterator[list[int]]:
        for dataset_idx, block in self._blocks():
            batch_size = self.specs[dataset_idx].batch_size
            for start in range(0, len(block), batch_size):
                yield block[start : start + batch_size]

    def __len__(self) -> int:
        return sum(self.blocks_per_epoch) * self.batches_per_block

    def updates_per_task(self) -> dict[str, int]:
        """Optimizer updates per task in one epoch (the balance the sampler produces)."""
        counts: dict[str, int] = {}
        for spec, blocks in zip(self.specs, self.blocks_per_epoch):
            counts[spec.task] = counts.get(spec.task, 0) + blocks
        return counts


def ir_text_columns(dataset: Dataset, args: Any, name: str) -> list[str]:
    """The columns holding the texts an IR row of dataset ``name`` may contribute to a batch: ``query``,
    ``positives`` and, unless the dataset trains with 0 hard negatives, ``negatives``."""
    from hf_codiemb.training_args import num_negatives_for

    columns = ["query", "positives"]
    if "negatives" in dataset.column_names and num_negatives_for(args, name) > 0:
        columns.append("negatives")
    return columns


def check_task_ratio_matches_data(specs: Sequence[DatasetSpec], task_ratio: dict[str, float]) -> None:
    """Refuse a ratio that gives no weight to a task present in the data, or weight to a task without data."""
    missing = {spec.task for spec in specs} - set(task_ratio)
    if missing:
        raise ValueError(f"task_ratio {task_ratio} gives no weight to task(s) {sorted(missing)} present in the data")
    for task, task_weight in task_ratio.items():
        if task_weight > 0 and not any(spec.task == task for spec in specs):
            raise ValueError(f"task_ratio gives weight {task_weight} to task {task!r} but no training dataset has it")


def dataset_passes_from_task_ratio(
    specs: Sequence[DatasetSpec], task_ratio: dict[str, float]
) -> dict[str, float]:
    """Turn an IR:STS ratio of passes over each task's data into the fraction of a pass per dataset and epoch [ours].

    The task with the largest weight makes one whole pass over its data per epoch, every other task the fraction
    ``weight / largest weight`` of a pass, and every dataset of a task the task's fraction (so ``"ir:1,sts:1"`` is the
    unweighted sampler: each batch once per epoch). ``"ir:3,sts:1"``: every IR batch and a third of the STS batches.
    """
    check_task_ratio_matches_data(specs, task_ratio)
    largest = max(task_ratio[spec.task] for spec in specs)
    if largest <= 0:
        raise ValueError(f"task_ratio {task_ratio} gives no positive weight to a task present in the data")
    return {spec.name: task_ratio[spec.task] / largest for spec in specs}


def dataset_weights_from_task_ratio(
    specs: Sequence[DatasetSpec],
    task_ratio: dict[str, float] | None,
    sampling_temperature: float = 1.0,
    world_size: int = 1,
    gradient_accumulation_steps: int = 1,
) -> dict[str, float] | None:
    """Turn an IR:STS ratio (or a sampling temperature) into a share of updates per dataset.

    Within a task, datasets keep shares proportional to ``blocks ** (1 / sampling_temperature)``. Returns ``None``
    (each batch once per epoch) when ``task_ratio`` is unset and the temperature is 1.
    """
    if task_ratio is None and math.isclose(sampling_temperature, 1.0):
        return None
    per_block = world_size * gradient_accumulation_steps
    sizes = {spec.name: (spec.size // (spec.batch_size * per_block)) ** (1.0 / sampling_temperature) for spec in specs}
    if task_ratio is None:
        return sizes
    check_task_ratio_matches_data(specs, task_ratio)
    weights: dict[str, float] = {}
    for task, task_weight in task_ratio.items():
        members = [spec for spec in specs if spec.task == task]
        total = sum(sizes[spec.name] for spec in members)
        for spec in members:
            weights[spec.name] = task_weight * sizes[spec.name] / total if total else 0.0
    return weights
