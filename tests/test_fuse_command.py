"""`codiemb fuse` as one parser among the others: methods declare their parameters, a fusion recipe is a positional
YAML path, both flag spellings work, and a run's checkpoints can be named by a glob."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_fixtures import perturbed_copy, tiny_hf_model

REPO = Path(__file__).resolve().parents[1]
from safetensors.torch import load_file

from hf_codiemb.cli import main
from hf_codiemb.commands.fuse import expand_checkpoints
from hf_codiemb.fusion.registry import get_method, validate_method_params


def test_methods_validate_their_declared_parameters():
    assert validate_method_params("delta", {"p": "2", "granularity": "tensor"}) == {"p": 2.0, "granularity": "tensor"}
    assert get_method("task_arithmetic", scaling=0.5).parameters() == {"scaling": 0.5}
    with pytest.raises(ValueError, match=r"'delta' has no parameter\(s\) \['density'\]; its parameters: p, granularity, eps, shares"):
        validate_method_params("delta", {"density": 0.3})
    with pytest.raises(ValueError, match=r"'uniform' has no parameter\(s\) \['p'\]; its parameters: none"):
        validate_method_params("uniform", {"p": 1})
    with pytest.raises(ValueError, match="granularity' must be one of \\['element', 'tensor'\\]"):
        validate_method_params("delta", {"granularity": "row"})
    with pytest.raises(ValueError, match="'p' must be a number"):
        validate_method_params("delta", {"p": True})
    with pytest.raises(ValueError, match="Unknown fusion method 'average'"):
        validate_method_params("average", {})


def test_checkpoint_globs_expand_in_step_order(tmp_path):
    for step in (10, 2, 1):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert expand_checkpoints([str(tmp_path / "checkpoint-*")]) == [
        str(tmp_path / f"checkpoint-{step}") for step in (1, 2, 10)
    ]
    assert expand_checkpoints([str(tmp_path / "none-*"), "plain"]) == [str(tmp_path / "none-*"), "plain"]


def test_fusion_recipe_positional_param_flags_and_both_spellings(tmp_path, capsys):
    base = tiny_hf_model(tmp_path / "base")
    run = tmp_path / "run"
    checkpoints = [perturbed_copy(base, run / f"checkpoint-{step}", seed=step) for step in (1, 2)]
    recipe = tmp_path / "fuse.yaml"
    recipe.write_text(
        f"base: {base}\ncheckpoints: ['{run}/checkpoint-*']\noutput_dir: {tmp_path / 'out'}\n"
        "method: delta\nparameters: {p: 0.0}\n"
    )
    # The recipe as a path; a flag with underscores overrides it; --param sets a declared parameter.
    assert main(["fuse", str(recipe), "--output_dir", str(tmp_path / "soup"), "--param", "granularity=tensor"]) == 0
    config = json.loads((tmp_path / "soup" / "fusion_config.json").read_text())
    assert config["parameters"]["p"] == 0.0 and config["parameters"]["granularity"] == "tensor"
    fused = load_file(tmp_path / "soup" / "model.safetensors")
    inputs = [load_file(c / "model.safetensors") for c in checkpoints]
    name = "pooler.dense.weight"
    torch.testing.assert_close(fused[name], (inputs[0][name] + inputs[1][name]) / 2)  # p = 0: the uniform soup
    # A parameter the method does not declare is refused before any work, naming the method's parameters.
    code = main(["fuse", str(recipe), "--output-dir", str(tmp_path / "bad"), "--param", "density=0.3"])
    assert code == 2 and not (tmp_path / "bad").exists()
    assert main(["fuse", "--list-methods"]) == 0
    listing = capsys.readouterr().out
    assert "delta: CoDiEmb delta-guided fusion" in listing and "scaling (float, default 1.0)" in listing


@pytest.mark.parametrize("recipe", sorted(REPO.glob("recipes/**/fuse.yaml")), ids=lambda p: str(p.parent.name))
def test_every_fusion_recipe_is_valid_and_sits_next_to_a_training_recipe(recipe):
    from hf_codiemb.commands.fuse import build_parser

    assert (recipe.parent / "config.yaml").is_file()
    (config,) = build_parser().parse([str(recipe)])
    validate_method_params(config.method, config.method_params())
    assert config.base and config.checkpoints and config.output_dir


def test_every_training_recipe_with_epoch_checkpoints_has_a_fusion_recipe():
    for training in sorted(REPO.glob("recipes/**/config.yaml")):
        if "save_strategy: epoch" in training.read_text():
            assert (training.parent / "fuse.yaml").is_file(), training


def _error_lines(argv: list[str], capfd) -> tuple[int, list[str]]:
    """Exit status and every stderr line of ``codiemb ARGV`` (the console entry itself, logs included)."""
    capfd.readouterr()
    code = main(argv)
    return code, capfd.readouterr().err.splitlines()


def test_a_refused_input_is_one_error_line_and_exit_status_2(tmp_path, capfd):
    base = tiny_hf_model(tmp_path / "base")
    checkpoint = perturbed_copy(base, tmp_path / "ck", seed=1)
    missing = tmp_path / "no-such-checkpoint"
    code, lines = _error_lines(["fuse", "--base", str(base), "--checkpoints", str(checkpoint), str(missing),
                                "--output_dir", str(tmp_path / "out")], capfd)  # fmt: skip
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("codiemb fuse: error: The checkpoint 2: "), lines
    assert str(missing) in lines[0] and "does not exist" in lines[0]
    # An output folder that is one of the inputs.
    code, lines = _error_lines(["fuse", "--base", str(base), "--checkpoints", str(checkpoint), str(base),
                                "--output_dir", str(checkpoint), "--overwrite"], capfd)  # fmt: skip
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"codiemb fuse: error: The output folder {checkpoint} is the "), lines
    # A value the method itself refuses, and a method that does not exist.
    for param in (["--param", "p=-1"], ["--method", "no_such_method"]):
        code, lines = _error_lines(["fuse", "--base", str(base), "--checkpoints", str(checkpoint), str(base),
                                    "--output_dir", str(tmp_path / "out"), *param], capfd)  # fmt: skip
        assert code == 2
        assert len(lines) == 1 and lines[0].startswith("codiemb fuse: error: "), lines
    assert not (tmp_path / "out").exists()
