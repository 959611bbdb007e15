"""What a push may send, and bounded reads of the pushed folder (issue 21, classes 3 and 4).

Only regular files inside the pushed folder are uploaded: a symbolic link out of it (whose target would be sent),
a FIFO, a device link, a socket, a broken link stop the push with one line naming the file, before anything is
opened or sent; a ``--dry-run`` on such files ends promptly (run in a subprocess with a timeout). Credential
formats beyond the Hugging Face ones are refused by the content scan (ours and detect-secrets' rules), naming the
file and the rule, never the secret; the real packaged model and a trained tiny model pass clean.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import make_tiny_model, packaged_minilm_path

from hf_codiemb.cli import main
from hf_codiemb.hub import find_credentials, plan_push, push_model_folder, upload_folder_credentials
from hf_codiemb.safe_read import UnsafeFileError

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_" + "OutsideTargetSecret0123456789abcdef"  # split so this file itself is not a "credential"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved")
    make_tiny_model(root)
    return root / "model"


@pytest.fixture
def folder(saved_model, tmp_path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(saved_model, target)
    return target


def stored_bytes(hub) -> bytes:
    """Everything the loopback Hub stored (git blobs and LFS objects)."""
    return b"".join(path.read_bytes() for path in Path(hub.server.state.root).rglob("*") if path.is_file())


def test_symlink_out_of_the_folder_is_refused_and_its_target_never_sent(hub_regular, folder, caplog, capsys):
    outside = folder.parent / "private_notes.md"
    outside.write_text(f"# notes\n{SECRET}\n")
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to(outside)
    hub_regular.server.state.requests.clear()
    assert main(["push", str(folder), "--repo-id", "user/linked", "--force"]) == 2  # --force does not allow it
    message = f"{folder / 'README.md'} is a symbolic link to {outside.resolve()}, outside {folder.resolve()}"
    [line] = capsys.readouterr().err.splitlines()  # codiemb push: error: ...
    assert line.startswith("codiemb push: error: ") and message in line and "Nothing was uploaded" in line
    assert SECRET not in line and SECRET not in caplog.text
    assert hub_regular.server.state.requests == []
    with pytest.raises(UnsafeFileError, match="README.md is a symbolic link to .*outside"):
        push_model_folder(folder, "user/linked", include=["*"])
    assert SECRET.encode() not in stored_bytes(hub_regular)
    # a link to a regular file inside the folder is uploaded (with its target's bytes)
    (folder / "README.md").unlink()
    (folder / "card.md").write_text("# tiny card\n")
    (folder / "README.md").symlink_to("card.md")
    push_model_folder(folder, "user/linked")
    assert hub_regular.server.file_bytes("user/linked", "README.md") == b"# tiny card\n"
    assert SECRET.encode() not in stored_bytes(hub_regular)


def _make_special(folder: Path, kind: str) -> str:
    """Replace a model file of ``folder`` by a special file of ``kind``; return its relative path."""
    name = {"fifo": "config.json", "devzero": "model.safetensors", "socket": "tokenizer_config.json",
            "fifo_link": "tokenizer.json", "dangling": "vocab.txt", "modules_fifo": "modules.json"}[kind]  # fmt: skip
    path = folder / name
    path.unlink(missing_ok=True)
    if kind in ("fifo", "modules_fifo"):
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
    elif kind == "fifo_link":
        os.mkfifo(folder / "pipe")
        path.symlink_to("pipe")
    elif kind == "dangling":
        path.symlink_to(folder / "absent")
    return name


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("devzero", "is a symbolic link to /dev/zero, outside"),
        ("socket", "is a socket, not a regular file"),
        ("fifo_link", "is a symbolic link to a FIFO (named pipe), not a regular file"),
        ("dangling", "is a broken symbolic link"),
        ("modules_fifo", "is a FIFO (named pipe), not a regular file"),
    ],
)
def test_dry_run_on_special_files_ends_promptly_with_one_line(folder, kind, problem):
    name = _make_special(folder, kind)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "hf_codiemb.cli", "push", str(folder), "--repo-id", "user/x", "--dry-run"],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "Refusing to push" in line]
    assert f"{folder / name} {problem}" in line


def test_special_files_never_opened_in_process(folder):
    """The same checks in-process under an alarm: a blocking open of the FIFO or a read of /dev/zero would hang."""
    import signal

    _make_special(folder, "fifo")
    _make_special(folder, "devzero")
    signal.alarm(10)
    try:
        with pytest.raises(UnsafeFileError, match=r"config.json is a FIFO.*model.safetensors is a symbolic link"):
            plan_push(folder)
        found = {finding.path: finding.reason for finding in upload_folder_credentials(folder)}
    finally:
        signal.alarm(0)
    assert "FIFO" in found["config.json"] and "/dev/zero" in found["model.safetensors"]


def test_trainer_upload_check_reports_links_out_of_the_folder(folder):
    outside = folder.parent / "elsewhere.txt"
    outside.write_text("harmless\n")
    (folder / "notes.txt").symlink_to(outside)
    [finding] = upload_folder_credentials(folder)
    assert finding.path == "notes.txt" and "outside" in finding.reason


# The values are assembled at run time so this file holds no literal credential.
CREDENTIALS = [
    ("gitlab.md", "Deploy with glpat-" + "x1Y2z3W4v5U6t7S8r9Q0", "GitLab"),
    ("npm.md", "//registry.npmjs.org/:_authToken=npm_" + "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5", "npm"),
    ("npm_bare.md", "token: npm_" + "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5", "npm"),
    ("stripe.md", "STRIPE=sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "Stripe"),
    (
        "jwt.md",
        "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        + "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
        + "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "JSON Web Token",
    ),
    ("docker.json", '{"auths": {"registry.example.com": {"auth": "' + "dXNlcjpodW50ZXIyaHVudGVy" + '"}}}', "docker"),
    ("password.md", "# Card\n\nThe demo server:\npassword: " + "hunter2hunter2\n", "'password' assignment"),
    ("config_pw.json", '{"hidden_size": 8, "db_password": "' + "correct-horse-battery" + '"}', "'db_pass' assignment"),
    ("aws.md", "key AKIA" + "IOSFODNN7EXAMPL3", "AWS access key"),
    (
        "key.md",
        "-----BEGIN RSA PRIVATE KEY-----\n" + "MIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n",
        "private key",
    ),
    ("slack.md", "xoxb-" + "123456789012-abcdefghijkl", "Slack"),
    ("url.md", "clone https://alice:" + "s3cr3tPassw0rd@git.example.com/repo", "Basic Auth"),
    ("sendgrid.md", "SG." + "aBcDeFgHiJkLmNoPqRsTuV.wXyZaBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgHiJkLm", "SendGrid"),
]


@pytest.mark.parametrize(("name", "content", "rule"), CREDENTIALS, ids=[c[0] for c in CREDENTIALS])
def test_credential_formats_are_refused_naming_file_and_rule(hub_regular, folder, caplog, capsys, name, content, rule):
    target = "README.md" if name.endswith(".md") else "config.json"
    (folder / target).write_text(content)
    hub_regular.server.state.requests.clear()
    assert main(["push", str(folder), "--repo-id", "user/leak"]) == 2
    [error] = capsys.readouterr().err.splitlines()  # codiemb push: error: Refusing to push ...
    assert error.startswith("codiemb push: error: Refusing to push")
    # the finding: "PATH: its content looks like RULE (line N)", up to the remedy
    line = error.split(f"{folder / target}: its content looks like", 1)[1].split(" Remove them", 1)[0]
    assert rule in line and "(line " in line
    secret_part = content.split()[-1].strip('"}')[-16:]  # the tail of the secret never appears
    assert secret_part not in error and secret_part not in caplog.text
    assert hub_regular.server.state.requests == []


def test_real_packaged_model_and_saved_tiny_model_scan_clean(folder):
    for model in (packaged_minilm_path(), folder):
        plan = plan_push(model)
        assert find_credentials(model, plan.files) == [], model


def test_trained_model_folder_scans_clean(tmp_path, saved_model):
    """A folder as training writes it (card with the training hyperparameters, tokenizer, weights) passes clean."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments

    words = ["apple", "river", "engine", "garden", "violin", "planet", "market", "winter"]
    ir = Dataset.from_dict({"query": words, "positives": [[f"{w} {w}"] for w in words],
                            "negatives": [[f"{w} other", f"no {w}"] for w in words]})  # fmt: skip
    sts = Dataset.from_dict({"sentence1": words, "sentence2": words[::-1], "score": [float(i) for i in range(8)]})
    args = CoDiEmbTrainingArguments(
        output_dir=str(tmp_path / "run"), ir_batch_size=4, sts_batch_size=4, num_positives=1, num_negatives=2,
        max_steps=2, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    model = SentenceTransformer(str(saved_model), device="cpu")
    trainer = CoDiEmbTrainer(model=model, args=args, train_dataset={"ir": ir, "sts": sts})
    trainer.train()
    trainer.save_model()
    run = tmp_path / "run"
    assert "Training Hyperparameters" in (run / "README.md").read_text()
    plan = plan_push(run)
    assert {"README.md", "model.safetensors", "tokenizer.json"} <= set(plan.files)
    assert find_credentials(run, plan.files) == []
    assert upload_folder_credentials(run, ("_*", "checkpoint-*")) == []
