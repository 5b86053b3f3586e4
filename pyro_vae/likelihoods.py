"""Likelihoods p_theta(x|z): how the decoder's output becomes a distribution over x.

A likelihood is a callable ``likelihood(output) -> distribution`` with event shape ``[D]``,
plus ``mean(output)``, the decoder mean E[x|z] that the figures draw. The decoder network
computes ``output`` from z; keeping the two apart lets any network (the paper's MLP or a
user's own ``nn.Module``) be paired with any likelihood. A plain callable that returns a
Pyro distribution works as a likelihood too: its mean is then the distribution's ``mean``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch

from .errors import refuse


class Likelihood:
    """Base class: ``self(output)`` is p(x|z) for the decoder's ``output``."""

    #: The name ``likelihood=`` selects it by.
    name = "likelihood"

    def __call__(self, output: Any) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, output: Any) -> torch.Tensor:
        return self(output).mean

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Bernoulli(Likelihood):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(y_d)) with ``output`` the logits y (appendix C.1).

    The log-density is evaluated from the logits (binary cross-entropy with logits), which
    stays finite where sigmoid(y) rounds to 0 or 1. ``validate_args=False``: grey-level
    targets (``dataset.binarize=none``) are a common relaxation of the Bernoulli likelihood
    and must not be refused by the support check.
    """

    name = "bernoulli"

    def __call__(self, output: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=output, validate_args=False).to_event(1)

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)


class Gaussian(Likelihood):
    """p(x|z) = N(x; mu, diag sigma^2) with ``output`` = (mu, log sigma^2) (appendix C.2).

    The paper's Gaussian decoder (:class:`~pyro_vae.networks.GaussianDecoder`) bounds mu to
    (0, 1) with a sigmoid and floors the variance softly; this maps its output to the
    distribution.
    """

    name = "gaussian"

    def __call__(self, output: tuple[torch.Tensor, torch.Tensor]) -> dist.TorchDistribution:
        loc, log_var = output
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)

    def mean(self, output: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return output[0]


LIKELIHOODS: dict[str, type[Likelihood]] = {"bernoulli": Bernoulli, "gaussian": Gaussian}

LikelihoodLike = Likelihood | str | Callable[[Any], dist.TorchDistribution]


def get_likelihood(likelihood: LikelihoodLike) -> Likelihood | Callable[[Any], Any]:
    """A likelihood by name (``"bernoulli"``, ``"gaussian"``), or the object/callable given."""
    if isinstance(likelihood, str):
        if likelihood not in LIKELIHOODS:
            raise refuse("likelihood", likelihood, f"one of {list(LIKELIHOODS)}")
        return LIKELIHOODS[likelihood]()
    if not callable(likelihood):
        raise refuse(
            "likelihood", likelihood, "a name, a Likelihood, or a callable returning a distribution"
        )
    return likelihood
