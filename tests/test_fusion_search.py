"""Dev-guided fusion: inputs picked from a run's recorded evaluations, fusion settings searched on dev sets, the
share-weighted delta fusion the search varies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_fixtures import perturbed_copy
from safetensors.torch import load_file

from hf_codiemb.cli import main
from hf_codiemb.fusion import DeltaGuidedFusion, FusionError, fuse
from hf_codiemb.fusion.errors import SelectionError
from hf_codiemb.fusion.search import pareto_front
from hf_codiemb.fusion.selection import select_checkpoint, select_checkpoints

IR_KEY, STS_KEY, SCORE_KEY = "eval_codiemb_ir_score", "eval_codiemb_sts_score", "eval_codiemb_score"


def _entry(step: int, ir: float, sts: float) -> dict:
    """A log_history evaluation entry as `codiemb train` writes it (per-set keys, combined keys)."""
    return {"step": step, "epoch": step / 100, "eval_dev_spearman_cosine": sts, "eval_dev-ir_cosine_ndcg@10": ir,
            STS_KEY: sts, IR_KEY: ir, SCORE_KEY: 0.5 * ir + 0.5 * sts, "eval_loss": 1.0}  # fmt: skip


def _write_state(folder: Path, entries: list[dict]) -> None:
    history = [{"step": e["step"], "loss": 0.5} for e in entries] + entries  # training losses are skipped
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": entries[-1]["step"], "log_history": history})
    )


def make_run(
    base: Path,
    run: Path,
    scores: dict[int, tuple[float, float]],
    seed: int,
    complete: set[int],
    final: dict[int, tuple[float, float]] | None = None,
) -> Path:
    """A run folder whose checkpoint-<step> folders are noisy copies of ``base``: those in ``complete`` with weights
    and the log up to their step; others without their trainer_state.json (an interrupted save). ``final`` adds
    evaluations that only the run's final trainer_state.json records (steps without a checkpoint folder)."""
    entries = [_entry(step, *values) for step, values in sorted(scores.items())]
    for index, entry in enumerate(entries):
        folder = perturbed_copy(base, run / f"checkpoint-{entry['step']}", seed=seed + index, scale=0.05)
        if entry["step"] in complete:
            _write_state(folder, entries[: index + 1])
    if final:
        _write_state(run, entries + [_entry(step, *values) for step, values in sorted(final.items())])
    return run


def independent_best(run: Path, key: str) -> int:
    """The step with the highest ``key`` among the logs' evaluations whose checkpoint has weights and a state."""
    values: dict[int, float] = {}
    for state in sorted(run.glob("**/trainer_state.json")):
        for entry in json.loads(state.read_text())["log_history"]:
            if key in entry:
                values[entry["step"]] = entry[key]
    usable = {step: value for step, value in values.items()
              if (run / f"checkpoint-{step}" / "model.safetensors").is_file()
              and (run / f"checkpoint-{step}" / "trainer_state.json").is_file()}  # fmt: skip
    return max(usable, key=usable.get)


@pytest.fixture
def runs(tmp_path, tiny_model_dir):
    """An IR-heavy and an STS-heavy run around the tiny base; the best-logged steps 40/50 have no usable checkpoint."""
    run_a = make_run(tiny_model_dir, tmp_path / "run-ir", {10: (0.30, 0.60), 20: (0.55, 0.20), 30: (0.45, 0.30),
                     40: (0.90, 0.10)}, seed=1, complete={10, 20, 30}, final={50: (0.95, 0.99)})  # fmt: skip
    run_b = make_run(tiny_model_dir, tmp_path / "run-sts", {5: (0.20, 0.50), 15: (0.10, 0.70), 25: (0.15, 0.65)},
                     seed=11, complete={5, 15, 25})  # fmt: skip
    return tiny_model_dir, run_a, run_b


def test_selection_picks_the_checkpoints_the_log_names(runs):
    _, run_a, run_b = runs
    for run in (run_a, run_b):
        for criterion, key in (("best_ir", IR_KEY), ("best_sts", STS_KEY), ("best_score", SCORE_KEY)):
            selected = select_checkpoint(run, criterion)
            assert selected.path == run / f"checkpoint-{independent_best(run, key)}"
            assert selected.metric == key and selected.step == independent_best(run, key)
    assert select_checkpoint(run_a, "best_ir").step == 20  # 40 (incomplete) and 50 (no folder) are not candidates
    pairs = select_checkpoints([run_a, run_b], ["best_ir", "best_sts"])
    assert [(item.run, item.step) for item in pairs] == [(run_a, 20), (run_b, 15)]
    assert [item.step for item in select_checkpoints([run_a], ["best_ir", "best_sts"])] == [20, 10]
    with pytest.raises(SelectionError, match="names 2 runs and --select 3 criteria"):
        select_checkpoints([run_a, run_b], ["best_ir", "best_sts", "best_score"])
    with pytest.raises(SelectionError, match="Unknown selection criterion 'best_mrr'; choose from best_ir"):
        select_checkpoint(run_a, "best_mrr")


def test_the_log_file_name_is_the_trainers():
    from transformers.trainer import TRAINER_STATE_NAME

    from hf_codiemb.fusion.selection import TRAINER_STATE

    assert TRAINER_STATE == TRAINER_STATE_NAME


def test_a_run_without_recorded_evaluations_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    folder = perturbed_copy(tiny_model_dir, run / "checkpoint-10", seed=1)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 10, "loss": 0.4}]}))
    code = main(["fuse", "--base", str(tiny_model_dir), "--select_from", str(run), "--select", "best_ir",
                 "--output_dir", str(tmp_path / "out")])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("codiemb")]
    assert code == 2 and not (tmp_path / "out").exists()
    expected = (
        f"codiemb fuse: error: Run {run} has no recorded evaluation with 'eval_codiemb_ir_score' in its "
        "trainer_state.json files: train it with dev sets and evaluation during training (eval_strategy), "
        "or name the checkpoints with --checkpoints"
    )
    assert err == [expected]
    (folder / "trainer_state.json").write_text("{not json")
    with pytest.raises(SelectionError, match=rf"^{folder / 'trainer_state.json'}: not a readable trainer_state"):
        select_checkpoint(run, "best_sts")
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 10, IR_KEY: "high"}]}))
    with pytest.raises(SelectionError, match=r"log_history entry 0, field 'eval_codiemb_ir_score': expected a finite"):
        select_checkpoint(run, "best_ir")


def test_shares_weight_the_delta_fusion():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    checkpoints = [base + 0.1 * torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    deltas = np.stack([(c - base).numpy() for c in checkpoints])
    for p in (0.0, 1.0, 3.0):
        for granularity in ("element", "tensor"):
            magnitudes = (
                np.abs(deltas) if granularity == "element" else np.sqrt((deltas**2).sum(axis=(1, 2)))[:, None, None]
            )
            powered = np.array([0.25, 0.75])[:, None, None] * magnitudes**p  # shares (1, 3) normalised
            expected = base.numpy() + (powered / powered.sum(0) * deltas).sum(0)
            norms = torch.linalg.vector_norm(torch.from_numpy(deltas).flatten(1), dim=1)
            merged = DeltaGuidedFusion(p=p, granularity=granularity, shares=[1, 3]).merge(
                base, checkpoints, delta_norms=norms).merged  # fmt: skip
            np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-9, atol=1e-12)
        # A share of 0 leaves the checkpoint out: shares (1, 0) give the first checkpoint.
        merged = DeltaGuidedFusion(p=p, shares=[1, 0]).merge(base, checkpoints).merged
        np.testing.assert_allclose(merged.numpy(), checkpoints[0].numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="shares must be non-negative numbers, not all 0"):
        DeltaGuidedFusion(shares=[0, 0])


def test_shares_that_do_not_match_the_inputs_are_refused_before_writing(runs, tmp_path):
    base, run_a, _ = runs
    with pytest.raises(FusionError, match="3 shares given for 2 checkpoints"):
        fuse([run_a / "checkpoint-10", run_a / "checkpoint-20"], tmp_path / "out", base=base,
             method_params={"shares": [1, 1, 1]}, show_progress=False)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_search_front_choice_weights_and_card(runs, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.commands.fuse import load_dev_sets
    from hf_codiemb.evaluation import evaluate_model

    base, run_a, run_b = runs
    recipe = tmp_path / "dev.yaml"
    recipe.write_text(f"model_name_or_path: {base}\nsts_eval: [demo:sts_dev.jsonl]\nir_eval: [demo:ir_dev.jsonl]\n"
                      "ir_eval_from_sts: false\nmax_eval_records: 24\n")  # fmt: skip
    out = tmp_path / "fused"
    code = main(["fuse", "--base", str(base), "--select_from", str(run_a), str(run_b), "--select", "best_ir",
                 "best_sts", "--search", "--eval_recipe", str(recipe), "--search_p", "0", "2", "--search_shares",
                 "0.3", "--ir_weight", "0.7", "--output_dir", str(out)])  # fmt: skip
    assert code == 0
    for name in ("model.safetensors", "fusion_search.md", "fusion_search.json", "fusion_front.png", "README.md"):
        assert (out / name).is_file(), name
    record = json.loads((out / "fusion_search.json").read_text())
    candidates = record["candidates"]
    assert [c["label"] for c in candidates] == ["input 1 (run-ir/checkpoint-20)", "input 2 (run-sts/checkpoint-15)",
        "p=0, shares=0.3/0.7", "p=2, shares=0.3/0.7"]  # fmt: skip

    # The inputs' own scores, evaluated independently, are the candidates "input 1/2" of the front.
    sts_sets, ir_sets, _ = load_dev_sets(str(recipe))
    for candidate, folder in zip(candidates, (run_a / "checkpoint-20", run_b / "checkpoint-15")):
        results = evaluate_model(SentenceTransformer(str(folder)), sts_sets, ir_sets, geometry_texts=[])
        ir = np.mean([m["ndcg@10"] for m in results["ir"].values()])
        sts = np.mean([m["spearman_cosine"] for m in results["sts"].values()])
        assert candidate["ir_score"] == pytest.approx(ir, abs=1e-6)
        assert candidate["sts_score"] == pytest.approx(sts, abs=1e-6)
    points = [(c["ir_score"], c["sts_score"]) for c in candidates]
    dominated = [any(o[0] >= p[0] and o[1] >= p[1] and o != p for o in points) for p in points]
    assert [c["on_front"] for c in candidates] == [not d for d in dominated] == pareto_front(points)

    # The chosen model is the argmax of 0.7 * IR + 0.3 * STS over the written table ...
    table = (out / "fusion_search.md").read_text().splitlines()
    rows = [line.split(" | ") for line in table if line.startswith("| ") and not line.startswith("| candidate")]
    weighted = [0.7 * float(row[1]) + 0.3 * float(row[2]) for row in rows]
    best = candidates[int(np.argmax(weighted))]
    assert record["chosen"] == best["label"] and "★" in rows[int(np.argmax(weighted))][-1]
    # ... and its weights are those of a direct fusion with the chosen settings (an input: the input itself).
    if best["kind"] == "input":
        expected = load_file((run_a / "checkpoint-20", run_b / "checkpoint-15")[best["parameters"]["input"] - 1]
                             / "model.safetensors")  # fmt: skip
    else:
        fuse([run_a / "checkpoint-20", run_b / "checkpoint-15"], tmp_path / "direct", base=base,
             method_params=best["parameters"], show_progress=False)  # fmt: skip
        expected = load_file(tmp_path / "direct" / "model.safetensors")
    fused = load_file(out / "model.safetensors")
    assert fused.keys() == expected.keys() and all(torch.equal(fused[k], expected[k]) for k in fused)

    card = (out / "README.md").read_text()
    assert "## How this model was chosen" in card
    assert (
        "`checkpoint-20` of run `run-ir`: **best_ir**, the highest `eval_codiemb_ir_score` (0.5500, step 20)" in card
    )
    assert "`checkpoint-15` of run `run-sts`: **best_sts**" in card
    assert f"- **Chosen**: {best['label']}" in card and "`--ir_weight 0.7`" in card
    assert f"score {best['ir_score'] * 0.7 + best['sts_score'] * 0.3:.4f}" in card
    assert all(c["label"] in card for c in candidates)  # the alternatives' scores
    assert str(tmp_path) not in card  # runs are named by folder name, never by a local path


def test_selection_and_search_settings_come_from_a_fusion_recipe(tmp_path):
    from hf_codiemb.commands.fuse import build_parser

    recipe = tmp_path / "fuse.yaml"
    recipe.write_text(
        "base: b\noutput_dir: out\nselect_from: [runs/ir, runs/sts]\nselect: [best_ir, best_sts]\nsearch: true\n"
        "eval_recipe: dev.yaml\nsearch_p: [0, 1.5]\nsearch_shares: [0.5]\nir_weight: 0.25\n"
    )
    (config,) = build_parser().parse([str(recipe), "--ir_weight", "0.75"])
    assert (config.select_from, config.select) == (["runs/ir", "runs/sts"], ["best_ir", "best_sts"])
    assert (config.search, config.eval_recipe, config.search_p, config.search_shares) == (
        True, "dev.yaml", [0.0, 1.5], [0.5]
    )  # fmt: skip
    assert config.ir_weight == 0.75  # the command line overrides the recipe


def test_search_loads_candidates_with_the_eval_recipes_model_settings(runs, tmp_path):
    """As `codiemb evaluate` does (models.load_model): a CLS-pooled recipe's candidates are scored CLS-pooled."""
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.commands.fuse import load_dev_sets
    from hf_codiemb.evaluation import evaluate_model
    from hf_codiemb.models import set_pooling

    base, run_a, run_b = runs
    recipe = tmp_path / "cls.yaml"
    recipe.write_text(f"model_name_or_path: {base}\npooling: cls\nmax_seq_length: 32\nsts_eval: [demo:sts_dev.jsonl]\n"
                      "ir_eval: [demo:ir_dev.jsonl]\nir_eval_from_sts: false\nmax_eval_records: 24\n")  # fmt: skip
    inputs = [run_a / "checkpoint-20", run_b / "checkpoint-15"]
    out = tmp_path / "fused"
    assert main(["fuse", "--base", str(base), "--checkpoints", *map(str, inputs), "--search", "--eval_recipe",
                 str(recipe), "--search_p", "1", "--search_shares", "0.5", "--output_dir", str(out)]) == 0  # fmt: skip
    candidates = json.loads((out / "fusion_search.json").read_text())["candidates"]
    sts_sets, _, model_args = load_dev_sets(str(recipe))
    assert (model_args.pooling, model_args.max_seq_length) == ("cls", 32)
    for candidate, folder in zip(candidates, inputs):
        scores = {}
        for pooling in ("cls", "mean"):
            model = SentenceTransformer(str(folder), device="cpu")
            set_pooling(model, pooling)
            model.max_seq_length = 32
            results = evaluate_model(model, sts_sets, None, geometry_texts=[])
            scores[pooling] = np.mean([m["spearman_cosine"] for m in results["sts"].values()])
        assert candidate["sts_score"] == pytest.approx(scores["cls"], abs=1e-6)
        assert abs(scores["mean"] - scores["cls"]) > 1e-3  # the recipe's pooling made a difference
