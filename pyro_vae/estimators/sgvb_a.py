"""The paper's estimator A, written by hand from the model and guide traces."""

from __future__ import annotations

import torch
from pyro.poutine import Trace

from .base import ParticleELBO, log_weights, plate_scale, register


@register("sgvb_a")
class SGVB_A(ParticleELBO):
    """Generic SGVB estimator A (eq. 6) of the full-data bound (eq. 8)::

        L^A = (N/M) sum_i (1/L) sum_l [log p(x_i, z_il) - log q(z_il | x_i)],
        z_il = g_phi(eps_il, x_i) = mu(x_i) + sigma(x_i) * eps_il,  eps_il ~ N(0, I)

    log p(x, z) sums every model site (prior and likelihood, whatever they are), so A
    works with any prior; its gradient is the pathwise (reparameterisation) gradient of
    this Monte Carlo average. Assumes reparameterised latent sites (refused otherwise).

    The same estimator as Pyro's :class:`~pyro.infer.Trace_ELBO` for this guide: with the
    same noise the two give the same loss and gradients (``tests/test_estimators.py``).
    See :class:`~pyro_vae.estimators.sgvb_b.SGVB_B` for the analytic-KL estimator B.
    """

    name = "sgvb_a"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_w = log_weights(model_trace, guide_trace)
        bound = plate_scale(model_trace, guide_trace) * log_w.mean(0).sum()
        return bound, bound
