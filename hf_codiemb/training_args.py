"""Training arguments of the CoDiEmb trainer."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

from sentence_transformers import SentenceTransformerTrainingArguments

from hf_codiemb.columns import TASKS
from hf_codiemb.errors import RecipeError

# Inherited Trainer options that CoDiEmb's task-balanced sampler and collator do not use, with what to set instead.
# A value other than the default is refused (:meth:`CoDiEmbTrainingArguments._refuse_ignored_options`) and
# `codiemb train --help` does not list them.
IGNORED_TRAINER_OPTIONS: dict[str, str] = {
    "per_device_train_batch_size": "set ir_batch_size (IR queries) and sts_batch_size (STS pairs) per device instead",
    "auto_find_batch_size": "set ir_batch_size / sts_batch_size (and ir_mini_batch_size for a large IR batch in "
    "little memory) instead",
    "batch_sampler": "batches are drawn by CoDiEmb's task-balanced sampler (shuffled full batches of one "
    "dataset each); remove it (no_duplicates / no_duplicates_hashed are taken as ir_no_duplicates: true)",
    "multi_dataset_batch_sampler": "the task-balanced sampler mixes the datasets: set task_ratio (IR:STS share of "
    "updates) or sampling_temperature instead",
    "train_sampling_strategy": "the task-balanced sampler shuffles every dataset each epoch; remove it",
    "length_column_name": "it only serves train_sampling_strategy, which CoDiEmb does not use; remove it",
    "data_seed": "set seed: the sampler and the collator's sampling of positives/negatives use it",
}

# The seeds the real run accepts: transformers' set_seed seeds numpy, whose legacy seeding takes 0 .. 2**32 - 1.
SEED_RANGE = (0, 2**32 - 1)


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
        raise TypeError(f"task_ratio must be a string like 'ir:1,sts:1' or a mapping, got {type(value).__name__}")
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

    Parent defaults changed: ``per_device_eval_batch_size`` 32 (transformers: 8), the encoding batch size of every
    dev-set evaluation, so that the scores logged during training and the final table agree for the same model.
    ``metric_for_best_model`` defaults to ``codiemb_score`` (the combined dev score of
    :class:`~hf_codiemb.training_evaluation.CoDiEmbEvaluator`) when ``load_best_model_at_end`` or
    ``early_stopping_patience`` is set (transformers: the evaluation loss, which a CoDiEmb run does not compute).

    Credentials (``hub_token``) stay in memory: the pickled arguments (``training_args.bin`` in the output folder
    and in every checkpoint) hold ``None`` instead, see :meth:`__getstate__`.

    Defaults are the reference code's (TencentCloudADP/youtu-embedding, ``training/CoDiEmb``); options marked
    [ours] are not in it. Inherited options the task-balanced sampler does not use (``per_device_train_batch_size``,
    ``batch_sampler``, ...; :data:`IGNORED_TRAINER_OPTIONS`) are refused with the option to set instead.

    Parameters:
        > Datasets and batches

        dataset_tasks (`dict[str, str]` or `str`, *optional*, defaults to `None`):
            Task (``"ir"`` or ``"sts"``) of each training dataset by name, e.g. ``{"msmarco": "ir", "stsb": "sts"}``
            (or ``"msmarco:ir,stsb:sts"``). Unset: inferred from the columns (``positives``: IR, ``score``: STS).
        ir_batch_size (`int`, *optional*, defaults to `16`):
            Per-device batch size (queries) of IR datasets.
        sts_batch_size (`int`, *optional*, defaults to `32`):
            Per-device batch size (sentence pairs) of STS datasets.
        num_positives (`int`, *optional*, defaults to `2`):
            Positives sampled per IR query and step (with replacement when a query has fewer).
        num_negatives (`int`, *optional*, defaults to `4`):
            Hard negatives sampled per IR query and step (with replacement when a query has fewer).
        dataset_num_negatives (`dict[str, int]` or `str`, *optional*, defaults to `None`):
            Hard negatives per query of named IR datasets, overriding ``num_negatives`` (``0``: in-batch negatives
            only; ``codiemb train`` sets it for a BEIR split given without mined negatives).
        query_max_seq_length (`int`, *optional*, defaults to `None`):
            Token limit of IR queries, prompt included. Unset: the model's ``max_seq_length``, which it cannot exceed.
        passage_max_seq_length (`int`, *optional*, defaults to `None`):
            Token limit of IR positives and negatives. Unset: the model's ``max_seq_length``.
        per_device_eval_batch_size (`int`, *optional*, defaults to `32`):
            Encoding batch size of every dev-set evaluation (transformers' default: 8).

        > IR loss (`MultiPositiveInfoNCELoss`)

        temperature (`float`, *optional*, defaults to `0.02`):
            Temperature of the IR InfoNCE loss.
        in_batch_negatives (`bool`, *optional*, defaults to `True`):
            Use the passages of the batch's other queries as negatives.
        in_batch_positives (`Literal["slot", "all"]`, *optional*, defaults to `"slot"`):
            In-batch candidates of positive slot ``p``: ``"slot"`` every query's ``p``-th positive and every hard
            negative (the reference); ``"all"`` every other query's positives of every slot [ours].
        gather_across_devices (`bool`, *optional*, defaults to `True`):
            All-gather the IR embeddings across ranks, with gradients, for more in-batch negatives.
        ir_mini_batch_size (`int`, *optional*, defaults to `None`):
            GradCache: embed the IR batch in mini-batches of this many rows (``CachedMultiPositiveInfoNCELoss``,
            the same loss in the memory of a mini-batch) [ours]. Unset: the uncached loss.

        > STS loss (`CoDiEmbSTSLoss`)

        pearson_weight (`float`, *optional*, defaults to `2.0`):
            Weight of the Pearson loss.
        pro_weight (`float`, *optional*, defaults to `0.5`):
            Weight of the PRO listwise loss.
        rank_kl_weight (`float`, *optional*, defaults to `5.0`):
            Weight of the rank-KL loss.
        soft_spearman_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the differentiable (soft-rank) Spearman loss [ours]; 0 is off, as in the paper.
        sts_temperature (`float`, *optional*, defaults to `0.05`):
            Temperature of the PRO and rank-KL losses.
        rank_kl_all_equal_gold (`Literal["uniform_target", "zero"]`, *optional*, defaults to `"uniform_target"`):
            Rank-KL on a batch whose gold scores are all equal: ``"uniform_target"`` pulls the predictions together
            (the reference), ``"zero"`` skips it [ours].
        multi_layer_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the reference's middle-layer InfoNCE on STS steps; 0 is off.
        multi_layer_index (`int`, *optional*, defaults to `None`):
            Hidden-state index of the middle layer (0: the embeddings). Unset: ``n // 2``, the reference's.
        multi_layer_threshold (`float`, *optional*, defaults to `1.0`):
            STS pairs with a gold score at or above it are the rows of the middle-layer InfoNCE (the reference).
        multi_layer_threshold_fraction (`float`, *optional*, defaults to `None`):
            The threshold as a share ``f`` of the recipe's ``sts_score_range`` (``low + f * (high - low)``),
            overriding ``multi_layer_threshold`` [ours].
        multi_layer_temperature (`float`, *optional*, defaults to `None`):
            Temperature of the middle-layer InfoNCE. Unset: ``temperature`` (the reference's choice).
        sts_gather_across_devices (`bool`, *optional*, defaults to `False`):
            All-gather STS scores and middle-layer embeddings across ranks (the reference's option, off in its
            scripts).

        > Sampling of tasks

        task_ratio (`dict[str, float]` or `str`, *optional*, defaults to `None`):
            IR:STS share of optimizer updates (or of passes over each task's data: ``task_ratio_unit``), e.g.
            ``"ir:1,sts:1"``. Unset: proportional to the data (each batch once per epoch, the reference's sampler).
        task_ratio_unit (`Literal["updates", "passes"]`, *optional*, defaults to `"updates"`):
            What ``task_ratio`` divides. ``"updates"``: the shares of an epoch's optimizer updates, the epoch keeping
            the length of one pass over all data (a task's batches repeat or are dropped). ``"passes"`` [ours]: the
            passes over each task's data per epoch; the task with the largest weight makes one pass, the others the
            weight's fraction of one, so no batch repeats within an epoch and ``N`` epochs show each example at most
            ``N`` times (runs at equal data; ``"ir:1,sts:1"`` = no ratio).
        sampling_temperature (`float`, *optional*, defaults to `1.0`):
            Without ``task_ratio``: a dataset's share of updates is proportional to ``batches ** (1 / T)``.
        ir_no_duplicates (`bool`, *optional*, defaults to `False`):
            Duplicate-free IR batches [ours]: no text is the query, a positive or a negative of two different rows of
            one optimizer update's global IR batch (all ranks and accumulation steps); a row that would repeat one
            waits for a later batch. Updates per epoch unchanged. sentence-transformers' ``batch_sampler:
            no_duplicates`` sets it.

        > Run control

        skip_nonfinite_batches (`bool`, *optional*, defaults to `False`):
            On a NaN/inf training loss, skip the batch's optimizer update (counted in the logs) instead of stopping
            with an error naming the step, dataset and loss component.
        early_stopping_patience (`int`, *optional*, defaults to `None`):
            Stop when ``metric_for_best_model`` has not improved for this many evaluations (transformers'
            ``EarlyStoppingCallback``; needs ``eval_strategy`` and dev sets).
        early_stopping_threshold (`float`, *optional*, defaults to `0.0`):
            The least change of ``metric_for_best_model`` that counts as an improvement.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            ``codiemb train``: start a new run in an ``output_dir`` that holds a previous run, deleting its
            checkpoints once every check has passed (transformers 5 dropped this flag).

        > IR loss options: false negatives and distillation (off by default, as in the reference)

        false_negative_margin (`float`, *optional*, defaults to `None`):
            Remove from the IR softmax every candidate scoring above the positive minus this margin (GISTEmbed's
            filter; the count is logged as ``<dataset>/masked_candidates``) [ours]. Unset: no masking.
        false_negative_margin_strategy (`Literal["absolute", "relative"]`, *optional*, defaults to `"absolute"`):
            ``"absolute"``: remove when ``s(q, c) > s(q, p) - margin``; ``"relative"``: when
            ``s(q, c) > s(q, p) - |s(q, p)| * margin`` [ours].
        false_negative_guide (`str`, *optional*, defaults to `None`):
            A frozen SentenceTransformer (Hub id or folder) whose similarities decide the mask, as GISTEmbed's guide
            [ours]. Unset: the trained model judges. Needs ``false_negative_margin``.
        distill_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the KL between the teacher's scores (records' ``positive_scores`` / ``negative_scores``,
            FlagEmbedding's ``pos_scores`` / ``neg_scores``) and the model over each query's positives and hard
            negatives, added to the IR loss and logged as ``<dataset>/distill_kl`` [FlagEmbedding]. 0 is off.
        teacher_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature of the teacher's softmax over its scores [FlagEmbedding].

        > Matryoshka embeddings (off by default, as in the reference)

        matryoshka_dims (`list[int]`, *optional*, defaults to `None`):
            Train every task's default loss at these leading embedding dimensions too (sentence-transformers'
            ``MatryoshkaLoss``, as :class:`~hf_codiemb.losses.CoDiEmbMatryoshkaLoss`), e.g. ``[384, 256, 128, 64]``;
            ``codiemb train`` then evaluates the final model at each of them [ours]. Unset: off.
        matryoshka_weights (`list[float]`, *optional*, defaults to `None`):
            Weight of each dimension's loss, in the order of ``matryoshka_dims``. Unset: 1 each.

    Example::

        from hf_codiemb import CoDiEmbTrainingArguments

        args = CoDiEmbTrainingArguments(
            output_dir="outputs/run", ir_batch_size=32, sts_batch_size=64, num_negatives=7, task_ratio="ir:3,sts:1"
        )
    """

    _VALID_DICT_FIELDS: ClassVar[list[str]] = [
        *SentenceTransformerTrainingArguments._VALID_DICT_FIELDS, "dataset_tasks", "dataset_num_negatives"
    ]

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
    dataset_num_negatives: Union[str, None, dict[str, int]] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "Hard negatives per query of named IR datasets, overriding num_negatives, e.g. {'scifact_train': "
            "0} (0: in-batch negatives only). codiemb train sets 0 for a BEIR split given without a mined-negatives "
            "file."
        },
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
    in_batch_positives: Literal["slot", "all"] = field(
        default="slot",
        metadata={
            "help": "IR in-batch candidates of positive slot p: 'slot' = every query's p-th positive + all hard "
            "negatives (the reference code); 'all' = every other query's positives of every slot (ours, more "
            "negatives). Equal when num_positives=1."
        },
    )
    ir_mini_batch_size: Union[int, None] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "Gradient cache (GradCache) for the default IR loss: embed the IR batch in mini-batches of this "
            "many rows (CachedMultiPositiveInfoNCELoss; same loss and gradients, memory of a mini-batch, a second "
            "forward pass). Unset = the uncached MultiPositiveInfoNCELoss."
        },
    )
    query_max_seq_length: Union[int, None] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "Token limit of IR queries (prompt included; the reference's and FlagEmbedding's query_max_len). "
            "Unset = the model's max_seq_length. At most max_seq_length."
        },
    )
    passage_max_seq_length: Union[int, None] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "Token limit of IR positives and negatives (FlagEmbedding's passage_max_len). Unset = the model's "
            "max_seq_length. At most max_seq_length. STS sentences always use max_seq_length."
        },
    )
    multi_layer_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the reference's auxiliary middle-layer InfoNCE on STS steps ('multi_layer_loss', on in "
            "all its training scripts); 0 = off."
        },
    )
    multi_layer_index: Union[int, None] = field(  # noqa: UP007
        default=None,
        metadata={"help": "Hidden-state index of the middle layer (0 = embeddings); unset = n // 2 (the reference)."},
    )
    multi_layer_threshold: float = field(
        default=1.0, metadata={"help": "STS pairs with gold >= this are rows of the middle-layer InfoNCE (reference)."}
    )
    multi_layer_threshold_fraction: Union[float, None] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "[ours] The middle-layer threshold as a share f of the recipe's sts_score_range: threshold = low + "
            "f * (high - low) (e.g. 0.8 = 4.0 on 0-5 STS-B), overriding multi_layer_threshold. Unset = the "
            "reference's absolute multi_layer_threshold."
        },
    )
    multi_layer_temperature: Union[float, None] = field(  # noqa: UP007
        default=None,
        metadata={"help": "Temperature of the middle-layer InfoNCE; unset = `temperature` (the reference's choice)."},
    )
    sts_gather_across_devices: bool = field(
        default=False,
        metadata={
            "help": "All-gather STS scores and middle-layer embeddings across ranks before the STS losses (the "
            "reference's sts_negatives_cross_device, off in its scripts)."
        },
    )
    rank_kl_all_equal_gold: Literal["uniform_target", "zero"] = field(
        default="uniform_target",
        metadata={
            "help": "Rank-KL on a batch whose gold scores are all equal: 'uniform_target' pulls the predictions "
            "together (the reference), 'zero' skips it (ours)."
        },
    )
    task_ratio: Union[str, None, dict[str, float]] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "IR:STS share of optimizer updates (or of passes over the data: task_ratio_unit), e.g. "
            "'ir:1,sts:1'. Unset = proportional to the data (each batch used once per epoch). With the unit "
            "'updates', batches of a task are repeated or dropped to reach the share."
        },
    )
    task_ratio_unit: Literal["updates", "passes"] = field(
        default="updates",
        metadata={
            "help": "What task_ratio divides: 'updates' = shares of an epoch's optimizer updates (the epoch keeps the "
            "length of one pass over all data); 'passes' [ours] = passes over each task's data per epoch (the "
            "heaviest task makes one pass, the others the weight's fraction; no batch repeats)."
        },
    )
    sampling_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Temperature over dataset sizes when task_ratio is unset: dataset share ~ n_batches^(1/T). "
            "1.0 = proportional to data; large values approach uniform over datasets."
        },
    )
    ir_no_duplicates: bool = field(
        default=False,
        metadata={
            "help": "[ours] Duplicate-free IR batches: within one optimizer update's global IR batch (all ranks, all "
            "gradient accumulation steps) no text is the query, a positive or a negative of two different rows (a "
            "repeated text would make one query's positive another's negative). Every positive and negative of a row "
            "counts, since the collator samples from all of them. A row that would repeat a text waits for a later "
            "batch; the number of updates per epoch is unchanged. Off = the reference's sampler. "
            "sentence-transformers' batch_sampler: no_duplicates sets it."
        },
    )
    skip_nonfinite_batches: bool = field(
        default=False,
        metadata={
            "help": "On a NaN/inf training loss, skip the batch (its whole optimizer update is skipped, counted in the "
            "logs as nonfinite_batches_skipped) instead of stopping with an error naming the step, dataset and loss "
            "component."
        },
    )
    early_stopping_patience: Union[int, None] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "Stop training when metric_for_best_model has not improved for this many evaluations "
            "(transformers' EarlyStoppingCallback; needs eval_strategy and dev sets). Unset = no early stopping."
        },
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={"help": "Early stopping: the least change of metric_for_best_model that counts as an improvement."},
    )
    per_device_eval_batch_size: int = field(
        default=32,
        metadata={
            "help": "Encoding batch size of the dev-set evaluations (during training and before/after it). transformers' "
            "default is 8; 32 is the batch size sentence-transformers' evaluators use."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "`codiemb train`: start a new run in an output_dir that already holds checkpoints or a saved "
            "model; its checkpoint-N folders are deleted first. Without it such a run is refused (resume it with "
            "resume_from_checkpoint=last instead). transformers 5 dropped this flag; this is ours."
        },
    )
    false_negative_margin: Union[float, None] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "[ours] Margin masking of probable false negatives in the IR loss (GISTEmbed): every candidate "
            "(in-batch, gathered or hard negative) scoring above the positive minus this margin is removed from the "
            "softmax; the count is logged as <dataset>/masked_candidates. Unset = no masking (the reference)."
        },
    )
    false_negative_margin_strategy: Literal["absolute", "relative"] = field(
        default="absolute",
        metadata={
            "help": "[ours] 'absolute': remove a candidate c when s(q,c) > s(q,p) - margin; 'relative': when "
            "s(q,c) > s(q,p) - |s(q,p)| * margin (GISTEmbed's two strategies)."
        },
    )
    false_negative_guide: Union[str, None] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "[ours] A frozen SentenceTransformer (Hub id or folder) whose similarities decide which candidates "
            "the margin removes (GISTEmbed's guide). Unset = the trained model judges. Needs false_negative_margin."
        },
    )
    distill_weight: float = field(
        default=0.0,
        metadata={
            "help": "[FlagEmbedding] Weight of the KL divergence between the teacher's scores (records' positive_scores "
            "/ negative_scores, FlagEmbedding's pos_scores / neg_scores) and the model over each query's positives and "
            "hard negatives, added to the IR loss (logged as <dataset>/distill_kl). 0 = off. Every IR record then "
            "needs the scores."
        },
    )
    teacher_temperature: float = field(
        default=1.0,
        metadata={"help": "[FlagEmbedding] Temperature of the teacher's softmax over its scores (distill_weight > 0)."},
    )
    matryoshka_dims: Union[list[int], None] = field(  # noqa: UP007
        default=None,
        metadata={
            "help": "[ours] Matryoshka embeddings: every task's default loss is also computed on the embeddings cut to "
            "these leading dimensions (sentence-transformers' MatryoshkaLoss), e.g. 384 256 128 64; the final model is "
            "evaluated at each (eval_matryoshka.md). Unset = off (the reference)."
        },
    )
    matryoshka_weights: Union[list[float], None] = field(  # noqa: UP007
        default=None,
        metadata={"help": "[ours] Weight of each matryoshka_dims loss, in the same order. Unset = 1 each."},
    )

    def __post_init__(self) -> None:
        self._take_no_duplicates_batch_sampler()
        self._refuse_ignored_options()
        check_seed(self.seed)
        self._check_training_length()
        self._use_gloo_without_gpus()
        self._select_by_combined_score()
        super().__post_init__()
        try:
            self.task_ratio = parse_task_ratio(self.task_ratio)
        except (ValueError, TypeError) as error:
            raise RecipeError(str(error).removeprefix("task_ratio: "), "task_ratio") from None
        if self.task_ratio_unit not in ("updates", "passes"):
            raise RecipeError(f"must be 'updates' or 'passes', got {self.task_ratio_unit!r}", "task_ratio_unit")
        if isinstance(self.dataset_tasks, str):
            self.dataset_tasks = parse_dataset_tasks(self.dataset_tasks)
        for name, task in (self.dataset_tasks or {}).items():
            if task not in TASKS:
                raise RecipeError(f"dataset {name!r} has unknown task {task!r}; use one of {TASKS}", "dataset_tasks")
        for name in ("ir_batch_size", "sts_batch_size", "num_positives"):
            _check_int(self, name, minimum=1)
        _check_int(self, "num_negatives", minimum=0)
        if isinstance(self.dataset_num_negatives, str):
            self.dataset_num_negatives = json.loads(self.dataset_num_negatives)
        for name, count in (self.dataset_num_negatives or {}).items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise RecipeError(f"dataset {name!r}: must be an integer >= 0, got {count!r}", "dataset_num_negatives")
        for name in ("ir_mini_batch_size", "query_max_seq_length", "passage_max_seq_length"):
            if getattr(self, name) is not None:
                _check_int(self, name, minimum=1)
        if self.in_batch_positives not in ("slot", "all"):
            raise RecipeError(
                f"must be 'slot' (the reference) or 'all', got {self.in_batch_positives!r}", "in_batch_positives"
            )
        if self.rank_kl_all_equal_gold not in ("uniform_target", "zero"):
            raise RecipeError(
                f"must be 'uniform_target' (the reference) or 'zero', got {self.rank_kl_all_equal_gold!r}",
                "rank_kl_all_equal_gold",
            )
        fraction = self.multi_layer_threshold_fraction
        if fraction is not None and (
            isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0
        ):
            raise RecipeError(f"must be a number within [0, 1], got {fraction!r}", "multi_layer_threshold_fraction")
        if self.multi_layer_temperature is None:
            self.multi_layer_temperature = self.temperature
        for name in ("temperature", "sts_temperature", "sampling_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise RecipeError(f"must be a number > 0, got {value!r}", name)
        if self.task_ratio_unit == "passes" and self.task_ratio is not None and self.sampling_temperature != 1.0:
            raise RecipeError(
                "sampling_temperature applies to shares of updates; with task_ratio_unit 'passes' every dataset of a "
                f"task makes the task's fraction of a pass: unset sampling_temperature (got {self.sampling_temperature})",
                "sampling_temperature",
            )
        self._check_ir_loss_options()

    def _check_ir_loss_options(self) -> None:
        """The false-negative masking and distillation options of the IR loss (off by default)."""
        margin = self.false_negative_margin
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0):
            raise RecipeError(f"must be a number >= 0 (unset: no masking), got {margin!r}", "false_negative_margin")
        if self.false_negative_margin_strategy not in ("absolute", "relative"):
            raise RecipeError(
                f"must be 'absolute' or 'relative', got {self.false_negative_margin_strategy!r}",
                "false_negative_margin_strategy",
            )
        if self.false_negative_guide is not None and margin is None:
            raise RecipeError(
                "needs false_negative_margin (the guide only decides which candidates the margin removes)",
                "false_negative_guide",
            )
        weight = self.distill_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise RecipeError(f"must be a number >= 0 (0: off), got {weight!r}", "distill_weight")
        value = self.teacher_temperature
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise RecipeError(f"must be a number > 0, got {value!r}", "teacher_temperature")
        self._check_matryoshka_options()

    def _check_matryoshka_options(self) -> None:
        """``matryoshka_dims``: distinct integers >= 1; ``matryoshka_weights``: one number >= 0 per dimension; not
        with GradCache (``ir_mini_batch_size``), which re-embeds after the truncation is undone."""
        dims, weights = self.matryoshka_dims, self.matryoshka_weights
        if dims is None:
            if weights is not None:
                raise RecipeError("needs matryoshka_dims", "matryoshka_weights")
            return
        if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims) or len(set(dims)) < len(dims):
            raise RecipeError(f"must be distinct integers >= 1, got {dims!r}", "matryoshka_dims")
        if weights is not None and (
            len(weights) != len(dims)
            or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 for w in weights)
        ):
            raise RecipeError(
                f"must be one number >= 0 per dimension of matryoshka_dims {dims}, got {weights!r}", "matryoshka_weights"
            )
        if self.ir_mini_batch_size is not None:
            raise RecipeError(
                "cannot be combined with ir_mini_batch_size (GradCache re-embeds during the backward pass, after the "
                "truncation): unset one of them",
                "matryoshka_dims",
            )

    def _select_by_combined_score(self) -> None:
        """``load_best_model_at_end`` / early stopping without ``metric_for_best_model``: select by ``codiemb_score``.

        transformers would fall back to the evaluation loss, which a CoDiEmb run (dev sets as evaluators, no
        ``eval_dataset``) does not compute; the combined dev score is what the run is for. Checked here, before the
        parent sets ``greater_is_better`` from the metric's name.
        """
        if self.early_stopping_patience is not None:
            _check_int(self, "early_stopping_patience", minimum=1)
        if self.metric_for_best_model is None and (self.load_best_model_at_end or self.early_stopping_patience):
            self.metric_for_best_model = "codiemb_score"

    def _take_no_duplicates_batch_sampler(self) -> None:
        """sentence-transformers' ``batch_sampler: no_duplicates`` (or ``no_duplicates_hashed``) is CoDiEmb's
        ``ir_no_duplicates``: set that and put ``batch_sampler`` back to its default (the other values are refused)."""
        if getattr(self.batch_sampler, "value", self.batch_sampler) in ("no_duplicates", "no_duplicates_hashed"):
            import logging

            logging.getLogger(__name__).info(
                "batch_sampler=%s: taken as ir_no_duplicates=True (duplicate-free IR batches within the task-balanced "
                "sampler; STS batches are sampled as usual)", getattr(self.batch_sampler, "value", self.batch_sampler)
            )
            self.ir_no_duplicates = True
            defaults = {item.name: item.default for item in dataclasses.fields(SentenceTransformerTrainingArguments)}
            self.batch_sampler = defaults["batch_sampler"]

    def _refuse_ignored_options(self) -> None:
        """Refuse an inherited Trainer option that CoDiEmb ignores (:data:`IGNORED_TRAINER_OPTIONS`) when it is set to
        anything but its default, naming the option to use instead (it would otherwise be taken and silently
        ignored, and the model card would hide it)."""
        defaults = {item.name: item.default for item in dataclasses.fields(SentenceTransformerTrainingArguments)}
        for name, instead in IGNORED_TRAINER_OPTIONS.items():
            value = getattr(self, name)
            if value != defaults[name]:
                shown = getattr(value, "value", value)
                raise RecipeError(f"is not used by CoDiEmb (got {shown!r}): {instead}", name)

    def _use_gloo_without_gpus(self) -> None:
        """Under a multi-process launcher (torchrun, ``accelerate launch``) on a machine without GPUs: one DDP job.

        transformers only forms a process group on CPU when both ``use_cpu`` and ``ddp_backend`` are set; without
        them every process trains alone on the full data (N independent runs into one output_dir). When the
        launcher's ``WORLD_SIZE`` is above 1 and no CUDA device is visible, this sets ``use_cpu=True`` and, unless
        the recipe chose a backend, ``ddp_backend="gloo"``.
        """
        import logging
        import os

        import torch

        if "WORLD_SIZE" not in os.environ and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
            logging.getLogger(__name__).warning(
                "`accelerate launch --cpu` starts ONE process (accelerate runs several CPU processes only through "
                "MPI). For N processes without GPUs use `torchrun --nproc_per_node N -m hf_codiemb.cli train ...` or "
                "`accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes N -m "
                "hf_codiemb.cli train ...` (gloo is chosen automatically)."
            )
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.cuda.is_available():
            return
        self.use_cpu = True
        if self.ddp_backend is None:
            self.ddp_backend = "gloo"

    def _check_training_length(self) -> None:
        """``max_steps`` > 0 (or -1: train ``num_train_epochs``), epochs > 0 when they decide: else nothing trains."""
        _check_int(self, "max_steps", minimum=-(2**63))
        if self.max_steps < 1 and self.max_steps != -1:
            raise RecipeError(
                f"must be > 0, or -1 (the default) to train for num_train_epochs, got {self.max_steps}", "max_steps"
            )
        epochs = self.num_train_epochs
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs < 0:
            raise RecipeError(f"must be a number >= 0, got {epochs!r}", "num_train_epochs")
        if self.max_steps < 0 and epochs == 0:
            raise RecipeError("is 0 and max_steps is unset: nothing would be trained", "num_train_epochs")

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


def check_seed(seed: Any) -> None:
    """Refuse a ``seed`` the run would refuse when it seeds numpy, torch and random (transformers' ``set_seed``):
    an integer in :data:`SEED_RANGE`. Checked when the arguments are built, so a dry run refuses it too.

    Raises:
        RecipeError: naming the field ``seed``.
    """
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RecipeError(f"must be an integer from {low} to {high} (2**32 - 1), got {seed!r}", "seed")
    if not low <= seed <= high:
        raise RecipeError(f"must be from {low} to {high} (2**32 - 1, numpy's limit), got {seed}", "seed")


def num_negatives_for(args: CoDiEmbTrainingArguments, name: str) -> int:
    """The hard negatives per query of dataset ``name``: ``dataset_num_negatives[name]``, else ``num_negatives``."""
    return (args.dataset_num_negatives or {}).get(name, args.num_negatives)


def _check_int(args: CoDiEmbTrainingArguments, name: str, minimum: int) -> None:
    """``args.name`` must be an integer (not a bool, not a float) >= ``minimum``."""
    value = getattr(args, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"must be an integer >= {minimum}, got {value!r} ({type(value).__name__})", name)
    if value < minimum:
        raise RecipeError(f"must be >= {minimum}, got {value}", name)


def parse_dataset_tasks(value: str) -> dict[str, str]:
    """Parse ``"name:ir,other:sts"`` into ``{"name": "ir", "other": "sts"}``."""
    tasks: dict[str, str] = {}
    for part in value.split(","):
        name, sep, task = part.partition(":")
        if not sep:
            raise ValueError(f"dataset_tasks: entry {part!r} must look like 'name:ir'")
        tasks[name.strip()] = task.strip()
    return tasks
