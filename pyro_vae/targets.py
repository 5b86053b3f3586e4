"""Classes named by import path (``_target_``), built with checked keyword arguments.

Shared by the priors, likelihoods and networks a configuration names: one way to import a
``_target_``, one check of its keys against the constructor's signature (unknown or missing
keys are refused by name), and one way to pass a class the context it asks for (``x_dim``,
``latent_dim``, ...) when its signature has a parameter of that name.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ArgumentError, refuse


def import_target(target: Any, key: str, allowed: str, suggest: Sequence[str] = ()) -> Any:
    """The object ``target`` (``"package.module.Name"``) names, or a class given as is;
    refused naming ``key`` and ``allowed`` (with a close match among ``suggest``, given as
    ``prefix.Name`` strings) when it cannot be imported or is not a class."""
    if isinstance(target, type):
        return target
    module, _, attr = str(target).rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
        if not isinstance(obj, type):
            raise TypeError(f"{target} is a {type(obj).__name__}, not a class")
    except (ImportError, AttributeError, ValueError, TypeError) as e:
        names = {s.rpartition(".")[2]: s for s in suggest}
        close = difflib.get_close_matches(attr, list(names), n=1)
        hint = f"; did you mean {names[close[0]]}?" if close else ""
        raise refuse(key, target, f"{allowed} ({type(e).__name__}: {e}{hint})") from None
    return obj


def check_params(
    cls: type,
    params: Mapping[str, Any],
    what: str,
    skip: tuple[str, ...],
    also: tuple[str, ...] = (),
) -> list[str]:
    """The constructor parameters of ``cls``; unknown or missing config keys are refused."""
    sig = inspect.signature(cls)
    named = [
        k
        for k, p in sig.parameters.items()
        if k not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = sorted(set(params) - set(named))
        if unknown:
            keys = [*named, *also]
            allowed = f"expected keys among {keys}" if keys else "it takes no parameters"
            raise ArgumentError(f" is not a parameter of {what}: {allowed}", unknown[0])
    required = [k for k in named if sig.parameters[k].default is inspect.Parameter.empty]
    missing = [k for k in required if k not in params]
    if missing:
        raise ArgumentError(
            f"missing value for {{key}}: {what} needs {required}; set {{key}}=...", missing[0]
        )
    return named


def accepted_context(cls: type, context: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``context`` that ``cls``'s constructor takes (all, with ``**kwargs``)."""
    accepted = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    return {k: v for k, v in context.items() if takes_any or k in accepted}


def path_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
