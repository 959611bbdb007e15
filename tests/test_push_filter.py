"""``codiemb push`` uploads only what a model repository needs and refuses credentials (issue 10, item 2).

Against the loopback Hub (tests/hub_server.py): a training-style folder with planted token files, checkpoints,
optimizer/RNG states and an archive uploads exactly the files ``SentenceTransformer.save`` wrote (plus hf_codiemb's
result files), the pushed model loads from the Hub with identical embeddings, credentials stop the push before
anything is sent, and ``--force`` / ``--include`` work.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import hub_fixtures
import numpy as np
import pytest
from tiny_models import make_tiny_model, packaged_minilm_path

import hf_codiemb.hub as hub_module
from hf_codiemb.cli import main
from hf_codiemb.hub import find_credentials, plan_push, push_model_folder

TOKEN = "hf_" + "PlantedTokenForPushTests0123456789"  # split so this file itself is not a "credential"
SENTENCES = ["A man is playing a guitar.", "The weather is lovely today.", "Fusion of fine-tuned encoders."]


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A tiny sentence-transformers folder exactly as ``SentenceTransformer.save`` writes it."""
    root = tmp_path_factory.mktemp("saved")
    make_tiny_model(root)
    return root / "model"


@pytest.fixture
def training_folder(saved_model, tmp_path) -> tuple[Path, set[str]]:
    """A training output folder: the saved model, hf_codiemb's results, and everything that must stay local.

    Returns the folder and the set of files a model repository should receive (computed from what was written).
    """
    folder = tmp_path / "run"
    shutil.copytree(saved_model, folder)
    expected = files_under(folder)
    (folder / "eval_results.json").write_text('{"sts": {"dev": {"spearman_cosine": 0.5}}}')
    (folder / "eval_before_after.md").write_text("| metric | before | after | delta |\n")
    expected |= {"eval_results.json", "eval_before_after.md"}
    planted = {
        "hf_token.txt": f"{TOKEN}\n".encode(),
        "credentials.json": b'{"aws_access_key_id": "AKIAABCDEFGHIJKLMNOP"}',
        "optimizer.pt": os.urandom(2048),
        "scheduler.pt": os.urandom(64),
        "rng_state.pth": os.urandom(64),
        "rng_state_1.pth": os.urandom(64),
        "trainer_state.json": b'{"global_step": 5}',
        "training_args.bin": os.urandom(128),
        "model.tar": os.urandom(300_000),
        "notes.txt": b"local notes",
        "runs/Nov26/events.out.tfevents.1.host": os.urandom(256),
        ".hidden_cache": b"x",
    }
    for name, data in planted.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    shutil.copytree(saved_model, folder / "checkpoint-5")
    for name in ("optimizer.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"):
        shutil.copy(folder / name, folder / "checkpoint-5" / name)
    return folder, expected


def repo_files(repo_id: str, revision: str = "main") -> set[str]:
    from huggingface_hub import HfApi

    return set(HfApi().list_repo_files(repo_id, revision=revision)) - {".gitattributes"}


def test_push_uploads_only_model_files_and_the_model_loads_from_the_hub(hub, training_folder, caplog):
    from sentence_transformers import SentenceTransformer

    folder, expected = training_folder
    assert {"1_Pooling/config.json", "2_Normalize/config.json", "model.safetensors", "modules.json"} <= expected
    with caplog.at_level(logging.INFO, logger="hf_codiemb"):
        assert main(["push", str(folder), "--repo-id", "user/tiny-run"]) == 0
    assert repo_files("user/tiny-run") == expected
    total = sum((folder / path).stat().st_size for path in expected)
    assert f"{len(expected)} file(s)" in caplog.text and f"({total:,} bytes)" in caplog.text
    for path in expected:
        assert f"  {path} (" in caplog.text, path
    assert "checkpoint-5/ (" in caplog.text and "model.tar" in caplog.text  # what was left out is said
    assert f"look like credentials (keep them out of model folders): {folder / 'credentials.json'}, " \
        f"{folder / 'hf_token.txt'}" in caplog.text
    assert TOKEN not in caplog.text
    for path in expected:  # byte for byte
        assert hub.server.file_bytes("user/tiny-run", path) == (folder / path).read_bytes(), path
    remote = SentenceTransformer("user/tiny-run", cache_folder=str(hub.fresh_cache("st")), device="cpu")
    local = SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_array_equal(remote.encode(SENTENCES), local.encode(SENTENCES))


def test_credential_in_a_model_file_is_refused_before_anything_is_sent(hub_regular, training_folder, caplog, capsys):
    folder, expected = training_folder
    readme = folder / "README.md"
    readme.write_text(readme.read_text() + f"\nlogin with\n{TOKEN}\n")
    line = readme.read_text().splitlines().index(TOKEN) + 1
    hub_regular.server.state.requests.clear()
    assert main(["push", str(folder), "--repo-id", "user/refused"]) == 2
    err = capsys.readouterr().err  # one line: codiemb push: error: ...
    assert err.startswith("codiemb push: error: Refusing to push") and err.count("\n") == 1
    assert f"{readme}: its content looks like a Hugging Face token (hf_...) (line {line})" in err
    assert "--force" in err
    assert TOKEN not in err and TOKEN not in caplog.text
    assert hub_regular.server.state.requests == []  # not even the repository was created
    caplog.clear()
    assert main(["push", str(folder), "--repo-id", "user/refused", "--force"]) == 0
    assert repo_files("user/refused") == expected
    assert f"Uploading {readme} although its content looks like a Hugging Face token" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("planted", "content", "reason"),
    [
        ("1_Pooling/credentials.json", b"{}", "the name looks like a credentials file"),
        ("2_Normalize/deploy.pem", b"not a key", "a PEM key/certificate file"),
        ("1_Pooling/extra.txt", b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n", "a private key (line 1)"),
        ("config.json", b'{"aws": "AKIAABCDEFGHIJKLMNOP"}', "an AWS access key id (line 1)"),
    ],
)
def test_module_folders_and_model_files_are_checked(hub_regular, training_folder, capsys, planted, content, reason):
    folder, _ = training_folder
    (folder / planted).write_bytes(content)
    assert main(["push", str(folder), "--repo-id", "user/refused"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / planted}: " in err and reason in err
    assert "user/refused" not in hub_regular.server.state.repos


def test_include_adds_files_and_is_checked_too(hub_regular, training_folder, capsys):
    folder, expected = training_folder
    assert main(["push", str(folder), "--repo-id", "user/inc", "--include", "*.txt"]) == 2  # hf_token.txt
    err = capsys.readouterr().err
    assert f"{folder / 'hf_token.txt'}: the name looks like a token file" in err
    assert "notes.txt:" not in err
    assert main(["push", str(folder), "--repo-id", "user/inc", "--include", "notes.txt",
                 "--include", "checkpoint-5/"]) == 0
    checkpoint = {f"checkpoint-5/{path}" for path in files_under(folder / "checkpoint-5")}
    assert repo_files("user/inc") == expected | {"notes.txt"} | checkpoint


def test_dry_run_and_invalid_repo_id_send_nothing(hub_regular, training_folder, caplog, capsys):
    folder, expected = training_folder
    hub_regular.server.state.requests.clear()
    with caplog.at_level(logging.INFO, logger="hf_codiemb"):
        assert main(["push", str(folder), "--repo-id", "user/dry", "--dry-run"]) == 0
    assert f"Would push {folder} to user/dry: {len(expected)} file(s)" in caplog.text
    capsys.readouterr()
    assert main(["push", str(folder), "--repo-id", "not a/valid//id"]) == 2
    assert "Invalid Hub repo id 'not a/valid//id'" in capsys.readouterr().err
    assert main(["push", str(folder / "absent"), "--repo-id", "user/x"]) == 2
    assert hub_regular.server.state.requests == []


def test_a_bad_folder_or_repo_id_is_one_error_line_and_exit_status_2(tmp_path, saved_model, capfd):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("no model here")
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    (broken / "modules.json").write_text("[{")
    cases = [
        ([str(tmp_path / "absent"), "--repo-id", "user/x"], f"Nothing to push: {tmp_path / 'absent'} is not a "),
        ([str(tmp_path / "notes"), "--repo-id", "user/x"], f"Nothing to push: {tmp_path / 'notes'} holds no model "),
        ([str(broken), "--repo-id", "user/x"], f"{broken / 'modules.json'}: not valid JSON"),
        ([str(saved_model), "--repo-id", "not a/valid//id"], "Invalid Hub repo id 'not a/valid//id'"),
        ([str(saved_model), "--repo-id", "user/x", "--revision", "dev", "--create-pr"], "create_pr opens a pull "),
    ]
    for argv, message in cases:
        capfd.readouterr()
        assert main(["push", *argv, "--dry-run"]) == 2, argv
        lines = capfd.readouterr().err.splitlines()
        assert lines == [lines[0]] and lines[0].startswith(f"codiemb push: error: {message}"), lines


def test_fuse_push_goes_through_the_same_filter(hub_regular, tmp_path, capsys):
    base = hub_fixtures.tiny_hf_model(tmp_path / "base")
    checkpoints = [hub_fixtures.perturbed_copy(base, tmp_path / f"ck{s}", seed=s) for s in (1, 2)]
    (checkpoints[0] / "hf_token.txt").write_text(TOKEN)  # support files of the first checkpoint are copied
    (checkpoints[0] / "notes.txt").write_text("local notes")
    def fuse(out: str, repo: str) -> int:
        return main(["fuse", "--base", str(base), "--checkpoints", *map(str, checkpoints),
                     "--output-dir", str(tmp_path / out), "--push-to-hub", repo])

    assert fuse("out", "user/fused") == 0
    out = tmp_path / "out"
    assert (out / "hf_token.txt").exists()  # the fusion copied it, the push left it out
    uploaded = repo_files("user/fused")
    assert "hf_token.txt" not in uploaded and "notes.txt" not in uploaded
    assert uploaded == {p for p in files_under(out) if p not in ("hf_token.txt", "notes.txt")}
    (checkpoints[0] / "special_tokens_map.json").write_text(f'{{"pad": "{TOKEN}"}}')
    capsys.readouterr()
    assert fuse("out2", "user/fused2") == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("codiemb")]  # after tqdm's bar
    assert err.startswith("codiemb fuse: error: Refusing to push")  # one line, saying where the fused model is
    assert f"{tmp_path / 'out2' / 'special_tokens_map.json'}: its content looks like a Hugging Face token" in err
    assert f"The fused model is in {tmp_path / 'out2'}; push it with `codiemb push` once fixed." in err
    assert "user/fused2" not in hub_regular.server.state.repos
    assert fuse("out3", "bad id//") == 2
    assert not (tmp_path / "out3").exists()  # refused before fusing


# ------------------------------------------------------------------------------------- selection and checks, no Hub
def test_weights_lora_and_exports_are_selected(tmp_path):
    folder = tmp_path / "m"
    (folder / "onnx").mkdir(parents=True)
    for name in ("config.json", "pytorch_model.bin", "adapter_config.json", "adapter_model.safetensors",
                 "tokenizer.json", "sentencepiece.bpe.model", "onnx/model.onnx", "onnx/notes.txt",
                 "flax_model.msgpack", "fusion_weights.json", "fusion_weights.png"):
        (folder / name).write_bytes(b"x")
    plan = plan_push(folder)
    assert sorted(plan.files) == sorted(["adapter_config.json", "adapter_model.safetensors", "config.json",
                                 "fusion_weights.json", "fusion_weights.png", "onnx/model.onnx",
                                 "sentencepiece.bpe.model", "tokenizer.json"])
    assert "pytorch_model.bin" in plan.skipped  # safetensors weights are there
    (folder / "adapter_model.safetensors").unlink()
    assert "pytorch_model.bin" in plan_push(folder).files  # the only weights
    (folder / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "../elsewhere", "type": "x"}]')
    with pytest.raises(ValueError, match=r"modules.json: module 0 path '../elsewhere' points outside"):
        plan_push(folder)


def test_real_model_files_are_not_credentials():
    folder = packaged_minilm_path()
    plan = plan_push(folder)
    assert {"tokenizer.json", "special_tokens_map.json", "tokenizer_config.json", "vocab.txt"} <= set(plan.files)
    assert find_credentials(folder, plan.files) == []


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("token", b"x", "token file"),
        ("api_tokens.json", b"{}", "token file"),
        ("service_account.json", b"{}", "service-account key"),
        ("db_credentials.yaml", b"{}", "credentials file"),
        ("id_ed25519", b"x", "SSH private key"),
        ("my.netrc", b"x", "netrc file"),
        ("client.key", b"x", "private key file"),
        ("aws.txt", b"[default]\naws_secret_access_key = " + b"A" * 40 + b"\n", "AWS secret access key (line 2)"),
        ("gh.txt", b"ghp_" + b"a" * 36, "GitHub token (line 1)"),
        ("openai.txt", b"key\n\nsk-" + b"b" * 40, "API secret key (sk-...) (line 3)"),
        ("login.txt", b"machine huggingface.co login me password s3cr3t\n", "netrc password entry (line 1)"),
        ("pgp.asc", b"-----BEGIN PGP PRIVATE KEY BLOCK-----", "a private key (line 1)"),
    ],
)
def test_credential_names_and_contents(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    [finding] = find_credentials(tmp_path, [name])
    assert finding.path == name and reason in finding.reason
    if len(content) > 8:  # a secret: never repeated in the message
        assert content.decode().strip().split()[-1] not in finding.reason


def test_secret_across_a_chunk_boundary_and_in_safetensors_metadata(tmp_path):
    import torch
    from safetensors.torch import save_file

    data = bytearray(b"a\n" * (3 * (1 << 19)))  # 3 MB of short lines
    start = (1 << 20) - 10  # the token straddles the first 1 MB chunk boundary
    data[start:start + len(TOKEN)] = TOKEN.encode()
    (tmp_path / "big.txt").write_bytes(bytes(data))
    line = bytes(data[:start]).count(b"\n") + 1
    [finding] = find_credentials(tmp_path, ["big.txt"])
    assert finding.reason == f"its content looks like a Hugging Face token (hf_...) (line {line})"
    assert hub_module._SCAN_CHUNK == 1 << 20  # the boundary above is the real one
    save_file({"w": torch.zeros(4)}, tmp_path / "model.safetensors", metadata={"note": TOKEN})
    [finding] = find_credentials(tmp_path, ["model.safetensors"])
    assert "Hugging Face token" in finding.reason


def test_push_model_folder_api_refuses_and_forces(hub_regular, training_folder):
    folder, expected = training_folder
    with pytest.raises(hub_module.PushRefusedError, match=re.escape(str(folder / "hf_token.txt"))) as error:
        push_model_folder(folder, "user/api", include=["hf_token.txt"])
    assert [f.path for f in error.value.findings] == ["hf_token.txt"] and TOKEN not in str(error.value)
    push_model_folder(folder, "user/api", include=["hf_token.txt"], force=True)
    assert repo_files("user/api") == expected | {"hf_token.txt"}
