"""Bring your own model through the configuration: likelihood=, network= and the new
datasets as a user runs them (``pyro-vae train``'s configuration, then evaluate and plot)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pyro_vae import DataError, evaluate_run, load_run, plot_run
from pyro_vae.config import ConfigError, compose_config, run_training, validate_config
from pyro_vae.likelihoods import Gaussian

from .conftest import tiny_overrides

CONF = Path(__file__).resolve().parents[1] / "pyro_vae" / "config" / "conf"


def write(path, array):
    np.save(path, np.asarray(array, dtype=np.float32))
    return path


@pytest.fixture
def grey_path(tmp_path):
    """8-bit grey levels k/255 of 6x6 images (bars with noise)."""
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(120, 36)) / 255.0
    return write(tmp_path / "grey.npy", x)


@pytest.mark.parametrize(
    "likelihood",
    [
        ["likelihood=bernoulli"],
        ["likelihood=continuous_bernoulli"],
        ["likelihood=gaussian"],
        ["likelihood=gaussian", "likelihood.variance=learned"],
        ["likelihood=gaussian", "likelihood.scale=0.2"],
        ["likelihood=laplace"],
        ["likelihood=beta"],
        ["likelihood=categorical"],
    ],
    ids=lambda o: " ".join(o),
)
def test_each_likelihood_trains_evaluates_and_plots_on_grey_levels(
    tmp_path, grey_path, likelihood, one_thread
):
    run = tmp_path / "run"
    overrides = tiny_overrides(grey_path, run, *likelihood, "epochs=1", "plots=true")
    summary = run_training(compose_config(overrides))
    assert math.isfinite(summary["test_elbo"])
    result = evaluate_run(run, num_samples=5)
    assert math.isfinite(result["test_log_likelihood"])
    # The recorded configuration rebuilds the same likelihood.
    loaded = load_run(run)
    saved = yaml.safe_load((run / "config.yaml").read_text())["likelihood"]
    assert loaded.vae.likelihood.name == saved["name"]
    assert {p.name for p in (run / "figures").glob("*.png")} >= {"samples.png", "elbo.png"}


@pytest.mark.parametrize(
    ("likelihood", "data"),
    [
        (["likelihood=poisson"], "counts"),
        (["likelihood=negative_binomial"], "counts"),
        (["likelihood=gaussian", "likelihood.mean=identity"], "real"),
        (["likelihood=laplace", "likelihood.mean=identity", "likelihood.variance=learned"], "real"),
    ],
)
def test_counts_and_real_values_train_with_their_likelihoods(
    tmp_path, likelihood, data, one_thread
):
    rng = np.random.RandomState(1)
    x = rng.poisson(3.0, (100, 10)) if data == "counts" else rng.randn(100, 10) * 5 - 2
    path = write(tmp_path / f"{data}.npy", x)
    summary = run_training(compose_config(tiny_overrides(path, tmp_path / "r", *likelihood)))
    assert math.isfinite(summary["test_elbo"])


@pytest.mark.parametrize(
    ("likelihood", "data", "message"),
    [
        ("poisson", [[0.5, 1.0]], "likelihood=poisson needs counts (integers >= 0); found 0.5"),
        ("bernoulli", [[2.0, 1.0]], "likelihood=bernoulli needs values in [0, 1]"),
        ("gaussian", [[-1.0, 0.0]], "likelihood=gaussian needs values in [0, 1] (mean=sigmoid)"),
        ("categorical", [[0.001, 0.0]], "likelihood=categorical needs grey levels k / 255"),
    ],
)
def test_data_outside_the_likelihoods_support_is_refused_naming_likelihood_value_file(
    tmp_path, likelihood, data, message
):
    path = write(tmp_path / "bad.npy", np.repeat(np.asarray(data), 30, axis=0))
    cfg = compose_config(tiny_overrides(path, tmp_path / "r", f"likelihood={likelihood}"))
    with pytest.raises(DataError) as raised:
        run_training(cfg)
    assert message in str(raised.value)
    assert "bad.npy" in str(raised.value)
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing written for bad data


def test_real_values_under_the_default_sigmoid_gaussian_are_refused_with_the_fix(tmp_path):
    path = write(tmp_path / "real.npy", np.random.RandomState(0).randn(50, 4) * 3)
    with pytest.raises(DataError, match=r"found -?\d"):
        run_training(compose_config(tiny_overrides(path, tmp_path / "r", "likelihood=gaussian")))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["likelihood=gaussian", "likelihood.mean=tanh"], "likelihood.mean='tanh' is not allowed"),
        (["likelihood=gaussian", "likelihood.variance=fixed"], "likelihood.scale=None"),
        (["likelihood=categorical", "likelihood.levels=1"], "likelihood.levels=1 is not allowed"),
        (["likelihood._target_=pyro.distributions.Nope"], "shipped: likelihood=["),
        (["likelihood=family"], "missing value for ['likelihood.family', 'likelihood.params']"),
        (
            [
                "likelihood=family",
                "likelihood.family=pyro.distributions.Gamma",
                "likelihood.params={rate:cube}",
            ],
            "likelihood.params.rate='cube' is not allowed",
        ),
        (["network=conv", "network.channels=[]"], "network.channels=[] is not allowed"),
        (["network=conv", "network.kernel_size=1"], "network.kernel_size=1 is not allowed"),
        (["network=conv", "+network.depth=3"], "network.depth is not a parameter of network=conv"),
        (["network=custom"], "missing value for ['network.decoder._target_'"),
        (
            ["network=custom", "network.encoder._target_=nope.Enc", "network.decoder._target_=x.D"],
            "network.encoder._target_='nope.Enc' is not allowed",
        ),
    ],
)
def test_bad_likelihood_and_network_keys_are_refused_by_name(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as raised:
        validate_config(compose_config(overrides))
    assert message in str(raised.value)


def test_a_family_by_import_path_trains(tmp_path, one_thread):
    rng = np.random.RandomState(2)
    path = write(tmp_path / "pos.npy", rng.gamma(2.0, 1.0, (100, 6)))
    family = [
        "likelihood=family",
        "likelihood.family=pyro.distributions.Gamma",
        "likelihood.params={concentration:softplus,rate:softplus}",
    ]
    summary = run_training(compose_config(tiny_overrides(path, tmp_path / "r", *family)))
    assert math.isfinite(summary["test_elbo"])
    assert load_run(tmp_path / "r").vae.likelihood.name == "gamma"


def test_conv_network_trains_on_images_and_resumes_bit_for_bit(tmp_path, grey_path, one_thread):
    conv = [
        "network=conv",
        "network.channels=[4,8]",
        "network.hidden_dims=[16]",
        "dataset.image_shape=[6,6]",
        "likelihood=continuous_bernoulli",
    ]
    straight = tmp_path / "straight"
    run_training(compose_config(tiny_overrides(grey_path, straight, *conv, "epochs=2")))
    resumed = tmp_path / "resumed"
    run_training(compose_config(tiny_overrides(grey_path, resumed, *conv, "epochs=1")))
    run_training(
        compose_config(tiny_overrides(grey_path, resumed, *conv, "epochs=2", "resume=true"))
    )
    a, b = load_run(straight).vae.state_dict(), load_run(resumed).vae.state_dict()
    assert any(k.startswith("encoder.convs") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plot_run(straight, figures=["samples", "reconstructions"])


class TinyEncoder(nn.Module):
    """A user's encoder, named by import path (tests.test_own_model.TinyEncoder)."""

    def __init__(self, x_dim, latent_dim, width=5):
        super().__init__()
        self.body = nn.Linear(x_dim, width)
        self.loc, self.log_scale = nn.Linear(width, latent_dim), nn.Linear(width, latent_dim)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.loc(h), self.log_scale(h).exp()


class TinyDecoder(nn.Module):
    """A user's decoder: one output per head the likelihood asks for."""

    def __init__(self, latent_dim, x_dim, heads, width=5):
        super().__init__()
        self.body = nn.Linear(latent_dim, width)
        self.heads = nn.ModuleList(nn.Linear(width, x_dim * h.per_dim) for h in heads)

    def forward(self, z):
        h = torch.tanh(self.body(z))
        out = tuple(head(h) for head in self.heads)
        return out[0] if len(out) == 1 else out


def test_custom_network_classes_by_import_path(tmp_path, grey_path, one_thread):
    custom = [
        "network=custom",
        "network.encoder._target_=tests.test_own_model.TinyEncoder",
        "network.decoder._target_=tests.test_own_model.TinyDecoder",
        "+network.decoder.width=7",
        "likelihood=gaussian",
    ]
    run = tmp_path / "r"
    run_training(compose_config(tiny_overrides(grey_path, run, *custom)))
    vae = load_run(run).vae
    assert isinstance(vae.encoder, TinyEncoder) and vae.decoder.body.out_features == 7
    assert len(vae.decoder.heads) == 2  # the Gaussian's mean and log variance


def test_linear_gaussian_evaluate_prints_the_exact_log_likelihood(tmp_path):
    run = tmp_path / "lg"
    overrides = [
        "dataset=linear_gaussian",
        "dataset.dim=6",
        "dataset.latent_dim_true=2",
        "dataset.num_points=400",
        "dataset.test_points=100",
        "latent_dim=2",
        "epochs=3",
        "lr=0.01",
        f"run_dir={run}",
        "progress=false",
        "plots=false",
    ]
    run_training(compose_config(overrides))
    out = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "evaluate", str(run), "num_samples=100"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out[: out.rindex("}") + 1])
    exact = result["test_exact_log_likelihood"]
    assert result["elbo_gap"] == pytest.approx(exact - result["test_elbo"])
    assert result["importance_gap"] == pytest.approx(exact - result["test_log_likelihood"])
    # The true density bounds the model's on average (Gibbs), and the ELBO bounds both; 100
    # test points leave sampling noise of about sd/10 nats, far below these gaps at 3 epochs.
    assert result["test_elbo"] < result["test_log_likelihood"] < exact
    assert "exact log p(x)" in out


def test_an_old_run_with_likelihood_as_a_name_still_loads(tmp_path, grey_path, one_thread):
    run = tmp_path / "old"
    overrides = tiny_overrides(grey_path, run, "likelihood=gaussian", "likelihood.min_var=0.001")
    run_training(compose_config(overrides))
    before = load_run(run).vae.decode(torch.zeros(1, 2)).log_prob(torch.full((1, 36), 0.5))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["likelihood"], cfg["decoder_min_var"] = "gaussian", 0.001  # as version 0.1 wrote it
    del cfg["network"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_run(run)
    assert isinstance(loaded.vae.likelihood, Gaussian) and loaded.vae.likelihood.floor == 0.001
    after = loaded.vae.decode(torch.zeros(1, 2)).log_prob(torch.full((1, 36), 0.5))
    assert torch.equal(before, after)
    assert math.isfinite(evaluate_run(run, num_samples=3)["test_log_likelihood"])


def test_help_names_every_group_option_and_every_key_of_the_new_groups():
    out = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for group in ("dataset", "likelihood", "network"):
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in out
        for option in options:
            node = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())
            node = node.get(group, {}) if group == "dataset" else node
            for key in node:
                assert re.search(rf"\b{re.escape(key)}\b", out), f"{group}={option}: {key}"
