"""Dataclass configs of the ``fuse`` and ``push`` commands, parsed from YAML and/or command-line flags.

Every field has a help string. A YAML file (``--config fuse.yaml``) gives values for the same fields; flags given on
the command line override it (as in trl's ``TrlParser``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hf_codiemb.hub import PushConfig  # noqa: F401 (lives with the push code; importable here too)

T = TypeVar("T")


@dataclass
class FuseConfig:
    """Configuration of ``codiemb fuse``."""

    checkpoints: list[str] = field(
        default_factory=list,
        metadata={"help": "Models to fuse: local sentence-transformers folders, Hub ids (owner/name[@rev]) or LoRA "
                          "adapter folders."},
    )
    output_dir: str | None = field(default=None, metadata={"help": "Folder to write the fused model to."})
    base: str | None = field(
        default=None, metadata={"help": "The pre-trained model the checkpoints were fine-tuned from (folder or Hub id)."}
    )
    method: str = field(
        default="delta",
        metadata={"help": "Fusion method: delta (CoDiEmb), uniform, task_arithmetic, ties, dare_ties, dare_linear."},
    )
    parameters: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "The method's parameters as a YAML mapping, e.g. {p: 1.0, granularity: element}. Each method "
                          "declares its own (`codiemb fuse --list-methods`); unknown ones are refused."},
    )
    param: list[str] = field(
        default_factory=list,
        metadata={"help": "A method parameter NAME=VALUE (repeatable), e.g. --param p=2 --param granularity=tensor; "
                          "overrides `parameters`."},
    )
    list_methods: bool = field(default=False, metadata={"help": "List the fusion methods and their parameters."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace a non-empty output folder (never one that is, or holds, an input)."}
    )
    eval_results: str | None = field(
        default=None,
        metadata={"help": "JSON file with evaluation results for the model card: {metric: value} or "
                          "{model: {metric: value}}."},
    )
    base_model_id: str | None = field(
        default=None, metadata={"help": "Hub id for the card's base_model metadata when --base is a local folder."}
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Push the fused model to this Hub repo (owner/name)."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    revision: str | None = field(default=None, metadata={"help": "Hub branch to push to (created if missing)."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing."})

    def method_params(self) -> dict[str, Any]:
        """The method's keyword arguments: ``parameters``, then each ``--param NAME=VALUE`` (values read as YAML).

        They are validated against the method's declared parameters when the method is built
        (:func:`hf_codiemb.fusion.registry.validate_method_params`).

        Raises:
            ValueError: a ``--param`` that is not ``NAME=VALUE``, or ``parameters`` that is not a mapping.
        """
        import yaml

        if self.parameters is not None and not isinstance(self.parameters, dict):
            raise ValueError(f"parameters must be a mapping of name: value, got {self.parameters!r}")
        params = dict(self.parameters or {})
        for item in self.param:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"--param {item!r}: expected NAME=VALUE, e.g. --param p=2")
            params[name.strip()] = yaml.safe_load(value)
        return params


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner type, is_list) of ``X | None`` / ``list[X]`` annotations."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0])
    if origin is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of ``cls`` (help from the field metadata). Defaults are suppressed so that
    :func:`build_config` can tell which flags were given (they override the YAML config)."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        kind, is_list = _unwrap(hints[item.name])
        if kind is dict or typing.get_origin(kind) is dict:  # mappings come from the YAML file only
            continue
        help_text = item.metadata.get("help", "")
        if item.name in positional:
            parser.add_argument(item.name, nargs="*" if is_list else "?", default=argparse.SUPPRESS, help=help_text)
            continue
        flags = ["--" + item.name.replace("_", "-")]  # `codiemb` adds the `--flag_name` spelling to every command
        if kind is bool:
            parser.add_argument(*flags, action="store_true", default=argparse.SUPPRESS, help=help_text)
        elif is_list:
            parser.add_argument(  # repeatable: --include a --include b gives [a, b]
                *flags, nargs="+", action="extend", type=kind, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(*flags, type=kind, default=argparse.SUPPRESS, help=help_text)


def build_config(cls: type[T], args: argparse.Namespace) -> T:
    """Dataclass defaults, then the YAML file of ``args.config`` (if any), then the flags that were given."""
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    names = {item.name for item in dataclasses.fields(cls)}
    if config_path:
        import yaml

        data = yaml.safe_load(Path(config_path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{config_path}: expected a mapping of options")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{config_path}: unknown options {unknown}; known: {sorted(names)}")
        values.update(data)
    values.update({name: value for name, value in vars(args).items() if name in names and value not in (None, [])})
    return cls(**values)
