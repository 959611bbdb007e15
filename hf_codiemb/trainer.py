"""CoDiEmbTrainer: a SentenceTransformerTrainer with task-balanced sampling and per-task losses."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from torch.utils.data import BatchSampler, ConcatDataset
from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer import OPTIMIZER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_codiemb.checkpoints import resolve_resume_checkpoint
from hf_codiemb.collator import CoDiEmbDataCollator
from hf_codiemb.columns import TASKS
from hf_codiemb.data.teacher_scores import check_teacher_scores
from hf_codiemb.errors import CoDiEmbUserError, TrainingDataError
from hf_codiemb.hub import (
    TRAINER_UPLOAD_IGNORE_PATTERNS,
    CredentialFinding,
    PushRefusedError,
    upload_folder_credentials,
)
from hf_codiemb.model_card import describe_loss, use_codiemb_card_data
from hf_codiemb.sampler import TaskBalancedBatchSampler
from hf_codiemb.training_args import CoDiEmbTrainingArguments, num_negatives_for
from hf_codiemb.training_checks import (
    check_column_length,
    check_loss_tasks,
    check_matryoshka_dims,
    check_model_selection,
    resolve_dataset_tasks,
    validate_training_dataset,
)

logger = logging.getLogger(__name__)


class NonFiniteLossError(CoDiEmbUserError, FloatingPointError):
    """A training loss that is NaN or infinite (the message names the step, the dataset and the loss component)."""


class _SamplerEpochCallback(TrainerCallback):
    """Sets the epoch of the task-balanced sampler and of the collator's sampling at every epoch start.

    Also when resuming mid-epoch: the collator is told how many of the epoch's batches the resumed run skips (as the
    Trainer computes them: the updates done in this epoch times the gradient accumulation steps), so the batches that
    follow are sampled exactly as in the uninterrupted run.
    """

    def __init__(self, trainer: CoDiEmbTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs) -> None:
        epoch = math.floor(state.epoch + 1e-6) if state.epoch else 0
        sampler = self.trainer.task_batch_sampler
        if sampler is not None:
            sampler.set_epoch(epoch)
        collator = self.trainer.data_collator
        if isinstance(collator, CoDiEmbDataCollator):
            first_batch = 0
            if train_dataloader is not None and not args.ignore_data_skip:
                batches, accumulation = len(train_dataloader), args.gradient_accumulation_steps
                updates_per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
                first_batch = (state.global_step % updates_per_epoch) * accumulation
            collator.set_epoch(epoch, first_batch, num_processes=args.world_size, process_index=args.process_index)


def _dataset_prompts(prompts: Any, dataset_name: str) -> dict[str, str]:
    """The prompts a dataset is trained with, by column, from the ``prompts`` training argument."""
    if isinstance(prompts, str):
        return {"all columns": prompts}
    if not isinstance(prompts, Mapping):
        return {}
    if isinstance(prompts.get(dataset_name), Mapping):
        return dict(prompts[dataset_name])
    if isinstance(prompts.get(dataset_name), str):
        return {"all columns": prompts[dataset_name]}
    return {column: prompt for column, prompt in prompts.items() if isinstance(prompt, str)}


class _ModelCardCallback(TrainerCallback):
    """Fills the CoDiEmb section of the model card once the sampler exists (at train begin), before any save."""

    def __init__(self, trainer: CoDiEmbTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.trainer.update_model_card_data()


@dataclass
class _PendingBatch:
    """A training batch's dataset, logged components and non-finite flag (a device tensor), between its forward and
    the check after its backward (:meth:`CoDiEmbTrainer.settle_batch`)."""

    dataset_name: str
    components: dict[str, torch.Tensor]
    nonfinite: torch.Tensor


class _NonFiniteUpdateCallback(TrainerCallback):
    """Drops the gradients of an optimizer update that contains a skipped non-finite batch (the update is skipped)."""

    def __init__(self, trainer: CoDiEmbTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
        if self.trainer._skip_this_update:
            # Gradients set to None: the optimizer leaves every parameter and its state untouched in this update.
            self.trainer.model.zero_grad(set_to_none=True)
            self.trainer._skip_this_update = False
            logger.warning("Optimizer update %d skipped (a batch of it had a non-finite loss)", state.global_step + 1)


# What a refused push of transformers' Trainer tells the user (training has no --force).
_TRAINER_PUSH_REMEDY = (
    "Remove them from the output folder (and revoke any real secret); the trained model is saved there, and "
    "`codiemb push FOLDER --repo_id ...` uploads only its model files."
)


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
            self.dataset_tasks = resolve_dataset_tasks(train_dataset, args.dataset_tasks)
            for name, dataset in train_dataset.items():
                validate_training_dataset(name, self.dataset_tasks[name], dataset, num_negatives_for(args, name))
                if args.distill_weight > 0 and self.dataset_tasks[name] == "ir":  # teacher scores on every row
                    check_teacher_scores(name, dataset, num_negatives_for(args, name))
            check_matryoshka_dims(args, model)
            loss = self._complete_losses(train_dataset, loss, args)
            # Built once, now: a dataset that cannot fill one optimizer update fails here, not at the first step.
            self.task_batch_sampler = TaskBalancedBatchSampler.from_args(train_dataset, self.dataset_tasks, args)
        else:
            self.dataset_tasks = {}
            self.task_batch_sampler = None
        self._loss_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self.nonfinite_batches_skipped: Counter[str] = Counter()
        self._skip_this_update = False
        self._pending_batch: _PendingBatch | None = None
        if model is not None:
            use_codiemb_card_data(model)  # the card gets a CoDiEmb section (see update_model_card_data)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, loss=loss, **kwargs)
        if isinstance(self.loss, dict):  # loss factories are built by now
            check_loss_tasks(self.loss, self.dataset_tasks)
        self.add_callback(_SamplerEpochCallback(self))
        self.add_callback(_NonFiniteUpdateCallback(self))
        self.add_callback(_ModelCardCallback(self))
        check_model_selection(args, has_evaluator=self.evaluator is not None)
        if args.early_stopping_patience is not None:
            self.add_callback(EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold))

    def update_model_card_data(self) -> None:
        """Fill the CoDiEmb section of the model card (``model.model_card_data.codiemb``).

        Per dataset: task, examples, per-device and per-update batch size, updates per epoch (from the
        task-balanced sampler, once built), its loss with weights and temperatures (:func:`describe_loss`) and its
        prompts; and the run's updates per task, length, processes and task ratio. What the model loader put there
        (base model, LoRA, fusion lineage) is kept.
        """
        card_data = use_codiemb_card_data(self.model)
        args = self.args
        per_update = args.world_size * args.gradient_accumulation_steps
        sampler = self.task_batch_sampler
        updates = {spec.name: blocks for spec, blocks in zip(sampler.specs, sampler.blocks_per_epoch)} if sampler else {}
        rows = []
        for name, dataset in (self.train_dataset or {}).items():
            task = self.dataset_tasks.get(name)
            loss = self.loss.get(name) if isinstance(self.loss, dict) else self.loss
            batch_size = args.batch_size_for_task(task) if task in TASKS else None
            rows.append(
                {
                    "name": name,
                    "task": task,
                    "records": len(dataset),
                    "batch_size": batch_size,
                    "global_batch_size": batch_size * per_update if batch_size else None,
                    "updates_per_epoch": updates.get(name, ""),
                    "loss": describe_loss(loss, args.num_negatives if task == "ir" else None) if loss is not None else "",
                    "prompts": _dataset_prompts(args.prompts, name),
                }
            )
        card_data.codiemb.update(
            datasets=rows,
            updates_per_task=sampler.updates_per_task() if sampler else {},
            max_steps=self.state.max_steps if self.state is not None and self.state.max_steps > 0 else None,
            epochs=args.num_train_epochs if args.max_steps <= 0 else None,
            world_size=args.world_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            task_ratio=args.task_ratio if isinstance(args.task_ratio, dict) else None,
            task_ratio_unit=args.task_ratio_unit if isinstance(args.task_ratio, dict) else None,
            sampling_temperature=args.sampling_temperature,
        )

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super()._save(output_dir, state_dict)
        lora = use_codiemb_card_data(self.model).codiemb.get("lora")
        if lora and lora.get("base"):  # adapter_config.json names the base by Hub id / folder name, not a path
            from hf_codiemb.lora import publish_adapter_base

            publish_adapter_base(output_dir if output_dir is not None else self.args.output_dir, lora["base"])

    def write_model_card(self, output_dir: str | os.PathLike[str]) -> Path:
        """(Re)write ``output_dir/README.md`` from the model card data, e.g. after a final evaluation was recorded.

        Uses sentence-transformers' card generation (its template with the CoDiEmb section).
        """
        from sentence_transformers.base.model_card import generate_model_card

        self.update_model_card_data()
        card_data = use_codiemb_card_data(self.model)
        card_data.save_dir = str(output_dir)
        path = Path(output_dir) / "README.md"
        path.write_text(generate_model_card(self.model), encoding="utf-8")
        return path

    # ----------------------------------------------------------------------------------------------------- set-up
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
        """A function building the default CoDiEmb loss of ``task`` for a model, configured from ``args`` (wrapped in
        :class:`~hf_codiemb.losses.CoDiEmbMatryoshkaLoss` when ``args.matryoshka_dims`` is set)."""
        factory = CoDiEmbTrainer._task_loss_factory(task, args)
        if not args.matryoshka_dims:
            return factory
        from hf_codiemb.losses import CoDiEmbMatryoshkaLoss

        return lambda model: CoDiEmbMatryoshkaLoss(
            model, factory(model), args.matryoshka_dims, args.matryoshka_weights
        )

    @staticmethod
    def _task_loss_factory(task: str, args: CoDiEmbTrainingArguments) -> Callable[[SentenceTransformer], torch.nn.Module]:
        """The CoDiEmb loss of ``task`` (IR: multi-positive InfoNCE, STS: the reference's combined loss)."""
        from hf_codiemb.losses import CachedMultiPositiveInfoNCELoss, CoDiEmbSTSLoss, MultiPositiveInfoNCELoss

        if task == "ir":
            ir_kwargs = {
                "num_positives": args.num_positives,
                "temperature": args.temperature,
                "in_batch_negatives": args.in_batch_negatives,
                "gather_across_devices": args.gather_across_devices and args.world_size > 1,
                "in_batch_positives": args.in_batch_positives,
                "margin": args.false_negative_margin,
                "margin_strategy": args.false_negative_margin_strategy,
                "guide": args.false_negative_guide,
                "distill_weight": args.distill_weight,
                "teacher_temperature": args.teacher_temperature,
            }
            if args.ir_mini_batch_size is not None:  # GradCache: same loss, memory of one mini-batch
                return lambda model: CachedMultiPositiveInfoNCELoss(
                    model, mini_batch_size=args.ir_mini_batch_size, **ir_kwargs
                )
            return lambda model: MultiPositiveInfoNCELoss(model, **ir_kwargs)
        return lambda model: CoDiEmbSTSLoss(
            model,
            pearson_weight=args.pearson_weight,
            pro_weight=args.pro_weight,
            rank_kl_weight=args.rank_kl_weight,
            soft_spearman_weight=args.soft_spearman_weight,
            temperature=args.sts_temperature,
            multi_layer_weight=args.multi_layer_weight,
            multi_layer_index=args.multi_layer_index,
            multi_layer_threshold=args.multi_layer_threshold,
            multi_layer_temperature=args.multi_layer_temperature,
            gather_across_devices=args.sts_gather_across_devices and args.world_size > 1,
            rank_kl_all_equal_gold=args.rank_kl_all_equal_gold,
        )

    def get_data_collator(self, model, args, processing_class=None) -> CoDiEmbDataCollator:
        collator = super().get_data_collator(model=model, args=args, processing_class=processing_class)
        collator.num_positives = args.num_positives
        collator.num_negatives = args.num_negatives
        collator.dataset_num_negatives = dict(args.dataset_num_negatives or {})
        collator.seed = args.seed
        collator.query_max_length = check_column_length(args, "query_max_seq_length", model)
        collator.passage_max_length = check_column_length(args, "passage_max_seq_length", model)
        collator.keep_teacher_scores = args.distill_weight > 0
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
        if not is_train or self.task_batch_sampler is None:
            return super().get_multi_dataset_batch_sampler(dataset, batch_samplers, generator=generator, seed=seed)
        # The sampler built in __init__ on the same datasets in the same order: only the concatenation is the
        # Trainer's own.
        self.task_batch_sampler.dataset = dataset
        if self.args.process_index == 0:
            self.log_batch_plan()
        return self.task_batch_sampler

    # ------------------------------------------------------------------------------------------ resume + evaluate
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """Train, optionally resuming from a checkpoint (see :func:`resolve_resume_checkpoint`).

        ``resume_from_checkpoint=True`` (or ``"last"``) resumes from the latest *complete* checkpoint of
        ``args.output_dir``: checkpoints whose save was interrupted (no ``trainer_state.json``, truncated weights, no
        optimizer state) are skipped, each with a warning that says why. A given path must be a complete checkpoint
        (or a run folder, whose latest complete checkpoint is used). A resumed run continues the batch order, the
        sampled positives/negatives and the RNG states of the uninterrupted run, so it logs the same losses.
        """
        checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None:
            logger.info("Resuming training from %s", checkpoint)
            if not (Path(checkpoint) / OPTIMIZER_NAME).is_file():
                logger.warning(
                    "%s holds no optimizer/scheduler state (saved with save_only_model?): they restart from scratch, so "
                    "the resumed run will not match an uninterrupted one",
                    checkpoint,
                )
        if self.args.dataloader_num_workers > 0 and self.args.dataloader_persistent_workers:
            logger.warning(
                "dataloader_persistent_workers: the workers keep the collator of the first epoch, so the positives and "
                "negatives they sample are not keyed on the epoch and a resumed run samples differently"
            )
        return super().train(checkpoint, *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Evaluate, with the collator sampling from its evaluation stream (the training stream does not move)."""
        collator = self.data_collator
        if not isinstance(collator, CoDiEmbDataCollator):
            return super().evaluate(*args, **kwargs)
        with collator.evaluation_sampling():
            return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        # A checkpoint folder saved again (a run resumed from an older checkpoint) first loses its trainer state, so a
        # save killed midway leaves it incomplete (and skipped on resume) rather than mixing two saves.
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            (folder / TRAINER_STATE_NAME).unlink(missing_ok=True)
        super()._save_checkpoint(model, trial)

    def push_to_hub(self, *args: Any, **kwargs: Any):
        """transformers' push of ``output_dir`` (``push_to_hub=True``: :meth:`save_model` calls it at the end), refused
        first when a file it would upload looks like a credential.

        ``Trainer.push_to_hub`` uploads every file of ``output_dir`` but ``_*`` and ``checkpoint-*`` (hidden files
        included), not only what a model repository needs as ``codiemb push`` does. The folder is checked with
        :func:`hf_codiemb.hub.upload_folder_credentials` before anything is saved or sent; the files the push itself
        writes (weights, configs, card, ``training_args.bin`` without its token) are the model's own.

        Raises:
            PushRefusedError: names each file and why (never the secret); the model stays saved in ``output_dir``.
        """
        if self.is_world_process_zero():
            findings = upload_folder_credentials(self.args.output_dir, TRAINER_UPLOAD_IGNORE_PATTERNS)
            if findings:
                raise PushRefusedError(self.args.output_dir, findings, _TRAINER_PUSH_REMEDY)
        return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The push during training (``hub_strategy``), skipped with an error in the log when ``output_dir`` or the
        checkpoint holds a file that looks like a credential; training goes on, and the final push is refused
        (:meth:`push_to_hub`). The checkpoint is checked whatever the strategy: sentence-transformers copies its files
        into ``output_dir`` before the upload, and ``checkpoint`` / ``all_checkpoints`` upload it as it is."""
        if self.is_world_process_zero() and self.args.hub_strategy != "end":
            findings = upload_folder_credentials(self.args.output_dir, TRAINER_UPLOAD_IGNORE_PATTERNS)
            findings += [
                CredentialFinding(f"{Path(checkpoint_folder).name}/{finding.path}", finding.reason)
                for finding in upload_folder_credentials(checkpoint_folder)
            ]
            if findings:
                logger.error("Not pushing step %d to the Hub: %s", self.state.global_step,
                             PushRefusedError(self.args.output_dir, findings, _TRAINER_PUSH_REMEDY))
                return
        super()._push_from_checkpoint(checkpoint_folder)

    def log_batch_plan(self) -> None:
        """Log once what one optimizer update holds per task: per-device and global batch, updates per epoch.

        (transformers' own banner reports ``per_device_train_batch_size``, which the task-balanced sampler does not
        use.)
        """
        args = self.args
        per_update = args.world_size * args.gradient_accumulation_steps
        tasks = sorted(set(self.dataset_tasks.values()))
        logger.info(
            "CoDiEmb batches: world size %d, gradient accumulation %d; per-device batch %s; global batch per "
            "optimizer update %s; updates per epoch %s",
            args.world_size,
            args.gradient_accumulation_steps,
            {task: args.batch_size_for_task(task) for task in tasks},
            {task: args.batch_size_for_task(task) * per_update for task in tasks},
            self.task_batch_sampler.updates_per_task() if self.task_batch_sampler is not None else {},
        )

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
        # What the loss measured besides itself (e.g. masked_candidates): logged like a component, never added to it.
        pop_metrics = getattr(loss_fn, "pop_metrics", None)
        if callable(pop_metrics):
            components.update({f"{dataset_name}/{key}": value for key, value in pop_metrics().items()})
        if self.model.training:
            # Read on the host after the backward (training_step), where transformers reads the loss anyway: no
            # host sync between the forward and the backward.
            self._pending_batch = _PendingBatch(dataset_name, components, ~torch.isfinite(loss.detach()).all())
        else:
            self.track_loss_components(components)
        if return_outputs:
            return loss, {}
        return loss

    def track_loss_components(self, loss: dict[str, torch.Tensor]) -> None:
        """Accumulate each component with its own step count, so a task's loss is averaged over its own steps.

        Device-side only (no host sync): a non-finite value is counted apart and left out of the mean; the counts
        are read when the logs are written.
        """
        sums = self._loss_sums["train" if self.model.training else "eval"]
        for key, value in loss.items():
            value = value.detach().float().reshape(())
            finite = torch.isfinite(value)
            entry = torch.stack([torch.where(finite, value, torch.zeros_like(value)), finite.float(), (~finite).float()])
            sums[key] = sums[key] + entry if key in sums else entry

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
            for key, (total, count, nonfinite) in zip(keys, stacked.tolist()):
                if count:
                    logs[f"{prefix}{key}"] = round(total / count, 4)
                if nonfinite:
                    logger.warning("Non-finite loss component %s in %d batch(es): left out of the logs", key, nonfinite)
            self._loss_sums[training_type] = {}
        if training_type == "train" and self.nonfinite_batches_skipped:
            logs = dict(logs)
            logs["nonfinite_batches_skipped"] = sum(self.nonfinite_batches_skipped.values())
            for name, count in sorted(self.nonfinite_batches_skipped.items()):
                logs[f"{name}/nonfinite_batches_skipped"] = count
        super().log(logs, start_time)

    # ---------------------------------------------------------------------------------------- non-finite losses
    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """transformers' training step (forward and backward), then the batch's non-finite check and logs
        (:meth:`settle_batch`). A skipped batch returns NaN, which transformers' ``logging_nan_inf_filter`` keeps out
        of the logged loss on every process."""
        self._pending_batch = None
        loss = super().training_step(model, inputs, num_items_in_batch)
        pending, self._pending_batch = self._pending_batch, None
        if pending is not None and self.settle_batch(pending):
            return torch.full_like(loss, float("nan"))
        return loss

    def settle_batch(self, batch: _PendingBatch) -> bool:
        """Stop on a non-finite training loss, or skip its batch when ``args.skip_nonfinite_batches`` is set; log the
        components of a finite one. Called after the batch's backward, so that the check's host sync adds none to the
        step (transformers reads the loss on the host at that point).

        In distributed training every process learns whether any process got a non-finite loss (one
        ``all_reduce``), so all of them stop, or all skip the update, together. A skipped batch's backward has run
        through its own graph (the same parameters and cross-process collectives as every other step, so DDP and
        gathering stay in step); its gradients, whatever they are, are dropped before the optimizer step by
        ``_NonFiniteUpdateCallback``, which leaves every parameter and its optimizer state untouched.

        Args:
            batch: The batch's dataset, logged components (``"{dataset}/{component}"``) and non-finite flag.

        Returns:
            Whether the batch is skipped (none of its components reaches the logs).

        Raises:
            NonFiniteLossError: naming the step, the dataset and the non-finite components, unless
                ``args.skip_nonfinite_batches``.
        """
        nonfinite = batch.nonfinite
        if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = nonfinite.to(torch.float32).reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            nonfinite = flag[0] > 0
        if not bool(nonfinite):
            self.track_loss_components(batch.components)
            return False
        step = self.state.global_step + 1
        bad = {key: v.detach().float() for key, v in batch.components.items() if not torch.isfinite(v.detach()).all()}
        named = ", ".join(f"{key} = {value.item() if value.numel() == 1 else value.tolist()}" for key, value in bad.items())
        where = f"optimizer step {step} (epoch {self.state.epoch or 0:.2f}), dataset {batch.dataset_name!r}"
        if not named:
            named = "finite here, non-finite on another process"
        if not self.args.skip_nonfinite_batches:
            raise NonFiniteLossError(
                f"Non-finite training loss at {where}: {named}. Lower the learning rate, check the data of this "
                "dataset, or set skip_nonfinite_batches=true to skip such batches (their optimizer update is skipped "
                "and counted in the logs as nonfinite_batches_skipped)."
            )
        self.nonfinite_batches_skipped[batch.dataset_name] += 1
        self._skip_this_update = True
        logger.warning("Skipping a batch at %s: non-finite loss (%s)", where, named)
        return True
