"""One parser for every ``codiemb`` command: dataclass fields as flags, a YAML config under them, located errors.

Every command declares its options as dataclasses (``FuseConfig``, ``PushConfig``, the recipe's four dataclasses,
...) and parses them with :class:`CommandParser`, an :class:`~transformers.HfArgumentParser` (as trl's ``TrlParser``):

- ``--config FILE.yaml`` (or, for ``train`` and ``fuse``, the YAML file as the first positional argument) gives
  values for the same fields; flags on the command line override it;
- every flag is accepted as ``--flag_name`` and ``--flag-name`` (help lists the first); flags are never
  abbreviated (``--max_step`` is an error with a suggestion, not ``--max_steps``);
- a list option given twice collects both (``--param p=2 --param granularity=tensor``), a flag given once replaces
  the YAML value;
- fields may also be positional (``codiemb push FOLDER``); a required field may come from the YAML file;
- every error is one :class:`~hf_codiemb.errors.RecipeError` naming the YAML file and line, or the command line,
  and the field: unknown keys and flags come with the closest known one, YAML values are type-checked (argparse
  does not convert defaults).

Example::

    @dataclass
    class PushConfig:
        folder: str | None = field(default=None, metadata={"help": "The local model folder to upload."})
        repo_id: str | None = field(default=None, metadata={"help": "Target Hub repo (owner/name)."})

    (config,) = CommandParser([PushConfig], prog="codiemb push", positional=("folder",)).parse(argv)
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import reprlib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from transformers import HfArgumentParser

from hf_codiemb.errors import CoDiEmbUserError, RecipeError, unknown_arguments_message
from hf_codiemb.help_snapshot import HelpFormatter
from hf_codiemb.yaml_loader import load_yaml_file

CONFIG_FIELD = "config"


@dataclass
class ConfigArguments:
    """The ``--config`` option every command has (dropped from the parsed result when no dataclass declares it)."""

    config: str | None = field(default=None, metadata={"help": "A YAML file of these options; flags override it."})


class _ReplaceThenExtend(argparse._StoreAction):
    """``nargs='+'`` list option: its first use on the command line replaces the default (the YAML value), a second
    use extends it, so ``--param a=1 --param b=2`` gives both."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest, None)
        if current is self.default or current is None:
            setattr(namespace, self.dest, list(values))
        else:
            setattr(namespace, self.dest, [*current, *values])


class CommandParser(HfArgumentParser):
    """The parser of a ``codiemb`` command: its dataclasses' fields as flags, plus a YAML config (see the module).

    Args:
        dataclass_types: the dataclasses whose fields are the options, in the order :meth:`parse` returns them.
        prog: the command, e.g. ``"codiemb fuse"`` (used in help and errors).
        description: the help text's description (kept as written: line breaks stay).
        positional: fields that may also be given as positional arguments, in order (``("folder",)``); a list field
            takes every remaining positional argument.
        config_positional: the first argument, when it is not a flag, is the YAML config (``codiemb train X.yaml``).
        groups: help sections, ``{title: field names}``, shown first and in order; other fields follow in their
            dataclass's section.
    """

    def __init__(
        self,
        dataclass_types: Sequence[type],
        *,
        prog: str,
        description: str | None = None,
        positional: Sequence[str] = (),
        config_positional: bool = False,
        groups: dict[str, Sequence[str]] | None = None,
    ) -> None:
        self.user_types = tuple(dataclass_types)
        self.declares_config = any(
            CONFIG_FIELD in {item.name for item in dataclasses.fields(cls)} for cls in self.user_types
        )
        all_types = self.user_types if self.declares_config else (ConfigArguments, *self.user_types)
        self.config_positional = config_positional
        super().__init__(
            all_types, prog=prog, description=description, allow_abbrev=False, formatter_class=HelpFormatter
        )
        self._one_documented_spelling()
        for action in self._actions:
            if action.option_strings and action.nargs == "+" and type(action) is argparse._StoreAction:
                action.__class__ = _ReplaceThenExtend
        hints = {name: hint for cls in all_types for name, hint in typing.get_type_hints(cls).items()}
        for name in positional:
            self.add_argument(name, nargs="*" if _is_list(hints[name]) else "?", default=argparse.SUPPRESS, metavar=name.upper(),
                              help=f"the same as --{name}")  # fmt: skip
        if groups:
            self._regroup(groups)
        # The full usage would list every option (160 lines for `train`): name the shape, `--help` lists them.
        operands = " ".join(f"[{name.upper()}{' ...' if _is_list(hints[name]) else ''}]" for name in positional)
        config = "[RECIPE.yaml] " if config_positional else ""
        self.usage = (
            f"{prog} [-h] {config}{operands + ' ' if operands else ''}[--config FILE.yaml] [--option VALUE ...]"
        )

    # ------------------------------------------------------------------------------------------------ help layout
    def set_defaults(self, **kwargs: Any) -> None:
        """argparse's defaults; a required option given one (by a YAML file, a recipe) is no longer required."""
        super().set_defaults(**kwargs)
        for action in self._actions:
            if action.dest in kwargs:
                action.required = False

    def require(self, dest: str, flag: str | None = None, *, by_argparse: bool = True) -> None:
        """Take the default of field ``dest`` away and make its option required, documented as ``flag`` when given
        (its other spellings still parse), e.g. ``require("model_name_or_path", "--model")``. With
        ``by_argparse=False`` the caller refuses a missing value itself (it is ``None`` after parsing), with its own
        message."""
        for action in self._actions:
            if action.dest == dest and action.option_strings:
                action.required, action.default = by_argparse, None
                if flag is not None:
                    action.option_strings = [flag]

    def _one_documented_spelling(self) -> None:
        """Help, usage and errors name ``--flag_name`` only; ``--flag-name`` still parses (the same action)."""
        for action in self._actions:
            long = [option for option in action.option_strings if option.startswith("--")]
            keep = [option for option in action.option_strings if not option.startswith("--") or "-" not in option[2:]]
            if len(long) > 1 and keep:  # HfArgumentParser registered both spellings: the dashed one still parses
                action.option_strings = keep

    def _regroup(self, groups: dict[str, Sequence[str]]) -> None:
        """Move the named fields' options into help sections of their own, placed before the others."""
        by_dest: dict[str, list[argparse.Action]] = {}
        for action in self._actions:
            if action.option_strings:
                by_dest.setdefault(action.dest, []).append(action)
        new_groups = []
        for title, names in groups.items():
            group = self.add_argument_group(title)
            self._action_groups.remove(group)
            for name in names:
                for action in by_dest.get(name, []):
                    for old in self._action_groups:
                        if action in old._group_actions:
                            old._group_actions.remove(action)
                    group._group_actions.append(action)
            new_groups.append(group)
        rest = [group for group in self._action_groups if group._group_actions]
        positionals = [group for group in rest if group is self._positionals]
        self._action_groups[:] = positionals + new_groups + [g for g in rest if g is not self._positionals]

    # ---------------------------------------------------------------------------------------------------- parsing
    def error(self, message: str) -> NoReturn:
        raise RecipeError(f"{message} (see `{self.prog} --help`)", source="command line")

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """Parse ``argv`` (YAML config, then flags) into one instance per dataclass, in the constructor's order.

        Raises:
            RecipeError: an unknown key or flag (with the closest known one), a value of the wrong type or out of
                range, a missing required option; the message names the YAML file and line, or the command line,
                and the field.
        """
        argv = list(argv or [])
        if self.config_positional and argv and not argv[0].startswith("-"):
            argv = ["--config", *argv]  # `codiemb train recipes/x/config.yaml [flags]`
        config = _config_path(argv)
        lines: dict[str, int] = {}
        source = "command line"
        if config:
            source = f"Recipe {os.path.abspath(config)}"
            values, lines = read_yaml_config(config, source)
            values = check_values(values, self.dataclass_types, source, lines)
            self.set_defaults(**values)
        try:
            *parsed, remaining = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        except CoDiEmbUserError as error:  # a __post_init__ check, or self.error
            raise _parse_error(error, source, lines, argv) from None
        except ValueError as error:  # a check of transformers' TrainingArguments
            raise _parse_error(error, source, lines, argv) from error
        if remaining:
            options = [option for action in self._actions for option in action.option_strings]
            raise RecipeError(
                f"unrecognized arguments: {' '.join(remaining)}{unknown_arguments_message(remaining, options)}",
                source="command line",
            )
        parsed = [item for item in parsed if not isinstance(item, argparse.Namespace)]
        return tuple(parsed if self.declares_config else parsed[1:])


def _config_path(argv: list[str]) -> str | None:
    for index, arg in enumerate(argv):
        if arg == "--config":
            if index + 1 >= len(argv):
                raise RecipeError("--config needs a YAML file", source="command line")
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg[len("--config=") :]
    return None


# -------------------------------------------------------------------------------------------------- YAML config
def read_yaml_config(path: str | Path, source: str | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """The flat values of a YAML config (a nested ``lora:`` block becomes ``lora_*`` keys) and each key's line.

    Raises:
        RecipeError: the file is missing, not a regular file, too large, not UTF-8, not YAML, over the bounds of
            :mod:`hf_codiemb.yaml_loader` (aliases, depth), has a duplicated key, or is not a mapping (naming the
            file and line).
    """
    source = source or f"Recipe {os.path.abspath(path)}"
    values, node = load_yaml_file(path, source)
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise RecipeError(f"must be a mapping of keys to values, got {type(values).__name__}", source=source)
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
            raise RecipeError(f"must be a mapping like {{r: 8, alpha: 16}}, got {short_repr(lora)}", "lora", source,
                              lines.get("lora"))  # fmt: skip
        for key, value in lora.items():
            values[f"lora_{key}"] = value
    return values, lines


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a few elements per level and 80 characters per string (for one-line messages)."""
    short = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    short.maxlevel, short.maxstring, short.maxother = 3, 80, 80
    short.maxdict = short.maxlist = short.maxtuple = short.maxset = 6
    return short.repr(value)


def field_types(dataclass_types: Sequence[type]) -> dict[str, Any]:
    """The declared type of every init field of ``dataclass_types`` (resolved annotations)."""
    types_by_name: dict[str, Any] = {}
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        for item in dataclasses.fields(dataclass_type):
            if item.init:
                types_by_name[item.name] = hints.get(item.name, Any)
    return types_by_name


def field_aliases(dataclass_types: Sequence[type]) -> dict[str, str]:
    """Other names of fields (their ``aliases`` metadata, e.g. ``--model`` for ``model_name_or_path``), as YAML keys:
    ``{"model": "model_name_or_path"}``."""
    return {
        alias.lstrip("-").replace("-", "_"): item.name
        for dataclass_type in dataclass_types
        for item in dataclasses.fields(dataclass_type)
        for alias in item.metadata.get("aliases", ())
    }


def check_values(
    values: dict[str, Any], dataclass_types: Sequence[type], source: str, lines: dict[str, int] | None = None
) -> dict[str, Any]:
    """Check the type of every YAML value against its dataclass field; return the values, normalised.

    YAML values become the parser's defaults, which argparse does not convert, so ``ir_batch_size: true`` or
    ``ir_batch_size: 2.5`` would otherwise reach the trainer. A single string given for a list-of-strings field
    becomes a one-element list.

    Raises:
        RecipeError: an unknown key (with the closest known key) or a value of the wrong type, naming the file,
            the line and the key.
    """
    lines = dict(lines or {})
    known = field_types(dataclass_types)
    known.pop(CONFIG_FIELD, None)
    values = dict(values)
    for alias, name in field_aliases(dataclass_types).items():  # `model: X` is `model_name_or_path: X`
        if alias in values:
            if name in values:
                raise RecipeError(f"is also given as {name!r}: keep one", alias, source, lines.get(alias))
            values[name] = values.pop(alias)
            if alias in lines:
                lines[name] = lines[alias]
    checked = dict(values)
    for key, value in values.items():
        if key not in known:
            hint = unknown_arguments_message([key], known, prefix="")
            raise RecipeError(f"unknown key{hint}", key, source, lines.get(key))
        annotation = known[key]
        if key == "resume_from_checkpoint" and isinstance(value, bool):  # YAML `true` / `false`
            checked[key] = value = "true" if value else None
        if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,) and isinstance(value, str):
            checked[key] = value = [value]
        if not _value_matches(value, annotation):
            raise RecipeError(
                f"must be {_type_name(annotation)}, got {short_repr(value)} ({type(value).__name__})",
                key,
                source,
                lines.get(key),
            )
    return checked


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(_without_none(annotation)) is list


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        args = typing.get_args(annotation)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
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
    except Exception:  # noqa: BLE001 - argparse-style conversion: any failure is a no
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
    if origin is dict or annotation is dict:
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


def flag_value(argv: Sequence[str], key: str) -> str | None:
    """The value of field ``key``'s flag in ``argv`` (``--key VALUE`` / ``--key=VALUE``, either spelling; the last
    one given), or None, read before parsing (e.g. a file whose values become the parser's defaults)."""
    value = None
    spellings = (f"--{key}", f"--{key.replace('_', '-')}")
    for index, arg in enumerate(argv):
        if arg in spellings and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.split("=", 1)[0] in spellings and "=" in arg:
            value = arg.split("=", 1)[1]
    return value


def given_on_command_line(key: str, argv: list[str]) -> bool:
    """Whether the flag of field ``key`` is in ``argv`` (either spelling, ``--flag value`` or ``--flag=value``)."""
    flags = {f"--{key}", f"--no_{key}", f"--{key.replace('_', '-')}", f"--no-{key.replace('_', '-')}"}
    return any(arg.split("=", 1)[0] in flags for arg in argv)


def _parse_error(error: Exception, source: str, lines: dict[str, int], argv: list[str]) -> RecipeError:
    """A :class:`RecipeError` from an error raised while the dataclasses were built, located in the config."""
    if isinstance(error, RecipeError):
        if error.source is not None or error.field is None:
            return error.located(source)
        if given_on_command_line(error.field, argv) or error.field not in lines:
            return error.located("command line" if given_on_command_line(error.field, argv) else source)
        return error.located(source, lines[error.field])
    return RecipeError(" ".join(str(error).split()), source=source)
