"""The configuration's declared schema: typed dataclasses registered in Hydra's ConfigStore.

Why dataclasses in Hydra's ConfigStore (rather than hydra-zen or pydantic): Hydra already
parses the command line, composes the config groups and runs sweeps; a structured config
makes it type-check every ``key=value`` as it composes (``epochs=1.5`` is refused before
anything runs), with no second library and no second model of the same keys. Each field
carries what it allows (:class:`Allowed`); :func:`pyro_vae.config.validate_config` checks
the values against it (ranges, choices, types of configurations read back from YAML) and
Hydra's type errors are reported in the same words.

The config groups (``dataset``, ``likelihood``, ``network``, ``prior``, ``guide``,
``estimator``, ``optim``) are typed ``Any``: their keys depend on the choice (a prior's, a
guide's or a likelihood's are the parameters of its ``_target_``); each
group's YAML files in ``conf/<group>`` declare them, and validation checks a configuration
against the defaults of the chosen files. ``logger`` is a group of which none, one or
several options are chosen (``logger=[tensorboard,mlflow]``): each adds its own node
(``logger.tensorboard``, ``logger.mlflow``), so it is a mapping, empty by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..checks import (
    BOOL,
    DEVICES,
    HIDDEN_DIMS,
    MAX_SEED,
    PATH,
    SEED,
    STEP_SIZES,
    Allowed,
    fraction,
    integer,
    is_int,
    is_number,
    one_of,
    positive,
)
from ..errors import ArgumentError
from ..evaluate import EVALUATE_CHECKS
from ..layers import layer_specs
from ..methods import METHODS
from ..model import MODEL_CHECKS
from ..optim import LR_SCHEDULES
from ..training.session import TRAIN_CHECKS

SCHEMA_NAME = "pyro_vae_schema"

# The checks live below the configuration layer (pyro_vae.checks), where the Python API uses
# them too; they are named here as well, for the code that reads the schema.
__all__ = [
    "BOOL",
    "HIDDEN_DIMS",
    "MAX_SEED",
    "PATH",
    "SEED",
    "STEP_SIZES",
    "Allowed",
    "Config",
    "MCEMConfig",
    "allowed",
    "integer",
    "is_int",
    "is_number",
    "one_of",
    "positive",
    "register",
]


def _layers_ok(v: Any) -> bool:
    try:
        layer_specs(v)
    except ArgumentError:
        return False
    return isinstance(v, list)


UPPER_LAYERS = Allowed(
    "a list of {latent_dim: <integer >= 1>, hidden_dims: [<integers >= 1>]} mappings (or [])",
    _layers_ok,
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
    target_accept: float = key(0.9, fraction())
    adapt_rate: float = key(
        0.5, positive(allow_zero=True)
    )  # log step size += rate * (acc - target)


#: The checks of the keys that are arguments of the Python API, by key: the same objects
#: :func:`pyro_vae.train`, :meth:`pyro_vae.VAE.mlp` and :func:`pyro_vae.evaluate` check
#: their arguments with (one validation for both).
_T, _M = TRAIN_CHECKS, MODEL_CHECKS


@dataclass
class Config:
    """Every top-level key of ``pyro-vae train``; the config groups follow."""

    seed: int = key(0, _T["seed"])
    device: str = key("cpu", one_of(DEVICES))  # cpu | cuda | auto
    data_dir: Optional[str] = key(
        None, PATH, nullable=True
    )  # null: $PYRO_VAE_DATA_DIR, else ./data
    download: bool = key(True, BOOL)  # fetch missing datasets (with checksums)
    run_dir: str = key("runs/${dataset.name}/${now:%Y-%m-%d_%H-%M-%S}", PATH)
    resume: bool = key(False, _T["resume"])  # continue the unfinished run in run_dir
    overwrite: bool = key(False, _T["overwrite"])  # retrain a run_dir that holds a finished run

    # Model (appendix C of the paper)
    latent_dim: int = key(20, _M["latent_dim"])
    hidden_dims: List[int] = key([500], _M["hidden_dims"])  # the MLP's encoder/decoder widths
    # Stochastic layers above z, listed upward: [{latent_dim: 50, hidden_dims: [100, 100]}]
    upper_layers: List[Any] = key([], UPPER_LAYERS)
    activation: str = key("tanh", _M["activation"])  # the MLP's
    init: str = key("torch", _M["init"])  # torch's default | paper: N(0, init_std^2)
    init_std: float = key(0.01, _M["init_std"])

    # Training
    method: str = key("aevb", one_of(sorted(METHODS)))  # aevb | wake_sleep | mcem
    epochs: int = key(10, _T["epochs"])
    num_samples: Optional[int] = key(None, _T["num_samples"], nullable=True)  # overrides epochs
    batch_size: int = key(100, _T["batch_size"])
    num_particles: int = key(1, _T["num_particles"])  # L in eq. 6/7 (K for iwae, dreg)
    fast: bool = key(False, _T["fast"])  # estimators A/B without Pyro's tracing: same numbers
    lr: float = key(1.0e-3, _T["lr"])  # set by the optim group
    weight_decay: float = key(0.0, _T["weight_decay"])  # 1.0: a N(0, I) prior on params
    lr_search: Optional[List[float]] = key(None, _T["lr_search"], nullable=True)  # sec. 5
    lr_search_steps: int = key(100, _T["lr_search_steps"])
    # Step size per epoch, stepped at epoch ends: none | exponential | step | cosine | iwae
    lr_schedule: str = key("none", one_of(LR_SCHEDULES))
    lr_gamma: float = key(
        0.1, _T["lr_gamma"]
    )  # exponential: lr * gamma^epoch; step: x gamma every lr_step_epochs
    lr_step_epochs: int = key(10, _T["lr_step_epochs"])  # step
    lr_min: float = key(0.0, _T["lr_min"])  # cosine: the last epochs' step size
    lr_iwae_epochs: int = key(3280, _T["lr_iwae_epochs"])  # iwae: stages scaled to this many
    mcem: MCEMConfig = field(default_factory=MCEMConfig)
    eval_batch_size: int = key(1000, _T["eval_batch_size"])
    checkpoint_every: int = key(1, _T["checkpoint_every"])  # epochs between checkpoints
    checkpoint_every_steps: Optional[int] = key(None, _T["checkpoint_every_steps"], nullable=True)
    checkpoint_every_seconds: Optional[float] = key(
        None, _T["checkpoint_every_seconds"], nullable=True
    )
    skip_nonfinite: bool = key(False, _T["skip_nonfinite"])  # skip (and count) a NaN/Inf step
    clip_grad_norm: Optional[float] = key(None, _T["clip_grad_norm"], nullable=True)
    snapshots: str = key("log", _T["snapshots"])  # log | all | none
    progress: bool = key(True, _T["progress"])
    plots: bool = key(True, _T["plots"])
    validate: bool = key(False, BOOL)  # Pyro's distribution/trace validation (slow)

    # Evaluation (pyro-vae evaluate)
    eval_num_samples: int = key(1000, EVALUATE_CHECKS["num_samples"])  # K per test point

    # Config groups, chosen in conf/config.yaml's defaults list
    dataset: Any = MISSING
    likelihood: Any = MISSING
    network: Any = MISSING
    prior: Any = MISSING
    guide: Any = MISSING
    estimator: Any = MISSING
    optim: Any = MISSING
    # Experiment trackers, none or several (logger=[tensorboard,mlflow]): one node each
    logger: Dict[str, Any] = field(default_factory=dict)


GROUPS = ("dataset", "likelihood", "network", "prior", "guide", "estimator", "optim")

#: Allowed values of the dataset group's keys (its YAML files declare which keys it has).
DATASET_KEYS: dict[str, Allowed] = {
    "binarize": TRAIN_CHECKS["binarize"],
    "test_binarize": TRAIN_CHECKS["test_binarize"],
    "binarize_seed": TRAIN_CHECKS["binarize_seed"],
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
    # dataset=torchvision: name is a class of torchvision.datasets
    "library": one_of(["torchvision"]),
    "root": PATH,
    "options": Allowed(
        "null or a mapping of the class's keyword arguments, such as {split: balanced}",
        lambda v: isinstance(v, dict),
    ),
    "train_split": Allowed(
        "null, a string or true/false", lambda v: isinstance(v, str | bool) and v != ""
    ),
    "test_split": Allowed(
        "null, a string or true/false", lambda v: isinstance(v, str | bool) and v != ""
    ),
}
NULLABLE_DATASET_KEYS = (
    "train_size",
    "test_path",
    "image_shape",
    "root",
    "options",
    "train_split",
    "test_split",
)

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
