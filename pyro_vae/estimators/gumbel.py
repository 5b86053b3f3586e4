"""The Concrete / Gumbel-softmax relaxation (Maddison et al. 2017; Jang et al. 2017)."""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.poutine import Trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..discrete import DiscreteSite, discrete_site
from ..errors import refuse
from .base import EstimatorError, ParticleELBO, describe_distribution, log_weights, register

_EMPTY = torch.Size()


def check_temperature(key: str, value: Any, nullable: bool = False) -> float | None:
    """A temperature: a number > 0 (or None where ``nullable``)."""
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise refuse(key, value, "a number > 0" + (", or null" if nullable else ""))
    if not math.isfinite(value):
        raise refuse(key, value, "a finite number > 0")
    return float(value)


class TemperatureSchedule:
    """tau_t = max(min_temperature, temperature * exp(-anneal_rate * N floor(t / N))) at
    training step t, N = ``anneal_every`` (Jang et al. 2017, sec. 4.2: tau = max(0.5,
    exp(-r t)), updated every N steps); ``anneal_rate=0`` keeps ``temperature``."""

    def __init__(
        self, temperature: float, anneal_rate: float, min_temperature: float, anneal_every: int
    ):
        self.temperature = check_temperature("temperature", temperature)
        self.min_temperature = check_temperature("min_temperature", min_temperature)
        if self.min_temperature > self.temperature:
            raise refuse(
                "min_temperature", min_temperature, f"a number <= temperature={temperature}"
            )
        if isinstance(anneal_rate, bool) or not isinstance(anneal_rate, int | float):
            raise refuse("anneal_rate", anneal_rate, "a number >= 0")
        if not (anneal_rate >= 0 and math.isfinite(anneal_rate)):
            raise refuse("anneal_rate", anneal_rate, "a number >= 0")
        if isinstance(anneal_every, bool) or not isinstance(anneal_every, int) or anneal_every < 1:
            raise refuse("anneal_every", anneal_every, "an integer >= 1")
        self.anneal_rate, self.anneal_every = float(anneal_rate), anneal_every

    def at(self, step: int) -> float:
        t = self.anneal_every * (step // self.anneal_every)
        return max(self.min_temperature, self.temperature * math.exp(-self.anneal_rate * t))


class _LinearForm(TorchDistribution):
    """A discrete site seen by the straight-through estimator: draws are discrete (the
    straight-through relaxation's: hard forward, relaxed gradient), and ``log_prob`` is the
    discrete density in its form linear in the value, so its gradient reaches the draw."""

    has_rsample = True

    def __init__(self, site: DiscreteSite, fn: Any, temperature: float):
        self.site, self.relaxed = site, site.relaxed(temperature, straight_through=True)
        super().__init__(fn.batch_shape, fn.event_shape, validate_args=False)

    @property
    def support(self):
        return self.relaxed.support

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        return self.relaxed.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.site.log_prob(value)


class Relax(Messenger):
    """Swap each discrete latent site's distribution for its relaxation: the Concrete one
    at ``temperature`` (``straight_through=False``), or :class:`_LinearForm`
    (straight-through). A latent site that is neither discrete (Bernoulli, one-hot) nor
    reparameterisable is refused, naming it; continuous reparameterised sites are left as
    they are. ``temperature`` is a callable (the schedule's current value)."""

    def __init__(self, temperature: Any, straight_through: bool, estimator: str):
        super().__init__()
        self.temperature, self.straight_through, self.estimator = (
            temperature,
            straight_through,
            estimator,
        )

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        fn = msg["fn"]
        site = discrete_site(fn)
        if site is None:
            if getattr(fn, "has_rsample", False):
                return
            raise EstimatorError(
                f"estimator={self.estimator} relaxes Bernoulli and one-hot categorical latent "
                f"sites, but site {msg['name']!r} ({describe_distribution(fn)}) is neither "
                "and has no rsample; use estimator=score_function, vimco or nvil (an "
                "index-valued Categorical: use a one-hot one)"
            )
        temperature = self.temperature()
        if self.straight_through:
            msg["fn"] = _LinearForm(site, fn, temperature)
        else:
            msg["fn"] = site.relaxed(temperature)


@register("gumbel")
class GumbelSoftmax_ELBO(ParticleELBO):
    """The relaxed ELBO of Maddison et al. (2017, sec. 3-4): every discrete latent site of
    the guide q(b | x) (Bernoulli units, one-hot categorical variables) replaced by its
    Concrete (Gumbel-softmax) relaxation at temperature lambda, and the model's by its own
    at ``prior_temperature`` (default: lambda), so that the value is an ELBO of the relaxed
    model and the draw is reparameterised::

        Bernoulli:    z~ = sigmoid((l + log u - log(1 - u)) / lambda),  u ~ U(0, 1)
        categorical:  z~ = softmax((l + g) / lambda),  g_k = -log(-log u_k)
        L~ = (N/M) sum_i (1/L) sum_l [log p~(x_i, z~_il) - log q~(z~_il | x_i)]

    with p~ and q~ the Concrete densities (Pyro's ``RelaxedBernoulli`` and
    ``RelaxedOneHotCategorical``) and the decoder fed the relaxed z~ in [0, 1]. Its
    gradient is the pathwise gradient of L~ (estimator A on the relaxed model): low
    variance, but **biased** for the discrete model's ELBO, the more so at high
    temperature (as lambda -> 0 the relaxation approaches the discrete variables and the
    gradient's variance grows). ``loss`` is minus L~, not a bound on the discrete model's
    log p(x); evaluation (the test ELBO, importance sampling) uses the discrete model.
    Continuous reparameterised sites are left as they are; other sites are refused.

    The temperature follows :class:`TemperatureSchedule` over training steps (each
    :meth:`loss_and_grads` is one): ``temperature`` (tau_0), ``anneal_rate`` r,
    ``min_temperature``, ``anneal_every`` N, Jang et al.'s tau = max(0.5, exp(-r t))
    with their r = 1e-5 and N = 500 by default. The step count is in :meth:`state_dict`,
    so a resumed run continues the schedule. The lab (``differentiable_loss``) measures at
    the current temperature.
    """

    name = "gumbel"
    # Pathwise on the relaxed sites, but it takes guides without rsample (the discrete ones,
    # which Relax swaps): the check is Relax's, not check_reparameterized's.
    reparameterized = False
    straight_through = False

    def __init__(
        self,
        num_particles: int = 1,
        temperature: float = 1.0,
        anneal_rate: float = 1e-5,
        min_temperature: float = 0.5,
        anneal_every: int = 500,
        prior_temperature: float | None = None,
        max_plate_nesting: int | None = None,
    ):
        super().__init__(num_particles, max_plate_nesting)
        self.schedule = TemperatureSchedule(temperature, anneal_rate, min_temperature, anneal_every)
        self.prior_temperature = check_temperature(
            "prior_temperature", prior_temperature, nullable=True
        )
        self.steps = 0

    @property
    def temperature(self) -> float:
        """The current temperature (lambda of the guide's relaxation)."""
        return self.schedule.at(self.steps)

    def _prior_temperature(self) -> float:
        return self.temperature if self.prior_temperature is None else self.prior_temperature

    def guide_handlers(self) -> list[Messenger]:
        return [Relax(lambda: self.temperature, self.straight_through, self.name)]

    def model_handlers(self) -> list[Messenger]:
        if self.straight_through:
            return [Relax(lambda: self.temperature, True, self.name)]
        return [Relax(self._prior_temperature, False, self.name)]

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        bound = layout.scale * log_weights(model_trace, guide_trace, layout).mean(0).sum()
        return bound, bound

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """One training step: the loss and gradients at the current temperature; then the
        step count (and so the schedule) advances."""
        loss = super().loss_and_grads(model, guide, *args, **kwargs)
        self.steps += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The training steps taken (the schedule's position)."""
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
