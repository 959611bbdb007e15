"""`codiemb merge-lora`: merge the LoRA adapters of a trained folder into a full model folder."""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger(__name__)

HELP = "Merge LoRA adapters into the base weights and write a full sentence-transformers model folder."


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("merge-lora", help=HELP, description=HELP)
    parser.add_argument("adapter_dir", help="A folder saved by a LoRA run (holds adapter_config.json).")
    parser.add_argument("output_dir", help="The new full model folder (must not exist).")
    parser.add_argument(
        "--base",
        default=None,
        help="The base model the adapters were trained on (folder, Hub id, packaged:/prepared: name); default: the "
        "one adapter_config.json names (packaged/prepared models are found offline by their Hub id).",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hf_codiemb.models import merge_lora_folder

    path = merge_lora_folder(args.adapter_dir, args.output_dir, base=args.base)
    logger.info("Merged model written to %s", path)
    return 0
