"""Evaluation: STS Spearman, IR nDCG/MRR/Recall, embedding geometry, result tables.

- :func:`evaluate_sts` and :func:`evaluate_ir` wrap sentence-transformers' ``EmbeddingSimilarityEvaluator`` and
  ``InformationRetrievalEvaluator`` and return the headline metrics under short keys.
- Geometry metrics (:func:`anisotropy`, :func:`effective_rank`, :func:`condition_number`, :func:`alignment`,
  :func:`uniformity`) work on numpy embedding matrices.
- :func:`evaluate_model` collects everything into one nested dict; :func:`write_results` writes it as
  ``eval_results.json`` and ``eval_results.md``; :func:`format_before_after_table` compares two runs.

STS-derived IR tasks come from :func:`hf_codiemb.data.ir_task_from_sts_pairs`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
)

from hf_codiemb.data.eval_sets import IREvalSet, STSEvalSet

logger = logging.getLogger(__name__)

__all__ = [
    "ExcludingInformationRetrievalEvaluator",
    "PromptedEmbeddingSimilarityEvaluator",
    "alignment",
    "anisotropy",
    "build_ir_evaluator",
    "build_sts_evaluator",
    "condition_number",
    "effective_rank",
    "evaluate_ir",
    "evaluate_model",
    "evaluate_sts",
    "flatten_results",
    "format_before_after_table",
    "format_results_table",
    "geometry_metrics",
    "identical_text_exclusions",
    "ir_set_arguments",
    "sts_columns",
    "sts_set_arguments",
    "uniformity",
    "write_results",
]

IR_NDCG_AT_K = 10
IR_MRR_AT_K = 10
IR_RECALL_AT_K = 100


# --------------------------------------------------------------------------------------------------------------
# STS
# --------------------------------------------------------------------------------------------------------------


class PromptedEmbeddingSimilarityEvaluator(EmbeddingSimilarityEvaluator):
    """
    sentence-transformers' ``EmbeddingSimilarityEvaluator`` that encodes both sentences with one prompt.

    STS is symmetric, so both sides get the same prompt: e5's ``"query: "``, or the task instruction a CoDiEmb
    run trained the STS data with. sentence-transformers 6.2's evaluator takes no prompt argument (its
    ``InformationRetrievalEvaluator`` does). Model cards show it as "Semantic Similarity", with its prompt.

    Args:
        *args: Passed on to ``EmbeddingSimilarityEvaluator`` (``sentences1``, ``sentences2``, ``scores``, ...).
        prompt: A literal prompt prepended to both sentences.
        prompt_name: The name of a prompt stored in the model (``model.prompts``), used instead of ``prompt``.
        **kwargs: Passed on to ``EmbeddingSimilarityEvaluator``.

    Example:
        ::

            from sentence_transformers import SentenceTransformer
            from hf_codiemb.evaluation import PromptedEmbeddingSimilarityEvaluator

            model = SentenceTransformer("intfloat/multilingual-e5-small")
            evaluator = PromptedEmbeddingSimilarityEvaluator(
                ["A man is eating."], ["A man eats food."], [4.8], name="sts_dev", prompt="query: "
            )
            results = evaluator(model)
    """

    def __init__(self, *args: Any, prompt: str | None = None, prompt_name: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prompt = prompt
        self.prompt_name = prompt_name

    def embed_inputs(self, model: SentenceTransformer, sentences: Any, **kwargs: Any) -> np.ndarray:
        if self.prompt is not None:
            kwargs.setdefault("prompt", self.prompt)
        if self.prompt_name is not None:
            kwargs.setdefault("prompt_name", self.prompt_name)
        return super().embed_inputs(model, sentences, **kwargs)

    def get_config_dict(self) -> dict[str, Any]:
        """The parent's configuration plus the prompt, for the model card."""
        config = super().get_config_dict()
        for key in ("prompt", "prompt_name"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config


def sts_columns(data: Any) -> tuple[list[str], list[str], list[float]]:
    """Return ``(sentences1, sentences2, scores)`` from a Dataset, a column mapping or ``(s1, s2, y)`` triples."""
    if isinstance(data, (Dataset, Mapping)):
        sentences1, sentences2, scores = list(data["sentence1"]), list(data["sentence2"]), list(data["score"])
    else:
        triples = list(data)
        sentences1 = [triple[0] for triple in triples]
        sentences2 = [triple[1] for triple in triples]
        scores = [triple[2] for triple in triples]
    if not sentences1:
        raise ValueError("the STS evaluation set is empty")
    return sentences1, sentences2, [float(score) for score in scores]


def build_sts_evaluator(
    dataset_or_pairs: Any,
    name: str,
    *,
    batch_size: int = 32,
    prompt: str | None = None,
    prompt_name: str | None = None,
) -> EmbeddingSimilarityEvaluator:
    """An ``EmbeddingSimilarityEvaluator`` (cosine) for an STS set, usable as the trainer's evaluator."""
    sentences1, sentences2, scores = sts_columns(dataset_or_pairs)
    return PromptedEmbeddingSimilarityEvaluator(
        sentences1,
        sentences2,
        scores,
        batch_size=batch_size,
        main_similarity="cosine",
        name=name,
        write_csv=False,
        prompt=prompt,
        prompt_name=prompt_name,
    )


def evaluate_sts(
    model: SentenceTransformer,
    dataset_or_pairs: Any,
    name: str,
    *,
    batch_size: int = 32,
    prompt: str | None = None,
    prompt_name: str | None = None,
    epoch: float = -1,
    steps: int = -1,
) -> dict[str, float]:
    """Spearman (and Pearson) correlation between cosine similarities and gold scores.

    Args:
        model: the embedding model.
        dataset_or_pairs: a dataset or mapping with ``sentence1``, ``sentence2``, ``score`` columns, or an
            iterable of ``(sentence1, sentence2, score)`` triples.
        name: the set's name (used in logs).
        prompt / prompt_name: a prompt for both sides (STS is symmetric; e5 models use ``"query: "``).
        epoch / steps: when the evaluation happens (``0``/``0``: before training; ``-1``: after it); the model card
            data (``model.model_card_data``) records the metrics at this point of its training logs.

    Returns:
        ``{"spearman_cosine", "pearson_cosine", "num_pairs"}``.
    """
    evaluator = build_sts_evaluator(
        dataset_or_pairs, name, batch_size=batch_size, prompt=prompt, prompt_name=prompt_name
    )
    metrics = evaluator(model, epoch=epoch, steps=steps)
    prefix = f"{name}_" if name else ""
    return {
        "spearman_cosine": float(metrics[f"{prefix}spearman_cosine"]),
        "pearson_cosine": float(metrics[f"{prefix}pearson_cosine"]),
        "num_pairs": len(evaluator.scores),
    }


# --------------------------------------------------------------------------------------------------------------
# IR
# --------------------------------------------------------------------------------------------------------------


class ExcludingInformationRetrievalEvaluator(InformationRetrievalEvaluator):
    """
    sentence-transformers' ``InformationRetrievalEvaluator`` that ignores given (query, document) hits, as BEIR
    ignores a document whose id equals the query's.

    Excluded documents neither count as hits nor take a rank. Retrieval goes deep enough that every cutoff still
    sees ``k`` candidates after the exclusions. Needed for IR tasks built from STS pairs, whose corpus holds the
    query sentences themselves. Without exclusions it computes exactly the parent's metrics. Model cards show it
    as "Information Retrieval" (task type ``information-retrieval``).

    Args:
        *args: Passed on to ``InformationRetrievalEvaluator`` (``queries``, ``corpus``, ``relevant_docs``, ...).
        excluded: ``{query_id: {corpus_id, ...}}``, the documents never ranked for that query.
        **kwargs: Passed on to ``InformationRetrievalEvaluator``.

    Example:
        ::

            from hf_codiemb.evaluation import ExcludingInformationRetrievalEvaluator

            evaluator = ExcludingInformationRetrievalEvaluator(
                queries={"q1": "a cat sits"},
                corpus={"q1-copy": "a cat sits", "d1": "a kitten is sitting", "d2": "stocks fell"},
                relevant_docs={"q1": {"d1"}},
                excluded={"q1": {"q1-copy"}},
                name="paraphrase_ir",
            )
    """

    def __init__(self, *args: Any, excluded: Mapping[str, set[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.excluded = {qid: set(cids) for qid, cids in (excluded or {}).items() if cids}

    @property
    def description(self) -> str:
        return "Information Retrieval"

    def get_config_dict(self) -> dict[str, Any]:
        """The parent's configuration plus how many (query, document) pairs are excluded, for the model card."""
        config = super().get_config_dict()
        if self.excluded:
            config["excluded_pairs"] = sum(len(cids) for cids in self.excluded.values())
        return config

    def compute_all_metrics(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        padding = max((len(cids) for cids in self.excluded.values()), default=0)
        if not padding:
            return super().compute_all_metrics(*args, **kwargs)
        original_map_at_k = self.map_at_k
        deepest = max(self.mrr_at_k + self.ndcg_at_k + self.accuracy_at_k + self.precision_recall_at_k + self.map_at_k)
        self.map_at_k = [*original_map_at_k, deepest + padding]  # only to retrieve deeper; dropped below
        try:
            scores = super().compute_all_metrics(*args, **kwargs)
        finally:
            self.map_at_k = original_map_at_k
        for values in scores.values():
            values["map@k"] = {k: v for k, v in values["map@k"].items() if k in original_map_at_k}
        return scores

    def compute_metrics(self, queries_result_list: list[object]) -> dict[str, Any]:
        filtered = []
        for query_itr, hits in enumerate(queries_result_list):
            excluded = self.excluded.get(self.queries_ids[query_itr])
            filtered.append([hit for hit in hits if hit["corpus_id"] not in excluded] if excluded else hits)
        return super().compute_metrics(filtered)


def identical_text_exclusions(
    queries: Mapping[str, str], corpus: Mapping[str, str], relevant: Mapping[str, set[str]]
) -> dict[str, set[str]]:
    """Corpus ids whose text equals the query's text and that are not relevant to it."""
    ids_by_text: dict[str, set[str]] = {}
    for cid, text in corpus.items():
        ids_by_text.setdefault(text, set()).add(cid)
    exclusions = {}
    for qid, text in queries.items():
        same = ids_by_text.get(text, set()) - set(relevant.get(qid, ()))
        if same:
            exclusions[qid] = same
    return exclusions


def build_ir_evaluator(
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    relevant: Mapping[str, set[str]],
    name: str,
    *,
    query_prompt: str | None = None,
    corpus_prompt: str | None = None,
    query_prompt_name: str | None = None,
    corpus_prompt_name: str | None = None,
    ignore_identical_text: bool = True,
    batch_size: int = 32,
) -> InformationRetrievalEvaluator:
    """An ``InformationRetrievalEvaluator`` reporting nDCG@10, MRR@10 and Recall@100 (cosine via the model)."""
    if not any(relevant.get(qid) for qid in queries):
        raise ValueError(f"IR set {name!r}: no query has a relevant document")
    missing = {cid for cids in relevant.values() for cid in cids} - set(corpus)
    if missing:
        raise ValueError(f"IR set {name!r}: relevant documents missing from the corpus: {sorted(missing)[:5]}")
    excluded = identical_text_exclusions(queries, corpus, relevant) if ignore_identical_text else {}
    return ExcludingInformationRetrievalEvaluator(
        queries=dict(queries),
        corpus=dict(corpus),
        relevant_docs={qid: set(cids) for qid, cids in relevant.items()},
        mrr_at_k=[IR_MRR_AT_K],
        ndcg_at_k=[IR_NDCG_AT_K],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[10, IR_RECALL_AT_K],
        map_at_k=[IR_RECALL_AT_K],
        batch_size=batch_size,
        name=name,
        write_csv=False,
        query_prompt=query_prompt,
        corpus_prompt=corpus_prompt,
        query_prompt_name=query_prompt_name,
        corpus_prompt_name=corpus_prompt_name,
        excluded=excluded,
    )


def evaluate_ir(
    model: SentenceTransformer,
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    relevant: Mapping[str, set[str]],
    name: str,
    *,
    query_prompt: str | None = None,
    corpus_prompt: str | None = None,
    query_prompt_name: str | None = None,
    corpus_prompt_name: str | None = None,
    ignore_identical_text: bool = True,
    batch_size: int = 32,
    epoch: float = -1,
    steps: int = -1,
) -> dict[str, float]:
    """Retrieval quality of ``model`` on one IR set (binary relevance, the model's similarity function).

    Args:
        queries: ``{qid: text}``; queries without a relevant document are skipped.
        corpus: ``{cid: text}``.
        relevant: ``{qid: {cid, ...}}``.
        name: the set's name (used in logs).
        query_prompt / corpus_prompt: literal prompts, e.g. ``"query: "`` / ``"passage: "`` for e5 models;
            ``*_prompt_name`` select prompts stored in the model instead.
        ignore_identical_text: do not rank a corpus document whose text equals the query's (unless it is
            relevant), as BEIR ignores identical query/document ids; needed for STS-derived tasks, whose corpus
            holds the query sentences themselves.
        epoch / steps: when the evaluation happens, for the model card data (see :func:`evaluate_sts`).

    Returns:
        ``{"ndcg@10", "mrr@10", "recall@100", "recall@10", "accuracy@1", "num_queries", "num_corpus"}``.
    """
    evaluator = build_ir_evaluator(
        queries,
        corpus,
        relevant,
        name,
        query_prompt=query_prompt,
        corpus_prompt=corpus_prompt,
        query_prompt_name=query_prompt_name,
        corpus_prompt_name=corpus_prompt_name,
        ignore_identical_text=ignore_identical_text,
        batch_size=batch_size,
    )
    metrics = evaluator(model, epoch=epoch, steps=steps)
    function = model.similarity_fn_name
    prefix = f"{name}_{function}_" if name else f"{function}_"
    return {
        f"ndcg@{IR_NDCG_AT_K}": float(metrics[f"{prefix}ndcg@{IR_NDCG_AT_K}"]),
        f"mrr@{IR_MRR_AT_K}": float(metrics[f"{prefix}mrr@{IR_MRR_AT_K}"]),
        f"recall@{IR_RECALL_AT_K}": float(metrics[f"{prefix}recall@{IR_RECALL_AT_K}"]),
        "recall@10": float(metrics[f"{prefix}recall@10"]),
        "accuracy@1": float(metrics[f"{prefix}accuracy@1"]),
        "num_queries": len(evaluator.queries_ids),
        "num_corpus": len(evaluator.corpus_ids),
    }


# --------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------


def _as_matrix(embeddings: Any) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"need a 2-D matrix of at least 2 embeddings, got shape {matrix.shape}")
    return matrix


def _normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.clip(norms, 1e-12, None)


def anisotropy(embeddings: Any) -> float:
    """Mean cosine similarity over all pairs of distinct rows (0 = isotropic, 1 = all embeddings parallel).

    Pass embeddings of distinct sentences: duplicates inflate the value.
    """
    unit = _normalize(_as_matrix(embeddings))
    count = unit.shape[0]
    total = unit.sum(axis=0)
    # sum_{i != j} <u_i, u_j> = ||sum_i u_i||^2 - sum_i ||u_i||^2
    off_diagonal = float(total @ total) - float((unit * unit).sum())
    return off_diagonal / (count * (count - 1))


def _singular_values(embeddings: Any) -> np.ndarray:
    return np.linalg.svd(_as_matrix(embeddings), compute_uv=False)


def effective_rank(embeddings: Any) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp`` of the Shannon entropy of the normalised singular values.

    Computed on the embedding matrix as given (not centred), so a shared direction lowers it.
    """
    singular = _singular_values(embeddings)
    singular = singular[singular > 0]
    probabilities = singular / singular.sum()
    return float(np.exp(-(probabilities * np.log(probabilities)).sum()))


def condition_number(embeddings: Any) -> float:
    """Largest over smallest non-zero singular value (non-zero: above numpy's ``matrix_rank`` tolerance)."""
    matrix = _as_matrix(embeddings)
    singular = np.linalg.svd(matrix, compute_uv=False)
    tolerance = singular.max() * max(matrix.shape) * np.finfo(matrix.dtype).eps
    nonzero = singular[singular > tolerance]
    return float(nonzero.max() / nonzero.min())


def alignment(embeddings_x: Any, embeddings_y: Any, alpha: float = 2.0) -> float:
    """Alignment (Wang & Isola 2020): mean ``||f(x) - f(y)||^alpha`` over positive pairs, on L2-normalised rows."""
    x, y = _normalize(_as_matrix(embeddings_x)), _normalize(_as_matrix(embeddings_y))
    if x.shape != y.shape:
        raise ValueError(f"positive pairs need matching shapes, got {x.shape} and {y.shape}")
    return float((np.linalg.norm(x - y, axis=1) ** alpha).mean())


def uniformity(embeddings: Any, t: float = 2.0) -> float:
    """Uniformity (Wang & Isola 2020): ``log mean_{i<j} exp(-t ||f(x_i) - f(x_j)||^2)`` on L2-normalised rows."""
    unit = _normalize(_as_matrix(embeddings))
    squared = np.clip(2.0 - 2.0 * unit @ unit.T, 0.0, None)  # ||a - b||^2 for unit vectors
    upper = squared[np.triu_indices(unit.shape[0], k=1)]
    values = -t * upper
    peak = values.max()
    return float(peak + np.log(np.exp(values - peak).mean()))  # stable log-mean-exp


def geometry_metrics(
    model: SentenceTransformer,
    texts: Sequence[str],
    positive_pairs: Sequence[tuple[str, str]] | None = None,
    *,
    batch_size: int = 32,
    prompt: str | None = None,
) -> dict[str, float]:
    """Geometry of ``model``'s embeddings of ``texts`` (deduplicated), plus alignment over ``positive_pairs``."""
    unique = list(dict.fromkeys(texts))
    embeddings = model.encode(unique, batch_size=batch_size, convert_to_numpy=True, prompt=prompt)
    results = {
        "anisotropy": anisotropy(embeddings),
        "effective_rank": effective_rank(embeddings),
        "condition_number": condition_number(embeddings),
        "uniformity": uniformity(embeddings),
        "num_texts": len(unique),
    }
    if positive_pairs:
        first = model.encode(
            [a for a, _ in positive_pairs], batch_size=batch_size, convert_to_numpy=True, prompt=prompt
        )
        second = model.encode(
            [b for _, b in positive_pairs], batch_size=batch_size, convert_to_numpy=True, prompt=prompt
        )
        results["alignment"] = alignment(first, second)
        results["num_positive_pairs"] = len(positive_pairs)
    return results


# --------------------------------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------------------------------


def ir_set_arguments(name: str, spec: IREvalSet | tuple) -> dict[str, Any]:
    """The :func:`evaluate_ir` arguments of an :class:`~hf_codiemb.data.IREvalSet` or ``(queries, corpus,
    relevant)``."""
    if isinstance(spec, IREvalSet):
        return spec.evaluator_arguments()
    if isinstance(spec, tuple) and len(spec) == 3:
        queries, corpus, relevant = spec
        return {"queries": queries, "corpus": corpus, "relevant": relevant}
    raise TypeError(f"IR set {name!r}: expected an IREvalSet or (queries, corpus, relevant), got {type(spec).__name__}")


def sts_set_arguments(spec: Any, default_prompt: str | None) -> tuple[Any, str | None]:
    """``(data, prompt)`` of an :class:`~hf_codiemb.data.STSEvalSet` (its own prompt, ``None`` included: the prompt
    training derives for it), or of an STS dataset / ``(s1, s2, score)`` triples (``default_prompt``)."""
    if isinstance(spec, STSEvalSet):
        return spec.data, spec.prompt
    return spec, default_prompt


def _default_geometry_inputs(
    sts_sets: Mapping[str, Any], limit: int = 2000
) -> tuple[list[str], list[tuple[str, str]]]:
    """Sentences of the STS sets (up to ``limit``) and, as positive pairs, their pairs scored in the top 20%
    of each set's observed score range."""
    texts: list[str] = []
    pairs: list[tuple[str, str]] = []
    for spec in sts_sets.values():
        sentences1, sentences2, scores = sts_columns(sts_set_arguments(spec, None)[0])
        texts.extend(sentences1 + sentences2)
        low, high = min(scores), max(scores)
        threshold = high - 0.2 * (high - low)
        pairs.extend((a, b) for a, b, y in zip(sentences1, sentences2, scores) if y >= threshold and high > low)
    return list(dict.fromkeys(texts))[:limit], pairs[:limit]


def evaluate_model(
    model: SentenceTransformer,
    sts_sets: Mapping[str, Any] | None = None,
    ir_sets: Mapping[str, Any] | None = None,
    geometry_texts: Sequence[str] | None = None,
    *,
    geometry_pairs: Sequence[tuple[str, str]] | None = None,
    sts_prompt: str | None = None,
    batch_size: int = 32,
    epoch: float = -1,
    steps: int = -1,
) -> dict[str, Any]:
    """Evaluate ``model`` on every STS and IR set and measure its embedding geometry.

    Every STS and IR evaluator stores its metrics in ``model.model_card_data`` (sentence-transformers'
    ``store_metrics_in_model_card_data``), so a model saved afterwards has them in its card's Evaluation section.

    Args:
        sts_sets: ``{name: STSEvalSet}`` (a set encoded with its own prompt, e.g. its task instruction), or
            ``{name: STS dataset or (s1, s2, score) triples}``.
        ir_sets: ``{name: IREvalSet}`` or ``{name: (queries, corpus, relevant)}``.
        geometry_texts: texts for the geometry metrics; default: the distinct sentences of the STS sets
            (at most 2,000). With neither, no geometry is computed.
        geometry_pairs: positive pairs for alignment; default: STS pairs scored in the top 20% of their set's
            score range (only when ``geometry_texts`` is not given either).
        sts_prompt: a prompt used for STS sentences without a prompt of their own and for the geometry texts
            (e.g. ``"query: "`` for e5).
        epoch / steps: when the evaluation happens, for the card's training logs (``0``/``0``: before training).

    Returns:
        ``{"sts": {name: metrics}, "ir": {name: metrics}, "geometry": metrics}``.
    """
    sts_sets = sts_sets or {}
    ir_sets = ir_sets or {}
    results: dict[str, Any] = {"sts": {}, "ir": {}, "geometry": {}}
    for name, spec in sts_sets.items():
        data, prompt = sts_set_arguments(spec, sts_prompt)
        results["sts"][name] = evaluate_sts(
            model, data, name, batch_size=batch_size, prompt=prompt, epoch=epoch, steps=steps
        )
        logger.info("STS %s: Spearman %.4f", name, results["sts"][name]["spearman_cosine"])
    for name, spec in ir_sets.items():
        results["ir"][name] = evaluate_ir(
            model, name=name, batch_size=batch_size, epoch=epoch, steps=steps, **ir_set_arguments(name, spec)
        )
        logger.info("IR %s: nDCG@10 %.4f", name, results["ir"][name][f"ndcg@{IR_NDCG_AT_K}"])
    if geometry_texts is None and sts_sets:
        geometry_texts, default_pairs = _default_geometry_inputs(sts_sets)
        geometry_pairs = geometry_pairs if geometry_pairs is not None else default_pairs
    if geometry_texts:
        results["geometry"] = geometry_metrics(
            model, geometry_texts, geometry_pairs, batch_size=batch_size, prompt=sts_prompt
        )
    return results


def evaluate_at_dimensions(
    model: SentenceTransformer,
    dims: Sequence[int],
    sts_sets: Mapping[str, Any] | None = None,
    ir_sets: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[int, dict[str, Any]]:
    """:func:`evaluate_model` with the embeddings cut to each of ``dims`` leading dimensions (Matryoshka models;
    ``model.truncate_dim``, which every evaluator's encoding honours), without geometry and without touching the
    model card's evaluation.

    Returns:
        ``{dim: {"sts": {name: metrics}, "ir": {name: metrics}}}``, largest dimension first.
    """
    card_results = dict(getattr(model.model_card_data, "eval_results_dict", {}) or {})
    truncate_dim = model.truncate_dim
    results: dict[int, dict[str, Any]] = {}
    try:
        for dim in sorted(dims, reverse=True):
            model.truncate_dim = dim
            scores = evaluate_model(model, sts_sets, ir_sets, geometry_texts=[], **kwargs)
            results[dim] = {"sts": scores["sts"], "ir": scores["ir"]}
    finally:
        model.truncate_dim = truncate_dim
        model.model_card_data.eval_results_dict = card_results
    return results


def format_dimensions_table(results: Mapping[int, Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`evaluate_at_dimensions`' results: one row per dimension, one column per dev set
    (STS: Spearman of cosine similarities, IR: nDCG@10)."""
    first = next(iter(results.values()), {"sts": {}, "ir": {}})
    columns = [("sts", name, "spearman_cosine") for name in first["sts"]]
    columns += [("ir", name, f"ndcg@{IR_NDCG_AT_K}") for name in first["ir"]]
    header = "| dim | " + " | ".join(f"{name} {metric}" for _, name, metric in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for dim, scores in results.items():
        lines.append(f"| {dim} | " + " | ".join(f"{scores[task][name][metric]:.4f}" for task, name, metric in columns) + " |")
    return "\n".join(lines) + "\n"


def flatten_results(results: Mapping[str, Any], separator: str = "/") -> dict[str, float]:
    """Flatten nested results to ``{"sts/<set>/spearman_cosine": value, "geometry/anisotropy": value, ...}``."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_results(value, separator).items():
                flat[f"{key}{separator}{sub_key}"] = sub_value
        else:
            flat[str(key)] = value
    return flat


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = float(value)
    if math.isnan(number):
        return "nan"
    return f"{number:.4f}" if abs(number) < 1000 else f"{number:.4g}"


def format_results_table(results: Mapping[str, Any]) -> str:
    """A two-column Markdown table (metric, value) of (possibly nested) results."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {key} | {_format_value(value)} |" for key, value in flatten_results(results).items()]
    return "\n".join(lines) + "\n"


def format_before_after_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """A Markdown table with columns metric, before, after, delta (= after - before) over the union of metrics.

    Nested results are flattened first; a metric missing on one side leaves its cells empty.
    """
    flat_before, flat_after = flatten_results(before), flatten_results(after)
    metrics = list(dict.fromkeys([*flat_before, *flat_after]))
    lines = ["| metric | before | after | delta |", "|---|---|---|---|"]
    for metric in metrics:
        old, new = flat_before.get(metric), flat_after.get(metric)
        delta = None
        if _is_real(old) and _is_real(new):
            delta = float(new) - float(old)
        delta_text = _format_delta(old, new, delta)
        lines.append(f"| {metric} | {_format_value(old)} | {_format_value(new)} | {delta_text} |")
    return "\n".join(lines) + "\n"


def _format_delta(old: Any, new: Any, delta: float | None) -> str:
    if delta is None:
        return ""
    if isinstance(old, (int, np.integer)) and isinstance(new, (int, np.integer)):
        return f"{int(new) - int(old):+d}"
    return f"{delta:+.4f}" if abs(delta) < 1000 else f"{delta:+.4g}"


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def write_results(results: Mapping[str, Any], output_dir: str | os.PathLike[str]) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``eval_results.json`` (the nested results) and ``eval_results.md`` (a Markdown table).

    Returns:
        The paths of the two files.
    """
    directory = pathlib.Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = directory / "eval_results.json", directory / "eval_results.md"
    json_path.write_text(json.dumps(_to_json(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    markdown_path.write_text("# Evaluation results\n\n" + format_results_table(results), encoding="utf-8")
    logger.info("Wrote %s and %s", json_path, markdown_path)
    return json_path, markdown_path
