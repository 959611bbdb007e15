"""Errors caused by what the user gave (data, recipe values, model paths), as opposed to bugs.

Every exception here derives from :class:`CoDiEmbUserError`. The ``codiemb`` console script catches them, prints
their message on one line (what is wrong and where: file, line, field) and exits with status 2; the traceback is
shown only with ``codiemb --debug`` or the environment variable ``CODIEMB_DEBUG=1``. Library callers catch them like
the built-in exceptions they also derive from (``ValueError``, ``FileNotFoundError``, ``OSError``), so code written
against the built-in types keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CoDiEmbUserError",
    "DataError",
    "DataFileNotFoundError",
    "MissingDependencyError",
    "ModelLoadError",
    "OutputExistsError",
    "OutputInUseError",
    "OutputWriteError",
    "RecipeError",
    "TrainingDataError",
    "UsageError",
    "unknown_arguments_message",
]


class CoDiEmbUserError(Exception):
    """Base class of the errors the user can fix: bad data, a bad recipe value, a missing or broken file."""


def _located(source: str | None, line: int | None, field: str | None, problem: str) -> str:
    """``"source, line N, field 'x': problem"`` with the parts that are known."""
    parts = [part for part in (source, f"line {line}" if line is not None else None) if part]
    if field is not None:
        parts.append(f"field {field!r}")
    return (", ".join(parts) + ": " if parts else "") + problem


class DataError(CoDiEmbUserError, ValueError):
    """Training or evaluation data that cannot be used (a record, a column, a whole file)."""


class DataFileNotFoundError(CoDiEmbUserError, FileNotFoundError):
    """A data file that does not exist (the message names its full path)."""


class RecipeError(CoDiEmbUserError, ValueError):
    """A recipe value (YAML key or command-line flag) that is invalid.

    Args:
        problem: what is wrong with the value, without the location.
        field: the recipe key (dataclass field), when known.
        source: where the value comes from: the recipe file's path or ``"command line"``.
        line: the 1-based line of the key in the recipe file, when the value comes from the file.
    """

    def __init__(self, problem: str, field: str | None = None, source: str | None = None, line: int | None = None):
        self.problem = problem
        self.field = field
        self.source = source
        self.line = line
        super().__init__(_located(source, line, field, problem))

    def located(self, source: str | None, line: int | None = None) -> RecipeError:
        """A copy of this error that names ``source`` (and ``line``) when it does not name a source yet."""
        if self.source is not None:
            return self
        return RecipeError(self.problem, self.field, source, line)

    def __reduce__(self):  # keep the exception picklable
        return (type(self), (self.problem, self.field, self.source, self.line))


class MissingDependencyError(CoDiEmbUserError, ImportError):
    """An optional dependency that the chosen option needs is not installed (the message says what to install)."""


class ModelLoadError(CoDiEmbUserError, OSError):
    """A model that cannot be loaded: missing or invalid folder, a Hub id that cannot be reached, corrupt weights."""


class OutputExistsError(CoDiEmbUserError, FileExistsError):
    """An output folder that already exists and would be overwritten."""


class OutputInUseError(CoDiEmbUserError, BlockingIOError):
    """An output folder or file that another live process is writing (its lock is held; the message names it)."""


class OutputWriteError(CoDiEmbUserError, OSError):
    """An output folder that cannot be created or written (a file in the way, no write permission)."""


class TrainingDataError(CoDiEmbUserError, ValueError):
    """A training dataset that cannot be trained on as configured (raised before training starts): a missing
    column, an empty positive list, a loss of the other task, too few examples for one optimizer update."""


class UsageError(CoDiEmbUserError, ValueError):
    """A command line that cannot be run (unknown flag, missing argument, nothing to do)."""


def unknown_arguments_message(arguments: Iterable[str], known: Iterable[str], prefix: str = "--") -> str:
    """``"; did you mean --max_steps?"`` for the unknown ``arguments`` that are close to a ``known`` one, else ``""``.

    Args:
        arguments: the unknown command-line tokens (only those starting with ``prefix`` are looked at) or keys.
        known: the known option strings or keys.
        prefix: the prefix of options (``"--"``); ``""`` compares plain keys.
    """
    # Compare with '-' and '_' made equal, so --max-steps finds --max_steps (suggested in its underscore spelling).
    normalised: dict[str, str] = {}
    for option in sorted(known, key=lambda option: "-" in option.lstrip("-")):
        normalised.setdefault(option.replace("-", "_"), option)
    hints: list[tuple[str, str]] = []
    for argument in arguments:
        if prefix and not argument.startswith(prefix):
            continue
        name = argument.split("=", 1)[0]
        match = difflib.get_close_matches(name.replace("-", "_"), list(normalised), n=1, cutoff=0.75)
        if match and normalised[match[0]] != name:
            hints.append((name, normalised[match[0]]))
    if not hints:
        return ""
    if len(hints) == 1:
        return f"; did you mean {hints[0][1]}?"
    return "; did you mean " + ", ".join(f"{suggestion} (for {name})" for name, suggestion in hints) + "?"
