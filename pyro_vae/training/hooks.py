"""The side effects of a training run, each a small :class:`~pyro_vae.training.loop.Callback`.

=====================  ==========================================================
:class:`StepSizeSearch`  the paper's choice of the step size on the first iterations
:class:`RunRecord`       config.yaml, summary.json and metrics.jsonl at the start
:class:`StopOnSignals`   SIGINT/SIGTERM stop the run between two steps
:class:`ProgressBar`     tqdm's bar and one line per epoch
:class:`Snapshots`       model snapshots on a schedule (epochs 0, 1, 2, 4, ...)
:class:`MetricsLog`      one metrics.jsonl line per evaluation
:class:`Checkpoints`     the full training state, every N epochs / steps / seconds
:class:`NonFinitePolicy` a NaN/Inf step stops the run, or is skipped and counted
=====================  ==========================================================

:func:`pyro_vae.train` puts them in this order; the order matters where two act at the
same point (a metrics line before the checkpoint that counts it, a stop request before a
mid-epoch checkpoint).
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import pyro
import torch
from tqdm import tqdm

from ..errors import NonFiniteError, TrainingError, TrainingInterrupted
from ..optim import set_lr
from ..version import __version__
from .loop import Callback, Trainer, get_rng_state, set_rng_state
from .rundir import LAST_CHECKPOINT, RunDir, snapshot_name

logger = logging.getLogger("pyro_vae.training")


def snapshot_epochs(schedule: str, epoch: int) -> bool:
    """Whether the model after ``epoch`` epochs is kept (epoch 0: at initialisation)."""
    if schedule == "all":
        return True
    if schedule == "log":
        return epoch == 0 or (epoch & (epoch - 1)) == 0
    return False


class StepSizeSearch(Callback):
    """The paper's choice of the global step size "on the first iterations" (sec. 5).

    Before the first step, from the same initialisation and the same minibatches, train
    ``steps`` steps with each step size of ``lrs`` and keep the one with the highest mean
    training bound over those steps (a diverging trial scores -inf). Every trial, and the
    run that follows, starts from the state (model, optimisers, random state) the run had
    before the search, so the run is the run ``lr=<chosen>`` would give. The trials do not
    count as training samples. ``scores`` ({step size: mean bound per datapoint}) and
    ``chosen`` are recorded in ``trainer.summary`` (``lr_search``, ``lr``).
    """

    def __init__(self, lrs: Sequence[float], steps: int = 100):
        self.lrs, self.steps = [float(lr) for lr in lrs], steps
        self.scores: dict[float, float] = {}
        self.chosen: float | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.position.step:  # a resumed run searched when it started
            return
        start = copy.deepcopy(
            (trainer.vae.state_dict(), trainer.method.state_dict(), get_rng_state(trainer.device))
        )
        for lr in self.lrs:
            self._restore(trainer, start, lr)
            total, steps = 0.0, 0
            try:
                while steps < self.steps:
                    epoch = steps // len(trainer.batches)
                    for idx, x in trainer.batches.epoch(epoch):
                        total += trainer.method.step(x, idx)
                        steps += 1
                        if steps == self.steps:
                            break
            except (NonFiniteError, RuntimeError, ValueError):
                # A diverged trial stops at its first NaN/Inf loss or gradient, or fails
                # before (wake-sleep's dreams are Bernoulli draws, which refuse NaN
                # probabilities).
                total = math.nan
            score = -total / steps / trainer.num_data
            self.scores[lr] = score if math.isfinite(score) else -math.inf
        self.chosen = max(self.scores, key=self.scores.get)
        self._restore(trainer, start, self.chosen)
        trainer.summary.update(lr_search={str(k): v for k, v in self.scores.items()})
        trainer.summary["lr"] = self.chosen
        logger.info("step size %s chosen from %s", self.chosen, trainer.summary["lr_search"])

    @staticmethod
    def _restore(trainer: Trainer, start: tuple, lr: float) -> None:
        model, method, rng = copy.deepcopy(start)
        trainer.vae.load_state_dict(model)
        trainer.method.load_state_dict(method)
        trainer.vae.zero_grad(set_to_none=True)  # a refused trial leaves its gradients
        set_rng_state(rng, trainer.device)
        for optimizer in trainer.method.optimizers:
            set_lr(optimizer, lr)


class RunRecord(Callback):
    """At the start: ``config.yaml``, ``summary.json`` (status "running", versions, sizes,
    the step-size search) and ``metrics.jsonl`` cut to the lines the restored position
    accounts for (lines logged after the checkpoint, or by an attempt killed before its
    first one, are logged again by this run)."""

    def __init__(self, run: RunDir, config: dict[str, Any]):
        self.run, self.config = run, config

    def on_fit_start(self, trainer: Trainer) -> None:
        run = self.run
        if trainer.position.step:  # the search of a resumed run was done when it started
            earlier = run.summary()
            if "lr_search" in earlier:
                trainer.summary.update(lr_search=earlier["lr_search"], lr=earlier.get("lr"))
        run.write_metrics(run.metrics()[: trainer.position.metrics_rows])
        config = dict(self.config)
        if "lr" in trainer.summary and "lr" in config:
            config["lr"] = trainer.summary["lr"]
        run.write_config(config)
        run.summary_path.unlink(missing_ok=True)  # figures of an earlier model would be stale
        run.update_summary(
            status="running",
            pyro_vae_version=__version__,
            torch_version=torch.__version__,
            pyro_version=pyro.__version__,
            device=str(trainer.device),
            num_parameters=sum(p.numel() for p in trainer.vae.parameters()),
            **trainer.meta,
            **trainer.summary,
        )


class StopOnSignals(Callback):
    """SIGINT/SIGTERM set a flag that stops the run between two steps; a second SIGINT aborts.

    A KeyboardInterrupt raised inside a step would leave parameters and counters out of
    step, so the first signal only asks (:class:`~pyro_vae.errors.TrainingInterrupted` is
    raised at the next consistent point); the handler prints nothing, since it may run
    while the main thread is writing to stderr. Off the main thread (where Python allows no
    handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signum = signum

        self._previous = {
            s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)
        }

    def _check(self, trainer: Trainer) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(self.signum)

    on_epoch_start = between_steps = _check

    def on_fit_end(self, trainer: Trainer) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class ProgressBar(Callback):
    """tqdm's bar over the run's steps, with the running bound, and a line per epoch.

    ``evaluated``: what the epoch's evaluation is called in that line (``test ELBO``; a run
    without test data, whose evaluation is on the training data, says so)."""

    def __init__(self, enabled: bool = True, evaluated: str | None = None):
        self.enabled = enabled
        self.evaluated = evaluated or "test ELBO"
        self.bar: tqdm | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        total = trainer.total_steps()
        self.bar = tqdm(
            total=total,
            initial=min(trainer.position.step, total),
            disable=not self.enabled,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.bar.set_description(f"epoch {trainer.position.epoch + 1}")

    def on_step(self, trainer: Trainer, loss: float | None) -> None:
        pos = trainer.position
        self.bar.update()
        if pos.step % 20 == 0 and pos.epoch_steps:
            elbo = -pos.epoch_loss_sum / pos.epoch_steps / trainer.num_data
            self.bar.set_postfix(elbo=f"{elbo:.2f}", refresh=False)

    def on_period_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.enabled:
            self.bar.write(
                f"epoch {row['epoch']:g}: train ELBO {row['train_elbo']:.2f}, "
                f"{self.evaluated} {row['test_elbo']:.2f} nats"
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class Snapshots(Callback):
    """The model at initialisation and after the epochs of ``schedule`` (``log``: 1, 2, 4,
    8, ..., and the last; ``all``; ``none``), as ``checkpoints/epoch_NNNN.pt``."""

    def __init__(self, run: RunDir, schedule: str = "log"):
        self.run, self.schedule = run, schedule

    def save(self, trainer: Trainer) -> None:
        state = {
            "model": trainer.vae.state_dict(),
            "meta": trainer.meta,
            "epoch": trainer.position.epoch,
        }
        self.run.save_checkpoint(state, snapshot_name(trainer.position.epoch))

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.position.step == 0 and snapshot_epochs(self.schedule, 0):
            self.save(trainer)

    def on_period_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        pos = trainer.position
        if pos.batch == 0 and (trainer.done() or snapshot_epochs(self.schedule, pos.epoch)):
            self.save(trainer)


class MetricsLog(Callback):
    """One line of ``metrics.jsonl`` per evaluation (epoch end, or the end of a run that
    stops mid-epoch)."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_period_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self.run.append_metrics(row)


class Checkpoints(Callback):
    """The full training state (:meth:`Trainer.state_dict`) as ``checkpoints/last.pt``.

    Written every ``every_epochs`` epochs, at the end, and within an epoch every
    ``every_steps`` steps or when ``every_seconds`` have passed since the last one (an
    epoch's last step is checkpointed after its metrics line). Parameters that a finite
    gradient stepped to Inf (an absurd lr) never replace the last good checkpoint.
    ``step`` is the step of the newest checkpoint written or loaded.
    """

    def __init__(
        self,
        run: RunDir,
        every_epochs: int = 1,
        every_steps: int | None = None,
        every_seconds: float | None = None,
    ):
        self.run = run
        self.every_epochs, self.every_steps, self.every_seconds = (
            every_epochs,
            every_steps,
            every_seconds,
        )
        self.step = 0
        self._last_time = time.monotonic()

    def on_fit_start(self, trainer: Trainer) -> None:
        self.step = trainer.position.step
        self._last_time = time.monotonic()

    def due(self, trainer: Trainer) -> bool:
        """Within an epoch: every ``every_steps`` steps / ``every_seconds`` seconds."""
        if self.every_steps is not None and trainer.position.step % self.every_steps == 0:
            return True
        elapsed = time.monotonic() - self._last_time
        return self.every_seconds is not None and elapsed >= self.every_seconds

    def save(self, trainer: Trainer) -> None:
        if not all(torch.isfinite(p).all() for p in trainer.vae.parameters()):
            raise TrainingError(
                f"non-finite parameters after step {trainer.position.step} "
                f"({trainer.describe}); the last good checkpoint (step {self.step}) is kept; "
                "a smaller lr may avoid it"
            )
        self.run.save_checkpoint(trainer.state_dict())
        self.step = trainer.position.step
        self._last_time = time.monotonic()

    def between_steps(self, trainer: Trainer) -> None:
        if trainer.position.batch < len(trainer.batches) and self.due(trainer):
            self.save(trainer)

    def on_period_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        pos = trainer.position
        if trainer.done() or pos.epoch % self.every_epochs == 0 or self.due(trainer):
            self.save(trainer)

    @property
    def path(self):
        return self.run.checkpoint_dir / LAST_CHECKPOINT


class NonFinitePolicy(Callback):
    """A step refused for a NaN/Inf loss or gradient (the parameters were not updated):
    with ``skip``, drop its gradients, count it and go on (a warning at the 1st, 2nd, 4th,
    ... skip); otherwise stop with a :class:`~pyro_vae.errors.TrainingError` that says
    what was kept and how to go on."""

    def __init__(self, skip: bool = False, checkpoints: Checkpoints | None = None):
        self.skip, self.checkpoints = skip, checkpoints

    def on_nonfinite(self, trainer: Trainer, error: NonFiniteError) -> bool:
        pos = trainer.position
        if not self.skip:
            raise TrainingError(self.message(trainer, error)) from None
        trainer.vae.zero_grad(set_to_none=True)  # the refused step's gradients
        pos.skipped_steps += 1
        if pos.skipped_steps & (pos.skipped_steps - 1) == 0:  # 1, 2, 4, ...: no flood
            logger.warning(
                "skipped step %d (%s); %d skipped so far", pos.step + 1, error, pos.skipped_steps
            )
        return True

    def message(self, trainer: Trainer, error: NonFiniteError) -> str:
        pos = trainer.position
        last = "no finite loss yet"
        if pos.last_finite_loss is not None:
            step, loss = pos.last_finite_loss
            last = f"last finite loss {loss:.6g} at step {step}"
        ckpt = self.checkpoints
        if ckpt is not None and ckpt.step:
            run = ckpt.run
            kept = (
                f"the last good checkpoint (step {ckpt.step}) is kept in {ckpt.path}; resuming "
                f"repeats this step, `pyro-vae train run_dir={run.path} resume=true "
                "skip_nonfinite=true` skips it"
            )
        else:
            kept = "no checkpoint was written yet"
        return (
            f"non-finite {error} at step {pos.step + 1} ({trainer.describe}); the parameters "
            f"were not updated; {last}; {kept}. A smaller lr or clip_grad_norm=... (a new run) "
            "may avoid it"
        )
