"""``codiemb fuse``: fuse fine-tuned checkpoints (CoDiEmb delta-guided fusion or a baseline), optionally push.

Examples::

    codiemb fuse --base base-model --checkpoints run-a run-b --output-dir fused --p 1.0
    codiemb fuse --config fuse.yaml --push-to-hub user/codiemb-fused
"""

from __future__ import annotations

import argparse
import logging

from hf_codiemb.fusion.config import FuseConfig, add_dataclass_arguments, build_config

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fuse`` sub-command."""
    parser = subparsers.add_parser(
        "fuse",
        help="Fuse fine-tuned checkpoints into one sentence-transformers model.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with the options below (flags override it).")
    add_dataclass_arguments(parser, FuseConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the fusion (and the push); return the process exit code."""
    from hf_codiemb.fusion import FusionError, FusionWriteError, fuse
    from hf_codiemb.hub import HubPushError, PushRefusedError, check_repo_id, push_model_folder

    try:
        config = build_config(FuseConfig, args)
    except (ValueError, TypeError, OSError) as exc:
        logger.error("Invalid fuse configuration: %s", exc)
        return 2
    if not config.checkpoints or not config.output_dir:
        logger.error("fuse needs --checkpoints and --output-dir (or a --config file that sets them)")
        return 2
    if config.push_to_hub:
        try:
            check_repo_id(config.push_to_hub)  # before the fusion, not after it
        except ValueError as exc:
            logger.error("%s", exc)
            return 2
    try:
        result = fuse(
            config.checkpoints,
            config.output_dir,
            base=config.base,
            method=config.method,
            method_params=config.method_params(),
            overwrite=config.overwrite,
            eval_results=config.eval_results,
            model_id=config.push_to_hub,
            base_model_id=config.base_model_id,
        )
    except (FusionError, ValueError) as exc:  # the inputs are refused: the user's to fix
        logger.error("Fusion failed: %s", exc)
        return 2
    except (FusionWriteError, ImportError) as exc:
        logger.error("Fusion failed: %s", exc)
        return 1
    logger.info("Fused model: %s", result.output_dir)
    if config.push_to_hub:
        try:
            url = push_model_folder(
                result.output_dir,
                config.push_to_hub,
                private=config.private,
                revision=config.revision,
                create_pr=config.create_pr,
            )
        except PushRefusedError as exc:  # the same file selection and credential checks as `codiemb push`
            logger.error("%s\nThe fused model is in %s; push it with `codiemb push` once fixed.", exc, result.output_dir)
            return 2
        except (HubPushError, FileNotFoundError, ValueError) as exc:
            logger.error("%s", exc)
            return 1
        logger.info("Pushed to %s", url)
    return 0
