"""Latent families: what a VAE's z is, Gaussian (the paper's), Bernoulli or categorical.

A latent family is the set of pieces that go together: the encoder's head (a Gaussian's
(loc, scale), or logits), the guide family q(z|x) that reads it
(:mod:`pyro_vae.guides`), the prior p(z) over the same space (:mod:`pyro_vae.priors`),
and, for a stack of stochastic layers (:mod:`pyro_vae.layers`), the conditionals between
layers. The guide family names its latent family (:attr:`BernoulliGuide.latent`), and
:meth:`pyro_vae.VAE.build` builds the rest from it:

- ``gaussian`` (the default, :class:`~pyro_vae.guides.DiagonalGaussian` and its kin): z in
  R^d, the encoder's (loc, scale), a prior on R^d, Gaussian conditionals.
- ``bernoulli`` (:class:`BernoulliGuide`): z in {0, 1}^d, a sigmoid belief network (Neal
  1992) as Mnih & Gregor (2014) train it: the encoder gives q's logits
  (:class:`LogitsEncoder`: ``hidden_dims=[]`` is their linear q(h|x)), the prior is
  :class:`BernoulliPrior` (fixed at p = 1/2, or learnable: the SBN's top-layer biases),
  the decoder gives p(x|z)'s logits from the binary z (``hidden_dims=[]``: linear), and
  upper layers are sigmoid layers (:class:`ConditionalBernoulli`) in both directions.
- ``categorical`` (:class:`CategoricalGuide`): z is ``latent_dim / num_categories``
  one-hot variables of ``num_categories`` values each, flattened (Jang et al. 2017's 20 x 10
  VAE: ``latent_dim=200, num_categories=10``), with :class:`CategoricalPrior` (uniform, or
  learnable) and softmax conditionals between layers.

The discrete families have no ``rsample``: they train with the score-function family
(``score_function``, ``nvil``, ``vimco``), ``rws``, the relaxations (``gumbel``,
``gumbel_st``), ``rebar`` and ``relax``; ``enum`` sums small ones exactly. In configuration,
``latent=bernoulli`` (or ``categorical``) chooses the guide and prior together
(``conf/latent/``); ``+experiment=sbn`` is Mnih & Gregor's 200-unit SBN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from .discrete import BernoulliVector, OneHotVector, discrete_site
from .errors import ArgumentError, refuse
from .guides import GUIDES, GuideFamily, GuideLike
from .networks import mlp_trunk
from .priors import Prior
from .targets import import_target

#: The latent families, by the name a guide family gives (``GuideFamily.latent``).
LATENT_FAMILIES = ("gaussian", "bernoulli", "categorical")


def _out_dim(in_dim: int, hidden_dims: Sequence[int]) -> int:
    return hidden_dims[-1] if hidden_dims else in_dim


class LogitsEncoder(nn.Module):
    """x -> logits [..., out_dim]: ``hidden_dims`` layers of ``activation`` (none: a linear
    map, Mnih & Gregor's linear q(h|x)), then a linear map to the logits."""

    def __init__(self, x_dim: int, out_dim: int, hidden_dims: Sequence[int], activation: str):
        super().__init__()
        self.trunk = mlp_trunk(x_dim, hidden_dims, activation)
        self.logits = nn.Linear(_out_dim(x_dim, hidden_dims), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.trunk(x))


def _logits(encoder_output: Any, family: str, width: int) -> torch.Tensor:
    if not isinstance(encoder_output, torch.Tensor) or encoder_output.shape[-1] != width:
        got = (
            f"a tensor of shape {list(encoder_output.shape)}"
            if isinstance(encoder_output, torch.Tensor)
            else type(encoder_output).__name__
        )
        raise ArgumentError(
            f"guide={family} takes an encoder that returns logits [M, {width}] (a "
            f"pyro_vae.latents.LogitsEncoder); this encoder returned {got}"
        )
    return encoder_output


def _num_categories(latent_dim: int, num_categories: Any) -> int:
    if (
        isinstance(num_categories, bool)
        or not isinstance(num_categories, int)
        or num_categories < 2
    ):
        raise refuse("num_categories", num_categories, "an integer >= 2")
    if latent_dim % num_categories:
        raise refuse(
            "num_categories",
            num_categories,
            f"a divisor of latent_dim={latent_dim} (latent_dim = variables x categories)",
        )
    return num_categories


class BernoulliGuide(GuideFamily):
    """q(z|x) = prod_j Bernoulli(z_j; sigmoid(l_j(x))), z in {0, 1}^d: the encoder's output
    is the logits l(x) [M, d] (:class:`LogitsEncoder`). No parameters of its own; no
    rsample (the score-function estimators, ``rws``, the relaxations and ``rebar``/``relax``
    train it)."""

    name = "bernoulli"
    latent = "bernoulli"
    reparameterized = False
    closed_form_kl = False
    local_constraints: ClassVar[dict[str, Any]] = {"logits": constraints.real}

    def encoder_width(self) -> int:
        """The number of values the encoder gives per datapoint."""
        return self.latent_dim

    def forward(self, encoder_output: Any, x: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliVector(_logits(encoder_output, self.name, self.latent_dim))

    def local_parameters(self, encoder_output: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": _logits(encoder_output, self.name, self.latent_dim)}

    def from_local(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        return BernoulliVector(params["logits"])


class CategoricalGuide(GuideFamily):
    """q(z|x) = prod_i OneHotCategorical(z_i; softmax(l_i(x))) over n = latent_dim /
    ``num_categories`` variables, z their one-hot vectors flattened (latent_dim values);
    the encoder gives the n x k logits flattened, [M, latent_dim]."""

    name = "categorical"
    latent = "categorical"
    reparameterized = False
    closed_form_kl = False
    local_constraints: ClassVar[dict[str, Any]] = {"logits": constraints.real}

    def __init__(self, latent_dim: int, num_categories: int = 10):
        super().__init__(latent_dim)
        self.num_categories = _num_categories(latent_dim, num_categories)
        self.num_variables = latent_dim // self.num_categories

    def encoder_width(self) -> int:
        return self.latent_dim

    def _grouped(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.reshape(*logits.shape[:-1], self.num_variables, self.num_categories)

    def forward(self, encoder_output: Any, x: torch.Tensor) -> dist.TorchDistribution:
        return OneHotVector(self._grouped(_logits(encoder_output, self.name, self.latent_dim)))

    def local_parameters(self, encoder_output: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": _logits(encoder_output, self.name, self.latent_dim)}

    def from_local(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        return OneHotVector(self._grouped(params["logits"]))


# The shipped names guide=bernoulli and guide=categorical (pyro_vae.guides.build_guide).
GUIDES.setdefault("bernoulli", BernoulliGuide)
GUIDES.setdefault("categorical", CategoricalGuide)


# -- priors ------------------------------------------------------------------------------


class BernoulliPrior(Prior):
    """p(z) = prod_j Bernoulli(z_j; p_j) over {0, 1}^latent_dim: ``probs`` a number or
    ``latent_dim`` numbers in (0, 1) (1/2 by default); ``learnable=True`` learns the logits
    per unit (a sigmoid belief network's top-layer biases, Mnih & Gregor 2014)."""

    name = "bernoulli"

    def __init__(self, latent_dim: int, probs: Any = 0.5, learnable: bool = False):
        super().__init__(latent_dim)
        if not isinstance(learnable, bool):
            raise refuse("learnable", learnable, "true or false")
        p = _values("probs", probs, (latent_dim,), f"latent_dim={latent_dim}")
        if not ((p > 0) & (p < 1)).all():
            raise refuse("probs", probs, "numbers in (0, 1)")
        self._hold("logits", torch.logit(p), constraints.real, learnable)

    def forward(self) -> dist.TorchDistribution:
        return BernoulliVector(self.logits)


class CategoricalPrior(Prior):
    """p(z) = prod_i OneHotCategorical(z_i; pi) over latent_dim / ``num_categories``
    one-hot variables (flattened, as :class:`CategoricalGuide`'s z): uniform by default;
    ``learnable=True`` learns each variable's logits."""

    name = "categorical"

    def __init__(self, latent_dim: int, num_categories: int = 10, learnable: bool = False):
        super().__init__(latent_dim)
        if not isinstance(learnable, bool):
            raise refuse("learnable", learnable, "true or false")
        k = _num_categories(latent_dim, num_categories)
        self.num_categories = k
        self._hold("logits", torch.zeros(latent_dim // k, k), constraints.real, learnable)

    def forward(self) -> dist.TorchDistribution:
        return OneHotVector(self.logits)


#: The priors over a discrete latent space.
DISCRETE_PRIORS = (BernoulliPrior, CategoricalPrior)


def _values(key: str, value: Any, shape: tuple[int, ...], where: str) -> torch.Tensor:
    expected = f"a number or a list of shape {list(shape)} ({where})"
    try:
        t = torch.as_tensor(value, dtype=torch.float32)
        if value is None or isinstance(value, bool) or not torch.isfinite(t).all():
            raise TypeError
        if t.shape not in (torch.Size([]), torch.Size(shape)):
            raise ValueError
        return t.expand(shape).clone()
    except (TypeError, ValueError, RuntimeError):
        raise refuse(key, value, expected) from None


# -- the family of a guide, and what goes with it -------------------------------------------


def latent_family(guide: GuideLike) -> str:
    """The latent family of ``guide`` (a family, a shipped name, a specification or None),
    read from its class without building it (no random draw): ``gaussian`` unless the
    class names another."""
    if guide is None:
        return "gaussian"
    if isinstance(guide, GuideFamily):
        cls: type = type(guide)
    elif not isinstance(guide, str | Mapping):
        return "gaussian"  # build_guide refuses it by name
    else:
        spec = {"name": guide} if isinstance(guide, str) else dict(guide)
        target = spec.get("_target_")
        if target is not None:
            try:
                cls = import_target(target, "_target_", "a GuideFamily subclass")
            except ArgumentError:
                return "gaussian"  # build_guide names the bad target
        else:
            cls = GUIDES.get(spec.get("name"), GuideFamily)
    return getattr(cls, "latent", "gaussian")


def num_categories_of(guide: GuideLike) -> int | None:
    """``num_categories`` of a categorical guide (object or specification), else None."""
    if isinstance(guide, CategoricalGuide):
        return guide.num_categories
    if isinstance(guide, Mapping):
        return guide.get("num_categories", 10)
    if latent_family(guide) == "categorical":
        return 10
    return None


def default_prior(family: str, latent_dim: int, num_categories: int | None = None) -> Prior:
    """The prior a latent family takes when none is given: N(0, I) (the caller's), a fixed
    Bernoulli(1/2), or the uniform categorical."""
    if family == "bernoulli":
        return BernoulliPrior(latent_dim)
    if family == "categorical":
        return CategoricalPrior(latent_dim, num_categories or 10)
    raise ArgumentError(f"no default prior here for latent family {family!r}")


def check_prior(family: str, prior: Prior, guide_name: str) -> None:
    """Refuse a prior over another space than the guide family's: a Gaussian q with a
    discrete prior, or a discrete q with a prior that is not of its family (N(0, I) under
    Bernoulli latents)."""
    found = discrete_site(prior())
    kind = None if found is None else found.kind
    allowed = {
        "gaussian": None,
        "bernoulli": "bernoulli",
        "categorical": "categorical",
    }[family]
    if kind == allowed:
        return
    space = {
        "gaussian": "R^d (prior=standard_normal, ...)",
        "bernoulli": "{0, 1}^d (prior=bernoulli, learnable_bernoulli)",
        "categorical": "one-hot variables (prior=categorical, learnable_categorical)",
    }
    where = {k: v.split(" (")[0] for k, v in space.items()}
    raise ArgumentError(
        f"{{key}}={getattr(prior, 'name', type(prior).__name__)} is over "
        f"{where[kind or 'gaussian']}, but guide={guide_name} puts q(z|x) on {where[family]}; "
        f"use a prior over {space[family]}",
        "prior",
    )


# -- conditionals between stochastic layers ------------------------------------------------


class ConditionalBernoulli(nn.Module):
    """prod_j Bernoulli(z'_j; sigmoid(l_j(z))) with an MLP from z (``hidden_dims=[]``: a
    sigmoid belief network's linear layer): a layer of a Bernoulli
    :class:`~pyro_vae.layers.LatentStack`."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: Sequence[int], activation: str):
        super().__init__()
        self.trunk = mlp_trunk(in_dim, hidden_dims, activation)
        self.logits = nn.Linear(_out_dim(in_dim, hidden_dims), out_dim)

    def distribution(self, z: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliVector(self.logits(self.trunk(z)))


class ConditionalCategorical(ConditionalBernoulli):
    """One-hot variables of ``num_categories`` values with softmax(logits(z)) for each: a
    layer of a categorical :class:`~pyro_vae.layers.LatentStack`."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int],
        activation: str,
        num_categories: int = 10,
    ):
        super().__init__(in_dim, out_dim, hidden_dims, activation)
        self.num_categories = _num_categories(out_dim, num_categories)

    def distribution(self, z: torch.Tensor) -> dist.TorchDistribution:
        logits = self.logits(self.trunk(z))
        k = self.num_categories
        return OneHotVector(logits.reshape(*logits.shape[:-1], logits.shape[-1] // k, k))


def conditional_layer(
    family: str, in_dim: int, out_dim: int, hidden_dims: Sequence[int], activation: str, **kw: Any
) -> nn.Module:
    """A discrete family's conditional between layers (of a
    :class:`~pyro_vae.layers.LatentStack`)."""
    if family == "bernoulli":
        return ConditionalBernoulli(in_dim, out_dim, hidden_dims, activation)
    if family == "categorical":
        return ConditionalCategorical(in_dim, out_dim, hidden_dims, activation, **kw)
    raise ArgumentError(f"no discrete conditional layer for latent family {family!r}")


__all__ = [
    "DISCRETE_PRIORS",
    "LATENT_FAMILIES",
    "BernoulliGuide",
    "BernoulliPrior",
    "CategoricalGuide",
    "CategoricalPrior",
    "ConditionalBernoulli",
    "ConditionalCategorical",
    "LogitsEncoder",
    "check_prior",
    "conditional_layer",
    "default_prior",
    "latent_family",
]
