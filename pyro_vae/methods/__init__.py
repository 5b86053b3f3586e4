"""Training methods: how one minibatch updates the model (``method=...``), one per file.

- ``aevb``: the paper's algorithm 1, one gradient step of any ELBO estimator.
- ``wake_sleep``: Hinton et al. (1995), the paper's baseline in Figures 2 and 3.
- ``mcem``: Monte Carlo EM with an HMC posterior sampler, the baseline of Figure 3.

Each follows :class:`~pyro_vae.methods.base.TrainingMethod`, so the trainer, checkpoints,
metrics and plots are the same for every method. Adding one is one file here: a class
decorated with ``@register("name")``; every module of this package is imported below.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ..errors import refuse
from ..model import VAE
from .base import METHODS, TrainingMethod, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from .aevb import AEVB  # noqa: E402
from .mcem import MCEM  # noqa: E402
from .wake_sleep import WakeSleep  # noqa: E402


def build_method(name: str, vae: VAE, **options: Any) -> TrainingMethod:
    """The method ``name`` on ``vae`` with its ``options`` (``build_method("aevb", vae,
    estimator="stl", num_particles=5)``)."""
    if name not in METHODS:
        raise refuse("method", name, f"one of {sorted(METHODS)}")
    return METHODS[name](vae, **options)


__all__ = ["AEVB", "MCEM", "METHODS", "TrainingMethod", "WakeSleep", "build_method", "register"]
