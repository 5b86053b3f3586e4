"""Configuration: Hydra composition of ``pyro_vae/conf`` and validation before any work.

The command line (``pyro-vae train key=value ...``) goes through ``hydra.main``; code and
tests use :func:`compose_config` with the same overrides. :func:`validate_config` refuses a
bad configuration with a :class:`ConfigError` that names the key, the value and what is
allowed, before data are read or a run directory is written; :func:`check_overrides` does
the same for a command line (every value of a ``-m`` sweep) before Hydra starts, turning
Hydra's own errors (unknown key, unknown group choice, syntax) into one such message.
"""

from __future__ import annotations

import difflib
import functools
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
# pyro.set_rng_seed seeds numpy too, which takes seeds below 2**32.
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A configuration value that is refused, with the key, the value and what is allowed."""


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The configuration ``pyro-vae train`` would use with these ``key=value`` overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    # Inside a running `pyro-vae train` (validation composes defaults) Hydra's global
    # state belongs to the application: put it back afterwards.
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides))
    finally:
        restore_gh_from_backup(backup)
    return cfg


def config_choices(group: str) -> list[str]:
    """The names a config group offers (the YAML files in ``conf/<group>``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Presets chosen with ``+group=name``: they set other keys and leave no node of their own.
PRESET_GROUPS = ("experiment",)


def config_groups() -> list[str]:
    """The config groups (``dataset``, ``optim``, ...): each node has a ``name`` key."""
    return sorted(
        p.name
        for p in CONF_DIR.iterdir()
        if p.is_dir() and any(p.glob("*.yaml")) and p.name not in PRESET_GROUPS
    )


@functools.lru_cache(maxsize=64)
def _defaults(choices: tuple[str, ...]) -> dict[str, Any]:
    """The default configuration with these ``group=name`` choices, as a plain dict."""
    return OmegaConf.to_container(compose_config(list(choices)), resolve=False)


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    keys = []
    for key, value in node.items():
        keys.append(prefix + str(key))
        keys += _flat_keys(value, f"{prefix}{key}.")
    return keys


def _unknown_key(key: str, defaults: dict[str, Any]) -> ConfigError:
    """An unknown ``key``, with the closest key at its depth (defaults: the schema)."""
    group = defaults.get(key.partition(".")[0])
    in_group = "." in key and isinstance(group, dict) and "name" in group
    context = f" for {key.partition('.')[0]}={group['name']}" if in_group else ""
    known = [k for k in _flat_keys(defaults) if k.count(".") == key.count(".")]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(
        f"unknown key {key!r}{context}; {hint}`pyro-vae train --cfg job` prints every key"
    )


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
    _check_name(key, OmegaConf.select(cfg, key), allowed)


def _check_name(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _fail(key, value, f"one of {list(allowed)}{hint}")


def _bool(cfg: Any, key: str) -> None:
    v = OmegaConf.select(cfg, key)
    if not isinstance(v, bool):
        _fail(key, v, "true or false")


def _nullable(check: Any, cfg: Any, key: str) -> None:
    if OmegaConf.select(cfg, key) is not None:
        check(cfg, key)


def _string(cfg: Any, key: str) -> None:
    v = OmegaConf.select(cfg, key)
    if not isinstance(v, str) or not v:
        _fail(key, v, "a non-empty string (a path)")


def _seed(cfg: Any, key: str) -> None:
    v = OmegaConf.select(cfg, key)
    if not _is_int(v) or not 0 <= v <= MAX_SEED:
        _fail(key, v, f"an integer in 0..{MAX_SEED}")


# The prior block is checked by priors.validate_prior_config instead: its ``name`` is a
# free label and its keys are the parameters of its ``_target_``, which a user may point
# at any distribution family or at a class of their own.
_SELF_VALIDATING_GROUPS = ("prior",)


def _check_keys(cfg: DictConfig) -> None:
    """Every key is one the defaults of the chosen groups have, and none is absent."""
    groups = [g for g in config_groups() if g not in _SELF_VALIDATING_GROUPS]
    if not OmegaConf.is_dict(cfg.get("prior")):
        _fail("prior", cfg.get("prior"), f"a config group choice: one of {config_choices('prior')}")
    for group in groups:
        node = cfg.get(group)
        if not OmegaConf.is_dict(node):
            _fail(group, node, f"a config group choice: one of {config_choices(group)}")
        _one_of(cfg, f"{group}.name", config_choices(group))
    given = OmegaConf.to_container(cfg, resolve=False)
    given.pop("hydra", None)
    defaults = _defaults(tuple(f"{g}={cfg[g].name}" for g in groups))
    for scope, have, want in [("", given, defaults)] + [
        (f"{g}.", given[g], defaults[g]) for g in groups
    ]:
        for key in have:
            if key not in want:
                raise _unknown_key(scope + str(key), defaults)
        for key in want:
            if key not in have:
                raise ConfigError(f"key {scope}{key} is missing from the configuration")


def validate_config(cfg: DictConfig) -> None:
    """Refuse values the rest of the code cannot use (ConfigError naming key, value, allowed).

    Keys are checked against the defaults of the chosen config groups, so an unknown key
    (a typo) is refused with the closest known key, and a key of another group's option
    (``optim.betas`` with ``optim=adagrad``) is refused too.
    """
    from .estimators import ESTIMATORS, build_estimator
    from .fast import FAST_ESTIMATORS
    from .methods import METHODS
    from .networks import ACTIVATIONS, LIKELIHOODS
    from .optim import OPTIMIZERS
    from .priors import validate_prior_config

    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing value for {sorted(missing)}: set it on the command line")
    _check_keys(cfg)
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
    _nullable(_positive_int, cfg, "checkpoint_every_steps")
    _nullable(_positive_number, cfg, "checkpoint_every_seconds")
    _nullable(_positive_number, cfg, "clip_grad_norm")
    _one_of(cfg, "snapshots", SNAPSHOT_SCHEDULES)
    for key in ("progress", "plots", "validate", "download", "resume", "overwrite"):
        _bool(cfg, key)
    _bool(cfg, "skip_nonfinite")
    _seed(cfg, "seed")
    _one_of(cfg, "device", DEVICES)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        _fail("device", cfg.device, "cpu or auto: no CUDA device is available here")
    _string(cfg, "run_dir")
    _nullable(_string, cfg, "data_dir")
    _check_dataset(cfg)
    _one_of(cfg, "optim.name", OPTIMIZERS)
    if "betas" in cfg.optim:
        betas = cfg.optim.betas
        ok = isinstance(betas, ListConfig | list) and len(betas) == 2
        if not ok or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            _fail("optim.betas", betas, "two numbers in [0, 1), such as [0.9, 0.999]")
    if "eps" in cfg.optim:
        _positive_number(cfg, "optim.eps")
    prior = validate_prior_config(cfg.prior, cfg.latent_dim)
    _one_of(cfg, "estimator.name", sorted(ESTIMATORS))
    estimator = build_estimator(cfg.estimator, cfg.num_particles)  # refuses bad parameters
    if hasattr(estimator, "check_prior"):
        try:
            estimator.check_prior(prior())
        except ValueError as e:
            raise ConfigError(f"prior={cfg.prior.name}: {e}") from None
    _one_of(cfg, "method", sorted(METHODS))
    _bool(cfg, "fast")
    if cfg.fast and (cfg.method != "aevb" or cfg.estimator.name not in FAST_ESTIMATORS):
        _fail(
            "fast",
            True,
            f"false with method={cfg.method} estimator={cfg.estimator.name}: the fast path "
            f"is method=aevb with estimator one of {sorted(FAST_ESTIMATORS)}",
        )
    if cfg.lr_search is not None:
        lrs = cfg.lr_search
        if (
            not isinstance(lrs, ListConfig | list)
            or not lrs
            or not all(_is_number(v) and v > 0 for v in lrs)
        ):
            _fail("lr_search", lrs, "null or a non-empty list of step sizes > 0, e.g. [0.01,0.02]")
        _positive_int(cfg, "lr_search_steps")
    if cfg.method == "mcem":
        for key in ("leapfrog_steps", "hmc_steps", "m_steps"):
            _positive_int(cfg, f"mcem.{key}")
        _positive_number(cfg, "mcem.step_size")
        _positive_number(cfg, "mcem.adapt_rate", allow_zero=True)
        target = cfg.mcem.target_accept
        if not (_is_number(target) and 0 < target < 1):
            _fail("mcem.target_accept", target, "a number in (0, 1)")


def _check_dataset(cfg: DictConfig) -> None:
    d = cfg.dataset
    _one_of(cfg, "dataset.binarize", BINARIZE_TRAIN)
    _one_of(cfg, "dataset.test_binarize", BINARIZE_TEST)
    _nullable(_positive_int, cfg, "dataset.train_size")
    _seed(cfg, "dataset.binarize_seed")
    if "path" in d:
        _string(cfg, "dataset.path")
        _nullable(_string, cfg, "dataset.test_path")
    if "test_fraction" in d:
        f = d.test_fraction
        if not _is_number(f) or not 0 < f < 1:
            _fail("dataset.test_fraction", f, "a number strictly between 0 and 1")
    shape = d.get("image_shape")
    if shape is not None and not (
        isinstance(shape, ListConfig | list)
        and len(shape) == 2
        and all(_is_int(s) and s >= 1 for s in shape)
    ):
        _fail("dataset.image_shape", shape, "null or [height, width] (positive integers)")


def check_overrides(args: Sequence[str]) -> None:
    """Refuse a ``pyro-vae train`` command line before Hydra creates a run directory.

    Composes the configuration of every ``key=value`` the way Hydra would and validates
    it; with ``-m`` each value of each sweep is checked (one at a time, the other sweeps
    at their first value), so a typo in the fifth value does not wait for four runs.
    Sweeps Hydra cannot enumerate here (a custom sweeper's) are left to each job.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = get_args_parser().parse_args(list(args))
    except SystemExit:
        return  # Hydra prints its own usage message
    if parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the command line: {_one_line(e)}") from None
    choices: list[list[str]] = []
    for o in overrides:
        if o.is_hydra_override():
            continue
        if not o.is_sweep_override():
            choices.append([o.input_line])
            continue
        if not parsed.multirun:
            raise ConfigError(
                f"{o.input_line} gives several values: add -m (--multirun) for one run per value"
            )
        try:
            values = list(o.sweep_string_iterator())
        except HydraException:
            continue
        choices.append([f"{o.get_key_element()}={v}" for v in values])
    first = [c[0] for c in choices]
    variants = [first] + [
        [*first[:i], v, *first[i + 1 :]] for i, c in enumerate(choices) for v in c[1:]
    ]
    for variant in variants:
        _check_override_keys(variant)
        try:
            cfg = compose_config(variant)
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(_one_line(e)) from None
        if not parsed.cfg:  # --cfg job only prints it, values still to be filled in
            validate_config(cfg)


def _check_override_keys(overrides: Sequence[str]) -> None:
    """Unknown group choices and keys, with the closest known one (Hydra only says no)."""
    groups = config_groups()
    chosen = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key in PRESET_GROUPS:
            choices = config_choices(key)
            raise ConfigError(
                f"{o}: {key} is a preset, added with a plus: +{key}={value or choices[0]}"
            )
        if key in groups:
            _check_name(key, value, config_choices(key))
            chosen.append(o)
    defaults = _defaults(tuple(chosen))
    known = _flat_keys(defaults)
    for o in overrides:
        key = o.partition("=")[0]
        if key not in groups and not key.startswith(("+", "~")) and key not in known:
            raise _unknown_key(key, defaults)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(line for line in lines if not line.startswith(("See https", "full_key")))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved configuration without Hydra's own node."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    return OmegaConf.to_yaml(plain)
