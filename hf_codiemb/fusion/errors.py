"""Exceptions raised by the fusion package."""

from __future__ import annotations

from hf_codiemb.errors import OutputWriteError


class FusionError(ValueError):
    """An input problem detected by the fusion pipeline (raised before anything is written)."""


# The output folder cannot be created or written (raised by :mod:`hf_codiemb.atomic`, shared with the other writers).
FusionWriteError = OutputWriteError
