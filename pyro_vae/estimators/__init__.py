"""ELBO estimators selectable by name (``estimator=...``), one per file.

Each is an object with Pyro's ``ELBO`` interface (``loss``, ``loss_and_grads``,
``differentiable_loss``), so ``pyro.infer.SVI`` takes it unchanged. ``loss`` is minus the
bound's estimate at full-data scale (eq. 8), so ``-loss / N`` is per datapoint.

=================  ==============================================================
``trace_elbo``     Pyro's ``Trace_ELBO``: estimator A (eq. 6) by Pyro's route
``meanfield``      Pyro's ``TraceMeanField_ELBO``: estimator B (eq. 7) via torch's KL
``sgvb_a``         estimator A written by hand from the traces
``sgvb_b``         estimator B with the KL of eq. 10 derived by hand
``score_function`` REINFORCE, optionally with a leave-one-out baseline
``iwae``           the importance-weighted bound (Burda et al. 2015), K = num_particles
``stl``            sticking the landing (Roeder et al. 2017)
``dreg``           doubly reparameterised IWAE gradients (Tucker et al. 2018)
=================  ==============================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pyro.infer import ELBO, Trace_ELBO

from ..config import ConfigError
from .base import MAX_PLATE_NESTING, EstimatorError
from .dreg import DReG_ELBO
from .iwae import IWAE_ELBO
from .meanfield import MeanField_ELBO
from .score_function import ScoreFunction_ELBO
from .sgvb_a import SGVB_A
from .sgvb_b import SGVB_B
from .stl import STL_ELBO

__all__ = ["ESTIMATORS", "MAX_PLATE_NESTING", "EstimatorError", "build_estimator"]


def _trace_elbo(num_particles: int) -> ELBO:
    """Pyro's ``Trace_ELBO``: the paper's estimator A (eq. 6), L particles vectorised."""
    return Trace_ELBO(
        num_particles=num_particles,
        vectorize_particles=True,
        max_plate_nesting=MAX_PLATE_NESTING,
    )


ESTIMATORS: dict[str, Callable[..., ELBO]] = {
    "trace_elbo": _trace_elbo,
    "meanfield": MeanField_ELBO,
    "sgvb_a": SGVB_A,
    "sgvb_b": SGVB_B,
    "score_function": ScoreFunction_ELBO,
    "iwae": IWAE_ELBO,
    "stl": STL_ELBO,
    "dreg": DReG_ELBO,
}


def build_estimator(cfg: Mapping[str, Any], num_particles: int = 1) -> ELBO:
    """The estimator named by ``cfg["name"]``, with L = ``num_particles`` and the other
    keys of ``cfg`` (``conf/estimator/<name>.yaml``) as its parameters."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in ESTIMATORS:
        raise ConfigError(
            f"estimator={name!r} is not allowed: expected one of {sorted(ESTIMATORS)}"
        )
    accepted = set(inspect.signature(ESTIMATORS[name]).parameters) - {"num_particles"}
    unknown = sorted(set(cfg) - accepted)
    if unknown:
        raise ConfigError(
            f"estimator.{unknown[0]} is not a parameter of estimator={name}: expected "
            f"{sorted(accepted) or 'none'} (pyro_vae/conf/estimator/{name}.yaml)"
        )
    try:
        return ESTIMATORS[name](num_particles=num_particles, **cfg)
    except EstimatorError as e:
        raise ConfigError(str(e)) from None
