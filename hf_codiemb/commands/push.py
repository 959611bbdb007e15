"""``codiemb push``: upload the model files of a local folder to the Hugging Face Hub.

Only what a model repository needs is uploaded: the files SentenceTransformer loads (configs, weights, tokenizer,
module folders, LoRA adapters), the model card and hf_codiemb's result files. Checkpoints, optimizer/RNG states,
training_args.bin, runs/ and archives stay local; ``--include PATTERN`` adds files. Files whose name or content
looks like a credential stop the push (exit code 2) unless ``--force``. The list of files and the total size are
logged before anything is uploaded (``--dry-run`` stops there).

Example::

    codiemb push fused --repo-id user/codiemb-fused --private
    codiemb push run --repo-id user/codiemb-run --include "logs/*.txt" --dry-run
"""

from __future__ import annotations

import argparse
import logging

from hf_codiemb.fusion.config import add_dataclass_arguments, build_config
from hf_codiemb.hub import PushConfig

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``push`` sub-command."""
    parser = subparsers.add_parser(
        "push",
        help="Upload the model files of a folder to the Hugging Face Hub.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with the options below (flags override it).")
    add_dataclass_arguments(parser, PushConfig, positional=("folder",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Push the folder; return the process exit code (2: the user's input is wrong, 1: the Hub failed)."""
    from hf_codiemb.hub import HubPushError, PushRefusedError, push_model_folder

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
            include=config.include,
            force=config.force,
            dry_run=config.dry_run,
        )
    except HubPushError as exc:
        logger.error("%s", exc)
        return 1
    except (PushRefusedError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    if not config.dry_run:
        logger.info("Pushed %s to %s", config.folder, url)
    return 0
