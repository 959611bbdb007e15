"""Tests of hf_codiemb.data: every loader path, every bad-input case, STS-derived tasks, demo data."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
from datasets import Dataset

from hf_codiemb.data import (
    DataFormatError,
    demo_data_path,
    ir_task_from_sts_pairs,
    ir_train_from_sts_pairs,
    labelled_pairs_from_ir_records,
    load_dataset_for_task,
    load_ir_dataset,
    load_sts_dataset,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared benchmark data not found at {SHARED_DATA} (../shared/data)"
)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records))
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


IR_OK = {"task": "ir", "query": "q1", "positives": ["p1", "p2"], "negatives": ["n1"]}


def assert_error(excinfo: pytest.ExceptionInfo, source: Path | str, line: int | None, field: str | None) -> None:
    """The error carries source, line and field, and its message names each of them."""
    error = excinfo.value
    assert error.source == str(source)
    assert error.line == line
    assert error.field == field
    message = str(error)
    assert message.startswith(str(source))
    if line is not None:
        assert f"line {line}" in message
    if field is not None:
        assert f"field {field!r}" in message


# ------------------------------------------------------------------------------------------------ IR: good input


def test_ir_unified_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "ir.jsonl",
        [IR_OK, "", {"query": "q2", "positives": ["p3"], "negatives": []}, {"query": "q3", "positives": ["p4"]}],
    )
    dataset = load_ir_dataset(path)
    assert dataset.column_names == ["query", "positives", "negatives"]
    assert dataset["query"] == ["q1", "q2", "q3"]
    assert dataset["positives"] == [["p1", "p2"], ["p3"], ["p4"]]
    assert dataset["negatives"] == [["n1"], [], []]


def test_ir_scores_kept_only_when_consistent(tmp_path):
    with_scores = dict(IR_OK, positive_scores=[1.0, 0.5], negative_scores=[0.1])
    both = load_ir_dataset(write_jsonl(tmp_path / "a.jsonl", [with_scores, with_scores]))
    assert both.column_names == ["query", "positives", "negatives", "positive_scores", "negative_scores"]
    assert both[0]["positive_scores"] == [1.0, 0.5]
    mixed = load_ir_dataset(write_jsonl(tmp_path / "b.jsonl", [with_scores, IR_OK]))
    assert mixed.column_names == ["query", "positives", "negatives"]


def test_ir_instruction_dropped_unless_asked(tmp_path):
    path = write_jsonl(tmp_path / "ir.jsonl", [dict(IR_OK, instruction="Find the answer")] * 2)
    assert "instruction" not in load_ir_dataset(path).column_names
    assert load_ir_dataset(path, keep_instruction=True)["instruction"] == ["Find the answer"] * 2


def test_ir_flagembedding_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "fe.jsonl", [{"query": "q", "pos": ["p"], "neg": ["n1", "n2"], "prompt": "Represent: "}]
    )
    dataset = load_ir_dataset(path)
    assert dataset.column_names == ["query", "positives", "negatives"]
    assert dataset[0] == {"query": "q", "positives": ["p"], "negatives": ["n1", "n2"]}
    assert load_ir_dataset(path, format="flagembedding")[0]["positives"] == ["p"]


def test_ir_dataset_input_and_max_records():
    source = Dataset.from_dict(
        {"query": ["a", "b", "c"], "positives": [["x"], ["y"], ["z"]], "negatives": [[], ["u"], []]}
    )
    dataset = load_ir_dataset(source, max_records=2)
    assert dataset["query"] == ["a", "b"]
    flag = Dataset.from_dict({"query": ["a"], "pos": [["x"]], "neg": [["n"]]})
    assert load_ir_dataset(flag)[0] == {"query": "a", "positives": ["x"], "negatives": ["n"]}


def test_dispatcher(tmp_path):
    ir = load_dataset_for_task("ir", write_jsonl(tmp_path / "ir.jsonl", [IR_OK]))
    assert ir.column_names == ["query", "positives", "negatives"]
    sts = load_dataset_for_task("STS", write_text(tmp_path / "s.tsv", "a\tb\t3.5\n"))
    assert sts[0] == {"sentence1": "a", "sentence2": "b", "score": 3.5}
    with pytest.raises(ValueError, match="unknown task 'nli'"):
        load_dataset_for_task("nli", tmp_path / "ir.jsonl")


# ------------------------------------------------------------------------------------------------ IR: bad input


@pytest.mark.parametrize(
    "record, field, fragment",
    [
        ({"positives": ["p"]}, "query", "missing"),
        ({"query": "   ", "positives": ["p"]}, "query", "non-empty string"),
        ({"query": 3, "positives": ["p"]}, "query", "must be a string, got int"),
        ({"query": "q", "positives": []}, "positives", "must be a non-empty list of strings, got []"),
        ({"query": "q", "positives": "p"}, "positives", "must be a non-empty list of strings, got str"),
        ({"query": "q", "positives": ["p", 7]}, "positives", "item 1 must be a string, got int"),
        ({"query": "q", "positives": [""]}, "positives", "item 0 must be a non-empty string"),
        ({"query": "q", "positives": ["p"], "negatives": "n"}, "negatives", "must be a list of strings"),
        (
            {"query": "q", "positives": ["p"], "negatives": [None]},
            "negatives",
            "item 0 must be a string, got NoneType",
        ),
        ({"task": "sts", "query": "q", "positives": ["p"]}, "task", "is 'sts'"),
        ({"query": "q", "positives": ["p"], "positive_scores": [1, 2]}, "positive_scores", "2 scores for 1 texts"),
        ({"query": "q", "positives": ["p"], "positive_scores": ["x"]}, "positive_scores", "must be a number"),
        ({"query": "q", "positives": ["p"], "instruction": 5}, "instruction", "must be a string"),
    ],
)
def test_ir_bad_records(tmp_path, record, field, fragment):
    path = write_jsonl(tmp_path / "ir.jsonl", [IR_OK, IR_OK, record])
    with pytest.raises(DataFormatError) as excinfo:
        load_ir_dataset(path)
    assert_error(excinfo, path, 3, field)
    assert fragment in str(excinfo.value)


def test_ir_error_message_format(tmp_path):
    path = write_jsonl(tmp_path / "ir.jsonl", [{"query": "q", "positives": []}])
    with pytest.raises(DataFormatError) as excinfo:
        load_ir_dataset(path)
    assert str(excinfo.value) == f"{path}, line 1, field 'positives': must be a non-empty list of strings, got []"
    copy = pickle.loads(pickle.dumps(excinfo.value))
    assert (copy.source, copy.line, copy.field, str(copy)) == (str(path), 1, "positives", str(excinfo.value))
    assert isinstance(excinfo.value, ValueError)


def test_ir_bad_json_and_non_object(tmp_path):
    path = write_jsonl(tmp_path / "ir.jsonl", [IR_OK, '{"query": "q", "positives": ["p"]'])
    with pytest.raises(DataFormatError, match="invalid JSON") as excinfo:
        load_ir_dataset(path)
    assert_error(excinfo, path, 2, None)
    path = write_jsonl(tmp_path / "list.jsonl", [["q", "p"]])
    with pytest.raises(DataFormatError, match="must be a JSON object, got list") as excinfo:
        load_ir_dataset(path)
    assert_error(excinfo, path, 1, None)


def test_ir_format_mixed_and_unknown(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [IR_OK, {"query": "q", "pos": ["p"], "neg": []}])
    with pytest.raises(DataFormatError, match="missing") as excinfo:
        load_ir_dataset(path)
    assert_error(excinfo, path, 2, "positives")
    path = write_jsonl(tmp_path / "neither.jsonl", [{"query": "q", "docs": ["p"]}])
    with pytest.raises(DataFormatError) as excinfo:
        load_ir_dataset(path)
    assert_error(excinfo, path, 1, "positives")


def test_ir_dataset_bad_row_uses_name_and_row():
    source = Dataset.from_dict({"query": ["a", ""], "positives": [["x"], ["y"]], "negatives": [[], []]})
    with pytest.raises(DataFormatError) as excinfo:
        load_ir_dataset(source, name="my_ir")
    assert_error(excinfo, "my_ir", 2, "query")


def test_ir_empty_and_missing_files(tmp_path):
    path = write_text(tmp_path / "empty.jsonl", "\n\n")
    with pytest.raises(DataFormatError, match="contains no records"):
        load_ir_dataset(path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_ir_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="max_records"):
        load_ir_dataset(path, max_records=0)


# ------------------------------------------------------------------------------------------------ STS: good input


def test_sts_unified_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "sts.jsonl",
        [
            {"task": "sts", "query": "a", "positives": ["b"], "positive_scores": [4.5]},
            {
                "query": "c",
                "positives": ["d", "e"],
                "positive_scores": [1, 2],
                "negatives": ["f"],
                "negative_scores": [0],
            },
        ],
    )
    dataset = load_sts_dataset(path)
    assert dataset.column_names == ["sentence1", "sentence2", "score"]
    assert dataset.to_list() == [
        {"sentence1": "a", "sentence2": "b", "score": 4.5},
        {"sentence1": "c", "sentence2": "d", "score": 1.0},
        {"sentence1": "c", "sentence2": "e", "score": 2.0},
        {"sentence1": "c", "sentence2": "f", "score": 0.0},
    ]


STSB_TEXT = (
    "split\tgenre\tdataset\tyear\tsid\tscore\tsentence1\tsentence2\r\n"
    "train\tmain-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.\r\n"
    'train\tmain-news\theadlines\t2013\t0002\t1.250\t"Quoted" start\tan "unbalanced quote\r\n'
    "train\tmain-news\theadlines\t2013\t0003\t0.000\tx\ty\tnote appended\r\n"
)


def test_sts_stsb_tsv_header_crlf_quotes(tmp_path):
    path = write_text(tmp_path / "train.tsv", STSB_TEXT)
    dataset = load_sts_dataset(path)
    assert dataset.to_list() == [
        {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.", "score": 5.0},
        {"sentence1": '"Quoted" start', "sentence2": 'an "unbalanced quote', "score": 1.25},
        {"sentence1": "x", "sentence2": "y", "score": 0.0},
    ]
    no_header = write_text(tmp_path / "nohdr.tsv", STSB_TEXT.split("\r\n", 1)[1])
    assert len(load_sts_dataset(no_header, format="stsb")) == 3


def test_sts_plain_tsv_and_chinese(tmp_path):
    path = write_text(
        tmp_path / "train.data", "一架飞机要起飞了。\t一架飞机正在起飞。\t5\n一个男人在吹笛子。\t一个人在吹长笛。\t3\n"
    )
    dataset = load_sts_dataset(path)
    assert dataset[0] == {"sentence1": "一架飞机要起飞了。", "sentence2": "一架飞机正在起飞。", "score": 5.0}
    assert dataset["score"] == [5.0, 3.0]
    header = write_text(tmp_path / "h.tsv", "s1\ts2\tscore\na\tb\t0.5\n")
    assert load_sts_dataset(header, format="tsv").to_list() == [{"sentence1": "a", "sentence2": "b", "score": 0.5}]


def test_sts_dataset_inputs():
    plain = Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [1, 0.5]})
    assert load_sts_dataset(plain).to_list() == [
        {"sentence1": "a", "sentence2": "c", "score": 1.0},
        {"sentence1": "b", "sentence2": "d", "score": 0.5},
    ]
    labels = Dataset.from_dict({"sentence1": ["a"], "sentence2": ["c"], "label": [0.9]})
    assert load_sts_dataset(labels, score_range=(0, 1))["score"] == [0.9]
    unified = Dataset.from_dict({"query": ["a"], "positives": [["b"]], "positive_scores": [[3.0]]})
    assert load_sts_dataset(unified)[0] == {"sentence1": "a", "sentence2": "b", "score": 3.0}
    assert len(load_sts_dataset(plain, max_records=1)) == 1


def test_sts_score_range_option(tmp_path):
    path = write_text(tmp_path / "s.tsv", "a\tb\t7\n")
    assert load_sts_dataset(path, score_range=None)["score"] == [7.0]
    assert load_sts_dataset(path, score_range=(0, 10))["score"] == [7.0]


# ------------------------------------------------------------------------------------------------ STS: bad input


@pytest.mark.parametrize(
    "score, fragment",
    [
        ("", "missing score"),
        ("high", "must be a number, got 'high'"),
        ("nan", "finite"),
        ("5.5", "outside"),
        ("-0.1", "outside"),
    ],
)
def test_sts_bad_scores_in_tsv(tmp_path, score, fragment):
    path = write_text(tmp_path / "s.tsv", f"a\tb\t1\nc\td\t{score}\n")
    with pytest.raises(DataFormatError) as excinfo:
        load_sts_dataset(path)
    assert_error(excinfo, path, 2, "score")
    assert fragment in str(excinfo.value)


def test_sts_bad_score_in_stsb(tmp_path):
    path = write_text(tmp_path / "train.tsv", STSB_TEXT + "train\tg\td\ty\t4\tNaN\tp\tq\r\n")
    with pytest.raises(DataFormatError, match="finite") as excinfo:
        load_sts_dataset(path)
    assert_error(excinfo, path, 5, "score")
    short = write_text(tmp_path / "short.tsv", STSB_TEXT + "train\tg\td\ty\t4\t3.0\tonly one\r\n")
    with pytest.raises(DataFormatError, match="7 tab-separated fields") as excinfo:
        load_sts_dataset(short, format="stsb")
    assert_error(excinfo, short, 5, "sentence2")


def test_sts_bad_tsv_shape_and_empty_sentence(tmp_path):
    path = write_text(tmp_path / "s.tsv", "a\tb\t1\na\t2\n")
    with pytest.raises(DataFormatError, match="2 tab-separated fields") as excinfo:
        load_sts_dataset(path)
    assert_error(excinfo, path, 2, "score")
    path = write_text(tmp_path / "e.tsv", "a\tb\t1\n \tb\t1\n")
    with pytest.raises(DataFormatError) as excinfo:
        load_sts_dataset(path)
    assert_error(excinfo, path, 2, "sentence1")
    path = write_text(tmp_path / "four.tsv", "a\tb\t1\tx\n")
    with pytest.raises(DataFormatError, match="expected 3") as excinfo:
        load_sts_dataset(path)
    assert_error(excinfo, path, 1, None)


@pytest.mark.parametrize(
    "record, field, fragment",
    [
        ({"query": "a", "positives": ["b"]}, "positive_scores", "missing score"),
        ({"query": "a", "positives": ["b"], "positive_scores": ["x"]}, "positive_scores", "must be a number"),
        ({"query": "a", "positives": ["b"], "positive_scores": [None]}, "positive_scores", "missing score"),
        ({"query": "a", "positives": ["b"], "positive_scores": [9]}, "positive_scores", "outside"),
        ({"query": "a", "positives": ["b"], "positive_scores": [True]}, "positive_scores", "must be a number"),
        ({"query": "a", "positives": ["b"], "positive_scores": [1, 2]}, "positive_scores", "2 scores for 1 texts"),
        ({"query": "a", "positives": ["b"], "positive_scores": [1], "negatives": ["c"]}, "negative_scores", "missing"),
        ({"task": "ir", "query": "a", "positives": ["b"], "positive_scores": [1]}, "task", "is 'ir'"),
        ({"query": "", "positives": ["b"], "positive_scores": [1]}, "query", "non-empty"),
    ],
)
def test_sts_bad_unified_records(tmp_path, record, field, fragment):
    good = {"query": "x", "positives": ["y"], "positive_scores": [2.0]}
    path = write_jsonl(tmp_path / "sts.jsonl", [good, record])
    with pytest.raises(DataFormatError) as excinfo:
        load_sts_dataset(path)
    assert_error(excinfo, path, 2, field)
    assert fragment in str(excinfo.value)


def test_sts_bad_json_line(tmp_path):
    path = write_jsonl(tmp_path / "sts.jsonl", [{"query": "x", "positives": ["y"], "positive_scores": [2.0]}, "{oops"])
    with pytest.raises(DataFormatError, match="invalid JSON") as excinfo:
        load_sts_dataset(path)
    assert_error(excinfo, path, 2, None)


def test_sts_dataset_bad_rows():
    bad = Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [1.0, float("nan")]})
    with pytest.raises(DataFormatError) as excinfo:
        load_sts_dataset(bad, name="dev")
    assert_error(excinfo, "dev", 2, "score")
    wrong_columns = Dataset.from_dict({"text": ["a"]})
    with pytest.raises(DataFormatError, match="expected sentence1, sentence2, score"):
        load_sts_dataset(wrong_columns, name="x")


# ------------------------------------------------------------------------------------------------ STS-derived tasks

TINY_STS = Dataset.from_dict(
    {
        "sentence1": ["A cat sleeps.", "A dog runs.", "A cat sleeps.", "Rain falls.", "Same text.", "A dog runs."],
        "sentence2": [
            "A cat is sleeping.",
            "A car drives.",
            "The cat naps.",
            "A cat is sleeping.",
            "Same text.",
            "A dog is running.",
        ],
        "score": [4.8, 0.5, 4.0, 0.2, 5.0, 3.9],
    }
)


def test_ir_task_from_sts_pairs_exact():
    queries, corpus, relevant = ir_task_from_sts_pairs(TINY_STS, min_score=4.0)
    assert corpus == {
        "c0": "A cat sleeps.",
        "c1": "A cat is sleeping.",
        "c2": "A dog runs.",
        "c3": "A car drives.",
        "c4": "The cat naps.",
        "c5": "Rain falls.",
        "c6": "Same text.",
        "c7": "A dog is running.",
    }
    # "A dog runs." has no pair >= 4.0; "Same text." only pairs with itself: neither is a query.
    assert queries == {"q0": "A cat sleeps."}
    assert relevant == {"q0": {"c1", "c4"}}
    queries, _, relevant = ir_task_from_sts_pairs(TINY_STS, min_score=3.5)
    assert queries == {"q0": "A cat sleeps.", "q1": "A dog runs."}
    assert relevant == {"q0": {"c1", "c4"}, "q1": {"c7"}}


def test_ir_train_from_sts_pairs():
    records = ir_train_from_sts_pairs(TINY_STS, min_score=4.0, num_negatives=2, seed=0)
    assert records.column_names == ["query", "positives", "negatives"]
    assert records["query"] == ["A cat sleeps.", "A cat sleeps."]
    assert records["positives"] == [["A cat is sleeping."], ["The cat naps."]]
    for negatives in records["negatives"]:
        assert len(negatives) == 2 and len(set(negatives)) == 2
        # never the query or any sentence paired with it at a high score
        assert not set(negatives) & {"A cat sleeps.", "A cat is sleeping.", "The cat naps."}
    again = ir_train_from_sts_pairs(TINY_STS, min_score=4.0, num_negatives=2, seed=0)
    assert again.to_list() == records.to_list()
    # Low-scored partners of the query come first: "A dog runs." has "A car drives." (0.5).
    dog = ir_train_from_sts_pairs(TINY_STS, min_score=3.5, num_negatives=1, seed=3)
    assert dog.filter(lambda row: row["query"] == "A dog runs.")["negatives"] == [["A car drives."]]
    assert load_ir_dataset(records).num_rows == 2  # valid IR records
    with pytest.raises(ValueError, match="no STS pair"):
        ir_train_from_sts_pairs(TINY_STS, min_score=10)


# ------------------------------------------------------------------------------------------------ demo data


@pytest.mark.parametrize("name, size", [("ir_train.jsonl", 150), ("ir_dev.jsonl", 50)])
def test_demo_ir_data(name, size):
    dataset = load_ir_dataset(demo_data_path(name))
    assert len(dataset) == size
    assert all(1 <= len(positives) <= 2 for positives in dataset["positives"])
    assert all(3 <= len(negatives) <= 5 for negatives in dataset["negatives"])


@pytest.mark.parametrize("name, size", [("sts_train.jsonl", 250), ("sts_dev.jsonl", 100)])
def test_demo_sts_data(name, size):
    dataset = load_sts_dataset(demo_data_path(name))
    assert len(dataset) == size
    scores = dataset["score"]
    assert min(scores) <= 0.4 and max(scores) >= 4.6
    assert sum(score < 2.5 for score in scores) > size / 4 and sum(score > 2.5 for score in scores) > size / 4


def test_demo_splits_are_disjoint():
    ir_train, ir_dev = (
        load_ir_dataset(demo_data_path("ir_train.jsonl")),
        load_ir_dataset(demo_data_path("ir_dev.jsonl")),
    )
    train_texts = set(ir_train["query"]) | {p for ps in ir_train["positives"] for p in ps}
    assert not train_texts & (set(ir_dev["query"]) | {p for ps in ir_dev["positives"] for p in ps})
    sts_train, sts_dev = (
        load_sts_dataset(demo_data_path("sts_train.jsonl")),
        load_sts_dataset(demo_data_path("sts_dev.jsonl")),
    )
    assert not (set(sts_train["sentence1"]) | set(sts_train["sentence2"])) & (
        set(sts_dev["sentence1"]) | set(sts_dev["sentence2"])
    )


def test_demo_data_path_unknown():
    with pytest.raises(FileNotFoundError, match="ir_train.jsonl"):
        demo_data_path("nope.jsonl")


# ------------------------------------------------------------------------------------------------ shared data


@needs_shared_data
def test_shared_stsb_en():
    for name, size in (("train.tsv", 5749), ("dev.tsv", 1500)):  # the published split sizes
        path = SHARED_DATA / "stsb-en" / name
        # STS-B columns split here without the loader: score, sentence1, sentence2 are fields 6-8 after a header.
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
        expected = [{"sentence1": row[6], "sentence2": row[7], "score": float(row[5])} for row in rows]
        assert len(expected) == size
        assert load_sts_dataset(path).to_list() == expected
    queries, corpus, relevant = ir_task_from_sts_pairs(load_sts_dataset(SHARED_DATA / "stsb-en" / "dev.tsv"))
    assert 0 < len(queries) < len(corpus) and set(queries) == set(relevant)


@needs_shared_data
@pytest.mark.parametrize("name, size", [("train.data", 5231), ("valid.data", 1458)])  # the published split sizes
def test_shared_stsb_zh(name, size):
    path = SHARED_DATA / "stsb-zh" / name
    # Plain "sentence1<TAB>sentence2<TAB>score" lines, split here without the loader.
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    expected = [{"sentence1": a, "sentence2": b, "score": float(y)} for a, b, y in rows]
    assert len(expected) == size
    assert load_sts_dataset(path).to_list() == expected


@needs_shared_data
def test_shared_flagembedding_ir():
    path = SHARED_DATA / "stsb-zh" / "ir_train_mined_negatives.jsonl"
    dataset = load_ir_dataset(path)
    assert dataset.column_names == ["query", "positives", "negatives"]
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert dataset.to_list() == [{"query": r["query"], "positives": r["pos"], "negatives": r["neg"]} for r in records]


def test_labelled_pairs_from_ir_records_exact():
    records = [
        {"query": "q1", "positives": ["p1", "p2"], "negatives": ["n1", "n2", "n3"]},
        {"query": "q2", "positives": ["p3"], "negatives": []},
    ]
    pairs = labelled_pairs_from_ir_records(records, num_negatives=2)
    assert list(zip(pairs["sentence1"], pairs["sentence2"], pairs["score"])) == [
        ("q1", "p1", 1.0), ("q1", "p2", 1.0), ("q1", "n1", 0.0), ("q1", "n2", 0.0), ("q2", "p3", 1.0),
    ]
    every_negative = labelled_pairs_from_ir_records(records, num_negatives=None, positive_score=5, negative_score=2)
    assert every_negative["sentence2"].count("n3") == 1 and set(every_negative["score"]) == {5.0, 2.0}
    with pytest.raises(ValueError, match="positive_score"):
        labelled_pairs_from_ir_records(records, positive_score=0.0, negative_score=0.0)
    with pytest.raises(ValueError, match="no pair"):
        labelled_pairs_from_ir_records([])


# ------------------------------------------------------------------------------------------------ Arrow reader, cache


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch) -> Path:
    """Files read in Arrow are cached in a temporary datasets cache, not the user's."""
    import datasets

    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


def cached_arrow_files(cache: Path) -> list[Path]:
    return sorted((cache / "codiemb_data_file").glob("**/*.arrow"))


def test_python_whitespace_list_is_complete():
    from hf_codiemb.data.arrow_reader import PY_WHITESPACE

    assert PY_WHITESPACE == "".join(chr(code) for code in range(0x110000) if chr(code).isspace())


def test_arrow_reader_is_cached_and_reused(tmp_path, datasets_cache, monkeypatch, caplog):
    from hf_codiemb.data import arrow_reader

    records = [IR_OK, dict(IR_OK, query="q2", negatives=[]), {"query": "q3", "positives": ["p"]}]
    path = write_jsonl(tmp_path / "ir.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.data"):
        first = load_ir_dataset(path)
    assert not [r for r in caplog.records if "line by line" in r.getMessage()]
    assert cached_arrow_files(datasets_cache), "the Arrow reader wrote nothing to the datasets cache"
    assert first.cache_files and first.cache_files[0]["filename"].startswith(str(datasets_cache))
    assert first.to_list() == [
        {"query": "q1", "positives": ["p1", "p2"], "negatives": ["n1"]},
        {"query": "q2", "positives": ["p1", "p2"], "negatives": []},
        {"query": "q3", "positives": ["p"], "negatives": []},
    ]

    calls = []
    real = arrow_reader.ir_table_from_batch
    monkeypatch.setattr(arrow_reader, "ir_table_from_batch", lambda *args: calls.append(1) or real(*args))
    assert load_ir_dataset(path).to_list() == first.to_list()
    assert not calls, "the file was read again instead of loading the cache"
    # Another cache folder, or a changed file, is read again.
    assert load_ir_dataset(path, cache_dir=tmp_path / "other_cache").to_list() == first.to_list()
    assert calls
    write_jsonl(path, [*records, {"query": "q4", "positives": ["p4"]}])
    assert load_ir_dataset(path)["query"] == ["q1", "q2", "q3", "q4"]


def test_arrow_reader_over_many_chunks_matches_the_records(tmp_path, monkeypatch):
    """Small chunks: records split over many chunks, blank lines, CRLF, gzip; line numbers of errors stay exact."""
    import gzip
    import random

    from hf_codiemb.data import arrow_reader

    monkeypatch.setattr(arrow_reader, "CHUNK_BYTES", 200)
    rng = random.Random(0)
    records = []
    for i in range(60):
        record = {"query": f"query {i}", "pos": [f"pos {i} {j}" for j in range(rng.randint(1, 3))],
                  "neg": [f"neg {i} {j}" for j in range(rng.randint(0, 4))], "prompt": "Represent: ", "extra": {"a": i}}
        records.append(record)
    lines = []
    for record in records:
        lines.append(json.dumps(record))
        if rng.random() < 0.2:
            lines.append("   ")
    path = tmp_path / "fe.jsonl.gz"
    path.write_bytes(gzip.compress(("\r\n".join(lines) + "\r\n").encode()))
    dataset = load_ir_dataset(path, keep_instruction=True)
    assert dataset.to_list() == [
        {"query": r["query"], "positives": r["pos"], "negatives": r["neg"], "instruction": "Represent: "}
        for r in records
    ]
    assert len(load_ir_dataset(path, max_records=7)) == 7
    # A broken record far into the file: the error names its physical line (blank lines counted) and the field.
    bad_line = len(lines) - 3
    broken = lines[: bad_line - 1] + [json.dumps({"query": "q", "pos": ["p", "  "]})] + lines[bad_line - 1 :]
    path = write_text(tmp_path / "broken.jsonl", "\n".join(broken) + "\n")
    with pytest.raises(DataFormatError, match="item 1 must be a non-empty string") as excinfo:
        load_ir_dataset(path)
    assert_error(excinfo, path, bad_line, "pos")
    # max_records stops before the broken record, as the line-by-line reader does.
    kept = sum(1 for line in broken[: bad_line - 1] if line.strip())
    assert len(load_ir_dataset(path, max_records=kept)) == kept


def test_arrow_sts_readers_match_the_pairs(tmp_path, monkeypatch):
    from hf_codiemb.data import arrow_reader

    monkeypatch.setattr(arrow_reader, "CHUNK_BYTES", 64)
    rows = [(f"sentence {i}", f"other {i}", (i * 7) % 11 / 2) for i in range(40)]
    tsv = write_text(tmp_path / "s.tsv", "s1\ts2\tscore\n" + "".join(f"{a}\t{b}\t {s} \n" for a, b, s in rows))
    expected = [{"sentence1": a, "sentence2": b, "score": float(s)} for a, b, s in rows]
    assert load_sts_dataset(tsv).to_list() == expected
    stsb = write_text(tmp_path / "stsb.tsv", "".join(f"train\tg\td\ty\t{i}\t{s}\t{a}\t{b}\textra\r\n"
                                                      for i, (a, b, s) in enumerate(rows)))  # fmt: skip
    assert load_sts_dataset(stsb).to_list() == expected
    unified = write_jsonl(tmp_path / "sts.jsonl", [
        {"task": "STS", "query": "a", "positives": ["b", "c"], "positive_scores": [1, 2.5], "negatives": ["d"],
         "negative_scores": [0]},
        {"query": "e", "positives": ["f"], "positive_scores": [5], "negatives": [], "negative_scores": [9]},
    ])  # fmt: skip
    assert load_sts_dataset(unified, max_records=4).to_list() == [
        {"sentence1": "a", "sentence2": "b", "score": 1.0},
        {"sentence1": "a", "sentence2": "c", "score": 2.5},
        {"sentence1": "a", "sentence2": "d", "score": 0.0},
        {"sentence1": "e", "sentence2": "f", "score": 5.0},
    ]
    # A header-like line after line 1 is a record, and its score is not a number.
    late_header = write_text(tmp_path / "late.tsv", "a\tb\t1\n" * 30 + "s1\ts2\tscore\n")
    with pytest.raises(DataFormatError, match="must be a number, got 'score'") as excinfo:
        load_sts_dataset(late_header)
    assert_error(excinfo, late_header, 31, "score")


def test_input_only_the_line_by_line_reader_accepts_is_loaded_with_a_warning(tmp_path, caplog):
    # Python's float() reads '1_5' (15.0); Arrow does not: the line-by-line reader loads the file, and says so.
    path = write_text(tmp_path / "s.tsv", "a\tb\t1\nc\td\t1_5\n")
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.data"):
        dataset = load_sts_dataset(path, score_range=None)
    assert dataset["score"] == [1.0, 15.0]
    warnings = [r.getMessage() for r in caplog.records if "line by line" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: valid, but read line by line")


def test_arrow_suspicious_counts_equal_the_python_counts(tmp_path, caplog):
    from hf_codiemb.data import suspicious_record_counts

    records = [
        {"query": "q", "positives": ["p"], "negatives": ["n"]},
        {"query": "q", "positives": ["p"], "negatives": ["n"]},
        {"query": "q", "positives": ["p"], "negatives": ["n", "m"]},
        {"query": "q", "positives": ["q", "p"], "negatives": ["p"]},
        {"query": "r", "positives": ["a", "b"], "negatives": ["c", "r", "b"]},
        {"query": "s", "positives": ["ab"], "negatives": ["a", "b"]},
        {"query": "s", "positives": ["a", "b"], "negatives": ["ab"]},
    ]
    path = write_jsonl(tmp_path / "ir.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.data"):
        load_ir_dataset(path)
    expected = suspicious_record_counts(records, "ir")
    assert expected == {"records": 7, "duplicates": 1, "query_is_positive": 1, "query_is_negative": 1,
                        "positive_is_negative": 2}  # fmt: skip
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (f"{path}: suspicious data in 7 records: 1 duplicated record(s); 1 record(s) with the query "
                       "equal to one of its positives; 1 record(s) with the query equal to one of its negatives; "
                       "2 record(s) with a text that is both a positive and a negative")  # fmt: skip


def test_unwritable_cache_falls_back_to_the_line_by_line_reader(tmp_path, caplog):
    cache = tmp_path / "cache_is_a_file"
    cache.write_text("")
    path = write_jsonl(tmp_path / "ir.jsonl", [IR_OK])
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.data"):
        assert load_ir_dataset(path, cache_dir=cache)["query"] == ["q1"]
    assert any("read line by line" in r.getMessage() for r in caplog.records)
