"""Task-balanced multi-dataset batch sampler (the CoDiEmb "dynamic" sampler)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

    Only full batches are emitted (cross-device gathering needs equal local batch sizes), ``len()`` is exact and
    ``batch_size`` is ``None`` because batch sizes differ per task (accelerate drops batches of a size other than a
    sampler's ``batch_size`` unless it is ``None``).

    Args:
        dataset: The concatenation of the training datasets, in the order of ``specs``.
        specs: One :class:`DatasetSpec` per dataset (name, task, size, per-device batch size).
        world_size: Number of data-parallel ranks.
        gradient_accumulation_steps: Micro-batches per optimizer update.
        dataset_weights: Optional share of updates per dataset name (need not sum to 1). ``None`` = proportional.
        seed: Seed of the shuffles; epoch ``e`` uses ``seed + e``.

    Raises:
        ValueError: if a dataset is too small for one block (its name, size and the needed size are in the message).
    """

    def __init__(
        self,
        dataset: ConcatDataset,
        specs: Sequence[DatasetSpec],
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        dataset_weights: dict[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        if len(dataset.datasets) != len(specs):
            raise ValueError(f"{len(specs)} dataset specs given for {len(dataset.datasets)} datasets")
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
        self.blocks_per_epoch = self._target_blocks(dataset_weights)

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

        Raises:
            TrainingDataError: a dataset smaller than one optimizer update, a ratio that names a task without data.
        """
        specs = [
            DatasetSpec(name, tasks[name], len(dataset), args.batch_size_for_task(tasks[name]))
            for name, dataset in train_dataset.items()
        ]
        try:
            weights = dataset_weights_from_task_ratio(
                specs, args.task_ratio, args.sampling_temperature, args.world_size, args.gradient_accumulation_steps
            )
            return cls(
                concatenated if concatenated is not None else ConcatDataset(list(train_dataset.values())),
                specs,
                world_size=args.world_size,
                gradient_accumulation_steps=args.gradient_accumulation_steps,
                dataset_weights=weights,
                seed=args.seed,
            )
        except ValueError as error:  # a dataset smaller than one update, a ratio without data: the recipe's to fix
            raise TrainingDataError(str(error)) from error

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

    def schedule(self) -> list[int]:
        """The dataset index of every block of the current epoch, in order (identical on every rank)."""
        return [dataset_idx for dataset_idx, _ in self._blocks()]

    def _blocks(self) -> list[tuple[int, list[int]]]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        blocks = [
            (dataset_idx, block)
            for dataset_idx in range(len(self.specs))
            for block in self.dataset_blocks(dataset_idx, generator)
        ]
        order = torch.randperm(len(blocks), generator=generator).tolist()
        return [blocks[i] for i in order]

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
    missing = {spec.task for spec in specs} - set(task_ratio)
    if missing:
        raise ValueError(f"task_ratio {task_ratio} gives no weight to task(s) {sorted(missing)} present in the data")
    weights: dict[str, float] = {}
    for task, task_weight in task_ratio.items():
        members = [spec for spec in specs if spec.task == task]
        if not members and task_weight > 0:
            raise ValueError(f"task_ratio gives weight {task_weight} to task {task!r} but no training dataset has it")
        total = sum(sizes[spec.name] for spec in members)
        for spec in members:
            weights[spec.name] = task_weight * sizes[spec.name] / total if total else 0.0
    return weights
