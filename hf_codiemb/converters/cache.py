"""Where prepared encoders are cached, and how the library finds one: the only converters module the library imports.

Cache: ``~/.cache/hf_codiemb/models/<name>`` by default, overridable with the ``HF_CODIEMB_MODELS`` environment
variable or a ``cache_dir`` argument (``--cache-dir`` on the command line). Each folder holds a ``prepared.json``
(source packages, conversion settings, verification numbers) that marks it as complete; folders are written
atomically by :func:`hf_codiemb.converters.registry.prepare_model`, so an interrupted run never leaves a
half-written model behind.

Example::

    from hf_codiemb.converters.cache import model_path

    path = model_path("paraphrase-minilm-l3-v2")  # the cached folder, or an error naming the command to run
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_CACHE_DIR",
    "MARKER_FILE",
    "PREPARED_NAMES",
    "PREPARED_SCHEME",
    "ModelNotPreparedError",
    "cache_root",
    "check_name",
    "model_path",
    "write_marker",
]

#: Environment variable that overrides the default cache folder.
CACHE_ENV_VAR = "HF_CODIEMB_MODELS"
#: Default cache folder (outside any git checkout).
DEFAULT_CACHE_DIR = Path("~/.cache/hf_codiemb/models")
#: ``model_name_or_path`` prefix that names a prepared model, e.g. ``prepared:paraphrase-minilm-l3-v2``.
PREPARED_SCHEME = "prepared:"
#: File that marks a prepared folder as complete and records its provenance.
MARKER_FILE = "prepared.json"
#: The names ``codiemb prepare-models`` can build (how each is built: :data:`hf_codiemb.converters.registry.
#: PREPARED_MODELS`, which a test keeps equal to this tuple).
PREPARED_NAMES: tuple[str, ...] = ("all-minilm-l6-v2", "paraphrase-minilm-l3-v2", "multilingual-e5-small-q4")


class ModelNotPreparedError(FileNotFoundError):
    """A prepared model was requested but is not in the cache yet."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds prepared models.

    Args:
        cache_dir: explicit folder; when ``None``, ``$HF_CODIEMB_MODELS`` or ``~/.cache/hf_codiemb/models``.
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR
    return Path(cache_dir).expanduser().resolve()


def check_name(name: str) -> None:
    """Raise ``ValueError`` (listing the known names) when ``name`` is not a prepared model's name."""
    if name not in PREPARED_NAMES:
        known = ", ".join(sorted(PREPARED_NAMES))
        raise ValueError(f"Unknown prepared model {name!r}; known names: {known}.")


def model_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cached sentence-transformers folder of a prepared model.

    Args:
        name: one of :data:`PREPARED_NAMES`.
        cache_dir: cache folder (default: see :func:`cache_root`).

    Raises:
        ValueError: the name is unknown.
        ModelNotPreparedError: the model has not been prepared in this cache; the message gives the command.
    """
    check_name(name)
    root = cache_root(cache_dir)
    path = root / name
    if not (path / MARKER_FILE).is_file():
        cache_flag = "" if cache_dir is None else f" --cache-dir {root}"
        raise ModelNotPreparedError(
            f"Prepared model {name!r} not found in {root}. Run `codiemb prepare-models {name}{cache_flag}` first "
            f"(set ${CACHE_ENV_VAR} or pass --cache-dir to use another cache folder)."
        )
    return path


def write_marker(folder: Path, info: dict[str, Any]) -> None:
    """Write the ``prepared.json`` that marks ``folder`` as a complete prepared model and records its provenance."""
    (folder / MARKER_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
