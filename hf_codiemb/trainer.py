"""CoDiEmbTrainer: a SentenceTransformerTrainer with task-balanced sampling and per-task losses."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from torch.utils.data import BatchSampler, ConcatDataset
from transformers import TrainerCallback

from hf_codiemb.collator import CoDiEmbDataCollator
from hf_codiemb.sampler import DatasetSpec, TaskBalancedBatchSampler, dataset_weights_from_task_ratio
from hf_codiemb.training_args import TASKS, CoDiEmbTrainingArguments

logger = logging.getLogger(__name__)

IR_COLUMNS = ("query", "positives")
STS_COLUMNS = ("sentence1", "sentence2", "score")


class TrainingDataError(ValueError):
    """A training dataset that cannot be trained on as configured (raised before training starts)."""


def infer_task(name: str, dataset: Dataset) -> str:
    """The task of a dataset from its columns: ``positives`` means IR, ``score`` means STS."""
    columns = set(dataset.column_names)
    if "positives" in columns:
        return "ir"
    if "score" in columns:
        return "sts"
    raise TrainingDataError(
        f"Training dataset {name!r}: cannot tell its task from its columns {sorted(columns)}. IR data needs "
        f"columns {list(IR_COLUMNS)} (+ 'negatives'), STS data needs {list(STS_COLUMNS)}; or set "
        f"dataset_tasks={{{name!r}: 'ir'|'sts'}}."
    )


def validate_training_dataset(name: str, task: str, dataset: Dataset, num_negatives: int) -> None:
    """Check that ``dataset`` has what ``task`` needs; the error names the dataset, the row and the field."""
    columns = set(dataset.column_names)
    required = IR_COLUMNS if task == "ir" else STS_COLUMNS
    missing = [column for column in required if column not in columns]
    if missing:
        hint = " (STS data needs a gold similarity score per pair)" if "score" in missing else ""
        raise TrainingDataError(
            f"Training dataset {name!r} ({task}): missing column(s) {missing}{hint}; it has {sorted(columns)}."
        )
    if task == "ir":
        for row, positives in enumerate(dataset["positives"]):
            if not positives:
                raise TrainingDataError(
                    f"Training dataset {name!r} (ir), row {row}, field 'positives': empty; every IR query needs at "
                    "least one positive."
                )
        if num_negatives > 0:
            if "negatives" not in columns:
                raise TrainingDataError(
                    f"Training dataset {name!r} (ir): no 'negatives' column but num_negatives={num_negatives}; add "
                    "mined hard negatives or set num_negatives=0."
                )
            for row, negatives in enumerate(dataset["negatives"]):
                if not negatives:
                    raise TrainingDataError(
                        f"Training dataset {name!r} (ir), row {row}, field 'negatives': empty but "
                        f"num_negatives={num_negatives}; add hard negatives or set num_negatives=0."
                    )
    else:
        for row, score in enumerate(dataset["score"]):
            if score is None or not isinstance(score, (int, float)) or math.isnan(score) or math.isinf(score):
                raise TrainingDataError(
                    f"Training dataset {name!r} (sts), row {row}, field 'score': {score!r} is not a finite number."
                )


def build_task_sampler(
    train_dataset: Mapping[str, Dataset],
    tasks: Mapping[str, str],
    args: CoDiEmbTrainingArguments,
    concatenated: ConcatDataset | None = None,
) -> TaskBalancedBatchSampler:
    """The task-balanced sampler of named training datasets, configured from ``args`` (batch sizes, ratio, DDP)."""
    specs = [
        DatasetSpec(name, tasks[name], len(dataset), args.batch_size_for_task(tasks[name]))
        for name, dataset in train_dataset.items()
    ]
    weights = dataset_weights_from_task_ratio(
        specs, args.task_ratio, args.sampling_temperature, args.world_size, args.gradient_accumulation_steps
    )
    return TaskBalancedBatchSampler(
        concatenated if concatenated is not None else ConcatDataset(list(train_dataset.values())),
        specs,
        world_size=args.world_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataset_weights=weights,
        seed=args.seed,
    )


class _SamplerEpochCallback(TrainerCallback):
    """Sets the epoch of the task-balanced sampler at every epoch start (also when resuming mid-epoch)."""

    def __init__(self, trainer: CoDiEmbTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        sampler = self.trainer.task_batch_sampler
        if sampler is not None:
            sampler.set_epoch(math.floor(state.epoch + 1e-6) if state.epoch else 0)


class CoDiEmbTrainer(SentenceTransformerTrainer):
    """
    Trainer for unified IR + STS embedding models with CoDiEmb (arXiv 2508.11442).

    A :class:`~sentence_transformers.SentenceTransformerTrainer` that

    - trains on several datasets, each of one task (``ir`` or ``sts``, from ``args.dataset_tasks`` or the columns),
      with :class:`~hf_codiemb.sampler.TaskBalancedBatchSampler`: one dataset per optimizer update, per-task batch
      sizes, the same dataset on every rank at every step, an optional IR:STS ratio;
    - gives every dataset its task's loss unless ``loss`` says otherwise:
      :class:`~hf_codiemb.losses.MultiPositiveInfoNCELoss` for IR (hard negatives, in-batch negatives, cross-device
      gathering) and :class:`~hf_codiemb.losses.CoDiEmbSTSLoss` for STS (Pearson + PRO + rank-KL);
    - logs each dataset's loss and each STS loss component separately, averaged over the steps of that dataset
      only (not diluted by the steps of the other task).

    Args:
        model: The :class:`~sentence_transformers.SentenceTransformer` to train.
        args: :class:`~hf_codiemb.training_args.CoDiEmbTrainingArguments`.
        train_dataset: A ``dict``/``DatasetDict`` of named datasets (a single ``Dataset`` is named ``"train"``). IR
            datasets have columns ``query``, ``positives``, ``negatives``; STS datasets ``sentence1``, ``sentence2``,
            ``score`` (see :mod:`hf_codiemb.data`).
        loss: Optional loss or ``dict`` of losses per dataset name; datasets without one get their task's default.
        **kwargs: Passed on to :class:`~sentence_transformers.SentenceTransformerTrainer`.

    Example:
        ::

            from sentence_transformers import SentenceTransformer
            from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments
            from hf_codiemb.data import demo_data_path, load_ir_dataset, load_sts_dataset

            model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
            args = CoDiEmbTrainingArguments(output_dir="out", ir_batch_size=8, sts_batch_size=16)
            trainer = CoDiEmbTrainer(
                model=model,
                args=args,
                train_dataset={
                    "demo_ir": load_ir_dataset(demo_data_path("ir_train.jsonl")),
                    "demo_sts": load_sts_dataset(demo_data_path("sts_train.jsonl")),
                },
            )
            trainer.train()
    """

    training_args_class = CoDiEmbTrainingArguments
    data_collator_class = CoDiEmbDataCollator

    def __init__(
        self,
        model: SentenceTransformer | None = None,
        args: CoDiEmbTrainingArguments | None = None,
        train_dataset: Dataset | DatasetDict | dict[str, Dataset] | None = None,
        eval_dataset: Dataset | DatasetDict | dict[str, Dataset] | None = None,
        loss: torch.nn.Module | dict[str, torch.nn.Module | Callable] | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = CoDiEmbTrainingArguments(output_dir="tmp_trainer")
        if isinstance(train_dataset, Dataset):
            train_dataset = {"train": train_dataset}
        if train_dataset is not None:
            train_dataset = DatasetDict(train_dataset)
            self.dataset_tasks = self._resolve_tasks(train_dataset, args)
            for name, dataset in train_dataset.items():
                validate_training_dataset(name, self.dataset_tasks[name], dataset, args.num_negatives)
            loss = self._complete_losses(train_dataset, loss, args)
            # Fail now, not at the first step, if a dataset cannot fill one optimizer update.
            build_task_sampler(train_dataset, self.dataset_tasks, args)
        else:
            self.dataset_tasks = {}
        self.task_batch_sampler: TaskBalancedBatchSampler | None = None
        self._loss_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, loss=loss, **kwargs)
        self.add_callback(_SamplerEpochCallback(self))

    # ----------------------------------------------------------------------------------------------------- set-up
    @staticmethod
    def _resolve_tasks(train_dataset: DatasetDict, args: CoDiEmbTrainingArguments) -> dict[str, str]:
        explicit = dict(args.dataset_tasks or {})
        unknown = set(explicit) - set(train_dataset)
        if unknown:
            raise TrainingDataError(
                f"dataset_tasks names dataset(s) {sorted(unknown)} that are not among the training datasets "
                f"{list(train_dataset)}"
            )
        tasks = {}
        for name, dataset in train_dataset.items():
            task = explicit.get(name) or infer_task(name, dataset)
            if task not in TASKS:
                raise TrainingDataError(f"Training dataset {name!r}: unknown task {task!r}; use one of {TASKS}")
            tasks[name] = task
        return tasks

    def _complete_losses(
        self,
        train_dataset: DatasetDict,
        loss: torch.nn.Module | dict[str, torch.nn.Module | Callable] | None,
        args: CoDiEmbTrainingArguments,
    ) -> dict[str, torch.nn.Module | Callable]:
        """A loss for every dataset: the task defaults when ``loss`` is None, else exactly the given ones."""
        if loss is None:
            return {name: self.default_loss_factory(self.dataset_tasks[name], args) for name in train_dataset}
        if not isinstance(loss, dict):
            return {name: loss for name in train_dataset}
        unknown = set(loss) - set(train_dataset)
        if unknown:
            raise TrainingDataError(
                f"loss names dataset(s) {sorted(unknown)} that are not among the training datasets {list(train_dataset)}"
            )
        missing = [name for name in train_dataset if name not in loss]
        if missing:
            raise TrainingDataError(
                f"Training dataset(s) {missing} have no loss: the loss dict covers only {sorted(loss)}. Give every "
                "dataset a loss, or pass loss=None to use the CoDiEmb default of each dataset's task."
            )
        return dict(loss)

    @staticmethod
    def default_loss_factory(task: str, args: CoDiEmbTrainingArguments) -> Callable[[SentenceTransformer], torch.nn.Module]:
        """A function building the default CoDiEmb loss of ``task`` for a model, configured from ``args``."""
        from hf_codiemb.losses import CoDiEmbSTSLoss, MultiPositiveInfoNCELoss

        if task == "ir":
            return lambda model: MultiPositiveInfoNCELoss(
                model,
                num_positives=args.num_positives,
                temperature=args.temperature,
                in_batch_negatives=args.in_batch_negatives,
                gather_across_devices=args.gather_across_devices and args.world_size > 1,
            )
        return lambda model: CoDiEmbSTSLoss(
            model,
            pearson_weight=args.pearson_weight,
            pro_weight=args.pro_weight,
            rank_kl_weight=args.rank_kl_weight,
            soft_spearman_weight=args.soft_spearman_weight,
            temperature=args.sts_temperature,
        )

    def get_data_collator(self, model, args, processing_class=None) -> CoDiEmbDataCollator:
        collator = super().get_data_collator(model=model, args=args, processing_class=processing_class)
        collator.num_positives = args.num_positives
        collator.num_negatives = args.num_negatives
        collator.seed = args.seed
        collator.__post_init__()
        return collator

    def get_optimizer_cls_and_kwargs(self, args, model=None):
        """sentence-transformers' optimizer set-up, safe for any dataset name.

        The parent collects the losses' parameters in ``nn.Sequential(OrderedDict(self.loss))``, which uses the
        dataset names as module names, so a dataset called ``train``, ``eval``, ``to`` or ``a.b`` (e.g. the file
        ``train.data``) fails with ``KeyError: attribute 'train' already exists``. The losses are handed to it
        under positional names instead; the parameters, and so the optimizer groups, are the same.
        """
        if not isinstance(self.loss, dict):
            return super().get_optimizer_cls_and_kwargs(args, model)
        losses = self.loss
        self.loss = {f"loss_{index}": loss for index, loss in enumerate(losses.values())}
        try:
            return super().get_optimizer_cls_and_kwargs(args, model)
        finally:
            self.loss = losses

    def get_multi_dataset_batch_sampler(
        self,
        dataset: ConcatDataset,
        batch_samplers: list[BatchSampler],
        generator: torch.Generator | None = None,
        seed: int | None = 0,
    ) -> BatchSampler:
        """The task-balanced sampler for the training datasets; sentence-transformers' choice for evaluation."""
        is_train = isinstance(self.train_dataset, DatasetDict) and len(dataset.datasets) == len(self.train_dataset) and all(
            a is b for a, b in zip(dataset.datasets, self.train_dataset.values())
        )
        if not is_train:
            return super().get_multi_dataset_batch_sampler(dataset, batch_samplers, generator=generator, seed=seed)
        self.task_batch_sampler = build_task_sampler(self.train_dataset, self.dataset_tasks, self.args, dataset)
        logger.info(
            "Task-balanced sampler: %d batches per epoch, optimizer updates per task %s",
            len(self.task_batch_sampler),
            self.task_batch_sampler.updates_per_task(),
        )
        return self.task_batch_sampler

    # ------------------------------------------------------------------------------------------------ loss + logs
    def compute_loss(
        self,
        model: SentenceTransformer,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch=None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """The loss of the batch's dataset; its value and components are tracked under the dataset's name."""
        dataset_name = inputs.pop("dataset_name", None) or "train"
        features, labels = self.collect_features(inputs)
        loss_fn = self.loss[dataset_name] if isinstance(self.loss, dict) else self.loss
        if model == self.model_wrapped and hasattr(loss_fn, "model") and loss_fn.model != model:
            loss_fn = self.override_model_in_loss(loss_fn, model)
        output = loss_fn(features, labels)
        if isinstance(output, dict):
            loss = torch.stack(list(output.values())).sum()
            components = {f"{dataset_name}/{key}": value for key, value in output.items()}
        else:
            loss, components = output, {}
        components[f"{dataset_name}/loss"] = loss
        self.track_loss_components(components)
        if return_outputs:
            return loss, {}
        return loss

    def track_loss_components(self, loss: dict[str, torch.Tensor]) -> None:
        """Accumulate each component with its own step count, so a task's loss is averaged over its own steps."""
        sums = self._loss_sums["train" if self.model.training else "eval"]
        for key, value in loss.items():
            value = value.detach().float()
            if not torch.isfinite(value):
                logger.warning("Non-finite loss component %s = %s skipped in the logs", key, value.item())
                continue
            if key not in sums:
                sums[key] = torch.zeros(2, device=value.device)
            sums[key] += torch.stack([value, torch.ones_like(value)])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        training_type = "train" if "loss" in logs else "eval" if "eval_loss" in logs else None
        if training_type and self._loss_sums[training_type]:
            sums = self._loss_sums[training_type]
            keys = sorted(sums)
            # Every rank trained on the same datasets (task-balanced sampler), so the keys agree across ranks.
            stacked = torch.stack([sums[key] for key in keys])
            if self.args.world_size > 1 and torch.distributed.is_initialized():
                torch.distributed.all_reduce(stacked)
            logs = dict(logs)
            prefix = "" if training_type == "train" else "eval_"
            for key, (total, count) in zip(keys, stacked.tolist()):
                if count:
                    logs[f"{prefix}{key}"] = round(total / count, 4)
            self._loss_sums[training_type] = {}
        super().log(logs, start_time)
