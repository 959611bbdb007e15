"""Recipes: one YAML file per run, parsed with command-line overrides into the trainer's dataclasses."""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from transformers import HfArgumentParser

from hf_codiemb.errors import CoDiEmbUserError, RecipeError, unknown_arguments_message
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

    def __post_init__(self) -> None:
        score_range = self.sts_score_range
        if (
            not isinstance(score_range, (list, tuple))
            or len(score_range) != 2
            or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in score_range)
            or not score_range[0] < score_range[1]
        ):
            raise RecipeError(f"must be two numbers [low, high] with low < high, got {score_range!r}", "sts_score_range")
        for name in ("max_train_records", "max_eval_records"):
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
    values, _ = _read_recipe(path)
    return values


def _read_recipe(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The flat values of a recipe file and the 1-based line of each key."""
    path = Path(path)
    where = os.path.abspath(path)
    if not path.is_file():
        problem = "is a directory, not a YAML recipe" if path.is_dir() else "does not exist"
        raise RecipeError(problem, source=f"Recipe {where}")
    try:
        text = path.read_text(encoding="utf-8-sig")
        node = yaml.compose(text)
        values = yaml.safe_load(text) or {}
    except UnicodeDecodeError as error:
        raise RecipeError(f"is not UTF-8 text ({error.reason} at byte {error.start})", source=f"Recipe {where}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        line = mark.line + 1 if mark is not None else None
        raise RecipeError(f"is not valid YAML: {problem}", source=f"Recipe {where}", line=line) from None
    if not isinstance(values, dict):
        raise RecipeError(f"must be a mapping of keys to values, got {type(values).__name__}", source=f"Recipe {where}")
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
            if key_node.value == "lora" and isinstance(value_node, yaml.MappingNode):
                for sub_key, _ in value_node.value:
                    lines[f"lora_{sub_key.value}"] = sub_key.start_mark.line + 1
    if "lora" in values:
        lora = values.pop("lora")
        if not isinstance(lora, dict):
            raise RecipeError(
                f"must be a mapping like {{r: 8, alpha: 16}}, got {lora!r}", "lora", f"Recipe {where}", lines.get("lora")
            )
        for key, value in lora.items():
            values[f"lora_{key}"] = value
    return values, lines


class RecipeArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` for recipes: no silent flag abbreviations, and errors as one-line :class:`RecipeError`.

    ``--max_step`` is an unknown flag (with a suggestion), not an abbreviation of ``--max_steps``.
    """

    def __init__(self, dataclass_types, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise RecipeError(f"{message} (see `{self.prog} --help`)", source="command line")


def _field_types() -> dict[str, Any]:
    """The declared type of every recipe field (resolved annotations of the recipe dataclasses)."""
    types_by_name: dict[str, Any] = {}
    for dataclass_type in RECIPE_DATACLASSES:
        hints = typing.get_type_hints(dataclass_type)
        for item in dataclasses.fields(dataclass_type):
            if item.init:
                types_by_name[item.name] = hints.get(item.name, Any)
    return types_by_name


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        args = typing.get_args(annotation)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _convertible(value: str, annotation: Any) -> bool:
    """Whether argparse would turn the YAML string ``value`` into a value of ``annotation`` (it does for defaults)."""
    from transformers.hf_argparser import string_to_bool

    try:
        if annotation is bool:
            string_to_bool(value)
        else:
            annotation(value)
    except (TypeError, ValueError, Exception):  # noqa: BLE001 - argparse-style conversion: any failure is a no
        return False
    return True


def _value_matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a dataclass field type (bool is not an int, a list is not a number, ...)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_value_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return isinstance(value, list) and (not args or all(_value_matches(item, args[0]) for item in value))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool) or (isinstance(value, str) and _convertible(value, bool))
    if annotation in (int, float):
        if isinstance(value, str):
            return _convertible(value, annotation)
        if annotation is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, (str, annotation))
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def check_recipe_values(values: dict[str, Any], source: str, lines: dict[str, int] | None = None) -> dict[str, Any]:
    """Check the type of every recipe value against its dataclass field; return the values, normalised.

    YAML values become the parser's defaults, which argparse does not convert, so ``ir_batch_size: true`` or
    ``ir_batch_size: 2.5`` would otherwise reach the trainer. A single string given for a list-of-strings field
    becomes a one-element list.

    Raises:
        RecipeError: an unknown key (with the closest known key) or a value of the wrong type, naming the file,
            the line and the key.
    """
    lines = lines or {}
    field_types = _field_types()
    checked = dict(values)
    for key, value in values.items():
        if key not in field_types:
            hint = unknown_arguments_message([key], field_types, prefix="")
            raise RecipeError(f"unknown key{hint}", key, source, lines.get(key))
        annotation = field_types[key]
        if key == "resume_from_checkpoint" and isinstance(value, bool):  # YAML `true` / `false`
            checked[key] = value = "true" if value else None
        if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,) and isinstance(value, str):
            checked[key] = value = [value]
        if not _value_matches(value, annotation):
            raise RecipeError(
                f"must be {_type_name(annotation)}, got {value!r} ({type(value).__name__})", key, source, lines.get(key)
            )
    return checked


def _given_on_command_line(key: str, argv: list[str]) -> bool:
    flags = {f"--{key}", f"--no_{key}"}
    return any(arg in flags or arg.split("=", 1)[0] in flags for arg in argv)


def parse_recipe(argv: list[str] | None = None):
    """Parse ``--config recipe.yaml`` plus overrides into (model, data, training, run) arguments.

    Values from the YAML become the parser's defaults, so any flag on the command line wins (as in trl). Every
    value is checked before anything is loaded: its type against the dataclass field (:func:`check_recipe_values`)
    and its range in the dataclasses' ``__post_init__``.

    Raises:
        RecipeError: an unknown key or flag (with the closest known one), a value of the wrong type or out of
            range; the message names the recipe file and line, or the command line, and the key.
    """
    parser = RecipeArgumentParser(
        RECIPE_DATACLASSES, prog="codiemb train", description="Train with a CoDiEmb recipe."
    )
    # TensorBoard logs in output_dir/runs unless the recipe or the flags say otherwise.
    parser.set_defaults(report_to=["tensorboard"])
    pre = RunArguments()
    argv = list(argv or [])
    if argv and not argv[0].startswith("-"):  # `codiemb train recipes/x/config.yaml [flags]`: the recipe, positional
        argv = ["--config", *argv]
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise RecipeError("--config needs a YAML file", source="command line")
        pre.config = argv[index + 1]
    elif any(a.startswith("--config=") for a in argv):
        pre.config = next(a for a in argv if a.startswith("--config="))[len("--config=") :]
    lines: dict[str, int] = {}
    source = "command line"
    if pre.config:
        source = f"Recipe {os.path.abspath(pre.config)}"
        values, lines = _read_recipe(pre.config)
        values = check_recipe_values(values, source, lines)
        parser.set_defaults(**values)
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except CoDiEmbUserError as error:  # a __post_init__ check of ours, or RecipeArgumentParser.error
        raise _parse_error(error, source, lines, argv) from None
    except ValueError as error:  # a check of transformers' TrainingArguments
        raise _parse_error(error, source, lines, argv) from error
    if remaining:
        options = [option for action in parser._actions for option in action.option_strings]
        raise RecipeError(
            f"unrecognized arguments: {' '.join(remaining)}{unknown_arguments_message(remaining, options)}",
            source="command line",
        )
    return tuple(parsed)


def _parse_error(error: Exception, source: str, lines: dict[str, int], argv: list[str]) -> RecipeError:
    """A :class:`RecipeError` from an error raised while the dataclasses were built, located in the recipe."""
    if isinstance(error, RecipeError):
        if error.source is not None or error.field is None:
            return error.located(source)
        if _given_on_command_line(error.field, argv) or error.field not in lines:
            return error.located("command line" if _given_on_command_line(error.field, argv) else source)
        return error.located(source, lines[error.field])
    return RecipeError(" ".join(str(error).split()), source=source)
