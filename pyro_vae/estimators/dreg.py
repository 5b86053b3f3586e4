"""Doubly reparameterised gradients of the IWAE bound (Tucker, Lawson, Gu & Maddison 2018)."""

from __future__ import annotations

import math

import torch
from pyro.poutine import Trace

from .base import ParticleELBO, log_weights, plate_scale, register, sample_sites


@register("dreg")
class DReG_ELBO(ParticleELBO):
    """The IWAE bound L_K (see :class:`~pyro_vae.estimators.iwae.IWAE_ELBO`) with the
    doubly reparameterised encoder gradient, K = ``num_particles``::

        grad_theta L_K ~= (N/M) sum_i sum_k w_ik grad_theta log w_ik
        grad_phi   L_K ~= (N/M) sum_i sum_k w_ik^2 d log w_ik/dz_ik * dz_ik/dphi

    with w_ik = softmax_k(log w_ik), log w = log p(x, z) - log q(z|x). The encoder term is
    the IWAE gradient with its score-function part rewritten by a second
    reparameterisation: unbiased for grad_phi L_K, and its signal-to-noise ratio does not
    decay with K as IWAE's does (Rainforth et al. 2018). At K = 1 it equals
    :class:`~pyro_vae.estimators.stl.STL_ELBO`.

    How the surrogate gets the w^2 weights without knowing which parameters belong to the
    encoder: sum_k w_k log w_k (log q through the sampling path only) has the right
    decoder gradient and the encoder path weighted by w_k; the term
    sum_k (w_k^2 - w_k) * g_k . z_k, with g_k = d log w_k/dz_k held fixed, moves that weight
    to w_k^2 and has no decoder gradient, since z does not depend on theta. It costs one
    extra backward pass from log w to z. Assumes reparameterised latent sites and that
    z_ik enters only log w_ik (one datapoint, one particle), as in this model.
    """

    name = "dreg"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scale = plate_scale(model_trace, guide_trace)
        log_w = log_weights(model_trace, guide_trace, path_only=True)
        bound = scale * (torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])).sum()
        w = torch.softmax(log_w.detach(), dim=0)
        surrogate = scale * (w * log_w).sum()
        if not log_w.requires_grad:  # evaluation without gradients
            return bound, surrogate
        sites = [s for _, s in sample_sites(guide_trace, observed=False)]
        sites = [s for s in sites if s["value"].requires_grad]
        grads = torch.autograd.grad(log_w.sum(), [s["value"] for s in sites], retain_graph=True)
        for site, g in zip(sites, grads, strict=True):
            extra = (w**2 - w).reshape(w.shape + (1,) * len(site["fn"].event_shape))
            surrogate = surrogate + scale * (extra * g * site["value"]).sum()
        return bound, surrogate
