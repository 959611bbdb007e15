"""A command's ``--help`` without importing its libraries: the parser's options as data, rendered by argparse.

``codiemb train --help`` lists every field of the recipe's dataclasses, transformers' ``TrainingArguments``
included, so building its parser imports transformers and torch (about 5 s on a 2-core machine). A user's first
command should answer at once, so the options of that parser (each action's flags, help, default, choices, its help
section) are written to a JSON snapshot shipped with the package (:func:`write_snapshot`), and a bare
``codiemb train --help`` rebuilds an argparse parser from it (:func:`parser_from_snapshot`, standard library only)
and prints its help: argparse formats both, at the terminal's width, so the text is the live parser's.

The snapshot is used only when it was written from the same sources: the installed transformers and
sentence-transformers, the Python minor version (argparse's layout), and the exact content of hf_codiemb's modules
that declare the options (:data:`SNAPSHOT_SOURCES`, hashed: an edited option in a development checkout is never
answered from a stale snapshot; :func:`snapshot_matches`); otherwise the live parser answers. A test compares the
two renderings; after changing an option, regenerate it with ``python -m hf_codiemb.help_snapshot``.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Commands whose --help is served from a snapshot: name -> (module with build_parser(), snapshot file).
SNAPSHOTS: dict[str, tuple[str, Path]] = {
    "train": ("hf_codiemb.commands.train", Path(__file__).with_name("commands") / "train_help.json"),
}
# The libraries whose fields the snapshotted parsers list (their versions key the snapshot).
KEYED_DISTRIBUTIONS = ("transformers", "sentence-transformers")
# hf_codiemb's modules that declare the snapshotted options or build their parser (their content keys the snapshot).
SNAPSHOT_SOURCES = (
    "arguments.py", "training_args.py", "recipe.py", "command_parser.py", "help_snapshot.py", "commands/train.py",
)
_SUPPRESS = "==SUPPRESS=="  # argparse.SUPPRESS, as written in the snapshot


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The help layout of every ``codiemb`` command: descriptions as written (examples keep their lines), defaults
    shown."""


def version_key(package: Path | None = None) -> dict[str, str]:
    """What a snapshot is valid for: hf_codiemb's version and the hash of its :data:`SNAPSHOT_SOURCES`, the Python
    minor version and the versions of :data:`KEYED_DISTRIBUTIONS`."""
    import hashlib

    from hf_codiemb import __version__

    package = package or Path(__file__).resolve().parent  # another folder: tests
    digest = hashlib.sha256()
    for name in SNAPSHOT_SOURCES:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes())
    key = {
        "hf_codiemb": __version__,
        "hf_codiemb_sources": digest.hexdigest()[:16],
        "python": ".".join(map(str, sys.version_info[:2])),
    }
    for name in KEYED_DISTRIBUTIONS:
        try:
            key[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            key[name] = ""
    return key


def describe_parser(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The data of ``parser``'s help: prog, usage, description, epilog and, per help section, its actions."""
    groups = []
    for group in parser._action_groups:
        actions = []
        for action in group._group_actions:
            actions.append(
                {
                    "option_strings": list(action.option_strings),
                    "dest": action.dest,
                    "nargs": action.nargs,
                    "default": _SUPPRESS if action.default is argparse.SUPPRESS else str(action.default),
                    "choices": None if action.choices is None else [str(choice) for choice in action.choices],
                    "required": bool(action.required),
                    "help": _SUPPRESS if action.help is argparse.SUPPRESS else action.help,
                    "metavar": action.metavar,
                }
            )
        groups.append({"title": group.title, "description": group.description, "actions": actions})
    return {
        "prog": parser.prog,
        "usage": parser.usage,
        "description": parser.description,
        "epilog": parser.epilog,
        "groups": groups,
    }


def parser_from_snapshot(data: dict[str, Any]) -> argparse.ArgumentParser:
    """An argparse parser with the help of the described one (for printing help only: it converts no values)."""
    parser = argparse.ArgumentParser(
        prog=data["prog"],
        usage=data["usage"],
        description=data["description"],
        epilog=data["epilog"],
        formatter_class=HelpFormatter,
        add_help=False,
    )
    parser._action_groups.clear()
    for group_data in data["groups"]:
        group = parser.add_argument_group(group_data["title"], group_data["description"])
        for item in group_data["actions"]:
            default = argparse.SUPPRESS if item["default"] == _SUPPRESS else item["default"]
            common = {
                "option_strings": item["option_strings"],
                "dest": item["dest"],
                "default": default,
                "required": item["required"],
                "help": argparse.SUPPRESS if item["help"] == _SUPPRESS else item["help"],
                "metavar": item["metavar"],
            }
            if item["nargs"] == 0:  # a flag without value (--help)
                action = argparse._StoreConstAction(const=None, **common)
            else:
                action = argparse._StoreAction(nargs=item["nargs"], choices=item["choices"], **common)
            group._add_action(action)
    return parser


def snapshot_path(command: str) -> Path:
    return SNAPSHOTS[command][1]


def snapshot_matches(data: dict[str, Any]) -> bool:
    """Whether ``data`` was written by this hf_codiemb against the installed libraries."""
    return data.get("versions") == version_key()


def print_snapshot_help(command: str) -> bool:
    """Print ``codiemb COMMAND --help`` from its snapshot; False (nothing printed) when there is none that matches
    the installed versions, so the caller builds the live parser."""
    if command not in SNAPSHOTS:
        return False
    try:
        data = json.loads(snapshot_path(command).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not snapshot_matches(data):
        return False
    parser_from_snapshot(data["parser"]).print_help()
    return True


def write_snapshot(command: str) -> Path:
    """Write the snapshot of ``codiemb COMMAND``'s live parser (imports it) for the installed versions."""
    import importlib

    module, path = SNAPSHOTS[command]
    parser = importlib.import_module(module).build_parser()
    payload = {"versions": version_key(), "parser": describe_parser(parser)}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":  # python -m hf_codiemb.help_snapshot [COMMAND ...]: regenerate the snapshots
    for name in sys.argv[1:] or list(SNAPSHOTS):
        sys.stdout.write(f"wrote {write_snapshot(name)}\n")
