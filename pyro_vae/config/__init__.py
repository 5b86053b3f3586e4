"""The declarative layer: Hydra's configuration of ``pyro-vae train``, on top of the Python API.

- :mod:`.schema`: the keys, their types, defaults and allowed values (dataclasses in
  Hydra's ConfigStore); ``conf/``: the config groups (dataset, prior, estimator, optim)
  and presets (``+experiment=paper``) as YAML files.
- :mod:`.validate`: :func:`compose_config` (the configuration a command line gives),
  :func:`validate_config` and :func:`check_overrides` (refuse a bad value, naming its key,
  before any work).
- :mod:`.build`: :func:`instantiate` (a configuration as the objects of the Python API)
  and :func:`run_training` (what ``pyro-vae train`` runs).

Only this package and :mod:`pyro_vae.cli` import Hydra or OmegaConf.
"""

from __future__ import annotations

from ..errors import ConfigError
from .build import (
    RESUMABLE_KEYS,
    Experiment,
    SweepJobFailed,
    build_data,
    build_model,
    build_training_method,
    instantiate,
    method_options,
    resumed_config,
    run_training,
)
from .schema import MAX_SEED, Config, MCEMConfig
from .validate import (
    CONF_DIR,
    PRESET_GROUPS,
    as_plain,
    check_overrides,
    compose_config,
    config_choices,
    config_dirs,
    config_groups,
    guide_spec,
    prior_spec,
    use_config_dirs,
    validate_config,
)

__all__ = [
    "CONF_DIR",
    "MAX_SEED",
    "PRESET_GROUPS",
    "RESUMABLE_KEYS",
    "Config",
    "ConfigError",
    "Experiment",
    "MCEMConfig",
    "SweepJobFailed",
    "as_plain",
    "build_data",
    "build_model",
    "build_training_method",
    "check_overrides",
    "compose_config",
    "config_choices",
    "config_dirs",
    "config_groups",
    "guide_spec",
    "instantiate",
    "method_options",
    "prior_spec",
    "resumed_config",
    "run_training",
    "use_config_dirs",
    "validate_config",
]
