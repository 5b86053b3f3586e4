"""The Python API, used as a Pyro user would: plain arguments, no Hydra, no OmegaConf."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from torch import nn

import pyro_vae
from pyro_vae import ArgumentError, TrainingInterrupted
from pyro_vae.cli import main
from pyro_vae.config import compose_config, run_training
from pyro_vae.training import Callback, RunDir

from .conftest import bars_dataset, tiny_overrides


def numbers(rows):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def same_checkpoints(a: RunDir, b: RunDir) -> None:
    sa, sb = a.load_checkpoint(), b.load_checkpoint()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    pa = {k: v for k, v in sa["position"].items() if k != "train_seconds"}
    pb = {k: v for k, v in sb["position"].items() if k != "train_seconds"}
    assert pa == pb


@pytest.fixture
def bars():
    x = torch.tensor(bars_dataset())
    return x[:180], x[180:]


class Encoder(nn.Module):
    """Written as in Pyro's examples/vae/vae.py: softplus hidden layer, softplus scale."""

    def __init__(self, z_dim: int, hidden_dim: int, x_dim: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int, x_dim: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, x_dim)
        self.softplus = nn.Softplus()

    def forward(self, z):
        return self.fc21(self.softplus(self.fc1(z)))  # logits


def test_the_python_api_needs_neither_hydra_nor_omegaconf(tmp_path):
    script = f"""
import sys, torch, pyro, pyro_vae
pyro.set_rng_seed(0)
x = torch.rand(60, 16).bernoulli()
vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[8])
summary = pyro_vae.train(vae, x, r"{tmp_path / "run"}", epochs=1, batch_size=20, progress=False)
pyro_vae.evaluate(vae, x, num_samples=5)
pyro_vae.load_run(r"{tmp_path / "run"}")
assert summary["status"] == "finished"
assert "hydra" not in sys.modules and "omegaconf" not in sys.modules, sorted(
    m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf"))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_python_and_the_cli_write_the_same_run(bars_path, tmp_path):
    """Same settings, same numbers: the command line is a layer over pyro_vae.train."""
    cli_dir, py_dir = tmp_path / "cli", tmp_path / "py"
    assert main(["train", *tiny_overrides(bars_path, cli_dir)]) == 0
    pyro.set_rng_seed(0)
    data = pyro_vae.load_dataset("array", path=bars_path)
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[16])
    summary = pyro_vae.train(
        vae, data, py_dir, lr=0.01, batch_size=20, epochs=3, progress=False, plots=False
    )
    assert summary["status"] == "finished"
    cli, py = RunDir(cli_dir), RunDir(py_dir)
    assert numbers(py.metrics()) == numbers(cli.metrics())
    same_checkpoints(cli, py)
    # ... and the command line reads the Python run back.
    assert main(["evaluate", str(py_dir), "num_samples=10"]) == 0
    assert "test_log_likelihood" in py.summary()
    assert py.config()["dataset"]["path"] == str(bars_path)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("aevb", {"estimator": "stl", "num_particles": 3}),
        ("aevb", {"estimator": "score_function", "optimizer": "adagrad", "lr": 0.05}),
        ("wake_sleep", {}),
        ("mcem", {}),
        ("aevb", {"optimizer": lambda params: torch.optim.SGD(params, lr=1e-3)}),
    ],
)
def test_train_a_tensor_with_any_method_estimator_and_optimiser(bars, tmp_path, method, options):
    x, x_test = bars
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[16])
    plots = method == "aevb" and "num_particles" in options  # figures once are enough
    summary = pyro_vae.train(
        vae, x, tmp_path / "run", test=x_test, method=method, epochs=2, batch_size=20,
        progress=False, plots=plots, **options,
    )  # fmt: skip
    run = RunDir(tmp_path / "run")
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert len(run.metrics()) == 2 and run.has_checkpoint()
    assert (run.checkpoint_dir / "epoch_0000.pt").is_file()
    if plots:
        assert (run.figure_dir / "elbo.png").is_file()
        assert (run.figure_dir / "samples.png").is_file()
    assert run.config()["method"] == method
    assert vae.num_data == 180  # set from the data


def test_an_interrupted_python_run_resumes_bit_for_bit(bars, tmp_path):
    x, x_test = bars
    settings = dict(test=x_test, epochs=3, batch_size=20, lr=0.01, progress=False, plots=False)

    def model():
        pyro.set_rng_seed(0)
        return pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[16])

    pyro_vae.train(model(), x, tmp_path / "whole", **settings)

    class StopAtStep(Callback):
        def between_steps(self, trainer):
            if trainer.position.step == 13:  # mid-epoch (9 steps an epoch)
                raise TrainingInterrupted(2)

    with pytest.raises(TrainingInterrupted):
        pyro_vae.train(model(), x, tmp_path / "cut", callbacks=[StopAtStep()], **settings)
    cut = RunDir(tmp_path / "cut")
    assert cut.summary()["status"] == "interrupted"
    assert cut.load_checkpoint()["position"]["step"] == 13
    # A fresh process would rebuild the model the same way; the checkpoint restores the rest.
    with pytest.raises(pyro_vae.RunDirError, match="resume=true"):
        pyro_vae.train(model(), x, tmp_path / "cut", **settings)
    summary = pyro_vae.train(model(), x, tmp_path / "cut", resume=True, **settings)
    assert summary["status"] == "finished"
    whole = RunDir(tmp_path / "whole")
    assert numbers(cut.metrics()) == numbers(whole.metrics())
    same_checkpoints(whole, cut)


def test_a_finished_run_is_reused_by_the_same_call_and_refused_to_another(bars, tmp_path):
    x, _ = bars
    settings = dict(epochs=1, batch_size=60, progress=False, plots=False)
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[8])
    first = pyro_vae.train(vae, x, tmp_path / "r", **settings)
    trained = {k: v.clone() for k, v in vae.state_dict().items()}
    # The same call again, as a rerun notebook makes it: a fresh model gets the trained one.
    pyro.set_rng_seed(0)
    fresh = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[8])
    assert pyro_vae.train(fresh, x, tmp_path / "r", **settings) == first
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.items())
    assert fresh.num_data == 180
    # Anything else is refused, naming what differs; the model given is left as it was.
    for change, named in [
        (dict(epochs=5), "epochs: run has 1, asked 5. resume=True trains it further"),
        (dict(lr=0.01), "lr: run has 0.001, asked 0.01"),
        (dict(data=x.flip(0)), "dataset.sha256: run has"),
    ]:
        other = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[8])
        before = {k: v.clone() for k, v in other.state_dict().items()}
        data = change.pop("data", x)
        with pytest.raises(pyro_vae.RunMismatchError, match=re.escape(named)):
            pyro_vae.train(other, data, tmp_path / "r", **{**settings, **change})
        assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())
    bigger = pyro_vae.VAE.mlp(x_dim=16, latent_dim=3, hidden_dims=[8])
    with pytest.raises(pyro_vae.RunMismatchError, match="another architecture"):
        pyro_vae.train(bigger, x, tmp_path / "r", **settings)
    redone = pyro_vae.train(bigger, x, tmp_path / "r", **{**settings, "epochs": 2}, overwrite=True)
    assert redone["epochs"] == 2


def test_your_own_networks_train_evaluate_plot_and_load(bars, tmp_path):
    x, x_test = bars
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE(Encoder(2, 16), Decoder(2, 16), latent_dim=2)
    summary = pyro_vae.train(
        vae, x, tmp_path / "run", test=x_test, estimator="dreg", num_particles=4, epochs=3,
        batch_size=20, lr=0.01, progress=False,
    )  # fmt: skip
    assert summary["test_elbo"] > -11.0  # a uniform Bernoulli scores 16 log 2 = -11.09
    with pytest.raises(ArgumentError, match="load_run\\(run_dir, vae="):
        pyro_vae.load_run(tmp_path / "run")
    fresh = pyro_vae.VAE(Encoder(2, 16), Decoder(2, 16), latent_dim=2)
    loaded = pyro_vae.load_run(tmp_path / "run", vae=fresh)
    for a, b in zip(vae.parameters(), loaded.vae.parameters(), strict=True):
        assert torch.equal(a, b)
    result = pyro_vae.evaluate(loaded.vae, x_test, num_samples=50)
    assert result["test_log_likelihood"] >= result["test_elbo"] - 0.5
    data = pyro_vae.RunData(pyro_vae.tensor_dataset(x, x_test), x, "none", x_test)
    paths = pyro_vae.plot_run(tmp_path / "run", vae=fresh, data=data)
    assert {p.name for p in paths} >= {"elbo.png", "manifold.png", "reconstructions.png"}
    rows = pyro_vae.estimator_variance(loaded.vae, x[:20], estimators=["sgvb_a", "stl"], repeats=5)
    assert {(r["estimator"], r["group"]) for r in rows} == {
        (e, g) for e in ("sgvb_a", "stl") for g in ("phi", "theta")
    }


def test_build_estimator_at_top_level_is_an_elbo_svi_takes(bars):
    x, _ = bars
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[16], num_data=180)
    elbo = pyro_vae.build_estimator("stl", num_particles=5)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 2e-2}), loss=elbo)
    losses = [svi.step(x) for _ in range(60)]
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])
    assert pyro_vae.build_estimator("score_function", baseline="none").baseline == "none"
    with pytest.raises(ArgumentError, match=r"estimator='stll' is not allowed"):
        pyro_vae.build_estimator("stll")


def test_any_prior_object_in_one_constructor_call(bars, tmp_path):
    x, _ = bars
    pyro.set_rng_seed(0)
    vamp = pyro_vae.VampPrior(2, x_dim=16, num_components=5)
    vae = pyro_vae.VAE(Encoder(2, 16), Decoder(2, 16), prior=vamp)
    assert vae.latent_dim == 2 and vamp._encoder is vae.encoder
    priors = {
        "vamp": lambda: pyro_vae.VampPrior(2, x_dim=16, num_components=5),
        "laplace": lambda: pyro_vae.Factorized(2, dist.Laplace, loc=0.0, scale=0.5),
        "mixture": lambda: pyro_vae.MixtureOfGaussians(2, num_components=3),
        "fixed": lambda: dist.Normal(torch.zeros(2), 2 * torch.ones(2)).to_event(1),
    }
    for name, prior in priors.items():
        model = pyro_vae.VAE(Encoder(2, 8), Decoder(2, 8), prior=prior(), init="paper")
        summary = pyro_vae.train(model, x, tmp_path / name, epochs=1, batch_size=60,
                                 progress=False, plots=False)  # fmt: skip
        assert summary["status"] == "finished", name
    with pytest.raises(ArgumentError, match="method=wake_sleep with prior=VampPrior"):
        pyro_vae.train(vae, x, tmp_path / "ws", method="wake_sleep", progress=False)


def test_the_step_size_search_from_python_records_its_choice(bars, tmp_path):
    x, _ = bars
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[8])
    summary = pyro_vae.train(
        vae, x, tmp_path / "run", lr_search=[1e-4, 0.05, 1e4], lr_search_steps=5,
        optimizer="adagrad", epochs=1, batch_size=20, progress=False, plots=False,
    )  # fmt: skip
    assert set(summary["lr_search"]) == {"0.0001", "0.05", "10000.0"}
    assert summary["lr"] == float(max(summary["lr_search"], key=summary["lr_search"].get))
    assert summary["lr"] != 10000.0  # the diverging trial scores -inf
    assert RunDir(tmp_path / "run").config()["lr"] == summary["lr"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 1.5}, "epochs=1.5 is not allowed: expected an integer >= 0"),
        ({"batch_size": 0}, "batch_size=0 is not allowed"),
        ({"batch_size": 500}, "batch_size=500 is not allowed: expected at most the 180"),
        ({"snapshots": "often"}, "snapshots='often' is not allowed"),
        ({"method": "em"}, "method='em' is not allowed"),
        ({"estimator": "sgvb_c"}, "estimator='sgvb_c' is not allowed"),
        ({"binarize": "yes"}, "binarize='yes' is not allowed"),
        ({"fast": True, "estimator": "iwae"}, "fast=True is not allowed"),
    ],
)
def test_bad_arguments_name_the_argument(bars, tmp_path, kwargs, message):
    x, _ = bars
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[8])
    with pytest.raises(ArgumentError) as raised:
        pyro_vae.train(vae, x, tmp_path / "run", progress=False, **kwargs)
    assert message in str(raised.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_configuration_is_one_call_from_the_objects(bars_path, tmp_path):
    """pyro_vae.config.instantiate: the data, model and method a configuration describes."""
    from pyro_vae.config import instantiate

    cfg = compose_config(tiny_overrides(bars_path, tmp_path / "run", "estimator=iwae"))
    experiment = instantiate(cfg)
    assert isinstance(experiment.vae, pyro_vae.VAE)
    assert type(experiment.method.elbo).__name__ == "IWAE_ELBO"
    assert experiment.data.num_train == experiment.vae.num_data == 180
    summary = experiment.train(tmp_path / "run")
    assert summary == run_training(cfg)  # a finished run: left as it is, summary returned
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"


def test_resuming_a_finished_run_with_nothing_left_rewrites_nothing(bars, tmp_path):
    x, _ = bars
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[8])
    settings = dict(epochs=1, batch_size=60, progress=False)
    pyro_vae.train(vae, x, tmp_path / "r", **settings)

    def state(p):  # an atomic rewrite, even of the same bytes, makes a new inode
        return p.read_bytes(), p.stat().st_ino

    files = {p: state(p) for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert any(p.suffix == ".png" for p in files)
    summary = pyro_vae.train(vae, x, tmp_path / "r", resume=True, **settings)
    assert summary["status"] == "finished"
    assert {p: state(p) for p in files} == files
