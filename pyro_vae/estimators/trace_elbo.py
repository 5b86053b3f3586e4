"""Pyro's own Trace_ELBO, selectable by name: the paper's estimator A by Pyro's route."""

from __future__ import annotations

from pyro.infer import ELBO, Trace_ELBO

from .base import MAX_PLATE_NESTING, register


@register("trace_elbo")
def trace_elbo(num_particles: int = 1) -> ELBO:
    """Pyro's :class:`~pyro.infer.Trace_ELBO`: estimator A (eq. 6), L particles vectorised."""
    return Trace_ELBO(
        num_particles=num_particles,
        vectorize_particles=True,
        max_plate_nesting=MAX_PLATE_NESTING,
    )
