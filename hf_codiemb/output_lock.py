"""One writer per output: a lock file beside the output path, held while a command writes there.

``codiemb train`` (its ``output_dir``), ``fuse``, ``mine`` and ``merge-lora`` take the lock of their output before
any work: a second process writing to the same place is refused at once with an error naming the process that
holds it (pid, host, command, start time). The lock is ``.NAME.codiemb-lock`` next to the output ``NAME``, locked
with ``fcntl.flock`` (the kernel releases it when its process dies, so a killed writer never blocks the next one)
and records its owner. A lock file left by a process that is gone is taken over with a warning; the file is
removed when the lock is released, at the latest when the process exits.

Example::

    from hf_codiemb.output_lock import acquire_output_lock

    lock = acquire_output_lock("outputs/run")  # OutputInUseError if another live process holds it
    ...
    lock.release()
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from hf_codiemb.errors import OutputInUseError, OutputWriteError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".codiemb-lock"
# Locks this process holds, by lock-file path: taking one again (a second run in the same process) reuses it.
_HELD: dict[str, OutputLock] = {}


#: errno values of a write the disk or the permissions refuse (the lock's folder is the output's folder).
_REFUSED_WRITES = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT})


def lock_path(output: str | Path) -> Path:
    """The lock file of ``output``: ``.NAME.codiemb-lock`` in the same folder."""
    output = Path(output).expanduser().absolute()
    return output.parent / f".{output.name}{LOCK_SUFFIX}"


class OutputLock:
    """A held output lock (see :func:`acquire_output_lock`); :meth:`release` it when the output is written."""

    def __init__(self, output: Path, path: Path, fd: int) -> None:
        self.output = output
        self.path = path
        self._fd: int | None = fd
        self._depth = 1

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and release the lock (once every acquisition in this process has released it)."""
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
            _HELD.pop(str(self.path), None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (not removed or replaced by another process)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _owner_text(owner: dict[str, object] | None) -> str:
    if not owner:
        return "another process (it has not recorded itself yet)"
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    command = f", command: {owner['command']}" if owner.get("command") else ""
    return f"process {owner.get('pid')} on host {owner.get('host')} (started {when}{command})"


def _read_owner(fd: int) -> dict[str, object] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        owner = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def acquire_output_lock(output: str | Path, purpose: str = "writing") -> OutputLock:
    """Take the lock of ``output`` (a folder or file path) for this process, or fail at once.

    Args:
        output: the output folder or file the command writes.
        purpose: what the holder does, for the messages (``"training"``, ``"fusion"``...).

    Raises:
        OutputInUseError: another live process holds the lock (the message names it and the lock file).
        OutputWriteError: the lock file cannot be created (the output's folder is not writable).
    """
    output = Path(output).expanduser().absolute()
    path = lock_path(output)
    held = _HELD.get(str(path))
    if held is not None and held.held:
        held._depth += 1
        return held
    for _attempt in range(5):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in _REFUSED_WRITES:  # the output's folder is not writable: say so of the output itself
                raise OutputWriteError(
                    f"cannot write {output}: {os.strerror(exc.errno)}; nothing was written there"
                ) from None
            raise OutputWriteError(f"Cannot create the lock file {path} of {output}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise OutputInUseError(
                f"{output} is in use: {_owner_text(owner)} is writing there (lock file {path}); wait for it to "
                "finish or choose another output"
            ) from None
        except OSError as exc:  # a file system without flock
            os.close(fd)
            raise OutputWriteError(f"Cannot lock {path} (the lock of {output}): {exc}") from exc
        if not _same_file(fd, path):  # the holder released (removed) it between our open and our lock: retry
            os.close(fd)
            continue
        previous = _read_owner(fd)
        if previous and previous.get("pid") != os.getpid():
            logger.warning("Taking over the lock %s of %s: %s is no longer running (it did not finish?)",
                           path, output, _owner_text(previous))  # fmt: skip
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "purpose": purpose,
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode("utf-8"), 0)
        lock = OutputLock(output, path, fd)
        _HELD[str(path)] = lock
        return lock
    raise OutputInUseError(f"{output} is in use: its lock file {path} keeps being replaced by other processes")


@contextmanager
def output_lock(output: str | Path, purpose: str = "writing", enabled: bool = True) -> Iterator[OutputLock | None]:
    """Hold the lock of ``output`` for the ``with`` block (``enabled=False``: no lock, e.g. on DDP ranks > 0)."""
    lock = acquire_output_lock(output, purpose) if enabled else None
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def check_output_unlocked(output: str | Path) -> None:
    """Fail if another live process holds the lock of ``output`` (takes nothing; for dry runs).

    Raises:
        OutputInUseError: naming the process.
    """
    acquire_output_lock(output, "checking").release()


def is_main_process() -> bool:
    """Whether this process is the one that takes output locks: rank 0 of a torchrun / accelerate launch (``RANK``),
    or any process that was not launched as one of several."""
    return os.environ.get("RANK", "0") in ("", "0")


@atexit.register
def release_all_locks() -> None:
    """Release every output lock this process holds (``codiemb`` does when a command ends; also at exit)."""
    for lock in list(_HELD.values()):
        lock._depth = 1
        lock.release()
