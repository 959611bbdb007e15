"""The checks a training run passes before it trains: datasets against their tasks, losses against their datasets'
tasks, per-column token limits against the model, model selection against the run's evaluations.

Each check fails with a user error naming the dataset (and row, field) or the recipe field, before any weight is
loaded or any update done; :class:`~hf_codiemb.trainer.CoDiEmbTrainer` and ``codiemb train --dry_run`` run the same
ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hf_codiemb.columns import IR_REQUIRED_COLUMNS, STS_COLUMNS, TASKS
from hf_codiemb.errors import RecipeError, TrainingDataError

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.training_args import CoDiEmbTrainingArguments

__all__ = [
    "SENTENCE_TRANSFORMERS_LOSS_TASKS",
    "check_column_length",
    "check_deepspeed",
    "check_loss_tasks",
    "check_matryoshka_dims",
    "check_model_selection",
    "infer_task",
    "loss_task",
    "resolve_dataset_tasks",
    "validate_training_dataset",
]


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


def resolve_dataset_tasks(datasets: Mapping[str, Dataset], explicit: Mapping[str, str] | None) -> dict[str, str]:
    """The task of every training dataset: ``explicit`` (``dataset_tasks``) where it names one, else its columns.

    Raises:
        TrainingDataError: ``explicit`` names a dataset that is not trained, a task is unknown, or a dataset's
            columns tell no task.
    """
    explicit = dict(explicit or {})
    unknown = set(explicit) - set(datasets)
    if unknown:
        raise TrainingDataError(
            f"dataset_tasks names dataset(s) {sorted(unknown)} that are not among the training datasets "
            f"{list(datasets)}"
        )
    tasks = {}
    for name, dataset in datasets.items():
        task = explicit.get(name) or infer_task(name, dataset)
        if task not in TASKS:
            raise TrainingDataError(f"Training dataset {name!r}: unknown task {task!r}; use one of {TASKS}")
        tasks[name] = task
    return tasks


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


# sentence-transformers' losses by the task whose columns they take; ours declare it as a class attribute ``task``.
SENTENCE_TRANSFORMERS_LOSS_TASKS = {
    "ir": (
        "MultipleNegativesRankingLoss",
        "CachedMultipleNegativesRankingLoss",
        "MultipleNegativesSymmetricRankingLoss",
        "CachedMultipleNegativesSymmetricRankingLoss",
        "GISTEmbedLoss",
        "CachedGISTEmbedLoss",
        "TripletLoss",
        "MegaBatchMarginLoss",
    ),
    "sts": ("CoSENTLoss", "AnglELoss", "CosineSimilarityLoss"),
}


def loss_task(loss: Any) -> str | None:
    """The task a loss is written for: ``"ir"`` (query, positives, negatives; no labels), ``"sts"`` (sentence pairs
    with a gold score as label), or ``None`` for a loss this function does not know (it is then not checked).

    hf_codiemb's losses declare their task (class attribute ``task``); sentence-transformers' are looked up in
    :data:`SENTENCE_TRANSFORMERS_LOSS_TASKS`. Wrappers with an inner ``loss`` (``MatryoshkaLoss``,
    ``AdaptiveLayerLoss``) are looked through.
    """
    import torch
    from sentence_transformers.sentence_transformer import losses as st_losses

    while isinstance(getattr(loss, "loss", None), torch.nn.Module):
        loss = loss.loss
    declared = getattr(type(loss), "task", None)
    if declared in TASKS:
        return declared
    for task, names in SENTENCE_TRANSFORMERS_LOSS_TASKS.items():
        if isinstance(loss, tuple(getattr(st_losses, name) for name in names)):
            return task
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


def check_matryoshka_dims(args: CoDiEmbTrainingArguments, model: SentenceTransformer | None) -> None:
    """``matryoshka_dims`` within the model's embedding dimension (a cut cannot be longer than the embedding).

    Raises:
        RecipeError: naming the field, the dimensions and the model's.
    """
    dims = args.matryoshka_dims
    size = model.get_embedding_dimension() if model is not None and dims else None
    if size is not None and max(dims) > size:
        raise RecipeError(f"{sorted(dims, reverse=True)} exceed the model's embedding dimension {size}", "matryoshka_dims")


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
    from transformers.trainer_utils import IntervalStrategy

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


def check_deepspeed(args: CoDiEmbTrainingArguments) -> None:
    """Refuse DeepSpeed ZeRO-3 before anything is loaded or written (ZeRO-1, the paper's, and ZeRO-2 are tested).

    Measured on 2 CPU processes with DeepSpeed 0.19.8: with ``torchrun ... --deepspeed`` the model fails to load
    (``zero.Init`` checks the batch sizes before the process group exists); with ``accelerate launch`` the run trains
    but saves no weights unless ``stage3_gather_16bit_weights_on_model_save`` is set, and with it the final
    evaluation's reload of the model on the main process fails in ``zero.Init``'s collectives (the other processes
    have finished). The check reads the
    configuration transformers holds for the run (``--deepspeed`` or accelerate's DeepSpeed plugin).
    """
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise RecipeError(
            "DeepSpeed ZeRO-3 is not supported by codiemb train (its model loading and saving fail here): use "
            "ZeRO-1 as the paper (recipes/accelerate/ds_zero1.json, recipes/accelerate/deepspeed_zero1.yaml) or "
            "ZeRO-2 (zero_optimization.stage 2)",
            "deepspeed",
        )
