"""The registry of fusion methods, in the shape of mergekit's ``merge_methods.registry``: look a method up by name,
check its parameters, instantiate it.

Each method lives in its own module under :mod:`hf_codiemb.fusion.methods` and registers itself with
:func:`hf_codiemb.fusion.method.register` (importing this module imports the built-in ones). The streaming pipeline
(:func:`hf_codiemb.fusion.fuse`) looks methods up here.
"""

from __future__ import annotations

from typing import Any

from hf_codiemb.fusion import methods  # noqa: F401  (registers the built-in methods)
from hf_codiemb.fusion.errors import FusionError
from hf_codiemb.fusion.method import REGISTERED_METHODS, FusionMethod, MethodParameter


def method_class(name: str) -> type[FusionMethod]:
    """The method class registered under ``name``.

    Raises:
        FusionError: an unknown name (the message lists the available ones).
    """
    try:
        return REGISTERED_METHODS[name]
    except KeyError:
        raise FusionError(f"Unknown fusion method {name!r}; available: {', '.join(sorted(REGISTERED_METHODS))}") from None


def validate_method_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against the declared parameters of method ``name`` and converted to their types.

    Raises:
        FusionError: an unknown method, a parameter the method does not declare (the message lists those it does),
            or a value of the wrong type or outside its choices.
    """
    specs = {spec.name: spec for spec in method_class(name).parameter_specs}
    unknown = sorted(set(params) - set(specs))
    if unknown:
        declared = ", ".join(specs) or "none"
        raise FusionError(f"fusion method {name!r} has no parameter(s) {unknown}; its parameters: {declared}")
    return {key: specs[key].convert(value, name) for key, value in params.items()}


def all_method_parameters() -> dict[str, MethodParameter]:
    """Every parameter declared by a registered method, by name (for the command line's flags)."""
    merged: dict[str, MethodParameter] = {}
    for cls in REGISTERED_METHODS.values():
        for spec in cls.parameter_specs:
            merged.setdefault(spec.name, spec)
    return merged


def get_method(name: str, **params: Any) -> FusionMethod:
    """Instantiate the method registered under ``name`` with ``params`` (validated against its declarations).

    Raises:
        FusionError: as :func:`validate_method_params`, or a value the method itself refuses (a negative ``p``).
    """
    method = method_class(name)
    validated = validate_method_params(name, params)
    try:
        return method(**validated)
    except FusionError:
        raise
    except ValueError as error:  # the method's own checks of its values (they are the user's values)
        raise FusionError(str(error)) from None


def registered_methods() -> tuple[str, ...]:
    """Names of the available methods."""
    return tuple(sorted(REGISTERED_METHODS))
