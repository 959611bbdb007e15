"""CoDiEmbTrainer: a SentenceTransformerTrainer with task-balanced sampling and per-task losses."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from torch.utils.data import BatchSampler, ConcatDataset
from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy

from hf_codiemb.collator import CoDiEmbDataCollator
from hf_codiemb.columns import IR_REQUIRED_COLUMNS, STS_COLUMNS, TASKS
from hf_codiemb.errors import CoDiEmbUserError, RecipeError
from hf_codiemb.hub import (
    TRAINER_UPLOAD_IGNORE_PATTERNS,
    CredentialFinding,
    PushRefusedError,
    upload_folder_credentials,
)
from hf_codiemb.model_card import describe_loss, use_codiemb_card_data
from hf_codiemb.sampler import DatasetSpec, TaskBalancedBatchSampler, dataset_weights_from_task_ratio
from hf_codiemb.training_args import CoDiEmbTrainingArguments, num_negatives_for

logger = logging.getLogger(__name__)


class TrainingDataError(CoDiEmbUserError, ValueError):
    """A training dataset that cannot be trained on as configured (raised before training starts)."""


class CheckpointError(CoDiEmbUserError, ValueError):
    """A checkpoint that cannot be resumed from: missing, incomplete, or none at all in the output folder."""


class NonFiniteLossError(CoDiEmbUserError, FloatingPointError):
    """A training loss that is NaN or infinite (the message names the step, the dataset and the loss component)."""


# ------------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
MODEL_WEIGHT_NAMES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
    "adapter_model.safetensors", "adapter_model.bin",
)  # fmt: skip
RESUME_LATEST = ("true", "last", "latest")


def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file ``path`` is unreadable (truncated, bad header), or None when its size adds up."""
    try:
        with path.open("rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                return f"{path.name} is truncated ({path.stat().st_size} bytes)"
            (header_size,) = struct.unpack("<Q", prefix)
            header = json.loads(file.read(header_size))
    except (OSError, ValueError, struct.error) as error:
        return f"{path.name} has no readable safetensors header ({error})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    actual = path.stat().st_size
    if actual != expected:
        return f"{path.name} is truncated ({actual} of {expected} bytes)"
    return None


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or ``None`` when it is complete.

    A complete checkpoint has ``trainer_state.json`` (the Trainer writes it last, so a save killed midway leaves none
    or a truncated one), the model (``modules.json`` and readable weights of every module) and, unless it is a
    model-only checkpoint (``save_only_model``), the optimizer and scheduler states, all readable. Files are checked
    for their structure (safetensors sizes, zip directories of ``torch.save`` files), not loaded.

    Args:
        checkpoint: A ``checkpoint-N`` folder.

    Returns:
        A short reason (e.g. ``"no trainer_state.json (its save did not finish)"``) or ``None``.
    """
    path = Path(checkpoint)
    if not path.is_dir():
        return "not a folder" if path.exists() else "does not exist"
    state_file = path / TRAINER_STATE_NAME
    if not state_file.is_file():
        return f"no {TRAINER_STATE_NAME} (its save did not finish)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{TRAINER_STATE_NAME} is unreadable ({error})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{TRAINER_STATE_NAME} has no global_step"
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        module_dirs = [path / module.get("path", "") for module in modules]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as error:
        return f"modules.json is missing or unreadable ({error})"
    if not any((folder / name).is_file() for folder in {path, *module_dirs} for name in MODEL_WEIGHT_NAMES):
        return f"no model weights ({' / '.join(MODEL_WEIGHT_NAMES[::2])})"
    for index in sorted(path.rglob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            return f"{index.relative_to(path)} is unreadable ({error})"
        missing_shards = sorted(shard for shard in shards if not (index.parent / shard).is_file())
        if missing_shards:
            return f"{index.relative_to(path)} lists missing shard(s) {missing_shards}"
    for weights in sorted(path.rglob("*.safetensors")):
        problem = _safetensors_problem(weights)
        if problem:
            return problem
    for weights in sorted(path.rglob("*.bin")):
        if weights.name != "training_args.bin" and not zipfile.is_zipfile(weights):
            return f"{weights.relative_to(path)} is truncated or not a torch.save file"
    training_state = [OPTIMIZER_NAME, SCHEDULER_NAME]
    present = [name for name in training_state if (path / name).is_file()]
    deepspeed = any(child.is_dir() and child.name.startswith("global_step") for child in path.iterdir())
    if present and len(present) < len(training_state) and not deepspeed:
        missing = sorted(set(training_state) - set(present))
        return f"no {' / '.join(missing)} (its save did not finish)"
    for name in [*present, *sorted(file.name for file in path.glob("rng_state*.pth"))]:
        if not zipfile.is_zipfile(path / name):
            return f"{name} is truncated or not a torch.save file"
    return None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest (lowest N) first; ``[]`` when it does not exist."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), child) for child in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(child.name))]
    return [child for _, child in sorted(found) if child.is_dir()]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint of ``output_dir`` with the highest step; every newer incomplete one is logged."""
    for checkpoint in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("Skipping incomplete checkpoint %s: %s", checkpoint, problem)
    return None


def resolve_resume_checkpoint(value: str | bool | os.PathLike | None, output_dir: str | Path) -> str | None:
    """The checkpoint a run resumes from, given ``resume_from_checkpoint``.

    Args:
        value: ``None``/``False``/``""``/``"false"``: start a new run. ``True`` or ``"true"``/``"last"``/``"latest"``:
            the latest complete checkpoint of ``output_dir``. A path: that checkpoint, or, for a run folder holding
            ``checkpoint-N`` folders, its latest complete one.
        output_dir: The run's output folder.

    Returns:
        The checkpoint folder, or ``None`` for a new run.

    Raises:
        CheckpointError: when there is nothing to resume from, or the given checkpoint is incomplete (the message
            says what is missing and names the latest complete checkpoint, if any).
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false", "no")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in RESUME_LATEST):
        checkpoint = latest_complete_checkpoint(output_dir)
        if checkpoint is None:
            found = list_checkpoints(output_dir)
            detail = f"none of its {len(found)} checkpoint(s) is complete" if found else "it holds no checkpoint-N folder"
            raise CheckpointError(f"resume_from_checkpoint={value!s}: nothing to resume in {output_dir}: {detail}")
        return str(checkpoint)
    path = Path(value)
    if path.is_dir() and not (path / TRAINER_STATE_NAME).exists() and list_checkpoints(path):
        checkpoint = latest_complete_checkpoint(path)
        if checkpoint is None:
            raise CheckpointError(f"resume_from_checkpoint={path}: none of its checkpoint-N folders is complete")
        return str(checkpoint)
    problem = checkpoint_problem(path)
    if problem is not None:
        latest = latest_complete_checkpoint(path.parent) if path.parent != path else None
        hint = f"; the latest complete checkpoint there is {latest}" if latest is not None else ""
        raise CheckpointError(f"resume_from_checkpoint={path}: cannot resume from it: {problem}{hint}")
    return str(path)


def infer_task(name: str, dataset: Dataset) -> str:
    """The task of a dataset from its columns: ``positives`` means IR, ``score`` means STS."""
    columns = set(dataset.column_names)
    if "positives" in columns:
        return "ir"
    if "score" in columns:
        return "sts"
    raise TrainingDataError(
        f"Training dataset {name!r}: cannot tell its task from its columns {sorted(columns)}. IR data needs "
        f"columns {list(IR_REQUIRED_COLUMNS)} (+ 'negatives'), STS data needs {list(STS_COLUMNS)}; or set "
        f"dataset_tasks={{{name!r}: 'ir'|'sts'}}."
    )


def validate_training_dataset(name: str, task: str, dataset: Dataset, num_negatives: int) -> None:
    """Check that ``dataset`` has what ``task`` needs; the error names the dataset, the row and the field."""
    columns = set(dataset.column_names)
    required = IR_REQUIRED_COLUMNS if task == "ir" else STS_COLUMNS
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


def prepare_output_dir(args: CoDiEmbTrainingArguments, dry_run: bool = False) -> str | None:
    """Where a run starts: the checkpoint it resumes from, or ``None`` for a new run into a safe ``output_dir``.

    First takes the lock of ``output_dir`` (:func:`hf_codiemb.output_lock.acquire_output_lock`; only the process
    that saves, rank 0 under torchrun, takes it): a second run into an ``output_dir`` another live process trains
    into is refused at once. Then resolves ``args.resume_from_checkpoint`` (see :func:`resolve_resume_checkpoint`).
    A new run into an ``output_dir`` that already holds ``checkpoint-N`` folders or a saved model is refused unless
    ``args.overwrite_output_dir``; nothing is deleted here: :func:`delete_previous_checkpoints` does, once the data,
    recipe and model have been checked. With ``dry_run`` the same checks run, the lock is only checked.

    Raises:
        OutputInUseError: another live process holds the lock of ``output_dir`` (the message names it).
        OutputExistsError: a new run into a used ``output_dir`` without ``overwrite_output_dir``.
        CheckpointError: a checkpoint to resume from that is missing or incomplete.
    """
    from hf_codiemb.errors import OutputExistsError
    from hf_codiemb.output_lock import acquire_output_lock, check_output_unlocked

    output_dir = Path(args.output_dir)
    if dry_run:
        check_output_unlocked(output_dir)
    elif args.process_index == 0:  # one lock per run: rank 0 holds it for every rank of a launch
        acquire_output_lock(output_dir, "training")
    checkpoint = resolve_resume_checkpoint(args.resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        return checkpoint
    checkpoints = list_checkpoints(output_dir)
    held = _previous_run(output_dir)
    if not held:
        return None
    if not args.overwrite_output_dir:
        raise OutputExistsError(
            f"output_dir {output_dir} already holds {held}: a new run would overwrite them. Resume with "
            "--resume_from_checkpoint last (or a checkpoint path), choose another --output_dir, or pass "
            "--overwrite_output_dir to start over (its checkpoints are then deleted)."
        )
    logger.warning("overwrite_output_dir: starting a new run in %s, which holds %s", output_dir, held)
    if checkpoints and not dry_run:
        logger.info("overwrite_output_dir: the %d old checkpoint(s) are deleted once the data and model are checked",
                    len(checkpoints))  # fmt: skip
    return None


def _previous_run(output_dir: Path) -> str:
    """What a previous run left in ``output_dir`` (``"2 checkpoint(s) (checkpoint-2, checkpoint-4) and a saved
    model"``), or ``""``."""
    checkpoints = list_checkpoints(output_dir)
    saved_model = [name for name in ("modules.json", "adapter_config.json") if (output_dir / name).is_file()]
    held = [f"{len(checkpoints)} checkpoint(s) ({', '.join(c.name for c in checkpoints[-3:])})"] if checkpoints else []
    held += ["a saved model"] if saved_model else []
    return " and ".join(held)


def delete_previous_checkpoints(args: CoDiEmbTrainingArguments, resume_from: str | None) -> list[Path]:
    """Delete the ``checkpoint-N`` folders of the previous run in ``output_dir`` for a new run with
    ``overwrite_output_dir`` (so they cannot be mistaken for this run's), by the process that saves.

    Call it after every check of the run passed (:func:`prepare_output_dir`, the data, the recipe, the model), just
    before training: a mistake found by a check then costs nothing of the previous run.

    Returns:
        The folders deleted (none when resuming, without ``overwrite_output_dir`` or on the other ranks).
    """
    import shutil

    if resume_from is not None or not args.overwrite_output_dir or not args.should_save:
        return []
    deleted = []
    for old in list_checkpoints(args.output_dir):
        logger.warning("overwrite_output_dir: deleting %s of the previous run", old)
        shutil.rmtree(old)
        deleted.append(old)
    return deleted


def loss_task(loss: Any) -> str | None:
    """The task a loss is written for: ``"ir"`` (query, positives, negatives; no labels), ``"sts"`` (sentence pairs
    with a gold score as label), or ``None`` for a loss this function does not know (it is then not checked).

    Wrappers with an inner ``loss`` (``MatryoshkaLoss``, ``AdaptiveLayerLoss``) are looked through.
    """
    from sentence_transformers.sentence_transformer import losses as st_losses

    from hf_codiemb.losses import (
        CoDiEmbSTSLoss,
        MultiPositiveInfoNCELoss,
        PearsonLoss,
        PROLoss,
        RankKLLoss,
        SoftSpearmanLoss,
    )

    ir_losses = (
        MultiPositiveInfoNCELoss,
        st_losses.MultipleNegativesRankingLoss,
        st_losses.CachedMultipleNegativesRankingLoss,
        st_losses.MultipleNegativesSymmetricRankingLoss,
        st_losses.CachedMultipleNegativesSymmetricRankingLoss,
        st_losses.GISTEmbedLoss,
        st_losses.CachedGISTEmbedLoss,
        st_losses.TripletLoss,
        st_losses.MegaBatchMarginLoss,
    )
    sts_losses = (
        CoDiEmbSTSLoss,
        PearsonLoss,
        PROLoss,
        RankKLLoss,
        SoftSpearmanLoss,
        st_losses.CoSENTLoss,
        st_losses.AnglELoss,
        st_losses.CosineSimilarityLoss,
    )
    while isinstance(getattr(loss, "loss", None), torch.nn.Module):
        loss = loss.loss
    if isinstance(loss, ir_losses):
        return "ir"
    if isinstance(loss, sts_losses):
        return "sts"
    return None


def check_column_length(args: CoDiEmbTrainingArguments, name: str, model: SentenceTransformer | None) -> int | None:
    """The token limit ``args.<name>`` (``query_max_seq_length`` / ``passage_max_seq_length``), refused when above
    the model's ``max_seq_length`` (texts would be longer than the positions the model was loaded for).

    Raises:
        RecipeError: naming the field, its value and the model's limit.
    """
    value = getattr(args, name)
    limit = getattr(model, "max_seq_length", None) if model is not None else None
    if value is not None and limit is not None and value > limit:
        raise RecipeError(
            f"is {value}, above the model's max_seq_length {limit}: raise max_seq_length or lower {name}", name
        )
    return value


def check_loss_tasks(losses: Mapping[str, Any], tasks: Mapping[str, str]) -> None:
    """Refuse a loss written for one task given to a dataset of the other (it would fail at that dataset's first step).

    Raises:
        TrainingDataError: naming the dataset, its task and the loss.
    """
    for name, loss in losses.items():
        expected = loss_task(loss)
        if expected is not None and name in tasks and tasks[name] != expected:
            raise TrainingDataError(
                f"Training dataset {name!r} ({tasks[name]}) is given {type(loss).__name__}, a loss for {expected} "
                f"data; give it a {tasks[name]} loss (or pass loss=None for the CoDiEmb default of its task)."
            )


def check_model_selection(args: CoDiEmbTrainingArguments, has_evaluator: bool) -> None:
    """Model selection (``load_best_model_at_end``, early stopping) needs evaluations that report its metric.

    Fails before training, with the fix, where transformers would fail at the first evaluation (a ``KeyError`` on
    the metric) or at the start of training (an ``AssertionError`` of ``EarlyStoppingCallback``).
    """
    if not (args.load_best_model_at_end or args.early_stopping_patience is not None):
        return
    if args.eval_strategy == IntervalStrategy.NO:
        raise RecipeError(
            "load_best_model_at_end and early_stopping_patience need evaluations during training: set eval_strategy "
            "(steps or epoch; for steps also eval_steps)",
            "eval_strategy",
        )
    metric = args.metric_for_best_model.removeprefix("eval_")
    if metric.startswith("codiemb_") and not has_evaluator:
        raise RecipeError(
            f"metric_for_best_model {metric!r} is a score of the dev sets, but this run has none: give sts_eval, "
            "ir_eval or ir_eval_beir (or pass a CoDiEmbEvaluator as evaluator=)",
            "metric_for_best_model",
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
    try:
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
    except ValueError as error:  # a dataset smaller than one update, a ratio without data: the recipe's to fix
        raise TrainingDataError(str(error)) from error


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
            self.dataset_tasks = self._resolve_tasks(train_dataset, args)
            for name, dataset in train_dataset.items():
                validate_training_dataset(name, self.dataset_tasks[name], dataset, num_negatives_for(args, name))
            loss = self._complete_losses(train_dataset, loss, args)
            # Fail now, not at the first step, if a dataset cannot fill one optimizer update.
            build_task_sampler(train_dataset, self.dataset_tasks, args)
        else:
            self.dataset_tasks = {}
        self.task_batch_sampler: TaskBalancedBatchSampler | None = None
        self._loss_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self.nonfinite_batches_skipped: Counter[str] = Counter()
        self._skip_this_update = False
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
            sampling_temperature=args.sampling_temperature,
        )

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super()._save(output_dir, state_dict)
        lora = use_codiemb_card_data(self.model).codiemb.get("lora")
        if lora and lora.get("base"):  # adapter_config.json names the base by Hub id / folder name, not a path
            from hf_codiemb.models import publish_adapter_base

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
        from hf_codiemb.losses import CachedMultiPositiveInfoNCELoss, CoDiEmbSTSLoss, MultiPositiveInfoNCELoss

        if task == "ir":
            ir_kwargs = {
                "num_positives": args.num_positives,
                "temperature": args.temperature,
                "in_batch_negatives": args.in_batch_negatives,
                "gather_across_devices": args.gather_across_devices and args.world_size > 1,
                "in_batch_positives": args.in_batch_positives,
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
        loss = self.check_loss_is_finite(model, loss, components, dataset_name)
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
        if training_type == "train" and self.nonfinite_batches_skipped:
            logs = dict(logs)
            logs["nonfinite_batches_skipped"] = sum(self.nonfinite_batches_skipped.values())
            for name, count in sorted(self.nonfinite_batches_skipped.items()):
                logs[f"{name}/nonfinite_batches_skipped"] = count
        super().log(logs, start_time)

    # ---------------------------------------------------------------------------------------- non-finite losses
    def check_loss_is_finite(
        self,
        model: torch.nn.Module,
        loss: torch.Tensor,
        components: dict[str, torch.Tensor],
        dataset_name: str,
    ) -> torch.Tensor:
        """Stop on a non-finite training loss, or skip its batch when ``args.skip_nonfinite_batches`` is set.

        Evaluation losses pass unchanged. In distributed training every process learns whether any process got a
        non-finite loss (one ``all_reduce``), so all of them stop, or all skip the update, together.

        Args:
            model: The model the loss was computed with.
            loss: The batch's total loss.
            components: The batch's logged components (``"{dataset}/{component}"``); emptied for a skipped batch, so
                none of its values reaches the logs.
            dataset_name: The batch's dataset.

        Returns:
            ``loss``, or for a skipped batch ``loss * 0`` (still non-finite, so the Trainer's
            ``logging_nan_inf_filter`` keeps it out of the logged loss): its backward runs as usual, and the gradients
            of the optimizer update that contains the batch are dropped before the optimizer step, which so leaves
            every parameter and its optimizer state untouched.

        Raises:
            NonFiniteLossError: naming the step, the dataset and the non-finite components, unless
                ``args.skip_nonfinite_batches``.
        """
        if not self.model.training:
            return loss
        nonfinite = ~torch.isfinite(loss.detach()).all()
        if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = nonfinite.to(torch.float32).reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            nonfinite = flag[0] > 0
        if not bool(nonfinite):
            return loss
        step = self.state.global_step + 1
        bad = {key: value.detach().float() for key, value in components.items() if not torch.isfinite(value.detach()).all()}
        named = ", ".join(f"{key} = {value.item() if value.numel() == 1 else value.tolist()}" for key, value in bad.items())
        where = f"optimizer step {step} (epoch {self.state.epoch or 0:.2f}), dataset {dataset_name!r}"
        if not named:
            named = "finite here, non-finite on another process"
        if not self.args.skip_nonfinite_batches:
            raise NonFiniteLossError(
                f"Non-finite training loss at {where}: {named}. Lower the learning rate, check the data of this "
                "dataset, or set skip_nonfinite_batches=true to skip such batches (their optimizer update is skipped "
                "and counted in the logs as nonfinite_batches_skipped)."
            )
        self.nonfinite_batches_skipped[dataset_name] += 1
        self._skip_this_update = True
        logger.warning("Skipping a batch at %s: non-finite loss (%s)", where, named)
        components.clear()
        # The backward still runs through the batch's own graph (the same parameters, the same cross-process
        # collectives as every other step, so DDP and gathering stay in step); its gradients, whatever they are, are
        # dropped before the optimizer step by _NonFiniteUpdateCallback.
        return loss * 0.0
