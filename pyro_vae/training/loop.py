"""The training loop: one method step per minibatch, an evaluation at each epoch's end.

:meth:`Trainer.fit` is the whole loop, top to bottom. Everything else a run does
(checkpoints, metrics, snapshots, signals, the non-finite policy, the progress bar, the
paper's step-size search) is a :class:`Callback` (:mod:`pyro_vae.training.hooks`), called
at five points:

- ``on_fit_start``: before the first step (or the first step after a resume);
- ``on_epoch_start``: before each epoch's (or the resumed epoch's) first step;
- ``on_step``: after every step, with its loss (None for a skipped step);
- ``between_steps``: after a step that another step follows: the state is consistent, so
  this is where a run may stop or write a mid-epoch checkpoint;
- ``on_period_end``: after an epoch's (or the final part epoch's) evaluation, with the
  metrics row (after an epoch's end, the step-size schedule has already taken its step);
- ``on_fit_end``: always, also when training raised;
- ``on_run_end``: called by :func:`pyro_vae.train` (not by :meth:`Trainer.fit`) when a run
  has trained and ended: its summary.json written and its figures plotted (what experiment
  trackers, :mod:`pyro_vae.training.loggers`, record last).

Where training stands is one :class:`TrainingPosition`, saved and restored as a unit with
the model, the method (its optimisers), the step-size schedule and the random state
(:meth:`Trainer.state_dict`), so a resumed run ends with the numbers of an uninterrupted one.

A step-size schedule (:class:`~pyro_vae.optim.LRSchedule`, ``lr_schedule=``) is built over
the method's optimisers after the ``on_fit_start`` callbacks (so the step-size search has
set the base step size) and steps once at every epoch's end, after the epoch's metrics row
(whose ``lr`` is the step size the epoch trained with) and before the callbacks see it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from ..data import Minibatches
from ..errors import NonFiniteError, refuse
from ..evaluate import mean_elbo
from ..methods.base import TrainingMethod
from ..optim import LRSchedule, check_finite_loss, current_lr
from ..version import __version__


@dataclass
class TrainingPosition:
    """Where training stands: what a checkpoint's ``position`` holds."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # minibatches done in the current epoch
    step: int = 0
    samples: int = 0  # training points seen (the paper's x-axis)
    train_seconds: float = 0.0  # time in steps (not in evaluation or checkpoints)
    epoch_loss_sum: float = 0.0  # sum of the losses of this period's finite steps
    epoch_steps: int = 0  # this period's finite steps
    metrics_rows: int = 0  # lines in metrics.jsonl that this position accounts for
    skipped_steps: int = 0  # non-finite steps skipped (skip_nonfinite)
    last_finite_loss: tuple[int, float] | None = None  # (step, loss)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrainingPosition:
        last = state.get("last_finite_loss")
        return cls(**{**state, "last_finite_loss": None if last is None else tuple(last)})


class Callback:
    """A side effect of training; override the points it needs (see the module doc)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer) -> None:
        pass

    def on_step(self, trainer: Trainer, loss: float | None) -> None:
        pass

    def between_steps(self, trainer: Trainer) -> None:
        pass

    def on_period_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass

    def on_run_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        pass

    def on_nonfinite(self, trainer: Trainer, error: NonFiniteError) -> bool:
        """A step was refused as non-finite; True if handled (skipped), else it is raised."""
        return False


class Trainer:
    """Train ``method`` (which holds the model) on ``batches``, evaluating on ``test``.

    Args:
        method: the training method; ``method.vae`` is the model.
        batches: the training minibatches (shuffled, binarised, deterministic given the
            seed, the epoch and the position: what makes mid-epoch resume exact).
        test: test data [N, D], evaluated (mean ELBO) at every period's end.
        epochs: epochs to train, unless ``num_samples`` is given.
        num_samples: training points to see instead (the paper's unit); the last period
            may end mid-epoch.
        eval_batch_size: points per evaluation pass.
        callbacks: side effects, called in this order at each point.
        meta: what a checkpoint records to rebuild the model without the data.
        describe: the run in a few words for messages (``method=aevb, estimator=stl``).
        schedule: the step-size schedule over the method's optimisers, stepped at every
            epoch's end (None: the optimisers' step size throughout).
        run_dir: the run directory the callbacks write into, where there is one.
    """

    def __init__(
        self,
        method: TrainingMethod,
        batches: Minibatches,
        test: torch.Tensor,
        *,
        epochs: int = 10,
        num_samples: int | None = None,
        eval_batch_size: int = 1000,
        callbacks: Sequence[Callback] = (),
        meta: dict[str, Any] | None = None,
        describe: str = "",
        schedule: LRSchedule | None = None,
        run_dir: str | os.PathLike | None = None,
    ):
        self.method, self.vae = method, method.vae
        self.batches, self.test = batches, test
        self.epochs, self.num_samples = epochs, num_samples
        self.eval_batch_size = eval_batch_size
        self.callbacks = list(callbacks)
        self.meta = meta or {}
        self.describe = describe or type(method).__name__
        #: What callbacks record for the run's summary.json (the step-size search's result).
        self.summary: dict[str, Any] = {}
        self.position = TrainingPosition()
        self.schedule = schedule
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._saved_schedule: dict[str, Any] | None = None  # restored at the start of fit
        self.device = test.device
        self._start_wall = time.perf_counter()

    @property
    def num_data(self) -> int:
        return self.batches.num_data

    def done(self) -> bool:
        if self.num_samples is not None:
            return self.position.samples >= self.num_samples
        return self.position.epoch >= self.epochs

    def total_steps(self) -> int:
        if self.num_samples is not None:
            return math.ceil(self.num_samples / self.batches.batch_size)
        return self.epochs * len(self.batches)

    def total_epochs(self) -> int:
        """The run's length in epochs (a part epoch counts as one): what ``cosine`` spans."""
        if self.num_samples is not None:
            per_epoch = min(len(self.batches) * self.batches.batch_size, self.num_data)
            return math.ceil(self.num_samples / per_epoch)
        return self.epochs

    def fit(self) -> dict[str, Any]:
        """Train until :meth:`done`; returns the last metrics row ({} if nothing was left)."""
        pos, row = self.position, {}
        try:
            self._call("on_fit_start")
            self._start_schedule()
            # Wall time counts from here: the step-size search is not part of the run.
            self._start_wall = time.perf_counter()
            while not self.done():
                self._call("on_epoch_start")
                tick = time.perf_counter()
                for idx, x in self.batches.epoch(pos.epoch, start=pos.batch):
                    loss = self.step(x, idx)
                    pos.step += 1
                    pos.batch += 1
                    pos.samples += x.shape[0]
                    if loss is not None:
                        pos.epoch_loss_sum += loss
                        pos.epoch_steps += 1
                    pos.train_seconds += time.perf_counter() - tick
                    self._call("on_step", loss)
                    if self.done():
                        break
                    self._call("between_steps")
                    tick = time.perf_counter()
                if pos.batch >= len(self.batches):
                    pos.epoch, pos.batch = pos.epoch + 1, 0
                row = self.end_period()
                if self.schedule is not None and pos.batch == 0:  # a whole epoch ended
                    self.schedule.step()
                self._call("on_period_end", row)
        finally:
            self._call("on_fit_end")
        return row

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float | None:
        """One method step; None when a non-finite step was skipped by a callback."""
        try:
            loss = self.method.step(x, idx)
            check_finite_loss(loss)  # for methods that step before checking their loss
        except NonFiniteError as e:
            if any(cb.on_nonfinite(self, e) for cb in self.callbacks):
                return None
            raise
        self.position.last_finite_loss = (self.position.step + 1, loss)
        return loss

    def end_period(self) -> dict[str, Any]:
        """Evaluate on the test data, and start a new period: the metrics row."""
        pos = self.position
        self.vae.eval()
        test_elbo = mean_elbo(self.vae, self.test, self.eval_batch_size)
        self.vae.train()
        train_elbo = -pos.epoch_loss_sum / max(pos.epoch_steps, 1) / self.num_data
        row = {
            "epoch": pos.epoch if pos.batch == 0 else pos.epoch + pos.batch / len(self.batches),
            "step": pos.step,
            "samples": pos.samples,
            "train_elbo": train_elbo,
            "test_elbo": test_elbo,
            "lr": current_lr(getattr(self.method, "optimizers", ())),
            "skipped_steps": pos.skipped_steps,
            "seconds": round(pos.train_seconds, 3),
            "wall_seconds": round(time.perf_counter() - self._start_wall, 3),
        }
        pos.metrics_rows += 1
        pos.epoch_loss_sum, pos.epoch_steps = 0.0, 0
        return row

    def _start_schedule(self) -> None:
        """Build the schedule over the method's optimisers; a resumed run's state restored."""
        if self.schedule is None:
            return
        self.schedule.start(self.method.optimizers, self.total_epochs())
        if self._saved_schedule is not None:
            self.schedule.load_state_dict(self._saved_schedule)
            self._saved_schedule = None

    def _call(self, point: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, point)(self, *args)

    # state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model, method, position, schedule and random state: everything a resumed run
        needs (``schedule`` only where the run has one)."""
        state = {
            "model": self.vae.state_dict(),
            "method": self.method.state_dict(),
            "meta": self.meta,
            "position": self.position.state_dict(),
            "rng": get_rng_state(self.device),
            "version": __version__,
        }
        if self.schedule is not None:
            started = self.schedule.schedulers or self._saved_schedule is None
            state["schedule"] = self.schedule.state_dict() if started else self._saved_schedule
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the schedule's state is restored when :meth:`fit`
        builds it. A schedule other than the checkpoint's is refused (ArgumentError)."""
        saved = state.get("schedule")
        have = "none" if self.schedule is None else self.schedule.name
        was = "none" if saved is None else saved["name"]
        if have != was:
            raise refuse(
                "lr_schedule", have, f"{was!r}, the schedule the checkpoint was trained with"
            )
        self.vae.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.position = TrainingPosition.from_state(state["position"])
        set_rng_state(state["rng"], self.device)
        self._saved_schedule = saved


def get_rng_state(device: torch.device) -> dict[str, Any]:
    """The random state a run draws from: Pyro's (torch, numpy, random) and the device's."""
    rng = pyro.util.get_rng_state()
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :meth:`Trainer.state_dict` saved of the random state."""
    rng = dict(state)
    cuda = rng.pop("cuda", None)
    pyro.util.set_rng_state(rng)
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
