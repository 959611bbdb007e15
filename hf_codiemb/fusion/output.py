"""Where a fusion writes: refusing an output path that cannot be written or that is (or holds) an input. The model is
then built and renamed into place by :func:`hf_codiemb.atomic.atomic_folder`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hf_codiemb.fusion.errors import FusionError, FusionWriteError
from hf_codiemb.output_paths import overlapping_input


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
    """Refuse an output folder that is one of the inputs, lies inside one (writing there would add a folder to
    that input, read by every later fusion of it) or contains one, whatever path leads there (symlinks, relative
    paths), using :func:`hf_codiemb.output_paths.overlapping_input`.

    Args:
        output_dir: the requested output folder.
        inputs: ``(label, path)`` of every input folder (only existing local paths are compared).

    Raises:
        FusionError: naming the input and both paths.
    """
    problem = overlapping_input(output_dir, inputs)
    if problem is not None:
        raise FusionError(
            f"The output folder {output_dir} {problem}: writing the fused model there would change that input. "
            "Choose another --output-dir outside every input"
        )
