"""Pyro's TraceMeanField_ELBO: estimator B through torch's KL registry."""

from __future__ import annotations

import logging

import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine import Trace
from torch.distributions import kl_divergence

from .base import (
    GuessedNesting,
    describe_distribution,
    guide_site,
    pyro_plate_nesting,
    register,
    sample_sites,
)

logger = logging.getLogger(__name__)


@register("meanfield")
class MeanField_ELBO(GuessedNesting, TraceMeanField_ELBO):
    """Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` with L particles vectorised::

        L = (N/M) sum_i [-KL(q(z | x_i) || p(z)) + (1/L) sum_l log p(x_i | z_il)]

    where ``torch.distributions.kl_divergence`` has a closed form for (q, p): estimator B
    (eq. 7) by Pyro's route. Where torch has none (a Student-t or mixture prior, say; a
    Laplace prior has one) Pyro silently uses the Monte Carlo term log p(z_l) - log q(z_l)
    of estimator A for that site; this class logs a warning naming the prior the first
    time that happens.
    Assumes a mean-field, reparameterised guide (Pyro's docstring has the details).

    No JIT variant is offered: pyro 1.9.2's ``JitTraceMeanField_ELBO`` checks for the
    compiled function under one attribute and stores it under another, so it re-traces
    on every step. See :class:`~pyro_vae.estimators.sgvb_b.SGVB_B` for the hand-derived B.
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: int | None = None):
        super().__init__(
            num_particles=num_particles,
            vectorize_particles=True,
            max_plate_nesting=pyro_plate_nesting(max_plate_nesting),
        )
        self._checked_kl = False

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace):
        if not self._checked_kl:
            self._checked_kl = True
            warn_monte_carlo_kl(model_trace, guide_trace)
        return super()._differentiable_loss_particle(model_trace, guide_trace)


def warn_monte_carlo_kl(model_trace: Trace, guide_trace: Trace) -> None:
    """Log a warning for each latent site whose KL torch cannot compute in closed form."""
    for name, site in sample_sites(model_trace, observed=False):
        guide_fn = guide_site(guide_trace, name, "meanfield")["fn"]
        try:
            with torch.no_grad():
                kl_divergence(guide_fn, site["fn"])
        except NotImplementedError:
            logger.warning(
                "estimator=meanfield: torch has no closed-form KL for prior %s (guide %s) at "
                "site %r; that term is estimated by Monte Carlo, as in estimator A",
                describe_distribution(site["fn"]),
                describe_distribution(guide_fn),
                name,
            )
