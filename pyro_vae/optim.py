"""Optimisers for SVI: one torch optimiser over all of the model's parameters.

Pyro's ``pyro.optim`` wrappers create one optimiser per parameter and key their state by
global param-store names; ours wraps a single ``torch.optim`` optimiser, so its state is
an ordinary ``state_dict`` that a checkpoint restores exactly.

Before each step the global gradient norm is computed (and clipped, ``clip_grad_norm``);
a NaN or Inf gradient raises :class:`NonFiniteError` before the optimiser touches
parameters or its own state, so a refused step leaves the model as it was.

Speed: the torch optimiser uses its fused kernel (one pass over each parameter instead of
about ten elementwise ops) wherever torch has one for the parameters' device; the update
is the same algorithm, equal up to floating-point rounding. Gradients are released after
the step (``set_to_none``), so the next backward pass writes them instead of adding to
zeros.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.optim import PyroOptim

OPTIMIZERS = ("adam", "adagrad")


class NonFiniteError(ArithmeticError):
    """A loss or gradient is NaN or Inf; raised before the parameters are updated."""


def check_finite_loss(loss: Any) -> None:
    """Raise NonFiniteError unless ``loss`` (a number, a tensor or a tuple of them) is finite."""
    for value in loss if isinstance(loss, tuple) else (loss,):
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteError(f"loss {value}")


class TorchOptimizer(PyroOptim):
    """A ``PyroOptim`` that ``SVI`` accepts, stepping one ``torch.optim.Optimizer``.

    SVI passes the parameters its trace touched; the wrapped optimiser already holds
    every parameter of the model and skips those without a gradient. ``clip_grad_norm``
    rescales the gradient of the loss (before weight decay) to at most that global norm.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, clip_grad_norm: float | None = None):
        # PyroOptim.__init__ sets up per-parameter machinery we replace; not called.
        self.optimizer = optimizer
        self.pt_optim_constructor = type(optimizer)
        self.pt_optim_args = optimizer.defaults
        self.optim_objs: dict = {}
        self.grad_clip: dict = {}
        self._state_waiting_to_be_consumed: dict = {}
        self.clip_grad_norm = clip_grad_norm

    def __call__(self, params: Any = None, *args: Any, **kwargs: Any) -> None:
        with_grad = [
            p
            for group in self.optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if self.clip_grad_norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad])
        else:
            norm = torch.nn.utils.clip_grad_norm_(with_grad, self.clip_grad_norm)
        if not torch.isfinite(norm):
            raise NonFiniteError(f"gradient (global norm {norm.item()})")
        self.optimizer.step()
        # Pyro's zero_grads (after SVI calls us) then finds nothing left to allocate.
        self.optimizer.zero_grad(set_to_none=True)

    def get_state(self) -> dict:
        return self.optimizer.state_dict()

    def set_state(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def save(self, filename: str) -> None:
        torch.save(self.get_state(), filename)

    def load(self, filename: str, map_location: Any = None) -> None:
        self.set_state(torch.load(filename, map_location=map_location))


def build_optimizer(cfg: Any, params: Any) -> TorchOptimizer:
    """``cfg.optim.name`` with ``cfg.lr``, ``cfg.weight_decay``, ``cfg.clip_grad_norm``."""
    name = cfg.optim.name
    params = list(params)
    if name == "adam":
        args = {"lr": cfg.lr, "betas": tuple(cfg.optim.betas), "eps": cfg.optim.eps}
        optimizer = torch.optim.Adam
    elif name == "adagrad":
        args = {"lr": cfg.lr, "eps": cfg.optim.eps}
        optimizer = torch.optim.Adagrad
    else:
        raise ValueError(f"optim={name!r} is not one of {list(OPTIMIZERS)}")
    try:
        opt = optimizer(params, weight_decay=cfg.weight_decay, fused=True, **args)
    except RuntimeError:  # no fused kernel for this device or dtype in this torch
        opt = optimizer(params, weight_decay=cfg.weight_decay, **args)
    return TorchOptimizer(opt, clip_grad_norm=cfg.get("clip_grad_norm"))
