"""Sticking the landing (Roeder, Wu & Duvenaud 2017), for the ELBO and for the IWAE bound."""

from __future__ import annotations

import math

import torch
from pyro.poutine import Trace

from .base import ParticleELBO, log_weights, register


@register("stl")
class STL_ELBO(ParticleELBO):
    """The ELBO of eq. 8, estimated as by A, with the path-derivative encoder gradient::

        grad_phi ~= (N/M) sum_i (1/L) sum_l d[log p(x_i, z) - log q_phi'(z | x_i)]/dz
                    * dz_il/dphi   at phi' = phi held fixed

    The total derivative of A's integrand with respect to phi is this path term plus the
    score term -d log q_phi(z)/dphi at fixed z, whose expectation is zero; STL drops it,
    so the estimator stays unbiased and its variance vanishes where q equals the exact
    posterior. The decoder's gradient and the value are those of estimator A.

    With several latent sites z = (z_1, ..., z_S) (a hierarchical guide q(z_1|x)
    q(z_2|z_1) ...), dz/dphi is the total derivative of the whole reparameterised draw
    (z_2 moves with phi directly and through z_1), and only the direct dependence of
    log q_phi on phi at the fixed point z is dropped: the guide is run once more at z held
    fixed (:meth:`~pyro_vae.estimators.base.ParticleELBO.fixed_point`), and that run's
    log q is the score term subtracted. Assumes reparameterised latent sites. Pyro has no
    such estimator.
    """

    name = "stl"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        fixed = self.fixed_traces(guide_trace)
        log_w = log_weights(
            model_trace, guide_trace, layout, path_only=True, fixed=fixed and fixed[0]
        )
        bound = layout.scale * log_w.mean(0).sum()
        return bound, bound


@register("iwae_stl")
class IWAE_STL_ELBO(ParticleELBO):
    """The IWAE bound L_K (:class:`~pyro_vae.estimators.iwae.IWAE_ELBO`, its units and
    scales) with the score term of q dropped from the encoder gradient ("STL" in Tucker et
    al. 2018's comparison with DReG, after Roeder et al. 2017)::

        grad ~= (N/M) sum_u sum_k w~_uk grad log w'_uk,   w~_uk = softmax_k(log w_uk),
        log w' = log p(x, z) - log q_phi'(z | x)   at phi' = phi held fixed

    (several latent sites: as :class:`STL_ELBO`). The value and the decoder's gradient are
    IWAE's. The encoder's is biased for grad_phi L_K when K > 1 (the dropped term,
    sum_k w~_k d log q/dphi, no longer has mean zero under the importance weights; DReG is
    the unbiased correction); at K = 1 it is ``stl``. Assumes reparameterised latent sites.
    """

    name = "iwae_stl"
    target = "iwae"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        fixed = self.fixed_traces(guide_trace)
        log_w = log_weights(
            model_trace, guide_trace, layout, path_only=True, fixed=fixed and fixed[0]
        )
        log_mean_w = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
        bound = layout.scale * log_mean_w.sum()
        return bound, bound
