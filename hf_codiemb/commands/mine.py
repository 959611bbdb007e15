"""`codiemb mine`: hard negatives for a BEIR split, mined with a given model (see hf_codiemb.beir)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger(__name__)

HELP = (
    "Mine hard negatives for the queries of a BEIR split with a model (qrels positives always excluded); "
    "write the IR JSON Lines the trainer reads plus a summary."
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("mine", help=HELP, description=HELP)
    parser.add_argument("--model", required=True, help="Model folder, Hub id, packaged:NAME or prepared:NAME.")
    parser.add_argument("--beir", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).")
    parser.add_argument("--split", default="train", help="qrels split to mine for (default: train).")
    parser.add_argument(
        "--output", required=True,
        help="Output JSON Lines (keep it outside git, e.g. outputs/mined/...); the summary goes next to it "
        "as <stem>.summary.json and .summary.md.",
    )  # fmt: skip
    parser.add_argument("--num-negatives", type=int, default=8, help="Negatives per query (default: 8).")
    parser.add_argument("--range-min", type=int, default=10, help="Best remaining candidates to skip (default: 10).")
    parser.add_argument("--range-max", type=int, default=100, help="Deepest rank to take negatives from (default: 100).")
    parser.add_argument(
        "--sampling", choices=["random", "top"], default="random",
        help="Sample the negatives from the rank window (random) or take its best ones (top). Default: random.",
    )  # fmt: skip
    parser.add_argument(
        "--absolute-margin", type=float, default=None,
        help="Drop candidates scored within this margin of the query's weakest positive.",
    )  # fmt: skip
    parser.add_argument(
        "--relative-margin", type=float, default=0.05,
        help="Drop candidates scored above p - |p| * margin, p = weakest positive's score (default 0.05; "
        "a negative value turns it off).",
    )  # fmt: skip
    parser.add_argument("--max-score", type=float, default=None, help="Drop candidates scored above this.")
    parser.add_argument("--query-prompt", default=None, help="Prefix of the queries, e.g. 'query: ' for e5.")
    parser.add_argument("--passage-prompt", default=None, help="Prefix of the documents, e.g. 'passage: ' for e5.")
    parser.add_argument("--max-seq-length", type=int, default=None, help="Maximum tokens per text (unset = model's).")
    parser.add_argument("--batch-size", type=int, default=32, help="Encoding batch size.")
    parser.add_argument(
        "--cache-dir", default="outputs/mined/cache",
        help="Cache of query and corpus embeddings (per model): a rerun with other settings does not re-encode. "
        "Empty string: no cache.",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=42, help="Seed of the random sampling.")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.beir import load_beir, mine_beir_hard_negatives, write_mining_output
    from hf_codiemb.models import resolve_model_path

    dataset = load_beir(args.beir, args.split)
    path = resolve_model_path(args.model)
    model = SentenceTransformer(path)
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    result = mine_beir_hard_negatives(
        model,
        dataset,
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        sampling_strategy=args.sampling,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin if args.relative_margin is None or args.relative_margin >= 0 else None,
        max_score=args.max_score,
        query_prompt=args.query_prompt,
        corpus_prompt=args.passage_prompt,
        batch_size=args.batch_size,
        cache_folder=args.cache_dir or None,
        model_id=path,
        seed=args.seed,
    )
    write_mining_output(result, args.output)
    return 0
