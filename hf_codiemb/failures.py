"""What a command says when it stops outside its input checks: a write the disk or the permissions refuse, Ctrl-C.

:func:`hf_codiemb.cli.main` turns both into one line on stderr (``codiemb COMMAND: error: ...``), exit status 2 for
a write that failed (the user can free space or choose another folder) and 130 for an interruption. A command
tells what it writes and what survives a failure with :func:`declare_output` (``codiemb train``: the complete
checkpoint to resume from), so the line can say what was kept.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "WRITE_ERRNOS",
    "declare_output",
    "interrupted_message",
    "reset_outputs",
    "write_failure",
    "write_failure_message",
]

# The errors of a write that the user fixes (free space, another folder, permissions); EFBIG: a file-size limit.
WRITE_ERRNOS = frozenset(
    code for code in (
        errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, getattr(errno, "EDQUOT", None)
    ) if code is not None
)  # fmt: skip
# Libraries that wrap the OS error in their own: safetensors (Rust's "... (os error 28)").
_WRAPPED_OS_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")
# torch.save's writer reports a failed write without the OS error.
_TORCH_WRITE_FAILED = "PytorchStreamWriter failed writing file"
# The hidden staging sibling of hf_codiemb.atomic (".NAME.partial-XXXXXXXX"), removed when its writer fails.
_STAGING = re.compile(r"^\.(?P<name>.+)\.partial-[0-9a-f]{8}$")


@dataclass
class _Output:
    path: str
    kept: Callable[[], str | None] | None


_outputs: list[_Output] = []


def declare_output(path: str | os.PathLike[str], kept: Callable[[], str | None] | None = None) -> None:
    """Record that the running command writes ``path``; ``kept()`` says, when it fails or is interrupted, what is
    complete and how to go on (e.g. the checkpoint to resume from), or ``None``."""
    _outputs.append(_Output(os.path.abspath(path), kept))


def reset_outputs() -> None:
    """Forget the declared outputs (at the start of each command)."""
    _outputs.clear()


def write_failure(error: BaseException) -> tuple[int | None, str | None] | None:
    """``(errno, path)`` when ``error`` (or an error it was raised from) is a write refused by the disk or the
    permissions (:data:`WRITE_ERRNOS`), also when a library wrapped it; ``None`` for any other error. ``errno`` is
    ``None`` when the library does not tell it (torch.save)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            return error.errno, error.filename if isinstance(error.filename, str) else None
        match = _WRAPPED_OS_ERROR.search(str(error))
        if match and int(match.group(1) or match.group(2)) in WRITE_ERRNOS:
            return int(match.group(1) or match.group(2)), None
        if _TORCH_WRITE_FAILED in str(error):
            return None, None
        error = error.__cause__ or error.__context__
    return None


def _public_path(path: str) -> tuple[str, str | None]:
    """``path`` with a staging folder of :mod:`hf_codiemb.atomic` replaced by its final folder, and that final
    folder (``None`` when ``path`` is not in one). A failed writer removes its staging folder: nothing reaches the
    final folder."""
    parts = Path(os.path.abspath(path)).parts
    for index, part in enumerate(parts):
        match = _STAGING.match(part)
        if match:
            final = Path(*parts[:index], match.group("name"))
            return str(Path(final, *parts[index + 1 :])), str(final)
    return os.path.abspath(path), None


def _notes() -> list[str]:
    notes = []
    for output in _outputs:
        if output.kept is not None:
            try:
                note = output.kept()
            except Exception:  # noqa: BLE001 - the note must never hide the failure it explains
                note = None
            if note:
                notes.append(note)
    return notes


def write_failure_message(code: int | None, path: str | None) -> str:
    """The one line for a refused write: ``cannot write PATH: No space left on device``, what was kept."""
    reason = os.strerror(code) if code is not None else "the write failed (disk full or no permission?)"
    final = None
    if path is not None:
        where, final = _public_path(path)
    else:
        where = " / ".join(output.path for output in _outputs) or "the output"
    message = f"cannot write {where}: {reason}"
    notes = _notes()
    if notes:
        message += "; " + "; ".join(notes)
    elif final is not None:
        message += f"; nothing was written to {final} (its unfinished copy was removed)"
    if code in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)):
        message += "; free some space (or choose another output folder) first"
    return message


def interrupted_message() -> str:
    """The one line for Ctrl-C: interrupted, and what was kept (the declared outputs' notes)."""
    notes = _notes()
    return "interrupted (Ctrl-C)" + ("; " + "; ".join(notes) if notes else "")
