"""Where a fusion writes: refusing an output folder that is (or holds) an input, the hidden staging folder the model
is built in, cleaning the staging folders that killed runs left behind, and the final rename into place."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from hf_codiemb.fusion.errors import FusionError, FusionWriteError

logger = logging.getLogger(__name__)

OWNER_FILE = ".codiemb-fusion-owner.json"
# A staging folder without an owner file is only taken for a leftover once it is this old (a running fusion writes
# its owner file right after creating the folder).
_UNOWNED_GRACE_SECONDS = 60.0


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


def _leftovers(output_dir: Path, kind: str) -> list[Path]:
    return sorted(p for p in output_dir.parent.glob(f".{output_dir.name}.{kind}-*") if p.is_dir() or p.is_symlink())


def _owner_state(staging: Path) -> tuple[str, dict[str, object] | None]:
    """``("stale" | "running" | "unknown", owner)`` of a staging folder."""
    try:
        owner = json.loads((staging / OWNER_FILE).read_text())
    except (OSError, ValueError):
        age = time.time() - staging.lstat().st_mtime
        return ("stale" if age > _UNOWNED_GRACE_SECONDS else "unknown"), None
    if owner.get("host") != socket.gethostname():
        return "unknown", owner
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return "stale", owner
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "stale", owner
    except PermissionError:  # a live process of another user
        return "running", owner
    except OSError:  # pragma: no cover - platforms without signal 0
        return "unknown", owner
    return "running", owner


def clean_leftovers(output_dir: Path) -> list[Path]:
    """Remove the staging folders (``.NAME.partial-*``) that killed fusions into ``output_dir`` left behind.

    A staging folder whose owner process (recorded in it) is gone is removed; one whose owner still runs, or that
    was written on another host, is left alone and named in a warning. A ``.NAME.old-*`` folder (the previous
    output, moved aside by a fusion killed while renaming) is named in a warning, never deleted.

    Returns:
        The folders removed.
    """
    removed = []
    for staging in _leftovers(output_dir, "partial"):
        state, owner = _owner_state(staging)
        if state == "stale":
            shutil.rmtree(staging, ignore_errors=True)
            if staging.exists():
                logger.warning("Could not remove %s, left by an interrupted fusion; remove it by hand", staging)
                continue
            pid = f" (process {owner['pid']})" if owner and "pid" in owner else ""
            logger.warning("Removed %s, the unfinished output of an interrupted fusion%s", staging, pid)
            removed.append(staging)
        elif state == "running":
            logger.warning("%s is being written by process %s (another fusion into %s?); left alone",
                           staging, owner["pid"] if owner else "?", output_dir)
        else:
            logger.warning("%s looks like the unfinished output of a fusion (%s); it was left alone: remove it by "
                           "hand if no fusion is running there", staging,
                           f"host {owner.get('host')}, process {owner.get('pid')}" if owner else "recent, no owner")
    for previous in _leftovers(output_dir, "old"):
        logger.warning("%s holds an earlier content of %s, moved aside by a fusion that was interrupted; remove "
                       "it by hand once it is not needed", previous, output_dir)
    return removed


def create_staging(output_dir: Path) -> Path:
    """Create the hidden sibling folder the model is built in, with an owner file (this process) so that a later
    run can tell a killed fusion's leftover from a running one."""
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = output_dir.parent / f".{output_dir.name}.partial-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        (staging / OWNER_FILE).write_text(json.dumps(owner))
    except OSError as exc:
        raise FusionWriteError(f"Cannot create the output folder {output_dir}: {exc}") from exc
    return staging


def move_into_place(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Rename the finished staging folder to ``output_dir`` (replacing an empty one, or any with ``overwrite``)."""
    (staging / OWNER_FILE).unlink(missing_ok=True)
    previous = None
    if output_dir.exists() or output_dir.is_symlink():
        if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
            raise FusionError(f"The output folder {output_dir} became non-empty during fusion")
        previous = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output_dir, previous)
    try:
        os.rename(staging, output_dir)
    except BaseException:
        if previous is not None:
            os.rename(previous, output_dir)
        raise
    if previous is not None:
        if previous.is_symlink():
            previous.unlink()
        else:
            shutil.rmtree(previous, ignore_errors=True)
