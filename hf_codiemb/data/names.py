"""Dataset names: what logs, losses (``<name>/loss``), evaluation metrics and model cards call a dataset.

A dataset is named after what it is: a file by its stem (``sts_dev.jsonl`` -> ``sts_dev``), with its folder in
front when the stem only says which split it is (STS-B's ``stsb-en/train.tsv`` -> ``stsb-en_train``); a BEIR split
by its folder and split (``scifact_train``). A recipe entry may name its dataset itself: ``NAME=PATH`` (``NAME``:
letters, digits, ``_``, ``-``, ``.``), e.g. ``stsb=../shared/data/stsb-en/train.tsv``.
"""

from __future__ import annotations

import pathlib
import re

# Stems that name a split, not a dataset: such a file is named after its folder too.
GENERIC_STEMS = frozenset({"train", "training", "dev", "test", "testing", "valid", "validation", "val", "eval",
                           "evaluation", "data"})  # fmt: skip
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DATA_SUFFIXES = {".gz", ".jsonl", ".json", ".ndjson", ".tsv", ".csv", ".txt", ".data"}


def split_named_entry(entry: str) -> tuple[str | None, str]:
    """``"NAME=PATH"`` -> ``("NAME", "PATH")``; an entry without a valid ``NAME=`` prefix -> ``(None, entry)``."""
    name, separator, rest = entry.partition("=")
    if separator and rest and _NAME.fullmatch(name):
        return name, rest
    return None, entry


def descriptive_name(path: str | pathlib.Path) -> str:
    """The name of a data file: its stem (data suffixes removed), after its folder when the stem is a split name."""
    path = pathlib.Path(path)
    stem = path.name
    while pathlib.Path(stem).suffix.lower() in _DATA_SUFFIXES:
        stem = pathlib.Path(stem).stem
    if stem.lower() in GENERIC_STEMS and path.parent.name not in ("", ".", ".."):
        return f"{path.parent.name}_{stem}"
    return stem


def unique_name(name: str, taken: set[str], folder: str | None = None) -> str:
    """``name``, or on a clash ``<folder>_<name>`` and then ``<name>_2``, ``<name>_3``...; added to ``taken``."""
    if name in taken and folder and not name.startswith(f"{folder}_"):
        name = f"{folder}_{name}"
    base, index = name, 2
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    taken.add(name)
    return name
