"""ELBO estimators selectable by name (``estimator=...``).

Each is an object with Pyro's ``ELBO`` interface (``loss``, ``loss_and_grads``,
``differentiable_loss``), so ``pyro.infer.SVI`` takes it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pyro.infer import ELBO, Trace_ELBO

# The model has one plate (the minibatch); vectorised particles go to its left.
MAX_PLATE_NESTING = 1


def _trace_elbo(num_particles: int) -> ELBO:
    """Pyro's ``Trace_ELBO``: the paper's estimator A (eq. 6), L particles vectorised."""
    return Trace_ELBO(
        num_particles=num_particles,
        vectorize_particles=True,
        max_plate_nesting=MAX_PLATE_NESTING,
    )


ESTIMATORS: dict[str, Callable[..., ELBO]] = {"trace_elbo": _trace_elbo}


def build_estimator(cfg: Mapping[str, Any], num_particles: int = 1) -> ELBO:
    """The estimator named by ``cfg["name"]``, with L = ``num_particles``."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in ESTIMATORS:
        raise ValueError(f"estimator={name!r} is not one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name](num_particles=num_particles, **cfg)
