"""Round trips through the real huggingface_hub client against the loopback test Hub (tests/hub_server.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from hub_fixtures import DUMMY_TOKEN, minilm_path, perturbed_copy, tiny_hf_model

from hf_codiemb.hub import HubPushError, push_model_folder

SENTENCES = ["A man is playing a guitar.", "The weather is lovely today.", "Fusion of fine-tuned encoders."]


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def upload_folder(tmp_path) -> Path:
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(11 * 1024 * 1024 + 123))  # > 10 MB, multipart LFS
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "sub" / "nested.json").write_text('{"pooling": "mean"}')
    return folder


def test_upload_folder_snapshot_round_trip(hub, upload_folder):
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    url = api.create_repo("user/round-trip", exist_ok=True)
    assert str(url).endswith("/user/round-trip")
    assert str(api.create_repo("user/round-trip", exist_ok=True)).endswith("/user/round-trip")  # 409 + url
    api.upload_folder(repo_id="user/round-trip", folder_path=upload_folder)
    snapshot = Path(snapshot_download("user/round-trip", cache_dir=hub.fresh_cache("snapshot")))
    for name in ("model.safetensors", "config.json", "sub/nested.json"):
        assert (snapshot / name).read_bytes() == (upload_folder / name).read_bytes(), name
    paths = [path for _, path in hub.server.state.requests]
    lfs_used = any(path.startswith("/_lfs/part/") for path in paths)
    assert lfs_used == (hub.server.upload_mode == "auto")
    assert not any("xet" in path for path in paths)


def test_resolve_headers_range_and_errors(hub_lfs, upload_folder):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi()
    api.create_repo("user/errors")
    commit = api.upload_folder(repo_id="user/errors", folder_path=upload_folder)
    base = f"{hub_lfs.url}/user/errors/resolve/main"
    head = httpx.head(f"{base}/config.json")
    assert head.headers["X-Repo-Commit"] == commit.oid
    assert head.headers["ETag"].startswith('"') and int(head.headers["Content-Length"]) == 18
    ranged = httpx.get(f"{base}/model.safetensors", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.content == (upload_folder / "model.safetensors").read_bytes()[10:20]
    lfs_etag = httpx.head(f"{base}/model.safetensors").headers["ETag"].strip('"')
    assert lfs_etag == hashlib.sha256((upload_folder / "model.safetensors").read_bytes()).hexdigest()
    missing = httpx.head(f"{base}/adapter_config.json")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == commit.oid
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/errors", "adapter_config.json", cache_dir=hub_lfs.fresh_cache("e1"))
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("user/errors", "config.json", revision="nope", cache_dir=hub_lfs.fresh_cache("e2"))
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/absent", "config.json", cache_dir=hub_lfs.fresh_cache("e3"))


@pytest.fixture(scope="module")
def fused_minilm(tmp_path_factory) -> Path:
    from hf_codiemb.fusion import delta_fuse

    root = tmp_path_factory.mktemp("fused")
    checkpoints = [perturbed_copy(minilm_path(), root / f"ck{seed}", seed, scale=5e-3) for seed in (1, 2)]
    return delta_fuse(minilm_path(), checkpoints, root / "fused", p=1.0, model_id="user/codiemb-fused",
                      show_progress=False).output_dir


def test_fuse_push_and_load_by_repo_id(hub, fused_minilm):
    from sentence_transformers import SentenceTransformer

    before = _digest(fused_minilm)
    url = push_model_folder(fused_minilm, "user/codiemb-fused")
    assert url == f"{hub.url}/user/codiemb-fused"
    assert _digest(fused_minilm) == before
    remote = SentenceTransformer("user/codiemb-fused", cache_folder=str(hub.fresh_cache("st")), device="cpu")
    local = SentenceTransformer(str(fused_minilm), device="cpu")
    np.testing.assert_array_equal(remote.encode(SENTENCES), local.encode(SENTENCES))
    card = hub.server.file_bytes("user/codiemb-fused", "README.md").decode()
    assert 'SentenceTransformer("user/codiemb-fused")' in card
    assert DUMMY_TOKEN not in card


def test_push_to_branch_and_pull_request(hub, tmp_path):
    from huggingface_hub import HfApi

    upload_folder = tiny_hf_model(tmp_path / "model")  # push refuses what is not a complete model folder
    config = (upload_folder / "config.json").read_bytes()
    url = push_model_folder(upload_folder, "user/branches", revision="fusion-p1", private=True)
    assert url.endswith("/user/branches/tree/fusion-p1")
    api = HfApi()
    assert api.model_info("user/branches").private
    refs = api.list_repo_refs("user/branches")
    assert {branch.name for branch in refs.branches} == {"main", "fusion-p1"}
    assert hub.server.file_bytes("user/branches", "config.json", "fusion-p1") == config
    assert "config.json" not in api.list_repo_files("user/branches")  # main untouched
    pr_url = push_model_folder(upload_folder, "user/branches", create_pr=True, commit_message="Fusion PR")
    assert pr_url.endswith("/user/branches/discussions/1")
    assert hub.server.file_bytes("user/branches", "config.json", "refs/pr/1") == config


def test_fuse_hub_ids_as_inputs(hub_lfs, tmp_path):
    from hub_fixtures import tiny_hf_model
    from safetensors.torch import load_file

    from hf_codiemb.fusion import delta_fuse

    base = tiny_hf_model(tmp_path / "base")
    checkpoints = [perturbed_copy(base, tmp_path / f"ck{s}", seed=s) for s in (1, 2)]
    for name, folder in [("base", base), ("ck1", checkpoints[0]), ("ck2", checkpoints[1])]:
        push_model_folder(folder, f"user/{name}")
    local = delta_fuse(base, checkpoints, tmp_path / "local", show_progress=False).output_dir
    remote = delta_fuse("user/base", ["user/ck1", "user/ck2@main"], tmp_path / "remote", show_progress=False)
    assert remote.base == "user/base" and remote.checkpoints == ["user/ck1", "user/ck2@main"]
    assert "base_model: user/base" in (remote.output_dir / "README.md").read_text()
    local_state, remote_state = load_file(local / "model.safetensors"), load_file(remote.output_dir / "model.safetensors")
    assert local_state.keys() == remote_state.keys()
    for key in local_state:
        assert (local_state[key] == remote_state[key]).all(), key


def test_push_failure_mid_upload_keeps_folder_and_says_what_to_rerun(hub_lfs, fused_minilm, caplog):
    before = _digest(fused_minilm)
    hub_lfs.server.fail_commits(1, status=500)
    with pytest.raises(HubPushError) as error:
        push_model_folder(fused_minilm, "user/failing", private=True)
    message = str(error.value)
    assert "intact" in message
    assert f"codiemb push {fused_minilm} --repo-id user/failing --private" in message
    assert DUMMY_TOKEN not in message and DUMMY_TOKEN not in caplog.text
    assert _digest(fused_minilm) == before
    # Rerunning the suggested command works (weights already uploaded are skipped by LFS).
    assert push_model_folder(fused_minilm, "user/failing", private=True).endswith("/user/failing")


def test_fuse_command_pushes(hub_regular, tmp_path):
    from hub_fixtures import tiny_hf_model

    from hf_codiemb.cli import main

    base = tiny_hf_model(tmp_path / "base")
    checkpoints = [perturbed_copy(base, tmp_path / f"ck{s}", seed=s) for s in (1, 2)]
    assert main(["fuse", "--base", str(base), "--checkpoints", *map(str, checkpoints),
                 "--output-dir", str(tmp_path / "out"), "--push-to-hub", "user/tiny-fused",
                 "--base-model-id", "org/tiny-base"]) == 0
    card = hub_regular.server.file_bytes("user/tiny-fused", "README.md").decode()
    assert "base_model: org/tiny-base" in card
    assert hub_regular.server.file_bytes("user/tiny-fused", "model.safetensors") == \
        (tmp_path / "out/model.safetensors").read_bytes()
