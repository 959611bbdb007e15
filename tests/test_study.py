"""The study (issue 5): method set-ups, the planned update counts against a real training run, and the whole
pipeline (every method, fusion rows, resume, report) on a tiny model and the packaged demo data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from datasets import Dataset
from tiny_models import make_tiny_model

from codiemb_study import FUSION_ROWS, METHODS, Study
from codiemb_study.report import encoder_table, mean_and_spread, write_report
from codiemb_study.runner import planned_updates
from hf_codiemb.pipeline import load_training_data
from hf_codiemb.recipe import parse_recipe
from hf_codiemb.trainer import CoDiEmbTrainer

IR = Dataset.from_dict(
    {
        "query": [f"query {i}" for i in range(12)],
        "positives": [[f"pos {i}"] if i % 2 else [f"pos {i}", f"pos {i}b"] for i in range(12)],
        "negatives": [[f"neg {i}", f"neg {i}b", f"neg {i}c"] for i in range(12)],
    }
)
STS = Dataset.from_dict(
    {
        "sentence1": [f"a {i}" for i in range(20)],
        "sentence2": [f"b {i}" if i % 3 else f"a {i}" for i in range(20)],
        "score": [float(i % 6) for i in range(20)],
    }
)
DATASETS = {"ir": IR, "sts": STS}
TASKS = {"ir": "ir", "sts": "sts"}


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory) -> Path:
    """A recipe on a tiny random BERT and a slice of the packaged demo data (IR + STS, train + dev)."""
    root = tmp_path_factory.mktemp("study")
    make_tiny_model(root / "tiny")
    recipe_dir = root / "tiny-encoder"
    recipe_dir.mkdir()
    recipe = {
        "model_name_or_path": str(root / "tiny" / "model"),
        "ir_train": ["demo:ir_train.jsonl"],
        "sts_train": ["demo:sts_train.jsonl"],
        "ir_eval": ["demo:ir_dev.jsonl"],
        "sts_eval": ["demo:sts_dev.jsonl"],
        "ir_eval_from_sts": False,
        "max_train_records": 64,
        "max_eval_records": 30,
        "ir_batch_size": 4,
        "sts_batch_size": 8,
        "num_positives": 1,
        "num_negatives": 2,
        "learning_rate": 1e-3,
    }
    (recipe_dir / "config.yaml").write_text(yaml.safe_dump(recipe))
    return recipe_dir / "config.yaml"


def args_for(tmp_path, *flags: str):
    _, _, args, _ = parse_recipe(
        ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--ir_batch_size", "4", "--sts_batch_size", "4",
         "--num_negatives", "2", "--seed", "7", *flags]
    )  # fmt: skip
    return args


def test_single_task_methods_keep_only_their_task(tmp_path):
    args = args_for(tmp_path)
    ir_only = METHODS["ir_only"].build(DATASETS, TASKS, args, (0.0, 5.0))
    sts_only = METHODS["sts_only"].build(DATASETS, TASKS, args, (0.0, 5.0))
    assert ir_only.tasks == {"ir": "ir"} and ir_only.datasets["ir"] is IR and ir_only.loss is None
    assert sts_only.tasks == {"sts": "sts"} and sts_only.datasets["sts"] is STS
    with pytest.raises(ValueError, match="no STS training data"):
        METHODS["sts_only"].build({"ir": IR}, {"ir": "ir"}, args, (0.0, 5.0))


def test_mixed_infonce_pools_ir_records_and_sts_pairs_as_ir_records(tmp_path):
    args = args_for(tmp_path)
    setup = METHODS["mixed_infonce"].build(DATASETS, TASKS, args, (0.0, 5.0))
    assert setup.tasks == {"mixed": "ir"} and setup.loss is None
    pool = setup.datasets["mixed"]
    # STS pairs scored >= 4 with distinct sentences become queries: i % 6 in {4, 5} and i % 3 != 0.
    expected_sts_queries = [f"a {i}" for i in range(20) if i % 6 >= 4 and i % 3]
    assert list(pool["query"]) == list(IR["query"]) + expected_sts_queries
    assert all(len(n) == 2 for n in list(pool["negatives"])[len(IR) :])


def test_cosent_rescales_sts_scores_and_labels_ir_pairs(tmp_path):
    args = args_for(tmp_path)
    setup = METHODS["cosent"].build(DATASETS, TASKS, args, (0.0, 5.0))
    assert setup.tasks == {"cosent": "sts"} and setup.loss.__name__ == "CoSENTLoss"
    pool = setup.datasets["cosent"]
    assert list(pool["score"])[: len(STS)] == pytest.approx([s / 5.0 for s in STS["score"]])
    ir_part = pool.select(range(len(STS), len(pool)))
    # every positive (1.0) and the first num_negatives=2 negatives (0.0) of every record
    assert len(ir_part) == sum(len(p) for p in IR["positives"]) + 2 * len(IR)
    assert sorted(set(ir_part["score"])) == [0.0, 1.0]
    assert list(ir_part.filter(lambda r: r["score"] == 0.0)["sentence2"])[:2] == ["neg 0", "neg 0b"]


def test_ratio_methods_set_the_task_ratio_and_sweep_shares():
    assert METHODS["ratio_ir3_sts1"].task_ratio == "ir:3,sts:1" and METHODS["ratio_ir3_sts1"].ir_share == 0.75
    assert METHODS["ir_only"].ir_share == 1.0 and METHODS["sts_only"].ir_share == 0.0
    assert METHODS["codiemb"].task_ratio is None


class RecordingTrainer(CoDiEmbTrainer):
    """Records the dataset of every training batch the real trainer computes a loss on."""

    seen: list[str]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append(inputs.get("dataset_name"))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize("ratio", [None, "ir:1,sts:3"])
def test_planned_updates_match_the_batches_the_trainer_trains_on(tmp_path, ratio):
    model = make_tiny_model(tmp_path / "tiny")
    flags = ["--max_steps", "11", "--save_strategy", "no", "--disable_tqdm", "true"]
    args = args_for(tmp_path, *flags, *(["--task_ratio", ratio] if ratio else []))
    setup = METHODS["codiemb"].build(DATASETS, TASKS, args, (0.0, 5.0))
    args.dataset_tasks = setup.tasks
    planned = planned_updates(setup, args)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=setup.datasets)
    trainer.seen = []
    trainer.train()
    # 11 steps outlast one epoch (IR: 3 batches, STS: 5 batches with batch size 4), so this crosses an epoch.
    actual = {"ir": trainer.seen.count("ir"), "sts": trainer.seen.count("sts")}
    assert sum(actual.values()) == 11
    assert planned == actual


def test_study_runs_every_method_fuses_resumes_and_reports(tiny_recipe, tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    study = Study(str(tiny_recipe), ["--max_seq_length", "32"], max_steps=3, results_dir=results, work_dir=work)
    assert study.encoder == "tiny-encoder"
    study.run(list(METHODS), seeds=[1])
    runs_dir = results / "tiny-encoder" / "runs"
    stored = sorted(p.stem for p in runs_dir.glob("*.json"))
    assert stored == sorted(["base", *[f"{k}-seed1" for k in [*METHODS, *FUSION_ROWS]]])
    codiemb = json.loads((runs_dir / "codiemb-seed1.json").read_text())
    assert sum(codiemb["updates"].values()) == 3 and codiemb["train_runtime_s"] > 0
    assert {"sts/sts_dev/spearman_cosine", "ir/ir_dev/ndcg@10", "geometry/anisotropy"} <= set(codiemb["metrics"])
    fused = json.loads((runs_dir / "codiemb_delta_fusion-seed1.json").read_text())
    assert fused["fused_checkpoints"] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert json.loads((runs_dir / "ir_only-seed1.json").read_text())["updates"] == {"ir": 3}
    assert not any(work.rglob("checkpoint-*")), "training folders are removed after evaluation"

    # Resume: stored runs are not trained again.
    mtimes = {p.name: p.stat().st_mtime_ns for p in runs_dir.glob("*.json")}
    Study(str(tiny_recipe), ["--max_seq_length", "32"], 3, results, work).run(["codiemb", "ir_only"], seeds=[1])
    assert {p.name: p.stat().st_mtime_ns for p in runs_dir.glob("*.json")} == mtimes
    # A stored run of another step budget is never mixed in silently.
    with pytest.raises(ValueError, match="trained for 3 updates, this study asks for 4"):
        Study(str(tiny_recipe), ["--max_seq_length", "32"], 4, results, work).run(["ir_only"], seeds=[1])

    written = write_report(results)
    table = (results / "tiny-encoder" / "study.md").read_text()
    for key in METHODS:
        assert METHODS[key].label in table
    assert FUSION_ROWS["codiemb_delta_fusion"] in table and "base encoder" in table
    assert "| 3 mixed |" in table  # pooled methods have no per-task update count
    assert (results / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(written) == 3
    summary = (results / "summary.md").read_text()
    assert "## tiny-encoder (3 updates per method)" in summary and "anisotropy" not in summary


def test_report_cells_are_mean_and_sample_sd_over_seeds():
    runs = [
        {"method": "codiemb", "label": "(e) CoDiEmb", "seed": seed, "updates": {"ir": 1, "sts": 2},
         "train_runtime_s": t, "metrics": {"sts/dev/spearman_cosine": s, "ir/dev/ndcg@10": n}}
        for seed, s, n, t in [(1, 0.80, 0.5, 10.0), (2, 0.84, 0.7, 12.0), (3, 0.82, 0.6, 14.0)]
    ]  # fmt: skip
    assert mean_and_spread([0.80, 0.84, 0.82]) == pytest.approx((0.82, 0.02))
    row = encoder_table(runs).splitlines()[2]
    assert "| 0.8200 ± 0.0200 | 0.6000 ± 0.1000 |" in row and "| 1 / 2 | 12.0 ± 2.0 |" in row
    runs[0]["updates"] = {"ir": 4, "sts": 2}  # seeds whose schedules differ: the mean, said to be one
    assert "| 2 / 2 (mean) |" in encoder_table(runs).splitlines()[2]


def test_unknown_method_is_named(tiny_recipe, tmp_path):
    study = Study(str(tiny_recipe), [], max_steps=3, results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    with pytest.raises(ValueError, match="Unknown method.*'nope'"):
        study.run(["nope"], seeds=[1])


def test_load_training_data_feeds_the_methods(tiny_recipe):
    _, data_args, args, _ = parse_recipe(["--config", str(tiny_recipe)])
    datasets, tasks, _ = load_training_data(data_args, args.num_negatives)
    assert sorted(tasks.values()) == ["ir", "sts"]
    for key in METHODS:
        setup = METHODS[key].build(datasets, tasks, args, (0.0, 5.0))
        assert setup.datasets and set(setup.tasks) == set(setup.datasets)
