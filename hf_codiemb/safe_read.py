"""Bounded reads of the user's files: only regular files (inside a given folder), at most a given size.

A path the user names may be a FIFO (opening it for reading blocks until a writer appears), a device (``/dev/zero``
never ends), a socket, or a symbolic link to any of them or to a file outside the folder being published.
:func:`file_problem` says what is wrong with such a path from ``lstat``/``stat`` alone (nothing is opened);
:func:`open_regular_file` opens with ``O_NONBLOCK`` and checks the opened descriptor again (no race between the
check and the open); :func:`read_bounded` reads at most ``max_bytes``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from hf_codiemb.errors import CoDiEmbUserError

__all__ = ["UnsafeFileError", "file_problem", "open_regular_file", "read_bounded", "resolves_inside"]


class UnsafeFileError(CoDiEmbUserError, ValueError):
    """A path that is not a regular file (inside the folder it must stay in), or a file over its size limit."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolves_inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path``, every symbolic link resolved, is ``root`` or below it (also resolved)."""
    return _inside(Path(os.path.realpath(path)), Path(os.path.realpath(root)))


def file_problem(path: str | Path, root: str | Path | None = None) -> str | None:
    """Why ``path`` must not be read as a user file, or ``None`` when it is a regular file (inside ``root``).

    Nothing is opened: ``lstat`` tells a symbolic link, the resolved path tells where it leads. A link is accepted
    only when its final target is a regular file inside ``root`` (with ``root=None``: any regular file).
    """
    path = Path(path)
    try:
        own = path.lstat()
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    link = stat.S_ISLNK(own.st_mode)
    if root is not None and not resolves_inside(path, root):
        real, real_root = os.path.realpath(path), os.path.realpath(root)
        return f"is a symbolic link to {real}, outside {real_root} (its target would be published)"
    try:
        mode = path.stat().st_mode if link else own.st_mode
    except OSError:
        return "is a broken symbolic link"
    if not stat.S_ISREG(mode):
        return f"is {'a symbolic link to ' if link else ''}{_kind(mode)}, not a regular file"
    return None


def open_regular_file(path: str | Path, root: str | Path | None = None) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading if it is a regular file (inside ``root``); return the file and its size.

    Opened with ``O_NONBLOCK`` (a FIFO that appears between the check and the open does not block) and checked again
    on the descriptor.

    Raises:
        UnsafeFileError: ``path`` is not a regular file, or is a link out of ``root`` (the message names it).
    """
    problem = file_problem(path, root)
    if problem:
        raise UnsafeFileError(f"{path} {problem}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise UnsafeFileError(f"{path} cannot be read ({error.strerror or error})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{path} is {_kind(info.st_mode)}, not a regular file")
    return os.fdopen(fd, "rb"), info.st_size


def read_bounded(path: str | Path, max_bytes: int, root: str | Path | None = None, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (inside ``root``), refused when larger than ``max_bytes``.

    Raises:
        UnsafeFileError: not a regular file, a link out of ``root``, or over ``max_bytes`` (the message names the
            file and the limit).
    """
    handle, size = open_regular_file(path, root)
    with handle:
        data = handle.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise UnsafeFileError(f"{path} is larger than {max_bytes:,} bytes, the limit for a {what}")
    return data
