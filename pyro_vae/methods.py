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
from .model import VAE
from .optim import build_optimizer


class TrainingMethod(Protocol):
    """One update per minibatch; returns the minibatch's loss estimate.

    The loss is -ELBO scaled to the full data set (eq. 8), so ``-loss / N`` is the
    per-datapoint lower bound reported in the metrics.
    """

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class AEVB:
    """Auto-Encoding VB (algorithm 1): ``SVI`` with the configured ELBO estimator."""

    def __init__(self, cfg: DictConfig, vae: VAE):
        self.elbo = build_estimator(cfg.estimator, cfg.num_particles)
        self.optim = build_optimizer(cfg, vae.parameters())
        self.svi = SVI(vae.model, vae.guide, self.optim, loss=self.elbo)

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float:
        return self.svi.step(x, idx)

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
