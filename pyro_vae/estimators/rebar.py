"""REBAR: the score function with a control variate from the Concrete relaxation (Tucker et
al. 2017)."""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine import Trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import nn

from ..discrete import DiscreteSite, discrete_site
from ..errors import refuse
from .base import (
    EstimatorError,
    Layout,
    ParticleELBO,
    describe_distribution,
    log_density,
    log_weights,
    register,
    same_random_state,
    sample_sites,
    site_term,
)
from .gumbel import check_temperature

_instance_ids = itertools.count()


def _forget_params(prefix: str) -> None:
    store = pyro.get_param_store()
    for name in [k for k in store.keys() if k.startswith(prefix)]:
        del store[name]


@dataclass
class Draw:
    """One discrete site's draw: the site, its noise v for z~, its perturbed logits z (a
    function of the logits) and b = H(z)."""

    site: DiscreteSite
    v: torch.Tensor
    z: torch.Tensor
    b: torch.Tensor


class DrawDiscrete(Messenger):
    """Draw each discrete latent site of the guide as REBAR does: u, v ~ U(0, 1),
    z = logits + noise(u), value b = H(z) (recorded in :attr:`draws`)."""

    def __init__(self, estimator: str):
        super().__init__()
        self.estimator, self.enabled = estimator, True
        self.draws: dict[str, Draw] = {}

    def _pyro_sample(self, msg: dict) -> None:
        if not self.enabled or msg["is_observed"] or site_is_subsample(msg):
            return
        site = discrete_site(msg["fn"])
        if site is None and getattr(msg["fn"], "has_rsample", False):
            return  # a continuous reparameterised site: pathwise, as it is
        if site is None:
            raise EstimatorError(
                f"estimator={self.estimator} builds its control variate from the Concrete "
                "relaxation of Bernoulli and one-hot categorical latent sites, but site "
                f"{msg['name']!r} ({describe_distribution(msg['fn'])}) is neither, nor "
                "reparameterisable; use estimator=score_function, nvil or vimco"
            )
        u, v = site.noise()
        z = site.perturbed(u)
        b = site.hard(z)
        msg["value"] = site.flat(b)
        self.draws[msg["name"]] = Draw(site, v, z, b)


class Control(nn.Module):
    """REBAR's control-variate parameters: the scale eta and log temperature (RELAX adds a
    network, ``net``)."""

    def __init__(self, eta: float, temperature: float, net: nn.Module | None = None):
        super().__init__()
        self.eta = nn.Parameter(torch.tensor(float(eta)))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.net = net


@register("rebar")
class REBAR_ELBO(ParticleELBO):
    """The ELBO with REBAR's unbiased, low-variance gradient for Bernoulli and one-hot
    categorical latent sites (Tucker et al. 2017, eq. 7 and sec. 3.3). Per particle and
    datapoint, with f(b) = log p(x, b) - log q(b | x) and l the guide's logits::

        z = l + logistic noise (Gumbel for categorical),  b = H(z)         (b ~ q(b | x))
        z~ ~ p(z | b)          (conditional noise, reparameterised in l: DiscreteSite.conditional)
        s = sigma_lambda(z),  s~ = sigma_lambda(z~)      (sigmoid / softmax of z / lambda)
        c(s) = eta f(s)        (f of the relaxed value: the densities' forms, linear in it)
        g_l = [f(b) - c(s~)] d log q(b)/dl + dc(s)/dl - dc(s~)/dl + (df/dl)(b)   (b fixed)

    E[g_l] = dE[f(b)]/dl for any eta and lambda: the score term's control variate c(s~)
    has the same expectation as c(s), whose reparameterised gradient corrects for it. The
    guide's parameters get g_l backpropagated through l(x); the model's get grad f(b)
    (as the score function). L = ``num_particles`` independent estimates, averaged.

    eta (``eta``, 1 to start) and lambda (``temperature``, 0.5 to start, kept positive as
    exp of a parameter) are trained, with ``learn_control=true``, to minimise the variance:
    at each training step (:meth:`loss_and_grads`) their gradient is that of
    sum (g_l)^2 over the logits (a single-sample estimate of the second moment, whose
    derivative in them is that of the variance since E[g_l] does not depend on them),
    by differentiating g_l (one double backward through the model at s and s~). This
    targets the variance of the logits' gradient, not of every encoder weight's (cheaper:
    the paper's eq. 8 objective on the parameters q sees). They are optimised with the
    model (``SVI`` through Pyro's param store as ``rebar<n>.control``, ``pyro-vae train``
    by the estimator's own optimiser, at the model's step size); :meth:`state_dict` holds
    them. The lab (``differentiable_loss``) leaves them as they are.

    Cost per estimate: the model run at b, s and s~ (three decoder passes), the guide once,
    and the backward passes through g_l. Scope: every latent site of the guide discrete
    (:func:`~pyro_vae.discrete.discrete_site`), none whose distribution depends on another
    latent site's value (one stochastic layer: the REBAR paper's multi-layer SBNs need the
    relaxation carried through q's later layers, which this does not do; a guide with
    dependent sites is refused by name: use vimco, nvil or rws). Continuous
    reparameterised sites are left pathwise (their parameters get grad f(b) through the
    draw), so on a model without discrete sites this is estimator A.
    """

    name = "rebar"
    reparameterized = False

    def __init__(
        self,
        num_particles: int = 1,
        eta: float = 1.0,
        temperature: float = 0.5,
        learn_control: bool = True,
        max_plate_nesting: int | None = None,
    ):
        super().__init__(num_particles, max_plate_nesting)
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta):
            raise refuse("eta", eta, "a finite number")
        self.initial_eta = float(eta)
        self.initial_temperature = check_temperature("temperature", temperature)
        if not isinstance(learn_control, bool):
            raise refuse("learn_control", learn_control, "true or false")
        self.learn_control = learn_control
        self.pyro_name = f"{self.name}{next(_instance_ids)}.control"
        weakref.finalize(self, _forget_params, self.pyro_name + "$$$")
        self.control: Control | None = None
        self._drawer = DrawDiscrete(self.name)
        self._training = False
        self._pending: tuple | None = None
        self._checked_independent = False

    # -- the control variate's parameters --------------------------------------------------

    def make_net(self, input_dim: int) -> nn.Module | None:
        """RELAX's network r_rho on the relaxed latents; none for REBAR."""
        return None

    def _build(self, like: torch.Tensor, input_dim: int) -> Control:
        _forget_params(self.pyro_name + "$$$")
        devices = [like.device] if like.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the estimator's draws stay as they are
            control = Control(self.initial_eta, self.initial_temperature, self.make_net(input_dim))
        self.control = control.to(device=like.device, dtype=like.dtype)
        return self.control

    def parameters(self) -> list[nn.Parameter]:
        """eta, log lambda (and RELAX's network): what :meth:`loss_and_grads` gives a
        variance gradient to (none before the first call, or with ``learn_control=false``)."""
        if self.control is None or not self.learn_control:
            return []
        return list(self.control.parameters())

    @property
    def temperature(self) -> float:
        """The current lambda."""
        if self.control is None:
            return self.initial_temperature
        return float(self.control.log_temperature.detach().exp())

    # -- the estimator -----------------------------------------------------------------------

    def guide_handlers(self) -> list[Messenger]:
        self._drawer.draws = {}
        return [self._drawer]

    def _check_independent(self, draws: dict[str, Draw], guide_trace: Trace) -> None:
        """Refuse a guide one of whose discrete sites' logits depend on another latent
        site's value (a second stochastic layer, or a continuous latent above it)."""
        self._checked_independent = True
        latent = [n for n, _ in sample_sites(guide_trace, observed=False)]
        if len(latent) < 2:
            return
        _, guide, args, kwargs, unpruned = self._replay
        fixed, leaves = unpruned.copy(), {}
        for name in latent:
            leaf = unpruned.nodes[name]["value"].detach().requires_grad_(True)
            fixed.nodes[name] = {**unpruned.nodes[name], "value": leaf}
            leaves[name] = leaf
        self._drawer.enabled = False
        try:
            with same_random_state(), torch.enable_grad():
                trace = poutine.trace(poutine.replay(guide, trace=fixed)).get_trace(*args, **kwargs)
        finally:
            self._drawer.enabled = True
        for name in draws:
            logits = discrete_site(trace.nodes[name]["fn"]).logits
            others = [o for o in latent if o != name]
            if not logits.requires_grad:
                continue
            grads = torch.autograd.grad(
                logits.sum(), [leaves[o] for o in others], allow_unused=True
            )
            parents = [o for o, g in zip(others, grads, strict=True) if g is not None]
            if parents:
                raise EstimatorError(
                    f"estimator={self.name} handles guides whose discrete sites are independent "
                    f"given x (one stochastic layer), but q at site {name!r} depends on the "
                    f"value of {parents}; use estimator=vimco, nvil or rws for a stack of "
                    "stochastic layers"
                )

    def relaxed_objective(
        self, values: dict[str, torch.Tensor], layout: Layout, guide_trace: Trace
    ) -> torch.Tensor:
        """f at relaxed latent values: log p(x, s) - log q(s | x) per particle and unit
        ([L, U]), the model run again at ``values``, the discrete sites' densities in their
        form linear in the value."""
        model, _, args, kwargs, unpruned = self._replay
        fixed = unpruned.copy()
        for name, value in values.items():
            fixed.nodes[name] = {**unpruned.nodes[name], "value": value}
        with pyro.validation_enabled(False):
            trace = poutine.trace(poutine.replay(model, trace=fixed)).get_trace(*args, **kwargs)
        trace = prune_subsample_sites(trace)
        total = torch.zeros(())
        for name, site in sample_sites(trace):
            found = None if site["is_observed"] else discrete_site(site["fn"])
            log_p = found.log_prob(site["value"]) if found else site["fn"].log_prob(site["value"])
            total = total + site_term(site, name, layout, log_p)
        for name, draw in self._drawer.draws.items():
            site = guide_trace.nodes[name]
            total = total - site_term(site, name, layout, draw.site.log_prob(values[name]))
        return total

    def extra_control(self, values: dict[str, torch.Tensor], layout: Layout) -> Any:
        """RELAX's r_rho(s) per particle and unit; 0 for REBAR."""
        return 0.0

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        scale = layout.scale
        draws = dict(self._drawer.draws)
        for name, draw in draws.items():
            # log q(b) through the logits the noise was built from (the expanded view, whose
            # gradient g_l is taken), equal to the trace's own.
            site = guide_trace.nodes[name]
            site["unscaled_log_prob"] = draw.site.log_prob(site["value"])
            site["log_prob"] = scale_and_mask(
                site["unscaled_log_prob"], site["scale"], site["mask"]
            )
        f_b = log_weights(model_trace, guide_trace, layout)  # [L, U], at the discrete b
        bound = scale * f_b.detach().mean(0).sum()
        logits = [d.site.logits for d in draws.values()]
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in logits):
            return bound, scale * f_b.mean(0).sum()
        if not self._checked_independent:
            self._check_independent(draws, guide_trace)
        control = self.control
        if control is None:
            control = self._build(logits[0], self.net_input_dim(draws, layout))
        pyro.module(self.pyro_name, control)
        lam, eta = control.log_temperature.exp(), control.eta
        relaxed = {n: d.site.flat(d.site.relax(d.z, lam)) for n, d in draws.items()}
        tilde = {
            n: d.site.flat(d.site.relax(d.site.conditional(d.b, d.v), lam))
            for n, d in draws.items()
        }
        c_z = eta * self.relaxed_objective(relaxed, layout, guide_trace)
        c_z = c_z + self.extra_control(relaxed, layout)
        c_zt = eta * self.relaxed_objective(tilde, layout, guide_trace)
        c_zt = c_zt + self.extra_control(tilde, layout)
        score = log_density(guide_trace, layout, score=True)
        cv = scale * ((f_b.detach() - c_zt.detach()) * score + c_z - c_zt).mean(0).sum()
        train = self._training and self.learn_control
        g_cv = torch.autograd.grad(cv, logits, create_graph=train, retain_graph=True)
        direct_total = scale * f_b.mean(0).sum()
        surrogate = direct_total + sum(
            (g.detach() * t).sum() for g, t in zip(g_cv, logits, strict=True)
        )
        if train:
            direct = torch.autograd.grad(direct_total, logits, retain_graph=True, allow_unused=True)
            second_moment = sum(
                ((g + (0.0 if d is None else d.detach())) ** 2).sum()
                for g, d in zip(g_cv, direct, strict=True)
            )
            params = list(control.parameters())
            self._pending = torch.autograd.grad(
                second_moment, params, retain_graph=True, allow_unused=True
            )
        return bound, surrogate

    def net_input_dim(self, draws: dict[str, Draw], layout: Layout) -> int:
        """The width of r_rho's input (RELAX); unused by REBAR."""
        return 0

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """One training step: the estimator's gradients on the model's and guide's
        parameters, and (``learn_control``) the variance gradient on eta, lambda (and
        RELAX's network) in their ``.grad``."""
        self._training, self._pending = True, None
        try:
            loss = super().loss_and_grads(model, guide, *args, **kwargs)
        finally:
            self._training = False
        pending, self._pending = self._pending, None
        if pending is not None and self.control is not None:
            for p, g in zip(self.control.parameters(), pending, strict=True):
                if g is not None and bool(torch.isfinite(g).all()):
                    p.grad = g.detach() if p.grad is None else p.grad + g.detach()
        return loss

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The control variate's parameters (None before the first call)."""
        if self.control is None:
            return {"control": None}
        return {"control": {k: v.detach().clone() for k, v in self.control.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["control"]
        if saved is None:
            self.control = None
            _forget_params(self.pyro_name + "$$$")
            return
        if self.control is None:
            width = saved["net.0.weight"].shape[1] if "net.0.weight" in saved else 0
            self._build(saved["eta"], width)
        with torch.no_grad():
            self.control.load_state_dict(saved)
