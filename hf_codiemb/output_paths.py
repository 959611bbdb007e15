"""The one check that an output path and an input path do not overlap (used by fuse, mine and merge-lora).

An output that is an input, lies inside an input folder, or contains an input would replace or change what the
command reads (and every later command that reads it), so it is refused before anything is read or written.
Paths are compared after resolving symlinks and relative parts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def path_overlap(output: str | Path, input_path: str | Path) -> str | None:
    """How ``output`` overlaps ``input_path``: ``"is"``, ``"is inside"`` or ``"contains"``, or ``None``.

    A path that does not exist is compared as written (made absolute; its existing part resolved).
    """
    target = Path(output).expanduser().resolve()
    source = Path(input_path).expanduser().resolve()
    if target == source:
        return "is"
    if source in target.parents:
        return "is inside"
    if target in source.parents:
        return "contains"
    return None


def overlapping_input(output: str | Path, inputs: Iterable[tuple[str, str | Path | None]]) -> str | None:
    """A one-line description (``"is inside the base (/abs/path)"``) of the first input ``output`` overlaps, or
    ``None``. ``inputs`` are ``(label, path)``; inputs that are not existing local paths (Hub ids) are skipped."""
    for label, path in inputs:
        if path is None or not Path(path).expanduser().exists():
            continue
        how = path_overlap(output, path)
        if how is not None:
            return f"{how} the {label} ({Path(path).expanduser().resolve()})"
    return None
