"""``codiemb merge-lora``: merge the LoRA adapters of a trained folder into a full model folder.

Example::

    codiemb merge-lora outputs/small/minilm-l6-lora outputs/small/minilm-l6-lora-merged
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from hf_codiemb.command_parser import CommandParser

logger = logging.getLogger(__name__)


@dataclass
class MergeLoraArguments:
    """Configuration of ``codiemb merge-lora``."""

    adapter_dir: str | None = field(
        default=None, metadata={"help": "A folder saved by a LoRA run (holds adapter_config.json)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "The new full model folder (must not exist)."})
    base: str | None = field(
        default=None,
        metadata={"help": "The base model the adapters were trained on (folder, Hub id, packaged:/prepared: name); "
                          "default: the one adapter_config.json names (packaged/prepared models are found offline by "
                          "their Hub id)."},
    )  # fmt: skip


def build_parser() -> CommandParser:
    """The parser of ``codiemb merge-lora``: the adapter folder and the output folder, also positional."""
    return CommandParser(
        [MergeLoraArguments], prog="codiemb merge-lora", description=__doc__, positional=("adapter_dir", "output_dir")
    )


def run(argv: list[str]) -> int:
    """Run ``codiemb merge-lora ARGV``; return the process exit code."""
    (args,) = build_parser().parse(argv)  # before the imports: `--help` stays fast
    from hf_codiemb.errors import UsageError
    from hf_codiemb.failures import declare_output
    from hf_codiemb.lora import merge_lora_folder

    if not args.adapter_dir or not args.output_dir:
        raise UsageError("merge-lora needs the adapter folder and the output folder: codiemb merge-lora ADAPTER_DIR "
                         "OUTPUT_DIR")  # fmt: skip
    declare_output(args.output_dir, kept=lambda: f"{os.path.abspath(args.output_dir)} is unchanged (nothing was written there)")
    path = merge_lora_folder(args.adapter_dir, args.output_dir, base=args.base)
    logger.info("Merged model written to %s", path)
    return 0
