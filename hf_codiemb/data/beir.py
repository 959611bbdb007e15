"""BEIR / MTEB retrieval folders: loading, evaluation sets, training records (mining: :mod:`hf_codiemb.mining`).

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
  and the negatives of a file mined by :func:`hf_codiemb.mining.mine_beir_hard_negatives` (``codiemb mine``).

Every malformed line raises :class:`hf_codiemb.data.DataFormatError` naming the file, the line and the field.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from hf_codiemb.data.eval_sets import IREvalSet
from hf_codiemb.data.rules import DataFormatError, check_unicode
from hf_codiemb.data.text_files import iter_jsonl, iter_text_lines
from hf_codiemb.errors import DataError, DataFileNotFoundError, RecipeError

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
    "parse_beir_spec",
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
    check_unicode(value, "_id", source, line)
    return value


def _require_string(record: Mapping[str, Any], key: str, source: str, line: int, *, optional: bool = False) -> str:
    value = record.get(key)
    if value is None:
        if optional:
            return ""
        raise DataFormatError(source, line, key, "missing")
    if not isinstance(value, str):
        raise DataFormatError(source, line, key, f"must be a string, got {type(value).__name__}")
    check_unicode(value, key, source, line)
    return value


def _read_id_text_file(path: pathlib.Path, with_title: bool) -> dict[str, str]:
    if not path.is_file():
        raise DataFileNotFoundError(f"BEIR file not found: {path}")
    source = str(path)
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    empty: list[int] = []
    for line, record in iter_jsonl(path, source):
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
    for line_number, line in iter_text_lines(path, source, progress=False, columns=QRELS_HEADER):
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

            from hf_codiemb.data.beir import load_beir

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
    name: str | None = None,
) -> IREvalSet:
    """An IR evaluation set of a BEIR split (named ``name``, by default :attr:`BeirDataset.name`).

    The queries with at least one document scored > 0 (in qrels order, the first ``max_queries``), the whole
    corpus, and the relevant documents; retrieval is scored by ``InformationRetrievalEvaluator`` (binary
    relevance). A document whose text equals the query's is ranked like any other (BEIR's default).
    """
    relevant = dataset.relevant()
    query_ids = list(relevant)[:max_queries] if max_queries else list(relevant)
    if not query_ids:
        raise DataError(f"BEIR {dataset.name}: no query has a document scored > 0")
    return IREvalSet(
        name=name or dataset.name,
        queries={qid: dataset.queries[qid] for qid in query_ids},
        corpus=dict(dataset.corpus),
        relevant={qid: relevant[qid] for qid in query_ids},
        query_prompt=query_prompt,
        corpus_prompt=corpus_prompt,
        ignore_identical_text=False,
    )


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
    for line, record in iter_jsonl(path, source):
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
            check_unicode(text, "negatives", source, line, item=item)
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
        needs = " and mined negatives" if require_negatives else ""
        raise DataError(f"BEIR {dataset.name}: no training record (no query with a positive{needs})")
    logger.info("BEIR %s: %d IR training records", dataset.name, len(records["query"]))
    return Dataset.from_dict(records)
