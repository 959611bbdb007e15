"""``codiemb tradeoff``: the IR-heavy and STS-heavy runs of a recipe and their dev-guided fusion, in one command.

``--ir_heavy_seeds`` adds IR-heavy runs with their own seeds, ``--sts_heavy_ratio none`` drops the STS-heavy run.

Examples::

    codiemb tradeoff --config recipes/small/paraphrase-minilm-l3/tradeoff-seeds.yaml   # the recommended set-up [ours]
    codiemb tradeoff --config recipes/small/paraphrase-minilm-l3/tradeoff.yaml         # IR-heavy + STS-heavy runs
    codiemb tradeoff RECIPE.yaml --output_dir out --ir_weight 0.5 --parallel 2 -- --max_steps 300 --seed 43
    codiemb tradeoff RECIPE.yaml --output_dir out --ir_heavy_seeds 43 --sts_heavy_ratio none   # two seeds, fused

Flags after ``--`` go to every ``codiemb train`` run.

Run the same command again after an interruption: finished runs are kept, interrupted ones resume from their latest
checkpoint (see :mod:`hf_codiemb.tradeoff`).
"""

from __future__ import annotations

import logging
import shlex
import sys

logger = logging.getLogger(__name__)

HELP = "IR-heavy + STS-heavy runs of a recipe (or IR-heavy runs with several seeds) and their dev-guided fusion."


def build_parser():
    """The parser of ``codiemb tradeoff`` (:class:`hf_codiemb.tradeoff.TradeoffArguments`, the recipe positional)."""
    from hf_codiemb.command_parser import CommandParser
    from hf_codiemb.tradeoff import TradeoffArguments

    return CommandParser([TradeoffArguments], prog="codiemb tradeoff", description=__doc__, positional=["recipe"])


def run(argv: list[str]) -> int:
    """Entry point of ``codiemb tradeoff``."""
    own, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    (args,) = build_parser().parse(own)
    args.train_args = [*args.train_args, *train_args]
    from hf_codiemb.tradeoff import run_tradeoff

    model_dir = run_tradeoff(args, command=shlex.join(["codiemb", "tradeoff", *argv]))
    sys.stdout.write(f"{model_dir}\n")
    return 0
