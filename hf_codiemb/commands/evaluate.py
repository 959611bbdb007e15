"""``codiemb evaluate``: STS Spearman, IR nDCG@10/MRR@10/Recall@100 and embedding geometry of a model.

Example::

    codiemb evaluate --model outputs/default --sts_eval demo:sts_dev.jsonl --output_dir outputs/default-eval
    codiemb evaluate --model packaged:all-minilm-l6-v2 --ir_eval_beir ../shared/data/scifact:dev --output_dir eval
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

    model: str = field(metadata={"help": "Model folder, Hub id, packaged:NAME or prepared:NAME."})
    output_dir: str = field(metadata={"help": "Where eval_results.json and eval_results.md go."})
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


def build_parser() -> CommandParser:
    """The parser of ``codiemb evaluate``."""
    return CommandParser([EvaluateArguments], prog="codiemb evaluate", description=__doc__)


def run(argv: list[str]) -> int:
    """Run ``codiemb evaluate ARGV``; return the process exit code."""
    (args,) = build_parser().parse(argv)  # before the imports: `--help` stays fast
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.errors import UsageError
    from hf_codiemb.evaluation import evaluate_model, format_results_table, write_results
    from hf_codiemb.failures import declare_output
    from hf_codiemb.models import ModelArguments, resolve_model_path
    from hf_codiemb.pipeline import load_eval_sets
    from hf_codiemb.recipe import DataArguments

    if not (args.sts_eval or args.ir_eval or args.ir_eval_beir):
        raise UsageError("Nothing to evaluate: give --sts_eval, --ir_eval and/or --ir_eval_beir")
    data_args = DataArguments(
        sts_eval=args.sts_eval, ir_eval=args.ir_eval, ir_eval_beir=args.ir_eval_beir,
        ir_eval_from_sts=args.ir_eval_from_sts, sts_score_range=list(args.sts_score_range),
        max_eval_records=args.max_eval_records,
    )  # fmt: skip
    model_args = ModelArguments(
        model_name_or_path=args.model, query_prompt=args.query_prompt, passage_prompt=args.passage_prompt
    )
    model_path = resolve_model_path(args.model)  # fails at once on a bad path, before the data is read
    sts_sets, ir_sets = load_eval_sets(data_args, model_args)
    model = SentenceTransformer(model_path)
    results = evaluate_model(model, sts_sets, ir_sets, sts_prompt=args.query_prompt)
    declare_output(args.output_dir)
    write_results(results, args.output_dir)
    sys.stdout.write(format_results_table(results) + "\n")
    return 0
