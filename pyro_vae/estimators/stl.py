"""Sticking the landing (Roeder, Wu & Duvenaud 2017)."""

from __future__ import annotations

import torch
from pyro.poutine import Trace

from .base import ParticleELBO, log_weights, plate_scale, register


@register("stl")
class STL_ELBO(ParticleELBO):
    """The ELBO of eq. 8, estimated as by A, with the path-derivative encoder gradient::

        grad_phi ~= (N/M) sum_i (1/L) sum_l d[log p(x_i, z) - log q_phi'(z | x_i)]/dz
                    * dz_il/dphi   at phi' = phi held fixed

    The total derivative of A's integrand with respect to phi is this path term plus the
    score term -d log q_phi(z)/dphi at fixed z, whose expectation is zero; STL drops it,
    so the estimator stays unbiased and its variance vanishes where q equals the exact
    posterior. The decoder's gradient and the value are those of estimator A.
    Assumes reparameterised latent sites. Pyro has no such estimator.
    """

    name = "stl"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_w = log_weights(model_trace, guide_trace, path_only=True)
        bound = plate_scale(model_trace, guide_trace) * log_w.mean(0).sum()
        return bound, bound
