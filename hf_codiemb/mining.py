"""Hard negatives for a BEIR split, mined with a model (``codiemb mine``, :mod:`hf_codiemb.commands.mine`).

:func:`mine_beir_hard_negatives` mines with sentence-transformers' :func:`~sentence_transformers.util.mine_hard_negatives`
(every qrels positive of a query is excluded); :func:`write_mining_output` writes the records, a JSON and a markdown
summary atomically. The BEIR folder itself is read by :mod:`hf_codiemb.data.beir`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pathlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from hf_codiemb.data.beir import BeirDataset
from hf_codiemb.errors import DataError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Hard-negative mining
# --------------------------------------------------------------------------------------------------------------


@dataclass
class MiningResult:
    """What :func:`mine_beir_hard_negatives` returns.

    Attributes:
        records: one unified IR record per judged query with a positive: ``task``, ``query_id``, ``query``,
            ``positive_ids``, ``positives``, ``negative_ids``, ``negatives`` and the mining model's similarities
            ``mined_positive_scores`` / ``mined_negative_scores``. The trainer reads ``query``, ``positives``
            and ``negatives``; the other fields are provenance.
        summary: settings, counts and score distributions (see :func:`write_mining_output`).
    """

    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def _model_cache_key(model: SentenceTransformer, model_id: str) -> str:
    """A folder name per model, so that two models never share cached embeddings.

    ``mine_hard_negatives`` keys its cache on the model card's base model, which is empty for local folders.
    """
    parts = [model_id, str(model.max_seq_length)]
    path = pathlib.Path(model_id)
    if path.is_dir():
        for weights in sorted(path.rglob("*.safetensors")) + sorted(path.rglob("pytorch_model.bin")):
            stat = weights.stat()
            parts.append(f"{weights.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _distribution(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "mean": None, "std": None, "min": None, "p25": None, "median": None, "p75": None,
                "max": None}  # fmt: skip
    ordered = sorted(values)

    def quantile(q: float) -> float:
        position = q * (len(ordered) - 1)
        low, high = math.floor(position), math.ceil(position)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    mean = sum(ordered) / len(ordered)
    std = math.sqrt(sum((v - mean) ** 2 for v in ordered) / (len(ordered) - 1)) if len(ordered) > 1 else 0.0
    return {"count": len(ordered), "mean": mean, "std": std, "min": ordered[0], "p25": quantile(0.25),
            "median": quantile(0.5), "p75": quantile(0.75), "max": ordered[-1]}  # fmt: skip


def mine_beir_hard_negatives(
    model: SentenceTransformer,
    dataset: BeirDataset,
    *,
    num_negatives: int = 8,
    range_min: int = 10,
    range_max: int | None = 100,
    sampling_strategy: str = "random",
    absolute_margin: float | None = None,
    relative_margin: float | None = 0.05,
    max_score: float | None = None,
    query_prompt: str | None = None,
    corpus_prompt: str | None = None,
    batch_size: int = 32,
    cache_folder: str | os.PathLike[str] | None = None,
    model_id: str = "",
    seed: int = 42,
) -> MiningResult:
    """Mine hard negatives for the queries of a BEIR split with sentence-transformers' ``mine_hard_negatives``.

    Every (query, qrels positive) pair with a score > 0 is one row of the dataset handed to
    :func:`sentence_transformers.util.mine_hard_negatives`, which embeds the whole corpus and the queries,
    removes *every* positive of a query (and any document with the same text) from its candidates, then the
    candidates within the margin, skips the ``range_min`` best remaining candidates, and takes
    ``num_negatives`` of the next ones up to rank ``range_max`` (the best ones, or a random sample).

    Args:
        model: the encoder that ranks the corpus (usually the model to be trained).
        dataset: the BEIR split.
        num_negatives: negatives per query.
        range_min: best remaining candidates to skip (likely unlabelled positives).
        range_max: the deepest rank to take negatives from (None: derived by ``mine_hard_negatives``).
        sampling_strategy: ``"random"`` (sample from the window) or ``"top"`` (its best candidates).
        absolute_margin: drop a candidate whose score + margin exceeds the query's weakest positive's score.
        relative_margin: drop a candidate scored above ``p - |p| * relative_margin`` (p: weakest positive score);
            0.05 is NV-Retriever's "TopK-PercPos (95%)".
        max_score: drop candidates scored above this.
        query_prompt / corpus_prompt: prompts of the queries / documents (e5: ``"query: "`` / ``"passage: "``);
            None uses the model's own ``query`` / ``document`` prompts, if it has them.
        batch_size: encoding batch size.
        cache_folder: keep the query and corpus embeddings here (per model) so that a rerun with other window
            or margin settings does not encode again.
        model_id: how the model was named (recorded in the summary; part of the cache key).
        seed: seed of the random sampling.

    Returns:
        A :class:`MiningResult`: one record per query with a positive (queries whose candidates all fall
        within the margin keep fewer, possibly no, negatives; the summary counts them).
    """
    from sentence_transformers.util import mine_hard_negatives

    relevant = dataset.relevant()
    if not relevant:
        raise DataError(f"BEIR {dataset.name}: no query has a document scored > 0")
    pairs = {"query": [], "positive": []}
    for query_id, doc_ids in relevant.items():
        for doc_id in sorted(doc_ids):
            pairs["query"].append(dataset.queries[query_id])
            pairs["positive"].append(dataset.corpus[doc_id])
    corpus_texts = list(dataset.corpus.values())
    cache = None
    if cache_folder is not None:
        cache = str(pathlib.Path(cache_folder) / _model_cache_key(model, model_id))
    start = time.perf_counter()
    state = random.getstate()
    random.seed(seed)  # mine_hard_negatives samples with the global `random` module
    try:
        mined = mine_hard_negatives(
            Dataset.from_dict(pairs),
            model,
            anchor_column_name="query",
            positive_column_name="positive",
            corpus=corpus_texts,
            range_min=range_min,
            range_max=range_max,
            absolute_margin=absolute_margin,
            relative_margin=relative_margin,
            max_score=max_score,
            num_negatives=num_negatives,
            sampling_strategy=sampling_strategy,
            query_prompt=query_prompt,
            corpus_prompt=corpus_prompt,
            output_format="labeled-pair",
            output_scores=True,
            batch_size=batch_size,
            cache_folder=cache,
            verbose=False,
        )
    finally:
        random.setstate(state)
    seconds = time.perf_counter() - start

    # labeled-pair rows, per distinct query text: (query, positive, score) for each positive, then
    # (query, negative, score) for each negative kept. Positives are told apart by their text.
    ids_by_text: dict[str, str] = {}
    for doc_id, text in dataset.corpus.items():
        ids_by_text.setdefault(text, doc_id)
    scored: dict[str, dict[str, float]] = {}
    for query, text, score in zip(mined["query"], mined["positive"], mined["score"]):
        scored.setdefault(query, {})[text] = float(score)
    records = []
    for query_id, doc_ids in relevant.items():
        query = dataset.queries[query_id]
        positive_ids = sorted(doc_ids)
        positive_texts = [dataset.corpus[cid] for cid in positive_ids]
        query_positive_texts = {t for qid, cids in relevant.items() if dataset.queries[qid] == query
                                for t in (dataset.corpus[c] for c in cids)}  # fmt: skip
        candidates = scored.get(query, {})
        negatives = [(text, score) for text, score in candidates.items() if text not in query_positive_texts]
        negatives.sort(key=lambda item: -item[1])
        records.append({
            "task": "ir",
            "query_id": query_id,
            "query": query,
            "positive_ids": positive_ids,
            "positives": positive_texts,
            "negative_ids": [ids_by_text[text] for text, _ in negatives],
            "negatives": [text for text, _ in negatives],
            "mined_positive_scores": [candidates.get(text) for text in positive_texts],
            "mined_negative_scores": [score for _, score in negatives],
        })  # fmt: skip
    summary = _mining_summary(records, dataset, num_negatives)
    summary["settings"] = {
        "model": model_id, "beir_folder": str(dataset.folder), "split": dataset.split,
        "num_negatives": num_negatives, "range_min": range_min, "range_max": range_max,
        "sampling_strategy": sampling_strategy, "absolute_margin": absolute_margin,
        "relative_margin": relative_margin, "max_score": max_score, "query_prompt": query_prompt,
        "corpus_prompt": corpus_prompt, "seed": seed, "max_seq_length": model.max_seq_length,
    }  # fmt: skip
    summary["seconds"] = round(seconds, 1)
    logger.info(
        "Mined %d negatives for %d queries of %s in %.1f s (%d queries with fewer than %d)",
        summary["negatives"], summary["queries"], dataset.name, seconds, summary["queries_short"], num_negatives,
    )  # fmt: skip
    return MiningResult(records=records, summary=summary)


def _mining_summary(records: list[dict[str, Any]], dataset: BeirDataset, num_negatives: int) -> dict[str, Any]:
    per_query: dict[int, int] = {}
    positive_scores: list[float] = []
    negative_scores: list[float] = []
    gaps: list[float] = []
    for record in records:
        count = len(record["negatives"])
        per_query[count] = per_query.get(count, 0) + 1
        positives = [s for s in record["mined_positive_scores"] if s is not None]
        positive_scores.extend(positives)
        negative_scores.extend(record["mined_negative_scores"])
        if positives and record["mined_negative_scores"]:
            gaps.append(min(positives) - max(record["mined_negative_scores"]))
    return {
        "dataset": dataset.name,
        "queries": len(records),
        "corpus": len(dataset.corpus),
        "negatives": len(negative_scores),
        "queries_short": sum(n for count, n in per_query.items() if count < num_negatives),
        "queries_without_negatives": per_query.get(0, 0),
        "negatives_per_query": {str(count): per_query[count] for count in sorted(per_query)},
        "positive_scores": _distribution(positive_scores),
        "negative_scores": _distribution(negative_scores),
        "weakest_positive_minus_strongest_negative": _distribution(gaps),
    }


def _summary_markdown(summary: Mapping[str, Any]) -> str:
    settings = summary["settings"]
    lines = [
        f"# Mined hard negatives: {summary['dataset']}",
        "",
        (
            f"- model: `{settings['model']}`; {summary['queries']} queries, {summary['corpus']} documents, "
            f"{summary['negatives']} negatives in {summary['seconds']} s"
        ),
        "- settings: " + ", ".join(f"{key}={value!r}" for key, value in settings.items() if key != "model"),
        (
            f"- queries with fewer than {settings['num_negatives']} negatives: {summary['queries_short']} "
            f"(none at all: {summary['queries_without_negatives']})"
        ),
        "",
        "| negatives per query | queries |",
        "|---|---|",
        *(f"| {count} | {n} |" for count, n in summary["negatives_per_query"].items()),
        "",
        "| similarity | count | mean | std | min | p25 | median | p75 | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("positive_scores", "negative_scores", "weakest_positive_minus_strongest_negative"):
        stats = summary[key]
        cells = [str(stats["count"])] + [
            "" if stats[k] is None else f"{stats[k]:.4f}" for k in ("mean", "std", "min", "p25", "median", "p75", "max")
        ]
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_mining_output(result: MiningResult, output: str | os.PathLike[str]) -> tuple[pathlib.Path, pathlib.Path]:
    """Write the records as JSON Lines to ``output`` and the summary next to it (``<stem>.summary.json`` / ``.md``).

    Each file is written atomically (:func:`hf_codiemb.atomic.atomic_file`): a killed run or a full disk leaves the
    previous files intact.

    Returns:
        The paths of the summary JSON and Markdown files.

    Raises:
        OutputWriteError: a file cannot be written (the previous one is kept).
    """
    from hf_codiemb.atomic import atomic_file, write_text_atomically

    output = pathlib.Path(output)
    json_path, markdown_path = mining_summary_paths(output)
    summary_json = json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n"
    summary_markdown = _summary_markdown(result.summary)  # before any write: a failure here changes nothing
    with atomic_file(output) as handle:
        for record in result.records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    write_text_atomically(json_path, summary_json)
    write_text_atomically(markdown_path, summary_markdown)
    logger.info("Wrote %s, %s and %s", output, json_path, markdown_path)
    return json_path, markdown_path


def mining_summary_paths(output: str | os.PathLike[str]) -> tuple[pathlib.Path, pathlib.Path]:
    """The summary files written next to the mining output ``output``: ``<stem>.summary.json`` and ``.md``."""
    output = pathlib.Path(output)
    return output.with_name(output.stem + ".summary.json"), output.with_name(output.stem + ".summary.md")
