"""Exceptions raised by the fusion package."""

from __future__ import annotations

from hf_codiemb.errors import CoDiEmbUserError, OutputWriteError


class FusionError(CoDiEmbUserError, ValueError):
    """An input problem detected by the fusion pipeline (raised before anything is written): a missing, broken or
    incompatible input, non-finite weights, an output folder that is an input, a method or parameter it does not
    know. ``codiemb fuse`` reports it on one line (``codiemb fuse: error: ...``, exit status 2)."""


# The output folder cannot be created or written (raised by :mod:`hf_codiemb.atomic`, shared with the other writers).
FusionWriteError = OutputWriteError


class SelectionError(CoDiEmbUserError, ValueError):
    """Fusion inputs cannot be chosen from a run's recorded evaluations (no evaluation, no complete checkpoint left,
    an unreadable ``trainer_state.json``), or a fusion search cannot be run (no dev sets of both tasks)."""
