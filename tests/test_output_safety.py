"""Issue 21, classes 1 and 2: broken model folders are refused by every command; no data lost by ordering or races.

- An incomplete model folder (no tokenizer, the 5-token fallback tokenizer, a missing module folder, no weights) is
  refused by every command that reads one, with one line naming the folder and what is missing.
- Fusion refuses a checkpoint whose tokenizer differs from the base's, and an output inside an input.
- An output in use by another live process is refused at once, naming that process; a lock left by a killed
  process is taken over.
- ``--overwrite_output_dir`` with bad data, model or recipe leaves the previous checkpoints.
- ``codiemb mine`` killed mid-write, or failing to write (a real kernel write error), leaves the previous file;
  an ``--output`` inside its inputs is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from beir_fixtures import write_beir_folder
from hub_fixtures import perturbed_copy, save_tiny_tokenizer, tiny_hf_model
from tiny_models import make_tiny_model

from hf_codiemb.cli import main
from hf_codiemb.errors import ModelLoadError, OutputInUseError
from hf_codiemb.fusion import FusionError, delta_fuse
from hf_codiemb.model_folder import check_model_folder, tokenizer_fingerprint
from hf_codiemb.output_lock import acquire_output_lock, lock_path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_model(root)
    return root / "model"


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory, tiny_model) -> Path:
    """A LoRA-trained sentence-transformers folder (adapter weights + tokenizer + modules)."""
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    model.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    folder = tmp_path_factory.mktemp("lora") / "lora"
    model.save(str(folder))
    return folder


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def ir_records(count: int) -> list[dict]:
    return [
        {"query": f"query {i}", "positives": [f"positive {i}"], "negatives": [f"negative {i}"]} for i in range(count)
    ]


# ----------------------------------------------------------------------------------------- broken model folders
def _no_tokenizer(folder: Path) -> str:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    return f"no tokenizer in {folder} (neither tokenizer.json nor vocab.txt"


def _fallback_tokenizer(folder: Path) -> str:
    _no_tokenizer(folder)
    save_tiny_tokenizer(folder, vocab_size=5)  # what a folder without tokenizer files loads as: 5 special tokens
    return f"the tokenizer in {folder} has only 5 special tokens"


def _no_pooling_folder(folder: Path) -> str:
    shutil.rmtree(folder / "1_Pooling")
    return f"Model folder {folder}: module 1 (Pooling) has no folder '1_Pooling'"


def _no_weights(folder: Path) -> str:
    for name in ("model.safetensors", "adapter_model.safetensors"):
        (folder / name).unlink(missing_ok=True)
    return f"{folder} has a config.json but no weights"


BREAKAGES = {"no_tokenizer": _no_tokenizer, "fallback_tokenizer": _fallback_tokenizer,
             "no_pooling_folder": _no_pooling_folder, "no_weights": _no_weights}  # fmt: skip


def _command_argv(command: str, model: Path, tmp_path: Path, good_model: Path) -> list[str]:
    out = tmp_path / "out"
    if command == "train":
        ir = write_jsonl(tmp_path / "ir.jsonl", ir_records(8))
        return ["train", "--model_name_or_path", str(model), "--ir_train", str(ir), "--ir_batch_size", "2",
                "--max_steps", "1", "--report_to", "none", "--output_dir", str(out)]  # fmt: skip
    if command == "train_dry_run":
        return [*_command_argv("train", model, tmp_path, good_model), "--dry_run"]
    if command == "evaluate":
        return ["evaluate", "--model", str(model), "--sts_eval", "demo:sts_dev.jsonl", "--output_dir", str(out)]
    if command == "mine":
        beir = write_beir_folder(tmp_path / "beir")
        return ["mine", "--model", str(model), "--beir", str(beir), "--output", str(out / "mined.jsonl"),
                "--cache_dir", ""]  # fmt: skip
    if command == "fuse_base":
        return ["fuse", "--base", str(model), "--checkpoints", str(good_model), "--output_dir", str(out)]
    if command == "fuse_checkpoint":
        return ["fuse", "--base", str(good_model), "--checkpoints", str(model), "--output_dir", str(out)]
    if command == "push":
        return ["push", str(model), "--repo_id", "user/broken", "--dry_run"]
    if command == "merge_lora":
        return ["merge-lora", str(model), str(out)]
    raise ValueError(command)


COMMANDS = ["train", "train_dry_run", "evaluate", "mine", "fuse_base", "fuse_checkpoint", "push", "merge_lora"]


@pytest.mark.parametrize("breakage", list(BREAKAGES))
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_an_incomplete_model_folder(
    command, breakage, tmp_path, capfd, tiny_model, lora_model
):
    source = lora_model if command == "merge_lora" else tiny_model
    if breakage == "no_weights" and command == "merge_lora":
        pytest.skip("a LoRA folder without adapter weights is covered by the no_weights case of the others")
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    expected = BREAKAGES[breakage](broken)
    capfd.readouterr()
    code = main(_command_argv(command, broken, tmp_path, tiny_model))
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if expected in line]
    assert code == 2, err
    assert len(lines) == 1, err  # one line naming the folder and what is missing, no traceback
    assert "Traceback" not in err
    assert lines[0].startswith(f"codiemb {command.split('_')[0].replace('merge', 'merge-lora')}: error: ")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written


def test_complete_folders_pass_and_the_fallback_vocabulary_is_what_a_folder_without_tokenizer_loads(
    tmp_path, tiny_model, lora_model
):
    from sentence_transformers import SentenceTransformer
    from tiny_models import packaged_minilm_path

    for folder in (tiny_model, lora_model, packaged_minilm_path(), tiny_hf_model(tmp_path / "hf")):
        check_model_folder(folder)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    _no_tokenizer(broken)
    loaded = SentenceTransformer(str(broken), device="cpu")  # the silent failure the check prevents
    assert len(loaded.tokenizer) == 5 and loaded.tokenizer.tokenize("hello world") == ["[UNK]", "[UNK]"]
    loaded.tokenizer.save_pretrained(broken)  # a run trained on it would save this tokenizer
    with pytest.raises(ModelLoadError, match=r"has only 5 special tokens .*every word would be \[UNK\]"):
        check_model_folder(broken)
    # The same vocabulary read from tokenizer.json (tiny model) and from vocab.txt (packaged model) is the same.
    assert tokenizer_fingerprint(tiny_model) == tokenizer_fingerprint(packaged_minilm_path())


def test_unreadable_weights_are_named(tmp_path, tiny_model):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"half a torch.save file")
    with pytest.raises(ModelLoadError, match=rf"weights file {folder / 'pytorch_model.bin'} is truncated or not a"):
        check_model_folder(folder)
    (folder / "pytorch_model.bin").unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"lists missing weight shard\(s\) \['model-00001-of-00002.safetensors'"):
        check_model_folder(folder)


def test_fusion_refuses_a_checkpoint_with_another_tokenizer(tmp_path):
    base = tiny_hf_model(tmp_path / "base")
    same = perturbed_copy(base, tmp_path / "same", seed=1)
    other = perturbed_copy(base, tmp_path / "other", seed=2)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["renamed"] = tokenizer["model"]["vocab"].pop("w7")  # one token differs
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(FusionError, match=rf"checkpoint 2 \({other}\) has a different tokenizer \({other}\) from "
                                          rf"the base \({base}\) \({base}\)"):  # fmt: skip
        delta_fuse(base, [same, other], tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    delta_fuse(base, [same], tmp_path / "out", show_progress=False)  # the same tokenizer fuses
    assert tokenizer_fingerprint(tmp_path / "out") == tokenizer_fingerprint(base)


# ---------------------------------------------------------------------------------- outputs inside inputs
def test_fuse_output_inside_an_input_is_refused_and_the_input_is_untouched(tmp_path):
    base = tiny_hf_model(tmp_path / "base")
    checkpoint = perturbed_copy(base, tmp_path / "ck", seed=1)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for output, label in [(checkpoint / "fused", "checkpoint 1"), (base / "sub" / "fused", "base")]:
        with pytest.raises(FusionError, match=rf"{output} is inside the {label} \("):
            delta_fuse(base, [checkpoint], output, show_progress=False, overwrite=True)
    with pytest.raises(FusionError, match="contains the base"):
        delta_fuse(base, [checkpoint], tmp_path, show_progress=False, overwrite=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_mine_output_inside_its_inputs_is_refused(tmp_path, capsys, tiny_model):
    beir = write_beir_folder(tmp_path / "beir")
    corpus = (beir / "corpus.jsonl").read_bytes()
    for output, what in [(beir / "corpus.jsonl", "BEIR folder"), (beir / "mined.jsonl", "BEIR folder"),
                         (tiny_model / "mined.jsonl", "model folder")]:  # fmt: skip
        argv = ["mine", "--model", str(tiny_model), "--beir", str(beir), "--output", str(output), "--cache_dir", ""]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"codiemb mine: error: --output {output} is inside the {what} (" in err
    assert (beir / "corpus.jsonl").read_bytes() == corpus
    assert not (beir / "mined.jsonl").exists() and not (tiny_model / "mined.jsonl").exists()


# ------------------------------------------------------------------------------------------------ output locks
HOLD_LOCK = """
import sys, time
from pathlib import Path
from hf_codiemb.output_lock import acquire_output_lock
acquire_output_lock(sys.argv[1], "training")
Path(sys.argv[2]).write_text("held")
time.sleep(120)
"""


@pytest.fixture
def lock_holder(tmp_path):
    """Start a real second process holding the lock of an output; yields ``(start(output), process list)``."""
    processes: list[subprocess.Popen] = []

    def start(output: Path) -> subprocess.Popen:
        ready = tmp_path / f"ready-{len(processes)}"
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output), str(ready)], env=env)
        processes.append(process)
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None, "the lock holder exited"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


@pytest.mark.parametrize("command", ["train", "fuse", "mine", "merge_lora"])
def test_a_second_writer_into_a_locked_output_fails_at_once_and_the_first_stays_intact(
    command, tmp_path, capsys, lock_holder, tiny_model, lora_model
):
    out = tmp_path / "out"
    output = out / "mined.jsonl" if command == "mine" else out
    out.mkdir()
    (out / "first-run-file.txt").write_text("the first run's")
    holder = lock_holder(output)
    argv = {
        "train": _command_argv("train", tiny_model, tmp_path, tiny_model),
        "fuse": ["fuse", "--base", str(tiny_model), "--checkpoints", str(tiny_model), "--output_dir", str(out),
                 "--overwrite"],
        "mine": _command_argv("mine", tiny_model, tmp_path, tiny_model),
        "merge_lora": ["merge-lora", str(lora_model), str(out)],
    }[command]  # fmt: skip
    if command == "merge_lora":
        shutil.rmtree(out)  # merge-lora needs a new folder; the lock is beside it
    start = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 30
    assert code == 2, err
    assert f"{output} is in use: process {holder.pid} on host " in err, err
    assert f"lock file {lock_path(output)}" in err
    if command != "merge_lora":
        assert sorted(p.name for p in out.iterdir() if p != lock_path(output)) == ["first-run-file.txt"]
        assert (out / "first-run-file.txt").read_text() == "the first run's"
    assert holder.poll() is None and lock_path(output).is_file()  # the first writer keeps its lock


def test_a_lock_left_by_a_killed_process_is_taken_over_and_released(tmp_path, lock_holder, caplog):
    output = tmp_path / "run"
    holder = lock_holder(output)
    with pytest.raises(OutputInUseError, match=rf"process {holder.pid} on host"):
        acquire_output_lock(output)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(output).is_file()  # the killed process could not remove it
    with caplog.at_level("WARNING", logger="hf_codiemb.output_lock"):
        lock = acquire_output_lock(output)
    assert f"process {holder.pid} on host" in caplog.text and "no longer running" in caplog.text
    owner = json.loads(lock_path(output).read_text())
    assert owner["pid"] == os.getpid()
    lock.release()
    assert not lock_path(output).exists()


# ----------------------------------------------------------------------------- ordering: overwrite_output_dir
def _bad_data(tmp_path: Path, tiny_model: Path) -> list[str]:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ir_records(1)[0]) + "\n" + '{"query": "q", "positives": "not a list"}\n')
    return ["--ir_train", str(bad)]


def _missing_negatives(tmp_path: Path, tiny_model: Path) -> list[str]:  # found by the trainer's own validation
    records = ir_records(8)
    records[3]["negatives"] = []
    return ["--ir_train", str(write_jsonl(tmp_path / "no-neg.jsonl", records)), "--num_negatives", "1"]


def _broken_model(tmp_path: Path, tiny_model: Path) -> list[str]:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    _no_tokenizer(broken)
    return ["--ir_train", str(write_jsonl(tmp_path / "ir.jsonl", ir_records(8))), "--model_name_or_path", str(broken)]


def _bad_eval_file(tmp_path: Path, tiny_model: Path) -> list[str]:
    return ["--ir_train", str(write_jsonl(tmp_path / "ir.jsonl", ir_records(8))),
            "--sts_eval", str(tmp_path / "no-such-sts.jsonl")]  # fmt: skip


@pytest.mark.parametrize("mistake", [_bad_data, _missing_negatives, _broken_model, _bad_eval_file])
def test_overwrite_output_dir_with_a_mistake_keeps_the_previous_checkpoints(tmp_path, capsys, tiny_model, mistake):
    out = tmp_path / "run"
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    argv = [
        "train",
        "--model_name_or_path",
        str(tiny_model),
        "--ir_batch_size",
        "2",
        "--max_steps",
        "1",
        "--report_to",
        "none",
        "--output_dir",
        str(out),
        "--overwrite_output_dir",
        *mistake(tmp_path, tiny_model),
    ]
    assert main(argv) == 2
    assert "codiemb train: error: " in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text()) == {"global_step": 4}
    assert not lock_path(out).exists()  # released when the command ended


# ------------------------------------------------------------------------------------ mine: atomic output
MINE_WRITER = """
import os, sys, time, resource, signal
from pathlib import Path
from hf_codiemb import mining as beir
from hf_codiemb.mining import MiningResult, write_mining_output
from hf_codiemb.errors import OutputWriteError

mode, output, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])

class Records(list):
    def __iter__(self):
        for index, record in enumerate(list.__iter__(self)):
            if index == 50 and mode == "kill":
                ready.write_text("mid-write")
                time.sleep(120)
            yield record

records = Records({"query": f"q{i}", "positives": ["p" * 200], "negatives": ["n" * 200]} for i in range(2000))
if mode == "full":  # a real write error from the kernel: files may not grow beyond 64 KiB
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
summary = {"queries": 2000}
beir._summary_markdown = lambda summary: "summary"  # the real one needs a full summary of a mining run
try:
    write_mining_output(MiningResult(records=records, summary=summary), output)
except OutputWriteError as error:
    print(error)
    sys.exit(3)
"""


@pytest.mark.parametrize("mode", ["kill", "full"])
def test_a_killed_or_failing_mine_write_leaves_the_previous_file(tmp_path, mode):
    output = tmp_path / "mined" / "scifact-train.jsonl"
    output.parent.mkdir()
    previous = "".join(json.dumps({"query": f"old {i}", "positives": ["p"], "negatives": ["n"]}) + "\n"
                       for i in range(3))  # fmt: skip
    output.write_text(previous)
    summary = output.with_name("scifact-train.summary.json")
    summary.write_text('{"queries": 3}\n')
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen([sys.executable, "-c", MINE_WRITER, mode, str(output), str(ready)], env=env,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    if mode == "kill":
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        partial = list(output.parent.glob(".scifact-train.jsonl.partial-*"))
        assert len(partial) == 1 and partial[0].stat().st_size > 0  # it was writing, beside the target
        process.send_signal(signal.SIGKILL)
    stdout, _ = process.communicate(timeout=120)
    if mode == "full":
        assert process.returncode == 3
        assert f"Cannot write {output}: [Errno 27] File too large; the previous file (if any) is unchanged" in stdout
        assert not list(output.parent.glob(".*partial-*"))  # the failed writer removed its temporary file
    else:
        assert process.returncode == -signal.SIGKILL
    assert output.read_text() == previous
    assert summary.read_text() == '{"queries": 3}\n'


def test_lock_is_taken_by_rank_0_only(tmp_path, monkeypatch, lock_holder):
    """Under torchrun only the process that saves holds the lock: another rank never fails on rank 0's lock."""
    from hf_codiemb import CoDiEmbTrainingArguments
    from hf_codiemb.checkpoints import prepare_output_dir

    out = tmp_path / "run"
    holder = lock_holder(out)  # stands for rank 0 of the launch
    args = CoDiEmbTrainingArguments(output_dir=str(out), report_to=[], use_cpu=True)
    with pytest.raises(OutputInUseError, match=rf"process {holder.pid}"):
        prepare_output_dir(args)  # as rank 0 of another launch
    monkeypatch.setattr(type(args), "process_index", property(lambda self: 1))
    assert prepare_output_dir(args) is None  # rank 1 takes no lock, so it does not fail


@pytest.mark.parametrize("where", ["inside the base model", "containing a data file"])
def test_train_output_dir_overlapping_an_input_is_refused_before_any_work(tmp_path, tiny_model_dir, capsys, where):
    """`codiemb train` (and its dry run) refuses an output_dir inside its base model folder or holding its data."""
    from hf_codiemb.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "hf_codiemb" / "demo_data" / "sts_train.jsonl", data)
    output = model / "run" if where == "inside the base model" else data
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    argv = ["train", "--model_name_or_path", str(model), "--sts_train", str(data / "sts_train.jsonl"),
            "--output_dir", str(output), "--max_steps", "1", "--use_cpu", "true", "--report_to", "none"]  # fmt: skip
    for extra in ([], ["--dry_run"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        label = "base model" if where == "inside the base model" else "sts_train file"
        assert err.startswith(f"codiemb train: error: output_dir {output}") and err.count("\n") == 1
        assert f"the {label} (" in err and "choose an output_dir outside it" in err
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
