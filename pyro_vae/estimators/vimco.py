"""VIMCO: multi-sample score-function gradients of the IWAE bound (Mnih & Rezende 2016)."""

from __future__ import annotations

import math

import torch
from pyro.poutine import Trace

from .base import EstimatorError, ParticleELBO, log_density, register


@register("vimco")
class VIMCO_ELBO(ParticleELBO):
    """The IWAE bound L_K (see :class:`~pyro_vae.estimators.iwae.IWAE_ELBO`) with the
    score-function gradient of Mnih & Rezende (2016), K = ``num_particles`` >= 2 samples
    z_1..z_K ~ q(z | x_i) per datapoint, drawn without a pathwise derivative::

        log w_j   = log p(x_i, z_j) - log q(z_j | x_i)
        L         = log (1/K) sum_k w_k                              (the bound, per datapoint)
        L_{-j}    = log (1/K) (sum_{k != j} w_k + w^_{-j}),
                    log w^_{-j} = (1/(K-1)) sum_{k != j} log w_k    (geometric-mean variant)
        w~_j      = w_j / sum_k w_k

        grad L_K ~= (N/M) sum_i [ sum_j (L - L_{-j}) grad_phi log q(z_j | x_i)
                                  + sum_j w~_j grad log w_j ]

    z is held fixed in the second term (no reparameterisation), so it is the gradient of
    log w_j through theta (log p) and through phi at fixed z (-log q). The per-sample
    learning signal L - L_{-j} is L minus a baseline that does not depend on z_j (the
    bound with z_j's weight replaced by the geometric mean of the others'), which keeps
    the estimator unbiased for grad L_K and centres each sample's signal on what the other
    K - 1 samples predict. Each datapoint's scores are multiplied by its own signals only.
    Works with any guide, reparameterisable or not (discrete latents included). The units
    i (one datapoint, or the whole model where a latent is global) and the scales are
    IWAE's (:class:`~pyro_vae.estimators.iwae.IWAE_ELBO`); the score multiplies the
    unscaled log q the samples were drawn from.
    """

    name = "vimco"
    target = "iwae"
    reparameterized = False

    def __init__(self, num_particles: int = 2, max_plate_nesting: int | None = None):
        super().__init__(num_particles, max_plate_nesting)  # refuses a non-integer
        if num_particles < 2:
            raise EstimatorError(
                "estimator=vimco needs num_particles >= 2 (the leave-one-out baseline of each "
                f"sample is built from the other samples), got num_particles={num_particles}; "
                "try num_particles=5"
            )

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        scale = layout.scale
        log_w = log_density(model_trace, layout) - log_density(guide_trace, layout)  # z fixed
        log_q = log_density(guide_trace, layout, score=True)
        lw = log_w.detach()
        k = lw.shape[0]
        bound = torch.logsumexp(lw, dim=0) - math.log(k)  # [M]
        # Row j of ``swapped`` is log w with its j-th entry replaced by the mean of the others.
        loo = (lw.sum(0, keepdim=True) - lw) / (k - 1)  # [K, M]
        diagonal = torch.eye(k, dtype=torch.bool, device=lw.device).unsqueeze(-1)  # [K, K, 1]
        swapped = torch.where(diagonal, loo.unsqueeze(1), lw.unsqueeze(0))  # [K(j), K(k), M]
        bound_without = torch.logsumexp(swapped, dim=1) - math.log(k)  # L_{-j}: [K, M]
        signal = bound - bound_without
        w = torch.softmax(lw, dim=0)
        surrogate = scale * (signal * log_q + w * log_w).sum()
        return scale * bound.sum(), surrogate
