"""Matryoshka embeddings (issue 22 item 5): CoDiEmbMatryoshkaLoss equals the wrapped loss recomputed by hand on
truncated embeddings, the recipe keys reach the trainer, and `codiemb train` evaluates the model at each dimension."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer

from hf_codiemb.cli import main
from hf_codiemb.data import demo_data_path
from hf_codiemb.errors import RecipeError
from hf_codiemb.losses import CoDiEmbMatryoshkaLoss, CoDiEmbSTSLoss, MultiPositiveInfoNCELoss, PearsonLoss

HIDDEN = 32  # tests/tiny_models.py


def _features(model: SentenceTransformer, columns: list[list[str]]) -> list[dict[str, torch.Tensor]]:
    return [model.tokenize(texts) for texts in columns]


def _by_hand(model, inner, columns, labels, dims, weights) -> torch.Tensor:
    """sum_d w_d * inner(embeddings[:, :d]), the embeddings computed once, cut and re-normalised here."""
    embeddings = [model(features)["sentence_embedding"] for features in _features(model, columns)]
    total = torch.zeros((), dtype=torch.float64)
    for dim, weight in zip(dims, weights):
        cut = [torch.nn.functional.normalize(e[:, :dim], dim=-1) for e in embeddings]
        value = inner.compute_loss_from_embeddings(cut, labels)
        value = sum(value.values()) if isinstance(value, dict) else value
        total = total + weight * value.double()
    return total


@pytest.mark.parametrize("task", ["ir", "sts"])
def test_the_loss_and_its_gradient_equal_the_wrapped_loss_on_truncated_embeddings(tiny_model_dir, task):
    torch.manual_seed(0)
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model.eval()  # no dropout: both computations see the same embeddings (gradients still flow)
    if task == "ir":
        inner = MultiPositiveInfoNCELoss(model, num_positives=1)
        columns = [["a query", "another one", "third query"], ["its answer", "other answer", "a passage"],
                   ["bad passage", "wrong one", "off topic"]]  # fmt: skip
        labels = None
    else:
        inner = PearsonLoss(model)
        columns = [["a cat", "a dog", "the sun", "rain"], ["a kitten", "a puppy", "the moon", "snow"]]
        labels = torch.tensor([4.5, 4.0, 1.0, 2.5])
    dims, weights = [HIDDEN, 16, 8], [1.0, 0.5, 0.25]
    wrapped = CoDiEmbMatryoshkaLoss(model, inner, dims, weights)
    components = wrapped(_features(model, columns), labels)
    assert sorted(components) == sorted(f"dim_{d}/loss" for d in dims)
    got = torch.stack(list(components.values())).sum()
    got.backward()
    got_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    expected = _by_hand(model, inner, columns, labels, dims, weights)
    expected.backward()
    expected_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert len(got_grads) == len(expected_grads) > 0
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-4, atol=1e-5)  # float32, other summation order


def test_dict_components_are_kept_per_dimension(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    inner = CoDiEmbSTSLoss(model, multi_layer_weight=0.0)
    columns = [["a cat", "a dog", "the sun", "rain"], ["a kitten", "a puppy", "the moon", "snow"]]
    labels = torch.tensor([4.5, 4.0, 1.0, 2.5])
    components = CoDiEmbMatryoshkaLoss(model, inner, [HIDDEN, 8], [1.0, 2.0])(_features(model, columns), labels)
    full = inner(_features(model, columns), labels)
    assert {key.split("/", 1)[1] for key in components} == set(full)
    for key, value in full.items():
        assert components[f"dim_{HIDDEN}/{key}"].item() == pytest.approx(value.item(), rel=1e-5)
    assert all(f"dim_8/{key}" in components for key in full)


def test_recipe_checks(tmp_path):
    from hf_codiemb import CoDiEmbTrainingArguments

    common = {"output_dir": str(tmp_path), "report_to": [], "use_cpu": True}
    with pytest.raises(RecipeError, match="matryoshka_dims.*ir_mini_batch_size"):
        CoDiEmbTrainingArguments(**common, matryoshka_dims=[32, 16], ir_mini_batch_size=4)
    with pytest.raises(RecipeError, match="'matryoshka_weights': must be one number >= 0 per dimension"):
        CoDiEmbTrainingArguments(**common, matryoshka_dims=[32, 16], matryoshka_weights=[1.0])
    with pytest.raises(RecipeError, match="'matryoshka_dims': must be distinct integers >= 1"):
        CoDiEmbTrainingArguments(**common, matryoshka_dims=[32, 32])


def test_dimensions_above_the_models_are_one_error_line(tmp_path, tiny_model_dir, capsys):
    code = main(["train", "--model_name_or_path", str(tiny_model_dir), "--sts_train", "demo:sts_train.jsonl",
                 "--matryoshka_dims", "64", "16", "--max_steps", "1", "--report_to", "none",
                 "--output_dir", str(tmp_path / "run"), "--use_cpu", "true"])  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the loaders' log lines
    assert code == 2
    assert last == "codiemb train: error: field 'matryoshka_dims': [64, 16] exceed the model's embedding dimension 32"


def test_codiemb_train_trains_at_each_dimension_and_evaluates_at_each(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", "--model_name_or_path", str(tiny_model_dir), "--sts_train", "demo:sts_train.jsonl",
         "--ir_train", "demo:ir_train.jsonl", "--sts_eval", "demo:sts_dev.jsonl", "--ir_eval_from_sts", "false",
         "--max_eval_records", "40", "--evaluate_before", "false", "--matryoshka_dims", str(HIDDEN), "16", "8",
         "--max_steps", "4", "--logging_steps", "1", "--save_steps", "4", "--ir_batch_size", "4", "--sts_batch_size", "8",
         "--report_to", "none", "--output_dir", str(out), "--use_cpu", "true"]
    )  # fmt: skip
    assert code == 0
    assert "| dim | sts_dev spearman_cosine |" in capsys.readouterr().out
    logged = {key for entry in json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"] for key in entry}
    assert {"sts_train/dim_8/pearson", "ir_train/dim_16/loss"} <= logged
    results = {int(dim): scores for dim, scores in json.loads((out / "eval_matryoshka.json").read_text()).items()}
    assert sorted(results) == [8, 16, HIDDEN]
    # Independently: the saved model's embeddings cut to 8 dimensions, cosine, scipy.
    model = SentenceTransformer(str(out), device="cpu")
    dev = [json.loads(line) for line in Path(demo_data_path("sts_dev.jsonl")).read_text().splitlines()[:40]]
    first = model.encode([r["query"] for r in dev], convert_to_tensor=True)[:, :8]
    second = model.encode([r["positives"][0] for r in dev], convert_to_tensor=True)[:, :8]
    cosines = torch.nn.functional.cosine_similarity(first, second).numpy()
    expected = spearmanr(cosines, [r["positive_scores"][0] for r in dev]).statistic
    assert results[8]["sts"]["sts_dev"]["spearman_cosine"] == pytest.approx(expected, abs=1e-5)
    full = json.loads((out / "eval_results.json").read_text())["sts"]["sts_dev"]["spearman_cosine"]
    assert results[HIDDEN]["sts"]["sts_dev"]["spearman_cosine"] == pytest.approx(full, abs=1e-6)


def test_the_card_describes_the_wrapped_loss_and_the_ir_options(tiny_model_dir):
    from hf_codiemb.model_card import describe_loss

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    inner = MultiPositiveInfoNCELoss(model, num_positives=1, margin=0.1, distill_weight=0.5)
    text = describe_loss(CoDiEmbMatryoshkaLoss(model, inner, [HIDDEN, 8], [1.0, 0.5]), 4)
    assert text.startswith(f"Matryoshka (dimension: weight {HIDDEN}: 1.0, 8: 0.5) of MultiPositiveInfoNCELoss:")
    assert "false negatives masked (absolute margin 0.1, judged by the model itself)" in text
    assert "0.5 × KL distillation from teacher scores (teacher temperature 1.0)" in text
