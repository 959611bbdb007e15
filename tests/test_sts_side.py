"""Issue 19 item 4 (recipes/study/codiemb_study/sts_side.py): the STS-only copy of a recipe, the variants run by the
study's runner with their overrides, and the table built from the run files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import make_tiny_model

from codiemb_study.runner import device_description
from codiemb_study.sts_side import VARIANTS, run_variants, sts_only_recipe
from codiemb_study.sts_side_report import paired_difference, write_report
from hf_codiemb.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("encoder", ["paraphrase-minilm-l3", "minilm-l6"])
def test_sts_only_copy_of_the_scifact_recipes_drops_only_the_ir_data(tmp_path, encoder):
    source = REPO / "recipes" / "small" / encoder / "scifact_stsb.yaml"
    derived = sts_only_recipe(source, tmp_path)
    assert derived == tmp_path / encoder / "scifact_stsb.yaml"  # the study names the encoder by this folder
    original, copy = yaml.safe_load(source.read_text()), yaml.safe_load(derived.read_text())
    assert original["ir_train_beir"] and original["ir_eval_beir"]
    assert copy["ir_train_beir"] == [] and copy["ir_eval_beir"] == []
    assert {k: v for k, v in copy.items() if not k.startswith("ir_")} == {
        k: v for k, v in original.items() if not k.startswith("ir_")
    }
    _, data_args, _, _ = parse_recipe(["--config", str(derived)])
    assert data_args.ir_train_beir == [] and data_args.sts_train == original["sts_train"]
    kept = yaml.safe_load(sts_only_recipe(source, tmp_path / "keep", keep_ir_eval=True).read_text())
    assert kept["ir_train_beir"] == [] and kept["ir_eval_beir"] == original["ir_eval_beir"]


def test_sts_only_copy_names_the_recipe_without_ir_training_data(tmp_path):
    recipe = tmp_path / "enc" / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text("sts_train:\n- a.tsv\n")
    with pytest.raises(ValueError, match=r"r\.yaml: expected one top-level ir_train_beir entry"):
        sts_only_recipe(recipe, tmp_path / "out")


def test_variants_run_with_their_overrides_and_the_table_is_built_from_the_run_files(tmp_path):
    make_tiny_model(tmp_path / "tiny")
    recipe_dir = tmp_path / "tiny-encoder"
    recipe_dir.mkdir()
    # safe_dump style (unindented list items); the mined-negatives file does not exist: it must not be read
    (recipe_dir / "config.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": str(tmp_path / "tiny" / "model"),
        "ir_train_beir": [f"{tmp_path}/no-beir:train:{tmp_path}/missing-mined.jsonl"],
        "ir_eval_beir": [f"{tmp_path}/no-beir:dev"],
        "sts_train": ["demo:sts_train.jsonl"], "sts_eval": ["demo:sts_dev.jsonl"], "ir_eval_from_sts": False,
        "max_train_records": 32, "max_eval_records": 20, "sts_batch_size": 8, "learning_rate": 1e-3,
        "sts_score_range": [0, 5],
    }))  # fmt: skip
    results = tmp_path / "results"
    keys = ["b", "b_pearson_only"]
    run_variants(str(recipe_dir / "config.yaml"), ["--max_seq_length", "32"], keys, [1, 2], 3, results, tmp_path / "w")
    runs = {}
    for key in keys:
        for seed in (1, 2):
            path = results / key / "tiny-encoder" / "runs" / f"{VARIANTS[key].method}-seed{seed}.json"
            runs[key, seed] = json.loads(path.read_text())
            assert runs[key, seed]["updates"] == {"sts": 3}
            assert runs[key, seed]["overrides"] == ["--max_seq_length", "32", *VARIANTS[key].overrides]
    assert (results / "base" / "tiny-encoder" / "runs" / "base.json").is_file()
    # Pearson only: its loss is 2 * (1 - pearson) alone, unlike the reference mix's (the overrides took effect)
    assert runs["b_pearson_only", 1]["train_loss"] != pytest.approx(runs["b", 1]["train_loss"])
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    assert json.loads((results / "machines" / f"tiny-encoder-{kind}.json").read_text())["device"] == device_description()

    summary = write_report(results).read_text()
    key = "sts/sts_dev/spearman_cosine"
    pearson_only = [runs["b_pearson_only", s]["metrics"][key] for s in (1, 2)]
    diff = statistics.fmean(runs["b_pearson_only", s]["metrics"][key] - runs["b", s]["metrics"][key] for s in (1, 2))
    row = next(line for line in summary.splitlines() if line.startswith("| `b_pearson_only`"))
    assert f"{statistics.fmean(pearson_only):.4f} ± {statistics.stdev(pearson_only):.4f}" in row
    assert f"| {100 * diff:+.2f} |" in row
    assert "| base encoder (no training) |" in summary and "STS dev set: `sts_dev`; 3 optimizer updates" in summary
    assert "python recipes/study/run_sts_side.py" in summary.split("Commands:")[1]  # the driver, not run_study.py


def test_paired_difference_uses_only_the_shared_seeds():
    def run(seed: int, value: float) -> dict:
        return {"seed": seed, "metrics": {"sts/dev/spearman_cosine": value}}

    runs, reference = [run(1, 0.80), run(2, 0.90), run(3, 0.50)], [run(1, 0.70), run(2, 0.70)]
    assert paired_difference(runs, reference, "sts/dev/spearman_cosine") == "+15.00"
    assert paired_difference(runs, [], "sts/dev/spearman_cosine") == "-"


def test_reference_rows_and_dagger_differences_come_from_the_reference_folder(tmp_path):
    def store(path: Path, method: str, seed: int, value: float, device: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        run = {"encoder": "enc", "method": method, "seed": seed, "max_steps": 5, "train_runtime_s": 1.0,
               "device": device, "command": "cmd", "recipe": "",
               "metrics": {"sts/dev/spearman_cosine": value, "sts/dev/pearson_cosine": value}}  # fmt: skip
        (path / f"{method}-seed{seed}.json").write_text(json.dumps(run))

    results, reference = tmp_path / "results", tmp_path / "scifact"
    for seed, value in ((42, 0.80), (43, 0.82)):
        store(results / "b" / "enc" / "runs", "sts_only", seed, value, "cpu: 2 threads")
        store(reference / "enc" / "runs", "sts_cosine", seed, value + 0.01 * (seed - 41), "cuda: GPU")
    store(reference / "enc" / "runs", "sts_only", 42, 0.5, "cuda: GPU")  # this folder has (b): never compared with
    lines = write_report(results, reference).read_text().splitlines()
    b_row = next(line for line in lines if line.startswith("| `b`:"))
    assert "| 0.8100 ± 0.0141 | - | -1.50 † |" in b_row  # (0.80 - 0.81 + 0.82 - 0.84) / 2, against the reference (b2)
    b2_ref = next(line for line in lines if line.startswith("| (b2) as stored in"))
    assert "| +1.50 | - |" in b2_ref  # against this folder's (b), not the reference folder's 0.5
    assert any("cuda: GPU (3 runs)" in line for line in lines)
    assert not any("as stored in" in line for line in write_report(results, None).read_text().splitlines())
