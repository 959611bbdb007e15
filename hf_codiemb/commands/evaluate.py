"""``codiemb evaluate``: STS Spearman, IR nDCG@10/MRR@10/Recall@100 and embedding geometry of a model.

Example::

    codiemb evaluate --model outputs/default --sts_eval demo:sts_dev.jsonl --output_dir outputs/default-eval
    codiemb evaluate --model packaged:all-minilm-l6-v2 --ir_eval_beir ../shared/data/scifact:dev --output_dir eval
    # a trained model with its recipe's model settings (pooling, dtype, max length, prompts) and dev sets:
    codiemb evaluate --recipe recipes/small/minilm-l6/scifact_stsb.yaml --model outputs/run --output_dir eval
    # MTEB (pip install 'hf_codiemb[mteb]'): named tasks, and the dev sets above as MTEB tasks (OUTPUT_DIR/mteb):
    codiemb evaluate --model outputs/run --mteb_tasks T2Retrieval ATEC --output_dir eval
    codiemb evaluate --recipe recipes/small/minilm-l6/scifact_stsb.yaml --model outputs/run --mteb_local --output_dir eval

Models are loaded by :func:`hf_codiemb.models.load_model`, as ``codiemb train`` loads them.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from hf_codiemb.command_parser import CommandParser

logger = logging.getLogger(__name__)


@dataclass
class EvaluateArguments:
    """What ``codiemb evaluate`` itself takes; the model's and the dev sets' options are ``codiemb train``'s own
    (:class:`~hf_codiemb.arguments.EncoderArguments`, :class:`~hf_codiemb.arguments.EvalDataArguments`)."""

    output_dir: str = field(metadata={"help": "Where eval_results.json and eval_results.md go."})
    recipe: str | None = field(
        default=None,
        metadata={
            "help": "A training recipe (YAML): its model settings (model_name_or_path, pooling, torch_dtype, "
            "max_seq_length, trust_remote_code, prompts, pooling_include_prompt) and, unless dev sets are given "
            "here, its dev sets (sts_eval, ir_eval, ir_eval_beir, ir_eval_from_sts, sts_score_range, "
            "max_eval_records); flags given here override them."
        },
    )
    mteb_tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "MTEB tasks run through the mteb package (pip install 'hf_codiemb[mteb]'), data from the Hub: "
            "task names (T2Retrieval ATEC ...), a benchmark ('MTEB(cmn, v1)') or codiemb-paper (the paper's 15 "
            "C-MTEB tasks). Results in MTEB's format under OUTPUT_DIR/mteb."
        },
    )
    model_card: bool = field(
        default=False,
        metadata={
            "help": "Also write OUTPUT_DIR/model_card.md: the evaluated model's card (sentence-transformers' card "
            "generation) with these results, MTEB's included, in its Evaluation section and model-index metadata."
        },
    )
    mteb_local: bool = field(
        default=False,
        metadata={"help": "Also run the evaluation sets (BEIR folders, IR and STS files) as MTEB tasks (mteb package)."},
    )
    mteb_instructions: bool = field(
        default=True,
        metadata={"help": "C-MTEB tasks get the reference's task instructions (in the recipe's instruction_template)."},
    )


# The flags that name dev sets: given any of them, a recipe's dev sets are not evaluated.
EVAL_SET_FLAGS = ("sts_eval", "ir_eval", "ir_eval_beir")


def build_parser() -> CommandParser:
    """The parser of ``codiemb evaluate``: its own options and those ``codiemb train`` has for the model and the
    dev sets (the same flags, types and checks)."""
    import dataclasses

    from hf_codiemb.arguments import EncoderArguments, EvalDataArguments

    parser = CommandParser(
        [EvaluateArguments, EncoderArguments, EvalDataArguments],
        prog="codiemb evaluate",
        description=__doc__,
        groups={
            "model (as in codiemb train)": tuple(item.name for item in dataclasses.fields(EncoderArguments)),
            "dev sets (as in codiemb train)": tuple(item.name for item in dataclasses.fields(EvalDataArguments)),
        },
    )
    parser.require("model_name_or_path", "--model", by_argparse=False)  # or a --recipe's: parse_arguments checks
    return parser


def parse_arguments(argv: list[str]):
    """``(EvaluateArguments, EncoderArguments, EvalDataArguments)`` of ``argv``, a ``--recipe``'s values under the
    flags.

    Raises:
        UsageError: no model: neither ``--model`` nor a ``--recipe``.
        RecipeError: a bad or missing flag, a bad recipe value (naming the recipe's line or the command line, and
            the field).
    """
    import dataclasses

    from hf_codiemb.arguments import EncoderArguments, EvalDataArguments
    from hf_codiemb.command_parser import flag_value, given_on_command_line

    parser = build_parser()
    recipe = flag_value(argv, "recipe")
    if recipe is not None:
        from hf_codiemb.recipe import parse_recipe

        model_args, data_args, _, _ = parse_recipe([recipe])  # the recipe checked as `codiemb train` checks it
        defaults = {item.name: getattr(model_args, item.name) for item in dataclasses.fields(EncoderArguments)}
        if not any(given_on_command_line(name, argv) for name in EVAL_SET_FLAGS):
            defaults |= {item.name: getattr(data_args, item.name) for item in dataclasses.fields(EvalDataArguments)}
        parser.set_defaults(**defaults)
    parsed = parser.parse(argv)
    if parsed[1].model_name_or_path is None:
        from hf_codiemb.errors import UsageError

        raise UsageError("Give --model (and/or --recipe, whose model is used)")
    return parsed


def run(argv: list[str]) -> int:
    """Run ``codiemb evaluate ARGV``; return the process exit code."""
    args, model_args, data_args = parse_arguments(argv)  # before the imports: `--help` stays fast
    from pathlib import Path

    from hf_codiemb.errors import UsageError
    from hf_codiemb.evaluation import evaluate_model, format_results_table, write_results
    from hf_codiemb.failures import declare_output
    from hf_codiemb.lora import load_lora_model
    from hf_codiemb.model_names import resolve_model_path
    from hf_codiemb.models import load_model
    from hf_codiemb.mteb_evaluation import MTEBEvaluation
    from hf_codiemb.pipeline import load_eval_sets

    if not (data_args.sts_eval or data_args.ir_eval or data_args.ir_eval_beir or args.mteb_tasks):
        raise UsageError(
            "Nothing to evaluate: give --sts_eval, --ir_eval, --ir_eval_beir and/or --mteb_tasks (or a --recipe with "
            "dev sets)"
        )
    mteb_evaluation = MTEBEvaluation.from_arguments(args)  # None without MTEB tasks; checks mteb and the task names
    model_path = resolve_model_path(model_args.model_name_or_path)  # fails at once on a bad path, before the data
    sts_sets, ir_sets = load_eval_sets(data_args, model_args)
    if Path(model_path).is_dir() and any(Path(model_path).rglob("adapter_config.json")):
        model = load_lora_model(model_path)  # a LoRA-trained folder: its adapters on its base
    else:
        model = load_model(model_args)  # the one loader: pooling, dtype, max length, remote code, prompt pooling
    results = evaluate_model(model, sts_sets, ir_sets, sts_prompt=model_args.effective_sts_prompt)
    declare_output(args.output_dir)
    write_results(results, args.output_dir)  # kept even if an MTEB task fails below
    if mteb_evaluation is not None:
        results["mteb"] = mteb_evaluation.run(
            model, model_args, sts_sets, ir_sets, args.output_dir, sts_score_range=data_args.sts_score_range
        )
        write_results(results, args.output_dir)
    if args.model_card:
        from sentence_transformers.base.model_card import generate_model_card

        card = Path(args.output_dir) / "model_card.md"
        card.write_text(generate_model_card(model), encoding="utf-8")  # the evaluators and MTEB filled its card data
        logger.info("Wrote %s", card)
    sys.stdout.write(format_results_table(results) + "\n")
    return 0
