"""Sticking the landing (Roeder, Wu & Duvenaud 2017), for the ELBO and for the IWAE bound."""

from __future__ import annotations

import math

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


@register("iwae_stl")
class IWAE_STL_ELBO(ParticleELBO):
    """The IWAE bound L_K (:class:`~pyro_vae.estimators.iwae.IWAE_ELBO`) with the score term
    of q dropped from the encoder gradient ("STL" in Tucker et al. 2018's comparison with
    DReG, after Roeder et al. 2017)::

        grad ~= (N/M) sum_i sum_k w~_ik grad log w'_ik,   w~_ik = softmax_k(log w_ik),
        log w' = log p(x, z) - log q_phi'(z | x)   at phi' = phi held fixed

    The value and the decoder's gradient are IWAE's. The encoder's is biased for grad_phi L_K
    when K > 1 (the dropped term, sum_k w~_k d log q/dphi, no longer has mean zero under the
    importance weights; DReG is the unbiased correction); at K = 1 it is ``stl``.
    Assumes reparameterised latent sites.
    """

    name = "iwae_stl"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_w = log_weights(model_trace, guide_trace, path_only=True)
        log_mean_w = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
        bound = plate_scale(model_trace, guide_trace) * log_mean_w.sum()
        return bound, bound
