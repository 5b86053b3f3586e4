"""A configuration turned into the objects of the Python API, and trained.

:func:`instantiate` is the one place where configuration keys become constructor
arguments: the data (:func:`pyro_vae.runs.load_data`), the model
(:meth:`pyro_vae.VAE.from_settings`), the training method
(:func:`pyro_vae.methods.build_method`) and the arguments of :func:`pyro_vae.train`.
:func:`run_training` is what ``pyro-vae train`` runs: a finished run is left alone, a
resumed one takes its own configuration back (:func:`resumed_config`), and the rest is
:func:`pyro_vae.train`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from ..data import RunData
from ..errors import ArgumentError, ConfigError
from ..methods import build_method
from ..methods.base import TrainingMethod
from ..model import VAE
from ..optim import optimizer_factory
from ..runs import load_data, resolve_device
from ..training.loggers import build_loggers
from ..training.rundir import RunDir
from ..training.session import RESUMABLE_KEYS, finished_summary, train
from .validate import as_plain, guide_spec, prior_spec, validate_config

# Keys a resumed run may take from the command line (pyro_vae.training.session's, which
# the Python API's resume=True holds to as well); every other key comes from the run's own
# config.yaml, so a resumed run is the same experiment.
# Config groups added after runs were first written, whose default is to be absent: a run
# resumed from an older config.yaml takes the current default.
_ADDED_GROUPS = frozenset({"logger", "guide"})
_CONTROL_KEYS = frozenset({"run_dir", "resume", "overwrite"})

#: Keys of the configuration that are arguments of :func:`pyro_vae.train` as they are.
TRAIN_KEYS = (
    "epochs",
    "num_samples",
    "batch_size",
    "seed",
    "eval_batch_size",
    "checkpoint_every",
    "checkpoint_every_steps",
    "checkpoint_every_seconds",
    "snapshots",
    "skip_nonfinite",
    "progress",
    "plots",
    "lr_search",
    "lr_search_steps",
    "lr_schedule",
    "lr_gamma",
    "lr_step_epochs",
    "lr_min",
    "lr_iwae_epochs",
)


@dataclass
class Experiment:
    """What a configuration describes, built: data, model, method, and how to train them."""

    cfg: dict[str, Any]
    data: RunData
    vae: VAE
    method: TrainingMethod

    def train(
        self, run_dir: str | Path, resume: bool = False, overwrite: bool = False
    ) -> dict[str, Any]:
        """:func:`pyro_vae.train` with the configuration's settings, recorded as config.yaml."""
        settings = {k: self.cfg[k] for k in TRAIN_KEYS}
        return train(
            self.vae,
            self.data,
            run_dir,
            method=self.method,
            resume=resume,
            overwrite=overwrite,
            config=self.cfg,
            callbacks=build_loggers(self.cfg.get("logger")),
            **settings,
        )


def method_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``build_method(cfg["method"], vae, ...)`` (plain ``cfg``)."""
    optim = {k: v for k, v in cfg["optim"].items() if k != "name"}
    options: dict[str, Any] = {
        "optimizer": optimizer_factory(
            cfg["optim"]["name"], lr=cfg["lr"], weight_decay=cfg["weight_decay"], **optim
        ),
        "clip_grad_norm": cfg["clip_grad_norm"],
    }
    if cfg["method"] == "aevb":
        params = {k: v for k, v in cfg["estimator"].items() if k != "name"}
        options.update(
            estimator=cfg["estimator"]["name"],
            num_particles=cfg["num_particles"],
            fast=cfg["fast"],
            **params,
        )
    elif cfg["method"] in cfg:  # a method's own settings, e.g. mcem: {...}
        options.update(cfg[cfg["method"]])
    return options


def check_schedule(cfg: Mapping[str, Any]) -> None:
    """``lr_schedule=cosine`` anneals down to ``lr_min``: it must lie below the step size
    (every ``lr_search`` value, when the search picks it). ConfigError otherwise."""
    if cfg.get("lr_schedule") != "cosine":
        return
    lowest = min(cfg["lr_search"]) if cfg.get("lr_search") else cfg["lr"]
    if cfg["lr_min"] >= lowest:
        what = "the smallest lr_search value" if cfg.get("lr_search") else "lr"
        raise ConfigError.refuse(
            "lr_min", cfg["lr_min"], f"a number below {what} ({lowest}) with lr_schedule=cosine"
        )


def build_data(cfg: Mapping[str, Any] | DictConfig) -> RunData:
    """The configuration's data on its device (:func:`pyro_vae.runs.load_data`), with
    ``batch_size`` checked against the training set's size."""
    cfg = as_plain(cfg)
    data = load_data(cfg, resolve_device(cfg["device"]))
    if cfg["batch_size"] > data.num_train:
        raise ConfigError.refuse(
            "batch_size",
            cfg["batch_size"],
            f"at most the {data.num_train} training points of dataset={cfg['dataset']['name']}",
        )
    return data


def build_model(
    cfg: Mapping[str, Any] | DictConfig,
    x_dim: int,
    num_data: int | None,
    image_shape: Sequence[int] | None = None,
) -> VAE:
    """The configuration's VAE for data of ``x_dim`` values (images of ``image_shape``, which
    ``network=conv`` needs) and ``num_data`` training points
    (:meth:`pyro_vae.VAE.from_settings`); the caller seeds the random state first."""
    cfg = as_plain(cfg)
    settings = {**cfg, "prior": prior_spec(cfg["prior"])}
    if "guide" in cfg:  # runs written before guide families: the diagonal Gaussian
        settings["guide"] = guide_spec(cfg["guide"])
    return VAE.from_settings(settings, x_dim, num_data, image_shape=image_shape)


def build_training_method(cfg: Mapping[str, Any] | DictConfig, vae: VAE) -> TrainingMethod:
    """The configuration's training method on ``vae`` (:func:`pyro_vae.build_method`)."""
    cfg = as_plain(cfg)
    try:
        return build_method(cfg["method"], vae, **method_options(cfg))
    except ArgumentError as e:
        raise ConfigError(str(e)) from None


def instantiate(cfg: Mapping[str, Any] | DictConfig) -> Experiment:
    """Validate ``cfg`` and build its data, model and training method.

    The model is built after ``pyro.set_rng_seed(cfg.seed)``: the same configuration always
    gives the same initialisation, and so the same numbers.
    """
    cfg = validate_config(cfg)
    check_schedule(cfg)
    pyro.enable_validation(cfg["validate"])
    data = build_data(cfg)
    pyro.set_rng_seed(cfg["seed"])
    vae = build_model(cfg, data.x_dim, data.num_train, data.dataset.image_shape)
    vae = vae.to(data.train.device)
    method = build_training_method(cfg, vae)
    return Experiment(cfg=cfg, data=data, vae=vae, method=method)


def _overridden_keys(overrides: Sequence[str]) -> list[str]:
    keys = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra"):
            keys.append(key)
    return keys


def _select(node: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _update(node: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def resumed_config(
    saved: Mapping[str, Any],
    requested: Mapping[str, Any] | DictConfig,
    overrides: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The saved config, with the resumable keys the command line set; other changes refused.

    ``overrides`` are the command line's ``key=value`` strings: only those keys are compared,
    since the other keys of ``requested`` are defaults, not requests. Without them (a
    configuration built in code) every top-level key of ``requested`` is compared.
    """
    requested = as_plain(requested)
    cfg = as_plain(saved)
    # Keys added to pyro-vae after the run was written take their current default.
    for key, value in requested.items():
        if key not in saved and (not isinstance(value, dict) or key in _ADDED_GROUPS):
            cfg[key] = value
    keys = list(requested) if overrides is None else _overridden_keys(overrides)
    changed = []
    for key in keys:
        if key in _CONTROL_KEYS:
            continue
        new, old = _select(requested, key), _select(saved, key)
        if key.partition(".")[0] in RESUMABLE_KEYS:  # logger.mlflow.experiment too
            _update(cfg, key, new)
        elif new != old:
            changed.append(f"{key}: run has {old!r}, command line asks {new!r}")
    if changed:
        raise ConfigError(
            "resume=true continues the run as it was configured; these overrides would change "
            f"it: {'; '.join(changed)}. Allowed on resume: {sorted(RESUMABLE_KEYS)}"
        )
    cfg["resume"] = True
    return cfg


def run_training(
    cfg: Mapping[str, Any] | DictConfig,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train as ``cfg`` says into ``run_dir`` (default ``cfg.run_dir``); returns the summary.

    A finished run is never retrained silently: the same configuration again returns its
    summary (a script's rerun is a no-op); another configuration is refused with a
    :class:`~pyro_vae.errors.RunMismatchError` naming the keys that differ
    (``overwrite=true`` retrains it from scratch). A run is continued only with
    ``resume=true``: an interrupted one from its last checkpoint, a finished one when more
    ``epochs``/``num_samples`` are asked for.
    """
    plain = as_plain(cfg)
    run = RunDir(run_dir if run_dir is not None else plain["run_dir"])
    resume, overwrite = bool(plain.get("resume", False)), bool(plain.get("overwrite", False))
    finished = finished_summary(run, resume, overwrite, plain, command_line=True)
    if finished is not None:
        return finished
    plain = validate_config(plain)
    if resume and run.config_path.is_file():
        plain = resumed_config(run.config(), plain, overrides)
        try:
            validate_config(plain)
        except ConfigError as e:
            raise ConfigError(f"{run.config_path}: {e}") from None
    return instantiate(plain).train(run.path, resume=resume, overwrite=overwrite)


class SweepJobFailed(CompactHydraException):
    """A run of a ``-m`` sweep that failed in a process of its own (a joblib worker, a
    submitit job, a SLURM node). The job raises it, Hydra carries it back to the command
    in its job result, and ``pyro-vae train`` prints its one-line ``message`` and exits
    with ``code`` (1: the run failed, 2: a value the run refused), as for a run in-process.
    """

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:  # crosses processes: keep the code
        return type(self), (str(self), self.code)
