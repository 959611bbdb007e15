"""The demo data shipped with the package (``hf_codiemb/demo_data``)."""

from __future__ import annotations

import importlib.resources
import pathlib

from hf_codiemb.errors import DataFileNotFoundError


def demo_data_path(name: str) -> pathlib.Path:
    """Path of a demo data file shipped in ``hf_codiemb/demo_data`` (e.g. ``"ir_train.jsonl"``).

    The demo data is authored by the project (Apache-2.0); see ``hf_codiemb/demo_data/README.md``.
    """
    folder = importlib.resources.files("hf_codiemb") / "demo_data"
    path = pathlib.Path(str(folder / name))
    if not path.is_file():
        available = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".jsonl"))
        raise DataFileNotFoundError(f"no demo data file {name!r}; available: {available}")
    return path
