"""Training arguments of the CoDiEmb trainer."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Union

from sentence_transformers import SentenceTransformerTrainingArguments

TASKS = ("ir", "sts")


def parse_task_ratio(value: str | dict[str, float] | None) -> dict[str, float] | None:
    """Parse an IR:STS sampling ratio given as ``"ir:1,sts:2"``, ``{"ir": 1, "sts": 2}`` or ``None``.

    Raises:
        ValueError: for an unknown task, a malformed entry or a non-positive total.
    """
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        ratio: dict[str, float] = {}
        for part in value.split(","):
            task, sep, weight = part.partition(":")
            if not sep:
                raise ValueError(f"task_ratio: entry {part!r} must look like 'ir:1' (task:weight)")
            try:
                ratio[task.strip()] = float(weight)
            except ValueError:
                raise ValueError(f"task_ratio: weight {weight!r} of task {task.strip()!r} is not a number") from None
    elif isinstance(value, dict):
        ratio = {str(k): float(v) for k, v in value.items()}
    else:
        raise ValueError(f"task_ratio must be a string like 'ir:1,sts:1' or a mapping, got {type(value).__name__}")
    for task, weight in ratio.items():
        if task not in TASKS:
            raise ValueError(f"task_ratio: unknown task {task!r}; known tasks are {', '.join(TASKS)}")
        if weight < 0:
            raise ValueError(f"task_ratio: weight of task {task!r} must be >= 0, got {weight}")
    if sum(ratio.values()) <= 0:
        raise ValueError("task_ratio: at least one task needs a positive weight")
    return ratio


@dataclass
class CoDiEmbTrainingArguments(SentenceTransformerTrainingArguments):
    """Training arguments of :class:`~hf_codiemb.trainer.CoDiEmbTrainer`.

    Extends :class:`~sentence_transformers.SentenceTransformerTrainingArguments` (so every
    :class:`transformers.TrainingArguments` field works) with the CoDiEmb knobs: the task of each training dataset,
    per-task batch sizes, the IR contrastive set-up, the STS loss weights, cross-device gathering and the IR:STS
    sampling ratio. Parses with :class:`transformers.HfArgumentParser` from the command line and from YAML.

    Credentials (``hub_token``) stay in memory: the pickled arguments (``training_args.bin`` in the output folder
    and in every checkpoint) hold ``None`` instead, see :meth:`__getstate__`.
    """

    _VALID_DICT_FIELDS = [*SentenceTransformerTrainingArguments._VALID_DICT_FIELDS, "dataset_tasks"]

    dataset_tasks: Union[str, None, dict[str, str]] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "Task of each training dataset, e.g. {'msmarco': 'ir', 'stsb': 'sts'}. When unset, the task is "
            "inferred from the columns: 'positives' means ir, 'score' means sts."
        },
    )
    ir_batch_size: int = field(default=16, metadata={"help": "Per-device batch size (queries) of IR datasets."})
    sts_batch_size: int = field(default=32, metadata={"help": "Per-device batch size (pairs) of STS datasets."})
    num_positives: int = field(
        default=2, metadata={"help": "Positives sampled per IR query and step (with replacement when fewer)."}
    )
    num_negatives: int = field(
        default=4, metadata={"help": "Hard negatives sampled per IR query and step (with replacement when fewer)."}
    )
    temperature: float = field(default=0.02, metadata={"help": "Temperature of the IR InfoNCE loss."})
    in_batch_negatives: bool = field(
        default=True, metadata={"help": "Use passages of the other queries in the batch as IR negatives."}
    )
    gather_across_devices: bool = field(
        default=True,
        metadata={"help": "All-gather IR passage embeddings across ranks (with gradients) for more negatives."},
    )
    sts_temperature: float = field(default=0.05, metadata={"help": "Temperature of the PRO and rank-KL STS losses."})
    pearson_weight: float = field(default=2.0, metadata={"help": "Weight of the Pearson STS loss."})
    pro_weight: float = field(default=0.5, metadata={"help": "Weight of the PRO listwise STS loss."})
    rank_kl_weight: float = field(default=5.0, metadata={"help": "Weight of the rank-KL STS loss."})
    soft_spearman_weight: float = field(
        default=0.0, metadata={"help": "Weight of the differentiable Spearman STS loss (0 = off, as in the paper)."}
    )
    task_ratio: Union[str, None, dict[str, float]] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "IR:STS share of optimizer updates, e.g. 'ir:1,sts:1'. Unset = proportional to the data "
            "(each batch used once per epoch). Batches of a task are repeated or dropped to reach the share."
        },
    )
    sampling_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Temperature over dataset sizes when task_ratio is unset: dataset share ~ n_batches^(1/T). "
            "1.0 = proportional to data; large values approach uniform over datasets."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.task_ratio = parse_task_ratio(self.task_ratio)
        if isinstance(self.dataset_tasks, str):
            self.dataset_tasks = parse_dataset_tasks(self.dataset_tasks)
        for name, task in (self.dataset_tasks or {}).items():
            if task not in TASKS:
                raise ValueError(f"dataset_tasks: dataset {name!r} has unknown task {task!r}; use one of {TASKS}")
        for name in ("ir_batch_size", "sts_batch_size", "num_positives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")
        for name in ("temperature", "sts_temperature", "sampling_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def batch_size_for_task(self, task: str) -> int:
        """The per-device batch size of ``task`` ("ir" or "sts")."""
        return self.ir_batch_size if task == "ir" else self.sts_batch_size

    # ------------------------------------------------------------------------ credentials never reach the disk
    def __getstate__(self) -> dict[str, Any]:
        """The pickling state, with every credential field (``hub_token``, any ``*_token``) set to ``None``.

        transformers' Trainer writes ``torch.save(args)`` as ``training_args.bin`` into the output folder and into
        every checkpoint (and uploads it when pushing); this keeps the Hub token out of those files. The live object
        keeps its token, so pushing during training still authenticates, and :func:`copy.copy` /
        :func:`copy.deepcopy` keep it too (they would otherwise go through this method).
        """
        state = self.__dict__.copy()
        for name in credential_fields(state):
            state[name] = None
        return state

    def __copy__(self) -> CoDiEmbTrainingArguments:
        copied = type(self).__new__(type(self))
        copied.__dict__.update(self.__dict__)
        return copied

    def __deepcopy__(self, memo: dict[int, Any]) -> CoDiEmbTrainingArguments:
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        for name, value in self.__dict__.items():
            copied.__dict__[name] = copy.deepcopy(value, memo)
        return copied


def credential_fields(values: dict[str, Any]) -> list[str]:
    """The names in ``values`` that hold a credential: ``token`` and every ``*_token`` that is set.

    The same rule transformers uses to mask tokens in ``TrainingArguments.to_dict`` (so JSON dumps, TensorBoard and
    model cards show ``<HUB_TOKEN>``); here it also covers the pickled arguments.
    """
    return [
        name for name, value in values.items()
        if (name == "token" or name.endswith("_token")) and value is not None
    ]


def parse_dataset_tasks(value: str) -> dict[str, str]:
    """Parse ``"name:ir,other:sts"`` into ``{"name": "ir", "other": "sts"}``."""
    tasks: dict[str, str] = {}
    for part in value.split(","):
        name, sep, task = part.partition(":")
        if not sep:
            raise ValueError(f"dataset_tasks: entry {part!r} must look like 'name:ir'")
        tasks[name.strip()] = task.strip()
    return tasks
