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

Step-size schedules (:class:`LRSchedule`, ``lr_schedule=``): torch's
``torch.optim.lr_scheduler`` classes over every optimiser of a method, stepped once at each
epoch's end by the trainer; their state is part of a checkpoint. Adam's ``betas`` and
``eps`` (``optim.betas``, ``optim.eps``) reach ``torch.optim.Adam`` through
:func:`build_optimizer`'s ``options``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

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


# --- step-size schedules ---------------------------------------------------------------------

#: ``lr_schedule=`` names; ``none`` keeps the step size the optimiser was built with.
LR_SCHEDULES = ("none", "exponential", "step", "cosine", "iwae")

#: What a scheduler factory is: optimiser -> torch scheduler over it.
SchedulerFactory = Callable[[torch.optim.Optimizer], LRScheduler]

#: Burda et al. (2015)'s schedule: stages i = 0..7 of 3^i epochs at lr * 10^(-i/7).
IWAE_STAGES = 8
IWAE_EPOCHS = (3**IWAE_STAGES - 1) // 2  # 3280


def iwae_factor(epoch: int, total: int = IWAE_EPOCHS) -> float:
    """The factor of Burda et al. (2015)'s schedule for (0-based) ``epoch``: 10^(-i/7) in
    stage i, which covers epochs 3^0 + ... + 3^(i-1) up to (not including) 3^0 + ... + 3^i
    (stages start at epochs 0, 1, 4, 13, 40, ...); from epoch 3280 on, the last stage's.

    ``total``: the schedule squeezed (or stretched) into ``total`` epochs, every stage's
    length scaled by total / 3280: stage i ends at epoch (3^(i+1) - 1) / 2 * total / 3280
    (a stage shorter than an epoch is skipped). ``total=3280`` is Burda et al.'s.
    """
    stage = 0
    # epoch >= (3^(i+1) - 1) / 2 * total / IWAE_EPOCHS, in integers (exact for any total)
    while stage < IWAE_STAGES - 1 and 2 * IWAE_EPOCHS * epoch >= total * (3 ** (stage + 1) - 1):
        stage += 1
    return 10.0 ** (-stage / 7)


class CosineToMin(torch.optim.lr_scheduler.CosineAnnealingLR):
    """torch's cosine annealing to ``eta_min`` over ``T_max`` epochs, which then stays at
    ``eta_min`` (torch's would rise again: a run resumed with more epochs stays there)."""

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.T_max:
            return [self.eta_min for _ in self.optimizer.param_groups]
        return super().get_lr()


def _is_scheduler_class(make: Any) -> bool:
    target = make.func if isinstance(make, functools.partial) else make
    return isinstance(target, type) and issubclass(target, LRScheduler)


class LRSchedule:
    """A step-size schedule over every optimiser of a training method, stepped once per epoch.

    One torch scheduler per optimiser (the baselines have one for theta and one for phi),
    built when training starts (:meth:`start`, after the step-size search has set the base
    step size) and stepped at every epoch's end (:meth:`step`): the lr of epoch ``e``
    (0-based) is the schedule's value at ``e``. A run that ends mid-epoch (``num_samples``)
    does not step at its end. :meth:`state_dict` is what a checkpoint saves.

    Build one with :meth:`named` (``lr_schedule=`` of the command line), :meth:`from_factor`
    (epoch -> factor of the base lr, torch's ``LambdaLR``) or :meth:`from_scheduler`
    (optimiser -> torch scheduler).
    """

    def __init__(self, name: str, make: Callable[[torch.optim.Optimizer, int], LRScheduler]):
        self.name, self._make = name, make
        self.schedulers: list[LRScheduler] = []

    @classmethod
    def named(
        cls,
        name: str,
        *,
        gamma: float = 0.1,
        step_epochs: int = 10,
        lr_min: float = 0.0,
        iwae_epochs: int = IWAE_EPOCHS,
    ) -> LRSchedule | None:
        """The schedule ``lr_schedule=name`` (None for ``none``):

        - ``exponential``: lr * gamma^epoch (torch's ``ExponentialLR``);
        - ``step``: lr * gamma^(epoch // step_epochs) (``StepLR``);
        - ``cosine``: from lr to ``lr_min`` over the run's epochs, then ``lr_min``
          (``CosineAnnealingLR``);
        - ``iwae``: Burda et al. (2015), 3^i epochs at lr * 10^(-i/7) for i = 0..7 (3280
          epochs), then the last value (``LambdaLR`` with :func:`iwae_factor`); its stages
          scaled to fill ``iwae_epochs`` epochs where that is not 3280.
        """
        if name not in LR_SCHEDULES:
            raise refuse("lr_schedule", name, f"one of {list(LR_SCHEDULES)}")
        if not _is_number(gamma) or not 0 < gamma <= 1:
            raise refuse("lr_gamma", gamma, "a number in (0, 1]")
        if not isinstance(step_epochs, int) or isinstance(step_epochs, bool) or step_epochs < 1:
            raise refuse("lr_step_epochs", step_epochs, "an integer >= 1")
        if not _is_number(lr_min) or not math.isfinite(lr_min) or lr_min < 0:
            raise refuse("lr_min", lr_min, "a finite number >= 0")
        if not isinstance(iwae_epochs, int) or isinstance(iwae_epochs, bool) or iwae_epochs < 1:
            raise refuse("lr_iwae_epochs", iwae_epochs, "an integer >= 1")
        sched = torch.optim.lr_scheduler
        makers: dict[str, Callable[[torch.optim.Optimizer, int], LRScheduler]] = {
            "exponential": lambda opt, epochs: sched.ExponentialLR(opt, gamma),
            "step": lambda opt, epochs: sched.StepLR(opt, step_epochs, gamma),
            "cosine": lambda opt, epochs: CosineToMin(opt, max(epochs, 1), lr_min),
            "iwae": lambda opt, epochs: sched.LambdaLR(
                opt, lambda epoch: iwae_factor(epoch, iwae_epochs)
            ),
        }
        return None if name == "none" else cls(name, makers[name])

    @classmethod
    def from_factor(cls, factor: Callable[[int], float]) -> LRSchedule:
        """lr * ``factor(epoch)`` (torch's ``LambdaLR``)."""
        return cls("custom", lambda opt, epochs: torch.optim.lr_scheduler.LambdaLR(opt, factor))

    @classmethod
    def from_scheduler(cls, factory: SchedulerFactory) -> LRSchedule:
        """``factory(optimizer)``, a torch scheduler, for each optimiser."""
        return cls("custom", lambda opt, epochs: factory(opt))

    @classmethod
    def build(
        cls,
        schedule: str | Callable[..., Any] | LRSchedule | None,
        **options: Any,
    ) -> LRSchedule | None:
        """An ``lr_schedule=`` argument of :func:`pyro_vae.train` as a schedule (None: none).

        A name (:meth:`named`, with ``options``); an :class:`LRSchedule`; a torch scheduler
        class or a ``functools.partial`` of one (:meth:`from_scheduler`); any other callable
        is epoch -> factor (:meth:`from_factor`).
        """
        if schedule is None or isinstance(schedule, LRSchedule):
            return schedule
        if isinstance(schedule, str):
            return cls.named(schedule, **options)
        if _is_scheduler_class(schedule):
            return cls.from_scheduler(schedule)
        if callable(schedule):
            return cls.from_factor(schedule)
        raise refuse(
            "lr_schedule",
            schedule,
            f"one of {list(LR_SCHEDULES)}, a callable epoch -> factor, or an LRSchedule",
        )

    def start(self, optimizers: Sequence[torch.optim.Optimizer], epochs: int) -> None:
        """Schedule ``optimizers`` from their current step size, over ``epochs`` epochs."""
        self.schedulers = []
        for optimizer in optimizers:
            scheduler = self._make(optimizer, epochs)
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(
                    f"an lr_schedule's scheduler factory returned {type(scheduler).__name__}, "
                    "not a torch.optim.lr_scheduler.LRScheduler"
                )
            self.schedulers.append(scheduler)

    def step(self) -> None:
        """An epoch ended: every optimiser takes the next epoch's step size."""
        for scheduler in self.schedulers:
            scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into the schedulers :meth:`start` built: their state,
        and the optimisers' step sizes (which building a scheduler may have changed)."""
        saved = state["schedulers"]
        if len(saved) != len(self.schedulers):
            raise ValueError(
                f"the checkpoint schedules {len(saved)} optimisers, this method has "
                f"{len(self.schedulers)}"
            )
        for scheduler, sd in zip(self.schedulers, saved, strict=True):
            scheduler.load_state_dict(sd)
            groups = scheduler.optimizer.param_groups
            for group, lr, base in zip(
                groups, scheduler.get_last_lr(), scheduler.base_lrs, strict=True
            ):
                group["lr"], group["initial_lr"] = lr, base


def current_lr(optimizers: Sequence[torch.optim.Optimizer]) -> float | list[float] | None:
    """The step size of ``optimizers``: one number when every parameter group has the same
    (the usual case), else the list of them, group by group; None without optimisers."""
    lrs = [float(g["lr"]) for opt in optimizers for g in opt.param_groups]
    if not lrs:
        return None
    return lrs[0] if all(lr == lrs[0] for lr in lrs) else lrs


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
