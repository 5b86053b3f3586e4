"""The importance-weighted bound of Burda et al. (2015)."""

from __future__ import annotations

import math

import torch
from pyro.poutine import Trace

from .base import ParticleELBO, log_weights, register


@register("iwae")
class IWAE_ELBO(ParticleELBO):
    """Importance-weighted autoencoder bound with K = ``num_particles`` samples per unit::

        L_K = (N/M) sum_u [logsumexp_k (log p(x_u, z_uk) - log q(z_uk | x_u)) - log K],
        z_uk ~ q(z | x_u) reparameterised

    The units u (:class:`~pyro_vae.estimators.base.Layout`): where every sample site lies
    in the data plate (a VAE), one importance weight per datapoint, u = i, and N/M the
    plate's subsampling factor; where some site lies outside it (a global latent), one
    weight per particle for the whole model, exactly Pyro's ``RenyiELBO(alpha=0)``, whose
    loss this then equals. Other scales and masks act inside the weights.

    L_1 is the ELBO (eq. 2) and L_K increases to log p(x) as K grows, so ``loss`` is the
    IWAE bound, not the ELBO. Per datapoint, the minibatch estimate is unbiased for the
    full-data L_K (a sum over datapoints); with a global latent and a subsampled data plate
    it is not (the logsumexp of a scaled minibatch sum is not unbiased for that of the full
    sum); without subsampling it is the bound itself. The gradient is the reparameterised
    gradient of L_K, sum_k w_k grad log w_k with normalised weights w_k = softmax_k(log w_k).
    See :class:`~pyro_vae.estimators.dreg.DReG_ELBO` for a lower-variance encoder gradient.
    """

    name = "iwae"
    target = "iwae"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        log_w = log_weights(model_trace, guide_trace, layout)
        log_mean_w = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
        bound = layout.scale * log_mean_w.sum()
        return bound, bound
