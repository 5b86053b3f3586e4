"""Doubly reparameterised gradients of the IWAE bound (Tucker, Lawson, Gu & Maddison 2018)."""

from __future__ import annotations

import math

import torch
from pyro.poutine import Trace

from .base import ParticleELBO, log_density, log_weights, register, sample_sites


@register("dreg")
class DReG_ELBO(ParticleELBO):
    """The IWAE bound L_K (see :class:`~pyro_vae.estimators.iwae.IWAE_ELBO`: its units u,
    a datapoint or the whole model, and scales) with the doubly reparameterised encoder
    gradient, K = ``num_particles``::

        grad_theta L_K ~= (N/M) sum_u sum_k w_uk grad_theta log w_uk
        grad_phi   L_K ~= (N/M) sum_u sum_k w_uk^2 d log w_uk/dz_uk * dz_uk/dphi

    with w_uk = softmax_k(log w_uk), log w = log p(x, z) - log q(z|x). The encoder term is
    the IWAE gradient with its score-function part rewritten by a second
    reparameterisation: unbiased for grad_phi L_K, and its signal-to-noise ratio does not
    decay with K as IWAE's does (Rainforth et al. 2018). At K = 1 it equals
    :class:`~pyro_vae.estimators.stl.STL_ELBO`.

    **Several latent sites** (a hierarchical guide, Tucker et al. 2019 appendix; Bauer &
    Mnih 2021): z = (z_1, ..., z_S) = T_phi(eps) is one reparameterised draw of the joint
    q_phi(z|x) = prod_s q_phi(z_s | z_<s, x), and the identity behind DReG,
    E_q[f(z) d log q_phi(z)/dphi] = E_eps[df/dz(T_phi(eps)) . dT_phi/dphi] for f free of
    phi, holds for the joint as for one site. So

        grad_phi L_K ~= (N/M) sum_u sum_k w_uk^2 sum_s (d log w_uk / dz_uks) . (dz_uks / dphi)

    where d log w/dz_s is the *partial* derivative at the point z (phi held fixed, the other
    sites' values held fixed: q(z_2 | z_1)'s dependence on z_1 counts in d/dz_1) and
    dz_s/dphi is the *total* derivative of the draw (z_2 moves with phi directly and
    through z_1). Autograd through the sampled values gives the total derivative in both
    places, so the partials come from the model and guide run once more at the values
    held fixed as leaf tensors (:meth:`~pyro_vae.estimators.base.ParticleELBO.fixed_point`),
    and log q's score term d log q/dphi at fixed z from that guide run too.

    How the surrogate gets the w^2 weights without knowing which parameters belong to the
    encoder: sum_k w_k log w_k (log q through the sampling path only) has the right
    decoder gradient and the encoder path weighted by w_k; the term
    sum_k sum_s (w_k^2 - w_k) * g_ks . z_ks, with g_ks = d log w_k/dz_ks held fixed, moves
    that weight to w_k^2 and has no decoder gradient, since z does not depend on theta. It
    costs one extra backward pass from log w to z (and, for several sites, one extra run of
    the model and guide). Assumes reparameterised latent sites, a guide whose draws do not
    depend on the model's parameters, and that z_uk enters only log w_uk (true by the
    construction of the units).
    """

    name = "dreg"
    target = "iwae"

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        scale = layout.scale
        latent = sample_sites(guide_trace, observed=False)
        fixed = self.fixed_traces(guide_trace, with_model=True)
        log_w = log_weights(
            model_trace, guide_trace, layout, path_only=True, fixed=fixed and fixed[0]
        )
        bound = scale * (torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])).sum()
        w = torch.softmax(log_w.detach(), dim=0)
        surrogate = scale * (w * log_w).sum()
        if not log_w.requires_grad or not latent:  # no gradient to take, or no latent site
            return bound, surrogate
        if fixed is not None:
            guide_fixed, model_fixed = fixed
            log_w_fixed = log_density(model_fixed, layout) - log_density(guide_fixed, layout)
            sites = [s for _, s in latent]
            leaves = [guide_fixed.nodes[name]["value"] for name, _ in latent]
            # retained: the fixed guide's log q is also the score term inside log_w
            grads = torch.autograd.grad(
                log_w_fixed.sum(), leaves, allow_unused=True, retain_graph=True
            )
        else:
            sites = [s for _, s in latent if s["value"].requires_grad]
            grads = torch.autograd.grad(log_w.sum(), [s["value"] for s in sites], retain_graph=True)
        for site, g in zip(sites, grads, strict=True):
            if g is None:
                continue
            extra = layout.expand_to_site(w**2 - w, site)
            surrogate = surrogate + scale * (extra * g * site["value"]).sum()
        return bound, surrogate
