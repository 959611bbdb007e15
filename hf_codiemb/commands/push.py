"""``codiemb push``: upload the model files of a local folder to the Hugging Face Hub.

Only what a model repository needs is uploaded: the files SentenceTransformer loads (configs, weights, tokenizer,
module folders, LoRA adapters), the model card and hf_codiemb's result files. Checkpoints, optimizer/RNG states,
training_args.bin, runs/ and archives stay local; ``--include PATTERN`` adds files. Files whose name or content
looks like a credential stop the push (exit code 2) unless ``--force``; a file that is not a regular file inside the
folder (a symbolic link out of it, a FIFO, a device, a socket) always does. The list of files and the total size
are logged before anything is uploaded (``--dry-run`` stops there).

Example::

    codiemb push fused --repo-id user/codiemb-fused --private
    codiemb push run --repo-id user/codiemb-run --include "logs/*.txt" --dry-run
"""

from __future__ import annotations

import logging

from hf_codiemb.command_parser import CommandParser
from hf_codiemb.errors import UsageError
from hf_codiemb.hub import PushConfig

logger = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    """The parser of ``codiemb push``: :class:`~hf_codiemb.hub.PushConfig`'s fields, the folder also positional."""
    return CommandParser([PushConfig], prog="codiemb push", description=__doc__, positional=("folder",))


def run(argv: list[str]) -> int:
    """Run ``codiemb push ARGV``; return the process exit code (1: the Hub failed).

    What the user gave wrong (no model folder, a bad repo id, files that look like credentials) raises a
    :class:`~hf_codiemb.errors.CoDiEmbUserError`: one line from the console script, exit status 2.
    """
    (config,) = build_parser().parse(argv)  # before the imports: `--help` stays fast
    from hf_codiemb.hub import HubPushError, push_model_folder

    if not config.folder or not config.repo_id:
        raise UsageError("push needs a folder and --repo_id")
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
    except HubPushError as exc:  # not the user's input: the whole message, with the command to rerun
        logger.error("%s", exc)
        return 1
    if not config.dry_run:
        logger.info("Pushed %s to %s", config.folder, url)
    return 0
