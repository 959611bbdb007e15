"""Issue 21, classes 5 and 6: every failure is one line (write refused, Ctrl-C, corrupt adapter, bad encodings, tiny
STS sets, non-finite fusion parameters, seeds) and inherited Trainer options CoDiEmb ignores are refused."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_codiemb.cli import INTERRUPTED_EXIT_CODE, main
from hf_codiemb.data import DataFormatError
from hf_codiemb.data.beir import load_beir_corpus, load_beir_qrels, load_beir_queries
from hf_codiemb.failures import write_failure, write_failure_message

REPO = Path(__file__).resolve().parents[1]


def cli_lines(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and our stderr lines (``codiemb ...``) of ``codiemb ARGV``; the logs are left out."""
    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("codiemb")]


def ir_file(tmp_path: Path, count: int = 8) -> Path:
    path = tmp_path / "ir.jsonl"
    records = [{"query": f"q {i}", "positives": [f"p {i}"], "negatives": [f"n {i}"]} for i in range(count)]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def train_argv(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(model), "--ir_train", str(ir_file(tmp_path)), "--ir_batch_size",
            "2", "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu", "true", *extra]  # fmt: skip


# ------------------------------------------------------------------------------------------------ seeds, options


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_dry_run_refuses_the_seed_the_real_run_refuses(tmp_path, capsys, tiny_model_dir, seed):
    # numpy (seeded by transformers' set_seed in the real run) takes 0 .. 2**32 - 1 only.
    import numpy as np

    with pytest.raises(ValueError):
        np.random.seed(int(seed))
    code, lines = cli_lines(train_argv(tmp_path, tiny_model_dir, "--seed", seed, "--dry_run"), capsys)
    assert code == 2
    assert lines == [(f"codiemb train: error: command line, field 'seed': must be from 0 to 4294967295 (2**32 - 1, "
                     f"numpy's limit), got {seed}")]  # fmt: skip
    assert main(train_argv(tmp_path, tiny_model_dir, "--seed", str(2**32 - 1), "--dry_run")) == 0


@pytest.mark.parametrize(
    ("flag", "value", "instead"),
    [
        ("--per_device_train_batch_size", "4", "ir_batch_size"),
        ("--batch_sampler", "group_by_label", "task-balanced sampler"),
        ("--multi_dataset_batch_sampler", "round_robin", "task_ratio"),
        ("--data_seed", "3", "set seed"),
        ("--auto_find_batch_size", "true", "ir_batch_size"),
    ],
)
def test_ignored_trainer_options_are_refused_with_the_one_to_use(tmp_path, capsys, tiny_model_dir, flag, value,
                                                                 instead):  # fmt: skip
    code, lines = cli_lines(train_argv(tmp_path, tiny_model_dir, flag, value, "--dry_run"), capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"codiemb train: error: command line, field '{flag[2:]}': is not used by CoDiEmb")
    assert instead in lines[0]


def test_ignored_option_in_the_recipe_names_its_line_and_help_hides_it(tmp_path, capsys, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {tiny_model_dir}\nir_train: [{ir_file(tmp_path)}]\n"
                      "per_device_train_batch_size: 64\n")  # fmt: skip
    code, lines = cli_lines(["train", str(recipe), "--dry_run"], capsys)
    assert code == 2
    assert lines[0].startswith(f"codiemb train: error: Recipe {recipe}, line 3, field 'per_device_train_batch_size'")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = capsys.readouterr().out
    assert "--ir_batch_size" in shown
    for name in ("--per_device_train_batch_size", "--batch_sampler", "--multi_dataset_batch_sampler"):
        assert name not in shown


# ------------------------------------------------------------------------------------------------ merge-lora


def make_adapter_folder(root: Path, model: Path) -> Path:
    """A LoRA-run-like folder (the tiny model's modules, an adapter config and adapter weights) without training."""
    import torch
    from safetensors.torch import save_file

    folder = root / "run"
    shutil.copytree(model, folder)
    (folder / "model.safetensors").unlink()
    (folder / "config.json").unlink()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model), "r": 4}))
    save_file({"a": torch.zeros(4, 4)}, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize("damage", ["bad_json", "no_weights", "truncated"])
def test_merge_lora_of_a_corrupt_adapter_names_the_users_file(tmp_path, capsys, tiny_model_dir, damage):
    folder = make_adapter_folder(tmp_path, tiny_model_dir)
    weights = folder / "adapter_model.safetensors"
    if damage == "bad_json":
        (folder / "adapter_config.json").write_text('{"r": 4,\n "lora_alpha": }\n')
        expected = f"{folder / 'adapter_config.json'}, line 2: invalid JSON"
    elif damage == "no_weights":
        weights.unlink()
        expected = f"LoRA folder {folder}: no adapter weights next to {folder / 'adapter_config.json'}"
    else:
        weights.write_bytes(weights.read_bytes()[:60])
        expected = f"weights file {weights} is truncated or corrupt"
    for extra in ([], ["--base", str(tiny_model_dir)]):
        code, lines = cli_lines(["merge-lora", str(folder), str(tmp_path / "merged"), *extra], capsys)
        assert code == 2 and len(lines) == 1 and expected in lines[0]
        assert "codiemb-lora-" not in lines[0]  # never the temporary view of the folder
    assert not (tmp_path / "merged").exists()


# ------------------------------------------------------------------------------------------------ encodings, data


def test_beir_non_utf8_bytes_and_lone_surrogates_name_file_line_and_field(tmp_path):
    qrels = tmp_path / "dev.tsv"
    qrels.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td\xe92\t1\n")
    with pytest.raises(DataFormatError, match=rf"^{qrels}, line 3, field 'corpus-id': is not valid UTF-8"):
        load_beir_qrels(qrels)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "title": "caf\xe9", "text": "x"}\n')
    with pytest.raises(DataFormatError, match=rf"^{corpus}, line 2, field 'title': is not valid UTF-8"):
        load_beir_corpus(corpus)
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "fine"}\n{"_id": "q2", "text": "bad \\ud800"}\n')
    with pytest.raises(DataFormatError, match=rf"^{queries}, line 2, field 'text': contains a lone surrogate"):
        load_beir_queries(queries)
    queries.write_text('{"_id": "q\\udfff", "text": "fine"}\n')
    with pytest.raises(DataFormatError, match=rf"^{queries}, line 1, field '_id': contains a lone surrogate"):
        load_beir_queries(queries)


@pytest.mark.parametrize(("scores", "problem"), [([3.0], "1 pair"), ([2.0, 2.0, 2.0], "every gold score is 2.0")])
def test_sts_eval_set_without_a_correlation_is_one_line_naming_the_file(tmp_path, capsys, tiny_model_dir, scores,
                                                                        problem):  # fmt: skip
    sts = tmp_path / "sts.tsv"
    sts.write_text("".join(f"sentence {i}\tother {i}\t{score}\n" for i, score in enumerate(scores)))
    code, lines = cli_lines(["evaluate", "--model", str(tiny_model_dir), "--sts_eval", str(sts), "--output_dir",
                             str(tmp_path / "eval")], capsys)  # fmt: skip
    assert code == 2
    assert lines == [lines[0]] and lines[0].startswith(
        f"codiemb evaluate: error: STS evaluation file {sts}: {problem}"
    )
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_fusion_parameter_is_refused_by_name(tmp_path, capsys, tiny_model_dir, value):
    code, lines = cli_lines(["fuse", "--base", str(tiny_model_dir), "--checkpoints", str(tiny_model_dir),
                             str(tiny_model_dir), "--output-dir", str(tmp_path / "fused"), "--param", f"p={value}"],
                            capsys)  # fmt: skip
    assert code == 2
    assert lines == [(f"codiemb fuse: error: fusion method 'delta': parameter 'p' must be a finite "
                     f"number, got '{value}'")]  # fmt: skip
    assert not (tmp_path / "fused").exists()


# ------------------------------------------------------------------------------------------------ writes refused


def test_write_failure_is_found_through_library_wrappers_and_names_the_final_folder(tmp_path):
    staged = tmp_path / ".fused.partial-0123abcd" / "model.safetensors"
    assert write_failure(OSError(errno.ENOSPC, "No space left on device", str(staged))) == (errno.ENOSPC, str(staged))
    wrapped = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert write_failure(wrapped) == (errno.ENOSPC, None)
    assert write_failure(FileNotFoundError(errno.ENOENT, "missing", "x")) is None
    message = write_failure_message(errno.ENOSPC, str(staged))
    assert message.startswith(f"cannot write {tmp_path / 'fused' / 'model.safetensors'}: No space left on device")
    assert f"nothing was written to {tmp_path / 'fused'}" in message and ".partial-" not in message


def fuse_argv(model: Path, output: Path) -> list[str]:
    return ["fuse", "--base", str(model), "--checkpoints", str(model), str(model), "--output-dir", str(output)]


def test_file_size_limit_during_fuse_is_one_line_and_exit_2(tmp_path, tiny_model_dir):
    """ENOSPC without a small disk: a file-size limit (RLIMIT_FSIZE) makes the write fail with EFBIG."""
    pytest.importorskip("resource")
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))\n"
        "from hf_codiemb.cli import main\n"
        f"sys.exit(main({fuse_argv(tiny_model_dir, tmp_path / 'fused')!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("codiemb")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert lines == [(f"codiemb fuse: error: cannot write {tmp_path / 'fused'}: File too large; {tmp_path / 'fused'} is "
                     "unchanged (nothing was written there); free some space (or choose another output folder) "
                     "first")]  # fmt: skip
    assert not (tmp_path / "fused").exists()
    assert not list(tmp_path.glob(".fused.partial-*"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB tmpfs (``mount`` needs root and a kernel that allows it: skipped otherwise)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=False, capture_output=True
        ).returncode
    ):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission); the RLIMIT_FSIZE test covers it")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_full_disk_during_fuse_and_merge_is_one_line_and_exit_2(small_tmpfs, capsys, tiny_model_dir):
    code, lines = cli_lines(fuse_argv(tiny_model_dir, small_tmpfs / "fused"), capsys)
    assert code == 2
    assert lines == [(f"codiemb fuse: error: cannot write {small_tmpfs / 'fused'}: No space left on device; "
                     f"{small_tmpfs / 'fused'} is unchanged (nothing was written there); free some space (or choose "
                     "another output folder) first")]  # fmt: skip
    assert list(small_tmpfs.iterdir()) == []  # the staging folder was removed


def test_read_only_folder_is_one_line_and_exit_2_for_train_and_evaluate(tmp_path, capsys, tiny_model_dir):
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             check=False, capture_output=True).returncode == 0 if shutil.which("mount") else False  # fmt: skip
    if not mounted:
        folder.chmod(0o500)
        if os.access(folder, os.W_OK):  # root ignores the mode
            pytest.skip("no read-only folder can be made here (root without mount permission)")
    try:
        code, lines = cli_lines(["evaluate", "--model", str(tiny_model_dir), "--sts_eval", "demo:sts_dev.jsonl",
                                 "--max_eval_records", "12", "--output_dir", str(folder / "eval")], capsys)  # fmt: skip
        reason = os.strerror(errno.EROFS if mounted else errno.EACCES)
        assert code == 2 and lines == [f"codiemb evaluate: error: cannot write {folder / 'eval'}: {reason}"]
        code, lines = cli_lines(train_argv(tmp_path, tiny_model_dir, "--max_steps", "1", "--output_dir",
                                           str(folder / "run")), capsys)  # fmt: skip
        # Refused at once, before any data or model is loaded: the output folder's lock cannot be created.
        assert code == 2 and lines == [
            f"codiemb train: error: cannot write {folder / 'run'}: {reason}; nothing was written there"
        ]
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        else:
            folder.chmod(0o700)


# ------------------------------------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_during_train_names_the_complete_checkpoint_and_the_resume_command(tmp_path, capsys, tiny_model_dir,
                                                                                  monkeypatch):  # fmt: skip
    from hf_codiemb.trainer import CoDiEmbTrainer

    original = CoDiEmbTrainer.training_step

    def interrupted_step(self, *args, **kwargs):
        if self.state.global_step >= 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CoDiEmbTrainer, "training_step", interrupted_step)
    argv = train_argv(tmp_path, tiny_model_dir, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1",
                      "--evaluate_before", "false")  # fmt: skip
    code, lines = cli_lines(argv, capsys)
    assert code == INTERRUPTED_EXIT_CODE == 130
    checkpoint = tmp_path / "out" / "checkpoint-2"
    resume = shlex.join(["codiemb", *argv, "--resume_from_checkpoint", str(checkpoint)])
    assert lines == [(f"codiemb train: interrupted (Ctrl-C); training stopped; the checkpoints are fine: {checkpoint} "
                     f"is complete; resume with: {resume}")]  # fmt: skip
    # The command it gives resumes and finishes the run.
    monkeypatch.setattr(CoDiEmbTrainer, "training_step", original)
    assert main(shlex.split(resume)[1:]) == 0
    state = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_ctrl_c_in_another_command_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import hf_codiemb.commands.evaluate as evaluate_command

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_command, "run", interrupted)
    code, lines = cli_lines(["evaluate", "--sts_eval", "x"], capsys)
    assert code == 130 and lines == ["codiemb evaluate: interrupted (Ctrl-C)"]
