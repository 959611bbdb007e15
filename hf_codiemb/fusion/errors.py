"""Exceptions raised by the fusion package."""

from __future__ import annotations


class FusionError(ValueError):
    """An input problem detected by the fusion pipeline (raised before anything is written)."""


class FusionWriteError(OSError):
    """The output folder cannot be created or written."""
