"""`codiemb evaluate`: STS Spearman, IR nDCG@10/MRR@10/Recall@100 and embedding geometry of a model."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

HELP = "Evaluate a model folder or Hub id on STS and IR sets; write eval_results.json and .md."


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help=HELP, description=HELP)
    parser.add_argument("--model", required=True, help="Model folder, Hub id, packaged:NAME or prepared:NAME.")
    parser.add_argument("--sts-eval", nargs="*", default=[], help="STS files (jsonl or tsv; demo:NAME for demo data).")
    parser.add_argument("--ir-eval", nargs="*", default=[], help="IR files in the unified JSON Lines format.")
    parser.add_argument("--no-ir-from-sts", action="store_true", help="Skip paraphrase retrieval built from STS sets.")
    parser.add_argument("--query-prompt", default=None, help="Prefix of IR queries (and STS sentences), e.g. 'query: '.")
    parser.add_argument("--passage-prompt", default=None, help="Prefix of IR passages, e.g. 'passage: '.")
    parser.add_argument("--sts-score-range", nargs=2, type=float, default=[0.0, 5.0], help="Range of STS gold scores.")
    parser.add_argument("--max-eval-records", type=int, default=None, help="Cap on records per evaluation file.")
    parser.add_argument("--output-dir", required=True, help="Where eval_results.json and eval_results.md go.")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.errors import UsageError
    from hf_codiemb.evaluation import evaluate_model, format_results_table, write_results
    from hf_codiemb.models import ModelArguments, resolve_model_path
    from hf_codiemb.pipeline import load_eval_sets
    from hf_codiemb.recipe import DataArguments

    if not args.sts_eval and not args.ir_eval:
        raise UsageError("Nothing to evaluate: give --sts-eval and/or --ir-eval")
    data_args = DataArguments(
        sts_eval=args.sts_eval, ir_eval=args.ir_eval, ir_eval_from_sts=not args.no_ir_from_sts,
        sts_score_range=list(args.sts_score_range), max_eval_records=args.max_eval_records,
    )
    model_args = ModelArguments(
        model_name_or_path=args.model, query_prompt=args.query_prompt, passage_prompt=args.passage_prompt
    )
    model_path = resolve_model_path(args.model)  # fails at once on a bad path, before the data is read
    sts_sets, ir_sets = load_eval_sets(data_args, model_args)
    model = SentenceTransformer(model_path)
    results = evaluate_model(model, sts_sets, ir_sets, sts_prompt=args.query_prompt)
    write_results(results, args.output_dir)
    sys.stdout.write(format_results_table(results) + "\n")
    return 0
