"""The command line as users meet it: a fast --help, the recipe as a positional path, both flag spellings, quiet
libraries, and YAML values written the natural way."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import shipped_training_recipes

from hf_codiemb.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["fuse", "--help"], ["push", "--help"], ["evaluate", "--help"],
                                  ["prepare-models", "--help"], ["merge-lora", "--help"], ["mine", "--help"]])
def test_help_is_fast_and_imports_no_heavy_library(argv):
    """`codiemb --help` imports nothing heavy (under 1 s); a command's help builds its parser (transformers'
    HfArgumentParser, which imports transformers' light top level) but never torch or the models' libraries."""
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from hf_codiemb.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "elapsed = time.perf_counter() - start\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'datasets', 'mergekit') "
        "if m in sys.modules)\n"
        "sys.stderr.write(f'RESULT {elapsed:.3f} {heavy}\\n')\n"
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    result = next(line for line in proc.stderr.splitlines() if line.startswith("RESULT"))
    _, elapsed, heavy = result.split(" ", 2)
    # `codiemb train --help` is printed from its snapshot (hf_codiemb.help_snapshot): not even transformers.
    heavy = [name for name in ast.literal_eval(heavy) if argv in (["--help"], ["train", "--help"]) or name != "transformers"]
    assert heavy == [], f"`codiemb {' '.join(argv)}` imported {heavy}"
    assert float(elapsed) < (1.0 if argv == ["--help"] else 2.0), result
    assert wall < 5.0  # interpreter start included, on a busy 2-core machine
    assert "usage: codiemb" in proc.stdout


@pytest.mark.parametrize("columns", ["64", "150"])
def test_train_help_snapshot_prints_what_the_live_parser_prints(columns, monkeypatch):
    """The snapshot of `codiemb train --help` is current: rendered from it, the help is the live parser's, at any
    terminal width. Regenerate it after changing an option: python -m hf_codiemb.help_snapshot"""
    import contextlib
    import io
    import json

    from hf_codiemb.commands.train import build_parser
    from hf_codiemb.help_snapshot import parser_from_snapshot, snapshot_matches, snapshot_path

    data = json.loads(snapshot_path("train").read_text(encoding="utf-8"))
    regenerate = "stale snapshot: run `python -m hf_codiemb.help_snapshot` and commit the result"
    assert snapshot_matches(data), regenerate
    monkeypatch.setenv("COLUMNS", columns)
    live = build_parser().format_help()
    assert parser_from_snapshot(data["parser"]).format_help() == live, regenerate
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main_exit_code(["train", "--help"]) == 0
    assert printed.getvalue() == live
    assert "--ir_batch_size" in live and "--per_device_train_batch_size" not in live  # ignored options stay hidden


def test_a_snapshot_of_other_versions_is_not_used(monkeypatch, capsys):
    """A snapshot written against other library versions is ignored: the live parser answers."""
    from hf_codiemb import help_snapshot

    monkeypatch.setattr(help_snapshot, "version_key", lambda: {"hf_codiemb": "0.0.0"})
    assert help_snapshot.print_snapshot_help("train") is False
    assert capsys.readouterr().out == ""
    assert main_exit_code(["train", "--help"]) == 0
    assert "--ir_batch_size" in capsys.readouterr().out


def test_an_edited_option_module_makes_the_snapshot_stale(tmp_path):
    """A development checkout whose option modules changed is answered by the live parser, not the snapshot."""
    import shutil

    from hf_codiemb import help_snapshot

    package = Path(help_snapshot.__file__).resolve().parent
    for name in help_snapshot.SNAPSHOT_SOURCES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / name, tmp_path / name)
    assert help_snapshot.version_key(tmp_path) == help_snapshot.version_key()
    with (tmp_path / "arguments.py").open("a") as handle:
        handle.write("# a changed help text\n")
    assert help_snapshot.version_key(tmp_path) != help_snapshot.version_key()


def main_exit_code(argv: list[str]) -> int:
    """`codiemb ARGV`'s exit status (argparse's --help exits through SystemExit)."""
    from hf_codiemb.cli import main

    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


def test_recipe_as_positional_path_and_both_flag_spellings(monkeypatch):
    monkeypatch.chdir(REPO)
    model_args, _, args, run_args = parse_recipe(
        ["recipes/default/config.yaml", "--max-steps", "3", "--ir_batch_size", "4", "--sts-batch-size", "8"]
    )
    assert run_args.config == "recipes/default/config.yaml"
    assert (args.max_steps, args.ir_batch_size, args.sts_batch_size) == (3, 4, 8)
    assert model_args.model_name_or_path == "packaged:all-minilm-l6-v2"


def test_yaml_resume_true_means_the_latest_checkpoint(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ir_train: [demo:ir_train.jsonl]\nresume_from_checkpoint: true\n")
    assert parse_recipe([str(recipe)])[2].resume_from_checkpoint == "true"
    recipe.write_text("ir_train: [demo:ir_train.jsonl]\nresume_from_checkpoint: false\n")
    assert parse_recipe([str(recipe)])[2].resume_from_checkpoint is None


def test_shipped_recipes_trigger_no_deprecation_warning(monkeypatch):
    import warnings

    monkeypatch.chdir(REPO)
    cpu = ["--bf16", "false", "--use_cpu", "true", "--deepspeed", ""]
    for recipe in shipped_training_recipes():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parse_recipe([str(recipe), *cpu])
        deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
        assert not deprecations, f"{recipe.relative_to(REPO)}: {deprecations}"


def test_transformers_is_quiet_at_the_default_log_level():
    from hf_codiemb.cli import setup_logging

    saved = os.environ.get("TRANSFORMERS_VERBOSITY")
    try:
        setup_logging("info")
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "warning"
        setup_logging("debug")
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "debug"
    finally:
        if saved is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = saved
        setup_logging("info")


def test_every_command_is_one_command_parser_with_both_flag_spellings(tmp_path):
    """One parser for every command (YAML config + flags, both spellings, no abbreviations, located errors)."""
    from hf_codiemb.cli import COMMANDS, command_module
    from hf_codiemb.command_parser import CommandParser
    from hf_codiemb.errors import RecipeError

    for command in COMMANDS:
        parser = command_module(command).build_parser()
        assert isinstance(parser, CommandParser), command
        assert "--config" in parser._option_string_actions, command
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--"):
                    for spelling in ("--" + option[2:].replace("-", "_"), "--" + option[2:].replace("_", "-")):
                        assert parser._option_string_actions[spelling] is action, (command, option, spelling)
    # The same YAML overlay everywhere: a config value, overridden by a flag; an unknown key names file and line.
    config = tmp_path / "push.yaml"
    config.write_text("repo_id: user/a\ninclude: [logs/*]\n")
    push_parser = command_module("push").build_parser()
    (push,) = push_parser.parse(["folder", "--config", str(config), "--repo-id", "user/b"])
    assert (push.folder, push.repo_id, push.include) == ("folder", "user/b", ["logs/*"])
    config.write_text("repo_id: user/a\nrepoid: x\n")
    with pytest.raises(RecipeError, match=r"push.yaml, line 2, field 'repoid': unknown key; did you mean repo_id\?"):
        command_module("push").build_parser().parse(["--config", str(config)])
    with pytest.raises(RecipeError, match=r"unrecognized arguments: --repo-i"):
        command_module("push").build_parser().parse(["folder", "--repo-i", "user/b"])  # never an abbreviation
    # A required option may come from the config file instead of the command line.
    config = tmp_path / "mine.yaml"
    config.write_text("model: m\nbeir: b\noutput: o\nrange_max: 300\n")
    mine, model = command_module("mine").build_parser().parse(["--config", str(config), "--range_min", "5"])
    assert (model.model_name_or_path, mine.range_min, mine.range_max) == ("m", 5, 300)
    with pytest.raises(RecipeError, match="the following arguments are required: --output, --model"):
        command_module("mine").build_parser().parse([])



def test_a_yaml_value_outside_a_literal_field_names_the_choices(tmp_path):
    from hf_codiemb.errors import RecipeError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("ir_train: [demo:ir_train.jsonl]\nin_batch_positives: both\n")
    with pytest.raises(RecipeError, match=r"line 2, field 'in_batch_positives': must be one of 'slot', 'all', got 'both'"):
        parse_recipe([str(recipe)])


def test_every_codiemb_training_argument_is_documented_with_its_type_and_default():
    """CoDiEmbTrainingArguments' docstring lists each of its own fields (TRL style: name (`type`, *optional*,
    defaults to `value`)), with the default the field really has."""
    import dataclasses
    import re

    from sentence_transformers import SentenceTransformerTrainingArguments

    from hf_codiemb.training_args import CoDiEmbTrainingArguments

    parent = {item.name: item.default for item in dataclasses.fields(SentenceTransformerTrainingArguments)}
    doc = CoDiEmbTrainingArguments.__doc__
    own = [item for item in dataclasses.fields(CoDiEmbTrainingArguments)
           if item.name not in parent or item.default != parent[item.name]]  # fmt: skip
    assert len(own) >= 30
    for item in own:
        match = re.search(rf"^\s+{item.name} \(`[^`]+`(?: or `[^`]+`)?, \*optional\*, defaults to `([^`]*)`\):$", doc, re.MULTILINE)
        assert match, f"{item.name} is not documented in CoDiEmbTrainingArguments' docstring"
        assert match.group(1) == (f'"{item.default}"' if isinstance(item.default, str) else str(item.default)), item.name


def test_model_is_an_alias_of_model_name_or_path_in_flags_and_yaml(tmp_path):
    from hf_codiemb.errors import RecipeError

    assert parse_recipe(["--model", "user/enc"])[0].model_name_or_path == "user/enc"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ir_train: [demo:ir_train.jsonl]\nmodel: user/enc\n")
    assert parse_recipe([str(recipe)])[0].model_name_or_path == "user/enc"
    recipe.write_text("model_name_or_path: a/b\nmodel: user/enc\n")
    with pytest.raises(RecipeError, match=r"line 2, field 'model': is also given as 'model_name_or_path': keep one"):
        parse_recipe([str(recipe)])
