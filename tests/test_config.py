"""Configuration: composition, validation before any work, and command-line refusals.

The property-based test throws random values, types and keys at the validator: each
configuration is either refused with an error raised by pyro-vae itself that names the
key or the value, or accepted and then trains one step; nothing fails deep inside torch,
Pyro or numpy.
"""

import traceback

import numpy as np
import pyro
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import pyro_vae
from pyro_vae.cli import USER_ERRORS, main
from pyro_vae.config import (
    ConfigError,
    check_overrides,
    compose_config,
    config_groups,
    instantiate,
    run_training,
    validate_config,
)
from pyro_vae.config.validate import config_choices
from pyro_vae.data import Minibatches
from pyro_vae.errors import ArgumentError, TrainingError
from pyro_vae.estimators import ESTIMATORS, build_estimator
from pyro_vae.methods import METHODS
from pyro_vae.priors import build_prior
from pyro_vae.training import NonFinitePolicy, RunDir, Trainer

from .conftest import bars_dataset, tiny_overrides


def test_the_defaults_and_every_group_choice_are_valid():
    validate_config(compose_config())
    for choice in ["dataset=frey_face", "dataset=binarized_mnist", "optim=adagrad"]:
        validate_config(compose_config([choice]))
    for group in ("dataset", "likelihood", "network"):
        for name in config_choices(group):
            # these need a path or an import path of their own
            if (group, name) not in (
                ("dataset", "array"),
                ("network", "custom"),
                ("likelihood", "family"),
            ):
                validate_config(compose_config([f"{group}={name}"]))
    groups = ["dataset", "estimator", "guide", "likelihood", "network", "optim", "prior"]
    assert config_groups() == groups


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("latent_dim=0", "latent_dim=0 is not allowed: expected an integer >= 1"),
        ("latent_dim=abc", "latent_dim='abc' is not allowed: expected an integer >= 1"),
        ("latent_dim=2.5", "latent_dim=2.5 is not allowed"),
        ("latent_dim=true", "latent_dim=True is not allowed"),
        ("lr=0", "lr=0.0 is not allowed: expected a finite number > 0"),
        ("lr=-0.001", "lr=-0.001 is not allowed"),
        ("lr=nan", "lr=nan is not allowed"),
        ("hidden_dims=500", "hidden_dims=500 is not allowed: expected a list of positive integers"),
        ("hidden_dims=[500,0]", "hidden_dims=[500, 0] is not allowed"),
        ("batch_size=0", "batch_size=0 is not allowed"),
        ("seed=-1", "seed=-1 is not allowed: expected an integer in 0..4294967295"),
        ("seed=4294967296", "seed=4294967296 is not allowed"),
        ("optim.betas=[0.9,1.5]", "optim.betas=[0.9, 1.5] is not allowed: expected two numbers"),
        ("clip_grad_norm=0", "clip_grad_norm=0.0 is not allowed: expected a finite number > 0"),
        ("checkpoint_every_steps=0", "checkpoint_every_steps=0 is not allowed"),
        ("checkpoint_every_seconds=-5", "checkpoint_every_seconds=-5.0 is not allowed"),
        ("skip_nonfinite=maybe", "skip_nonfinite='maybe' is not allowed: expected true or false"),
        ("device=tpu", "device='tpu' is not allowed: expected one of ['cpu', 'cuda', 'auto']"),
        ("run_dir=''", "run_dir='' is not allowed: expected a non-empty string"),
        ("dataset.test_fraction=1.5", "dataset.test_fraction=1.5 is not allowed"),
        ("dataset.image_shape=[16]", "dataset.image_shape=[16] is not allowed"),
    ],
)
def test_bad_values_are_refused_naming_key_value_and_what_is_allowed(tiny_cfg, override, message):
    with pytest.raises(ConfigError) as raised:
        validate_config(tiny_cfg(override))
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("dataset.name", "cifar", "(did you mean 'cifar10'?)"),
        ("estimator.name", "iwea", str(sorted(ESTIMATORS))),
        ("optim.name", "sgd", "['adagrad', 'adam']"),
        ("method", "mcem_typo", str(sorted(METHODS))),
    ],
)
def test_unknown_names_are_refused(tiny_cfg, key, value, allowed):
    cfg = tiny_cfg()
    OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigError, match=rf"{key}='{value}' is not allowed: expected one of"):
        validate_config(cfg)
    with pytest.raises(ConfigError) as raised:
        validate_config(cfg)
    assert allowed in str(raised.value)


def test_unknown_prior_choice_is_refused_with_a_suggestion():
    # prior.name is a free label (priors.py); the choice a user mistypes is the group.
    with pytest.raises(ConfigError, match=r"prior='laplce' is not allowed.*did you mean 'laplace'"):
        check_overrides(["prior=laplce"])


def test_a_flag_between_the_overrides_is_refused_with_where_it_goes():
    # Hydra's parser takes the overrides as one run of arguments: after -m, the rest is
    # "unrecognized" (its own message says no more).
    with pytest.raises(
        ConfigError, match=r"unrecognized arguments: latent_dim=2,5 \(Hydra's flags"
    ):
        check_overrides(["epochs=1", "-m", "latent_dim=2,5"])
    assert main(["train", "epochs=1", "-m", "latent_dim=2,5"]) == 2


@pytest.fixture
def user_conf(tmp_path):
    """A config directory of the user's with a prior file (docs/priors.md, Adding a prior)
    and a preset of its own; the choices they add are forgotten afterwards."""
    conf = tmp_path / "my_conf"
    (conf / "prior").mkdir(parents=True)
    (conf / "prior" / "cauchy.yaml").write_text(
        "name: cauchy\n_target_: pyro.distributions.Cauchy\nloc: 0.0\nscale: 1.0\n"
        "learnable: false\n"
    )
    (conf / "experiment").mkdir()
    (conf / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nepochs: 2\nlatent_dim: 3\n"
    )
    yield conf
    pyro_vae.config.use_config_dirs([])


@pytest.mark.parametrize("how", ["searchpath", "config_dir"])
def test_a_config_directory_of_the_users_adds_choices(how, user_conf, bars_path, tmp_path):
    where = (
        [f"hydra.searchpath=[file://{user_conf}]"]
        if how == "searchpath"
        else ["--config-dir", str(user_conf)]
    )
    with pytest.raises(ConfigError, match=r"prior='cauchy' is not allowed"):
        check_overrides(["prior=cauchy"])
    args = tiny_overrides(bars_path, tmp_path / "run", "prior=cauchy", "prior.scale=2")
    assert main(["train", *where, *args]) == 0
    prior = RunDir(tmp_path / "run").config()["prior"]
    assert prior == {
        "name": "cauchy",
        "_target_": "pyro.distributions.Cauchy",
        "loc": 0.0,
        "scale": 2,
        "learnable": False,
    }
    # A preset of the user's: +experiment=mine.
    cfg = compose_config(["+experiment=mine"])
    assert (cfg.epochs, cfg.latent_dim) == (2, 3)
    pyro_vae.config.use_config_dirs([])
    with pytest.raises(
        ConfigError, match=r"\+experiment='mine' is not allowed: expected one of \['iwae'"
    ):
        check_overrides(["+experiment=mine"])


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("latnet_dim", "unknown key 'latnet_dim'; did you mean 'latent_dim'?"),
        (
            "dataset.pth",
            "unknown key 'dataset.pth' for dataset=array; did you mean 'dataset.path'?",
        ),
        ("optim.beta", "unknown key 'optim.beta' for optim=adam; did you mean 'optim.betas'?"),
        ("zzz", "unknown key 'zzz'; `pyro-vae train --cfg job` prints every key"),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_known_key(tiny_cfg, key, message):
    cfg = tiny_cfg()
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, key, 3)
    with pytest.raises(ConfigError) as raised:
        validate_config(cfg)
    assert message in str(raised.value)


def test_a_key_of_another_group_choice_is_refused():
    cfg = compose_config(["optim=adagrad"])
    OmegaConf.set_struct(cfg, False)
    cfg.optim.betas = [0.9, 0.999]  # Adam's, meaningless for Adagrad
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.betas' for optim=adagrad"):
        validate_config(cfg)


def test_a_missing_key_is_refused(tiny_cfg):
    cfg = tiny_cfg()
    OmegaConf.set_struct(cfg, False)
    del cfg.optim["eps"]
    with pytest.raises(ConfigError, match=r"key optim\.eps is missing from the configuration"):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=1.5", "epochs=1.5 is not allowed: expected an integer >= 0"),
        ("latent_dim=abc", "latent_dim='abc' is not allowed: expected an integer >= 1"),
        ("mcem.hmc_steps=0.5", "mcem.hmc_steps=0.5 is not allowed: expected an integer >= 1"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_at_composition(override, message):
    with pytest.raises(ConfigError) as raised:
        compose_config([override])
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("overrides", "build", "message"),
    [
        (
            ["prior=laplace", "prior.scale=-1"],
            lambda: build_prior(
                {"_target_": "pyro.distributions.Laplace", "loc": 0.0, "scale": -1}, latent_dim=2
            ),
            "scale=-1 is not allowed: expected values in GreaterThan(lower_bound=0.0)",
        ),
        (
            ["estimator=score_function", "estimator.baseline=nope"],
            lambda: build_estimator("score_function", baseline="nope"),
            "baseline='nope' is not allowed: expected one of ['none', 'batch', 'particles']",
        ),
    ],
)
def test_a_components_error_is_named_under_its_configuration_key(overrides, build, message):
    # In Python, the component names its own argument ...
    with pytest.raises(ArgumentError) as raised:
        build()
    assert str(raised.value).startswith(message)
    # ... and the configuration layer names the key that set it.
    group = overrides[0].partition("=")[0]
    with pytest.raises(ConfigError) as raised:
        validate_config(compose_config(["latent_dim=2", *overrides]))
    assert str(raised.value).startswith(f"{group}.{message}")
    with pytest.raises(ConfigError) as raised:
        check_overrides(["latent_dim=2", *overrides])
    assert str(raised.value).startswith(f"{group}.{message}")


def test_compose_config_leaves_a_running_hydra_alone():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pyro_vae.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        compose_config(["latent_dim=3"])
        assert GlobalHydra.instance().is_initialized()
        assert compose(config_name="config").latent_dim == 20


# --- the command line, before Hydra creates anything -----------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["latnet_dim=3"], "unknown key 'latnet_dim'; did you mean 'latent_dim'?"),
        (["optim=adm"], "optim='adm' is not allowed: expected one of ['adagrad', 'adam']"),
        (["optim=adm"], "(did you mean 'adam'?)"),
        (["dataset=array", "dataset.pth=x"], "did you mean 'dataset.path'?"),
        (["hidden_dims=[1,"], "cannot parse the command line: no viable alternative"),
        (["latent_dim=2,3"], "latent_dim=2,3 gives several values: add -m (--multirun)"),
        (["-m", "latent_dim=2,0,3"], "latent_dim=0 is not allowed"),
        (["-m", "optim=adam,sgd"], "optim='sgd' is not allowed"),
        (["+foo=1"], "unknown key 'foo'"),
        (["dataset=array"], "missing value for ['dataset.path']"),
        (["experiment=paper"], "experiment is a preset, added with a plus: +experiment=paper"),
        (["+experiment=papr"], "papr"),
        (["epochs=1.5"], "epochs=1.5 is not allowed: expected an integer >= 0"),
        (["-m", "epochs=1,1.5"], "epochs=1.5 is not allowed: expected an integer >= 0"),
    ],
)
def test_check_overrides_refuses_before_hydra_starts(args, message):
    with pytest.raises(ConfigError) as raised:
        check_overrides(args)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--help"],
        ["--cfg", "job", "dataset=array"],  # prints the config, dataset.path still ???
        ["hydra.job.chdir=false", "latent_dim=3"],
        ["-m", "latent_dim=2,5", "optim=adam,adagrad"],
        ["-m", "latent_dim=range(2,4)"],
        ["+experiment=paper", "latent_dim=3"],
    ],
)
def test_check_overrides_accepts_good_command_lines(args):
    check_overrides(args)


def test_the_cli_prints_one_error_line_and_creates_nothing(bars_path, tmp_path, capsys):
    sweep = tiny_overrides(bars_path, tmp_path / "sweep", "latent_dim=2,0")
    assert main(["train", "-m", *sweep]) == 2
    err = capsys.readouterr().err
    assert err == "error: latent_dim=0 is not allowed: expected an integer >= 1\n"
    assert not (tmp_path / "sweep").exists()  # not even the valid first run started


def test_the_cli_names_the_key_of_a_components_error(bars_path, tmp_path, capsys):
    args = tiny_overrides(
        bars_path, tmp_path / "run", "estimator=score_function", "estimator.baseline=nope"
    )
    assert main(["train", *args]) == 2
    assert capsys.readouterr().err == (
        "error: estimator.baseline='nope' is not allowed: "
        "expected one of ['none', 'batch', 'particles']\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_bad_saved_config_is_named_on_resume(tiny_cfg, tmp_path):
    run_training(tiny_cfg("epochs=1"))
    run = RunDir(tmp_path / "run")
    run.config_path.write_text(
        run.config_path.read_text().replace("latent_dim: 2", "latent_dim: 0")
    )
    with pytest.raises(ConfigError, match=rf"^{run.config_path}: latent_dim=0 is not allowed"):
        run_training(tiny_cfg("epochs=2", "resume=true"), overrides=["epochs=2", "resume=true"])


# --- property-based: random configurations ---------------------------------------------------

# Sizes that allocate memory (widths, particles) stay small; everything else may be huge.
SMALL = st.integers(-3, 300)
NAMES = st.sampled_from(
    ["tanh", "relu", "gaussian", "bernoulli", "paper", "torch", "log", "none", "cpu", "auto",
     "cuda", "adam", "adagrad", "aevb", "trace_elbo", "standard_normal", "array", "mnist"]
)  # fmt: skip
ANY = st.one_of(
    st.none(),
    st.booleans(),
    SMALL,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-2, 40), max_size=3),
    st.lists(st.floats(-2, 2), max_size=3),
    NAMES,
)
USER_KEYS = [
    "latent_dim", "hidden_dims", "activation", "likelihood", "network", "init",
    "init_std", "epochs", "num_samples", "batch_size", "num_particles", "lr", "weight_decay",
    "eval_batch_size", "eval_num_samples", "checkpoint_every", "checkpoint_every_steps",
    "checkpoint_every_seconds", "skip_nonfinite", "clip_grad_norm", "snapshots", "progress",
    "plots", "validate", "download", "resume", "overwrite", "seed", "device", "run_dir",
    "data_dir", "method", "dataset", "dataset.name", "dataset.binarize", "dataset.test_binarize",
    "dataset.train_size", "dataset.binarize_seed", "dataset.test_path", "dataset.test_fraction",
    "dataset.image_shape", "optim", "optim.name", "optim.betas", "optim.eps", "prior.name",
    "estimator.name",
]  # fmt: skip
MEMORY_KEYS = {"latent_dim", "hidden_dims", "num_particles"}
TINY = compose_config(tiny_overrides("x.npy", "run"))


def _plausible(default):
    """Values near the default (same type, sensible range), so that many are accepted."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(0, 40)
    if isinstance(default, float):
        return st.floats(1e-6, 1.0)
    if isinstance(default, list):
        return st.lists(st.integers(1, 30), max_size=2)
    if default is None:
        return st.one_of(st.none(), st.integers(1, 40))
    return st.one_of(st.just(default), NAMES)


def _wild(key):
    if key in MEMORY_KEYS:
        return st.one_of(SMALL, st.lists(SMALL, max_size=2), st.text(max_size=3), st.none())
    return ANY


@st.composite
def changes(draw):
    keys = draw(st.lists(st.sampled_from(USER_KEYS), min_size=1, max_size=3, unique=True))
    # A group made a plain value has no keys below it to change.
    keys = [k for k in keys if k.partition(".")[0] == k or k.partition(".")[0] not in keys]
    out = {}
    for key in keys:
        wild = draw(st.integers(0, 3)) == 0  # one value in four of any type and size
        default = OmegaConf.select(TINY, key)
        out[key] = draw(_wild(key) if wild else _plausible(default))
    if draw(st.integers(0, 4)) == 0:  # and sometimes a key that does not exist
        scope = draw(st.sampled_from(["", "dataset.", "optim.", "prior."]))
        name = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8))
        out[scope + name] = draw(SMALL)
    return out


def _raised_by_pyro_vae(error: BaseException) -> bool:
    innermost = traceback.extract_tb(error.__traceback__)[-1].filename
    return innermost.startswith(str(pyro_vae.__path__[0]))


@pytest.fixture(scope="module")
def fuzz_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "bars.npy"
    np.save(path, bars_dataset())
    return path


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes())
def test_random_configs_are_refused_clearly_or_train_one_step(fuzz_data, tmp_path, changes):
    # The composed configuration is typed (the schema refuses a wrong type as it is set):
    # its plain values, as a config.yaml read back has them, take any value.
    cfg = OmegaConf.create(
        OmegaConf.to_container(compose_config(tiny_overrides(fuzz_data, tmp_path / "run")))
    )
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, merge=False)
    with pyro.validation_enabled(False):  # instantiate sets it globally from `validate`
        outcome = _one_step(cfg)
    if isinstance(outcome, BaseException):
        assert _raised_by_pyro_vae(outcome), f"{type(outcome).__name__} from deep inside: {outcome}"
        message = str(outcome)
        named = [k for k in changes if k.split(".")[0] in message or str(changes[k]) in message]
        assert named, f"{message!r} names none of {changes}"


def _one_step(cfg):
    """Validate, build and train one step; the user error raised instead, if any."""
    try:
        validate_config(cfg)
        experiment = instantiate(cfg)
        data, settings = experiment.data, experiment.cfg
        batches = Minibatches(
            data.train,
            settings["batch_size"],
            seed=settings["seed"],
            binarize=data.train_binarize,
            device=data.train.device,
        )
        policy = NonFinitePolicy(skip=settings["skip_nonfinite"])
        trainer = Trainer(experiment.method, batches, data.test, callbacks=[policy])
        idx, x = next(batches.epoch(0))
        loss = trainer.step(x, idx)
        assert loss is None or np.isfinite(loss)
        event("accepted: one step trained")
    except TrainingError:
        event("accepted: the first step is non-finite, stopped cleanly")
    except USER_ERRORS as e:
        event(f"refused: {type(e).__name__}")
        return e
    return None
