"""Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019), wake-phi form."""

from __future__ import annotations

import math

import torch
from pyro.poutine import Trace

from .base import EstimatorError, ParticleELBO, log_density, register


@register("rws")
class RWS_ELBO(ParticleELBO):
    """Reweighted wake-sleep with K = ``num_particles`` >= 2 samples z_1..z_K ~ q(z | x_i)
    per unit, drawn without a pathwise derivative (any guide: discrete latents included)::

        log w_k = log p(x_i, z_k) - log q(z_k | x_i),   w~_k = w_k / sum_j w_j
        wake-theta:  grad_theta ~= (N/M) sum_i sum_k w~_k grad_theta log p(x_i, z_k)
        wake-phi:    grad_phi   ~= (N/M) sum_i sum_k w~_k grad_phi log q(z_k | x_i)

    The model's gradient is that of the IWAE bound L_K (:class:`~pyro_vae.estimators.iwae.
    IWAE_ELBO`; z does not depend on theta), unbiased. The guide's is not the gradient of
    any bound: it is the self-normalised importance-sampling estimate of
    E_{p(z|x)}[grad_phi log q(z | x)] = -grad_phi KL(p(z | x) || q(z | x)), biased for
    finite K (consistent as K grows), so q is fitted to the posterior in the inclusive KL.
    ``loss`` is minus L_K (what the theta-step ascends), at full-data scale.

    This is Pyro's :class:`~pyro.infer.ReweightedWakeSleep` with ``insomnia=1`` (wake-phi
    only), written on this package's traces rather than wrapped: Pyro's keeps one weight
    per particle for the whole model (the minibatch's log-densities summed: "mini-batch
    training is not supported yet", its docstring says) and returns two losses; here the
    units and scales are IWAE's (:class:`~pyro_vae.estimators.base.Layout`: one weight per
    datapoint, N/M outside) and the two gradients are one surrogate's, so ``SVI`` and
    ``pyro-vae train`` take it as any ELBO. Where Pyro's weights the same units (one
    datapoint, or a global latent) the gradients are equal under the same noise
    (``tests/test_discrete_estimators.py``). The sleep-phi phase (``insomnia < 1``) needs the
    guide to take the model's samples as observations (Pyro's ``observations=`` keyword),
    which :class:`~pyro_vae.VAE`'s guide does not; Le et al. (2019) found wake-phi the
    better of the two, and ``method=wake_sleep`` trains with a sleep phase.
    """

    name = "rws"
    reparameterized = False
    target = "rws"

    def __init__(self, num_particles: int = 5, max_plate_nesting: int | None = None):
        super().__init__(num_particles, max_plate_nesting)  # refuses a non-integer
        if num_particles < 2:
            raise EstimatorError(
                "estimator=rws needs num_particles >= 2 (its weights are self-normalised over "
                f"the particles), got num_particles={num_particles}; try num_particles=5"
            )

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        log_p = log_density(model_trace, layout)
        log_q = log_density(guide_trace, layout)
        log_w = (log_p - log_q).detach()
        bound = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
        w = torch.softmax(log_w, dim=0)
        surrogate = layout.scale * (w * (log_p + log_q)).sum()
        return layout.scale * bound.sum(), surrogate
