"""`codiemb tradeoff`: two ratio runs with dev evaluation, checkpoints chosen by the logs, searched fusion; resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_codiemb.cli import main

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, model_dir: Path, **overrides) -> Path:
    values = {
        "model_name_or_path": str(model_dir),
        "ir_train": "[demo:ir_train.jsonl]",
        "sts_train": "[demo:sts_train.jsonl]",
        "sts_eval": "[demo:sts_dev.jsonl]",
        "ir_eval": "[demo:ir_dev.jsonl]",
        "max_eval_records": "30",
        "ir_batch_size": "8",
        "sts_batch_size": "16",
        "max_steps": "6",
        "learning_rate": "2.0e-3",
        "eval_strategy": "steps",
        "eval_steps": "2",
        "report_to": "none",
        "use_cpu": "true",
        "evaluate_before": "false",
        "logging_steps": "1",
    }
    values.update({key: str(value) for key, value in overrides.items()})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    return recipe


def _best_step(run: Path, key: str) -> int:
    """The step with the highest ``key`` in the run's newest trainer_state.json (read independently)."""
    newest = max(run.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    entries = [e for e in json.loads((newest / "trainer_state.json").read_text())["log_history"] if key in e]
    return max(entries, key=lambda e: (e[key], -e["step"]))["step"]


def test_tradeoff_trains_both_runs_fuses_their_dev_best_checkpoints_and_resumes(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir)
    out = tmp_path / "tradeoff"
    argv = ["tradeoff", str(recipe), "--output_dir", str(out), "--search_p", "0", "1", "--search_shares", "0.5"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out / "model")

    # Each run kept a checkpoint at every evaluation; the fusion's inputs are the steps the logs name.
    for name in ("ir-heavy", "sts-heavy"):
        assert sorted(p.name for p in (out / "runs" / name).glob("checkpoint-*")) == [
            "checkpoint-2", "checkpoint-4", "checkpoint-6"
        ]  # fmt: skip
    ir_step = _best_step(out / "runs" / "ir-heavy", "eval_codiemb_ir_score")
    sts_step = _best_step(out / "runs" / "sts-heavy", "eval_codiemb_sts_score")
    search = json.loads((out / "model" / "fusion_search.json").read_text())
    assert [s["step"] for s in search["selections"]] == [ir_step, sts_step]
    assert [s["run"] for s in search["selections"]] == ["ir-heavy", "sts-heavy"]
    # The two ratio runs differ in their share of updates (the IR-heavy one trained IR on most steps).
    ir_log = (out / "logs" / "ir-heavy.log").read_text()
    assert "--task_ratio" in json.loads((out / "runs" / "ir-heavy.done.json").read_text())["argv"]
    assert ir_log.count("ir_train/loss") > ir_log.count("sts_train/loss")
    # The written model is the search's best by the weight, with the table, the front plot, the card and the summary.
    chosen = max(search["candidates"], key=lambda c: 0.5 * c["ir_score"] + 0.5 * c["sts_score"])
    assert search["chosen"] == chosen["label"]
    for name in ("fusion_search.md", "fusion_front.png", "README.md", "model.safetensors"):
        assert (out / "model" / name).is_file()
    summary = (out / "tradeoff.md").read_text()
    assert f"| ir-heavy | ir:3,sts:1 | step {ir_step} | best_ir |" in summary and chosen["label"] in summary
    weights = load_file(out / "model" / "model.safetensors")

    # Run again: nothing is trained or fused again.
    logs = {name: (out / "logs" / f"{name}.log").read_text() for name in ("ir-heavy", "sts-heavy")}
    assert main(argv) == 0
    assert {name: (out / "logs" / f"{name}.log").read_text() for name in logs} == logs
    again = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(weights[key], again[key]) for key in weights)

    # An interrupted run (no completion record, its last checkpoint lost) resumes from its latest checkpoint.
    (out / "runs" / "sts-heavy.done.json").unlink()
    for path in sorted((out / "runs" / "sts-heavy" / "checkpoint-6").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (out / "runs" / "sts-heavy" / "checkpoint-6").rmdir()
    (out / "tradeoff.md").unlink()
    assert main(argv) == 0
    resumed = (out / "logs" / "sts-heavy.log").read_text()[len(logs["sts-heavy"]) :]
    assert "resume_from_checkpoint" in resumed or "Resuming training from" in resumed
    assert "checkpoint-4" in resumed
    assert (out / "runs" / "sts-heavy" / "checkpoint-6" / "trainer_state.json").is_file()
    assert (out / "runs" / "sts-heavy.done.json").is_file() and (out / "tradeoff.md").is_file()

    # A changed recipe is refused, not mixed with the finished runs.
    recipe.write_text(recipe.read_text().replace("learning_rate: 2.0e-3", "learning_rate: 3.0e-3"))
    assert main(argv) == 2
    assert "was trained from another recipe or other flags" in capsys.readouterr().err


def test_tradeoff_with_seeded_ir_heavy_runs_fuses_each_runs_best_ir_checkpoint(tmp_path, tiny_model_dir, capsys):
    """`--ir_heavy_seeds 43 --sts_heavy_ratio none`: two IR-heavy runs that differ only in their seed, no STS-heavy run;
    each run's best-IR checkpoint (as its log names it) is an input of the fusion."""
    recipe = _recipe(tmp_path, tiny_model_dir, seed=42)
    out = tmp_path / "tradeoff"
    argv = ["tradeoff", str(recipe), "--output_dir", str(out), "--ir_heavy_seeds", "43", "--sts_heavy_ratio", "none",
            "--parallel", "2", "--search_p", "1", "--search_shares", "0.5"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out / "model")
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "ir-heavy", "ir-heavy-seed43", "ir-heavy-seed43.done.json", "ir-heavy.done.json"
    ]  # fmt: skip
    records = {name: json.loads((out / "runs" / f"{name}.done.json").read_text()) for name in ("ir-heavy", "ir-heavy-seed43")}
    # The same command line but the seed, given last (it wins over the recipe's); the same ratio for both.
    assert records["ir-heavy-seed43"]["argv"][-2:] == ["--seed", "43"]
    assert records["ir-heavy-seed43"]["argv"][:-2] == [
        arg.replace("ir-heavy", "ir-heavy-seed43") if arg.endswith("ir-heavy") else arg
        for arg in records["ir-heavy"]["argv"]
    ]
    states = {
        name: json.loads((out / "runs" / name / "checkpoint-6" / "trainer_state.json").read_text())
        for name in records
    }
    # Different seeds: different training (the logged losses differ).
    losses = {name: [e["loss"] for e in state["log_history"] if "loss" in e] for name, state in states.items()}
    assert losses["ir-heavy"] != losses["ir-heavy-seed43"]
    search = json.loads((out / "model" / "fusion_search.json").read_text())
    assert [(s["run"], s["criterion"], s["step"]) for s in search["selections"]] == [
        ("ir-heavy", "best_ir", _best_step(out / "runs" / "ir-heavy", "eval_codiemb_ir_score")),
        ("ir-heavy-seed43", "best_ir", _best_step(out / "runs" / "ir-heavy-seed43", "eval_codiemb_ir_score")),
    ]
    summary = (out / "tradeoff.md").read_text()
    assert summary.startswith("# Trade-off set-up: ir-heavy + ir-heavy-seed43 runs")
    assert "| ir-heavy-seed43 | ir:3,sts:1 | step" in summary and "sts-heavy" not in summary


def test_finished_runs_are_listed_in_the_order_they_are_planned(tmp_path):
    from hf_codiemb.tradeoff import finished_run_names, is_ir_heavy_run

    for name in ("sts-heavy", "ir-heavy-seed43", "ir-heavy", "ir-heavy-seed142"):
        (tmp_path / f"{name}.done.json").write_text("{}")
    (tmp_path / "ir-heavy-seed44").mkdir()  # a run without a completion record is not finished
    assert finished_run_names(tmp_path) == ["ir-heavy", "ir-heavy-seed142", "ir-heavy-seed43", "sts-heavy"]
    assert [is_ir_heavy_run(n) for n in ("ir-heavy", "ir-heavy-seed43", "sts-heavy", "ir-heavyish")] == [
        True, True, False, False
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sts_heavy_ratio", "none"], "one run, nothing to fuse: name further IR-heavy runs with --ir_heavy_seeds"),
        (["--ir_heavy_seeds", "42"], "the IR-heavy runs need distinct seeds, got [42] beside the recipe's seed 42"),
        (["--ir_heavy_seeds", "43", "43"], "need distinct seeds"),
        (["--parallel", "3"], "field 'parallel': must be 1 to 2 (the number of runs), got 3"),
        (["--sts_heavy_ratio", "ir:2,sts"], "field 'sts_heavy_ratio':"),
    ],
)
def test_tradeoff_refuses_a_set_of_runs_it_cannot_fuse(tmp_path, tiny_model_dir, capsys, flags, message):
    recipe = _recipe(tmp_path, tiny_model_dir, seed=42)
    assert main(["tradeoff", str(recipe), "--output_dir", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codiemb tradeoff: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eval_strategy": "'no'"}, "picks checkpoints by their dev scores: set eval_strategy"),
        ({"save_total_limit": 1}, "unset save_total_limit"),
    ],
)
def test_tradeoff_refuses_a_recipe_it_cannot_choose_checkpoints_in(tmp_path, tiny_model_dir, capsys, overrides, message):
    recipe = _recipe(tmp_path, tiny_model_dir, **overrides)
    assert main(["tradeoff", str(recipe), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codiemb tradeoff: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", sorted(REPO.glob("recipes/**/tradeoff*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_tradeoff_configs_parse_and_their_training_recipe_accepts_their_flags(config, monkeypatch):
    """A recommended set-up is `codiemb tradeoff --config FILE`: its options parse, its training recipe exists and
    takes its train_args as `codiemb tradeoff` checks them before training (dev evaluation, checkpoints kept)."""
    from hf_codiemb.commands.tradeoff import build_parser
    from hf_codiemb.tradeoff import _check_recipe

    monkeypatch.chdir(REPO)
    (args,) = build_parser().parse(["--config", str(config.relative_to(REPO))])
    assert (REPO / args.recipe).is_file() and args.output_dir
    training = _check_recipe(args)[2]
    # The settings the file documents: equal data per task, 5 epochs, the Pearson-only STS loss [ours].
    assert training.task_ratio_unit == "passes" and training.num_train_epochs == 5
    assert (training.pro_weight, training.rank_kl_weight, training.multi_layer_weight) == (0.0, 0.0, 0.0)
    assert training.pearson_weight > 0


def test_a_recipe_given_first_replaces_the_options_files_recipe(monkeypatch):
    """`codiemb tradeoff OTHER_RECIPE --config FILE` runs FILE's set-up on OTHER_RECIPE (docs/usage.md): the recipe
    given first wins over the file's `recipe`, the file's ratios, seeds and train_args stay, and flags after `--`
    come after the file's train_args (so they win)."""
    from hf_codiemb.commands.tradeoff import build_parser
    from hf_codiemb.tradeoff import _check_recipe

    monkeypatch.chdir(REPO)
    config = "recipes/small/paraphrase-minilm-l3/tradeoff-seeds.yaml"
    other = "recipes/small/minilm-l6/scifact_stsb.yaml"
    (from_file,) = build_parser().parse(["--config", config])
    (args,) = build_parser().parse([other, "--config", config, "--output_dir", "elsewhere"])
    assert from_file.recipe != other and args.recipe == other and args.output_dir == "elsewhere"
    for name in ("ir_heavy_ratio", "sts_heavy_ratio", "ir_heavy_seeds", "search_p", "ir_weight", "train_args"):
        assert getattr(args, name) == getattr(from_file, name), name
    args.train_args = [*args.train_args, "--num_train_epochs", "2"]  # what `run` does with the flags after `--`
    model_args, _, training = _check_recipe(args)
    assert model_args.model_name_or_path == "packaged:all-minilm-l6-v2"  # the L6 recipe's model, not L3's
    assert training.num_train_epochs == 2 and training.task_ratio_unit == "passes" and training.pro_weight == 0.0
