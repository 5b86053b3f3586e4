"""The configuration's declared schema: typed dataclasses registered in Hydra's ConfigStore.

Why dataclasses in Hydra's ConfigStore (rather than hydra-zen or pydantic): Hydra already
parses the command line, composes the config groups and runs sweeps; a structured config
makes it type-check every ``key=value`` as it composes (``epochs=1.5`` is refused before
anything runs), with no second library and no second model of the same keys. Each field
carries what it allows (:class:`Allowed`); :func:`pyro_vae.config.validate_config` checks
the values against it (ranges, choices, types of configurations read back from YAML) and
Hydra's type errors are reported in the same words.

The config groups (``dataset``, ``likelihood``, ``network``, ``prior``, ``estimator``,
``optim``) are typed ``Any``: their keys depend on the choice (a prior's or a likelihood's
are the parameters of its ``_target_``); each
group's YAML files in ``conf/<group>`` declare them, and validation checks a configuration
against the defaults of the chosen files. ``logger`` is a group of which none, one or
several options are chosen (``logger=[tensorboard,mlflow]``): each adds its own node
(``logger.tensorboard``, ``logger.mlflow``), so it is a mapping, empty by default.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..errors import ArgumentError
from ..layers import layer_specs
from ..methods import METHODS
from ..networks import ACTIVATIONS, INITS
from ..optim import LR_SCHEDULES
from ..runs import DEVICES
from ..training.session import SNAPSHOT_SCHEDULES

SCHEMA_NAME = "pyro_vae_schema"
# pyro.set_rng_seed seeds numpy too, which takes seeds below 2**32.
MAX_SEED = 2**32 - 1


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class Allowed:
    """What a key allows: ``ok(value)``, and ``text`` for ``expected <text>`` in messages."""

    text: str
    ok: Callable[[Any], bool]
    choices: Sequence[str] = ()

    def describe(self, value: Any) -> str:
        if not self.choices:
            return self.text
        close = difflib.get_close_matches(str(value), list(self.choices), n=1, cutoff=0.6)
        return self.text + (f" (did you mean {close[0]!r}?)" if close else "")


def integer(minimum: int) -> Allowed:
    return Allowed(f"an integer >= {minimum}", lambda v: is_int(v) and v >= minimum)


def positive(allow_zero: bool = False) -> Allowed:
    def ok(v: Any) -> bool:
        return is_number(v) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)

    return Allowed("a finite number " + (">= 0" if allow_zero else "> 0"), ok)


def one_of(choices: Sequence[str]) -> Allowed:
    choices = list(choices)
    return Allowed(f"one of {choices}", lambda v: v in choices, choices)


BOOL = Allowed("true or false", lambda v: isinstance(v, bool))
PATH = Allowed("a non-empty string (a path)", lambda v: isinstance(v, str) and bool(v))
SEED = Allowed(f"an integer in 0..{MAX_SEED}", lambda v: is_int(v) and 0 <= v <= MAX_SEED)
HIDDEN_DIMS = Allowed(
    "a list of positive integers such as [500] (or [])",
    lambda v: isinstance(v, list) and all(is_int(h) and h >= 1 for h in v),
)


def _layers_ok(v: Any) -> bool:
    try:
        layer_specs(v)
    except ArgumentError:
        return False
    return isinstance(v, list)


UPPER_LAYERS = Allowed(
    "a list of {latent_dim: <integer >= 1>, hidden_dims: [<integers >= 1>]} mappings "
    "(or [])",
    _layers_ok,
)
STEP_SIZES = Allowed(
    "null or a non-empty list of step sizes > 0, e.g. [0.01,0.02]",
    lambda v: isinstance(v, list) and bool(v) and all(is_number(x) and x > 0 for x in v),
)


def key(default: Any, allowed: Allowed | None = None, *, nullable: bool = False) -> Any:
    """A schema field with its default and what it allows (None is allowed if ``nullable``)."""
    metadata = {"allowed": allowed, "nullable": nullable}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class MCEMConfig:
    """``method=mcem``: Monte Carlo EM with HMC (appendix E)."""

    leapfrog_steps: int = key(10, integer(1))  # per HMC transition (the paper: 10)
    hmc_steps: int = key(1, integer(1))  # HMC transitions of a datapoint's chain per visit
    m_steps: int = key(5, integer(1))  # optimiser steps on theta per E-step (the paper: 5)
    step_size: float = key(0.05, positive())  # initial HMC step size, then tuned
    target_accept: float = key(
        0.9, Allowed("a number in (0, 1)", lambda v: is_number(v) and 0 < v < 1)
    )
    adapt_rate: float = key(
        0.5, positive(allow_zero=True)
    )  # log step size += rate * (acc - target)


@dataclass
class Config:
    """Every top-level key of ``pyro-vae train``; the config groups follow."""

    seed: int = key(0, SEED)
    device: str = key("cpu", one_of(DEVICES))  # cpu | cuda | auto
    data_dir: Optional[str] = key(
        None, PATH, nullable=True
    )  # null: $PYRO_VAE_DATA_DIR, else ./data
    download: bool = key(True, BOOL)  # fetch missing datasets (with checksums)
    run_dir: str = key("runs/${dataset.name}/${now:%Y-%m-%d_%H-%M-%S}", PATH)
    resume: bool = key(False, BOOL)  # continue the unfinished run in run_dir
    overwrite: bool = key(False, BOOL)  # retrain a run_dir that holds a finished run

    # Model (appendix C of the paper)
    latent_dim: int = key(20, integer(1))
    hidden_dims: List[int] = key([500], HIDDEN_DIMS)  # the MLP's encoder and decoder widths
    # Stochastic layers above z, listed upward: [{latent_dim: 50, hidden_dims: [100, 100]}]
    upper_layers: List[Any] = key([], UPPER_LAYERS)
    activation: str = key("tanh", one_of(sorted(ACTIVATIONS)))  # the MLP's
    init: str = key("torch", one_of(INITS))  # torch's default | paper: N(0, init_std^2)
    init_std: float = key(0.01, positive())

    # Training
    method: str = key("aevb", one_of(sorted(METHODS)))  # aevb | wake_sleep | mcem
    epochs: int = key(10, integer(0))
    num_samples: Optional[int] = key(None, integer(1), nullable=True)  # overrides epochs
    batch_size: int = key(100, integer(1))
    num_particles: int = key(1, integer(1))  # L in eq. 6/7 (K for iwae, dreg)
    fast: bool = key(False, BOOL)  # estimators A/B without Pyro's tracing: same numbers
    lr: float = key(1.0e-3, positive())  # set by the optim group
    weight_decay: float = key(0.0, positive(allow_zero=True))  # 1.0: a N(0, I) prior on params
    lr_search: Optional[List[float]] = key(None, STEP_SIZES, nullable=True)  # sec. 5
    lr_search_steps: int = key(100, integer(1))
    # Step size per epoch, stepped at epoch ends: none | exponential | step | cosine | iwae
    lr_schedule: str = key("none", one_of(LR_SCHEDULES))
    lr_gamma: float = key(
        0.1, Allowed("a number in (0, 1]", lambda v: is_number(v) and 0 < v <= 1)
    )  # exponential: lr * gamma^epoch; step: x gamma every lr_step_epochs
    lr_step_epochs: int = key(10, integer(1))  # step
    lr_min: float = key(0.0, positive(allow_zero=True))  # cosine: the last epochs' step size
    lr_iwae_epochs: int = key(3280, integer(1))  # iwae: its stages scaled to this many epochs
    mcem: MCEMConfig = field(default_factory=MCEMConfig)
    eval_batch_size: int = key(1000, integer(1))
    checkpoint_every: int = key(1, integer(1))  # epochs between checkpoints
    checkpoint_every_steps: Optional[int] = key(None, integer(1), nullable=True)
    checkpoint_every_seconds: Optional[float] = key(None, positive(), nullable=True)
    skip_nonfinite: bool = key(False, BOOL)  # skip (and count) a NaN/Inf step
    clip_grad_norm: Optional[float] = key(None, positive(), nullable=True)
    snapshots: str = key("log", one_of(SNAPSHOT_SCHEDULES))  # log | all | none
    progress: bool = key(True, BOOL)
    plots: bool = key(True, BOOL)
    validate: bool = key(False, BOOL)  # Pyro's distribution/trace validation (slow)

    # Evaluation (pyro-vae evaluate)
    eval_num_samples: int = key(1000, integer(1))  # K, importance samples per test point

    # Config groups, chosen in conf/config.yaml's defaults list
    dataset: Any = MISSING
    likelihood: Any = MISSING
    network: Any = MISSING
    prior: Any = MISSING
    estimator: Any = MISSING
    optim: Any = MISSING
    # Experiment trackers, none or several (logger=[tensorboard,mlflow]): one node each
    logger: Dict[str, Any] = field(default_factory=dict)


GROUPS = ("dataset", "likelihood", "network", "prior", "estimator", "optim")

#: Allowed values of the dataset group's keys (its YAML files declare which keys it has).
DATASET_KEYS: dict[str, Allowed] = {
    "binarize": one_of(["dynamic", "fixed", "none"]),
    "test_binarize": one_of(["fixed", "none"]),
    "binarize_seed": SEED,
    "train_size": integer(1),
    "path": PATH,
    "test_path": PATH,
    "test_fraction": Allowed(
        "a number strictly between 0 and 1", lambda v: is_number(v) and 0 < v < 1
    ),
    "dim": integer(1),
    "latent_dim_true": integer(1),
    "num_points": integer(1),
    "test_points": integer(1),
    "seed": SEED,
    "image_shape": Allowed(
        "null or [height, width] (positive integers)",
        lambda v: isinstance(v, list) and len(v) == 2 and all(is_int(s) and s >= 1 for s in v),
    ),
}
NULLABLE_DATASET_KEYS = ("train_size", "test_path", "image_shape")

#: Allowed values of the optim group's keys.
OPTIM_KEYS: dict[str, Allowed] = {
    "betas": Allowed(
        "two numbers in [0, 1), such as [0.9, 0.999]",
        lambda v: (
            isinstance(v, list) and len(v) == 2 and all(is_number(b) and 0 <= b < 1 for b in v)
        ),
    ),
    "eps": positive(),
}


TEXT = Allowed("a non-empty string", lambda v: isinstance(v, str) and bool(v))

#: Allowed values of the keys of each logger (``logger.<name>.<key>``; conf/logger/*.yaml
#: declares which keys each has).
LOGGER_KEYS: dict[str, Allowed] = {
    "every_steps": integer(1),
    "log_dir": PATH,
    "images": BOOL,
    "tracking_uri": TEXT,
    "experiment": TEXT,
    "run_name": TEXT,
    "artifacts": BOOL,
}
NULLABLE_LOGGER_KEYS = ("tracking_uri", "run_name")


def allowed(dataclass_type: type, name: str) -> tuple[Allowed | None, bool]:
    """(what field ``name`` allows, whether None is allowed)."""
    for f in fields(dataclass_type):
        if f.name == name:
            return f.metadata.get("allowed"), f.metadata.get("nullable", False)
    return None, False


def register() -> None:
    """Put the schema in Hydra's ConfigStore, where ``conf/config.yaml`` names it."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


register()
