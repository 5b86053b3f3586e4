"""Composition of ``conf/`` and validation of a configuration before any work.

The command line (``pyro-vae train key=value ...``) goes through ``hydra.main``; code and
tests use :func:`compose_config` with the same overrides. :func:`validate_config` refuses a
bad configuration with a :class:`~pyro_vae.errors.ConfigError` that names the key, the
value and what is allowed, before data are read or a run directory is written;
:func:`check_overrides` does the same for a command line (every value of a ``-m`` sweep)
before Hydra starts, turning Hydra's own errors (unknown key, unknown group choice, type,
syntax) into one such message.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from ..errors import ArgumentError, ConfigError
from ..estimators import build_estimator
from ..fast import FAST_ESTIMATORS
from ..guides import DiagonalGaussian, build_guide, check_estimator
from ..layers import VAMP_ON_STACK
from ..likelihoods import build_likelihood
from ..methods.base import prior_depends_on
from ..model import VAMP_NEEDS_DIAGONAL, check_network
from ..networks import GaussianEncoder
from ..priors import VampPrior, build_prior
from ..training.loggers import build_loggers
from . import schema

CONF_DIR = Path(__file__).parent / "conf"
CONFIG_NAME = "config"
# Presets chosen with ``+group=name``: they set other keys and leave no node of their own.
PRESET_GROUPS = ("experiment",)
# Groups of which none, one or several options are chosen (``logger=[tensorboard,mlflow]``),
# each option a node of its own under the group's (``logger.tensorboard``), with no ``name``.
MULTI_GROUPS = ("logger",)
# Groups chosen with ``group=name`` whose options choose other groups' options and leave no
# node of their own (``latent=bernoulli``: guide=bernoulli and prior=learnable_bernoulli).
CHOOSER_GROUPS = ("latent",)

#: A user's own config directories (``pyro-vae train --config-dir DIR``,
#: ``hydra.searchpath=[file://DIR]``), searched as Hydra searches them: their
#: ``<group>/<name>.yaml`` files are choices like the shipped ones (``prior=cauchy``).
_user_dirs: tuple[Path, ...] = ()


def use_config_dirs(dirs: Sequence[str | Path]) -> None:
    """Make the files of these config directories choices for every check and composition
    that follows (the command line sets them from its ``--config-dir`` and
    ``hydra.searchpath``; a job from Hydra's search path)."""
    global _user_dirs
    new = tuple(Path(d).resolve() for d in dirs if Path(d).resolve() != CONF_DIR.resolve())
    if new != _user_dirs:
        _defaults.cache_clear()  # composed with the other directories' files
    _user_dirs = new


def config_dirs() -> tuple[Path, ...]:
    """The shipped config directory, then the user's (:func:`use_config_dirs`)."""
    return (CONF_DIR, *_user_dirs)


def _config_file(group: str, name: str) -> Path | None:
    for root in config_dirs():
        if (root / group / f"{name}.yaml").is_file():
            return root / group / f"{name}.yaml"
    return None


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The configuration ``pyro-vae train`` would use with these ``key=value`` overrides.

    A value of the wrong type (``epochs=1.5``) is a ConfigError naming the key and what it
    allows, as is any other reason Hydra refuses the overrides.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    # Inside a running `pyro-vae train` (validation composes defaults) Hydra's global
    # state belongs to the application: put it back afterwards.
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        search = ",".join(f"file://{d}" for d in _user_dirs)
        searchpath = [f"hydra.searchpath=[{search}]"] if _user_dirs else []
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=CONFIG_NAME, overrides=[*searchpath, *overrides])
    except (HydraException, OmegaConfBaseException) as e:
        raise composition_error(e) from None
    finally:
        restore_gh_from_backup(backup)


def composition_error(error: BaseException) -> ConfigError:
    """A Hydra/OmegaConf error as a ConfigError: a type error in the schema's words."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, ValidationError):
        cause = cause.__cause__
    if cause is not None and cause.full_key:
        key = str(cause.full_key)
        base = key.split("[")[0]
        owner, _, name = base.rpartition(".")
        allowed, _ = schema.allowed(schema.MCEMConfig if owner == "mcem" else schema.Config, name)
        if allowed is not None:
            return ConfigError.refuse(key, cause.value, allowed.text)
    return ConfigError(one_line(error))


def config_choices(group: str) -> list[str]:
    """The names a config group offers: the YAML files in ``conf/<group>``, and in the
    ``<group>`` folders of the user's config directories (:func:`use_config_dirs`)."""
    return sorted({p.stem for root in config_dirs() for p in (root / group).glob("*.yaml")})


def config_groups() -> list[str]:
    """The config groups (``dataset``, ``optim``, ...): each node has a ``name`` key. (Not
    the presets, nor ``logger``, whose options are chosen several at once.)"""
    return sorted(
        p.name
        for p in CONF_DIR.iterdir()
        if p.is_dir()
        and any(p.glob("*.yaml"))
        and p.name not in PRESET_GROUPS + MULTI_GROUPS + CHOOSER_GROUPS
    )


def as_plain(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A configuration as plain Python values, interpolations resolved, Hydra's node dropped."""
    if OmegaConf.is_config(cfg):
        plain = OmegaConf.to_container(cfg, resolve=True)
    else:
        plain = json.loads(json.dumps(cfg))  # a deep copy of plain values
    plain.pop("hydra", None)
    return plain


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


def _check_name(key: str, value: Any, allowed: Sequence[str]) -> None:
    check = schema.one_of(allowed)
    if not check.ok(value):
        raise ConfigError.refuse(key, value, check.describe(value))


# The prior, likelihood, network and guide blocks are checked by building them instead: their
# ``name`` is a free label and their keys are the parameters of a ``_target_``, which a
# user may point at any distribution family or at a class of their own.
_SELF_VALIDATING_GROUPS = ("prior", "likelihood", "network", "guide")


def _choice(group: str, node: Mapping[str, Any]) -> tuple[str, Any]:
    """(key, value) naming the YAML file a group's node came from: its ``name``, except for a
    dataset of a library (``dataset=torchvision``), whose ``name`` is the library's class
    and whose ``library`` names the file."""
    if group == "dataset" and "library" in node:
        return "dataset.library", node["library"]
    return f"{group}.name", node.get("name")


def _check_keys(cfg: dict[str, Any]) -> None:
    """Every key is one the defaults of the chosen groups have, and none is absent."""
    groups = [g for g in config_groups() if g not in _SELF_VALIDATING_GROUPS]
    for group in _SELF_VALIDATING_GROUPS:
        if not isinstance(cfg.get(group), dict):
            raise ConfigError.refuse(
                group, cfg.get(group), f"a config group choice: one of {config_choices(group)}"
            )
    for group in groups:
        node = cfg.get(group)
        if not isinstance(node, dict):
            raise ConfigError.refuse(
                group, node, f"a config group choice: one of {config_choices(group)}"
            )
        _check_name(*_choice(group, node), config_choices(group))
    defaults = _defaults(tuple(f"{g}={_choice(g, cfg[g])[1]}" for g in groups))
    defaults.pop("hydra", None)
    for scope, have, want in [("", cfg, defaults)] + [
        (f"{g}.", cfg[g], defaults[g]) for g in groups
    ]:
        for key in have:
            if key not in want:
                raise _unknown_key(scope + str(key), defaults)
        for key in want:
            if key not in have:
                raise ConfigError(f"key {scope}{key} is missing from the configuration")


def _check_fields(values: Mapping[str, Any], dataclass_type: type, prefix: str = "") -> None:
    for name in values:
        allowed, nullable = schema.allowed(dataclass_type, name)
        value = values[name]
        if allowed is None or (nullable and value is None):
            continue
        if not allowed.ok(value):
            raise ConfigError.refuse(prefix + name, value, allowed.describe(value))


def _check_group(node: Mapping[str, Any], group: str, checks: Mapping[str, schema.Allowed]) -> None:
    for name, check in checks.items():
        if name not in node:
            continue
        value = node[name]
        if value is None and name in schema.NULLABLE_DATASET_KEYS:
            continue
        if not check.ok(value):
            raise ConfigError.refuse(f"{group}.{name}", value, check.describe(value))


def _canonical(cfg: Mapping[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True, default=str)


_validated: set[str] = set()


def validate_config(cfg: Mapping[str, Any] | DictConfig, *, here: bool = True) -> dict[str, Any]:
    """Refuse values the rest of the code cannot use (ConfigError naming key, value, allowed);
    returns the configuration as plain values.

    ``here=False`` is for a configuration that runs on another machine (a SLURM job): what
    this machine has (a CUDA device for ``device=cuda``) is left to the job's own check.

    Keys are checked against the defaults of the chosen config groups, so an unknown key
    (a typo) is refused with the closest known key, and a key of another group's option
    (``optim.betas`` with ``optim=adagrad``) is refused too. A configuration that passed
    is remembered, so the command line's check before Hydra starts and the run's own
    check cost one validation.
    """
    if OmegaConf.is_config(cfg):
        missing = OmegaConf.missing_keys(cfg)
        if missing:
            raise ConfigError(f"missing value for {sorted(missing)}: set it on the command line")
    plain = as_plain(cfg)
    canonical = _canonical(plain) + ("" if here else " elsewhere")
    if canonical in _validated:
        return plain
    _check_keys(plain)
    _check_fields(plain, schema.Config)
    if here and plain["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError.refuse("device", "cuda", "cpu or auto: no CUDA device is available here")
    _check_group(plain["dataset"], "dataset", schema.DATASET_KEYS)
    _check_group(plain["optim"], "optim", schema.OPTIM_KEYS)
    _check_loggers(plain["logger"])
    layers = plain["upper_layers"]
    top_dim = layers[-1]["latent_dim"] if layers else plain["latent_dim"]
    prior, encoder = build_prior_for_validation(plain["prior"], top_dim)
    if layers and isinstance(prior, VampPrior):
        raise ConfigError(f"prior: {VAMP_ON_STACK}")
    guide = build_guide_for_validation(plain["guide"], plain["latent_dim"])
    if isinstance(prior, VampPrior) and not isinstance(guide, DiagonalGaussian):
        raise ConfigError(f"prior=vamp with guide={guide.name}: {VAMP_NEEDS_DIAGONAL}")
    _within("likelihood", build_likelihood, plain["likelihood"])
    _within("network", check_network, plain["network"])
    estimator = _within("estimator", build_estimator, plain["estimator"], plain["num_particles"])
    if hasattr(estimator, "check_prior"):
        try:
            estimator.check_prior(prior())
        except ArgumentError as e:
            raise ConfigError(f"prior={plain['prior'].get('name')}: {e}") from None
    method = plain["method"]
    if plain["fast"] and (method != "aevb" or plain["estimator"]["name"] not in FAST_ESTIMATORS):
        raise ConfigError.refuse(
            "fast",
            True,
            f"false with method={method} estimator={plain['estimator']['name']}: the fast "
            f"path is method=aevb with estimator one of {sorted(FAST_ESTIMATORS)}",
        )
    if method in ("wake_sleep", "mcem") and prior_depends_on(prior, list(encoder.parameters())):
        raise ConfigError(
            f"method={method} with prior={plain['prior'].get('name')} is not allowed: the "
            "prior's density depends on the encoder's weights (phi), which "
            f"{method} updates on a different objective from the generative model's (theta), "
            "so the prior would never get its gradient through them; use method=aevb with "
            "this prior"
        )
    if method == "mcem":
        _check_fields(plain["mcem"], schema.MCEMConfig, "mcem.")
    if method == "aevb":
        fast = FAST_ESTIMATORS[plain["estimator"]["name"]] if plain["fast"] else None
        try:
            check_estimator(guide, estimator, fast)
        except ArgumentError as e:
            raise ConfigError(str(e)) from None
    _validated.add(canonical)
    return plain


def _check_loggers(node: Any) -> None:
    """``logger``: a mapping of chosen loggers (conf/logger/*.yaml) to their settings, each
    with the keys of its file and allowed values, and its package installed (else a
    MissingPackageError naming the extra that installs it, before any work)."""
    choices = config_choices("logger")
    if not isinstance(node, dict):
        allowed = f"loggers chosen with logger=NAME or logger=[NAME,...], NAME in {choices}"
        raise ConfigError.refuse("logger", node, allowed)
    for name, settings in node.items():
        _check_name("logger", name, choices)
        shipped = OmegaConf.to_container(OmegaConf.load(_config_file("logger", name)))
        want = shipped[name]
        if not isinstance(settings, dict):
            raise ConfigError.refuse(f"logger.{name}", settings, f"a mapping of {sorted(want)}")
        for key in settings:
            if key not in want:
                close = difflib.get_close_matches(str(key), list(want), n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    f"unknown key 'logger.{name}.{key}'; {hint}logger={name} has {sorted(want)}"
                )
        for key in want:
            if key not in settings:
                raise ConfigError(f"key logger.{name}.{key} is missing from the configuration")
            value = settings[key]
            if value is None and key in schema.NULLABLE_LOGGER_KEYS:
                continue
            check = schema.LOGGER_KEYS.get(key)
            if check is not None and not check.ok(value):
                raise ConfigError.refuse(f"logger.{name}.{key}", value, check.describe(value))
    build_loggers(node)  # the packages, imported (nothing is written or contacted)


def prior_spec(node: Mapping[str, Any]) -> dict[str, Any]:
    """The prior node of a configuration as :func:`~pyro_vae.priors.build_prior` takes it.

    A node without ``_target_`` names a shipped configuration file (``{"name": "laplace"}``),
    whose values the other keys of the node override.
    """
    return _group_spec("prior", node)


def guide_spec(node: Mapping[str, Any]) -> dict[str, Any]:
    """The guide node of a configuration as :func:`~pyro_vae.guides.build_guide` takes it
    (a node without ``_target_`` names a shipped file, as for :func:`prior_spec`)."""
    return _group_spec("guide", node)


def _group_spec(group: str, node: Mapping[str, Any]) -> dict[str, Any]:
    params = dict(node)
    if "_target_" not in params:
        name = params.get("name")
        if name not in config_choices(group):
            raise ConfigError.refuse(
                f"{group}.name", name, f"one of {config_choices(group)}, or a {group}._target_"
            )
        shipped = OmegaConf.to_container(OmegaConf.load(_config_file(group, name)))
        params = {**shipped, **params}
    return params


def build_guide_for_validation(node: Mapping[str, Any], latent_dim: int) -> Any:
    """Build the guide family once, without touching the caller's random stream: a bad
    guide node is refused (naming ``guide.<key>``) before any data are read."""
    with torch.random.fork_rng(devices=[]):
        return _within("guide", build_guide, guide_spec(node), latent_dim, x_dim=1)


def build_prior_for_validation(node: Mapping[str, Any], latent_dim: int) -> tuple[Any, Any]:
    """Build the prior once, on a throwaway one-pixel encoder, without touching the caller's
    random stream: a bad prior node is refused (naming ``prior.<key>``) before any data are
    read. Returns (prior, encoder)."""
    with torch.random.fork_rng(devices=[]):
        encoder = GaussianEncoder(1, latent_dim, [], "tanh")
        spec = prior_spec(node)
        return _within("prior", build_prior, spec, latent_dim, x_dim=1, encoder=encoder), encoder


def _within(group: str, build: Any, *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)``, its ArgumentErrors named under ``group``."""
    try:
        return build(*args, **kwargs)
    except ArgumentError as e:
        error = e.within(group)
        if e.key in ("_target_", "name"):
            error = ConfigError(f"{error}; shipped: {group}={config_choices(group)}")
        raise error from None


#: Hydra launchers that run a sweep's jobs on this machine.
LOCAL_LAUNCHERS = ("basic", "joblib", "submitit_local")


def check_overrides(args: Sequence[str]) -> DictConfig | None:
    """Refuse a ``pyro-vae train`` command line before Hydra creates a run directory; returns
    the configuration of its first run (None where Hydra only prints: ``--help``).

    Composes the configuration of every ``key=value`` the way Hydra would and validates
    it; with ``-m`` each value of each sweep is checked (one at a time, the other sweeps
    at their first value), so a typo in the fifth value does not wait for four runs.
    Sweeps Hydra cannot enumerate here (a custom sweeper's) are left to each job, and so
    is ``device=cuda`` when a launcher sends the runs to other machines (a login node has
    no GPU): any launcher but ``basic``, ``joblib`` and ``submitit_local``.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed, unrecognized = get_args_parser().parse_known_args(list(args))
    except SystemExit:
        return  # Hydra prints its own usage message
    if unrecognized:  # Hydra's parser takes the overrides as one run of arguments
        raise ConfigError(
            f"unrecognized arguments: {' '.join(unrecognized)} (Hydra's flags, such as -m, "
            "--cfg job or --config-dir DIR, go before all key=value overrides: "
            "pyro-vae train -m key=value ...)"
        )
    if parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the command line: {one_line(e)}") from None
    choices: list[list[str]] = []
    here = True
    dirs = [parsed.config_dir] if parsed.config_dir else []
    for o in overrides:
        if o.is_hydra_override():
            if o.get_key_element() == "hydra/launcher":
                here = o.value() in LOCAL_LAUNCHERS
            if o.get_key_element() == "hydra.searchpath":
                dirs += [
                    str(v) for v in o.value() if "://" not in str(v) or str(v).startswith("file://")
                ]
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
    use_config_dirs([d.removeprefix("file://") for d in dirs])
    first = [c[0] for c in choices]
    variants = [first] + [
        [*first[:i], v, *first[i + 1 :]] for i, c in enumerate(choices) for v in c[1:]
    ]
    configs = []
    for variant in variants:
        _check_override_keys(variant)
        cfg = compose_config(variant)
        if not parsed.cfg:  # --cfg job only prints it, values still to be filled in
            validate_config(cfg, here=here)
        configs.append(cfg)
    return None if parsed.cfg else configs[0]


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
        if key.startswith("+") and key[1:] in PRESET_GROUPS:
            _check_name(key, value, config_choices(key[1:]))
        if key in groups or key in CHOOSER_GROUPS:
            _check_name(key, value, config_choices(key))
            chosen.append(o)
        if key in MULTI_GROUPS:  # logger=tensorboard, logger=[tensorboard,mlflow], logger=[]
            for name in value.strip().removeprefix("[").removesuffix("]").split(","):
                if name.strip():
                    _check_name(key, name.strip(), config_choices(key))
            chosen.append(o)
    defaults = _defaults(tuple(chosen))
    known = _flat_keys(defaults)
    for o in overrides:
        key = o.partition("=")[0]
        if (
            key not in groups
            and key not in CHOOSER_GROUPS
            and not key.startswith(("+", "~"))
            and key not in known
        ):
            group, _, rest = key.partition(".")
            option = rest.partition(".")[0]
            chosen_option = f"{group}.{option}" in known
            if group in MULTI_GROUPS and option in config_choices(group) and not chosen_option:
                raise ConfigError(
                    f"{key} is a key of {group}={option}, which is not chosen: add "
                    f"{group}={option} (or {group}=[{option},...])"
                )
            raise _unknown_key(key, defaults)


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(line for line in lines if not line.startswith(("See https", "full_key")))
