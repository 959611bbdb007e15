"""Atomic writes: a folder (or file) appears complete at its final path, or not at all.

A folder is built in a hidden staging sibling (``.NAME.partial-XXXXXXXX``) that records its owner process, then
renamed into place (an existing folder is moved aside to ``.NAME.old-XXXXXXXX`` first and removed after). The next
write into the same place removes the staging folders of killed writers (their owner process is gone) and leaves
alone those of a writer that still runs. Used by ``codiemb fuse``, ``codiemb merge-lora`` and
``codiemb prepare-models``. A file is written the same way by :func:`atomic_file` (``codiemb mine``).

Example::

    from hf_codiemb.atomic import atomic_folder

    with atomic_folder("outputs/fused", overwrite=True) as staging:
        model.save(str(staging))  # an exception here leaves nothing at outputs/fused
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from hf_codiemb.errors import OutputExistsError, OutputWriteError

logger = logging.getLogger(__name__)

OWNER_FILE = ".codiemb-write-owner.json"
# A staging folder without an owner file is only taken for a leftover once it is this old (a running writer writes
# its owner file right after creating the folder).
_UNOWNED_GRACE_SECONDS = 60.0


@contextmanager
def atomic_folder(output_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a hidden staging sibling and rename it to ``output_dir`` when the block ends without error.

    Leftover staging folders of killed writers into ``output_dir`` are removed first (:func:`clean_leftovers`). On
    an exception the staging folder is removed and ``output_dir`` is untouched.

    Args:
        output_dir: the folder to create.
        overwrite: replace an existing non-empty ``output_dir`` (an empty one is always replaced).

    Yields:
        The staging folder to write into.

    Raises:
        OutputWriteError: the folder cannot be created.
        OutputExistsError: ``output_dir`` is not empty (checked at the end, so a folder filled meanwhile is kept).
    """
    output_dir = Path(output_dir)
    clean_leftovers(output_dir)
    staging = create_staging(output_dir)
    try:
        yield staging
        move_into_place(staging, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path, encoding: str = "utf-8") -> Iterator[TextIO]:
    """Write a text file through a hidden temporary sibling (``.NAME.partial-XXXXXXXX``), flushed to disk and
    renamed over ``path`` with ``os.replace`` when the block ends without error.

    A writer that fails (a full disk, an exception in the block) or is killed leaves the previous ``path`` intact
    (or no file); the temporary file of a failed writer is removed, that of a killed one stays hidden.

    Raises:
        OutputWriteError: the file cannot be written (the message names it and the reason); ``path`` is unchanged.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OutputWriteError):
            raise
        raise OutputWriteError(f"Cannot write {path}: {exc}; the previous file (if any) is unchanged") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling file and ``os.replace`` (:func:`atomic_file`): a
    killed or failing writer leaves the previous content (or nothing), never a half-written file."""
    with atomic_file(path) as handle:
        handle.write(text)


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


def clean_leftovers(output_dir: str | Path) -> list[Path]:
    """Remove the staging folders (``.NAME.partial-*``) that killed writers into ``output_dir`` left behind.

    A staging folder whose owner process (recorded in it) is gone is removed; one whose owner still runs, or that
    was written on another host, is left alone and named in a warning. A ``.NAME.old-*`` folder (the previous
    output, moved aside by a writer killed while renaming) is named in a warning, never deleted.

    Returns:
        The folders removed.
    """
    output_dir = Path(output_dir)
    removed = []
    for staging in _leftovers(output_dir, "partial"):
        state, owner = _owner_state(staging)
        if state == "stale":
            shutil.rmtree(staging, ignore_errors=True)
            if staging.exists():
                logger.warning("Could not remove %s, left by an interrupted write; remove it by hand", staging)
                continue
            pid = f" (process {owner['pid']})" if owner and "pid" in owner else ""
            logger.warning("Removed %s, the unfinished output of an interrupted write%s", staging, pid)
            removed.append(staging)
        elif state == "running":
            logger.warning("%s is being written by process %s (another writer into %s?); left alone",
                           staging, owner["pid"] if owner else "?", output_dir)
        else:
            logger.warning("%s looks like the unfinished output of an interrupted write (%s); it was left alone: "
                           "remove it by hand if nothing is writing there", staging,
                           f"host {owner.get('host')}, process {owner.get('pid')}" if owner else "recent, no owner")
    for previous in _leftovers(output_dir, "old"):
        logger.warning("%s holds an earlier content of %s, moved aside by a write that was interrupted; remove "
                       "it by hand once it is not needed", previous, output_dir)
    return removed


def create_staging(output_dir: str | Path) -> Path:
    """Create the hidden sibling folder the output is built in, with an owner file (this process) so that a later
    write can tell a killed writer's leftover from a running one.

    Raises:
        OutputWriteError: the folder cannot be created.
    """
    output_dir = Path(output_dir)
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = output_dir.parent / f".{output_dir.name}.partial-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        (staging / OWNER_FILE).write_text(json.dumps(owner))
    except OSError as exc:
        raise OutputWriteError(f"Cannot create the output folder {output_dir}: {exc}") from exc
    return staging


def move_into_place(staging: Path, output_dir: str | Path, overwrite: bool) -> None:
    """Rename the finished staging folder to ``output_dir`` (replacing an empty one, or any with ``overwrite``).

    Raises:
        OutputExistsError: ``output_dir`` is a non-empty folder and ``overwrite`` is off.
    """
    output_dir = Path(output_dir)
    (staging / OWNER_FILE).unlink(missing_ok=True)
    previous = None
    if output_dir.exists() or output_dir.is_symlink():
        if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
            raise OutputExistsError(f"The output folder {output_dir} is not empty (it was filled while writing)")
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
