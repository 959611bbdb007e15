"""`codiemb evaluate` loads models as `codiemb train` does (models.load_model), with a recipe's model settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer

from hf_codiemb.cli import main
from hf_codiemb.data import demo_data_path
from hf_codiemb.models import set_pooling

PAIRS = 30


def _dev_spearman(model: SentenceTransformer) -> float:
    """Spearman of cosine similarities on the first dev pairs, read straight from the packaged file (scipy)."""
    rows = [json.loads(line) for line in Path(demo_data_path("sts_dev.jsonl")).read_text().splitlines()[:PAIRS]]
    first = model.encode([row["query"] for row in rows], convert_to_tensor=True)
    second = model.encode([row["positives"][0] for row in rows], convert_to_tensor=True)
    cosines = torch.nn.functional.cosine_similarity(first, second).numpy()
    return float(spearmanr(cosines, [row["positive_scores"][0] for row in rows]).statistic)


def test_evaluate_with_a_cls_pooled_recipe_evaluates_with_cls_pooling(tmp_path, tiny_model_dir, capsys):
    recipe = tmp_path / "cls.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model_dir}\npooling: cls\nmax_seq_length: 32\n"
        f"sts_train: [demo:sts_train.jsonl]\nsts_eval: [demo:sts_dev.jsonl]\nir_eval_from_sts: false\n"
        f"max_eval_records: {PAIRS}\noutput_dir: {tmp_path / 'unused'}\n"
    )
    assert main(["evaluate", "--recipe", str(recipe), "--output_dir", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    got = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["sts"]["sts_dev"]["spearman_cosine"]

    cls = SentenceTransformer(str(tiny_model_dir), device="cpu")
    set_pooling(cls, "cls")
    cls.max_seq_length = 32
    mean = SentenceTransformer(str(tiny_model_dir), device="cpu")
    mean.max_seq_length = 32
    assert got == pytest.approx(_dev_spearman(cls), abs=1e-5)
    assert abs(_dev_spearman(mean) - got) > 1e-3  # the recipe's pooling made a difference

    # Without the recipe, the model's own (mean) pooling; --model overrides the recipe's model.
    assert main(["evaluate", "--model", str(tiny_model_dir), "--sts_eval", "demo:sts_dev.jsonl", "--ir_eval_from_sts",
                 "false", "--max_eval_records", str(PAIRS), "--output_dir", str(tmp_path / "plain")]) == 0  # fmt: skip
    plain = json.loads((tmp_path / "plain" / "eval_results.json").read_text())["sts"]["sts_dev"]["spearman_cosine"]
    full_length = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert plain == pytest.approx(_dev_spearman(full_length), abs=1e-5)


def test_evaluate_needs_a_model_and_an_output(tmp_path, capsys):
    assert main(["evaluate", "--sts_eval", "demo:sts_dev.jsonl", "--output_dir", str(tmp_path / "o")]) == 2
    assert "Give --model" in capsys.readouterr().err
    assert main(["evaluate", "--model", "packaged:all-minilm-l6-v2", "--sts_eval", "demo:sts_dev.jsonl"]) == 2
    assert "the following arguments are required: --output_dir" in capsys.readouterr().err


def test_evaluate_takes_the_model_and_dev_set_options_of_train_with_a_recipe_under_its_flags(tmp_path):
    """`codiemb evaluate` declares no model or dev-set option of its own: they are train's (same dataclasses, so the
    same flags, types and checks); a recipe's values lie under the flags, and dev sets given as flags replace the
    recipe's."""
    import dataclasses

    from hf_codiemb.arguments import EncoderArguments, EvalDataArguments
    from hf_codiemb.commands.evaluate import EvaluateArguments, build_parser, parse_arguments
    from hf_codiemb.errors import RecipeError

    assert build_parser().user_types == (EvaluateArguments, EncoderArguments, EvalDataArguments)
    own = {item.name for item in dataclasses.fields(EvaluateArguments)}
    shared = {item.name for cls in (EncoderArguments, EvalDataArguments) for item in dataclasses.fields(cls)}
    assert {"output_dir", "recipe"} <= own and not own & shared

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model_name_or_path: packaged:all-minilm-l6-v2\npooling: cls\nmax_seq_length: 64\nquery_prompt: 'q: '\n"
        "sts_eval: [demo:sts_dev.jsonl]\nir_eval: [demo:ir_dev.jsonl]\nmax_eval_records: 7\n"
        f"sts_train: [demo:sts_train.jsonl]\noutput_dir: {tmp_path / 'unused'}\n"
    )
    out = ["--output_dir", str(tmp_path / "eval")]
    _, model_args, data_args = parse_arguments(["--recipe", str(recipe), *out])
    assert (model_args.pooling, model_args.max_seq_length, model_args.query_prompt) == ("cls", 64, "q: ")
    assert (data_args.sts_eval, data_args.ir_eval, data_args.max_eval_records) == (
        ["demo:sts_dev.jsonl"], ["demo:ir_dev.jsonl"], 7
    )
    _, model_args, data_args = parse_arguments(
        ["--recipe", str(recipe), "--pooling", "mean", "--model", "other", "--sts_eval", "demo:sts_train.jsonl", *out]
    )
    assert (model_args.model_name_or_path, model_args.pooling, model_args.max_seq_length) == ("other", "mean", 64)
    assert (data_args.sts_eval, data_args.ir_eval, data_args.max_eval_records) == (["demo:sts_train.jsonl"], [], None)
    with pytest.raises(RecipeError, match="command line, field 'pooling': must be one of cls, mean"):
        parse_arguments(["--model", "m", "--pooling", "max", *out])  # train's own check of the field
