"""Where a fusion writes: refusing an output path that cannot be written or that is (or holds) an input. The model is
then built and renamed into place by :func:`hf_codiemb.atomic.atomic_folder`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hf_codiemb.fusion.errors import FusionError, FusionWriteError


def check_output(output_dir: Path, overwrite: bool) -> None:
    """Refuse an output path that is a file, a non-empty folder (without ``overwrite``) or not creatable."""
    if output_dir.exists():
        if not output_dir.is_dir():
            raise FusionWriteError(f"The output path {output_dir} exists and is not a folder")
        if any(output_dir.iterdir()) and not overwrite:
            raise FusionError(f"The output folder {output_dir} is not empty (pass overwrite=True / --overwrite)")
    ancestor = output_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise FusionWriteError(f"Cannot create the output folder {output_dir}: {ancestor} is not a writable folder")


def check_not_an_input(output_dir: Path, inputs: Iterable[tuple[str, str | Path]]) -> None:
    """Refuse an output folder that is one of the inputs, or contains one, whatever path leads there (symlinks,
    relative paths): writing the fused model there (``overwrite``) would replace that input.

    Args:
        output_dir: the requested output folder.
        inputs: ``(label, path)`` of every input folder (only existing local paths are compared).

    Raises:
        FusionError: naming the input and both paths.
    """
    target = output_dir.expanduser().resolve()
    for label, path in inputs:
        candidate = Path(path).expanduser()
        if not candidate.exists():
            continue
        resolved = candidate.resolve()
        if resolved == target:
            raise FusionError(
                f"The output folder {output_dir} is the {label} ({resolved}): the fused model would replace that "
                "input. Choose another --output-dir"
            )
        if target in resolved.parents:
            raise FusionError(
                f"The output folder {output_dir} contains the {label} ({resolved}): the fused model would replace "
                "that input. Choose another --output-dir"
            )
