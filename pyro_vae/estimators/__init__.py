"""ELBO estimators selectable by name (``estimator=...``), one per file.

Each is an object with Pyro's ``ELBO`` interface (``loss``, ``loss_and_grads``,
``differentiable_loss``), so ``pyro.infer.SVI`` takes it unchanged, on the Pyro models and
guides Pyro's ``Trace_ELBO`` takes (global latents, nested, subsampled and user plates,
masks, scales, several latent sites: :mod:`~pyro_vae.estimators.base` says how, and where
each estimator stops): site names are read from the traces and
parameters are whatever ``pyro.module``/``pyro.param`` register, so a model written as
Pyro's ``examples/vae/vae.py`` is (``tests/test_gradient_variance.py`` trains one with
each). ``loss`` is minus the bound's estimate at full-data scale (eq. 8), so ``-loss / N``
is per datapoint.

=================  ==============================================================
``trace_elbo``     Pyro's ``Trace_ELBO``: estimator A (eq. 6) by Pyro's route
``meanfield``      Pyro's ``TraceMeanField_ELBO``: estimator B (eq. 7) via torch's KL
``sgvb_a``         estimator A written by hand from the traces
``sgvb_b``         estimator B with the KL of eq. 10 derived by hand
``score_function`` REINFORCE, optionally with a leave-one-out baseline
``iwae``           the importance-weighted bound (Burda et al. 2015), K = num_particles
``stl``            sticking the landing (Roeder et al. 2017)
``iwae_stl``       the IWAE bound with STL's encoder gradient (biased for K > 1)
``dreg``           doubly reparameterised IWAE gradients (Tucker et al. 2018)
``vimco``          the multi-sample score function with a leave-one-out baseline
                   (Mnih & Rezende 2016), K = num_particles >= 2
``nvil``           the score function with a neural input-dependent baseline and
                   variance normalisation (Mnih & Gregor 2014); the baseline trains
                   with the model
=================  ==============================================================

Adding one is one file here: a class (or factory) decorated with ``@register("name")``;
every module of this package is imported below, so it is found by name.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from typing import Any

from pyro.infer import ELBO

from ..errors import ArgumentError, EstimatorError, refuse
from .base import ESTIMATORS, MAX_PLATE_NESTING, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ESTIMATORS", "MAX_PLATE_NESTING", "EstimatorError", "build_estimator", "register"]


def build_estimator(name: str | Mapping[str, Any], num_particles: int = 1, **params: Any) -> ELBO:
    """The estimator ``name`` with L = ``num_particles`` and its parameters ``params``,
    e.g. ``build_estimator("stl", num_particles=5)`` or
    ``build_estimator("score_function", baseline="none")``: an object ``SVI`` takes.

    ``name`` may also be a mapping with ``name`` and the parameters (a configuration's
    ``estimator`` node). Unknown names and parameters are refused naming what is allowed.
    """
    if isinstance(name, Mapping):
        params = {**{k: v for k, v in name.items() if k != "name"}, **params}
        name = name.get("name")
    if name not in ESTIMATORS:
        raise refuse("estimator", name, f"one of {sorted(ESTIMATORS)}")
    factory = ESTIMATORS[name]
    accepted = set(inspect.signature(factory).parameters) - {"num_particles"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ArgumentError(
            f" is not a parameter of estimator={name}: expected {sorted(accepted) or 'none'}",
            unknown[0],
        )
    return factory(num_particles=num_particles, **params)
