"""The straight-through Gumbel-softmax estimator (Jang et al. 2017; Bengio et al. 2013)."""

from __future__ import annotations

from .base import register
from .gumbel import GumbelSoftmax_ELBO


@register("gumbel_st")
class GumbelStraightThrough_ELBO(GumbelSoftmax_ELBO):
    """The discrete model's ELBO with straight-through Gumbel-softmax gradients (Jang et al.
    2017, sec. 2.2): each discrete latent site of the guide is drawn as the discretised
    Concrete sample, b = H(z~) (one-hot argmax, or 1[z~ > 1/2] for a unit), so the model
    and the densities see discrete values and the value is an unbiased estimate of the
    discrete ELBO; the backward pass uses the relaxed sample's gradient, db/dl := dz~/dl
    (Pyro's ``RelaxedBernoulliStraightThrough`` and ``RelaxedOneHotCategoricalStraightThrough``)::

        f(b) = log p(x, b) - log q(b | x),   b = H(z~),  z~ = sigma((l + noise) / lambda)
        grad ~= (N/M) sum_i (1/L) sum_l [ (df/db)(b) dz~/dl + grad f(b) at fixed b ]

    with df/db the derivative of f's form linear in each unit (``log q(b) = sum b l -
    softplus(l)``, ``sum b log_softmax(l)``: :class:`~pyro_vae.discrete.BernoulliVector`,
    :class:`~pyro_vae.discrete.OneHotVector`), the decoder differentiated at the discrete
    b. This treats f as if it were linear between the corners of the cube: **biased** for
    the ELBO's gradient at any temperature (lower temperatures make the relaxed Jacobian
    spikier, higher ones the mismatch larger), but cheap (one evaluation) and of low
    variance. The temperature and its annealing are :class:`~pyro_vae.estimators.gumbel.
    GumbelSoftmax_ELBO`'s; ``prior_temperature`` is unused (the model's densities are the
    discrete ones).
    """

    name = "gumbel_st"
    straight_through = True
