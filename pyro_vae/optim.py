"""Optimisers: plain ``torch.optim`` optimisers, and one guarded step for every method.

A training method holds torch optimisers over the model's parameters (AEVB one, the
baselines one for theta and one for phi) and takes a step with :func:`guarded_step`:
the global gradient norm is computed (and clipped, ``clip_grad_norm``), and a NaN or Inf
gradient raises :class:`~pyro_vae.errors.NonFiniteError` before the optimiser touches the
parameters or its own state, so a refused step leaves the model as it was. A torch
optimiser's ``state_dict`` is what a checkpoint saves and restores exactly.

Speed: :func:`build_optimizer` uses torch's fused kernel (one pass over each parameter
instead of about ten elementwise ops) wherever torch has one for the parameters' device;
the update is the same algorithm, equal up to floating-point rounding. Gradients are
released after the step (``set_to_none``), so the next backward pass writes them instead
of adding to zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .errors import NonFiniteError, refuse

#: Optimisers by name; every one is built with ``lr``, ``weight_decay`` and its own options.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
}

#: What methods take: parameters -> a torch optimiser over them.
OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    **options: Any,
) -> torch.optim.Optimizer:
    """``torch.optim.<name>`` over ``params``, fused where torch has a fused kernel.

    ``options`` are the optimiser's own (``betas``, ``eps`` for Adam; ``eps`` for Adagrad).
    ``weight_decay=1.0`` on the full-data loss is exactly a N(0, I) prior on the parameters.
    """
    if name not in OPTIMIZERS:
        raise refuse("optim", name, f"one of {list(OPTIMIZERS)}")
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    cls, params = OPTIMIZERS[name], list(params)
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True, **options)
    except RuntimeError:  # no fused kernel for this device or dtype in this torch
        return cls(params, lr=lr, weight_decay=weight_decay, **options)


def optimizer_factory(name: str = "adam", **kwargs: Any) -> OptimizerFactory:
    """``params -> build_optimizer(params, name, **kwargs)``: what a method takes."""

    def make(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return build_optimizer(params, name, **kwargs)

    return make


def check_finite_loss(loss: Any) -> None:
    """Raise NonFiniteError unless ``loss`` (a number, a tensor or a tuple of them) is finite."""
    for value in loss if isinstance(loss, tuple) else (loss,):
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteError(f"loss {value}")


def guarded_step(optimizer: torch.optim.Optimizer, clip_grad_norm: float | None = None) -> None:
    """Step ``optimizer`` on the gradients its parameters hold, then release them.

    Parameters without a gradient are left alone. ``clip_grad_norm`` rescales the gradient
    of the loss (before weight decay) to at most that global norm. A non-finite gradient
    raises NonFiniteError before anything is updated.
    """
    with_grad = [
        p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    if clip_grad_norm is None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad])
    else:
        norm = torch.nn.utils.clip_grad_norm_(with_grad, clip_grad_norm)
    if not torch.isfinite(norm):
        raise NonFiniteError(f"gradient (global norm {norm.item()})")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group of ``optimizer`` the step size ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
