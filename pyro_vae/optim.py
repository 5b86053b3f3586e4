"""Optimisers for SVI: one torch optimiser over all of the model's parameters.

Pyro's ``pyro.optim`` wrappers create one optimiser per parameter and key their state by
global param-store names; ours wraps a single ``torch.optim`` optimiser, so its state is
an ordinary ``state_dict`` that a checkpoint restores exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.optim import PyroOptim

OPTIMIZERS = ("adam", "adagrad")


class TorchOptimizer(PyroOptim):
    """A ``PyroOptim`` that ``SVI`` accepts, stepping one ``torch.optim.Optimizer``.

    SVI passes the parameters its trace touched; the wrapped optimiser already holds
    every parameter of the model and skips those without a gradient.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        # PyroOptim.__init__ sets up per-parameter machinery we replace; not called.
        self.optimizer = optimizer
        self.pt_optim_constructor = type(optimizer)
        self.pt_optim_args = optimizer.defaults
        self.optim_objs: dict = {}
        self.grad_clip: dict = {}
        self._state_waiting_to_be_consumed: dict = {}

    def __call__(self, params: Any = None, *args: Any, **kwargs: Any) -> None:
        self.optimizer.step()

    def get_state(self) -> dict:
        return self.optimizer.state_dict()

    def set_state(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def save(self, filename: str) -> None:
        torch.save(self.get_state(), filename)

    def load(self, filename: str, map_location: Any = None) -> None:
        self.set_state(torch.load(filename, map_location=map_location))


def build_optimizer(cfg: Any, params: Any) -> TorchOptimizer:
    """``cfg.optim.name`` with ``cfg.lr`` and ``cfg.weight_decay`` over ``params``."""
    name = cfg.optim.name
    if name == "adam":
        opt = torch.optim.Adam(
            params,
            lr=cfg.lr,
            betas=tuple(cfg.optim.betas),
            eps=cfg.optim.eps,
            weight_decay=cfg.weight_decay,
        )
    elif name == "adagrad":
        opt = torch.optim.Adagrad(
            params, lr=cfg.lr, eps=cfg.optim.eps, weight_decay=cfg.weight_decay
        )
    else:
        raise ValueError(f"optim={name!r} is not one of {list(OPTIMIZERS)}")
    return TorchOptimizer(opt)
