"""The importance-weighted bound of Burda et al. (2015)."""

from __future__ import annotations

import math

import torch
from pyro.poutine import Trace

from .base import ParticleELBO, log_weights, plate_scale, register


@register("iwae")
class IWAE_ELBO(ParticleELBO):
    """Importance-weighted autoencoder bound with K = ``num_particles`` samples per point::

        L_K = (N/M) sum_i [logsumexp_k (log p(x_i, z_ik) - log q(z_ik | x_i)) - log K],
        z_ik ~ q(z | x_i) reparameterised

    L_1 is the ELBO (eq. 2) and L_K increases to log p(x) as K grows, so ``loss`` is the
    IWAE bound, not the ELBO. The gradient is the reparameterised gradient of L_K,
    sum_k w_k grad log w_k with normalised weights w_k = softmax_k(log w_k).
    See :class:`~pyro_vae.estimators.dreg.DReG_ELBO` for a lower-variance encoder gradient.
    """

    name = "iwae"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_w = log_weights(model_trace, guide_trace)
        log_mean_w = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
        bound = plate_scale(model_trace, guide_trace) * log_mean_w.sum()
        return bound, bound
