"""What each argument allows, stated once: the checks the Python API and the command line share.

An :class:`Allowed` is a test and the words for it (``an integer >= 1``). The Python API
checks its arguments with them (:func:`pyro_vae.train`, :func:`pyro_vae.evaluate`,
:meth:`pyro_vae.VAE.mlp`, the variance lab), raising
:class:`~pyro_vae.errors.ArgumentError` (``epochs=1.5 is not allowed: expected an integer
>= 0``); the configuration's schema (:mod:`pyro_vae.config.schema`) declares its keys with
the same objects, so ``pyro-vae train epochs=1.5`` is refused in the same words, under the
configuration key (``ConfigError``). Imports nothing of pyro-vae but its errors.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import refuse

# pyro.set_rng_seed seeds numpy too, which takes seeds below 2**32.
MAX_SEED = 2**32 - 1


def is_int(v: Any) -> bool:
    """An integer (a numpy integer too), not a boolean."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A real number (int, float, numpy scalars), not a boolean."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class Allowed:
    """What a key allows: ``ok(value)``, and ``text`` for ``expected <text>`` in messages."""

    text: str
    ok: Callable[[Any], bool]
    choices: Sequence[str] = ()

    def describe(self, value: Any) -> str:
        if not self.choices:
            return self.text
        close = difflib.get_close_matches(str(value), list(self.choices), n=1, cutoff=0.6)
        return self.text + (f" (did you mean {close[0]!r}?)" if close else "")

    def accepts(self, value: Any) -> bool:
        """``ok(value)``, False where the test itself fails on an odd value."""
        try:
            return bool(self.ok(value))
        except Exception:  # e.g. a comparison a tensor or a custom object refuses
            return False

    def check(self, key: str, value: Any, nullable: bool = False) -> Any:
        """``value`` if allowed (None too, if ``nullable``); else the ArgumentError naming
        ``key``, the value and what is allowed."""
        if (nullable and value is None) or self.accepts(value):
            return value
        raise refuse(key, value, self.describe(value) + (" (or None)" if nullable else ""))


def integer(minimum: int) -> Allowed:
    return Allowed(f"an integer >= {minimum}", lambda v: is_int(v) and v >= minimum)


def positive(allow_zero: bool = False) -> Allowed:
    def ok(v: Any) -> bool:
        return is_number(v) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)

    return Allowed("a finite number " + (">= 0" if allow_zero else "> 0"), ok)


def fraction(upper_closed: bool = False) -> Allowed:
    """A number in (0, 1), or (0, 1] with ``upper_closed``."""
    if upper_closed:
        return Allowed("a number in (0, 1]", lambda v: is_number(v) and 0 < v <= 1)
    return Allowed("a number in (0, 1)", lambda v: is_number(v) and 0 < v < 1)


def one_of(choices: Sequence[str]) -> Allowed:
    choices = list(choices)
    return Allowed(f"one of {choices}", lambda v: isinstance(v, str) and v in choices, choices)


def _is_list(v: Any) -> bool:
    """A list or tuple (a configuration's lists, a Python caller's tuples), not a string."""
    return isinstance(v, list | tuple)


BOOL = Allowed("true or false", lambda v: isinstance(v, bool))
PATH = Allowed("a non-empty string (a path)", lambda v: isinstance(v, str) and bool(v))
SEED = Allowed(f"an integer in 0..{MAX_SEED}", lambda v: is_int(v) and 0 <= v <= MAX_SEED)
HIDDEN_DIMS = Allowed(
    "a list of positive integers such as [500] (or [])",
    lambda v: _is_list(v) and all(is_int(h) and h >= 1 for h in v),
)
STEP_SIZES = Allowed(
    "null or a non-empty list of step sizes > 0, e.g. [0.01,0.02]",
    lambda v: (
        _is_list(v) and bool(v) and all(is_number(x) and math.isfinite(x) and x > 0 for x in v)
    ),
)


def check_arguments(
    values: Mapping[str, Any], checks: Mapping[str, Allowed], nullable: Sequence[str] = ()
) -> None:
    """Refuse the first of ``values`` (name -> value) that its check in ``checks`` does not
    allow (None is allowed for the names in ``nullable``); names without a check pass."""
    for key, value in values.items():
        if key in checks:
            checks[key].check(key, value, nullable=key in nullable)


# --- devices ---------------------------------------------------------------------------------

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str | torch.device, key: str = "device") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``auto`` (CUDA where available) or a ``torch.device``.

    A CUDA device where there is none is refused (ArgumentError naming ``key``), not
    replaced by the CPU: a run asked to use the GPU would otherwise run for hours on the CPU
    without a word."""
    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = f"one of {list(DEVICES)}, 'cuda:N' or a torch.device"
    if isinstance(name, torch.device):
        device = name
    elif isinstance(name, str) and (name in DEVICES or name.startswith("cuda:")):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise refuse(key, name, allowed) from None
    else:
        raise refuse(key, name, allowed)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise refuse(key, name, "cpu or auto: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise refuse(key, name, f"a CUDA device below {torch.cuda.device_count()}")
    elif device.type != "cpu":
        raise refuse(key, name, allowed)
    return device
