"""A training session: :func:`train` a VAE into a run directory, with plain arguments.

::

    vae = pyro_vae.VAE.mlp(x_dim=784, latent_dim=20)
    summary = pyro_vae.train(vae, x_train, "runs/mine", test=x_test, estimator="stl", epochs=5)

``pyro-vae train`` calls the same function (through :mod:`pyro_vae.config`), so a run from
Python writes the run directory the command line writes: ``config.yaml``,
``metrics.jsonl``, ``summary.json``, checkpoints, snapshots and figures, with exact resume
(``resume=True``), the non-finite policy, signals and the progress bar.

A finished run is never retrained silently: it is left as it is (``overwrite=True``
retrains it from scratch). A run is continued only with ``resume=True``: an interrupted
one from its last checkpoint, a finished one when more ``epochs``/``num_samples`` are asked
for. The global random state (the model's initialisation, the estimators' noise) is the
caller's: seed it (``pyro.set_rng_seed``) before building the model; ``seed`` here orders
the minibatches and their binarisation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pyro.infer import ELBO

from ..data import (
    Dataset,
    Minibatches,
    RunData,
    TorchData,
    is_torch_data,
    prepare_data,
    torch_dataset,
)
from ..errors import ArgumentError, TrainingInterrupted, refuse
from ..methods import build_method
from ..methods.base import TrainingMethod
from ..model import VAE
from ..optim import LRSchedule, OptimizerFactory, optimizer_factory
from ..plots import elbo_title, plot_figures
from .hooks import (
    Checkpoints,
    MetricsLog,
    NonFinitePolicy,
    ProgressBar,
    RunRecord,
    Snapshots,
    StepSizeSearch,
    StopOnSignals,
)
from .loop import Callback, Trainer
from .rundir import LAST_CHECKPOINT, RunDir

logger = logging.getLogger("pyro_vae.training")

SNAPSHOT_SCHEDULES = ("log", "all", "none")


def train(
    vae: VAE,
    data: torch.Tensor | Dataset | RunData | TorchData,
    run_dir: str | os.PathLike,
    *,
    test: torch.Tensor | TorchData | None = None,
    method: str | TrainingMethod = "aevb",
    estimator: str | ELBO = "trace_elbo",
    num_particles: int = 1,
    optimizer: str | OptimizerFactory = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    clip_grad_norm: float | None = None,
    fast: bool = False,
    epochs: int = 10,
    num_samples: int | None = None,
    batch_size: int = 100,
    binarize: str = "none",
    test_binarize: str = "none",
    binarize_seed: int = 0,
    seed: int = 0,
    eval_batch_size: int = 1000,
    checkpoint_every: int = 1,
    checkpoint_every_steps: int | None = None,
    checkpoint_every_seconds: float | None = None,
    snapshots: str = "log",
    skip_nonfinite: bool = False,
    progress: bool = True,
    plots: bool = True,
    lr_search: Sequence[float] | None = None,
    lr_search_steps: int = 100,
    lr_schedule: str | Callable[..., Any] | LRSchedule = "none",
    lr_gamma: float = 0.1,
    lr_step_epochs: int = 10,
    lr_min: float = 0.0,
    lr_iwae_epochs: int = 3280,
    resume: bool = False,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train ``vae`` on ``data`` into ``run_dir``; returns the run's summary.

    Args:
        vae: the model (:class:`~pyro_vae.model.VAE`, any networks and prior); its
            ``num_data`` is set to the training set's size when unset.
        data: training data [N, D] (or [N, H, W]), a :class:`~pyro_vae.data.Dataset`
            (``load_dataset("mnist")``), prepared :class:`RunData`, or a
            ``torch.utils.data.Dataset``/``DataLoader`` (torchvision's datasets: items are
            arrays or (image, target) tuples; :mod:`pyro_vae.data.torch_data`), read into
            memory once: a loader's own batching and shuffling are not used, as minibatches
            are drawn here, seeded, so that a run resumes bit for bit; moved to the
            model's device.
        test: test data (a tensor or torch data) when ``data`` is a tensor or torch data
            (else the training data are evaluated).
        method: ``"aevb"``, ``"wake_sleep"``, ``"mcem"`` or a method object (then
            ``estimator``, ``num_particles``, ``optimizer``, ``lr``, ``weight_decay``,
            ``clip_grad_norm`` and ``fast`` are the object's business).
        estimator: for AEVB, a name (:func:`~pyro_vae.estimators.build_estimator`) or an
            ELBO object.
        optimizer: ``"adam"``, ``"adagrad"``, or parameters -> torch optimiser.
        epochs: how long, in epochs.
        num_samples: how long, in training points evaluated (instead of ``epochs``, when
            given).
        binarize: ``"dynamic"`` draws a fresh Bernoulli sample of each minibatch (grey-level
            data under a Bernoulli likelihood), ``"fixed"`` one sample of the training set
            (``binarize_seed``), ``"none"`` trains on the data as they are.
        test_binarize: ``"fixed"`` evaluates on one Bernoulli sample of the test set (the
            command line's default for MNIST), ``"none"`` on the data as they are.
        checkpoint_every: as the command line's key of the same name, and so are
            ``checkpoint_every_steps``, ``checkpoint_every_seconds``, ``snapshots``,
            ``skip_nonfinite``, ``progress``, ``plots``, ``lr_search`` and
            ``lr_search_steps``.
        lr_schedule: the step size epoch by epoch, applied to every optimiser of the method
            and stepped once at each epoch's end (the lr of each epoch is ``lr`` in
            metrics.jsonl; the step-size search picks the base step size first, which the
            schedule then scales): ``"none"`` (``lr`` throughout), ``"exponential"``
            (lr * lr_gamma^epoch), ``"step"`` (times ``lr_gamma`` every ``lr_step_epochs``
            epochs), ``"cosine"`` (to ``lr_min`` over the run's epochs, then ``lr_min``),
            ``"iwae"`` (Burda et al. 2015: 3^i epochs at lr * 10^(-i/7), i = 0..7, 3280
            epochs, then the last value); or a callable epoch -> factor of the base step
            size (torch's ``LambdaLR``); or a torch scheduler class or
            ``functools.partial`` of one (``partial(StepLR, step_size=2)``), or
            ``LRSchedule.from_scheduler(optimizer -> scheduler)``, built for each optimiser.
            Its state is in the checkpoints: a resumed run continues it exactly.
        lr_gamma: the named schedules' settings (see above), with ``lr_step_epochs`` and
            ``lr_min``.
        lr_iwae_epochs: ``"iwae"`` squeezed into this many epochs, each stage scaled by
            lr_iwae_epochs / 3280 (a shorter budget that still ends at lr * 10^-1).
        resume: continue the unfinished run in ``run_dir``.
        overwrite: retrain the run in ``run_dir`` from scratch.
        config: what to record as ``config.yaml`` (the command line passes its resolved
            configuration); by default the arguments of this call and the model's settings.
        callbacks: more side effects, called after the built-in ones (experiment tracking:
            :class:`~pyro_vae.training.loggers.TensorBoardLogger`, ``MLflowLogger``).
    """
    arguments = dict(locals())
    run = RunDir(run_dir)
    _check_settings(epochs, num_samples, batch_size, snapshots, checkpoint_every)
    schedule = LRSchedule.build(
        lr_schedule,
        gamma=lr_gamma,
        step_epochs=lr_step_epochs,
        lr_min=lr_min,
        iwae_epochs=lr_iwae_epochs,
    )
    if lr_schedule == "cosine" and isinstance(method, str) and isinstance(optimizer, str):
        lowest = min(lr_search) if lr_search else lr
        if lr_min >= lowest:
            what = "the smallest lr_search value" if lr_search else "lr"
            raise refuse(
                "lr_min", lr_min, f"a number below {what} ({lowest}) with lr_schedule=cosine"
            )
    finished = finished_summary(run, resume, overwrite)
    if finished is not None:
        return finished
    device = next(vae.parameters()).device
    data = _as_run_data(data, test, vae, device, binarize, test_binarize, binarize_seed)
    if vae.num_data is None:
        vae.num_data = data.num_train
    elif vae.num_data != data.num_train:
        raise refuse("vae.num_data", vae.num_data, f"the {data.num_train} training points")
    if batch_size > data.num_train:
        raise refuse(
            "batch_size",
            batch_size,
            f"at most the {data.num_train} training points of dataset={data.dataset.name}",
        )
    if isinstance(method, str):
        if isinstance(optimizer, str):
            optimizer = optimizer_factory(optimizer, lr=lr, weight_decay=weight_decay)
        options: dict[str, Any] = {"optimizer": optimizer, "clip_grad_norm": clip_grad_norm}
        if method == "aevb":
            options.update(estimator=estimator, num_particles=num_particles, fast=fast)
        method = build_method(method, vae, **options)
    record = dict(config) if config is not None else _default_record(arguments, vae, data)
    batches = Minibatches(
        data.train, batch_size, seed=seed, binarize=data.train_binarize, device=device
    )
    checkpoints = Checkpoints(
        run, checkpoint_every, checkpoint_every_steps, checkpoint_every_seconds
    )
    hooks: list[Callback] = []
    if lr_search:
        hooks.append(StepSizeSearch(lr_search, lr_search_steps))
    hooks += [
        RunRecord(run, record),
        StopOnSignals(),
        ProgressBar(progress),
        Snapshots(run, snapshots),
        MetricsLog(run),
        checkpoints,
        NonFinitePolicy(skip_nonfinite, checkpoints),
        *callbacks,
    ]
    trainer = Trainer(
        method,
        batches,
        data.test,
        epochs=epochs,
        num_samples=num_samples,
        eval_batch_size=eval_batch_size,
        callbacks=hooks,
        meta=data.meta(),
        describe=getattr(method, "description", type(method).__name__),
        schedule=schedule,
        run_dir=run.path,
    )
    with run.lock():
        if overwrite:
            run.clear()
        summary, trained = _fit(trainer, run, checkpoints, resume)
    if plots and trained:
        mode = vae.training
        try:
            vae.eval()
            plot_figures(vae, data, run.figure_dir, run.metrics(), title=elbo_title(record))
        except Exception as e:  # the trained model is saved; a figure must not undo that
            logger.warning("plotting failed (%s: %s)", type(e).__name__, e)
        finally:
            vae.train(mode)
    if trained:  # after the figures, which experiment trackers record
        for callback in hooks:
            callback.on_run_end(trainer, summary)
    return summary


def finished_summary(run: RunDir, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The summary of a finished run that is left as it is (neither ``resume`` nor
    ``overwrite``), said so; None where training goes ahead (RunDirError for an unfinished
    run without ``resume``)."""
    if run.check_start(resume, overwrite):
        return None
    logger.info(
        "%s already holds a finished run; not retraining it "
        "(overwrite=true to train it again from scratch)",
        run.path,
    )
    return run.summary()


def _fit(
    trainer: Trainer, run: RunDir, checkpoints: Checkpoints, resume: bool
) -> tuple[dict[str, Any], bool]:
    """Resume or start ``trainer`` in ``run``, handle stops, write the final summary.
    Returns (summary, whether it trained: not for a finished run resumed with nothing left)."""
    run.remove_partial_files()
    if resume and run.has_checkpoint():
        state, path = run.resume_checkpoint()
        trainer.load_state_dict(state)
        if run.is_finished() and trainer.done():  # e.g. a -m sweep resumed: leave it be
            logger.info("%s already holds a finished run; nothing to resume", run.path)
            return run.summary(), False
        pos = trainer.position
        logger.info(
            "resuming %s from %s at step %d (epoch %d, batch %d of %d)",
            run.path,
            path.name,
            pos.step,
            pos.epoch + 1,
            pos.batch,
            len(trainer.batches),
        )
    elif resume:
        logger.info("%s has no checkpoint yet: training from the start", run.path)
    resume_hint = f"pyro-vae train run_dir={run.path} resume=true"
    try:
        last = trainer.fit()
    except TrainingInterrupted as e:
        if checkpoints.step != trainer.position.step:  # not when one was just written
            checkpoints.save(trainer)
        pos = trainer.position
        run.update_summary(status="interrupted", step=pos.step, samples=pos.samples)
        logger.warning(
            "\n%s: stopped at step %d; checkpoint saved to %s. Resume with:\n  %s",
            e,
            pos.step,
            run.checkpoint_dir / LAST_CHECKPOINT,
            resume_hint,
            extra={"plain": True},
        )
        raise
    except KeyboardInterrupt:
        # Raised inside a step (a second Ctrl-C): the state in memory is not consistent,
        # so the newest checkpoint on disk is where this run resumes.
        run.update_summary(status="interrupted", step=checkpoints.step)
        where = (
            f"resume from its last checkpoint (step {checkpoints.step}) with:\n  {resume_hint}"
            if checkpoints.step
            else "no checkpoint was written yet; run the same command to start again"
        )
        logger.warning("\nstopped at once; %s", where, extra={"plain": True})
        raise
    except BaseException as e:
        run.update_summary(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    rows = run.metrics()
    pos = trainer.position
    summary = run.update_summary(
        status="finished",
        epochs=pos.epoch,
        steps=pos.step,
        samples=pos.samples,
        skipped_steps=pos.skipped_steps,
        train_seconds=round(pos.train_seconds, 2),
        train_elbo=last.get("train_elbo", rows[-1]["train_elbo"] if rows else None),
        test_elbo=last.get("test_elbo", rows[-1]["test_elbo"] if rows else None),
        best_test_elbo=max((r["test_elbo"] for r in rows), default=None),
    )
    return summary, True


def _as_run_data(
    data: torch.Tensor | Dataset | RunData | TorchData,
    test: torch.Tensor | TorchData | None,
    vae: VAE,
    device: torch.device,
    *binarization: Any,
) -> RunData:
    if isinstance(data, RunData):
        if test is not None:
            raise ArgumentError("test= is for tensors; prepared RunData carry their test set")
        return data
    if isinstance(data, torch.Tensor) or is_torch_data(data):
        data = torch_dataset(data, test)  # tensor_dataset(data, test) for tensors
    elif test is not None:
        raise ArgumentError("test= is for tensors and torch data; a Dataset carries its test set")
    if not isinstance(data, Dataset):
        allowed = "a tensor, a Dataset, RunData or a torch Dataset/DataLoader"
        raise refuse("data", type(data).__name__, allowed)
    binarize_train, binarize_test, seed = binarization
    return prepare_data(
        data,
        binarize_train=binarize_train,
        binarize_test=binarize_test,
        binarize_seed=seed,
        likelihood=vae.likelihood,
        device=device,
    )


def _check_settings(
    epochs: Any, num_samples: Any, batch_size: Any, snapshots: str, checkpoint_every: Any
) -> None:
    for key, value, minimum in (
        ("epochs", epochs, 0),
        ("batch_size", batch_size, 1),
        ("checkpoint_every", checkpoint_every, 1),
        ("num_samples", 1 if num_samples is None else num_samples, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise refuse(key, value, f"an integer >= {minimum}")
    if snapshots not in SNAPSHOT_SCHEDULES:
        raise refuse("snapshots", snapshots, f"one of {list(SNAPSHOT_SCHEDULES)}")


def _name(estimator: str | ELBO) -> str:
    return estimator if isinstance(estimator, str) else type(estimator).__name__


def _default_record(args: dict[str, Any], vae: VAE, data: RunData) -> dict[str, Any]:
    """``config.yaml`` of a run started from Python: the command line's keys where they
    apply, so ``pyro-vae evaluate/plot/compare`` read it; the model's settings when it is
    the paper's MLP (:meth:`VAE.mlp`), which :func:`~pyro_vae.runs.load_run` rebuilds."""
    method = args["method"]
    dataset = dict(data.dataset.settings) or {"name": data.dataset.name}
    data_dir = dataset.pop("data_dir", None)
    model = vae.settings or {
        "model": type(vae).__name__,
        "likelihood": vae.likelihood.spec() if hasattr(vae.likelihood, "spec") else None,
    }
    return {
        "seed": args["seed"],
        "device": str(next(vae.parameters()).device),
        "data_dir": data_dir,
        "download": False,
        "run_dir": str(args["run_dir"]),
        **model,
        "method": method if isinstance(method, str) else type(method).__name__,
        "epochs": args["epochs"],
        "num_samples": args["num_samples"],
        "batch_size": args["batch_size"],
        "num_particles": args["num_particles"],
        "fast": args["fast"],
        "lr": args["lr"],
        "weight_decay": args["weight_decay"],
        "lr_search": list(args["lr_search"]) if args["lr_search"] else None,
        "lr_search_steps": args["lr_search_steps"],
        "lr_schedule": args["lr_schedule"] if isinstance(args["lr_schedule"], str) else "custom",
        "lr_gamma": args["lr_gamma"],
        "lr_step_epochs": args["lr_step_epochs"],
        "lr_min": args["lr_min"],
        "lr_iwae_epochs": args["lr_iwae_epochs"],
        "eval_batch_size": args["eval_batch_size"],
        "checkpoint_every": args["checkpoint_every"],
        "checkpoint_every_steps": args["checkpoint_every_steps"],
        "checkpoint_every_seconds": args["checkpoint_every_seconds"],
        "skip_nonfinite": args["skip_nonfinite"],
        "clip_grad_norm": args["clip_grad_norm"],
        "snapshots": args["snapshots"],
        "progress": args["progress"],
        "plots": args["plots"],
        "dataset": {
            **dataset,
            "binarize": args["binarize"],
            "test_binarize": args["test_binarize"],
            "binarize_seed": args["binarize_seed"],
        },
        "estimator": {"name": _name(args["estimator"])},
        "optim": {"name": args["optimizer"] if isinstance(args["optimizer"], str) else "custom"},
    }
