"""A training session: :func:`train` a VAE into a run directory, with plain arguments.

::

    vae = pyro_vae.VAE.mlp(x_dim=784, latent_dim=20)
    summary = pyro_vae.train(vae, x_train, "runs/mine", test=x_test, estimator="stl", epochs=5)

``pyro-vae train`` calls the same function (through :mod:`pyro_vae.config`), so a run from
Python writes the run directory the command line writes: ``config.yaml``,
``metrics.jsonl``, ``summary.json``, checkpoints, snapshots and figures, with exact resume
(``resume=True``), the non-finite policy, signals and the progress bar.

A finished run is never retrained silently, nor mixed with another: the same call again
loads the run's trained model into ``vae`` and returns its summary; a call with another
model or other settings is refused, naming what differs (``overwrite=True`` retrains it
from scratch). A run is continued only with ``resume=True``: an interrupted one from its
last checkpoint, a finished one when more ``epochs``/``num_samples`` are asked for. The
global random state (the model's initialisation, the estimators' noise) is the caller's:
seed it (``pyro.set_rng_seed``) before building the model; ``seed`` here orders the
minibatches and their binarisation.

Every argument is checked before anything is read or written (:data:`TRAIN_CHECKS`, the
checks the command line's keys of the same names use), and so are the data (their shape,
values and width against the model) and the run directory (writable; a directory that is
not a run but holds files is refused, naming them). A call that is refused or fails
before training writes anything leaves no directory behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from pyro.infer import ELBO

from ..checks import (
    BOOL,
    SEED,
    STEP_SIZES,
    Allowed,
    check_arguments,
    fraction,
    integer,
    one_of,
    positive,
)
from ..data import (
    Dataset,
    Minibatches,
    RunData,
    TorchData,
    is_torch_data,
    prepare_data,
    torch_dataset,
)
from ..data.prepared import TEST_BINARIZE, TRAIN_BINARIZE
from ..errors import (
    ArgumentError,
    DataError,
    PyroVAEError,
    RunDirError,
    RunMismatchError,
    TrainingInterrupted,
    refuse,
)
from ..estimators import ESTIMATORS
from ..evaluate import check_model_width
from ..methods import METHODS, build_method
from ..methods.base import TrainingMethod
from ..model import VAE
from ..optim import OPTIMIZERS, LRSchedule, OptimizerFactory, optimizer_factory
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
from .rundir import LAST_CHECKPOINT, RunDir, check_model_state, load_model_state

logger = logging.getLogger("pyro_vae.training")

SNAPSHOT_SCHEDULES = ("log", "all", "none")

#: What each checked argument of :func:`train` allows. The configuration's keys of the same
#: names are declared with these objects (:mod:`pyro_vae.config.schema`), so ``train(...,
#: lr=-1)`` and ``pyro-vae train lr=-1`` are refused by the same check, in the same words.
TRAIN_CHECKS: dict[str, Allowed] = {
    "epochs": integer(0),
    "num_samples": integer(1),
    "batch_size": integer(1),
    "num_particles": integer(1),
    "lr": positive(),
    "weight_decay": positive(allow_zero=True),
    "clip_grad_norm": positive(),
    "fast": BOOL,
    "binarize": one_of(TRAIN_BINARIZE),
    "test_binarize": one_of(TEST_BINARIZE),
    "binarize_seed": SEED,
    "seed": SEED,
    "eval_batch_size": integer(1),
    "checkpoint_every": integer(1),
    "checkpoint_every_steps": integer(1),
    "checkpoint_every_seconds": positive(),
    "snapshots": one_of(SNAPSHOT_SCHEDULES),
    "skip_nonfinite": BOOL,
    "progress": BOOL,
    "plots": BOOL,
    "lr_search": STEP_SIZES,
    "lr_search_steps": integer(1),
    "lr_gamma": fraction(upper_closed=True),
    "lr_step_epochs": integer(1),
    "lr_min": positive(allow_zero=True),
    "lr_iwae_epochs": integer(1),
    "resume": BOOL,
    "overwrite": BOOL,
}
#: The arguments of :data:`TRAIN_CHECKS` that may also be None.
TRAIN_NULLABLE = (
    "num_samples",
    "clip_grad_norm",
    "checkpoint_every_steps",
    "checkpoint_every_seconds",
    "lr_search",
)

#: Settings a resumed run may change: how long it trains, and what only watches or records
#: it; every other setting of a run is fixed once it has started. (skip_nonfinite changes
#: nothing unless a step is non-finite, where the run would otherwise stop; logger, and
#: every key under it, only records what is computed.)
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
        "logger",
    }
)
#: Settings that do not change what a run computes, nor how long: a finished run asked for
#: again with other values of these is the same run.
_SAME_RUN_KEYS = (RESUMABLE_KEYS - {"epochs", "num_samples"}) | {
    "run_dir",
    "resume",
    "overwrite",
    "download",
    "validate",
    "eval_num_samples",
}


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
    _check_arguments(arguments)
    run = RunDir(run_dir)
    run.check_usable()
    created = run.missing_dirs()
    try:
        return _train(arguments, run)
    except BaseException:
        # Refused or failed before writing anything: no empty directory is left behind.
        run.remove_unused(created)
        raise


def _train(arguments: dict[str, Any], run: RunDir) -> dict[str, Any]:
    """:func:`train`, its arguments checked and its run directory usable."""
    a = arguments
    vae, method, optimizer = a["vae"], a["method"], a["optimizer"]
    lr_schedule, lr_search, lr, lr_min = a["lr_schedule"], a["lr_search"], a["lr"], a["lr_min"]
    resume, overwrite, plots = a["resume"], a["overwrite"], a["plots"]
    schedule = LRSchedule.build(
        lr_schedule,
        gamma=a["lr_gamma"],
        step_epochs=a["lr_step_epochs"],
        lr_min=lr_min,
        iwae_epochs=a["lr_iwae_epochs"],
    )
    if lr_schedule == "cosine" and isinstance(method, str) and isinstance(optimizer, str):
        lowest = min(lr_search) if lr_search else lr
        if lr_min >= lowest:
            what = "the smallest lr_search value" if lr_search else "lr"
            raise refuse(
                "lr_min", lr_min, f"a number below {what} ({lowest}) with lr_schedule=cosine"
            )
    device = _device_of(vae)
    data = _as_run_data(
        a["data"], a["test"], vae, device, a["binarize"], a["test_binarize"], a["binarize_seed"]
    )
    check_model_width(vae, data.train, "data")
    if vae.num_data is not None and vae.num_data != data.num_train:
        raise refuse("vae.num_data", vae.num_data, f"the {data.num_train} training points")
    if a["batch_size"] > data.num_train:
        raise refuse(
            "batch_size",
            a["batch_size"],
            f"at most the {data.num_train} training points of dataset={data.dataset.name}",
        )
    config = a["config"]
    record = dict(config) if config is not None else _default_record(a, vae, data)
    finished = reuse_finished(run, record, resume, overwrite, vae)
    if finished is not None:
        return finished
    if resume:
        check_resume(run, record)
    if vae.num_data is None:
        vae.num_data = data.num_train
    if isinstance(method, str):
        if isinstance(optimizer, str):
            optimizer = optimizer_factory(optimizer, lr=lr, weight_decay=a["weight_decay"])
        options: dict[str, Any] = {"optimizer": optimizer, "clip_grad_norm": a["clip_grad_norm"]}
        if method == "aevb":
            options.update(
                estimator=a["estimator"], num_particles=a["num_particles"], fast=a["fast"]
            )
        method = build_method(method, vae, **options)
    batches = Minibatches(
        data.train, a["batch_size"], seed=a["seed"], binarize=data.train_binarize, device=device
    )
    checkpoints = Checkpoints(
        run, a["checkpoint_every"], a["checkpoint_every_steps"], a["checkpoint_every_seconds"]
    )
    hooks: list[Callback] = []
    if lr_search:
        hooks.append(StepSizeSearch(lr_search, a["lr_search_steps"]))
    on_training_data = data.dataset.test is data.dataset.train  # train(x) without test=
    hooks += [
        RunRecord(run, record),
        StopOnSignals(),
        ProgressBar(a["progress"], "ELBO on the training data" if on_training_data else None),
        Snapshots(run, a["snapshots"]),
        MetricsLog(run),
        checkpoints,
        NonFinitePolicy(a["skip_nonfinite"], checkpoints),
        *a["callbacks"],
    ]
    trainer = Trainer(
        method,
        batches,
        data.test,
        epochs=a["epochs"],
        num_samples=a["num_samples"],
        eval_batch_size=a["eval_batch_size"],
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


def _device_of(vae: Any) -> torch.device:
    param = next(vae.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_arguments(a: Mapping[str, Any]) -> None:
    """Refuse a bad argument of :func:`train` (ArgumentError naming it) before any work."""
    if not isinstance(a["vae"], VAE):
        raise refuse("vae", a["vae"], "a pyro_vae.VAE (VAE.mlp(...) or VAE(encoder, decoder))")
    run_dir = a["run_dir"]
    if not isinstance(run_dir, str | os.PathLike) or not str(run_dir):
        raise refuse("run_dir", run_dir, "a path (a non-empty string or os.PathLike)")
    values = {k: a[k] for k in TRAIN_CHECKS}
    if isinstance(values["lr_search"], tuple):
        values["lr_search"] = list(values["lr_search"])
    check_arguments(values, TRAIN_CHECKS, nullable=TRAIN_NULLABLE)
    method, estimator, optimizer = a["method"], a["estimator"], a["optimizer"]
    if isinstance(method, str):
        one_of(sorted(METHODS)).check("method", method)
    elif not all(hasattr(method, a) for a in ("vae", "step", "state_dict", "load_state_dict")):
        raise refuse("method", method, f"one of {sorted(METHODS)} or a TrainingMethod object")
    elif method.vae is not a["vae"]:
        raise refuse("method", method, "a method that trains the vae given (its .vae)")
    if isinstance(estimator, str):
        one_of(sorted(ESTIMATORS)).check("estimator", estimator)
    elif not isinstance(estimator, ELBO):
        raise refuse("estimator", estimator, f"one of {sorted(ESTIMATORS)} or a Pyro ELBO")
    if isinstance(optimizer, str):
        one_of(sorted(OPTIMIZERS)).check("optimizer", optimizer)
    elif not callable(optimizer):
        raise refuse("optimizer", optimizer, f"one of {sorted(OPTIMIZERS)} or a callable")
    if a["config"] is not None and not isinstance(a["config"], Mapping):
        raise refuse("config", type(a["config"]).__name__, "a mapping of settings, or None")
    callbacks = a["callbacks"]
    if isinstance(callbacks, Callback) or not all(isinstance(c, Callback) for c in callbacks):
        raise refuse("callbacks", callbacks, "a sequence of pyro_vae.Callback objects")


def finished_summary(
    run: RunDir,
    resume: bool,
    overwrite: bool,
    record: Mapping[str, Any] | None = None,
    command_line: bool = False,
) -> dict[str, Any] | None:
    """The summary of a finished run that is left as it is (neither ``resume`` nor
    ``overwrite``), said so; None where training goes ahead (RunDirError for an unfinished
    run without ``resume``).

    ``record``: the settings asked for (what ``config.yaml`` records); a finished run of
    other settings is a :class:`~pyro_vae.errors.RunMismatchError` naming what differs (in
    the command line's words with ``command_line``), so a new model or configuration is
    never answered with an old run's numbers."""
    if run.check_start(resume, overwrite):
        return None
    if record is not None:
        differences = run_differences(run.config(), record, _SAME_RUN_KEYS)
        if differences:
            longer = all(d.partition(":")[0] in ("epochs", "num_samples") for d in differences)
            resume, overwrite = ("true", "true") if command_line else ("True", "True")
            hint = f"resume={resume} trains it further, " if longer else ""
            raise RunMismatchError(
                f"{run.path} already holds a finished run of other settings: "
                f"{'; '.join(differences)}. {hint}overwrite={overwrite} retrains it from "
                "scratch, or choose another run_dir"
            )
    logger.info(
        "%s already holds a finished run of these settings; not retraining it "
        "(overwrite=true to train it again from scratch)",
        run.path,
    )
    return run.summary()


def reuse_finished(
    run: RunDir, record: Mapping[str, Any], resume: bool, overwrite: bool, vae: VAE
) -> dict[str, Any] | None:
    """:func:`finished_summary` for :func:`train`: a finished run of the same settings and
    architecture has its trained model loaded into ``vae`` (which then is the run's model,
    as after training it), and its summary is returned."""
    if not run.is_finished() or resume or overwrite:
        return finished_summary(run, resume, overwrite)
    name = _final_checkpoint(run)
    state = run.load_checkpoint(name, map_location=_device_of(vae))
    source = f"{run.path} (checkpoint {name})"
    check_model_state(vae, state["model"], source)  # nothing is changed by a refusal
    summary = finished_summary(run, resume, overwrite, record)
    load_model_state(vae, state["model"], source)
    if vae.num_data is None:
        vae.num_data = state.get("meta", {}).get("num_data")
    logger.info("loaded the trained model of %s from %s into the VAE given", run.path, name)
    return summary


def _final_checkpoint(run: RunDir) -> str:
    """The checkpoint of a finished run's final model: ``last.pt``, or where a run was kept
    without it, its newest snapshot."""
    if (run.checkpoint_dir / LAST_CHECKPOINT).is_file():
        return LAST_CHECKPOINT
    snapshots = run.snapshots()
    return snapshots[-1][1].name if snapshots else LAST_CHECKPOINT


def check_resume(run: RunDir, record: Mapping[str, Any]) -> None:
    """``resume=True`` continues a run: RunDirError where ``run`` is not one (nothing to
    resume: a new run is started without ``resume``), RunMismatchError where ``record``
    would change it beyond :data:`RESUMABLE_KEYS`."""
    if not run.is_run():
        why = "it does not exist" if not run.path.exists() else "no checkpoint, no config.yaml"
        raise RunDirError(
            f"resume=true: {run.path} holds no run to resume ({why}); leave out resume to "
            "start a new run there"
        )
    if not run.config_path.is_file():
        return  # killed before its config was written: it starts again from its checkpoint
    ignore = RESUMABLE_KEYS | _SAME_RUN_KEYS
    differences = run_differences(run.config(), record, ignore)
    if differences:
        raise RunMismatchError(
            "resume=true continues the run as it was configured; these settings would change "
            f"it: {'; '.join(differences)}. Allowed on resume: {sorted(RESUMABLE_KEYS)}; "
            "overwrite=True retrains from scratch"
        )


def run_differences(
    saved: Mapping[str, Any], requested: Mapping[str, Any], ignore: frozenset[str] | set[str]
) -> list[str]:
    """``key: run has X, asked Y`` for each setting of ``requested`` that ``saved`` (a run's
    config.yaml) records with another value; keys under ``ignore`` (and their sub-keys) are
    not compared, nor keys that one of them lacks (settings added or dropped between
    versions). ``lr`` is not compared where a step-size search chose it (``lr_search``)."""
    old, new = _flat(_plain(saved)), _flat(_plain(requested))
    skip = set(ignore)
    if old.get("lr_search") is not None or new.get("lr_search") is not None:
        skip.add("lr")
    differences = []
    for key, value in new.items():
        if key.split(".")[0] in skip or key in skip or key not in old:
            continue
        if old[key] != value:
            differences.append(f"{key}: run has {old[key]!r}, asked {value!r}")
    return differences


def _plain(node: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(node), default=str))


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _fit(
    trainer: Trainer, run: RunDir, checkpoints: Checkpoints, resume: bool
) -> tuple[dict[str, Any], bool]:
    """Resume or start ``trainer`` in ``run``, handle stops, write the final summary.
    Returns (summary, whether it trained: not for a finished run resumed with nothing left)."""
    run.remove_partial_files()
    if resume and run.has_checkpoint():
        state, path = run.resume_checkpoint()
        check_model_state(trainer.vae, state.get("model"), str(path))
        try:
            trainer.load_state_dict(state)
        except PyroVAEError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # the optimisers' state
            raise RunMismatchError(
                f"{path} does not resume with these settings: {type(e).__name__}: {e}"
            ) from None
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
        with _sigint_deferred() as again:  # a second Ctrl-C waits for the checkpoint
            if checkpoints.step != trainer.position.step:  # not when one was just written
                checkpoints.save(trainer)
            pos = trainer.position
            run.update_summary(status="interrupted", step=pos.step, samples=pos.samples)
        if again:
            logger.warning("\nCtrl-C again: the checkpoint was being saved; it is complete")
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
        with _sigint_deferred():
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


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[list[int]]:
    """SIGINT held back while a checkpoint and the summary are written after a stop: a
    Ctrl-C meanwhile is recorded (the list it yields gets its signal number) instead of
    cutting the writes short; off the main thread, where Python allows no handler, nothing
    changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


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
    for name, x in (("data", data), ("test", test)):
        if isinstance(x, torch.Tensor):
            _check_tensor(x, name)
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


def _check_tensor(x: torch.Tensor, name: str) -> None:
    """A DataError naming ``name`` for a tensor that is not [N, D] or [N, H, W] data."""
    if x.ndim not in (2, 3):
        hint = "; x.unsqueeze(1) makes one value per point" if x.ndim == 1 else ""
        raise DataError(
            f"{name} has shape {list(x.shape)}: expected [N, D] data (or [N, H, W] images){hint}"
        )
    if x.numel() == 0:
        raise DataError(f"{name} is empty (shape {list(x.shape)}): expected at least one point")
    if x.dtype.is_complex:
        raise DataError(f"{name} holds complex numbers ({x.dtype}): expected real numbers")


def data_digest(dataset: Dataset) -> str:
    """SHA-256 of a dataset's training and test values (float32 on the CPU): what tells two
    tensors given in Python apart in a run's config.yaml, where no file names them."""
    h = hashlib.sha256()
    for x in (dataset.train, dataset.test):
        t = x.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{list(t.shape)}".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _name(estimator: str | ELBO) -> str:
    return estimator if isinstance(estimator, str) else type(estimator).__name__


def _default_record(args: dict[str, Any], vae: VAE, data: RunData) -> dict[str, Any]:
    """``config.yaml`` of a run started from Python: the command line's keys where they
    apply, so ``pyro-vae evaluate/plot/compare`` read it; the model's settings when it is
    the paper's MLP (:meth:`VAE.mlp`), which :func:`~pyro_vae.runs.load_run` rebuilds."""
    method = args["method"]
    dataset = dict(data.dataset.settings) or {
        "name": data.dataset.name,
        "sha256": data_digest(data.dataset),  # no file names them: their values do
    }
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
