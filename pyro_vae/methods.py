"""Training methods: how one minibatch updates the model (``method=...``).

AEVB is the paper's algorithm 1: one ``SVI`` step with the configured estimator. Other
methods (the paper's baselines) implement the same small interface, so the trainer,
checkpoints and metrics are shared by all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from pyro.infer import SVI

from .baselines.mcem import MCEM
from .baselines.wake_sleep import WakeSleep
from .estimators import build_estimator
from .fast import direct_bound
from .model import VAE
from .optim import build_optimizer, check_finite_loss


class TrainingMethod(Protocol):
    """One update per minibatch; returns the minibatch's loss estimate.

    The loss is -ELBO scaled to the full data set (eq. 8), so ``-loss / N`` is the
    per-datapoint lower bound reported in the metrics. A step whose loss or gradient is
    NaN/Inf raises :class:`~pyro_vae.optim.NonFiniteError` without updating anything
    (``TorchOptimizer`` checks gradients; :func:`finite_loss_and_grads` the loss).
    """

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def finite_loss_and_grads(loss_and_grads: Callable[..., Any]) -> Callable[..., Any]:
    """``loss_and_grads`` that raises NonFiniteError on a NaN/Inf loss, so ``SVI.step``
    stops before it calls the optimiser (the gradients are checked there)."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        loss = loss_and_grads(*args, **kwargs)
        check_finite_loss(loss)
        return loss

    return checked


class AEVB:
    """Auto-Encoding VB (algorithm 1): ``SVI`` with the configured ELBO estimator.

    ``fast=true``: the same estimator computed without Pyro's traces
    (:func:`~pyro_vae.fast.direct_bound`), then the same optimiser step.
    """

    def __init__(self, cfg: DictConfig, vae: VAE):
        self.vae, self.num_particles = vae, cfg.num_particles
        self.elbo = build_estimator(cfg.estimator, cfg.num_particles)
        self.optim = build_optimizer(cfg, vae.parameters())
        self.svi = SVI(vae.model, vae.guide, self.optim, loss=self.elbo)
        self.svi.loss_and_grads = finite_loss_and_grads(self.svi.loss_and_grads)
        self.fast_estimator = cfg.estimator.name if cfg.get("fast", False) else None

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float:
        if self.fast_estimator is None:
            return self.svi.step(x, idx)
        loss = -direct_bound(self.vae, x, self.fast_estimator, self.num_particles)
        value = loss.item()
        check_finite_loss(value)
        loss.backward()
        self.optim()
        return value

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optim.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.set_state(state["optimizer"])


METHODS: dict[str, Callable[[DictConfig, VAE], TrainingMethod]] = {
    "aevb": AEVB,
    "wake_sleep": WakeSleep,  # the paper's baselines (Figures 2 and 3)
    "mcem": MCEM,
}


def build_method(cfg: DictConfig, vae: VAE) -> TrainingMethod:
    name = cfg.method
    if name not in METHODS:
        raise ValueError(f"method={name!r} is not one of {sorted(METHODS)}")
    return METHODS[name](cfg, vae)
