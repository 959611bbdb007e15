"""The study (issue 5): method set-ups, the planned update counts against a real training run, and the whole
pipeline (every method, fusion rows, resume, report) on a tiny model and the packaged demo data; issue 13: the plain
sentence-transformers STS losses, (h) fusion of two ratio runs, and a recipe on BEIR folders."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from beir_fixtures import CORPUS, write_beir_folder
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from tiny_models import make_tiny_model

from codiemb_study import FUSION_ROWS, METHODS, RATIO_FUSION_INPUTS, RATIO_FUSION_ROWS, Study
from codiemb_study.report import (
    devices_line,
    encoder_table,
    headline_table,
    mean_and_spread,
    metric_keys,
    write_report,
)
from codiemb_study.runner import device_description, planned_updates
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


@pytest.mark.parametrize(("key", "loss_name"), [("sts_cosine", "CosineSimilarityLoss"), ("sts_cosent", "CoSENTLoss")])
def test_plain_sts_losses_train_the_sts_pairs_alone_with_unit_scores(tmp_path, key, loss_name):
    args = args_for(tmp_path)
    setup = METHODS[key].build(DATASETS, TASKS, args, (1.0, 5.0))
    assert setup.loss.__name__ == loss_name and setup.tasks == {"sts": "sts"}  # the STS data alone, no IR pairs
    sts = setup.datasets["sts"]
    assert sts.column_names == ["sentence1", "sentence2", "score"] and len(sts) == len(STS)
    # by hand: the gold scores i % 6 rescaled from [1, 5] to [0, 1]
    assert list(sts["score"]) == pytest.approx([((i % 6) - 1.0) / 4.0 for i in range(20)])
    assert list(sts["sentence1"]) == list(STS["sentence1"])
    with pytest.raises(ValueError, match="no STS training data"):
        METHODS[key].build({"ir": IR}, {"ir": "ir"}, args, (0.0, 5.0))
    with pytest.raises(ValueError, match="high > low"):
        METHODS[key].build(DATASETS, TASKS, args, (5.0, 5.0))


def test_plain_sts_loss_trains_only_sts_batches(tmp_path):
    model = make_tiny_model(tmp_path / "tiny")
    args = args_for(tmp_path, "--max_steps", "3", "--save_strategy", "no", "--disable_tqdm", "true")
    setup = METHODS["sts_cosine"].build(DATASETS, TASKS, args, (0.0, 5.0))
    args.dataset_tasks = setup.tasks
    trainer = RecordingTrainer(model=model, args=args, train_dataset=setup.datasets, loss=setup.loss)
    trainer.seen = []
    trainer.train()
    assert trainer.seen == ["sts"] * 3 and planned_updates(setup, args) == {"sts": 3}
    assert type(trainer.loss["sts"]).__name__ == "CosineSimilarityLoss"


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


@pytest.mark.parametrize("ratio,unit", [(None, "updates"), ("ir:1,sts:3", "updates"), ("ir:1,sts:3", "passes")])
def test_planned_updates_match_the_batches_the_trainer_trains_on(tmp_path, ratio, unit):
    model = make_tiny_model(tmp_path / "tiny")
    flags = ["--max_steps", "11", "--save_strategy", "no", "--disable_tqdm", "true", "--task_ratio_unit", unit]
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
    assert stored == sorted(["base", *[f"{k}-seed1" for k in [*METHODS, *FUSION_ROWS, *RATIO_FUSION_ROWS]]])
    codiemb = json.loads((runs_dir / "codiemb-seed1.json").read_text())
    assert sum(codiemb["updates"].values()) == 3 and codiemb["train_runtime_s"] > 0
    assert {"sts/sts_dev/spearman_cosine", "ir/ir_dev/ndcg@10", "geometry/anisotropy"} <= set(codiemb["metrics"])
    fused = json.loads((runs_dir / "codiemb_delta_fusion-seed1.json").read_text())
    assert fused["fused_checkpoints"] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert json.loads((runs_dir / "ir_only-seed1.json").read_text())["updates"] == {"ir": 3}
    assert codiemb["device"] == fused["device"] == device_description()  # where it ran, for the tables
    assert codiemb["device"].startswith("cuda: " if torch.cuda.is_available() else "cpu: ")
    assert not any(work.rglob("checkpoint-*")), "training folders are removed after evaluation"
    for key in RATIO_FUSION_ROWS:  # (h): the two ratio runs of the same seed, their models removed once fused
        assert json.loads((runs_dir / f"{key}-seed1.json").read_text())["fused_runs"] == [
            "ratio_ir3_sts1-seed1", "ratio_ir1_sts3-seed1"
        ]  # fmt: skip
    assert not any(work.rglob("*-final")), "the (h) inputs are removed once (h) is stored"

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
    for label in RATIO_FUSION_ROWS.values():
        assert label in table
    assert "(h) fuses the final models of the runs ratio_ir1_sts3-seed1, ratio_ir3_sts1-seed1" in table
    assert "| 3 mixed |" in table  # pooled methods have no per-task update count
    assert (results / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(written) == 3
    # (h) rows come after the sweep (g) they fuse, with their own markers on the plot
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| (")]
    assert rows[-2:] == [f"| {label}" for label in RATIO_FUSION_ROWS.values()]
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


def test_train_times_of_cpu_and_gpu_runs_are_never_averaged_together():
    def run(seed: int, seconds: float, device: str | None) -> dict:
        record = {"method": "ir_only", "label": "(a) IR only", "seed": seed, "updates": {"ir": 5},
                  "train_runtime_s": seconds, "metrics": {"sts/dev/spearman_cosine": 0.8, "ir/dev/ndcg@10": 0.6}}
        return record if device is None else {**record, "device": device}

    gpu = "cuda: NVIDIA H200 (torch 2.11.0+cu130)"
    cpu_only = [run(1, 2000.0, None), run(2, 2200.0, "cpu: 2 threads (torch 2.13.0+cpu)")]
    assert encoder_table(cpu_only).splitlines()[2].endswith("| 5 / 0 | 2100.0 ± 141.4 |")  # one device: untagged
    mixed = [run(1, 2000.0, None), run(2, 40.0, gpu), run(3, 50.0, gpu)]
    row = encoder_table(mixed).splitlines()[2]
    assert row.endswith("| 2000.0 CPU; 45.0 ± 7.1 GPU |"), row  # a record without `device` ran on the CPU
    assert "| 0.8000 ± 0.0000 |" in row  # the metrics still pool every seed
    assert devices_line(mixed) == f"cpu: the project's 2-core CPU machine (1 runs); {gpu} (2 runs)"
    fused = [{"method": "codiemb_delta_fusion", "label": "(f)", "seed": r["seed"], "metrics": r["metrics"],
              "fusion_runtime_s": r["train_runtime_s"] / 100, **({"device": r["device"]} if "device" in r else {})}
             for r in mixed]  # fmt: skip
    assert encoder_table(fused).splitlines()[2].endswith("| - | +20.0 (fusion) CPU; +0.5 ± 0.1 (fusion) GPU |")


def test_headline_picks_the_best_single_loss_baseline_per_dev_set():
    def run(method: str, seed: int | None, sts: float, ir: float) -> dict:
        return {"method": method, "label": method, "seed": seed, "beir_ir_sets": ["scifact_dev"],
                "metrics": {"sts/dev/spearman_cosine": sts, "ir/scifact_dev/ndcg@10": ir, "ir/dev/ndcg@10": 0.99}}

    runs = [run("base", None, 0.80, 0.50)]
    runs += [run("codiemb", seed, 0.85 + d, 0.60 + d) for seed, d in ((1, 0.0), (2, 0.02))]
    runs += [run("ir_only", 1, 0.79, 0.70), run("sts_cosine", 1, 0.88, 0.52), run("sts_cosent", 1, 0.86, 0.51)]
    runs += [run("sts_only", 1, 0.95, 0.95)]  # CoDiEmb's own STS loss: never the baseline
    runs += [run("ratio_delta_fusion", 1, 0.87, 0.66), run("ratio_uniform_soup", 1, 0.97, 0.97)]  # the soup: a control
    lines = headline_table(runs).splitlines()
    assert lines[0] == "| model | seeds | STS dev Spearman | IR scifact_dev nDCG@10 |"  # the BEIR set, not `dev`
    assert lines[2:] == [
        "| base | - | 0.8000 | 0.5000 |",
        "| codiemb | 1, 2 | 0.8600 ± 0.0141 | 0.6100 ± 0.0141 |",
        "| ratio_delta_fusion | 1 | 0.8700 | 0.6600 |",
        "| best single-loss baseline on STS: sts_cosine | 1 | 0.8800 | 0.5200 |",
        "| best single-loss baseline on IR: ir_only | 1 | 0.7900 | 0.7000 |",
    ]


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


def test_ratio_fusion_is_the_average_of_the_two_final_models(tiny_recipe, tmp_path):
    """(h') uniform soup scores what the hand-averaged weights of the 3:1 and 1:3 runs score."""
    study = Study(str(tiny_recipe), ["--max_seq_length", "32"], max_steps=3, results_dir=tmp_path / "r",
                  work_dir=tmp_path / "w")  # fmt: skip
    for key in RATIO_FUSION_INPUTS:
        study.run_method(key, seed=5)
    finals = [SentenceTransformer(str(study.final_model_dir(key, 5)), device="cpu") for key in RATIO_FUSION_INPUTS]
    averaged = SentenceTransformer(str(study.final_model_dir(RATIO_FUSION_INPUTS[0], 5)), device="cpu")
    states = [m.state_dict() for m in finals]
    with torch.no_grad():
        averaged.load_state_dict({name: (states[0][name] + states[1][name]) / 2 for name in states[0]})
    expected = study.evaluate(averaged)
    soup = {r["method"]: r for r in study.run_ratio_fusion(5)}["ratio_uniform_soup"]
    for name, value in expected.items():
        assert soup["metrics"][name] == pytest.approx(value, abs=1e-5), name
    delta = json.loads((tmp_path / "r" / "tiny-encoder" / "runs" / "ratio_delta_fusion-seed5.json").read_text())
    assert delta["fused_runs"] == ["ratio_ir3_sts1-seed5", "ratio_ir1_sts3-seed5"]
    # Resume: a stored (h) needs neither the kept models nor a new fusion.
    assert not study.final_model_dir(RATIO_FUSION_INPUTS[0], 5).exists()
    assert study.run_ratio_fusion(5)[0]["metrics"] == delta["metrics"]


def test_study_on_beir_folders_reports_the_beir_ndcg_first(tmp_path):
    """A recipe that trains on ``ir_train_beir`` (mined negatives) and evaluates on ``ir_eval_beir``, as the SciFact
    recipe does: the runs carry the BEIR nDCG@10, and the report puts it first (table and plot axis)."""
    make_tiny_model(tmp_path / "tiny")
    beir = write_beir_folder(tmp_path / "fixture")
    mined = tmp_path / "mined.jsonl"
    others = ["c-train", "c-bike", "c-moon", "c-rain"]
    mined.write_text("".join(
        json.dumps({"query_id": q, "negatives": [CORPUS[c][1] for c in others]}) + "\n"
        for q in ("q-temp", "q-store", "q-bread")
    ))  # fmt: skip
    recipe_dir = tmp_path / "beir-encoder"
    recipe_dir.mkdir()
    recipe = {
        "model_name_or_path": str(tmp_path / "tiny" / "model"),
        "ir_train_beir": [f"{beir}:train:{mined}"],
        "sts_train": ["demo:sts_train.jsonl"],
        "ir_eval_beir": [f"{beir}:dev"],
        "sts_eval": ["demo:sts_dev.jsonl"],
        "ir_eval_from_sts": True,  # a second IR set, paraphrase retrieval, which must not become the IR axis
        "max_train_records": 16, "max_eval_records": 20, "ir_batch_size": 2, "sts_batch_size": 4,
        "num_positives": 1, "num_negatives": 2, "learning_rate": 1e-3, "sts_score_range": [0, 5],
    }  # fmt: skip
    (recipe_dir / "config.yaml").write_text(yaml.safe_dump(recipe))
    results = tmp_path / "results"
    study = Study(str(recipe_dir / "config.yaml"), ["--max_seq_length", "32"], 3, results, tmp_path / "work")
    assert study.beir_ir_sets == ["fixture_dev"] and study.datasets["fixture_train"].num_rows == 3
    runs = study.run(["ir_only", "sts_cosine"], seeds=[1])
    ir_only = runs[1]
    assert ir_only["updates"] == {"ir": 3} and ir_only["beir_ir_sets"] == ["fixture_dev"]
    assert {"ir/fixture_dev/ndcg@10", "ir/sts_dev-paraphrase-ir/ndcg@10"} <= set(ir_only["metrics"])
    _, ir_keys = metric_keys(runs)
    assert ir_keys[0] == "ir/fixture_dev/ndcg@10"  # "fixture" < "sts" anyway: also check against a later name
    renamed = [{**r, "beir_ir_sets": ["sts_dev-paraphrase-ir"]} for r in runs]
    assert metric_keys(renamed)[1][0] == "ir/sts_dev-paraphrase-ir/ndcg@10"
    write_report(results)
    header = (results / "beir-encoder" / "study.md").read_text().split("| method |")[1].splitlines()[0]
    assert header.index("IR fixture_dev nDCG@10") < header.index("IR sts_dev-paraphrase-ir nDCG@10")


def test_equal_data_study_trains_epochs_and_keeps_the_dev_best_checkpoint(tiny_recipe, tmp_path):
    """Issue 19, item 5: every method trains the same number of epochs over its own data, evaluates its dev sets at
    every epoch and keeps the checkpoint that is best on dev by the metric that fits it; the final (whole-corpus)
    scores are those of that checkpoint."""
    results, work = tmp_path / "results", tmp_path / "work"
    methods = ["ir_only", "sts_cosine", "mixed_infonce", "codiemb"]
    study = Study(str(tiny_recipe), ["--max_seq_length", "32"], None, results, work, epochs=2, eval_max_corpus=10_000,
                  keep_models=True)  # fmt: skip
    study.run(methods, seeds=[1])
    expected_metric = {"ir_only": "codiemb_ir_score", "sts_cosine": "codiemb_sts_score",
                       "mixed_infonce": "codiemb_score", "codiemb": "codiemb_score"}  # fmt: skip
    runs_dir = results / "tiny-encoder" / "runs"
    for key in methods:
        run = json.loads((runs_dir / f"{key}-seed1.json").read_text())
        assert run["epochs"] == 2 and run["max_steps"] is None and run["epochs_trained"] == pytest.approx(2.0), key
        assert run["selection_metric"] == expected_metric[key] and run["train_runtime_s"] > 0
        assert run["device"] == device_description()
        # An independent argmax over the Trainer's own log: one evaluation per epoch, the best one is the one loaded.
        state = json.loads((results / "tiny-encoder" / "logs" / f"{key}-seed1.trainer_state.json").read_text())
        metric = f"eval_{expected_metric[key]}"
        evaluations = [entry for entry in state["log_history"] if metric in entry]
        assert [round(entry["epoch"]) for entry in evaluations] == [1, 2], key
        best = max(evaluations, key=lambda entry: entry[metric])  # the first of equal scores, as the Trainer keeps
        assert run["best_checkpoint_step"] == best["step"], key
        assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")
        assert run["steps_trained"] == evaluations[-1]["step"] == sum(run["updates"].values()), key
        # The final scores are the loaded checkpoint's: with the whole (uncapped) tiny corpus they equal its log.
        sts = statistics.fmean(v for k, v in run["metrics"].items() if k.startswith("sts/") and "spearman" in k)
        ir = statistics.fmean(v for k, v in run["metrics"].items() if k.startswith("ir/") and k.endswith("ndcg@10"))
        assert sts == pytest.approx(best["eval_codiemb_sts_score"], abs=1e-5), key
        assert ir == pytest.approx(best["eval_codiemb_ir_score"], abs=1e-5), key
    epochs = {json.loads((runs_dir / f"{key}-seed1.json").read_text())["epochs_trained"] for key in methods}
    assert epochs == {2.0}, "every method saw the same number of epochs"
    assert not any(work.rglob("checkpoint-*")), "training folders are removed after evaluation"
    # keep_models: each run's evaluated model is kept, and scores what its record says (evaluated again here).
    assert sorted(p.name for p in study.kept_model_dir("ir_only", 1).parent.iterdir()) == sorted(f"{k}-seed1" for k in methods)
    from sentence_transformers import SentenceTransformer

    kept = study.evaluate(SentenceTransformer(str(study.kept_model_dir("ir_only", 1)), device="cpu"))
    stored = json.loads((runs_dir / "ir_only-seed1.json").read_text())["metrics"]
    assert {k: kept[k] for k in stored} == pytest.approx(stored, abs=1e-5)
    assert not (runs_dir / "codiemb_delta_fusion-seed1.json").exists()  # (f) belongs to the equal-updates study

    # Resume, and no mixing of budgets: a stored equal-data run is not redone, nor reused by an equal-updates study.
    mtimes = {p.name: p.stat().st_mtime_ns for p in runs_dir.glob("*.json")}
    Study(str(tiny_recipe), ["--max_seq_length", "32"], None, results, work, epochs=2).run(["ir_only"], seeds=[1])
    assert {p.name: p.stat().st_mtime_ns for p in runs_dir.glob("*.json")} == mtimes
    with pytest.raises(ValueError, match="trained for 2 epochs, this study asks for 3 updates"):
        Study(str(tiny_recipe), ["--max_seq_length", "32"], 3, results, work).run(["ir_only"], seeds=[1])
    with pytest.raises(ValueError, match="exactly one budget"):
        Study(str(tiny_recipe), [], 3, results, work, epochs=2)

    write_report(results)
    table = (results / "tiny-encoder" / "study.md").read_text()
    assert "2 epochs per method over its own data (equal data)" in table
    assert "| epochs | dev-best epoch | updates IR / STS | train time (s) |" in table
    ir_row = next(line for line in table.splitlines() if line.startswith(f"| {METHODS['ir_only'].label} |"))
    assert "| 2 |" in ir_row
    assert "## tiny-encoder (2 epochs per method)" in (results / "summary.md").read_text()


def test_equal_data_updates_are_whole_epochs_of_each_methods_own_data(tmp_path):
    args = args_for(tmp_path)
    one = planned_updates(METHODS["codiemb"].build(DATASETS, TASKS, args, (0.0, 5.0)), args, epochs=1)
    assert one == {"ir": 3, "sts": 5}  # 12 IR records / 4, 20 STS pairs / 4: every batch once per epoch
    assert planned_updates(METHODS["codiemb"].build(DATASETS, TASKS, args, (0.0, 5.0)), args, epochs=3) == {
        "ir": 9, "sts": 15
    }  # fmt: skip
    assert planned_updates(METHODS["ir_only"].build(DATASETS, TASKS, args, (0.0, 5.0)), args, epochs=2) == {"ir": 6}
    # IR-heavy in passes: every IR batch and a third of the STS batches (round(5 / 3) = 2) per epoch.
    heavy = args_for(tmp_path, "--task_ratio", "ir:3,sts:1", "--task_ratio_unit", "passes")
    setup = METHODS["codiemb"].build(DATASETS, TASKS, heavy, (0.0, 5.0))
    assert planned_updates(setup, heavy, epochs=2) == {"ir": 6, "sts": 4}


def test_target_check_compares_the_tradeoff_row_with_the_best_specialist_base_and_mixed_infonce():
    from codiemb_study.report import target_check
    from codiemb_study.runner import TRADEOFF_ROW

    def run(method: str, seed: int | None, sts: float, ir: float) -> dict:
        return {"method": method, "label": method, "seed": seed, "beir_ir_sets": ["scifact_dev"],
                "metrics": {"sts/dev/spearman_cosine": sts, "ir/scifact_dev/ndcg@10": ir}}  # fmt: skip

    runs = [run("base", None, 0.80, 0.50), run("ir_only", 1, 0.81, 0.70), run("sts_cosine", 1, 0.88, 0.52),
            run("mixed_infonce", 1, 0.82, 0.66), run(TRADEOFF_ROW, 1, 0.877, 0.69),
            run(TRADEOFF_ROW, 2, 0.875, 0.68)]  # fmt: skip
    assert target_check(runs[:-2]) == ""
    lines = target_check(runs).splitlines()
    assert lines[2] == "| within 0.5 pt of the best specialist on STS (sts_cosine) | dev | 0.8760 | 0.8800 | -0.40 | yes |"
    assert lines[5] == (
        "| within 0.5 pt of the best specialist on IR (ir_only) | scifact_dev | 0.6850 | 0.7000 | -1.50 | **no** |"
    )
    assert lines[3].endswith("| +7.60 | yes |") and lines[7].endswith("| +2.50 | yes |")


def test_training_args_take_a_runs_extra_flags_without_changing_the_study(tiny_recipe, tmp_path):
    """collect-tradeoff rebuilds a run's arguments with that run's own task_ratio_unit and task_ratio; the study keeps
    its overrides."""
    study = Study(str(tiny_recipe), ["--max_seq_length", "32"], None, tmp_path / "r", tmp_path / "w", epochs=2)
    passes = study.training_args("ratio_ir3_sts1", 1, extra_flags=["--task_ratio_unit", "passes"])
    assert passes.task_ratio_unit == "passes" and passes.task_ratio == {"ir": 3.0, "sts": 1.0}
    assert study.training_args("ratio_ir3_sts1", 1).task_ratio_unit == "updates"
    # A trade-off run trained with its own ratio (codiemb tradeoff --ir_heavy_ratio ir:1,sts:1) is planned with it.
    own = study.training_args("ratio_ir3_sts1", 1, extra_flags=["--task_ratio_unit", "passes"], task_ratio="ir:1,sts:1")
    assert own.task_ratio == {"ir": 1.0, "sts": 1.0} and own.task_ratio_unit == "passes"
    assert study.training_args("ratio_ir3_sts1", 1).task_ratio == {"ir": 3.0, "sts": 1.0}
    assert study.overrides == ["--max_seq_length", "32"]


def test_tradeoff_variants_are_rows_of_their_own_with_their_own_target_check():
    """A set-up collected with --variant is a row after the default one (tables, plot markers) and gets its own check."""
    from codiemb_study.report import group_runs, row_index, target_check
    from codiemb_study.runner import TRADEOFF_ROW, is_tradeoff_row, tradeoff_row_key

    def run(method: str, seed: int | None, sts: float, ir: float) -> dict:
        return {"method": method, "label": method, "seed": seed, "beir_ir_sets": ["scifact_dev"],
                "metrics": {"sts/dev/spearman_cosine": sts, "ir/scifact_dev/ndcg@10": ir}}  # fmt: skip

    pearson, both = tradeoff_row_key("pearson"), tradeoff_row_key("pearson_sts-ir")
    assert (pearson, tradeoff_row_key()) == ("codiemb_tradeoff_pearson", TRADEOFF_ROW)
    assert is_tradeoff_row(pearson) and is_tradeoff_row(TRADEOFF_ROW) and not is_tradeoff_row("codiemb")
    with pytest.raises(ValueError, match="variant name"):
        tradeoff_row_key("a b")
    runs = [run(both, 1, 0.883, 0.64), run(pearson, 1, 0.881, 0.70), run(TRADEOFF_ROW, 1, 0.877, 0.69),
            run("sts_cosine", 1, 0.88, 0.52), run("ir_only", 1, 0.81, 0.70), run("base", None, 0.80, 0.50)]  # fmt: skip
    assert list(group_runs(runs)) == ["base", "ir_only", "sts_cosine", TRADEOFF_ROW, pearson, both]
    keys = list(group_runs(runs))
    assert row_index(pearson, keys) == row_index(TRADEOFF_ROW) + 1 and row_index(both, keys) == row_index(pearson, keys) + 1
    with pytest.raises(ValueError, match="Unknown study row"):
        row_index("nonsense", keys)
    lines = target_check(runs, pearson).splitlines()
    assert lines[2] == "| within 0.5 pt of the best specialist on STS (sts_cosine) | dev | 0.8810 | 0.8800 | +0.10 | yes |"
    assert lines[4] == "| within 0.5 pt of the best specialist on IR (ir_only) | scifact_dev | 0.7000 | 0.7000 | +0.00 | yes |"
    assert target_check(runs, both).splitlines()[4].endswith("| -6.00 | **no** |")
    table = headline_table(runs)
    assert [line.split(" | ")[0] for line in table.splitlines()[2:5]] == ["| base", f"| {TRADEOFF_ROW}", f"| {pearson}"]


def test_a_tradeoff_rows_label_names_its_runs_ratios():
    from codiemb_study.runner import tradeoff_label

    assert tradeoff_label() == "(t) `codiemb tradeoff`: IR-heavy 3:1 + STS-heavy 1:3 runs, dev-guided fusion"
    assert tradeoff_label("sts:1,ir:1", "ir:1,sts:2.5", passes=True) == (
        "(t) `codiemb tradeoff`: IR-heavy 1:1 + STS-heavy 1:2.5 runs (passes over each task's data), dev-guided fusion"
    )
    assert tradeoff_label("ir:3,sts:1", None, passes=True, ir_heavy_runs=2) == (
        "(t) `codiemb tradeoff`: 2 IR-heavy 3:1 (one seed each) runs (passes over each task's data), dev-guided fusion"
    )


def test_a_tradeoff_runs_method_follows_its_name():
    from codiemb_study.runner import tradeoff_run_method

    assert [tradeoff_run_method(n) for n in ("ir-heavy", "ir-heavy-seed43", "sts-heavy")] == [
        "ratio_ir3_sts1", "ratio_ir3_sts1", "ratio_ir1_sts3"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="Unknown codiemb tradeoff run 'other'"):
        tradeoff_run_method("other")


def test_a_collected_tradeoff_must_have_been_trained_with_the_studys_overrides():
    from codiemb_study.runner import overrides_missing_from

    argv = ["train", "recipe.yaml", "--max_seq_length", "128", "--pro_weight=0", "--rank_kl_weight", "5", "--rank_kl_weight", "0"]
    assert overrides_missing_from(argv, ["--max_seq_length", "128", "--pro_weight", "0", "--rank_kl_weight=0"]) == []
    assert overrides_missing_from(argv, ["--multi_layer_weight", "0", "--max_seq_length", "64"]) == [
        "--multi_layer_weight 0", "--max_seq_length 64"
    ]
    # A switch given without a value must be on the run's command line too (either spelling).
    assert overrides_missing_from([*argv, "--gradient-checkpointing"], ["--gradient_checkpointing", "--bf16"]) == ["--bf16"]


def test_checkpoint_choice_marks_the_checkpoint_each_score_would_choose(tmp_path):
    from checkpoint_choice import capped_scores, table
    from hf_codiemb.fusion.selection import checkpoint_steps

    run = tmp_path / "runs" / "ir-heavy"
    log = [{"step": 10, "eval_codiemb_ir_score": 0.70}, {"loss": 1.0, "step": 15}, {"step": 20, "eval_codiemb_ir_score": 0.76},
           {"step": 30, "eval_codiemb_ir_score": 0.75}]  # fmt: skip
    for step in (10, 20, 30):
        (run / f"checkpoint-{step}").mkdir(parents=True)
    (run / "checkpoint-30" / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    assert [c.name for c in checkpoint_steps(run).values()] == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    assert capped_scores(run) == {10: 0.70, 20: 0.76, 30: 0.75}
    rows = [{"setup": "s", "epoch": e, "step": s, "capped_ir": c, "ir": w, "sts": 0.88}
            for e, s, c, w in ((1, 10, 0.70, 0.60), (2, 20, 0.76, 0.61), (3, 30, 0.75, 0.63))]  # fmt: skip
    lines = table(rows).splitlines()[2:]
    assert lines[1].endswith("| 0.7600 | 0.6100 | 0.8800 | **yes** |  |")
    assert lines[2].endswith("| 0.7500 | 0.6300 | 0.8800 |  | **yes** |")
