"""The `codiemb` console script: train, evaluate, fuse, push, merge-lora, prepare-models."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

logger = logging.getLogger("hf_codiemb")

# Subcommands parsed by argparse modules exposing register(subparsers) / run(args).
ARGPARSE_COMMANDS = ("evaluate", "fuse", "push", "merge_lora", "prepare_models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codiemb",
        description="CoDiEmb: train unified IR + STS embedding models with sentence-transformers, fuse checkpoints "
        "with delta-guided fusion and publish them on the Hugging Face Hub.",
        epilog="Run `codiemb COMMAND --help` for the options of a command. Example: "
        "codiemb train --config recipes/default/config.yaml",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from hf_codiemb.commands import train

    subparsers.add_parser("train", help=train.HELP, add_help=False)
    for name in ARGPARSE_COMMANDS:
        try:
            module = importlib.import_module(f"hf_codiemb.commands.{name}")
        except ImportError as error:  # an optional command whose dependencies are missing
            logger.debug("command %s unavailable: %s", name, error)
            continue
        module.register(subparsers)
    return parser


def setup_logging(level: str) -> None:
    import transformers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level.upper())
    transformers.logging.set_verbosity(getattr(logging, level.upper()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    level = "info"
    if argv[:1] == ["--log-level"] and len(argv) > 1:
        level, argv = argv[1], argv[2:]
    setup_logging(level)
    if argv and argv[0] == "train":
        # `train` parses its recipe dataclasses with transformers' HfArgumentParser (its own --help).
        from hf_codiemb.commands import train

        return train.run(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
