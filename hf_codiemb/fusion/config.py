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
    p: float = field(default=1.0, metadata={"help": "delta: exponent of |theta_k - theta_0| (0 = uniform soup)."})
    granularity: str = field(default="element", metadata={"help": "delta: 'element' or 'tensor' weights."})
    eps: float = field(default=1e-12, metadata={"help": "delta: denominator guard."})
    scaling: float = field(default=1.0, metadata={"help": "task_arithmetic: lambda applied to the summed task vectors."})
    density: float = field(default=0.5, metadata={"help": "ties/dare: fraction of each task vector kept."})
    seed: int = field(default=0, metadata={"help": "dare: seed of the random drop."})
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
        """The keyword arguments of the selected method."""
        if self.method == "delta":
            return {"p": self.p, "granularity": self.granularity, "eps": self.eps}
        if self.method == "task_arithmetic":
            return {"scaling": self.scaling}
        if self.method in ("ties", "dare_ties", "dare_linear"):
            return {"density": self.density, "seed": self.seed}
        return {}


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
        help_text = item.metadata.get("help", "")
        if item.name in positional:
            parser.add_argument(item.name, nargs="*" if is_list else "?", default=argparse.SUPPRESS, help=help_text)
            continue
        flag = "--" + item.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
        elif is_list:
            parser.add_argument(  # repeatable: --include a --include b gives [a, b]
                flag, nargs="+", action="extend", type=kind, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)


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
