"""BEIR / MTEB retrieval folders: loading, evaluation sets, training records and hard-negative mining.

A BEIR folder holds (the layout of BEIR, MTEB and sentence-transformers' ``InformationRetrievalEvaluator``):

- ``corpus.jsonl``: one document per line, ``{"_id": str, "title": str (optional), "text": str}``;
- ``queries.jsonl``: one query per line, ``{"_id": str, "text": str}``;
- ``qrels/<split>.tsv``: tab-separated ``query-id  corpus-id  score`` with that header line; a score > 0 marks a
  relevant document, a score of 0 a judged non-relevant one.

A document's text is its title and its text joined by one space, as BEIR's dense retrievers join them
(``(title + " " + text).strip()``; the text alone when there is no title).

- :func:`load_beir` reads one split and checks that every qrels id exists in the corpus and the queries.
- :func:`beir_ir_eval_set` turns it into an IR evaluation set for :func:`hf_codiemb.evaluation.evaluate_model`
  (nDCG@10, MRR@10, Recall@100 through ``InformationRetrievalEvaluator``), with the model's query/passage prompts.
- :func:`beir_ir_train_dataset` turns it into IR training records: the query, its qrels positives (score > 0)
  and the negatives of a file mined by :func:`mine_beir_hard_negatives` (``codiemb mine``).
- :func:`mine_beir_hard_negatives` mines hard negatives with sentence-transformers'
  :func:`~sentence_transformers.util.mine_hard_negatives`; every qrels positive of a query is excluded.

Every malformed line raises :class:`hf_codiemb.data.DataFormatError` naming the file, the line and the field.
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

from hf_codiemb.data import DataFormatError, _check_unicode, _iter_jsonl, _iter_text_lines
from hf_codiemb.errors import DataError, DataFileNotFoundError, RecipeError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

__all__ = [
    "BeirDataset",
    "BeirSpec",
    "beir_ir_eval_set",
    "beir_ir_train_dataset",
    "load_beir",
    "load_beir_corpus",
    "load_beir_qrels",
    "load_beir_queries",
    "load_mined_negatives",
    "mine_beir_hard_negatives",
    "parse_beir_spec",
    "write_mining_output",
]

QRELS_HEADER = ("query-id", "corpus-id", "score")


# --------------------------------------------------------------------------------------------------------------
# Reading the three files
# --------------------------------------------------------------------------------------------------------------


def _require_id(record: Mapping[str, Any], source: str, line: int) -> str:
    if "_id" not in record or record["_id"] is None:
        raise DataFormatError(source, line, "_id", "missing")
    value = record["_id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(source, line, "_id", f"must be a string, got {type(value).__name__} {value!r}")
    value = str(value)
    if not value.strip():
        raise DataFormatError(source, line, "_id", "must be a non-empty string")
    _check_unicode(value, "_id", source, line)
    return value


def _require_string(record: Mapping[str, Any], key: str, source: str, line: int, *, optional: bool = False) -> str:
    value = record.get(key)
    if value is None:
        if optional:
            return ""
        raise DataFormatError(source, line, key, "missing")
    if not isinstance(value, str):
        raise DataFormatError(source, line, key, f"must be a string, got {type(value).__name__}")
    _check_unicode(value, key, source, line)
    return value


def _read_id_text_file(path: pathlib.Path, with_title: bool) -> dict[str, str]:
    if not path.is_file():
        raise DataFileNotFoundError(f"BEIR file not found: {path}")
    source = str(path)
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    empty: list[int] = []
    for line, record in _iter_jsonl(path, source):
        doc_id = _require_id(record, source, line)
        if doc_id in first_line:
            raise DataFormatError(source, line, "_id", f"duplicate id {doc_id!r} (first on line {first_line[doc_id]})")
        text = _require_string(record, "text", source, line)
        if with_title and "title" in record:
            title = _require_string(record, "title", source, line, optional=True)
            text = (title + " " + text).strip()  # BEIR: title + sep + text, stripped
        else:
            text = text.strip()
        if not text:
            if with_title:
                raise DataFormatError(source, line, "text", "is empty (and so is the title)")
            empty.append(line)
        first_line[doc_id] = line
        texts[doc_id] = text
    if not texts:
        raise DataFormatError(source, None, None, "contains no records")
    if empty:
        logger.warning(
            "%s: %d queries have an empty text (lines %s); they are never evaluated, trained or mined",
            source, len(empty), ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else ""),
        )  # fmt: skip
    return texts


def load_beir_corpus(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a BEIR ``corpus.jsonl`` into ``{doc_id: "title text"}`` (the text alone when there is no title)."""
    return _read_id_text_file(pathlib.Path(path), with_title=True)


def load_beir_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a BEIR ``queries.jsonl`` into ``{query_id: text}``.

    A query with an empty text is kept as ``""`` and logged (CMRC 2018 has two); :meth:`BeirDataset.relevant`
    leaves such queries out, so they are never evaluated, trained or mined.
    """
    return _read_id_text_file(pathlib.Path(path), with_title=False)


def load_beir_qrels(
    path: str | os.PathLike[str],
    corpus: Mapping[str, str] | None = None,
    queries: Mapping[str, str] | None = None,
) -> dict[str, dict[str, int]]:
    """Read a BEIR ``qrels/<split>.tsv`` into ``{query_id: {doc_id: score}}``.

    The header line ``query-id corpus-id score`` is skipped (a file without it is read from its first line).

    Args:
        path: the qrels file.
        corpus / queries: when given, every ``corpus-id`` / ``query-id`` must be one of their keys.

    Raises:
        DataFormatError: a line without three tab-separated fields, a non-integer score, a repeated
            (query, document) pair, or an id missing from the corpus or the queries (file, line, field).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"BEIR qrels file not found: {path}")
    source = str(path)
    qrels: dict[str, dict[str, int]] = {}
    # Read as the other data files are: bytes that are not UTF-8 are named by line (a BOM and gzip are fine).
    for line_number, line in _iter_text_lines(path, source, progress=False, columns=QRELS_HEADER):
        if not line.strip():
            continue
        fields = line.split("\t")
        if line_number == 1 and tuple(f.strip() for f in fields) == QRELS_HEADER:
            continue
        if len(fields) != 3:
            raise DataFormatError(
                source, line_number, None,
                f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}: {line[:80]!r}",
            )  # fmt: skip
        query_id, doc_id, score_text = (f.strip() for f in fields)
        for name, value in (("query-id", query_id), ("corpus-id", doc_id)):
            if not value:
                raise DataFormatError(source, line_number, name, "is empty")
        try:
            score = int(score_text)
        except ValueError:
            raise DataFormatError(
                source, line_number, "score", f"must be an integer relevance grade, got {score_text!r}"
            ) from None
        if queries is not None and query_id not in queries:
            raise DataFormatError(source, line_number, "query-id", f"{query_id!r} is not in the queries file")
        if corpus is not None and doc_id not in corpus:
            raise DataFormatError(source, line_number, "corpus-id", f"{doc_id!r} is not in the corpus file")
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged:
            raise DataFormatError(source, line_number, "corpus-id", f"pair ({query_id!r}, {doc_id!r}) repeated")
        judged[doc_id] = score
    if not qrels:
        raise DataFormatError(source, None, None, "contains no judgements")
    return qrels


# --------------------------------------------------------------------------------------------------------------
# One split of a BEIR folder
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BeirDataset:
    """One split of a BEIR folder.

    Attributes:
        folder: the BEIR folder.
        split: the qrels split (``qrels/<split>.tsv``).
        corpus: ``{doc_id: "title text"}``, the whole corpus.
        queries: ``{query_id: text}``, the queries judged in this split.
        qrels: ``{query_id: {doc_id: score}}`` of this split (scores 0 included).
    """

    folder: pathlib.Path
    split: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def name(self) -> str:
        """``<folder name>_<split>``, e.g. ``scifact_dev``."""
        return f"{self.folder.name}_{self.split}"

    def relevant(self) -> dict[str, set[str]]:
        """``{query_id: {doc_id, ...}}`` of the documents scored > 0; queries without one, or with an empty text,
        are left out."""
        relevant = {qid: {cid for cid, score in docs.items() if score > 0} for qid, docs in self.qrels.items()}
        return {qid: cids for qid, cids in relevant.items() if cids and self.queries[qid]}


def load_beir(folder: str | os.PathLike[str], split: str) -> BeirDataset:
    """Load ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` of a BEIR folder.

    Args:
        folder: the BEIR folder.
        split: the qrels split, e.g. ``"train"``, ``"dev"`` or ``"test"``.

    Returns:
        A :class:`BeirDataset` whose ``queries`` are those judged in ``split``.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message lists the available splits).
        DataFormatError: a malformed line or a qrels id missing from the corpus or the queries.

    Example:
        ::

            from hf_codiemb.beir import load_beir

            scifact = load_beir("data/scifact", "dev")  # a BEIR folder: corpus.jsonl, queries.jsonl, qrels/
            len(scifact.queries), len(scifact.corpus)  # (102, 5183)
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DataFileNotFoundError(f"BEIR folder not found: {folder}")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise DataFileNotFoundError(f"BEIR qrels file not found: {qrels_path} (available splits: {available})")
    corpus = load_beir_corpus(folder / "corpus.jsonl")
    all_queries = load_beir_queries(folder / "queries.jsonl")
    qrels = load_beir_qrels(qrels_path, corpus=corpus, queries=all_queries)
    queries = {qid: all_queries[qid] for qid in qrels}
    dataset = BeirDataset(folder=folder, split=split, corpus=corpus, queries=queries, qrels=qrels)
    logger.info(
        "BEIR %s: %d queries (%d with a relevant document), %d documents",
        dataset.name, len(queries), len(dataset.relevant()), len(corpus),
    )  # fmt: skip
    return dataset


@dataclass
class BeirSpec:
    """A BEIR data entry of a recipe: ``FOLDER:SPLIT`` or, for training, ``FOLDER:SPLIT:NEGATIVES_FILE``."""

    folder: str
    split: str
    negatives: str | None = None


def parse_beir_spec(entry: str, *, allow_negatives: bool = True) -> BeirSpec:
    """Parse ``FOLDER:SPLIT[:NEGATIVES_FILE]`` (e.g. ``data/scifact:dev``).

    Raises:
        ValueError: the entry does not have that shape (the message quotes it).
    """
    parts = entry.split(":")
    shape = "FOLDER:SPLIT:NEGATIVES_FILE (or FOLDER:SPLIT)" if allow_negatives else "FOLDER:SPLIT"
    if len(parts) not in ((2, 3) if allow_negatives else (2,)) or not all(p.strip() for p in parts):
        raise RecipeError(f"BEIR entry {entry!r} must be {shape}, e.g. data/scifact:dev")
    return BeirSpec(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


# --------------------------------------------------------------------------------------------------------------
# Evaluation and training data
# --------------------------------------------------------------------------------------------------------------


def beir_ir_eval_set(
    dataset: BeirDataset,
    *,
    query_prompt: str | None = None,
    corpus_prompt: str | None = None,
    max_queries: int | None = None,
) -> dict[str, Any]:
    """An IR evaluation set for :func:`hf_codiemb.evaluation.evaluate_model` (``ir_sets[name]``).

    The queries with at least one document scored > 0 (in qrels order, the first ``max_queries``), the whole
    corpus, and the relevant documents; retrieval is scored by ``InformationRetrievalEvaluator`` (binary
    relevance). A document whose text equals the query's is ranked like any other (BEIR's default).

    Returns:
        ``{"queries", "corpus", "relevant", "query_prompt", "corpus_prompt", "ignore_identical_text"}``.
    """
    relevant = dataset.relevant()
    query_ids = list(relevant)[:max_queries] if max_queries else list(relevant)
    if not query_ids:
        raise DataError(f"BEIR {dataset.name}: no query has a document scored > 0")
    return {
        "queries": {qid: dataset.queries[qid] for qid in query_ids},
        "corpus": dict(dataset.corpus),
        "relevant": {qid: relevant[qid] for qid in query_ids},
        "query_prompt": query_prompt,
        "corpus_prompt": corpus_prompt,
        "ignore_identical_text": False,
    }


def load_mined_negatives(path: str | os.PathLike[str], dataset: BeirDataset) -> dict[str, list[str]]:
    """Read a mined-negatives file (``codiemb mine``) into ``{query_id: [negative text, ...]}``.

    Records are matched to the split's queries by ``query_id`` (by ``query`` text when a record has no id).
    A negative that is a relevant document of its query (text equal to one of the query's qrels positives) is
    dropped with a warning.

    Raises:
        FileNotFoundError: the file does not exist (the message says how to mine it).
        DataFormatError: a malformed record, or a query that is not judged in the split (mined for another split).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(
            f"mined negatives file not found: {path}; mine it with "
            f"`codiemb mine --beir {dataset.folder} --split {dataset.split} --output {path} --model MODEL`"
        )
    source = str(path)
    by_text = {text: qid for qid, text in dataset.queries.items()}
    positives = {qid: {dataset.corpus[cid] for cid in cids} for qid, cids in dataset.relevant().items()}
    negatives: dict[str, list[str]] = {}
    dropped = 0
    for line, record in _iter_jsonl(path, source):
        if record.get("query_id") is not None:
            query_id = str(record["query_id"])
            if query_id not in dataset.queries:
                raise DataFormatError(
                    source, line, "query_id", f"{query_id!r} is not judged in {dataset.name} (mined for another split?)"
                )
        else:
            query = _require_string(record, "query", source, line)
            if query not in by_text:
                raise DataFormatError(source, line, "query", f"{query[:60]!r} is not a query of {dataset.name}")
            query_id = by_text[query]
        texts = record.get("negatives", record.get("neg"))
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise DataFormatError(source, line, "negatives", "must be a list of non-empty strings")
        for item, text in enumerate(texts, start=1):
            _check_unicode(text, "negatives", source, line, item=item)
        kept = [text for text in texts if text not in positives.get(query_id, set())]
        dropped += len(texts) - len(kept)
        merged = negatives.setdefault(query_id, [])
        merged.extend(text for text in dict.fromkeys(kept) if text not in merged)
    if dropped:
        logger.warning("%s: dropped %d negatives that are relevant documents of their query", source, dropped)
    return negatives


def beir_ir_train_dataset(
    dataset: BeirDataset,
    negatives_file: str | os.PathLike[str] | None = None,
    *,
    require_negatives: bool = False,
    max_records: int | None = None,
) -> Dataset:
    """IR training records of a BEIR split: ``query``, ``positives`` (qrels score > 0), ``negatives`` (mined).

    Args:
        dataset: the split.
        negatives_file: a file written by ``codiemb mine`` for this split; without it every record has no
            negatives (train with in-batch negatives only, ``num_negatives=0``).
        require_negatives: leave out the queries that have no mined negative (logged with their count);
            for training with ``num_negatives > 0``, where such a query cannot make a batch.
        max_records: keep only the first ``max_records`` records.

    Returns:
        A dataset with the columns ``query``, ``positives``, ``negatives``.
    """
    negatives = load_mined_negatives(negatives_file, dataset) if negatives_file is not None else {}
    records: dict[str, list] = {"query": [], "positives": [], "negatives": []}
    without = 0
    for query_id, doc_ids in dataset.relevant().items():
        mined = negatives.get(query_id, [])
        if require_negatives and not mined:
            without += 1
            continue
        records["query"].append(dataset.queries[query_id])
        records["positives"].append([dataset.corpus[cid] for cid in sorted(doc_ids)])
        records["negatives"].append(mined)
        if max_records is not None and len(records["query"]) >= max_records:
            break
    if without:
        logger.warning(
            "BEIR %s: %d queries have no mined negative in %s and are left out", dataset.name, without, negatives_file
        )
    if not records["query"]:
        raise DataError(f"BEIR {dataset.name}: no training record (no query with a positive and negatives)")
    logger.info("BEIR %s: %d IR training records", dataset.name, len(records["query"]))
    return Dataset.from_dict(records)


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
