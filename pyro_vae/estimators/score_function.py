"""The score-function (REINFORCE) estimator, with leave-one-out baselines."""

from __future__ import annotations

import torch
from pyro.poutine import Trace

from .base import EstimatorError, ParticleELBO, log_density, particle_shape, plate_scale, register

BASELINES = ("none", "batch", "particles")


@register("score_function")
class ScoreFunction_ELBO(ParticleELBO):
    """The ELBO (eq. 2, at the scale of eq. 8) with the REINFORCE gradient: z ~ q(z|x) is
    sampled without a pathwise derivative (the Normal site treated as non-reparameterised)::

        grad ~= (N/M) sum_i (1/L) sum_l [grad_theta log p(x_i, z_il)
                                         + (log w_il - b_il) grad_phi log q(z_il | x_i)]

    with log w = log p(x, z) - log q(z|x). Each datapoint's score is multiplied by its own
    log-weight only (per-datapoint Rao-Blackwellisation through the data plate, as Pyro does).
    The baseline b must not depend on z_il, which keeps the estimator unbiased:

    - ``none``: b = 0. Then this is exactly Pyro's ``Trace_ELBO`` with the site made
      non-reparameterised (tests compare them under the same noise).
    - ``batch``: b_il = the mean log-weight of the other datapoints of the minibatch
      (leave-one-out; works with L = 1; needs M >= 2).
    - ``particles``: b_il = the mean log-weight of the other particles of the same
      datapoint (leave-one-out, Kool et al. 2019; needs L >= 2): a per-datapoint baseline.

    Pyro's decaying-average baseline (``TraceGraph_ELBO``) keeps its state in the global
    param store under a name shared by every model; these stateless baselines need none.
    """

    name = "score_function"
    reparameterized = False

    def __init__(self, num_particles: int = 1, baseline: str = "batch"):
        super().__init__(num_particles)
        if baseline not in BASELINES:
            raise EstimatorError.refuse("baseline", baseline, f"one of {list(BASELINES)}")
        if baseline == "particles" and num_particles < 2:
            raise EstimatorError(
                f"{{key}}=particles needs num_particles >= 2, got {num_particles}; "
                "use {key}=batch with one particle",
                "baseline",
            )
        self.baseline = baseline

    def _baseline(self, log_w: torch.Tensor) -> torch.Tensor | float:
        if self.baseline == "none":
            return 0.0
        dim = 1 if self.baseline == "batch" else 0
        n = log_w.shape[dim]
        if n < 2:
            raise EstimatorError(
                f"{{key}}={self.baseline} needs at least 2 "
                f"{'datapoints per minibatch' if dim else 'particles'}, got {n}",
                "baseline",
            )
        return (log_w.sum(dim, keepdim=True) - log_w) / (n - 1)

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scale = plate_scale(model_trace, guide_trace)
        shape = particle_shape(guide_trace)
        log_p = log_density(model_trace, shape)
        log_q = log_density(guide_trace, shape)
        log_w = (log_p - log_q).detach()
        bound = scale * log_w.mean(0).sum()
        surrogate = scale * (log_p + (log_w - self._baseline(log_w)) * log_q).mean(0).sum()
        return bound, surrogate
