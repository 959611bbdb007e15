"""``codiemb mine``: hard negatives for a BEIR split, mined with a given model (see hf_codiemb.mining).

Mines the queries of a BEIR split with sentence-transformers' ``util.mine_hard_negatives`` (qrels positives always
excluded) and writes the IR JSON Lines the trainer reads plus a summary. Example::

    codiemb mine --model packaged:all-minilm-l6-v2 --beir ../shared/data/scifact --split train --range_max 300 \\
        --output outputs/mined/scifact-train-minilm-l6.jsonl
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from hf_codiemb.command_parser import CommandParser

logger = logging.getLogger(__name__)


@dataclass
class MineArguments:
    """Configuration of ``codiemb mine``."""

    model: str = field(metadata={"help": "Model folder, Hub id, packaged:NAME or prepared:NAME."})
    beir: str = field(metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)."})
    output: str = field(
        metadata={"help": "Output JSON Lines (keep it outside git, e.g. outputs/mined/...); the summary goes next to "
                          "it as <stem>.summary.json and .summary.md."}
    )  # fmt: skip
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
    query_prompt: str | None = field(default=None, metadata={"help": "Prefix of the queries, e.g. 'query: ' for e5."})
    passage_prompt: str | None = field(
        default=None, metadata={"help": "Prefix of the documents, e.g. 'passage: ' for e5."}
    )
    max_seq_length: int | None = field(default=None, metadata={"help": "Maximum tokens per text (unset = model's)."})
    batch_size: int = field(default=32, metadata={"help": "Encoding batch size."})
    cache_dir: str = field(
        default="outputs/mined/cache",
        metadata={"help": "Cache of query and corpus embeddings (per model): a rerun with other settings does not "
                          "re-encode. Empty string: no cache."},
    )  # fmt: skip
    seed: int = field(default=42, metadata={"help": "Seed of the random sampling."})


def build_parser() -> CommandParser:
    """The parser of ``codiemb mine``."""
    return CommandParser([MineArguments], prog="codiemb mine", description=__doc__)


def check_output_path(output: str, beir: str, model_path: str) -> None:
    """Refuse an ``--output`` (or its summary files) that is an input or lies inside one: the BEIR folder or the
    model folder (writing there would replace or add to what is read).

    Raises:
        UsageError: naming the output and the input.
    """
    from pathlib import Path

    from hf_codiemb.errors import UsageError
    from hf_codiemb.mining import mining_summary_paths
    from hf_codiemb.output_paths import overlapping_input

    inputs = [("BEIR folder", beir), ("model folder", model_path if Path(model_path).is_dir() else None)]
    for target in (Path(output), *mining_summary_paths(output)):
        problem = overlapping_input(target, inputs)
        if problem is not None:
            raise UsageError(f"--output {target} {problem}: it would change an input of the mining; write it "
                             "outside the BEIR and model folders (e.g. outputs/mined/...)")  # fmt: skip
    if Path(output).is_dir():
        raise UsageError(f"--output {output} is a folder; give the JSON Lines file to write")


def run(argv: list[str]) -> int:
    """Run ``codiemb mine ARGV``; return the process exit code."""
    (args,) = build_parser().parse(argv)  # before the imports: `--help` stays fast
    from hf_codiemb.arguments import ModelArguments
    from hf_codiemb.data.beir import load_beir
    from hf_codiemb.failures import declare_output
    from hf_codiemb.mining import mine_beir_hard_negatives, write_mining_output
    from hf_codiemb.model_names import resolve_model_path
    from hf_codiemb.models import load_model
    from hf_codiemb.output_lock import acquire_output_lock

    path = resolve_model_path(args.model)
    check_output_path(args.output, args.beir, path)
    acquire_output_lock(args.output, "mining")  # released when the command ends
    dataset = load_beir(args.beir, args.split)
    # The one loader, as train and evaluate use it (dtype, max length; the model's own pooling).
    model = load_model(ModelArguments(model_name_or_path=args.model, max_seq_length=args.max_seq_length))
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
    declare_output(args.output)
    write_mining_output(result, args.output)
    return 0
