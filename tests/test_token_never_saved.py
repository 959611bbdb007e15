"""The Hub token given to ``codiemb train`` never reaches the disk (training_args.bin, checkpoints, card, logs)
nor the Hub, while pushing during training still authenticates with it (issue 10, item 1)."""

from __future__ import annotations

import copy
import logging
import pickle
import secrets
import string
from pathlib import Path

import torch
from tiny_models import make_tiny_model

from hf_codiemb.cli import main
from hf_codiemb.training_args import CoDiEmbTrainingArguments


def random_token() -> str:
    """A token-shaped random string (``hf_`` + 34 letters/digits), different in every test."""
    return "hf_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(34))


def files_holding(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``secret`` (also as UTF-16, as pickles may store it)."""
    needles = [secret.encode(), secret.encode("utf-16-le")]
    return [
        str(path) for path in sorted(root.rglob("*"))
        if path.is_file() and any(needle in path.read_bytes() for needle in needles)
    ]


def write_recipe(tmp_path: Path, output_dir: Path, extra: str = "") -> Path:
    make_tiny_model(tmp_path / "tiny")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tmp_path / 'tiny' / 'model'}\n"
        "ir_train: [demo:ir_train.jsonl]\nsts_train: [demo:sts_train.jsonl]\n"
        "ir_batch_size: 8\nsts_batch_size: 16\nmax_steps: 4\n"
        "save_strategy: steps\nsave_steps: 2\nlogging_steps: 1\n"
        f"output_dir: {output_dir}\nuse_cpu: true\n{extra}"
    )
    return recipe


def test_pickled_arguments_drop_the_token_but_copies_keep_it(tmp_path):
    token = random_token()
    args = CoDiEmbTrainingArguments(output_dir=str(tmp_path), hub_token=token, report_to="none")
    assert token.encode() not in pickle.dumps(args)
    restored = pickle.loads(pickle.dumps(args))
    assert restored.hub_token is None
    assert restored.ir_batch_size == args.ir_batch_size and restored.output_dir == args.output_dir
    assert args.hub_token == token  # the live object keeps it (pushes during training authenticate with it)
    assert copy.deepcopy(args).hub_token == token
    assert copy.copy(args).hub_token == token
    torch.save(args, tmp_path / "training_args.bin")
    assert files_holding(tmp_path, token) == []
    assert torch.load(tmp_path / "training_args.bin", weights_only=False).hub_token is None


def test_train_with_hub_token_writes_it_nowhere(tmp_path, caplog):
    token = random_token()
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path, out, extra="report_to: tensorboard\n")
    with caplog.at_level(logging.DEBUG):
        assert main(["train", "--config", str(recipe), "--hub_token", token]) == 0
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    saved_args = [out / "training_args.bin"] + [out / name / "training_args.bin" for name in checkpoints]
    for path in saved_args:
        loaded = torch.load(path, weights_only=False)
        assert isinstance(loaded, CoDiEmbTrainingArguments), path
        assert loaded.hub_token is None, path
        assert loaded.max_steps == 4 and loaded.save_steps == 2, path  # the rest of the arguments is intact
    assert list(out.glob("runs/*/events.out.tfevents.*")), "TensorBoard wrote no event file"
    assert files_holding(out, token) == []  # weights, card, trainer_state, TensorBoard, rng/optimizer states
    assert token not in caplog.text


def test_push_during_training_authenticates_in_memory_and_uploads_no_token(hub_regular, tmp_path, monkeypatch):
    import transformers.utils.hub
    from hub_server import HubRequestHandler

    # transformers keeps one HfApi (with the endpoint of its first use) for the Trainer's pushes: start afresh.
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    authorizations: list[str | None] = []
    dispatch = HubRequestHandler._dispatch

    def recording_dispatch(handler: HubRequestHandler, method: str) -> None:
        authorizations.append(handler.headers.get("Authorization"))
        dispatch(handler, method)

    monkeypatch.setattr(HubRequestHandler, "_dispatch", recording_dispatch)
    token = random_token()
    out = tmp_path / "run"
    recipe = write_recipe(
        tmp_path, out, extra="report_to: none\npush_to_hub: true\nhub_model_id: user/tiny-run\nhub_strategy: every_save\n"
    )
    assert main(["train", "--config", str(recipe), "--hub_token", token]) == 0
    assert f"Bearer {token}" in authorizations  # the in-memory token was used for the pushes
    repo = hub_regular.server.state.repos["user/tiny-run"]
    pushed = hub_regular.server.state.resolve(repo, "main").files
    assert "training_args.bin" in pushed and "model.safetensors" in pushed
    leaked = [path for path in pushed if token.encode() in hub_regular.server.file_bytes("user/tiny-run", path)]
    assert leaked == []
    assert files_holding(hub_regular.server.state.root, token) == []
    assert files_holding(out, token) == []


def test_other_credential_fields_are_dropped_too(tmp_path):
    args = CoDiEmbTrainingArguments(output_dir=str(tmp_path), report_to="none")
    args.push_to_hub_token = "hf_" + "x" * 34  # the field name older transformers versions used
    assert pickle.loads(pickle.dumps(args)).push_to_hub_token is None



def test_trainer_push_refuses_a_credential_file_in_output_dir(hub_regular, tmp_path, monkeypatch, caplog):
    """transformers' own pushes (push_to_hub: true) upload every file of output_dir, hidden ones included: a stray
    `.env` holding a token is found first, the pushes during training are skipped (training goes on), the final push
    is refused with a one-line error naming the file, the secret is never printed, and nothing reaches the Hub."""
    import transformers.utils.hub

    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    secret = random_token()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".env").write_text(f"HF_TOKEN={secret}\n")
    recipe = write_recipe(
        tmp_path, out, extra="report_to: none\npush_to_hub: true\nhub_model_id: user/leaky-run\nhub_strategy: every_save\n"
    )
    with caplog.at_level(logging.INFO):
        status = main(["train", "--config", str(recipe), "--hub_token", random_token()])
    assert status == 2
    assert "Not pushing step 2 to the Hub" in caplog.text and "Not pushing step 4 to the Hub" in caplog.text
    assert ".env" in caplog.text and secret not in caplog.text
    assert "--force" not in caplog.text and "codiemb push" in caplog.text  # training has no --force to offer
    assert (out / "modules.json").is_file() and (out / "model.safetensors").is_file()  # the trained model is kept
    repo = hub_regular.server.state.repos.get("user/leaky-run")
    pushed = hub_regular.server.state.resolve(repo, "main").files if repo is not None else {}
    assert ".env" not in pushed and "model.safetensors" not in pushed
    assert files_holding(hub_regular.server.state.root, secret) == []


def test_upload_folder_credentials_follows_upload_folder_filter(tmp_path):
    """The check sees what `HfApi.upload_folder(ignore_patterns=...)` would send: hidden files yes, the ignored
    patterns and `.git` no (a file per case, each holding a token)."""
    from hf_codiemb.hub import TRAINER_UPLOAD_IGNORE_PATTERNS, upload_folder_credentials

    for relative in [".env", "notes/key.txt", "_private.txt", "checkpoint-3/secret.txt", ".git/config", "ok.txt"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("nothing here\n" if relative == "ok.txt" else f"token = {random_token()}\n")
    found = sorted(f.path for f in upload_folder_credentials(tmp_path, TRAINER_UPLOAD_IGNORE_PATTERNS))
    assert found == [".env", "notes/key.txt"]
    assert sorted(f.path for f in upload_folder_credentials(tmp_path)) == [
        ".env", "_private.txt", "checkpoint-3/secret.txt", "notes/key.txt"]


def test_push_during_training_checks_the_checkpoint_it_copies_from(tmp_path, monkeypatch, caplog):
    """sentence-transformers copies a checkpoint's files into output_dir before transformers uploads it (every_save):
    a credential in the checkpoint folder skips that push; a clean one goes through to the real upload code."""
    from types import SimpleNamespace

    from sentence_transformers import SentenceTransformerTrainer

    from hf_codiemb.trainer import CoDiEmbTrainer

    uploads: list[str] = []
    monkeypatch.setattr(SentenceTransformerTrainer, "_push_from_checkpoint", lambda self, folder: uploads.append(folder))
    out, checkpoint = tmp_path / "run", tmp_path / "run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"")
    trainer = object.__new__(CoDiEmbTrainer)  # the push decision only needs these attributes
    trainer.args = SimpleNamespace(output_dir=str(out), hub_strategy="every_save")
    trainer.state = SimpleNamespace(global_step=3)
    trainer.is_world_process_zero = lambda: True
    trainer._push_from_checkpoint(str(checkpoint))
    assert uploads == [str(checkpoint)]
    secret = random_token()
    (checkpoint / "notes.txt").write_text(f"token: {secret}\n")
    with caplog.at_level(logging.ERROR):
        trainer._push_from_checkpoint(str(checkpoint))
    assert uploads == [str(checkpoint)]  # not pushed again
    assert "Not pushing step 3" in caplog.text and "checkpoint-3/notes.txt" in caplog.text and secret not in caplog.text
