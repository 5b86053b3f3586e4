"""The score-function (REINFORCE) estimator, with leave-one-out baselines."""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.poutine import Trace

from .base import (
    EstimatorError,
    Layout,
    ParticleELBO,
    log_density,
    log_weights,
    register,
    sample_sites,
    score_signals,
    site_plates,
)

BASELINES = ("none", "batch", "particles")


def per_unit_signals(guide_trace: Trace, layout: Layout) -> bool:
    """Whether every latent guide site lies in exactly the unit plates (a VAE's z in the
    data plate): then Pyro's signal for it is its unit's log-weight."""
    names = {f.name for f in layout.units}
    return layout.local and all(
        set(site_plates(site)) == names for _, site in sample_sites(guide_trace, observed=False)
    )


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

    On any Pyro model (:mod:`~pyro_vae.estimators.base`): a site's learning signal is
    Pyro's, the scaled log p - log q of every site summed over the plates the site is not
    in (partial Rao-Blackwellisation by plates; for a site in exactly the data plate, its
    datapoint's log-weight, as above), so ``baseline=none`` is ``Trace_ELBO`` for every
    model it takes; ``batch`` leaves out the site's own index of the data plate, and needs
    a data plate that every site lies in (a model with a global latent has none: use
    ``particles``).
    """

    name = "score_function"
    reparameterized = False

    def __init__(
        self, num_particles: int = 1, baseline: str = "batch", max_plate_nesting: int | None = None
    ):
        super().__init__(num_particles, max_plate_nesting)
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
        layout = self.layout(model_trace, guide_trace)
        if not per_unit_signals(guide_trace, layout):
            return self._bysite_plates(model_trace, guide_trace, layout)
        scale = layout.scale
        log_p = log_density(model_trace, layout)
        log_q = log_density(guide_trace, layout)
        log_w = (log_p - log_q).detach()
        score = log_density(guide_trace, layout, score=True)
        bound = scale * log_w.mean(0).sum()
        surrogate = scale * (log_p + (log_w - self._baseline(log_w)) * score).mean(0).sum()
        return bound, surrogate

    def _bysite_plates(
        self, model_trace: Trace, guide_trace: Trace, layout: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each site's signal from the plates it lies in (Pyro's ``Trace_ELBO``)."""
        num_particles = layout.num_particles
        log_p = log_density(model_trace, layout)
        bound = layout.scale * log_weights(model_trace, guide_trace, layout).detach().mean(0).sum()
        surrogate = layout.scale * log_p.mean(0).sum()
        for name, site, signal in score_signals(model_trace, guide_trace):
            signal = signal.expand(site["fn"].batch_shape)
            centred = signal - self._site_baseline(signal, name, layout)
            score = site["score_parts"].score_function
            surrogate = surrogate + (centred * score).sum() / num_particles
        return bound, surrogate

    def _site_baseline(self, signal: torch.Tensor, name: str, layout: Layout) -> Any:
        """The baseline of a site's signal ([L, ...] over its batch shape): leave-one-out
        over the particles, or over the data plate's indices (``batch``)."""
        if self.baseline == "none":
            return 0.0
        if self.baseline == "particles":
            return self._baseline(signal)
        if not layout.local:
            raise EstimatorError(
                f"{{key}}=batch leaves out a datapoint of the data plate, but no plate holds "
                f"every sample site of this model (site {name!r} has a signal shared by "
                "the whole model: a global latent); use {key}=particles with "
                "num_particles >= 2, or {key}=none",
                "baseline",
            )
        dims = [f.dim for f in layout.units]
        n = math.prod(signal.shape[d] for d in dims)
        if n < 2:
            raise EstimatorError(
                f"{{key}}=batch needs at least 2 datapoints per minibatch, got {n}", "baseline"
            )
        return (signal.sum(dim=dims, keepdim=True) - signal) / (n - 1)
