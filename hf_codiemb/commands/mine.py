"""``codiemb mine``: hard negatives for a BEIR split, or for the trainer's IR JSON Lines plus a corpus file, mined
with a given model (see hf_codiemb.mining).

Mines the queries with sentence-transformers' ``util.mine_hard_negatives`` (positives always excluded) and writes
the IR JSON Lines the trainer reads plus a summary. A large corpus is searched with FAISS (``--search faiss``, or
``auto`` from 100,000 documents; the ``mine`` extra: pip install 'hf_codiemb[mine]'). Examples::

    codiemb mine --model packaged:all-minilm-l6-v2 --beir ../shared/data/scifact --split train --range_max 300 \\
        --output outputs/mined/scifact-train-minilm-l6.jsonl
    codiemb mine --model packaged:all-minilm-l6-v2 --queries train.jsonl --corpus corpus.jsonl --search faiss \\
        --output outputs/mined/train-mined.jsonl
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from hf_codiemb.command_parser import CommandParser

logger = logging.getLogger(__name__)


@dataclass
class MineArguments:
    """What ``codiemb mine`` itself takes; the model's options (``--model``, pooling, dtype, max length, prompts) are
    ``codiemb train``'s own (:class:`~hf_codiemb.arguments.EncoderArguments`)."""

    output: str = field(
        metadata={"help": "Output JSON Lines (keep it outside git, e.g. outputs/mined/...); the summary goes next to "
                          "it as <stem>.summary.json and .summary.md."}
    )  # fmt: skip
    beir: str | None = field(
        default=None,
        metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv). Or give --queries and --corpus."},
    )
    split: str = field(default="train", metadata={"help": "qrels split to mine for."})
    num_negatives: int = field(default=8, metadata={"help": "Negatives per query."})
    range_min: int = field(default=10, metadata={"help": "Best remaining candidates to skip."})
    range_max: int = field(default=100, metadata={"help": "Deepest rank to take negatives from."})
    sampling: Literal["random", "top"] = field(
        default="random",
        metadata={"help": "Sample the negatives from the rank window (random) or take its best ones (top)."},
    )
    absolute_margin: float | None = field(
        default=None, metadata={"help": "Drop candidates scored within this margin of the query's weakest positive."}
    )
    relative_margin: float | None = field(
        default=0.05,
        metadata={"help": "Drop candidates scored above p - |p| * margin, p = weakest positive's score (a negative "
                          "value turns it off)."},
    )  # fmt: skip
    max_score: float | None = field(default=None, metadata={"help": "Drop candidates scored above this."})
    batch_size: int = field(default=32, metadata={"help": "Encoding batch size."})
    cache_dir: str = field(
        default="outputs/mined/cache",
        metadata={"help": "Cache of query and corpus embeddings (per model): a rerun with other settings does not "
                          "re-encode. Empty string: no cache."},
    )  # fmt: skip
    seed: int = field(default=42, metadata={"help": "Seed of the random sampling."})
    # Corpus-scale mining (issue 22.4): the JSON Lines input and the search.
    queries: str | None = field(
        default=None,
        metadata={"help": "Instead of --beir: the trainer's IR JSON Lines (queries with their positives; their "
                          "negatives, if any, are replaced). Needs --corpus."},
    )  # fmt: skip
    corpus: str | None = field(
        default=None,
        metadata={"help": "With --queries: the corpus, a BEIR corpus.jsonl or JSON Lines of {'text': ...} records "
                          "(optional 'title'). Positives missing from it are added."},
    )  # fmt: skip
    search: Literal["auto", "exact", "faiss"] = field(
        default="auto",
        metadata={"help": "Similarity search: exact (in bounded blocks of queries), faiss (a flat inner-product index: "
                          "the same candidates, faster on a large corpus; pip install 'hf_codiemb[mine]'), or auto "
                          "(faiss from 100,000 documents when installed)."},
    )  # fmt: skip
    search_batch_size: int | None = field(
        default=None,
        metadata={"help": "Queries per search step. Unset: 16384 with faiss, with exact search as many as keep the "
                          "scores of one step within 2**26 floats (256 MiB)."},
    )  # fmt: skip


def build_parser() -> CommandParser:
    """The parser of ``codiemb mine``: its own options and ``codiemb train``'s model options (``--model`` required)."""
    import dataclasses

    from hf_codiemb.arguments import EncoderArguments

    parser = CommandParser(
        [MineArguments, EncoderArguments],
        prog="codiemb mine",
        description=__doc__,
        groups={"model (as in codiemb train)": tuple(item.name for item in dataclasses.fields(EncoderArguments))},
    )
    parser.require("model_name_or_path", "--model")
    return parser

def check_inputs(args: MineArguments) -> None:
    """Exactly one input: ``--beir``, or ``--queries`` with ``--corpus``.

    Raises:
        UsageError: naming the flags.
    """
    from hf_codiemb.errors import UsageError

    if args.beir is not None and (args.queries is not None or args.corpus is not None):
        raise UsageError("give either --beir, or --queries with --corpus, not both")
    if args.beir is None and (args.queries is None or args.corpus is None):
        raise UsageError("nothing to mine: give --beir FOLDER, or --queries FILE.jsonl with --corpus FILE.jsonl")
    if args.search_batch_size is not None and args.search_batch_size < 1:
        raise UsageError(f"--search_batch_size must be >= 1, got {args.search_batch_size}")


def check_output_path(
    output: str, beir: str | None, model_path: str, queries: str | None = None, corpus: str | None = None
) -> None:
    """Refuse an ``--output`` (or its summary files) that is an input or lies inside one: the BEIR folder, the
    queries or corpus file, or the model folder (writing there would replace or add to what is read).

    Raises:
        UsageError: naming the output and the input.
    """
    from pathlib import Path

    from hf_codiemb.errors import UsageError
    from hf_codiemb.mining import mining_summary_paths
    from hf_codiemb.output_paths import overlapping_input

    inputs = [("BEIR folder", beir), ("queries file", queries), ("corpus file", corpus),
              ("model folder", model_path if Path(model_path).is_dir() else None)]  # fmt: skip
    for target in (Path(output), *mining_summary_paths(output)):
        problem = overlapping_input(target, inputs)
        if problem is not None:
            raise UsageError(f"--output {target} {problem}: it would change an input of the mining; write it "
                             "outside the inputs and the model folder (e.g. outputs/mined/...)")  # fmt: skip
    if Path(output).is_dir():
        raise UsageError(f"--output {output} is a folder; give the JSON Lines file to write")


def run(argv: list[str]) -> int:
    """Run ``codiemb mine ARGV``; return the process exit code."""
    args, model_args = build_parser().parse(argv)  # before the imports: `--help` stays fast
    from hf_codiemb.data.beir import load_beir
    from hf_codiemb.failures import declare_output
    from hf_codiemb.mining import (
        beir_mining_input,
        load_jsonl_mining_input,
        mine_hard_negatives_for,
        write_mining_output,
    )
    from hf_codiemb.model_names import resolve_model_path
    from hf_codiemb.models import load_model
    from hf_codiemb.output_lock import acquire_output_lock

    check_inputs(args)
    path = resolve_model_path(model_args.model_name_or_path)
    check_output_path(args.output, args.beir, path, args.queries, args.corpus)
    acquire_output_lock(args.output, "mining")  # released when the command ends
    if args.beir is not None:
        data = beir_mining_input(load_beir(args.beir, args.split))
    else:
        data = load_jsonl_mining_input(args.queries, args.corpus)
    # The one loader, as train and evaluate use it (pooling, dtype, max length, remote code).
    model = load_model(model_args)
    result = mine_hard_negatives_for(
        model,
        data,
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        sampling_strategy=args.sampling,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin if args.relative_margin is None or args.relative_margin >= 0 else None,
        max_score=args.max_score,
        query_prompt=model_args.query_prompt,
        corpus_prompt=model_args.passage_prompt,
        batch_size=args.batch_size,
        cache_folder=args.cache_dir or None,
        model_id=path,
        seed=args.seed,
        search=args.search,
        search_batch_size=args.search_batch_size,
    )
    declare_output(args.output)
    write_mining_output(result, args.output)
    return 0
