"""Configuration: Hydra composition of ``pyro_vae/conf`` and validation before any work.

The command line (``pyro-vae train key=value ...``) goes through ``hydra.main``; code and
tests use :func:`compose_config` with the same overrides. :func:`validate_config` refuses a
bad configuration with a :class:`ConfigError` that names the key, the value and what is
allowed, before data are read or a run directory is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

CONF_DIR = Path(__file__).parent / "conf"
CONFIG_NAME = "config"

DEVICES = ("cpu", "cuda", "auto")
SNAPSHOT_SCHEDULES = ("log", "all", "none")
BINARIZE_TRAIN = ("dynamic", "fixed", "none")
BINARIZE_TEST = ("fixed", "none")
INITS = ("paper", "torch")


class ConfigError(ValueError):
    """A configuration value that is refused, with the key, the value and what is allowed."""


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The configuration ``pyro-vae train`` would use with these ``key=value`` overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides))
    return cfg


def config_choices(group: str) -> list[str]:
    """The names a config group offers (the YAML files in ``conf/<group>``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _positive_int(cfg: Any, key: str, minimum: int = 1) -> None:
    v = OmegaConf.select(cfg, key)
    if not _is_int(v) or v < minimum:
        _fail(key, v, f"an integer >= {minimum}")


def _positive_number(cfg: Any, key: str, allow_zero: bool = False) -> None:
    v = OmegaConf.select(cfg, key)
    ok = _is_number(v) and (v >= 0 if allow_zero else v > 0) and v == v and v != float("inf")
    if not ok:
        _fail(key, v, "a finite number " + (">= 0" if allow_zero else "> 0"))


def _one_of(cfg: Any, key: str, allowed: Sequence[str]) -> None:
    v = OmegaConf.select(cfg, key)
    if v not in allowed:
        _fail(key, v, f"one of {list(allowed)}")


def _bool(cfg: Any, key: str) -> None:
    v = OmegaConf.select(cfg, key)
    if not isinstance(v, bool):
        _fail(key, v, "true or false")


def validate_config(cfg: DictConfig) -> None:
    """Refuse values the rest of the code cannot use (ConfigError naming key, value, allowed)."""
    from .estimators import ESTIMATORS, build_estimator
    from .methods import METHODS
    from .networks import ACTIVATIONS, LIKELIHOODS
    from .optim import OPTIMIZERS
    from .priors import validate_prior_config

    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing value for {sorted(missing)}: set it on the command line")
    _positive_int(cfg, "latent_dim")
    hidden = cfg.hidden_dims
    if not isinstance(hidden, ListConfig | list) or not all(_is_int(h) and h >= 1 for h in hidden):
        _fail("hidden_dims", hidden, "a list of positive integers such as [500] (or [])")
    _one_of(cfg, "activation", list(ACTIVATIONS))
    _one_of(cfg, "likelihood", LIKELIHOODS)
    _positive_number(cfg, "decoder_min_var")
    _one_of(cfg, "init", INITS)
    _positive_number(cfg, "init_std")
    _positive_int(cfg, "epochs", minimum=0)
    if cfg.num_samples is not None:
        _positive_int(cfg, "num_samples")
    _positive_int(cfg, "batch_size")
    _positive_int(cfg, "num_particles")
    _positive_number(cfg, "lr")
    _positive_number(cfg, "weight_decay", allow_zero=True)
    _positive_int(cfg, "eval_batch_size")
    _positive_int(cfg, "eval_num_samples")
    _positive_int(cfg, "checkpoint_every")
    _one_of(cfg, "snapshots", SNAPSHOT_SCHEDULES)
    for key in ("progress", "plots", "validate", "download", "resume", "overwrite"):
        _bool(cfg, key)
    if not _is_int(cfg.seed) or cfg.seed < 0:
        _fail("seed", cfg.seed, "an integer >= 0")
    _one_of(cfg, "device", DEVICES)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        _fail("device", cfg.device, "cpu or auto: no CUDA device is available here")
    _one_of(cfg, "dataset.name", config_choices("dataset"))
    _one_of(cfg, "dataset.binarize", BINARIZE_TRAIN)
    _one_of(cfg, "dataset.test_binarize", BINARIZE_TEST)
    if cfg.dataset.train_size is not None:
        _positive_int(cfg, "dataset.train_size")
    _one_of(cfg, "optim.name", OPTIMIZERS)
    validate_prior_config(cfg.prior, cfg.latent_dim)
    _one_of(cfg, "estimator.name", sorted(ESTIMATORS))
    build_estimator(cfg.estimator, cfg.num_particles)  # refuses unknown or bad parameters
    _one_of(cfg, "method", sorted(METHODS))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved configuration without Hydra's own node."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    return OmegaConf.to_yaml(plain)
