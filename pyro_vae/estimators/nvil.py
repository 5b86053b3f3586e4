"""NVIL: score-function gradients with a learned baseline and variance normalisation
(Mnih & Gregor 2014)."""

from __future__ import annotations

import itertools
import math
import weakref
from typing import Any

import pyro
import torch
from pyro.poutine import Trace
from torch import nn

from ..errors import refuse
from .base import (
    EstimatorError,
    Layout,
    ParticleELBO,
    log_density,
    register,
    sample_sites,
)

_instance_ids = itertools.count()


def _forget_params(prefix: str) -> None:
    store = pyro.get_param_store()
    for name in [k for k in store.keys() if k.startswith(prefix)]:
        del store[name]


def observed_input(model_trace: Trace, layout: Layout, dtype: torch.dtype) -> torch.Tensor:
    """The observed data per datapoint, [U, D]: the values of the model's observed sample
    sites (each broadcast to the site's batch shape, one particle taken, the data plate's
    index first and everything else flattened), concatenated in trace order. x of any
    shape [M, ...] works, and so does a plate nested in the data plate."""
    if not layout.local:
        raise EstimatorError(
            "estimator=nvil's baseline b(x_i) is a function of each datapoint, but no plate "
            "holds every sample site of this model (a global latent, or sites in separate "
            "plates), so there is no datapoint to condition on; use estimator=vimco or "
            "score_function"
        )
    parts = []
    n = layout.nesting + 1
    units = [n + f.dim - 1 for f in layout.units]  # their positions once particles are dropped
    for name, site in sample_sites(model_trace, observed=True):
        fn = site["fn"]
        batch = torch.Size((1,) * (n - len(fn.batch_shape))) + fn.batch_shape
        try:
            value = site["value"].expand(batch + fn.event_shape)[0]
        except RuntimeError:
            raise EstimatorError(
                f"estimator=nvil reads the observed site {name!r} as its baseline's input, but "
                f"its value of shape {tuple(site['value'].shape)} does not broadcast to its "
                f"batch + event shape {tuple(batch + fn.event_shape)}"
            ) from None
        rest = [d for d in range(value.dim()) if d not in units]
        value = value.permute(*units, *rest)
        parts.append(value.reshape(layout.shape[1], -1).to(dtype))
    if not parts:
        raise EstimatorError(
            "estimator=nvil's baseline b(x) takes the model's observed data as input, but the "
            "model has no observed sample site (obs=...); use estimator=vimco or score_function"
        )
    return torch.cat(parts, dim=-1)


@register("nvil")
class NVIL_ELBO(ParticleELBO):
    """The ELBO (eq. 2, at the scale of eq. 8) with the score-function gradient of NVIL
    (Mnih & Gregor 2014): z ~ q(z|x) without a pathwise derivative, its learning signal
    centred by a learned input-dependent baseline and a running mean, and scaled by a
    running standard deviation. Per particle l and datapoint i (L = ``num_particles``
    independent single-sample estimates, averaged)::

        l_il   = log p(x_i, z_il) - log q(z_il | x_i)                  (learning signal)
        A_il   = (l_il - b_psi(x_i) - c) / max(1, sqrt(v))             (centred, normalised)
        grad_theta ~= (N/M) sum_i (1/L) sum_l grad_theta log p(x_i, z_il)
        grad_phi   ~= (N/M) sum_i (1/L) sum_l A_il grad_phi log q(z_il | x_i)
        grad_psi   ~= -(N/M) sum_i (1/L) sum_l grad_psi (1/2) (l_il - c - b_psi(x_i))^2

    b_psi is an MLP on the observed data (x flattened per datapoint; ``hidden_dim`` tanh
    units, then one linear output, which starts at zero), trained with the model by the
    third line: a regression of l - c on x. c and v are exponential running averages
    (decay alpha = ``decay``, 0.8 in the paper) of the mean and variance of the residual
    r = l - b_psi(x) over the minibatch's particles and datapoints::

        c <- alpha c + (1 - alpha) mean(r),   v <- alpha v + (1 - alpha) var(r)

    The first update sets c and v to the minibatch's values (they start at c = 0, v = 1).
    They are updated by :meth:`loss_and_grads` (the training step: what ``SVI.step`` and
    AEVB call), after the gradient is computed, so the baseline and scale a sample sees do
    not depend on it: the theta gradient is unbiased, and the phi gradient is unbiased for
    grad_phi ELBO / max(1, sqrt(v)) (the paper's max keeps small signals from being
    amplified). ``loss`` and ``differentiable_loss`` (evaluation, the variance lab) leave
    c and v alone. ``normalize=false`` drops the division.

    The baseline's parameters: the net is built at the first call (its input size is the
    data's) and registered in Pyro's param store with ``pyro.module`` under a name of its
    own (``nvil<n>.baseline``), so ``SVI``'s optimiser steps it; a training loop that
    holds its own optimiser must also step :meth:`parameters`. :meth:`state_dict` holds
    the net's weights, c, v and the number of updates, for a bit-exact resume.
    """

    name = "nvil"
    reparameterized = False

    def __init__(
        self,
        num_particles: int = 1,
        hidden_dim: int = 100,
        decay: float = 0.8,
        normalize: bool = True,
        max_plate_nesting: int | None = None,
    ):
        super().__init__(num_particles, max_plate_nesting)
        if not (
            isinstance(hidden_dim, int) and not isinstance(hidden_dim, bool) and hidden_dim > 0
        ):
            raise refuse("hidden_dim", hidden_dim, "an integer >= 1")
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
            raise refuse("decay", decay, "a number in [0, 1)")
        if not isinstance(normalize, bool):
            raise refuse("normalize", normalize, "true or false")
        self.hidden_dim, self.decay, self.normalize = hidden_dim, float(decay), normalize
        #: The name the baseline is registered under in Pyro's param store (``pyro.module``).
        self.pyro_name = f"nvil{next(_instance_ids)}.baseline"
        weakref.finalize(self, _forget_params, self.pyro_name + "$$$")
        self.net: nn.Module | None = None
        self.mean, self.variance, self.updates = 0.0, 1.0, 0
        self._pending: torch.Tensor | None = None

    # -- the baseline network --------------------------------------------------------------

    def _build(self, input_dim: int, like: torch.Tensor) -> nn.Module:
        """The MLP b_psi; initialised from the current random state without advancing it
        (the estimator's noise is the same as without a network), output layer at zero."""
        _forget_params(self.pyro_name + "$$$")
        devices = [like.device] if like.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            net = nn.Sequential(
                nn.Linear(input_dim, self.hidden_dim), nn.Tanh(), nn.Linear(self.hidden_dim, 1)
            )
        nn.init.zeros_(net[2].weight)
        nn.init.zeros_(net[2].bias)
        self.net = net.to(device=like.device, dtype=like.dtype)
        return self.net

    def baseline_net(self, x: torch.Tensor) -> nn.Module:
        """b_psi for inputs ``x`` [M, D], built at the first call."""
        if self.net is None:
            return self._build(x.shape[-1], x)
        input_dim = self.net[0].in_features
        if x.shape[-1] != input_dim:
            raise EstimatorError(
                f"estimator=nvil: this estimator's baseline takes {input_dim} inputs per "
                f"datapoint, but the observed data has {x.shape[-1]}; use a new estimator "
                "for a different model"
            )
        return self.net

    def parameters(self) -> list[torch.nn.Parameter]:
        """psi, the baseline network's parameters (none before the first call)."""
        return [] if self.net is None else list(self.net.parameters())

    # -- the estimator -----------------------------------------------------------------------

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        scale = layout.scale
        log_p = log_density(model_trace, layout)
        log_q = log_density(guide_trace, layout, score=True)
        signal = (log_p - log_density(guide_trace, layout)).detach()  # l: [L, M]
        x = observed_input(model_trace, layout, signal.dtype)
        net = pyro.module(self.pyro_name, self.baseline_net(x))
        b = net(x).squeeze(-1)  # [M]
        residual = signal - b.detach()
        self._pending = residual
        centred = residual - self.mean
        if self.normalize:
            centred = centred / max(1.0, math.sqrt(self.variance))
        regression = 0.5 * (signal - self.mean - b) ** 2
        bound = scale * signal.mean(0).sum()
        surrogate = scale * (log_p + centred * log_q - regression).mean(0).sum()
        return bound, surrogate

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """One training step's loss and gradients; then c and v take this minibatch's
        residuals (skipped where they are not finite)."""
        self._pending = None
        loss = super().loss_and_grads(model, guide, *args, **kwargs)
        residual, self._pending = self._pending, None
        if residual is not None and bool(torch.isfinite(residual).all()):
            self._update(residual)
        return loss

    def _update(self, residual: torch.Tensor) -> None:
        mean = residual.mean().item()
        variance = residual.var(unbiased=False).item()
        if self.updates == 0:
            self.mean, self.variance = mean, variance
        else:
            a = self.decay
            self.mean = a * self.mean + (1 - a) * mean
            self.variance = a * self.variance + (1 - a) * variance
        self.updates += 1

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The baseline's weights (None before the first call), c, v and the update count."""
        net = None
        if self.net is not None:
            net = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return {
            "baseline": net,
            "mean": self.mean,
            "variance": self.variance,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state. The network's weights are copied into the
        existing parameters (so the param store and an optimiser keep holding them); it is
        built where there is none yet, and dropped where the state has none."""
        net = state["baseline"]
        if net is None:
            self.net = None
            _forget_params(self.pyro_name + "$$$")
        else:
            weight = net["0.weight"]
            if self.net is None or tuple(self.net[0].weight.shape) != tuple(weight.shape):
                if weight.shape[0] != self.hidden_dim:
                    raise EstimatorError(
                        f"estimator=nvil with hidden_dim={self.hidden_dim} cannot load a "
                        f"baseline of {weight.shape[0]} hidden units"
                    )
                self._build(weight.shape[1], weight)
            with torch.no_grad():
                self.net.load_state_dict(net)
        self.mean, self.variance = float(state["mean"]), float(state["variance"])
        self.updates = int(state["updates"])
        self._pending = None
