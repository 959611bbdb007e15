"""What a fusion method is: :class:`FusionMethod` (the interface every method implements), its declared
:class:`MethodParameter` s, its :class:`MergeOutput`, the :class:`ChunkWorkspace` of chunked merges, and
:func:`register`, with which each method module under :mod:`hf_codiemb.fusion.methods` registers itself.

:mod:`hf_codiemb.fusion.registry` looks the registered methods up by name.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from hf_codiemb.fusion.errors import FusionError


@dataclass
class MergeOutput:
    """The result of merging one tensor (or one chunk of it).

    Attributes:
        merged: the merged values, same shape as the inputs, in float32/float64.
        weight_sums: optional ``(K,)`` tensor with the sum over elements of each checkpoint's fusion weight
            (used for per-layer statistics); ``None`` for methods without per-checkpoint weights.
    """

    merged: torch.Tensor
    weight_sums: torch.Tensor | None = None


class ChunkWorkspace:
    """Named scratch buffers reused from one chunk to the next (allocated once, grown when a chunk is larger).

    Streaming fusion processes hundreds of chunks of about the same size; allocating each temporary afresh costs a
    page fault per 4 KiB page, which on large models takes longer than the arithmetic itself.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, key: str, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype``, a view of the buffer named ``key``."""
        numel = 1
        for dim in shape:
            numel *= dim
        buffer = self._buffers.get(key)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            buffer = self._buffers[key] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(tuple(shape))

    def clear(self) -> None:
        """Release every buffer."""
        self._buffers.clear()


@dataclass(frozen=True)
class MethodParameter:
    """A hyper-parameter a fusion method declares (as mergekit's merge methods declare theirs).

    The command line, YAML fusion recipes and :func:`get_method` validate values against these declarations, so no
    code outside the method lists its arguments.

    Attributes:
        name: keyword of the method's constructor (and the ``--name`` flag of ``codiemb fuse``).
        type: ``float``, ``int`` or ``str``; values are converted to it. ``tuple`` is a list of numbers (a YAML list,
            or ``"0.7,0.3"`` from the command line), converted to a tuple of floats.
        default: the value when not given.
        help: one line for ``--help`` and the docs.
        choices: the allowed values, for ``str`` parameters with a fixed set.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None

    def convert(self, value: Any, method: str) -> Any:
        """``value`` as ``self.type``, or a :class:`FusionError` (a ``ValueError``) naming the method and the parameter."""
        if value is None and self.default is None:
            return None
        if self.type is tuple:
            return self._convert_numbers(value, method)
        if self.type in (int, float) and isinstance(value, bool):
            raise FusionError(f"fusion method {method!r}: parameter {self.name!r} must be a number, got {value!r}")
        try:
            converted = self.type(value)
        except (TypeError, ValueError, OverflowError):
            raise FusionError(
                f"fusion method {method!r}: parameter {self.name!r} must be {self.type.__name__}, got {value!r}"
            ) from None
        if self.type is float and not math.isfinite(converted):
            raise FusionError(
                f"fusion method {method!r}: parameter {self.name!r} must be a finite number, got {value!r}"
            )
        if self.type is int and isinstance(value, float) and value != converted:
            raise FusionError(f"fusion method {method!r}: parameter {self.name!r} must be an integer, got {value!r}")
        if self.choices is not None and converted not in self.choices:
            raise FusionError(
                f"fusion method {method!r}: parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}"
            )
        return converted

    def _convert_numbers(self, value: Any, method: str) -> tuple[float, ...]:
        """A list of numbers (or ``"a,b"``) as a tuple of floats."""
        items = value.split(",") if isinstance(value, str) else value
        problem = FusionError(
            f"fusion method {method!r}: parameter {self.name!r} must be a list of numbers, got {value!r}"
        )
        if not isinstance(items, (list, tuple)) or not items or any(isinstance(item, bool) for item in items):
            raise problem
        try:
            return tuple(float(item) for item in items)
        except (TypeError, ValueError):
            raise problem from None


class FusionMethod(ABC):
    """Base class of a fusion method.

    Subclasses set ``name``, ``description``, whether they need the base model (``requires_base``),
    whether they can be applied to row chunks of a tensor independently (``elementwise``), and implement
    :meth:`merge`. Methods that need a statistic of the whole tensor while still being applied chunk by
    chunk set ``needs_delta_norms``: the pipeline then computes ``||theta_k - theta_0||_2`` per checkpoint
    in a first streaming pass and passes it to :meth:`merge`.

    The streaming pipeline calls :meth:`merge_chunk`, which by default calls :meth:`merge`; a method overrides it to
    work in the pipeline's reusable buffers (fewer temporaries, no fresh memory per chunk). A method sets
    ``propagates_non_finite`` when every NaN/inf input value that influences an output value makes that value
    non-finite (plain weighted sums do; sparsifying methods may drop it): the pipeline then checks only the merged
    values for NaN/inf, otherwise every input chunk too.
    """

    name: ClassVar[str]
    # The constructor's keyword arguments, declared (see MethodParameter); the registry validates against them.
    parameter_specs: ClassVar[tuple[MethodParameter, ...]] = ()
    description: ClassVar[str] = ""
    reference: ClassVar[str | None] = None
    requires_base: ClassVar[bool] = True
    elementwise: ClassVar[bool] = True
    propagates_non_finite: ClassVar[bool] = False

    @property
    def needs_delta_norms(self) -> bool:
        """Whether :meth:`merge` needs whole-tensor delta norms."""
        return False

    def check_inputs(self, num_checkpoints: int) -> None:
        """Refuse settings that do not fit ``num_checkpoints`` inputs (``ValueError``), before anything is read or
        written. The default accepts any number."""

    @abstractmethod
    def merge(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        *,
        delta_norms: torch.Tensor | None = None,
        name: str = "",
    ) -> MergeOutput:
        """Merge one tensor (or one row chunk of it) of the K checkpoints, all given in a float dtype."""

    def merge_chunk(
        self,
        base: torch.Tensor | None,
        checkpoints: Sequence[torch.Tensor],
        workspace: ChunkWorkspace,
        *,
        delta_norms: torch.Tensor | None = None,
        name: str = "",
    ) -> MergeOutput:
        """:meth:`merge` as the streaming pipeline calls it, chunk after chunk.

        ``base`` and ``checkpoints`` may be zero-copy views of the memory-mapped input files: do not write into them
        (it would work, on private copies of the pages, but costs a page copy per 4 KiB). ``workspace`` lends
        scratch buffers that are reused from chunk to chunk (no fresh memory per chunk). The merged tensor may be
        an input or a workspace buffer: it is written out before the next chunk is read. The default calls
        :meth:`merge`."""
        return self.merge(base, checkpoints, delta_norms=delta_norms, name=name)

    def parameters(self) -> dict[str, Any]:
        """The method's hyper-parameters, recorded in the fusion recipe and the model card."""
        return {}


REGISTERED_METHODS: dict[str, type[FusionMethod]] = {}
"""Method classes by name, filled by :func:`register`."""


def register(cls: type[FusionMethod]) -> type[FusionMethod]:
    """Register a method class under ``cls.name`` (usable as a class decorator); duplicates are errors."""
    if cls.name in REGISTERED_METHODS and REGISTERED_METHODS[cls.name] is not cls:
        raise ValueError(f"Fusion method {cls.name!r} is already registered")
    REGISTERED_METHODS[cls.name] = cls
    return cls
