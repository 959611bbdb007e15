"""BEIR folders: loading (titles, qrels scores, missing ids), evaluation sets, training records, recipe wiring."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from beir_fixtures import CORPUS, QUERIES, document_text, write_beir_folder, write_qrels

from hf_codiemb.data import DataFormatError
from hf_codiemb.data.beir import (
    BeirSpec,
    beir_ir_eval_set,
    beir_ir_train_dataset,
    load_beir,
    load_beir_corpus,
    parse_beir_spec,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def beir(tmp_path) -> Path:
    return write_beir_folder(tmp_path / "mini")


def test_titles_are_joined_to_text_as_beir_does(beir):
    corpus = load_beir_corpus(beir / "corpus.jsonl")
    assert corpus["c-temp"] == "Coffee brewing " + CORPUS["c-temp"][1]
    assert corpus["c-grind"] == CORPUS["c-grind"][1]  # empty title: the text alone, no leading space
    assert corpus["c-bread"] == CORPUS["c-bread"][1]  # no title key
    assert corpus == {doc_id: document_text(doc_id) for doc_id in CORPUS}


def test_split_keeps_its_queries_and_only_scores_above_zero_are_relevant(beir):
    train = load_beir(beir, "train")
    assert train.name == "mini_train"
    assert set(train.queries) == {"q-temp", "q-store", "q-bread"}  # not q-cat (dev) nor the unjudged query
    assert train.qrels["q-temp"] == {"c-temp": 1, "c-tea": 0}
    assert train.relevant() == {"q-temp": {"c-temp"}, "q-store": {"c-store", "c-grind"}, "q-bread": {"c-bread"}}
    assert len(train.corpus) == len(CORPUS)
    dev = load_beir(beir, "dev")
    assert dev.relevant() == {"q-cat": {"c-cat"}}


def test_qrels_without_header_and_missing_split(beir):
    write_qrels(beir / "qrels" / "test.tsv", [("q-cat", "c-cat", 1)], header=False)
    assert load_beir(beir, "test").relevant() == {"q-cat": {"c-cat"}}
    with pytest.raises(FileNotFoundError, match=r"qrels/nope.tsv.*available splits: \['dev', 'test', 'train'\]"):
        load_beir(beir, "nope")


@pytest.mark.parametrize(
    "row, field, problem",
    [
        (("q-temp", "c-missing", 1), "corpus-id", "'c-missing' is not in the corpus file"),
        (("q-missing", "c-temp", 1), "query-id", "'q-missing' is not in the queries file"),
        (("q-temp", "c-missing", 0), "corpus-id", "'c-missing' is not in the corpus file"),  # judged non-relevant: still checked
        (("q-temp", "c-tea", "high"), "score", "must be an integer relevance grade, got 'high'"),
    ],
)
def test_bad_qrels_rows_name_file_line_and_field(beir, row, field, problem):
    write_qrels(beir / "qrels" / "train.tsv", [("q-temp", "c-temp", 1), row])
    with pytest.raises(DataFormatError, match=rf"qrels/train.tsv, line 3, field '{field}': {problem}"):
        load_beir(beir, "train")


def test_qrels_line_with_wrong_field_count(beir):
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq-temp c-temp 1\n")
    with pytest.raises(DataFormatError, match=r"train.tsv, line 2: expected 3 tab-separated fields"):
        load_beir(beir, "train")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"_id": "x", "title": "t"', r"corpus.jsonl, line 17: invalid JSON"),
        ('{"title": "t", "text": "x"}', r"corpus.jsonl, line 17, field '_id': missing"),
        ('{"_id": "x", "title": "t"}', r"corpus.jsonl, line 17, field 'text': missing"),
        ('{"_id": "x", "text": 3}', r"corpus.jsonl, line 17, field 'text': must be a string"),
        ('{"_id": "c-cat", "text": "again"}', r"corpus.jsonl, line 17, field '_id': duplicate id 'c-cat' \(first on line 11\)"),
        ('{"_id": "x", "title": " ", "text": ""}', r"corpus.jsonl, line 17, field 'text': is empty"),
    ],
)  # fmt: skip
def test_bad_corpus_lines_name_file_line_and_field(beir, line, message):
    with (beir / "corpus.jsonl").open("a") as handle:
        handle.write(line + "\n")
    with pytest.raises(DataFormatError, match=message):
        load_beir(beir, "train")


def test_empty_query_text_is_left_out_with_a_warning(beir, caplog):
    with (beir / "queries.jsonl").open("a") as handle:
        handle.write(json.dumps({"_id": "q-empty", "text": ""}) + "\n")
    write_qrels(beir / "qrels" / "train.tsv", [("q-temp", "c-temp", 1), ("q-empty", "c-cat", 1)])
    train = load_beir(beir, "train")
    assert train.relevant() == {"q-temp": {"c-temp"}}
    assert "1 queries have an empty text (lines 6)" in caplog.text


def test_parse_beir_spec():
    assert parse_beir_spec("../shared/data/scifact:dev") == BeirSpec("../shared/data/scifact", "dev", None)
    spec = parse_beir_spec("../shared/data/scifact:train:outputs/mined/scifact.jsonl")
    assert (spec.folder, spec.split, spec.negatives) == ("../shared/data/scifact", "train", "outputs/mined/scifact.jsonl")
    with pytest.raises(ValueError, match=r"'scifact' must be FOLDER:SPLIT"):
        parse_beir_spec("scifact")
    with pytest.raises(ValueError, match=r"must be FOLDER:SPLIT, e.g."):
        parse_beir_spec("scifact:train:negatives.jsonl", allow_negatives=False)


def _ndcg_at_10(ranking: list[str], relevant: set[str]) -> float:
    dcg = sum(1 / math.log2(rank + 2) for rank, doc_id in enumerate(ranking[:10]) if doc_id in relevant)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(relevant), 10)))
    return dcg / ideal


def test_eval_set_scores_like_a_hand_computed_ndcg_with_the_prompts(beir, tmp_path):
    from tiny_models import make_tiny_model

    from hf_codiemb.evaluation import evaluate_model

    model = make_tiny_model(tmp_path / "tiny")
    train = load_beir(beir, "train")
    eval_set = beir_ir_eval_set(train, query_prompt="query: ", corpus_prompt="passage: ")
    assert eval_set.relevant == train.relevant() and eval_set.corpus == train.corpus
    results = evaluate_model(model, ir_sets={"mini": eval_set})["ir"]["mini"]

    doc_ids = list(train.corpus)
    docs = model.encode(["passage: " + train.corpus[d] for d in doc_ids], normalize_embeddings=True)
    expected = []
    for query_id, relevant in train.relevant().items():
        query = model.encode(["query: " + train.queries[query_id]], normalize_embeddings=True)[0]
        ranking = [doc_ids[i] for i in np.argsort(-(docs @ query), kind="stable")]
        expected.append(_ndcg_at_10(ranking, relevant))
    assert results["ndcg@10"] == pytest.approx(np.mean(expected), abs=1e-5)
    assert results["num_queries"] == 3 and results["num_corpus"] == len(CORPUS)


def _write_negatives(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_train_records_take_qrels_positives_and_mined_negatives(beir, tmp_path):
    train = load_beir(beir, "train")
    negatives = _write_negatives(tmp_path / "neg.jsonl", [
        {"query_id": "q-temp", "query": QUERIES["q-temp"], "negatives": [document_text("c-tea"), document_text("c-temp")]},
        {"query": QUERIES["q-store"], "negatives": [document_text("c-bitter")]},  # matched by text
    ])  # fmt: skip
    records = beir_ir_train_dataset(train, negatives)
    by_query = {row["query"]: row for row in records}
    # the score-0 judgement (c-tea) is not a positive; a mined "negative" equal to a positive is dropped
    assert by_query[QUERIES["q-temp"]]["positives"] == [document_text("c-temp")]
    assert by_query[QUERIES["q-temp"]]["negatives"] == [document_text("c-tea")]
    assert sorted(by_query[QUERIES["q-store"]]["positives"]) == sorted(map(document_text, ["c-grind", "c-store"]))
    assert by_query[QUERIES["q-bread"]]["negatives"] == []
    # with hard negatives required, the query without any is left out
    assert set(beir_ir_train_dataset(train, negatives, require_negatives=True)["query"]) == {
        QUERIES["q-temp"], QUERIES["q-store"]
    }


def test_negatives_file_errors(beir, tmp_path):
    train = load_beir(beir, "train")
    with pytest.raises(FileNotFoundError, match=r"mined negatives file not found: .*codiemb mine --beir"):
        beir_ir_train_dataset(train, tmp_path / "absent.jsonl")
    other_split = _write_negatives(tmp_path / "dev.jsonl", [{"query_id": "q-temp", "negatives": []}, {"query_id": "q-cat", "negatives": []}])
    with pytest.raises(DataFormatError, match=r"dev.jsonl, line 2, field 'query_id': 'q-cat' is not judged in mini_train"):
        beir_ir_train_dataset(train, other_split)
    bad = _write_negatives(tmp_path / "bad.jsonl", [{"query_id": "q-temp", "negatives": "text"}])
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 1, field 'negatives'"):
        beir_ir_train_dataset(train, bad)  # fmt: skip


def test_recipe_fields_feed_training_and_evaluation(beir, tmp_path):
    from hf_codiemb.arguments import DataArguments, ModelArguments
    from hf_codiemb.pipeline import load_eval_sets, load_training_data

    negatives = _write_negatives(tmp_path / "neg.jsonl", [
        {"query_id": q, "negatives": [document_text("c-moon"), document_text("c-rain")]} for q in ("q-temp", "q-store", "q-bread")
    ])  # fmt: skip
    data_args = DataArguments(ir_train_beir=[f"{beir}:train:{negatives}"], ir_eval_beir=[f"{beir}:dev"])
    datasets, tasks, _ = load_training_data(data_args, num_negatives=2)
    assert tasks == {"mini_train": "ir"}
    assert datasets["mini_train"].column_names == ["query", "positives", "negatives"]
    assert len(datasets["mini_train"]) == 3
    _, ir_sets = load_eval_sets(data_args, ModelArguments(query_prompt="query: ", passage_prompt="passage: "))
    assert set(ir_sets) == {"mini_dev"}
    assert ir_sets["mini_dev"].queries == {"q-cat": QUERIES["q-cat"]}
    assert (ir_sets["mini_dev"].query_prompt, ir_sets["mini_dev"].corpus_prompt) == ("query: ", "passage: ")


def _raw_relevant(folder: Path, split: str) -> tuple[int, dict[str, set[str]]]:
    """Judgement count and ``{query: {relevant docs}}`` read straight from the files (plain csv and json)."""
    texts = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            texts[record["_id"]] = record["text"]
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t") if row][1:]  # a header line
    relevant: dict[str, set[str]] = {}
    for query_id, doc_id, score in rows:
        if int(score) > 0 and texts[query_id].strip():
            relevant.setdefault(query_id, set()).add(doc_id)
    return len(rows), relevant


@pytest.mark.skipif(
    not all((SHARED_DATA / name).is_dir() for name in ("scifact", "cmrc2018")),
    reason="../shared/data/scifact or ../shared/data/cmrc2018 is absent",
)
def test_shared_scifact_and_cmrc2018_load():
    for folder, split in ((SHARED_DATA / "scifact", "dev"), (SHARED_DATA / "cmrc2018", "train")):
        dataset = load_beir(folder, split)
        judged, relevant = _raw_relevant(folder, split)
        assert sum(map(len, dataset.qrels.values())) == judged
        assert dataset.relevant() == relevant
        with (folder / "corpus.jsonl").open(encoding="utf-8") as handle:
            assert set(dataset.corpus) == {json.loads(line)["_id"] for line in handle if line.strip()}
    # Two CMRC questions have an empty text: judged, but left out of the evaluation queries.
    cmrc = load_beir(SHARED_DATA / "cmrc2018", "train")
    assert len(cmrc.qrels) - len(cmrc.relevant()) == 2
