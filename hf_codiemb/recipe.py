"""Recipes: one YAML file per run, parsed with command-line overrides into the trainer's dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformerTrainingArguments

from hf_codiemb.command_parser import CommandParser, read_yaml_config
from hf_codiemb.errors import RecipeError
from hf_codiemb.models import ModelArguments
from hf_codiemb.training_args import IGNORED_TRAINER_OPTIONS, CoDiEmbTrainingArguments

logger = logging.getLogger(__name__)

DEMO_PREFIX = "demo:"


@dataclass
class DataArguments:
    """Training and evaluation data of a recipe. Paths may be ``demo:NAME`` for the packaged demo data."""

    ir_train: list[str] = field(default_factory=list, metadata={"help": "IR training files (JSON Lines)."})
    sts_train: list[str] = field(default_factory=list, metadata={"help": "STS training files (jsonl, tsv)."})
    ir_train_from_sts: list[str] = field(
        default_factory=list,
        metadata={"help": "STS files turned into IR training records (paraphrase retrieval, pairs scored >= 4)."},
    )
    ir_eval: list[str] = field(default_factory=list, metadata={"help": "IR evaluation files (JSON Lines)."})
    ir_train_beir: list[str] = field(
        default_factory=list,
        metadata={
            "help": "BEIR folders as IR training data, 'FOLDER:SPLIT:NEGATIVES' (positives: qrels scored > 0; "
            "negatives: a file written by `codiemb mine`) or 'FOLDER:SPLIT' (no hard negatives)."
        },
    )
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
    max_train_records: int | None = field(default=None, metadata={"help": "Cap on records per training file."})
    max_eval_records: int | None = field(default=None, metadata={"help": "Cap on records per evaluation file."})
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
        score_range = self.sts_score_range
        if (
            not isinstance(score_range, (list, tuple))
            or len(score_range) != 2
            or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in score_range)
            or not score_range[0] < score_range[1]
        ):
            raise RecipeError(f"must be two numbers [low, high] with low < high, got {score_range!r}", "sts_score_range")
        weight = self.eval_ir_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise RecipeError(f"must be a number within [0, 1], got {weight!r}", "eval_ir_weight")
        for name in ("max_train_records", "max_eval_records", "eval_max_corpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"must be >= 1 (or unset for every record), got {value}", name)


@dataclass
class RunArguments:
    """How to run a recipe (not part of the model or the training)."""

    config: str | None = field(default=None, metadata={"help": "The YAML recipe; command-line flags override it."})
    dry_run: bool = field(
        default=False,
        metadata={"help": "Validate the recipe, data and model config and build the sampler; train nothing."},
    )


RECIPE_DATACLASSES = (ModelArguments, DataArguments, CoDiEmbTrainingArguments, RunArguments)


def resolve_data_path(path: str) -> Path:
    """``demo:ir_train.jsonl`` -> the packaged demo file; other paths are returned as they are."""
    if path.startswith(DEMO_PREFIX):
        from hf_codiemb.data import demo_data_path

        return demo_data_path(path[len(DEMO_PREFIX) :])
    return Path(path)


def load_recipe_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a flat dict (a nested ``lora:`` block becomes ``lora_*`` keys).

    Raises:
        RecipeError: the file is missing, not YAML, or not a mapping (the message names the file and line).
    """
    values, _ = read_yaml_config(path, f"Recipe {os.path.abspath(path)}")
    return values


# Help sections of `codiemb train --help`, in order: the recipe, then CoDiEmb's own options, then the Trainer's.
TRAIN_HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "recipe": ("config", "dry_run"),
    "model": tuple(item.name for item in dataclasses.fields(ModelArguments)),
    "data": tuple(item.name for item in dataclasses.fields(DataArguments)),
    "CoDiEmb training (batches, losses, sampler)": tuple(
        name for name in (item.name for item in dataclasses.fields(CoDiEmbTrainingArguments))
        if name not in {item.name for item in dataclasses.fields(SentenceTransformerTrainingArguments)}
    ),
}


def build_recipe_parser() -> CommandParser:
    """The parser of ``codiemb train``: the recipe's dataclasses, the YAML recipe as ``--config`` or positional."""
    parser = CommandParser(
        RECIPE_DATACLASSES,
        prog="codiemb train",
        description="Train with a CoDiEmb recipe: `codiemb train RECIPE.yaml [--flag value ...]` (flags override "
        "the recipe).",
        config_positional=True,
        groups=TRAIN_HELP_GROUPS,
    )
    parser._optionals.title = "Trainer options (transformers / sentence-transformers)"
    # Inherited options CoDiEmb does not use are not advertised; setting one is refused with the option to use.
    for action in parser._actions:
        if action.dest in IGNORED_TRAINER_OPTIONS:
            action.help = argparse.SUPPRESS
    # TensorBoard logs in output_dir/runs unless the recipe or the flags say otherwise.
    parser.set_defaults(report_to=["tensorboard"])
    return parser


def parse_recipe(argv: list[str] | None = None):
    """Parse ``--config recipe.yaml`` (or the recipe as first argument) plus overrides into (model, data, training,
    run) arguments.

    Values from the YAML become the parser's defaults, so any flag on the command line wins (as in trl). Every
    value is checked before anything is loaded: its type against the dataclass field
    (:func:`hf_codiemb.command_parser.check_values`) and its range in the dataclasses' ``__post_init__``.

    Raises:
        RecipeError: an unknown key or flag (with the closest known one), a value of the wrong type or out of
            range; the message names the recipe file and line, or the command line, and the key.
    """
    model_args, data_args, training_args, run_args = build_recipe_parser().parse(argv)
    apply_relative_threshold(training_args, data_args)
    return model_args, data_args, training_args, run_args


def apply_relative_threshold(training_args: CoDiEmbTrainingArguments, data_args: DataArguments) -> None:
    """``multi_layer_threshold_fraction`` f (ours): set ``multi_layer_threshold`` to ``low + f * (high - low)`` of
    the recipe's ``sts_score_range``, so the middle-layer InfoNCE's positives are the same share of the scale on 0/1,
    0-1 and 0-5 data (the reference's absolute 1.0 was written for 0/1 labels: on 0-5 STS-B it takes pairs scored
    1-3.9 as positives too)."""
    fraction = training_args.multi_layer_threshold_fraction
    if fraction is None:
        return
    low, high = (float(value) for value in data_args.sts_score_range)
    training_args.multi_layer_threshold = low + float(fraction) * (high - low)
