"""Hard negatives mined with a model (``codiemb mine``, :mod:`hf_codiemb.commands.mine`).

:func:`mine_hard_negatives_for` mines the queries of a :class:`MiningInput` (queries, a corpus, each query's
positives) with sentence-transformers' :func:`~sentence_transformers.util.mine_hard_negatives` (every positive of a
query is excluded); the input is a BEIR split (:func:`mine_beir_hard_negatives`, read by
:mod:`hf_codiemb.data.beir`) or the trainer's IR JSON Lines plus a corpus file (:func:`load_jsonl_mining_input`).
The similarity search is exact (the query x corpus scores in chunks of ``search_batch_size`` queries, never the
whole matrix) or a FAISS flat inner-product index (``search="faiss"``: exact too, faster on large corpora; needs the
``mine`` extra, ``faiss-cpu``, imported only then). :func:`write_mining_output` writes the records, a JSON and a
markdown summary atomically.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import pathlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from datasets import Dataset

from hf_codiemb.data.beir import BeirDataset
from hf_codiemb.errors import DataError, UsageError

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


#: ``search="auto"`` uses FAISS from this many documents on, when it is installed.
FAISS_AUTO_MIN_CORPUS = 100_000
#: Exact search: the largest query x corpus score block computed at once (floats; 2**26 = 256 MiB in float32).
EXACT_SCORE_BLOCK = 2**26


@dataclass
class MiningInput:
    """What is mined: queries, a corpus and the positives of each query, with where they came from.

    Attributes:
        name: the data's name (summary title), e.g. ``scifact_train``.
        queries: ``{query_id: text}``.
        corpus: ``{doc_id: text}``; every positive is in it.
        relevant: ``{query_id: [doc_id, ...]}``, the positives of each mined query, in output order.
        source: where the data came from (recorded in the summary's settings).
        records: optional ``{query_id: unified IR record}`` whose other fields (instruction, positive scores) the
            output keeps (the JSON Lines input).
    """

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, list[str]]
    source: dict[str, Any] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] | None = None


def beir_mining_input(dataset: BeirDataset) -> MiningInput:
    """A BEIR split as a :class:`MiningInput`: its judged queries with a document scored > 0."""
    relevant = {query_id: sorted(doc_ids) for query_id, doc_ids in dataset.relevant().items()}
    if not relevant:
        raise DataError(f"BEIR {dataset.name}: no query has a document scored > 0")
    return MiningInput(
        name=dataset.name, queries=dataset.queries, corpus=dataset.corpus, relevant=relevant,
        source={"beir_folder": str(dataset.folder), "split": dataset.split},
    )  # fmt: skip


def load_corpus_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a corpus file into ``{doc_id: text}``: a BEIR ``corpus.jsonl`` (records with ``_id``; read by
    :func:`hf_codiemb.data.beir.load_beir_corpus`, ``title`` and ``text`` joined as BEIR does) or JSON Lines of
    ``{"text": ..., "title": ... (optional)}`` records, whose ids are their line numbers.

    Raises:
        DataFileNotFoundError: no such file.
        DataFormatError: a malformed line (file, line and field named).
    """
    from hf_codiemb.data.beir import load_beir_corpus
    from hf_codiemb.data.rules import DataFormatError, require_text
    from hf_codiemb.data.text_files import check_path, iter_jsonl

    source = str(path)
    records = iter_jsonl(check_path(path), source)
    first = next(records, None)
    if first is None:
        raise DataFormatError(source, None, None, "contains no records")
    if "_id" in first[1]:
        return load_beir_corpus(path)
    corpus: dict[str, str] = {}
    for line, record in itertools.chain([first], records):
        text = require_text(record, "text", source, line)
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise DataFormatError(source, line, "title", f"must be a string, got {type(title).__name__}")
        corpus[str(line)] = ((title or "") + " " + text).strip() if title else text.strip()
    return corpus


def load_jsonl_mining_input(queries: str | os.PathLike[str], corpus: str | os.PathLike[str]) -> MiningInput:
    """The trainer's IR JSON Lines (queries with their positives; unified, FlagEmbedding or reference layout, checked
    by the trainer's rules) plus a corpus file (:func:`load_corpus_file`) as a :class:`MiningInput`.

    A query's id is its record's ``query_id`` (a string), else its line number. A positive that is not in the corpus
    is added to it (as ``positive:<n>``), so that it is excluded like the others; the records' negatives, if any, are
    replaced by the mined ones.

    Raises:
        DataFileNotFoundError, DataFormatError: a missing file, a malformed line.
    """
    from hf_codiemb.data import rules
    from hf_codiemb.data.text_files import check_path, iter_jsonl

    documents = load_corpus_file(corpus)
    ids_by_text: dict[str, str] = {}
    for doc_id, text in documents.items():
        ids_by_text.setdefault(text, doc_id)
    source = str(queries)
    texts: dict[str, str] = {}
    relevant: dict[str, list[str]] = {}
    records: dict[str, dict[str, Any]] = {}
    record_format = None
    for line, raw in iter_jsonl(check_path(queries), source):
        record_format = record_format or rules.detect_ir_record_format(raw, source, line)
        record = rules.parse_ir_record(raw, record_format, source, line)
        query_id = raw["query_id"] if isinstance(raw.get("query_id"), str) else str(line)
        if query_id in texts:
            raise rules.DataFormatError(source, line, "query_id", f"duplicate query id {query_id!r}")
        positive_ids = []
        for text in record["positives"]:
            if text not in ids_by_text:
                ids_by_text[text] = documents_key = f"positive:{len(documents)}"
                documents[documents_key] = text
            if ids_by_text[text] not in positive_ids:
                positive_ids.append(ids_by_text[text])
        texts[query_id] = record["query"]
        relevant[query_id] = positive_ids
        records[query_id] = {key: value for key, value in record.items()
                             if key not in ("negatives", "negative_scores")}  # fmt: skip
    if not relevant:
        raise rules.DataFormatError(source, None, None, "contains no records")
    return MiningInput(
        name=pathlib.Path(queries).stem, queries=texts, corpus=documents, relevant=relevant,
        source={"queries": str(queries), "corpus": str(corpus)}, records=records,
    )  # fmt: skip


def resolve_search(search: str, corpus_size: int) -> str:
    """``"exact"`` or ``"faiss"``: ``"auto"`` is FAISS from :data:`FAISS_AUTO_MIN_CORPUS` documents on when
    ``faiss`` is installed (both are exact: a flat index), exact otherwise.

    Raises:
        UsageError: ``search="faiss"`` without ``faiss`` installed (the message says what to install).
    """
    import importlib.util

    if search not in ("auto", "exact", "faiss"):
        raise UsageError(f"search must be 'auto', 'exact' or 'faiss', got {search!r}")
    installed = importlib.util.find_spec("faiss") is not None
    if search == "faiss" and not installed:
        raise UsageError("search=faiss needs FAISS: pip install 'hf_codiemb[mine]' (faiss-cpu)")
    if search == "auto":
        if corpus_size < FAISS_AUTO_MIN_CORPUS:
            return "exact"
        if not installed:
            logger.warning(
                "Corpus of %d documents: FAISS would search it faster (pip install 'hf_codiemb[mine]'); "
                "searching exactly in bounded blocks instead", corpus_size,
            )  # fmt: skip
            return "exact"
        return "faiss"
    return search


def default_search_batch_size(search: str, corpus_size: int) -> int:
    """Queries per similarity search: FAISS 16384 (sentence-transformers' default; FAISS bounds its own memory),
    exact search as many as keep the score block within :data:`EXACT_SCORE_BLOCK` floats."""
    if search == "faiss":
        return 16384
    return max(1, min(16384, EXACT_SCORE_BLOCK // max(corpus_size, 1)))


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


def mine_beir_hard_negatives(model: SentenceTransformer, dataset: BeirDataset, **kwargs: Any) -> MiningResult:
    """Mine hard negatives for the queries of a BEIR split (:func:`mine_hard_negatives_for` on
    :func:`beir_mining_input`); ``kwargs`` are those of :func:`mine_hard_negatives_for`."""
    return mine_hard_negatives_for(model, beir_mining_input(dataset), **kwargs)


def mine_hard_negatives_for(
    model: SentenceTransformer,
    data: MiningInput,
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
    search: Literal["auto", "exact", "faiss"] = "auto",
    search_batch_size: int | None = None,
) -> MiningResult:
    """Mine hard negatives for the queries of ``data`` with sentence-transformers' ``mine_hard_negatives``.

    Every (query, positive) pair is one row of the dataset handed to
    :func:`sentence_transformers.util.mine_hard_negatives`, which embeds the whole corpus and the queries,
    removes *every* positive of a query (and any document with the same text) from its candidates, then the
    candidates within the margin, skips the ``range_min`` best remaining candidates, and takes
    ``num_negatives`` of the next ones up to rank ``range_max`` (the best ones, or a random sample).

    Memory: the corpus embeddings (``len(corpus) x dim`` float32, encoded ``batch_size`` texts at a time) and, for
    the search, one block of ``search_batch_size`` queries' scores (exact) or FAISS's flat index (a copy of the
    embeddings); never the whole query x corpus score matrix. ``tests/benchmarks/bench_mining_scale.py`` measures it.

    Args:
        model: the encoder that ranks the corpus (usually the model to be trained).
        data: the queries, corpus and positives (:func:`beir_mining_input`, :func:`load_jsonl_mining_input`).
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
        search: ``"exact"`` (torch, chunked), ``"faiss"`` (a FAISS ``IndexFlatIP``: the same candidates, faster on a
            large corpus) or ``"auto"`` (:func:`resolve_search`).
        search_batch_size: queries per search step (sentence-transformers' ``faiss_batch_size``); unset:
            :func:`default_search_batch_size`.

    Returns:
        A :class:`MiningResult`: one record per query with a positive (queries whose candidates all fall
        within the margin keep fewer, possibly no, negatives; the summary counts them).
    """
    from sentence_transformers.util import mine_hard_negatives

    relevant = data.relevant
    if not relevant:
        raise DataError(f"{data.name}: no query with a positive to mine for")
    pairs = {"query": [], "positive": []}
    for query_id, doc_ids in relevant.items():
        for doc_id in doc_ids:
            pairs["query"].append(data.queries[query_id])
            pairs["positive"].append(data.corpus[doc_id])
    corpus_texts = list(data.corpus.values())
    search = resolve_search(search, len(corpus_texts))
    if search_batch_size is None:
        search_batch_size = default_search_batch_size(search, len(corpus_texts))
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
            use_faiss=search == "faiss",
            faiss_batch_size=search_batch_size,
        )
    finally:
        random.setstate(state)
    seconds = time.perf_counter() - start

    # labeled-pair rows, per distinct query text: (query, positive, score) for each positive, then
    # (query, negative, score) for each negative kept. Positives are told apart by their text.
    ids_by_text: dict[str, str] = {}
    for doc_id, text in data.corpus.items():
        ids_by_text.setdefault(text, doc_id)
    scored: dict[str, dict[str, float]] = {}
    for query, text, score in zip(mined["query"], mined["positive"], mined["score"]):
        scored.setdefault(query, {})[text] = float(score)
    positives_of_text: dict[str, set[str]] = {}  # a query text repeated under several ids: all their positives
    for query_id, doc_ids in relevant.items():
        positives_of_text.setdefault(data.queries[query_id], set()).update(data.corpus[c] for c in doc_ids)
    records = []
    for query_id, doc_ids in relevant.items():
        query = data.queries[query_id]
        positive_texts = [data.corpus[cid] for cid in doc_ids]
        candidates = scored.get(query, {})
        negatives = [(text, score) for text, score in candidates.items() if text not in positives_of_text[query]]
        negatives.sort(key=lambda item: -item[1])
        record = dict(data.records[query_id]) if data.records is not None else {}
        record.update({
            "task": "ir",
            "query_id": query_id,
            "query": query,
            "positive_ids": list(doc_ids),
            "positives": positive_texts,
            "negative_ids": [ids_by_text[text] for text, _ in negatives],
            "negatives": [text for text, _ in negatives],
            "mined_positive_scores": [candidates.get(text) for text in positive_texts],
            "mined_negative_scores": [score for _, score in negatives],
        })  # fmt: skip
        records.append(record)
    summary = _mining_summary(records, data.name, len(data.corpus), num_negatives)
    summary["settings"] = {
        "model": model_id, **data.source,
        "num_negatives": num_negatives, "range_min": range_min, "range_max": range_max,
        "sampling_strategy": sampling_strategy, "absolute_margin": absolute_margin,
        "relative_margin": relative_margin, "max_score": max_score, "query_prompt": query_prompt,
        "corpus_prompt": corpus_prompt, "seed": seed, "max_seq_length": model.max_seq_length,
        "search": search, "search_batch_size": search_batch_size,
    }  # fmt: skip
    summary["seconds"] = round(seconds, 1)
    logger.info(
        "Mined %d negatives for %d queries of %s in %.1f s (%d queries with fewer than %d)",
        summary["negatives"], summary["queries"], data.name, seconds, summary["queries_short"], num_negatives,
    )  # fmt: skip
    return MiningResult(records=records, summary=summary)


def _mining_summary(records: list[dict[str, Any]], name: str, corpus_size: int, num_negatives: int) -> dict[str, Any]:
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
        "dataset": name,
        "queries": len(records),
        "corpus": corpus_size,
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
