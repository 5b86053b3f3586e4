"""The paper's estimator A, written by hand from the model and guide traces."""

from __future__ import annotations

import torch
from pyro.poutine import Trace

from .base import ParticleELBO, log_weights, register


@register("sgvb_a")
class SGVB_A(ParticleELBO):
    """Generic SGVB estimator A (eq. 6) of the full-data bound (eq. 8)::

        L^A = (N/M) sum_i (1/L) sum_l [log p(x_i, z_il) - log q(z_il | x_i)],
        z_il = g_phi(eps_il, x_i) = mu(x_i) + sigma(x_i) * eps_il,  eps_il ~ N(0, I)

    log p(x, z) sums every model site (prior and likelihood, whatever they are), so A
    works with any prior; its gradient is the pathwise (reparameterisation) gradient of
    this Monte Carlo average. On any Pyro model (global latents, nested or subsampled
    plates, masks, scales: :mod:`~pyro_vae.estimators.base`) it is the same sum of scaled
    log-densities, averaged over particles. Assumes reparameterised latent sites (refused
    otherwise).

    The same estimator as Pyro's :class:`~pyro.infer.Trace_ELBO` for such a guide: with the
    same noise the two give the same loss and gradients (``tests/test_estimators.py``,
    ``tests/test_estimators_models.py``). See :class:`~pyro_vae.estimators.sgvb_b.SGVB_B`
    for the analytic-KL estimator B.
    """

    name = "sgvb_a"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        log_w = log_weights(model_trace, guide_trace, layout)
        bound = layout.scale * log_w.mean(0).sum()
        return bound, bound
