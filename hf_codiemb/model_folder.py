"""What a local model folder holds: the names of its files, and the one check of the folder as a whole.

The file names of a sentence-transformers / transformers / peft model folder (:data:`MODULES_FILE`,
:data:`WEIGHT_FILES`, :data:`ADAPTER_WEIGHT_FILES`, :data:`SHARD_INDEX_FILES`, :data:`CONFIG_FILES`,
:data:`TOKENIZER_FILES`, ...) are defined here once, for every module that reads, checks, copies or uploads one.

Every command that reads a model folder (``train``, ``evaluate``, ``mine``, ``fuse`` inputs and base, ``push``,
``merge-lora``) calls :func:`check_model_folder`, directly or through
:func:`hf_codiemb.model_names.resolve_model_path`: a folder that would load wrongly (no tokenizer: transformers then
makes a 5-token vocabulary of special tokens and every word becomes ``[UNK]``) or not at all is refused with one line
naming the folder and what is missing. :func:`tokenizer_fingerprint` tells whether two folders tokenize alike (fusion
refuses inputs that do not).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from hf_codiemb.errors import ModelLoadError

# sentence-transformers' list of a model's modules, each with its folder (``1_Pooling``, ...).
MODULES_FILE = "modules.json"
# A transformers model's configuration (also the name of a Pooling or Dense module's configuration).
CONFIG_FILE = "config.json"
# The settings of a peft LoRA adapter (``base_model_name_or_path``, ``r``, ``target_modules``, ...).
ADAPTER_CONFIG_FILE = "adapter_config.json"
# The weights of a peft LoRA adapter; every file whose name starts with ADAPTER_WEIGHT_PREFIX is adapter weights.
ADAPTER_SAFETENSORS_FILE = "adapter_model.safetensors"
ADAPTER_WEIGHT_FILES = (ADAPTER_SAFETENSORS_FILE, "adapter_model.bin")
ADAPTER_WEIGHT_PREFIX = "adapter_model"
# The index of a sharded checkpoint: its ``weight_map`` names the shard files (see :func:`shard_files`).
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
SHARD_INDEX_FILES = (SAFETENSORS_INDEX_FILE, "pytorch_model.bin.index.json")
# The weights of a transformers model (or of a sentence-transformers module: Dense, ...) in one safetensors file.
SAFETENSORS_WEIGHTS_FILE = "model.safetensors"
# Files that hold the weights of a transformers model folder (plain, sharded, or a peft adapter).
WEIGHT_FILES = (
    SAFETENSORS_WEIGHTS_FILE,
    SAFETENSORS_INDEX_FILE,
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    *ADAPTER_WEIGHT_FILES,
)
# Pickled weights, loaded by transformers only where a folder has no ``*.safetensors`` file (plain, shards, adapter).
PICKLED_WEIGHT_PATTERNS = ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "adapter_model.bin")
# The folders of the exports sentence-transformers loads with ``backend="onnx"`` / ``"openvino"`` (not the weights).
BACKEND_EXPORT_FOLDERS = ("onnx", "openvino")
# Configuration files read by SentenceTransformer / transformers / peft in a model folder and its module folders.
CONFIG_FILES = frozenset({
    MODULES_FILE, "config_sentence_transformers.json", "sentence_bert_config.json", CONFIG_FILE,
    "generation_config.json", "preprocessor_config.json", "processor_config.json", ADAPTER_CONFIG_FILE,
})  # fmt: skip
# Tokenizer files (besides the SentencePiece / tiktoken models of TOKENIZER_VOCAB_FILES' kind).
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
})  # fmt: skip
# The vocabulary files of the slow tokenizers (BERT, GPT-2/RoBERTa, SentencePiece models); a tokenizer.json replaces
# them all.
TOKENIZER_VOCAB_FILES = (
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "sentencepiece.model",
    "tokenizer.model",
)
# Modules that load files from their folder (sentence-transformers' Normalize, for instance, reads nothing).
MODULES_WITH_FILES = ("Transformer", "Pooling", "Dense", "Router", "StaticEmbedding", "LayerNorm", "WordWeights")
# Tokens transformers and tokenizers use as special tokens: a vocabulary made of these only is the fallback
# vocabulary of a folder whose tokenizer files are missing.
SPECIAL_TOKENS = frozenset(
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<unk>", "<pad>", "<mask>", "<eos>", "<bos>"]
)


def check_model_folder(folder: str | Path) -> None:
    """Check, without loading weights, that ``folder`` is a complete, loadable model folder.

    - it holds ``modules.json`` (sentence-transformers) or ``config.json`` (transformers);
    - every module ``modules.json`` lists that reads files has its folder (a Pooling or Dense module its
      ``config.json``);
    - the transformers module (the folder with the model's ``config.json``, or a LoRA ``adapter_config.json``) holds
      weights (:data:`WEIGHT_FILES`) and a tokenizer: ``tokenizer.json`` or a vocabulary file
      (:data:`TOKENIZER_VOCAB_FILES`), readable and not made of special tokens only;
    - every ``*.safetensors`` file of the folder and of its modules has a valid header covering the whole file.

    Raises:
        ModelLoadError: one line naming the folder and what is missing or broken.
    """
    folder = Path(folder)
    where = os.path.abspath(folder)
    modules_file = folder / MODULES_FILE
    if modules_file.is_file():
        modules = _read_modules(modules_file, where)
        module_dirs = _check_modules(folder, modules, where)
        transformer_dirs = [
            path for module, path in module_dirs if _is_transformer_module(module) or is_transformers_folder(path)
        ]
    elif (folder / CONFIG_FILE).is_file():
        module_dirs, transformer_dirs = [], [folder]
    else:
        raise ModelLoadError(
            f"{where} is not a model folder: it has neither modules.json (sentence-transformers) nor config.json "
            "(transformers)"
        )
    for module_dir in dict.fromkeys([*transformer_dirs, *(path for _, path in module_dirs)]):
        _check_weights(module_dir, where, needs_weights=module_dir in transformer_dirs)
    for module_dir in dict.fromkeys(transformer_dirs):
        _check_transformer_module(module_dir, where)
    if folder not in {path for _, path in module_dirs} and folder not in transformer_dirs:
        _check_weights(folder, where, needs_weights=False)


def _read_modules(modules_file: Path, where: str) -> list[dict[str, Any]]:
    """The entries of ``modules.json``, checked to be a list of objects."""
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelLoadError(f"Model folder {where}: modules.json is not valid ({error})") from None
    if not isinstance(modules, list) or not all(isinstance(module, dict) for module in modules):
        raise ModelLoadError(f"Model folder {where}: modules.json is not valid (not a list of modules)")
    if not modules:
        raise ModelLoadError(f"Model folder {where}: modules.json lists no module")
    return modules


def _check_modules(folder: Path, modules: list[dict[str, Any]], where: str) -> list[tuple[dict[str, Any], Path]]:
    """``(module entry, its folder)`` of every module that has a folder; a missing folder of a module that reads
    files (:data:`MODULES_WITH_FILES`), or its missing config, is an error."""
    found = []
    for index, module in enumerate(modules):
        path = folder / str(module.get("path") or "")
        kind = str(module.get("type", "")).rsplit(".", 1)[-1] or "?"
        if not path.is_dir():
            if kind not in MODULES_WITH_FILES:  # e.g. Normalize: nothing to read (older saves make no folder)
                continue
            raise ModelLoadError(
                f"Model folder {where}: module {index} ({kind}) has no folder {module.get('path')!r} "
                "(modules.json lists it)"
            )
        if kind in ("Pooling", "Dense", "LayerNorm") and not (path / CONFIG_FILE).is_file():
            raise ModelLoadError(f"Model folder {where}: module {index} ({kind}) has no config.json in {path}")
        found.append((module, path))
    return found


def _is_transformer_module(module: dict[str, Any]) -> bool:
    return str(module.get("type", "")).rsplit(".", 1)[-1] == "Transformer"


def is_transformers_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a transformers model config (not the config.json of a Pooling or Dense module)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


def transformers_config_dir(folder: str | Path) -> Path | None:
    """The folder of a model folder that holds its transformers model (a ``config.json`` with a ``model_type``): one
    of the module folders ``modules.json`` lists, else ``folder`` itself; ``None`` when there is none."""
    folder = Path(folder)
    candidates = [folder]
    modules_file = folder / MODULES_FILE
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
            candidates = [folder / module.get("path", "") for module in modules] + candidates
        except (ValueError, TypeError, AttributeError):
            pass
    return next((candidate for candidate in candidates if is_transformers_folder(candidate)), None)


def shard_files(index_file: str | Path) -> set[str]:
    """The shard files (names relative to the index's folder) that a sharded checkpoint's index names.

    Raises:
        OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError: an unreadable index; callers
            that check a folder turn these into their own message.
    """
    return {str(shard) for shard in json.loads(Path(index_file).read_text(encoding="utf-8"))["weight_map"].values()}


def _check_weights(module_dir: Path, where: str, needs_weights: bool) -> None:
    """Weights present (when ``needs_weights``) and every safetensors file readable."""
    if needs_weights and not any((module_dir / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(
            f"Model folder {os.path.abspath(module_dir)} has a config.json but no weights "
            f"(none of {', '.join(WEIGHT_FILES)}); an interrupted save?"
        )
    for index_file in sorted(module_dir.glob("*.index.json")):
        try:
            shards = shard_files(index_file)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelLoadError(
                f"Model folder {where}: {os.path.abspath(index_file)} is unreadable ({error})"
            ) from None
        missing = sorted(str(shard) for shard in shards if not (module_dir / str(shard)).is_file())
        if missing:
            raise ModelLoadError(
                f"Model folder {where}: {os.path.abspath(index_file)} lists missing weight shard(s) {missing}"
            )
    pickled = [p for p in module_dir.glob("*.bin") if p.name.startswith(("pytorch_model", ADAPTER_WEIGHT_PREFIX))]
    for weights in sorted(pickled):
        if not zipfile.is_zipfile(weights):
            raise ModelLoadError(
                f"Model folder {where}: weights file {os.path.abspath(weights)} is truncated or not a torch.save file"
            )
    for weights in sorted(module_dir.glob("*.safetensors")):
        check_safetensors_file(weights, where)


def check_safetensors_file(weights: str | Path, where: str) -> None:
    """Check that the header of the safetensors file ``weights`` is valid and covers the whole file.

    Raises:
        ModelLoadError: naming ``where`` (the user's folder) and the file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(
            f"Model folder {where}: weights file {os.path.abspath(weights)} is truncated or corrupt ({error})"
        ) from None


def _check_transformer_module(module_dir: Path, where: str) -> None:
    """The transformers module has a config (model or LoRA adapter) and a real tokenizer."""
    if not (module_dir / CONFIG_FILE).is_file() and not (module_dir / ADAPTER_CONFIG_FILE).is_file():
        raise ModelLoadError(f"Model folder {where}: the transformer module {module_dir} has no config.json")
    vocabulary = tokenizer_vocabulary(module_dir)
    if vocabulary is None:
        raise ModelLoadError(
            f"Model folder {where}: no tokenizer in {os.path.abspath(module_dir)} (neither tokenizer.json nor "
            f"{' / '.join(TOKENIZER_VOCAB_FILES)}); an incomplete copy? Every text would be tokenized as [UNK]"
        )
    if vocabulary and set(vocabulary) <= SPECIAL_TOKENS:
        raise ModelLoadError(
            f"Model folder {where}: the tokenizer in {os.path.abspath(module_dir)} has only {len(vocabulary)} "
            f"special tokens ({', '.join(sorted(vocabulary))}), the fallback vocabulary of a folder without its "
            "tokenizer files: every word would be [UNK]"
        )


def tokenizer_vocabulary(module_dir: str | Path) -> list[str] | None:
    """The tokens of the tokenizer in ``module_dir`` (``[]`` for a SentencePiece model, which is not parsed), or
    ``None`` when it has no tokenizer file.

    Raises:
        ModelLoadError: a tokenizer file that cannot be read.
    """
    module_dir = Path(module_dir)
    tokenizer_file = module_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        model = _read_json(tokenizer_file).get("model") or {}
        vocab = model.get("vocab") if isinstance(model, dict) else None
        if isinstance(vocab, dict):  # token -> id
            return sorted(vocab, key=lambda token: vocab[token] if isinstance(vocab[token], int) else -1)
        if isinstance(vocab, list):  # Unigram: [[token, score], ...]
            return [entry[0] if isinstance(entry, list) and entry else str(entry) for entry in vocab]
        return []
    if (module_dir / "vocab.txt").is_file():
        try:
            return (module_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ModelLoadError(f"Tokenizer file {module_dir / 'vocab.txt'} cannot be read ({error})") from None
    if (module_dir / "vocab.json").is_file():
        vocab = _read_json(module_dir / "vocab.json")
        return sorted(vocab, key=lambda token: vocab[token] if isinstance(vocab[token], int) else -1)
    if any((module_dir / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        return []
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelLoadError(f"Tokenizer file {os.path.abspath(path)} cannot be read ({error})") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"Tokenizer file {os.path.abspath(path)} is not a JSON object")
    return value


def transformer_module_dir(folder: str | Path) -> Path:
    """The folder of ``folder``'s transformers module (where its tokenizer is): the first module of
    ``modules.json`` that is a Transformer, else ``folder`` itself."""
    folder = Path(folder)
    try:
        modules = json.loads((folder / MODULES_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return folder
    if isinstance(modules, list):
        for module in modules:
            if isinstance(module, dict) and _is_transformer_module(module):
                return folder / str(module.get("path") or "")
    return folder


def tokenizer_fingerprint(folder: str | Path) -> str | None:
    """A hash of the vocabulary of ``folder``'s tokenizer (its tokens in id order, the same whether read from
    ``tokenizer.json`` or ``vocab.txt`` / ``vocab.json``, plus BPE merges), or of its SentencePiece model file;
    ``None`` when the folder has no tokenizer file. Two folders with different fingerprints map text to
    different token ids."""
    module_dir = transformer_module_dir(folder)
    vocabulary = tokenizer_vocabulary(module_dir)
    if vocabulary is None:
        return None
    digest = hashlib.sha256()
    if vocabulary:
        digest.update(json.dumps(vocabulary, ensure_ascii=False).encode("utf-8"))
        tokenizer_file = module_dir / "tokenizer.json"
        merges = (_read_json(tokenizer_file).get("model") or {}).get("merges") if tokenizer_file.is_file() else None
        if not merges and (module_dir / "merges.txt").is_file():
            lines = (module_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = [line for line in lines if line and not line.startswith("#version")]
        if merges:  # "a b" strings (older files) or [a, b] pairs
            pairs = [merge.split(" ") if isinstance(merge, str) else list(merge) for merge in merges]
            digest.update(json.dumps(pairs, ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()
    for name in TOKENIZER_VOCAB_FILES:
        if (module_dir / name).is_file():
            digest.update((module_dir / name).read_bytes())
    return digest.hexdigest()
