"""Discrete latent variables: vectors of Bernoulli units and of one-hot categorical
variables as Pyro distributions, their relaxations, and the noise that REBAR and RELAX
build their control variates from.

Two distributions with one event dimension, so that a VAE's ``z`` is a flat vector
whatever its family (the decoder takes ``[..., latent_dim]``, as for a Gaussian):

- :class:`BernoulliVector` (``logits [..., d]``): d independent units in {0, 1}, the
  latent layer of a sigmoid belief network (Neal 1992; Mnih & Gregor 2014);
- :class:`OneHotVector` (``logits [..., n, k]``): n independent k-way categorical
  variables, each one-hot, flattened to ``[..., n * k]`` (Jang et al. 2017's 20 x 10 VAE).

Their ``log_prob`` is linear in the value (``sum z * logits - softplus(logits)``, and
``sum z * log_softmax(logits)``), so it is also defined, and differentiable, at a relaxed
value in [0, 1] (what straight-through, REBAR and RELAX evaluate). Both enumerate their
support (2^d and k^n points; Pyro's ``TraceEnum_ELBO`` sums over it) where it has at most
:data:`MAX_ENUMERATION` points, and have no ``rsample``: the score-function estimators
and the relaxations are what train them (``docs/estimators.md``).

:func:`discrete_site` reads any discrete site of a Pyro trace (these two, and Pyro's own
``Bernoulli`` and ``OneHotCategorical`` under ``Independent``/``expand`` wrappers) as a
:class:`DiscreteSite`: its logits grouped by variable, its relaxations (Concrete /
Gumbel-softmax, Maddison et al. 2017, Jang et al. 2017, with Pyro's ``RelaxedBernoulli``
and ``RelaxedOneHotCategorical`` and their straight-through versions), and the reparameterised
noise z = logits + logistic (or Gumbel) noise with b = H(z), and z~ ~ p(z | b), of
Tucker et al. (2017, sec. 3 and appendix).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import (
    ExpandedDistribution,
    MaskedDistribution,
    TorchDistribution,
)

from .errors import ArgumentError

#: The largest support :meth:`BernoulliVector.enumerate_support` and
#: :meth:`OneHotVector.enumerate_support` list (2^16 points).
MAX_ENUMERATION = 2**16
#: Noise is drawn in (EPS, 1 - EPS), so that logit(u) and log(-log u) stay finite.
EPS = 1e-6
_EMPTY = torch.Size()


def _check_enumerable(what: str, size: float) -> None:
    if size > MAX_ENUMERATION:
        raise ArgumentError(
            f"{what} has {size:.3g} points in its support, more than the {MAX_ENUMERATION} "
            "that enumeration lists; use a sampling estimator (score_function, nvil, vimco, "
            "rws, rebar, ...) or a smaller latent space"
        )


class _OneHotGroups(constraints.Constraint):
    """Flat vectors of n one-hot groups of k values."""

    is_discrete = True
    event_dim = 1

    def __init__(self, num_variables: int, num_categories: int):
        self.num_variables, self.num_categories = num_variables, num_categories
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        grouped = value.reshape((*value.shape[:-1], self.num_variables, self.num_categories))
        binary = ((grouped == 0) | (grouped == 1)).all(-1)
        return (binary & (grouped.sum(-1) == 1)).all(-1)


class BernoulliVector(TorchDistribution):
    """d independent Bernoulli units with ``logits [..., d]``: event shape (d,), values in
    {0, 1}^d. ``log_prob(z) = sum_j z_j l_j - softplus(l_j)``, linear in z."""

    arg_constraints: ClassVar[dict] = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)
    has_enumerate_support = True

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        if logits.dim() < 1:
            raise ArgumentError("BernoulliVector needs logits with a last dimension d (units)")
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BernoulliVector, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(BernoulliVector, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        p = self.probs
        return p * (1 - p)

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (value * self.logits - F.softplus(self.logits)).sum(-1)

    def entropy(self) -> torch.Tensor:
        p = self.probs
        return (F.softplus(self.logits) - p * self.logits).sum(-1)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        d = self.event_shape[0]
        _check_enumerable(f"BernoulliVector over {{0, 1}}^{d}", 2.0**d)
        values = torch.tensor(
            list(itertools.product((0.0, 1.0), repeat=d)),
            dtype=self.logits.dtype,
            device=self.logits.device,
        )
        values = values.reshape((2**d,) + (1,) * len(self.batch_shape) + (d,))
        if expand:
            values = values.expand((2**d, *self.batch_shape, d))
        return values


class OneHotVector(TorchDistribution):
    """n independent k-way categorical variables with ``logits [..., n, k]``, each one-hot,
    flattened: event shape (n * k,). ``log_prob(z) = sum z * log_softmax(logits)``."""

    arg_constraints: ClassVar[dict] = {"logits": constraints.real}
    has_enumerate_support = True

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        if logits.dim() < 2:
            raise ArgumentError(
                "OneHotVector needs logits [..., n, k] (n variables of k categories)"
            )
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.num_variables, self.num_categories = logits.shape[-2], logits.shape[-1]
        event = torch.Size([self.num_variables * self.num_categories])
        super().__init__(logits.shape[:-2], event, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.Constraint:
        return _OneHotGroups(self.num_variables, self.num_categories)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(OneHotVector, _instance)
        batch_shape = torch.Size(batch_shape)
        groups = (self.num_variables, self.num_categories)
        new.logits = self.logits.expand(batch_shape + groups)
        new.num_variables, new.num_categories = groups
        super(OneHotVector, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def group(self, value: torch.Tensor) -> torch.Tensor:
        """A flat value ``[..., n * k]`` as ``[..., n, k]``."""
        return value.reshape((*value.shape[:-1], self.num_variables, self.num_categories))

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp().flatten(-2)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        p = self.probs
        return p * (1 - p)

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        with torch.no_grad():
            index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            one_hot = F.one_hot(index, self.num_categories).to(self.logits.dtype)
        return one_hot.flatten(-2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (self.group(value) * self.logits).sum((-2, -1))

    def entropy(self) -> torch.Tensor:
        return -(self.logits.exp() * self.logits).sum((-2, -1))

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        n, k = self.num_variables, self.num_categories
        _check_enumerable(f"OneHotVector of {n} {k}-way variables", float(k) ** n)
        index = torch.tensor(list(itertools.product(range(k), repeat=n)), device=self.logits.device)
        values = F.one_hot(index, k).to(self.logits.dtype).flatten(-2)  # [k^n, n * k]
        values = values.reshape((k**n,) + (1,) * len(self.batch_shape) + (n * k,))
        if expand:
            values = values.expand((k**n, *self.batch_shape, n * k))
        return values


class _Flattened(TorchDistribution):
    """A distribution with event shape [n, k] seen with the flat event shape [n * k] (the
    relaxations of :class:`OneHotVector`); a straight-through sample keeps its relaxed
    value (``_unquantize``) through the reshape."""

    has_rsample = True

    def __init__(self, base: TorchDistribution):
        self.base = base
        n, k = base.event_shape[-2:]
        self.groups = (n, k)
        super().__init__(base.batch_shape, torch.Size([n * k]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.unit_interval, 1)

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        grouped = self.base.rsample(sample_shape)
        flat = grouped.flatten(-2)
        soft = getattr(grouped, "_unquantize", None)
        if soft is not None:
            flat._unquantize = soft.flatten(-2)
        return flat

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        grouped = value.reshape(value.shape[:-1] + self.groups)
        soft = getattr(value, "_unquantize", None)
        if soft is not None:
            grouped._unquantize = soft.reshape(soft.shape[:-1] + self.groups)
        return self.base.log_prob(grouped)


# -- any discrete site of a trace ----------------------------------------------------------


@dataclass
class DiscreteSite:
    """A discrete latent site read from its distribution ``fn``: ``kind`` ``bernoulli``
    (independent units) or ``categorical`` (one-hot groups); ``logits`` per unit,
    ``[*shape]``, or per group, ``[*shape[:-1], n, k]``, normalised for categorical ones,
    where ``shape`` is the site's value shape (batch + event); ``event_dims`` the number of
    the value's dimensions that are event dimensions (summed in log q)."""

    kind: str
    logits: torch.Tensor
    shape: torch.Size
    event_dims: int

    def grouped(self, value: torch.Tensor) -> torch.Tensor:
        """A value of the site's shape laid out like ``logits`` (one-hot groups last)."""
        return value

    def flat(self, grouped: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`grouped`."""
        return grouped

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log q at ``value`` (discrete or relaxed: the form is linear in it), summed over the
        event dimensions: the site's batch shape."""
        terms = value * self.logits - F.softplus(self.logits)
        dims = tuple(range(-self.event_dims, 0))
        return terms.sum(dims) if dims else terms

    # -- relaxations ------------------------------------------------------------------------

    def relaxed(self, temperature: Any, straight_through: bool = False) -> TorchDistribution:
        """The Concrete (Gumbel-softmax) relaxation of the site at ``temperature``, with the
        site's batch and event shapes; straight-through: discrete samples whose gradient is
        the relaxed one's (Pyro's ``...StraightThrough`` classes)."""
        t = torch.as_tensor(temperature, dtype=self.logits.dtype, device=self.logits.device)
        if self.kind == "bernoulli":
            cls = (
                dist.RelaxedBernoulliStraightThrough if straight_through else dist.RelaxedBernoulli
            )
            base = cls(t, logits=self.logits)
            return base.to_event(self.event_dims) if self.event_dims else base
        cls = (
            dist.RelaxedOneHotCategoricalStraightThrough
            if straight_through
            else dist.RelaxedOneHotCategorical
        )
        grouped = cls(t, logits=self.logits)  # event [k], batch [..., n]
        relaxed = _Flattened(grouped.to_event(1))
        return relaxed.to_event(self.event_dims - 1) if self.event_dims > 1 else relaxed

    # -- REBAR's noise (Tucker et al. 2017) ------------------------------------------------

    def noise(self, sample_shape: torch.Size = _EMPTY) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent uniform draws (u, v) of ``logits``' shape, in (EPS, 1 - EPS)."""
        shape = torch.Size(sample_shape) + self.logits.shape
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        v = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        return u.clamp(EPS, 1 - EPS), v.clamp(EPS, 1 - EPS)

    def perturbed(self, u: torch.Tensor) -> torch.Tensor:
        """z = logits + logistic noise (Bernoulli) or + Gumbel noise (categorical): b = H(z)
        is a draw of the site, and z is reparameterised in the logits."""
        if self.kind == "bernoulli":
            return self.logits + torch.log(u) - torch.log1p(-u)
        return self.logits - torch.log(-torch.log(u))

    def hard(self, z: torch.Tensor) -> torch.Tensor:
        """b = H(z): 1[z > 0], or the one-hot argmax of each group (detached)."""
        z = z.detach()
        if self.kind == "bernoulli":
            return (z > 0).to(z.dtype)
        return F.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype)

    def conditional(self, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """z~ ~ p(z | b), reparameterised in the logits with ``v`` uniform: for a unit,
        z~ = l + logit(v (1 - p)) if b = 0 and l + logit(1 - p + v p) if b = 1 (p = sigmoid l);
        for a group with argmax b, z~_b = -log(-log v_b) and z~_i = -log(-log v_i / p_i -
        log v_b) for i != b (Tucker et al. 2017, appendix)."""
        if self.kind == "bernoulli":
            p = torch.sigmoid(self.logits)
            u = torch.where(b > 0.5, 1 - p + v * p, v * (1 - p)).clamp(EPS, 1 - EPS)
            return self.logits + torch.log(u) - torch.log1p(-u)
        probs = self.logits.exp()
        log_v = torch.log(v)
        log_vb = (b * log_v).sum(-1, keepdim=True)
        other = -torch.log(-log_v / probs - log_vb)
        return torch.where(b > 0.5, -torch.log(-log_vb).expand_as(other), other)

    def relax(self, z: torch.Tensor, temperature: Any) -> torch.Tensor:
        """sigma_lambda(z): sigmoid(z / lambda), or softmax(z / lambda) over each group."""
        if self.kind == "bernoulli":
            return torch.sigmoid(z / temperature)
        return torch.softmax(z / temperature, dim=-1)


def _unwrap(fn: Any) -> tuple[Any, int]:
    """(innermost distribution, the event dims the wrappers add)."""
    event_dims = 0
    while isinstance(fn, dist.Independent | ExpandedDistribution | MaskedDistribution):
        if isinstance(fn, dist.Independent):
            event_dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, event_dims


def discrete_site(fn: Any) -> DiscreteSite | None:
    """``fn`` (a site's distribution) as a :class:`DiscreteSite`, or None where it is not a
    Bernoulli or one-hot categorical family (a Gaussian, Pyro's index-valued
    ``Categorical``, a Poisson...)."""
    base, _ = _unwrap(fn)
    shape = fn.batch_shape + fn.event_shape
    event_dims = len(fn.event_shape)
    if isinstance(base, BernoulliVector | dist.Bernoulli | torch.distributions.Bernoulli):
        return DiscreteSite("bernoulli", base.logits.expand(shape), shape, event_dims)
    if isinstance(base, OneHotVector):
        groups = (base.num_variables, base.num_categories)
        logits = base.logits.expand(shape[:-1] + groups)
        return _FlatCategorical("categorical", logits, shape, event_dims)
    if isinstance(base, torch.distributions.OneHotCategorical):
        logits = base.logits - base.logits.logsumexp(-1, keepdim=True)
        logits = logits.expand(shape)
        return _GroupedCategorical("categorical", logits, shape, event_dims)
    return None


class _FlatCategorical(DiscreteSite):
    """A :class:`OneHotVector` site: the value's last dimension holds n groups of k."""

    def grouped(self, value: torch.Tensor) -> torch.Tensor:
        return value.reshape(value.shape[:-1] + self.logits.shape[-2:])

    def flat(self, grouped: torch.Tensor) -> torch.Tensor:
        return grouped.flatten(-2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        terms = (self.grouped(value) * self.logits).sum((-2, -1))  # the last value dim summed
        dims = tuple(range(-(self.event_dims - 1), 0)) if self.event_dims > 1 else ()
        return terms.sum(dims) if dims else terms


class _GroupedCategorical(DiscreteSite):
    """Pyro's ``OneHotCategorical`` site: the value's last dimension is one group of k."""

    def grouped(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def flat(self, grouped: torch.Tensor) -> torch.Tensor:
        return grouped

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        terms = (value * self.logits).sum(-1)
        dims = tuple(range(-(self.event_dims - 1), 0)) if self.event_dims > 1 else ()
        return terms.sum(dims) if dims else terms

    def relaxed(self, temperature: Any, straight_through: bool = False) -> TorchDistribution:
        t = torch.as_tensor(temperature, dtype=self.logits.dtype, device=self.logits.device)
        cls = (
            dist.RelaxedOneHotCategoricalStraightThrough
            if straight_through
            else dist.RelaxedOneHotCategorical
        )
        base = cls(t, logits=self.logits)
        return base.to_event(self.event_dims - 1) if self.event_dims > 1 else base
