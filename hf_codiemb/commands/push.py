"""``codiemb push``: upload a local model folder to the Hugging Face Hub.

Example::

    codiemb push fused --repo-id user/codiemb-fused --private
"""

from __future__ import annotations

import argparse
import logging

from hf_codiemb.fusion.config import PushConfig, add_dataclass_arguments, build_config

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``push`` sub-command."""
    parser = subparsers.add_parser(
        "push",
        help="Upload a model folder to the Hugging Face Hub.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with the options below (flags override it).")
    add_dataclass_arguments(parser, PushConfig, positional=("folder",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Push the folder; return the process exit code."""
    from hf_codiemb.hub import HubPushError, push_model_folder

    try:
        config = build_config(PushConfig, args)
    except (ValueError, TypeError, OSError) as exc:
        logger.error("Invalid push configuration: %s", exc)
        return 2
    if not config.folder or not config.repo_id:
        logger.error("push needs a folder and --repo-id")
        return 2
    try:
        url = push_model_folder(
            config.folder,
            config.repo_id,
            private=config.private,
            revision=config.revision,
            create_pr=config.create_pr,
            commit_message=config.commit_message,
        )
    except (HubPushError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    logger.info("Pushed %s to %s", config.folder, url)
    return 0
