"""The `codiemb` console script: train, evaluate, fuse, push, merge-lora, prepare-models."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import NoReturn

from hf_codiemb.errors import CoDiEmbUserError, OutputWriteError, UsageError
from hf_codiemb.failures import interrupted_message, reset_outputs, write_failure, write_failure_message

logger = logging.getLogger("hf_codiemb")

# Set to 1 to see the traceback of a user error (bad data, recipe value, path) instead of its one-line message.
DEBUG_ENV_VAR = "CODIEMB_DEBUG"
# Exit status of a user error (as argparse's for a bad command line).
USER_ERROR_EXIT_CODE = 2
# Exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED_EXIT_CODE = 130


class CommandArgumentParser(argparse.ArgumentParser):
    """The parser of ``codiemb`` itself (global options and the list of commands): flags are never abbreviated, and a
    bad command line raises :class:`~hf_codiemb.errors.UsageError` (one line, exit status 2). Each command parses its
    own arguments with :class:`hf_codiemb.command_parser.CommandParser`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# Sub-commands: name -> (module exposing build_parser() -> CommandParser and run(argv) -> exit status, one-line help).
# Only the module of the command being run is imported, so `codiemb --help` and each command's start do not load the
# others' dependencies.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hf_codiemb.commands.train", "Train a unified IR + STS embedding model from a YAML recipe."),
    "evaluate": ("hf_codiemb.commands.evaluate", "Evaluate a model: STS Spearman, IR nDCG@10/MRR@10/Recall@100."),
    "mine": ("hf_codiemb.commands.mine", "Mine hard negatives for a BEIR folder with a model."),
    "tradeoff": (
        "hf_codiemb.commands.tradeoff",
        "IR-heavy + STS-heavy runs of a recipe and their dev-guided fusion, in one command.",
    ),
    "fuse": ("hf_codiemb.commands.fuse", "Delta-guided fusion of checkpoints (optionally pushed to the Hub)."),
    "push": ("hf_codiemb.commands.push", "Upload a model folder to the Hugging Face Hub."),
    "merge-lora": ("hf_codiemb.commands.merge_lora", "Merge LoRA adapters into a full model."),
    "prepare-models": ("hf_codiemb.commands.prepare_models", "Download and convert the offline encoders."),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``codiemb`` parser: global options and the commands (listed, not imported)."""
    parser = CommandArgumentParser(
        prog="codiemb",
        description="CoDiEmb: train unified IR + STS embedding models with sentence-transformers, fuse checkpoints "
        "with delta-guided fusion and publish them on the Hugging Face Hub.",
        epilog="Run `codiemb COMMAND --help` for the options of a command. Example: "
        "codiemb train recipes/default/config.yaml",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"Show the traceback of errors in the input (data, recipe, paths) instead of one line; also "
        f"{DEBUG_ENV_VAR}=1. Such errors exit with status {USER_ERROR_EXIT_CODE}.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandArgumentParser)
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def command_module(name: str):
    """The module of command ``name`` (imported now)."""
    try:
        return importlib.import_module(COMMANDS[name][0])
    except ImportError as error:  # an optional command whose dependencies are missing
        raise UsageError(f"`codiemb {name}` is unavailable: {error}") from None


def setup_logging(level: str) -> None:
    """Our messages at ``level``; transformers' own at warning unless ``--log-level debug`` (quiet by default).

    transformers reads ``TRANSFORMERS_VERBOSITY`` when it is imported, so this does not import it (a fast
    ``--help``); when it is already imported its verbosity is set directly.
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level.upper())
    library_level = "debug" if level == "debug" else "warning" if level == "info" else level
    os.environ["TRANSFORMERS_VERBOSITY"] = library_level
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity(getattr(logging, library_level.upper()))


def _global_options(argv: list[str]) -> tuple[str, bool, list[str]]:
    """Take ``--log-level LEVEL`` / ``--debug`` off the front of ``argv``, and a bare ``--debug`` from anywhere.

    A ``--debug`` followed by a value is left alone: it is transformers' ``TrainingArguments.debug`` option.
    """
    level, debug = "info", os.environ.get(DEBUG_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}
    while argv:
        if argv[0] == "--log-level" and len(argv) > 1:
            level, argv = argv[1], argv[2:]
        elif argv[0].startswith("--log-level="):
            level, argv = argv[0].split("=", 1)[1], argv[1:]
        elif argv[0] == "--debug":
            debug, argv = True, argv[1:]
        else:
            break
    rest = []
    for index, arg in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg == "--debug" and (following is None or following.startswith("-")):
            debug = True
            continue
        rest.append(arg)
    return level, debug, rest


def _run(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        from hf_codiemb.output_lock import release_all_locks

        if argv[1:] in (["--help"], ["-h"]):  # a bare --help: from the parser's snapshot when it is current
            from hf_codiemb.help_snapshot import print_snapshot_help

            if print_snapshot_help(argv[0]):
                raise SystemExit(0)  # as argparse's --help does

        try:
            return int(command_module(argv[0]).run(argv[1:]) or 0)
        finally:  # the outputs the command locked (hf_codiemb.output_lock), whether it succeeded or failed
            release_all_locks()
    parser = build_parser()
    parser.parse_args(argv)  # --help, or an error naming the unknown command
    parser.print_help()
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run ``codiemb``; return the exit status.

    An error in the user's input (:class:`~hf_codiemb.errors.CoDiEmbUserError`: bad data, recipe value, command
    line, missing or broken file) is reported on one line on stderr, ``codiemb COMMAND: error: MESSAGE``, and
    gives exit status 2; so is a write the disk or the permissions refuse (:func:`hf_codiemb.failures.write_failure`:
    disk full, read-only folder, no permission, file-size limit), naming the path and what was kept. Ctrl-C gives one
    line (what was kept, how to resume) and exit status 130. ``--debug`` (or ``CODIEMB_DEBUG=1``) re-raises instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    level, debug, argv = _global_options(argv)
    setup_logging(level)
    command = f"codiemb {argv[0]}" if argv and not argv[0].startswith("-") else "codiemb"
    reset_outputs()
    try:
        return _run(argv)
    except CoDiEmbUserError as error:
        if debug:
            raise
        failure = write_failure(error.__cause__) if isinstance(error, OutputWriteError) else None
        message = write_failure_message(*failure) if failure else str(error)
        _report(command, "error: " + message)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        if debug:
            raise
        _report(command, interrupted_message())
        return INTERRUPTED_EXIT_CODE
    except Exception as error:
        failure = write_failure(error)
        if failure is None or debug:
            raise
        _report(command, "error: " + write_failure_message(*failure))
        return USER_ERROR_EXIT_CODE
    finally:
        reset_outputs()


def _report(command: str, message: str) -> None:
    """Write ``command: message`` on one line of stderr, whatever the message holds."""
    sys.stderr.write(f"{command}: {' '.join(message.split())}\n")


if __name__ == "__main__":
    sys.exit(main())
