"""Recipes: one YAML file per run, parsed with command-line overrides into the trainer's dataclasses."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from hf_codiemb.models import ModelArguments
from hf_codiemb.training_args import CoDiEmbTrainingArguments

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
        metadata={"help": "BEIR folders evaluated as IR, 'FOLDER:SPLIT' (e.g. ../shared/data/scifact:dev)."},
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
    """Read a YAML recipe into a flat dict (a nested ``lora:`` block becomes ``lora_*`` keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"Recipe {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"Recipe {path} must be a mapping of keys to values, got {type(values).__name__}")
    lora = values.pop("lora", None)
    if isinstance(lora, dict):
        for key, value in lora.items():
            values[f"lora_{key}"] = value
    return values


def parse_recipe(argv: list[str] | None = None):
    """Parse ``--config recipe.yaml`` plus overrides into (model, data, training, run) arguments.

    Values from the YAML become the parser's defaults, so any flag on the command line wins (as in trl).
    Unknown YAML keys are an error naming the key and the file.
    """
    parser = HfArgumentParser(RECIPE_DATACLASSES, prog="codiemb train", description="Train with a CoDiEmb recipe.")
    # TensorBoard logs in output_dir/runs unless the recipe or the flags say otherwise.
    parser.set_defaults(report_to=["tensorboard"])
    pre = RunArguments()
    argv = list(argv or [])
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ValueError("--config needs a YAML file")
        pre.config = argv[index + 1]
    elif any(a.startswith("--config=") for a in argv):
        pre.config = next(a for a in argv if a.startswith("--config="))[len("--config=") :]
    if pre.config:
        values = load_recipe_file(pre.config)
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Recipe {pre.config}: unknown key(s) {unknown}")
        parser.set_defaults(**values)
    model_args, data_args, training_args, run_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args, run_args
