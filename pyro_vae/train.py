"""Training with Pyro's SVI: minibatches, per-epoch evaluation, checkpoints, the run directory.

``run_training(cfg, run_dir)`` is what ``pyro-vae train`` calls. The loop reads top to
bottom in :meth:`Trainer.fit`: one ``svi.step`` per minibatch, then at each epoch end the
test ELBO, a metrics line, a checkpoint and (on the snapshot schedule) a model snapshot.

Faults: the training state changes only inside a method step, so everything that must see
a consistent state (checkpoints, SIGINT/SIGTERM, a stop) happens between steps. A step
whose loss or gradient is NaN/Inf is refused before the optimiser moves anything
(:class:`~pyro_vae.optim.NonFiniteError`); the run stops, or skips it with
``skip_nonfinite=true``. A resumed run restores model, optimiser, RNG states and the
position in the data order, so it ends with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import __version__
from .config import ConfigError, resolve_device, to_yaml, validate_config
from .data import Minibatches
from .evaluate import mean_elbo
from .experiment import load_data, model_meta
from .methods import build_method
from .model import build_vae
from .optim import NonFiniteError, check_finite_loss
from .rundir import LAST_CHECKPOINT, RunDir, RunDirError, snapshot_name

# Keys a resumed run may take from the command line; every other key comes from the
# run's own config.yaml, so a resumed run is the same experiment. (skip_nonfinite changes
# nothing unless a step is non-finite, where the run would otherwise stop.)
RESUMABLE_KEYS = frozenset(
    {
        "epochs",
        "num_samples",
        "progress",
        "plots",
        "checkpoint_every",
        "checkpoint_every_steps",
        "checkpoint_every_seconds",
        "skip_nonfinite",
        "device",
        "data_dir",
    }
)
_CONTROL_KEYS = frozenset({"run_dir", "resume", "overwrite"})


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, for instance)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; training stopped between two steps, state consistent."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def snapshot_epochs(schedule: str, epoch: int) -> bool:
    """Whether the model after ``epoch`` epochs is kept (epoch 0: at initialisation)."""
    if schedule == "all":
        return True
    if schedule == "log":
        return epoch == 0 or (epoch & (epoch - 1)) == 0
    return False


class Trainer:
    """One training run: the model, its estimator and optimiser, and where it stands."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        validate_config(cfg)
        self.cfg = cfg
        self.run = RunDir(run_dir)
        self.device = resolve_device(cfg.device)
        pyro.enable_validation(cfg.validate)
        self.data = load_data(cfg, self.device)
        if cfg.batch_size > self.data.num_train:
            raise ConfigError(
                f"batch_size={cfg.batch_size} is not allowed: expected at most the "
                f"{self.data.num_train} training points of dataset={cfg.dataset.name}"
            )
        self.meta = model_meta(self.data)
        self._build_model()
        self.batches = Minibatches(
            self.data.train,
            cfg.batch_size,
            seed=cfg.seed,
            binarize=self.data.train_binarize,
            device=self.device,
        )
        # Where training stands: completed epochs, position within the current epoch.
        self.epoch = 0
        self.batch = 0
        self.step = 0
        self.samples = 0
        self.train_seconds = 0.0
        self.epoch_loss_sum = 0.0
        self.epoch_steps = 0
        self.metrics_rows = 0
        self.skipped_steps = 0
        self.last_finite_loss: tuple[int, float] | None = None  # (step, loss)
        self.checkpoint_step = 0  # step of the newest checkpoint written or loaded
        self.stop_signal: int | None = None
        self._last_checkpoint_time = time.monotonic()

    def _build_model(self) -> None:
        pyro.set_rng_seed(self.cfg.seed)
        self.vae = build_vae(self.cfg, self.data.x_dim, self.data.num_train).to(self.device)
        self.method = build_method(self.cfg, self.vae)

    def choose_step_size(self) -> dict[float, float]:
        """The paper's choice of the global step size "on the first iterations" (sec. 5).

        From the same initialisation and the same minibatches, train ``lr_search_steps``
        steps with each step size of ``lr_search`` and keep the one with the highest mean
        training bound over those steps (a diverging trial scores -inf). ``cfg.lr`` is set
        to it and the model is rebuilt from scratch, so the run that follows is the run
        ``lr=<chosen>`` would give. The trials do not count as training samples.
        Returns {step size: mean training bound per datapoint}.
        """
        cfg, scores = self.cfg, {}
        for lr in cfg.lr_search:
            cfg.lr = lr
            self._build_model()
            total, steps = 0.0, 0
            try:
                while steps < cfg.lr_search_steps:
                    for idx, x in self.batches.epoch(steps // len(self.batches)):
                        total += self.method.step(x, idx)
                        steps += 1
                        if steps == cfg.lr_search_steps:
                            break
            except (NonFiniteError, RuntimeError, ValueError):
                # A diverged trial stops at its first NaN/Inf loss or gradient, or fails
                # before (wake-sleep's dreams are Bernoulli draws, which refuse NaN
                # probabilities).
                total = math.nan
            score = -total / steps / self.data.num_train
            scores[float(lr)] = score if math.isfinite(score) else -math.inf
        cfg.lr = max(scores, key=scores.get)
        self._build_model()
        return scores

    # state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = pyro.util.get_rng_state()
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.vae.state_dict(),
            "method": self.method.state_dict(),
            "meta": self.meta,
            "position": {
                "epoch": self.epoch,
                "batch": self.batch,
                "step": self.step,
                "samples": self.samples,
                "train_seconds": self.train_seconds,
                "epoch_loss_sum": self.epoch_loss_sum,
                "epoch_steps": self.epoch_steps,
                "metrics_rows": self.metrics_rows,
                "skipped_steps": self.skipped_steps,
                "last_finite_loss": self.last_finite_loss,
            },
            "rng": rng,
            "version": __version__,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        for key, value in state["position"].items():
            setattr(self, key, value)
        self.checkpoint_step = self.step
        rng = dict(state["rng"])
        cuda = rng.pop("cuda", None)
        pyro.util.set_rng_state(rng)
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)

    def save_checkpoint(self) -> None:
        # Finite gradients can still step a parameter to Inf (an absurd lr): such a state
        # must not replace the last good checkpoint.
        if not all(torch.isfinite(p).all() for p in self.vae.parameters()):
            raise TrainingError(
                f"non-finite parameters after step {self.step} (method={self.cfg.method}, "
                f"estimator={self.cfg.estimator.name}); the last good checkpoint "
                f"(step {self.checkpoint_step}) is kept; a smaller lr may avoid it"
            )
        self.run.save_checkpoint(self.state_dict())
        self.checkpoint_step = self.step
        self._last_checkpoint_time = time.monotonic()

    def _checkpoint_due(self) -> bool:
        """Within an epoch: every ``checkpoint_every_steps`` steps / ``_seconds`` seconds."""
        every_steps, every_seconds = (
            self.cfg.checkpoint_every_steps,
            self.cfg.checkpoint_every_seconds,
        )
        if every_steps is not None and self.step % every_steps == 0:
            return True
        elapsed = time.monotonic() - self._last_checkpoint_time
        return every_seconds is not None and elapsed >= every_seconds

    def save_snapshot(self) -> None:
        state = {"model": self.vae.state_dict(), "meta": self.meta, "epoch": self.epoch}
        self.run.save_checkpoint(state, snapshot_name(self.epoch))

    # training ----------------------------------------------------------------
    def _total_steps(self) -> int:
        if self.cfg.num_samples is not None:
            return math.ceil(self.cfg.num_samples / self.cfg.batch_size)
        return self.cfg.epochs * len(self.batches)

    def _done(self) -> bool:
        if self.cfg.num_samples is not None:
            return self.samples >= self.cfg.num_samples
        return self.epoch >= self.cfg.epochs

    def _step(self, x: torch.Tensor, idx: torch.Tensor) -> float | None:
        """One method step; None when a non-finite step was skipped (``skip_nonfinite``)."""
        try:
            loss = self.method.step(x, idx)
            check_finite_loss(loss)  # for methods that step before checking their loss
        except NonFiniteError as e:
            if not self.cfg.skip_nonfinite:
                raise TrainingError(self._nonfinite_message(e)) from None
            # The refused step's gradients are still on the parameters: drop them.
            self.vae.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            if self.skipped_steps & (self.skipped_steps - 1) == 0:  # 1, 2, 4, ...: no flood
                tqdm.write(
                    f"warning: skipped step {self.step + 1} ({e}); "
                    f"{self.skipped_steps} skipped so far",
                    file=sys.stderr,
                )
            return None
        self.last_finite_loss = (self.step + 1, loss)
        return loss

    def _nonfinite_message(self, error: NonFiniteError) -> str:
        cfg = self.cfg
        last = "no finite loss yet"
        if self.last_finite_loss is not None:
            step, loss = self.last_finite_loss
            last = f"last finite loss {loss:.6g} at step {step}"
        if self.checkpoint_step:
            kept = (
                f"the last good checkpoint (step {self.checkpoint_step}) is kept in "
                f"{self.run.checkpoint_dir / LAST_CHECKPOINT}; resuming repeats this step, "
                f"`pyro-vae train run_dir={self.run.path} resume=true skip_nonfinite=true` "
                "skips it"
            )
        else:
            kept = "no checkpoint was written yet"
        return (
            f"non-finite {error} at step {self.step + 1} (method={cfg.method}, "
            f"estimator={cfg.estimator.name}); the parameters were not updated; {last}; "
            f"{kept}. A smaller lr or clip_grad_norm=... (a new run) may avoid it"
        )

    def _check_stop(self) -> None:
        if self.stop_signal is not None:
            raise TrainingInterrupted(self.stop_signal)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM set a flag the loop reads between steps; a second SIGINT aborts.

        A KeyboardInterrupt raised inside a step would leave parameters and counters out of
        step, so the first signal only asks; the handler prints nothing, since it may run
        while the main thread is writing to stderr.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum

        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, request_stop) for s in handled}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _end_of_period(self, start_wall: float) -> dict[str, Any]:
        """Evaluate, log a metrics line and reset the epoch accumulators."""
        self.vae.eval()
        test_elbo = mean_elbo(self.vae, self.data.test, self.cfg.eval_batch_size)
        self.vae.train()
        train_elbo = -self.epoch_loss_sum / max(self.epoch_steps, 1) / self.data.num_train
        row = {
            "epoch": self.epoch if self.batch == 0 else self.epoch + self.batch / len(self.batches),
            "step": self.step,
            "samples": self.samples,
            "train_elbo": train_elbo,
            "test_elbo": test_elbo,
            "skipped_steps": self.skipped_steps,
            "seconds": round(self.train_seconds, 3),
            "wall_seconds": round(time.perf_counter() - start_wall, 3),
        }
        self.run.append_metrics(row)
        self.metrics_rows += 1
        self.epoch_loss_sum, self.epoch_steps = 0.0, 0
        return row

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        start_wall = time.perf_counter()
        if self.step == 0 and snapshot_epochs(cfg.snapshots, 0):
            self.save_snapshot()
        bar = tqdm(
            total=self._total_steps(),
            initial=min(self.step, self._total_steps()),
            disable=not cfg.progress,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        last = {}
        with bar, self._stop_on_signals():
            while not self._done():
                self._check_stop()
                bar.set_description(f"epoch {self.epoch + 1}")
                tick = time.perf_counter()
                for idx, x in self.batches.epoch(self.epoch, start=self.batch):
                    loss = self._step(x, idx)
                    self.step += 1
                    self.batch += 1
                    self.samples += x.shape[0]
                    if loss is not None:
                        self.epoch_loss_sum += loss
                        self.epoch_steps += 1
                    self.train_seconds += time.perf_counter() - tick
                    bar.update()
                    if self.step % 20 == 0 and self.epoch_steps:
                        elbo = -self.epoch_loss_sum / self.epoch_steps / self.data.num_train
                        bar.set_postfix(elbo=f"{elbo:.2f}", refresh=False)
                    if self._done():
                        break
                    self._check_stop()
                    # The epoch's last step is checkpointed below, after its metrics line.
                    if self.batch < len(self.batches) and self._checkpoint_due():
                        self.save_checkpoint()
                    tick = time.perf_counter()
                if self.batch >= len(self.batches):
                    self.epoch, self.batch = self.epoch + 1, 0
                last = self._end_of_period(start_wall)
                if cfg.progress:
                    bar.write(
                        f"epoch {last['epoch']:g}: train ELBO {last['train_elbo']:.2f}, "
                        f"test ELBO {last['test_elbo']:.2f} nats"
                    )
                final = self._done()
                if final or self.epoch % cfg.checkpoint_every == 0 or self._checkpoint_due():
                    self.save_checkpoint()
                if self.batch == 0 and (final or snapshot_epochs(cfg.snapshots, self.epoch)):
                    self.save_snapshot()
        return last


def _overridden_keys(overrides: Sequence[str]) -> list[str]:
    keys = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra"):
            keys.append(key)
    return keys


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def resumed_config(
    saved: DictConfig, requested: DictConfig, overrides: Sequence[str] | None = None
) -> DictConfig:
    """The saved config, with the resumable keys the command line set; other changes refused.

    ``overrides`` are the command line's ``key=value`` strings: only those keys are compared,
    since the other keys of ``requested`` are defaults, not requests. Without them (a
    configuration built in code) every top-level key of ``requested`` is compared.
    """
    cfg = saved.copy()
    # Keys added to pyro-vae after the run was written take their current default.
    for key in requested:
        if key not in saved and key != "hydra" and not OmegaConf.is_dict(requested[key]):
            cfg[key] = requested[key]
    changed = []
    if overrides is None:
        keys = [k for k in requested if k != "hydra"]
        requested = OmegaConf.create(OmegaConf.to_container(requested, resolve=True))
    else:
        keys = _overridden_keys(overrides)
    for key in keys:
        if key in _CONTROL_KEYS:
            continue
        new, old = OmegaConf.select(requested, key), OmegaConf.select(saved, key)
        if key in RESUMABLE_KEYS:
            OmegaConf.update(cfg, key, new, merge=False)
        elif _plain(new) != _plain(old):
            changed.append(f"{key}: run has {old!r}, command line asks {new!r}")
    if changed:
        raise ConfigError(
            "resume=true continues the run as it was configured; these overrides would change "
            f"it: {'; '.join(changed)}. Allowed on resume: {sorted(RESUMABLE_KEYS)}"
        )
    cfg.resume = True
    return cfg


def _clear_run(run: RunDir) -> None:
    for name in (run.metrics_path, run.summary_path):
        name.unlink(missing_ok=True)
    for d in (run.checkpoint_dir, run.figure_dir):
        shutil.rmtree(d, ignore_errors=True)


def run_training(
    cfg: DictConfig, run_dir: str | Path | None = None, overrides: Sequence[str] | None = None
) -> dict[str, Any]:
    """Train as ``cfg`` says into ``run_dir`` (default ``cfg.run_dir``); returns the summary.

    A finished run is never retrained silently: it is skipped (``overwrite=true`` retrains
    it from scratch). A run is continued only with ``resume=true``: an interrupted one from
    its last checkpoint, a finished one when more ``epochs``/``num_samples`` are asked for.
    """
    run = RunDir(run_dir if run_dir is not None else cfg.run_dir)
    resume, overwrite = bool(cfg.get("resume", False)), bool(cfg.get("overwrite", False))
    if run.is_finished() and not (resume or overwrite):
        print(
            f"{run.path} already holds a finished run; not retraining it "
            "(overwrite=true to train it again from scratch)",
            file=sys.stderr,
        )
        return run.summary()
    validate_config(cfg)
    with run.lock():
        if overwrite:
            _clear_run(run)
        if run.has_checkpoint() and not resume:
            raise RunDirError(
                f"{run.path} holds an unfinished run; pass resume=true to continue it, "
                "or choose another run_dir"
            )
        if resume and run.config_path.is_file():
            cfg = resumed_config(run.config(), cfg, overrides)
            try:
                validate_config(cfg)
            except ConfigError as e:
                raise ConfigError(f"{run.config_path}: {e}") from None
        trainer = Trainer(cfg, run.path)
        return _train(trainer, run, resume)


def _train(trainer: Trainer, run: RunDir, resume: bool) -> dict[str, Any]:
    """Resume or start ``trainer`` in ``run``, handle stops, write the summary and figures."""
    cfg = trainer.cfg
    run.remove_partial_files()
    if resume and run.has_checkpoint():
        state, path = run.resume_checkpoint()
        trainer.load_state_dict(state)
        if run.is_finished() and trainer._done():  # e.g. a -m sweep resumed: leave it be
            print(f"{run.path} already holds a finished run; nothing to resume", file=sys.stderr)
            return run.summary()
        print(
            f"resuming {run.path} from {path.name} at step {trainer.step} "
            f"(epoch {trainer.epoch + 1}, batch {trainer.batch} of {len(trainer.batches)})",
            file=sys.stderr,
        )
    elif resume:
        print(f"{run.path} has no checkpoint yet: training from the start", file=sys.stderr)
    # The step-size search of a resumed run was done when it started: keep its record.
    lr_search = run.summary().get("lr_search") if trainer.step else None
    if cfg.lr_search and not trainer.step:
        lr_search = {str(lr): score for lr, score in trainer.choose_step_size().items()}
        print(f"step size {cfg.lr} chosen from {lr_search}", file=sys.stderr)
    # Lines logged after the checkpoint (or by an attempt killed before its first one) are
    # logged again by this run.
    run.write_metrics(run.metrics()[: trainer.metrics_rows])
    run.write_config(to_yaml(cfg))
    run.summary_path.unlink(missing_ok=True)  # figures of an earlier model would be stale
    run.update_summary(
        status="running",
        pyro_vae_version=__version__,
        torch_version=torch.__version__,
        pyro_version=pyro.__version__,
        device=str(trainer.device),
        num_parameters=sum(p.numel() for p in trainer.vae.parameters()),
        **trainer.meta,
        **({"lr_search": lr_search, "lr": cfg.lr} if lr_search else {}),
    )
    resume_hint = f"pyro-vae train run_dir={run.path} resume=true"
    try:
        last = trainer.fit()
    except TrainingInterrupted as e:
        if trainer.checkpoint_step != trainer.step:  # not when one was just written
            trainer.save_checkpoint()
        run.update_summary(status="interrupted", step=trainer.step, samples=trainer.samples)
        print(
            f"\n{e}: stopped at step {trainer.step}; checkpoint saved to "
            f"{run.checkpoint_dir / LAST_CHECKPOINT}. Resume with:\n  {resume_hint}",
            file=sys.stderr,
        )
        raise
    except KeyboardInterrupt:
        # Raised inside a step (a second Ctrl-C): the state in memory is not consistent,
        # so the newest checkpoint on disk is where this run resumes.
        run.update_summary(status="interrupted", step=trainer.checkpoint_step)
        where = (
            f"resume from its last checkpoint (step {trainer.checkpoint_step}) with:\n  "
            f"{resume_hint}"
            if trainer.checkpoint_step
            else "no checkpoint was written yet; run the same command to start again"
        )
        print(f"\nstopped at once; {where}", file=sys.stderr)
        raise
    except BaseException as e:
        run.update_summary(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    rows = run.metrics()
    summary = run.update_summary(
        status="finished",
        epochs=trainer.epoch,
        steps=trainer.step,
        samples=trainer.samples,
        skipped_steps=trainer.skipped_steps,
        train_seconds=round(trainer.train_seconds, 2),
        train_elbo=last.get("train_elbo", rows[-1]["train_elbo"] if rows else None),
        test_elbo=last.get("test_elbo", rows[-1]["test_elbo"] if rows else None),
        best_test_elbo=max((r["test_elbo"] for r in rows), default=None),
    )
    if cfg.plots:
        from .plots import plot_run

        try:
            plot_run(run.path)
        except Exception as e:  # the trained model is saved; a figure must not undo that
            print(f"warning: plotting failed ({type(e).__name__}: {e})", file=sys.stderr)
    return summary
