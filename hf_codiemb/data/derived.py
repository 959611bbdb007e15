"""Tasks derived from other tasks: STS pairs -> an IR evaluation task or IR training records, IR records -> an IR
evaluation task or pairs.

These are *constructed* tasks (paraphrase retrieval from STS Benchmark, relevance as a binary score), used where a
real dataset of the task is missing and by the study's single-loss baselines.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

from datasets import Dataset

logger = logging.getLogger(__name__)


def _sts_rows(sts_dataset: Dataset | Iterable[Mapping[str, Any]]) -> list[tuple[str, str, float]]:
    return [(row["sentence1"], row["sentence2"], float(row["score"])) for row in sts_dataset]


def ir_task_from_sts_pairs(
    sts_dataset: Dataset | Iterable[Mapping[str, Any]], min_score: float = 4.0
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """Build a paraphrase-retrieval IR evaluation task from STS pairs.

    - **corpus**: every distinct sentence of the split (``sentence1`` and ``sentence2`` of all pairs, whatever
      their score), deduplicated by exact text, ids ``"c0", "c1", ...`` in order of first appearance.
    - **queries**: the distinct ``sentence1`` of the pairs scored ``>= min_score``, ids ``"q0", "q1", ...``.
    - **relevant**: for each query, the corpus ids of the ``sentence2`` of all its pairs scored
      ``>= min_score``.

    Choice on identical texts: a pair whose two sentences are exactly identical gives no relevant document
    (retrieving the query's own text is trivial), and a query left with no relevant document is dropped.
    The query's own text stays in the corpus (other queries may need it); :func:`hf_codiemb.evaluation.evaluate_ir`
    ignores a retrieved document whose text equals the query's when it is not relevant, as BEIR ignores
    identical ids.

    Returns:
        ``(queries, corpus, relevant)``, dictionaries ready for ``InformationRetrievalEvaluator``.
    """
    rows = _sts_rows(sts_dataset)
    corpus_ids: dict[str, str] = {}
    for sentence1, sentence2, _ in rows:
        for text in (sentence1, sentence2):
            if text not in corpus_ids:
                corpus_ids[text] = f"c{len(corpus_ids)}"
    query_relevant: dict[str, set[str]] = {}
    for sentence1, sentence2, score in rows:
        if score >= min_score and sentence1 != sentence2:
            query_relevant.setdefault(sentence1, set()).add(corpus_ids[sentence2])
    queries = {f"q{index}": text for index, text in enumerate(query_relevant)}
    relevant = {qid: query_relevant[text] for qid, text in queries.items()}
    corpus = {cid: text for text, cid in corpus_ids.items()}
    logger.info(
        "STS-derived IR task: %d queries, %d corpus sentences (min_score=%g)", len(queries), len(corpus), min_score
    )
    return queries, corpus, relevant


def ir_train_from_sts_pairs(
    sts_dataset: Dataset | Iterable[Mapping[str, Any]],
    min_score: float = 4.0,
    num_negatives: int = 4,
    seed: int = 0,
    max_negative_score: float | None = None,
) -> Dataset:
    """Build IR training records from STS pairs (a *constructed* task, not a real retrieval dataset).

    Each pair scored ``>= min_score`` gives ``query = sentence1``, ``positives = [sentence2]``. Its
    ``num_negatives`` negatives are drawn (seeded) first from the sentences of the same ``sentence1``'s
    low-scored pairs (score ``<= max_negative_score``, default ``min_score / 2``), which are topically close
    but not paraphrases, then from random other sentences of the split. A negative is never the query, the
    positive, or any sentence paired with the query at a score above ``max_negative_score``.

    This lets IR training run on STS Benchmark English, which has no retrieval data; results on it measure
    paraphrase retrieval only.

    Returns:
        A dataset with the IR columns ``query``, ``positives``, ``negatives``.
    """
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    if max_negative_score is None:
        max_negative_score = min_score / 2
    rows = _sts_rows(sts_dataset)
    rng = random.Random(seed)
    all_sentences = list(dict.fromkeys(text for s1, s2, _ in rows for text in (s1, s2)))
    close: dict[str, list[str]] = {}
    related: dict[str, set[str]] = {}
    for sentence1, sentence2, score in rows:
        for a, b in ((sentence1, sentence2), (sentence2, sentence1)):
            if score <= max_negative_score:
                close.setdefault(a, []).append(b)
            else:
                related.setdefault(a, set()).add(b)
    records: dict[str, list] = {"query": [], "positives": [], "negatives": []}
    for sentence1, sentence2, score in rows:
        if score < min_score or sentence1 == sentence2:
            continue
        excluded = {sentence1, sentence2} | related.get(sentence1, set())
        negatives = _draw_negatives(close.get(sentence1, []), all_sentences, excluded, num_negatives, rng)
        records["query"].append(sentence1)
        records["positives"].append([sentence2])
        records["negatives"].append(negatives)
    if not records["query"]:
        raise ValueError(f"no STS pair is scored >= min_score={min_score}")
    logger.info("Constructed %d IR training records from STS pairs", len(records["query"]))
    return Dataset.from_dict(records)


def labelled_pairs_from_ir_records(
    ir_dataset: Dataset | Iterable[Mapping[str, Any]],
    num_negatives: int | None = None,
    positive_score: float = 1.0,
    negative_score: float = 0.0,
) -> Dataset:
    """Turn IR records into scored STS-style pairs, so that a pair loss (e.g. CoSENT) can train on IR data.

    Each record gives ``(query, positive, positive_score)`` for every positive and ``(query, negative,
    negative_score)`` for its first ``num_negatives`` negatives (all of them when ``None``), in record order.
    This is how single-loss baselines ("CoSENT only") see retrieval data: relevance becomes a binary score.

    Returns:
        A dataset with the STS columns ``sentence1``, ``sentence2``, ``score``.
    """
    if num_negatives is not None and num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0 or None, got {num_negatives}")
    if not positive_score > negative_score:
        raise ValueError(f"positive_score ({positive_score}) must be > negative_score ({negative_score})")
    pairs: dict[str, list] = {"sentence1": [], "sentence2": [], "score": []}
    for row in ir_dataset:
        negatives = list(row.get("negatives") or [])
        labelled = [(text, positive_score) for text in row["positives"]]
        labelled += [(text, negative_score) for text in negatives[:num_negatives]]
        for text, score in labelled:
            pairs["sentence1"].append(row["query"])
            pairs["sentence2"].append(text)
            pairs["score"].append(float(score))
    if not pairs["sentence1"]:
        raise ValueError("the IR records give no pair (no records, or no positives)")
    return Dataset.from_dict(pairs)


def _draw_negatives(
    close: list[str], pool: list[str], excluded: set[str], count: int, rng: random.Random
) -> list[str]:
    """Draw ``count`` distinct negatives: close ones first (shuffled), then random ones from ``pool``."""
    candidates = [text for text in dict.fromkeys(close) if text not in excluded]
    rng.shuffle(candidates)
    negatives = candidates[:count]
    chosen = set(negatives) | excluded
    available = len(pool) - len(chosen & set(pool))
    while len(negatives) < count and available > 0:
        text = pool[rng.randrange(len(pool))]
        if text not in chosen:
            negatives.append(text)
            chosen.add(text)
            available -= 1
    return negatives


def ir_eval_set_from_ir_dataset(dataset: Dataset) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """An IR evaluation task from IR records: corpus = every positive and negative, relevant = the positives."""
    corpus_ids: dict[str, str] = {}
    queries: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}

    def doc_id(text: str) -> str:
        if text not in corpus_ids:
            corpus_ids[text] = f"d{len(corpus_ids)}"
        return corpus_ids[text]

    for i, row in enumerate(dataset):
        qid = f"q{i}"
        queries[qid] = row["query"]
        relevant[qid] = {doc_id(text) for text in row["positives"]}
        for text in row.get("negatives") or []:
            doc_id(text)
    return queries, {cid: text for text, cid in corpus_ids.items()}, relevant
