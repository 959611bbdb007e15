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
    """Configuration of ``codiemb evaluate``."""

    output_dir: str = field(metadata={"help": "Where eval_results.json and eval_results.md go."})
    model: str | None = field(
        default=None,
        metadata={"help": "Model folder, Hub id, packaged:NAME or prepared:NAME (unset: the recipe's model)."},
    )
    recipe: str | None = field(
        default=None,
        metadata={
            "help": "A training recipe (YAML): its model settings (pooling, torch_dtype, max_seq_length, "
            "trust_remote_code, prompts, pooling_include_prompt) are applied to --model, and its dev sets (sts_eval, "
            "ir_eval, ir_eval_beir, ir_eval_from_sts, sts_score_range, max_eval_records) are evaluated unless eval "
            "flags are given here."
        },
    )
    sts_eval: list[str] = field(
        default_factory=list, metadata={"help": "STS files (jsonl or tsv; demo:NAME for demo data)."}
    )
    ir_eval: list[str] = field(default_factory=list, metadata={"help": "IR files in the unified JSON Lines format."})
    ir_eval_beir: list[str] = field(
        default_factory=list, metadata={"help": "BEIR folders evaluated as IR, 'FOLDER:SPLIT' (e.g. data/scifact:dev)."}
    )
    ir_eval_from_sts: bool = field(
        default=True, metadata={"help": "Also evaluate paraphrase retrieval built from each STS set (pairs >= 4)."}
    )
    query_prompt: str | None = field(
        default=None, metadata={"help": "Prefix of IR queries (and STS sentences), e.g. 'query: '."}
    )
    passage_prompt: str | None = field(default=None, metadata={"help": "Prefix of IR passages, e.g. 'passage: '."})
    sts_score_range: list[float] = field(
        default_factory=lambda: [0.0, 5.0], metadata={"help": "Range of STS gold scores."}
    )
    max_eval_records: int | None = field(default=None, metadata={"help": "Cap on records per evaluation file."})
    mteb_tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "MTEB tasks run through the mteb package (pip install 'hf_codiemb[mteb]'), data from the Hub: "
            "task names (T2Retrieval ATEC ...), a benchmark ('MTEB(cmn, v1)') or codiemb-paper (the paper's 15 "
            "C-MTEB tasks). Results in MTEB's format under OUTPUT_DIR/mteb."
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


def build_parser() -> CommandParser:
    """The parser of ``codiemb evaluate``."""
    return CommandParser([EvaluateArguments], prog="codiemb evaluate", description=__doc__)


def _recipe_arguments(args: EvaluateArguments):
    """Model and data arguments: the recipe's (its model settings, and its dev sets unless flags give some), or the
    flags' alone."""
    from hf_codiemb.models import ModelArguments
    from hf_codiemb.recipe import DataArguments, parse_recipe

    eval_flags = bool(args.sts_eval or args.ir_eval or args.ir_eval_beir)
    if args.recipe is not None:
        model_args, data_args, _, _ = parse_recipe([args.recipe])
        model_args.lora_r = 0  # evaluate the given model as it is: no new adapters
        if args.model is not None:
            model_args.model_name_or_path = args.model
        for name in ("query_prompt", "passage_prompt"):
            if getattr(args, name) is not None:
                setattr(model_args, name, getattr(args, name))
        if not eval_flags:
            return model_args, data_args
    else:
        if args.model is None:
            from hf_codiemb.errors import UsageError

            raise UsageError("Give --model (and/or --recipe, whose model is used)")
        model_args = ModelArguments(
            model_name_or_path=args.model, query_prompt=args.query_prompt, passage_prompt=args.passage_prompt
        )
    data_args = DataArguments(
        sts_eval=args.sts_eval, ir_eval=args.ir_eval, ir_eval_beir=args.ir_eval_beir,
        ir_eval_from_sts=args.ir_eval_from_sts, sts_score_range=list(args.sts_score_range),
        max_eval_records=args.max_eval_records,
    )  # fmt: skip
    return model_args, data_args


def run(argv: list[str]) -> int:
    """Run ``codiemb evaluate ARGV``; return the process exit code."""
    (args,) = build_parser().parse(argv)  # before the imports: `--help` stays fast
    from pathlib import Path

    from hf_codiemb.errors import UsageError
    from hf_codiemb.evaluation import evaluate_model, format_results_table, write_results
    from hf_codiemb.failures import declare_output
    from hf_codiemb.models import load_lora_model, load_model, resolve_model_path
    from hf_codiemb.mteb_evaluation import MTEBEvaluation
    from hf_codiemb.pipeline import load_eval_sets

    model_args, data_args = _recipe_arguments(args)
    if not (data_args.sts_eval or data_args.ir_eval or data_args.ir_eval_beir or args.mteb_tasks):
        raise UsageError(
            "Nothing to evaluate: give --sts_eval, --ir_eval, --ir_eval_beir and/or --mteb_tasks (or a --recipe with dev sets)"
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
    if mteb_evaluation is not None:
        results["mteb"] = mteb_evaluation.run(
            model, model_args, sts_sets, ir_sets, args.output_dir, sts_score_range=data_args.sts_score_range
        )
    write_results(results, args.output_dir)
    sys.stdout.write(format_results_table(results) + "\n")
    return 0
