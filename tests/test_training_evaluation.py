"""Evaluation during training: dev metrics in trainer_state.json, the combined score, best checkpoint, early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer

from hf_codiemb.arguments import DataArguments, ModelArguments
from hf_codiemb.cli import main
from hf_codiemb.data import demo_data_path
from hf_codiemb.evaluation import evaluate_ir, evaluate_model
from hf_codiemb.pipeline import load_eval_sets
from hf_codiemb.training_evaluation import build_training_evaluator, cap_ir_corpus, combined_score

EVAL_RECORDS = 40


def _recipe(tmp_path: Path, model_dir: Path, **overrides) -> Path:
    values = {
        "model_name_or_path": str(model_dir),
        "ir_train": "[demo:ir_train.jsonl]",
        "sts_train": "[demo:sts_train.jsonl]",
        "sts_eval": "[demo:sts_dev.jsonl]",
        "ir_eval": "[demo:ir_dev.jsonl]",
        "ir_eval_from_sts": "false",
        "max_eval_records": str(EVAL_RECORDS),
        "ir_batch_size": "8",
        "sts_batch_size": "16",
        "output_dir": str(tmp_path / "run"),
        "report_to": "none",
        "use_cpu": "true",
        "logging_steps": "1",
        "evaluate_before": "false",
    }
    values.update({key: str(value) for key, value in overrides.items()})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))
    return recipe


def _evaluations(state_file: Path) -> list[dict]:
    return [entry for entry in json.loads(state_file.read_text())["log_history"] if "eval_codiemb_score" in entry]


def _dev_sts_spearman(model: SentenceTransformer) -> float:
    """Spearman of cosine similarities on the first dev pairs, read straight from the packaged file (scipy)."""
    rows = [json.loads(line) for line in Path(demo_data_path("sts_dev.jsonl")).read_text().splitlines()[:EVAL_RECORDS]]
    first = model.encode([row["query"] for row in rows], convert_to_tensor=True)
    second = model.encode([row["positives"][0] for row in rows], convert_to_tensor=True)
    cosines = torch.nn.functional.cosine_similarity(first, second).numpy()
    return float(spearmanr(cosines, [row["positive_scores"][0] for row in rows]).statistic)


def test_dev_metrics_are_logged_the_best_checkpoint_is_restored_and_early_stopping_stops(tmp_path, tiny_model_dir):
    # A learning rate far too high for the tiny model: the dev score peaks at the first evaluation and then falls, so
    # the best checkpoint is not the last one and early stopping (patience 2) ends the run before max_steps.
    recipe = _recipe(
        tmp_path, tiny_model_dir, learning_rate=0.2, max_steps=12, eval_strategy="steps", eval_steps=2, save_steps=2,
        load_best_model_at_end="true", early_stopping_patience=2,
    )  # fmt: skip
    assert main(["train", str(recipe)]) == 0
    run = tmp_path / "run"
    checkpoints = sorted((int(p.name.split("-")[1]), p) for p in run.glob("checkpoint-*"))
    last_step, last_checkpoint = checkpoints[-1]
    state = json.loads((last_checkpoint / "trainer_state.json").read_text())
    evaluations = _evaluations(last_checkpoint / "trainer_state.json")

    # Every eval_steps until the stop, each with the per-set metrics and the combined score computed from them.
    assert [entry["step"] for entry in evaluations] == list(range(2, last_step + 1, 2))
    for entry in evaluations:
        sts, ir = entry["eval_sts_dev_spearman_cosine"], entry["eval_ir_dev_cosine_ndcg@10"]
        assert entry["eval_codiemb_sts_score"] == sts and entry["eval_codiemb_ir_score"] == ir
        assert entry["eval_codiemb_score"] == pytest.approx(0.5 * ir + 0.5 * sts, abs=1e-12)

    # The logged dev scores are those of the checkpoint saved at that step, recomputed independently (with the same
    # encoding batch size, 32: the collapsing model's near-equal cosines are sensitive to padding-dependent rounding).
    first_checkpoint = checkpoints[0][1]
    first = SentenceTransformer(str(first_checkpoint), device="cpu")
    assert evaluations[0]["eval_sts_dev_spearman_cosine"] == pytest.approx(_dev_sts_spearman(first), abs=1e-5)

    # Early stopping: the run ended before max_steps, after `patience` evaluations without improvement.
    scores = [entry["eval_codiemb_score"] for entry in evaluations]
    best_index = max(range(len(scores)), key=scores.__getitem__)
    assert last_step < 12 and len(scores) - 1 - best_index == 2

    # load_best_model_at_end: the saved model is the best checkpoint by the log (not the last one), and the final
    # evaluation (eval_results.json) is that model's.
    best_step = evaluations[best_index]["step"]
    assert best_step != last_step
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert state["best_metric"] == pytest.approx(scores[best_index])
    saved = load_file(run / "model.safetensors")
    best = load_file(run / f"checkpoint-{best_step}" / "model.safetensors")
    last = load_file(last_checkpoint / "model.safetensors")
    assert saved.keys() == best.keys()
    assert all(torch.equal(saved[key], best[key]) for key in saved)
    assert not all(torch.equal(saved[key], last[key]) for key in saved)
    final = json.loads((run / "eval_results.json").read_text())
    assert final["sts"]["sts_dev"]["spearman_cosine"] == pytest.approx(
        evaluations[best_index]["eval_sts_dev_spearman_cosine"], abs=1e-6
    )


def test_the_combined_score_weighs_independently_computed_task_scores(tiny_model_dir):
    data_args = DataArguments(
        sts_eval=["demo:sts_dev.jsonl"], ir_eval=["demo:ir_dev.jsonl"], max_eval_records=30, eval_ir_weight=0.25
    )
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), query_prompt="query: ")
    sts_sets, ir_sets = load_eval_sets(data_args, model_args)
    evaluator = build_training_evaluator(sts_sets, ir_sets, ir_weight=data_args.eval_ir_weight)
    # The prompts of training reach the evaluators: the paraphrase-IR set built from the STS pairs has the model-level
    # query prompt, the IR dev set the instruction its records carry.
    prompts = {e.name: e.query_prompt for e in evaluator.ir_evaluators}
    instruction = json.loads(Path(demo_data_path("ir_dev.jsonl")).read_text().splitlines()[0])["instruction"]
    assert prompts == {"sts_dev-paraphrase-ir": "query: ", "ir_dev": f"Instruction: {instruction} Query: "}
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    metrics = evaluator(model)
    expected = evaluate_model(model, sts_sets, ir_sets)
    sts = expected["sts"]["sts_dev"]["spearman_cosine"]
    ir = (expected["ir"]["ir_dev"]["ndcg@10"] + expected["ir"]["sts_dev-paraphrase-ir"]["ndcg@10"]) / 2
    assert metrics["codiemb_sts_score"] == pytest.approx(sts, abs=1e-9)
    assert metrics["codiemb_ir_score"] == pytest.approx(ir, abs=1e-9)
    assert metrics["codiemb_score"] == pytest.approx(0.25 * ir + 0.75 * sts, abs=1e-9)
    assert evaluator.primary_metric == "codiemb_score"
    assert combined_score(None, 0.7, 0.25) == 0.7 and combined_score(0.4, None, 0.25) == 0.4


def test_capped_corpus_keeps_every_relevant_document_and_is_the_same_at_every_evaluation():
    corpus = {f"d{i}": f"text {i}" for i in range(1000)}
    relevant = {"q1": {"d5", "d999"}, "q2": {"d500"}}
    capped = cap_ir_corpus(corpus, relevant, 100, seed=3)
    assert len(capped) == 100
    assert {"d5", "d999", "d500"} <= set(capped)
    assert all(corpus[cid] == text for cid, text in capped.items())
    assert list(capped) == [cid for cid in corpus if cid in capped]  # the corpus' order
    assert cap_ir_corpus(corpus, relevant, 100, seed=3) == capped
    assert cap_ir_corpus(corpus, relevant, 100, seed=4) != capped
    assert cap_ir_corpus(corpus, relevant, 2000) == corpus
    # More relevant documents than the cap: all of them, nothing else.
    many = {f"q{i}": {f"d{i}"} for i in range(150)}
    assert set(cap_ir_corpus(corpus, many, 100)) == {f"d{i}" for i in range(150)}


def test_capped_evaluation_scores_the_capped_corpus(tiny_model_dir):
    data_args = DataArguments(ir_eval=["demo:ir_dev.jsonl"], max_eval_records=30)
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir))
    _, ir_sets = load_eval_sets(data_args, model_args)
    spec = ir_sets["ir_dev"]
    assert len(spec.corpus) > 40
    evaluator = build_training_evaluator({}, ir_sets, max_corpus=40, seed=1)
    assert len(evaluator.ir_evaluators[0].corpus) == 40
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    capped_corpus = cap_ir_corpus(spec.corpus, spec.relevant, 40, seed=1)
    expected = evaluate_ir(
        model, spec.queries, capped_corpus, spec.relevant, "ir_dev",
        query_prompt=spec.query_prompt, corpus_prompt=spec.corpus_prompt,
    )  # fmt: skip
    assert evaluator(model)["codiemb_ir_score"] == pytest.approx(expected["ndcg@10"], abs=1e-9)


def test_dry_run_shows_the_evaluation_plan(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(
        tmp_path, tiny_model_dir, max_steps=4, eval_strategy="steps", eval_steps=2, load_best_model_at_end="true"
    )
    assert main(["train", str(recipe), "--dry_run"]) == 0
    plan = json.loads(capsys.readouterr().out)["evaluation_during_training"]
    assert plan == {
        "strategy": "steps", "steps": 2, "sets": ["sts_dev", "ir_dev"], "metric_for_best_model": "codiemb_score",
        "load_best_model_at_end": True, "early_stopping_patience": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"eval_strategy": "steps", "eval_steps": 2, "sts_eval": "[]", "ir_eval": "[]"},
            "eval_strategy 'steps' evaluates the dev sets during training, but the recipe has none",
        ),
        ({"early_stopping_patience": 2}, "need evaluations during training: set eval_strategy"),
        ({"eval_ir_weight": 1.5}, "field 'eval_ir_weight': must be a number within [0, 1], got 1.5"),
    ],
)
def test_evaluation_set_up_errors_are_one_line_before_any_work(tmp_path, tiny_model_dir, capsys, overrides, message):
    recipe = _recipe(tmp_path, tiny_model_dir, max_steps=4, **overrides)
    for extra in ([], ["--dry_run"]):
        assert main(["train", str(recipe), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("codiemb train: error: ") and err.count("\n") == 1
        assert message in err
    assert not (tmp_path / "run").exists()
