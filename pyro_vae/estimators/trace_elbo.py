"""Pyro's own Trace_ELBO, selectable by name: the paper's estimator A by Pyro's route."""

from __future__ import annotations

from pyro.infer import ELBO, Trace_ELBO

from .base import GuessedNesting, pyro_plate_nesting, register


class _Trace_ELBO(GuessedNesting, Trace_ELBO):
    pass


@register("trace_elbo")
def trace_elbo(num_particles: int = 1, max_plate_nesting: int | None = None) -> ELBO:
    """Pyro's :class:`~pyro.infer.Trace_ELBO`: estimator A (eq. 6), L particles vectorised;
    ``max_plate_nesting`` guessed as Pyro guesses it (without advancing the random state)
    unless given."""
    return _Trace_ELBO(
        num_particles=num_particles,
        vectorize_particles=True,
        max_plate_nesting=pyro_plate_nesting(max_plate_nesting),
    )
