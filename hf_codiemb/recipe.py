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

from hf_codiemb.arguments import TRAIN_DATA_FIELDS, DataArguments, EvalDataArguments, ModelArguments
from hf_codiemb.command_parser import CommandParser, read_yaml_config
from hf_codiemb.training_args import IGNORED_TRAINER_OPTIONS, CoDiEmbTrainingArguments

logger = logging.getLogger(__name__)

DEMO_PREFIX = "demo:"


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
    "data": (*TRAIN_DATA_FIELDS, *(item.name for item in dataclasses.fields(EvalDataArguments))),
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
