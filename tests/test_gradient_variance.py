"""The estimators and the variance lab on a user's own Pyro model: a VAE written as Pyro's
``examples/vae/vae.py`` writes it (its own site names, ``pyro.module``, no pyro_vae class),
a 1-d Gaussian model whose gradient variances are known in closed form, and the run lab's
``groups=layer``."""

import csv
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from torch import nn

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import run_training
from pyro_vae.errors import ArgumentError, EstimatorError
from pyro_vae.estimators import ESTIMATORS, build_estimator

pytestmark = pytest.mark.usefixtures("one_thread")

X_DIM, HIDDEN, LATENT, M = 16, 8, 2, 12


# -- Pyro's VAE example, small --------------------------------------------------------------


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, X_DIM)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return self.sigmoid(self.fc21(hidden))


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(X_DIM, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, X_DIM)
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class ExampleVAE(nn.Module):
    def __init__(self, z_dim=LATENT, hidden_dim=HIDDEN):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, X_DIM),
            )

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


@pytest.fixture
def example():
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = ExampleVAE()
    x = torch.rand(M, X_DIM).bernoulli()
    yield vae, x
    pyro.clear_param_store()


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_trains_the_pyro_example_under_svi(name, example):
    vae, x = example
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    elbo = build_estimator(name, num_particles=2)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 0.01}), elbo)
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        losses = [svi.step(x) for _ in range(4)]
    assert all(math.isfinite(v) for v in losses), losses
    for n, p in vae.named_parameters():
        assert not torch.equal(p.detach(), before[n]), f"{name} left {n} unchanged"
    # NVIL's baseline network is registered under its own name, so SVI trains it too.
    own = {elbo.pyro_name} if name == "nvil" else set()
    assert {k.partition("$$$")[0] for k in pyro.get_param_store().keys()} == {
        "encoder",
        "decoder",
        *own,
    }


@pytest.mark.filterwarnings("ignore:Found vars in model but not guide")
def test_sgvb_b_refuses_a_prior_without_a_closed_form_kl_naming_the_site(example):
    vae, x = example

    def laplace_model(x):
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(
                "latent", dist.Laplace(x.new_zeros(x.shape[0], LATENT), 1.0).to_event(1)
            )
            pyro.sample("obs", dist.Bernoulli(vae.decoder(z)).to_event(1), obs=x)

    with pytest.raises(EstimatorError, match=r"site 'latent' is Laplace.*sgvb_a"):
        build_estimator("sgvb_b").loss(laplace_model, vae.guide, x)

    def extra_latent_model(x):  # a latent site "u" that the guide does not sample
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], LATENT), 1.0).to_event(1))
            u = pyro.sample("u", dist.Normal(x.new_zeros(x.shape[0], LATENT), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(vae.decoder(z + u)).to_event(1), obs=x)

    for name in ("sgvb_b", "meanfield"):
        with pytest.raises(EstimatorError, match=rf"{name}.*'u'.*(guide|sampled by)"):
            build_estimator(name).loss(extra_latent_model, vae.guide, x)


def test_gradient_variance_groups_by_module_and_leaves_the_state_alone(example):
    vae, x = example
    pyro.module("encoder", vae.encoder)  # in the store before; the decoder is not
    marked = vae.encoder.fc1.weight
    marked.grad = torch.full_like(marked, 7.0)
    rng = torch.get_rng_state()
    rows = pyro_vae.gradient_variance(vae.model, vae.guide, x, repeats=4)
    assert sorted(pyro.get_param_store().keys()) == [
        f"encoder$$${n}" for n, _ in sorted(vae.encoder.named_parameters())
    ]
    assert torch.equal(marked.grad, torch.full_like(marked, 7.0))
    assert all(p.grad is None for p in vae.decoder.parameters())
    assert torch.equal(torch.get_rng_state(), rng)

    assert [(r["estimator"].split()[0], r["group"]) for r in rows] == [
        (name, group)
        for name in sorted(ESTIMATORS)
        if name not in ("vimco", "rws")  # need num_particles >= 2: skipped at L=1
        for group in ("encoder", "decoder")
    ]
    sizes = {
        g: sum(p.numel() for p in getattr(vae, g).parameters()) for g in ("encoder", "decoder")
    }
    for r in rows:
        assert r["num_params"] == sizes[r["group"]] and r["num_data"] == M
        assert r["repeats"] == 4 and r["num_particles"] == 1
        assert r["total_variance"] > 0 and r["mean_snr"] > 0 and r["seconds_per_estimate"] > 0
        assert {"relative_variance", "mean_grad_norm_sq", "bound"} <= set(r)

    def get(estimator, group="encoder"):
        (row,) = [r for r in rows if r["estimator"] == estimator and r["group"] == group]
        return row

    # Pyro's Trace_ELBO and the hand-written A see the same noise from the same seed.
    for key in ("total_variance", "mean_snr", "bound"):
        assert get("trace_elbo")[key] == pytest.approx(get("sgvb_a")[key], rel=1e-5)
        assert get("meanfield")[key] == pytest.approx(get("sgvb_b")[key], rel=1e-5)
    # The decoder's gradient is the same for every estimator with one particle but IWAE's
    # and DReG's (equal to A's at K=1): all reparameterised through the same z.
    assert get("stl", "decoder")["total_variance"] == pytest.approx(
        get("sgvb_a", "decoder")["total_variance"], rel=1e-5
    )


def test_gradient_variance_equals_explicit_draws_and_torch_var(example):
    vae, x = example
    repeats = 6
    rows = pyro_vae.gradient_variance(
        vae.model, vae.guide, x, estimators=[("stl", {})], repeats=repeats, num_particles=3, seed=5
    )
    elbo = build_estimator("stl", num_particles=3)
    pyro.module("encoder", vae.encoder)
    pyro.module("decoder", vae.decoder)
    named = list(pyro.get_param_store().named_parameters())
    pyro.set_rng_seed(5)
    draws = []
    for _ in range(repeats):
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        grads = torch.autograd.grad(loss, [p for _, p in named])
        draws.append(
            {n: (g.reshape(-1) / M).double() for (n, _), g in zip(named, grads, strict=True)}
        )
    for group in ("encoder", "decoder"):
        stacked = torch.stack(
            [torch.cat([v for n, v in d.items() if n.startswith(group + "$$$")]) for d in draws]
        )
        (row,) = [r for r in rows if r["group"] == group]
        var, mean = torch.var(stacked, dim=0), stacked.mean(0)
        assert row["total_variance"] == pytest.approx(var.sum().item(), rel=1e-6)
        varies = var > 0
        snr = (mean[varies].abs() / var[varies].sqrt()).mean().item()
        assert row["mean_snr"] == pytest.approx(snr, rel=1e-6)
        assert row["estimator"] == "stl" and row["num_particles"] == 3


def test_gradient_variance_by_layer_parameter_and_callable(example):
    vae, x = example
    kwargs = {"estimators": ["sgvb_a", "score_function:baseline=none"], "repeats": 5}
    by_module = pyro_vae.gradient_variance(vae.model, vae.guide, x, **kwargs)
    by_layer = pyro_vae.gradient_variance(vae.model, vae.guide, x, groups="layer", **kwargs)
    layers = [
        "encoder$$$fc1",
        "encoder$$$fc21",
        "encoder$$$fc22",
        "decoder$$$fc1",
        "decoder$$$fc21",
    ]
    assert [r["group"] for r in by_layer] == layers * 2
    # Same draws (same seed), so the layers' variances add up to their module's.
    for m in by_module:
        parts = [
            r["total_variance"]
            for r in by_layer
            if r["estimator"] == m["estimator"] and r["group"].startswith(m["group"] + "$$$")
        ]
        assert sum(parts) == pytest.approx(m["total_variance"], rel=1e-9)
    by_tensor = pyro_vae.gradient_variance(
        vae.model, vae.guide, x, groups="parameter", estimators="sgvb_a", repeats=3
    )
    assert [r["group"] for r in by_tensor] == [
        f"{module}$$${n}"
        for module in ("encoder", "decoder")
        for n, _ in getattr(vae, module).named_parameters()
    ]
    only = pyro_vae.gradient_variance(
        vae.model,
        vae.guide,
        x,
        estimators=["sgvb_a"],
        repeats=3,
        groups=lambda name: "biases" if name.endswith(".bias") else None,
    )
    assert [(r["group"], r["num_params"]) for r in only] == [
        ("biases", HIDDEN + 2 * LATENT + HIDDEN + X_DIM)
    ]


@pytest.mark.parametrize("bad", ["layers", 3, ["module"]])
def test_bad_groups_are_refused_naming_the_value_and_what_is_allowed(bad, example):
    vae, x = example
    with pytest.raises(ArgumentError) as info:
        pyro_vae.gradient_variance(vae.model, vae.guide, x, groups=bad, repeats=2)
    message = str(info.value)
    assert message.startswith(f"groups={bad!r} is not allowed")
    assert "'module', 'layer', 'parameter'" in message and "callable" in message
    assert not list(pyro.get_param_store().keys())


def test_other_refusals(example):
    vae, x = example
    with pytest.raises(ArgumentError, match="estimators='nope'"):
        pyro_vae.gradient_variance(vae.model, vae.guide, x, estimators=["nope"])
    with pytest.raises(ArgumentError, match="repeats=1"):
        pyro_vae.gradient_variance(vae.model, vae.guide, x, repeats=1)
    with pytest.raises(EstimatorError, match=r"every estimator was refused.*particles"):
        pyro_vae.gradient_variance(
            vae.model, vae.guide, x, estimators=["score_function:baseline=particles"], repeats=2
        )

    def global_model(x):  # a global latent outside the data plate
        vae.model(x)
        pyro.sample("g", dist.Normal(0.0, 1.0))

    def global_guide(x):
        vae.guide(x)
        pyro.sample("g", dist.Normal(pyro.param("g_loc", torch.tensor(0.0)), 1.0))

    with pytest.raises(ArgumentError, match=r"per_datapoint=True.*per_datapoint=False"):
        pyro_vae.gradient_variance(global_model, global_guide, x, estimators=["trace_elbo"])
    rows = pyro_vae.gradient_variance(
        global_model, global_guide, x, estimators=["trace_elbo"], repeats=3, per_datapoint=False
    )
    assert [r["group"] for r in rows] == ["encoder", "g_loc", "decoder"]
    assert rows[0]["num_data"] is None
    assert not list(pyro.get_param_store().keys())


# -- a model whose gradient variances are known in closed form ------------------------------


# N datapoints, each with its own mu_i and s_i: one estimate gives N independent gradient
# coordinates per parameter, so R need not be large.
N = 500
_G = torch.Generator().manual_seed(0)
X = 1.5 * torch.randn(N, generator=_G, dtype=torch.float64)
MU = X / 2 + 0.3 * torch.randn(N, generator=_G, dtype=torch.float64)
SIGMA = torch.exp(0.2 * torch.randn(N, generator=_G, dtype=torch.float64))


def gaussian_model(x):
    """p(z_i) = N(0, 1), p(x_i | z_i) = N(z_i, 1): the posterior is N(x_i / 2, 1 / 2)."""
    with pyro.plate("data", N):
        z = pyro.sample("z_i", dist.Normal(torch.zeros(N, dtype=x.dtype), 1.0))
        pyro.sample("x_i", dist.Normal(z, 1.0), obs=x)


def gaussian_guide(x):
    """q(z_i) = N(mu_i, sigma_i^2), sigma_i = exp(s_i)."""
    mu = pyro.param("mu", torch.zeros(N, dtype=x.dtype))
    s = pyro.param("s", torch.zeros(N, dtype=x.dtype))
    with pyro.plate("data", N):
        pyro.sample("z_i", dist.Normal(mu, s.exp()))


def closed_form(estimator, mu, sigma):
    """Per-datapoint gradient variances (summed over i, each divided by N^2) of the ELBO's
    integrand log p(x, z) - log q(z), z = mu + sigma eps, for parameters mu and s.

    d/dz log p(x, z) = x - 2z. Estimator A: g_mu = x - 2z (log q's total derivative in mu
    is zero), g_s = (x - 2z) sigma eps + 1; with a = x - 2 mu, Var g_mu = 4 sigma^2 and
    Var g_s = a^2 sigma^2 + 8 sigma^4 (Var eps^2 = 2, Cov(eps, eps^2) = 0). STL adds the
    path term of -log q, +eps/sigma to d/dz, and drops the score: g_mu = x - 2z + eps/sigma,
    Var = (1/sigma - 2 sigma)^2; g_s = (a + (1/sigma - 2 sigma) eps) sigma eps,
    Var = a^2 sigma^2 + 2 (1 - 2 sigma^2)^2: zero at the posterior."""
    a = X - 2 * mu
    if estimator == "stl":
        var_mu = (1 / sigma - 2 * sigma) ** 2
        var_s = a**2 * sigma**2 + 2 * (1 - 2 * sigma**2) ** 2
    else:
        var_mu = 4 * sigma**2
        var_s = a**2 * sigma**2 + 8 * sigma**4
    return {"mu": (var_mu.sum() / N**2).item(), "s": (var_s.sum() / N**2).item()}


@pytest.mark.parametrize("at_posterior", [False, True])
def test_gradient_variance_matches_the_closed_form(at_posterior):
    pyro.clear_param_store()
    if at_posterior:
        mu, sigma = X / 2, torch.full((N,), 0.5**0.5, dtype=torch.float64)
    else:
        mu, sigma = MU, SIGMA
    pyro.param("mu", mu.clone())
    pyro.param("s", sigma.log())
    repeats = 200
    rows = pyro_vae.gradient_variance(
        gaussian_model,
        gaussian_guide,
        X,
        estimators=["trace_elbo", "sgvb_a", "stl"],
        repeats=repeats,
    )
    # N independent coordinates per parameter, each with R = 200 draws: the summed sample
    # variance's relative standard error, simulated from the formulas below for these mu and
    # sigma, is 0.5-0.7% for mu and 1.2-2.1% for s (its eps^2 terms have kurtosis 15), so
    # 10% is over 4.5 standard errors (and the seed is fixed).
    for r in rows:
        expected = closed_form(r["estimator"], mu, sigma)[r["group"]]
        if expected < 1e-12:  # STL at the exact posterior: no noise at all
            assert r["total_variance"] < 1e-20, r
        else:
            assert r["total_variance"] == pytest.approx(expected, rel=0.1), r
        assert r["num_data"] == N and r["num_params"] == N
    pyro.clear_param_store()


# -- the run lab's groups=layer -------------------------------------------------------------


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_variance_command_groups_by_layer(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg("epochs=1")
    run_training(cfg)
    run = Path(cfg.run_dir)
    common = ["variance", str(run), "estimators=sgvb_a,stl", "repeats=4"]
    assert main([*common, f"out_dir={tmp_path / 'module'}"]) == 0
    assert main([*common, "groups=layer", f"out_dir={tmp_path / 'layer'}"]) == 0
    out = capsys.readouterr().out
    assert "| epoch | L | estimator | group |" in out and "phi:trunk.0" in out
    module = read_rows(tmp_path / "module" / "variance.csv")
    layer = read_rows(tmp_path / "layer" / "variance.csv")
    assert [r["group"] for r in module] == ["phi", "theta"] * 2
    groups = list(dict.fromkeys(r["group"] for r in layer))
    assert groups[:3] == ["phi:trunk.0", "phi:loc", "phi:log_var"]
    assert "theta:trunk.0" in groups and all(g.startswith(("phi:", "theta:")) for g in groups)
    assert (tmp_path / "layer" / "variance_by_estimator.png").is_file()
    for m in module:  # the same draws: the layers' variances add up to phi's and theta's
        parts = [
            float(r["total_variance"])
            for r in layer
            if r["estimator"] == m["estimator"] and r["group"].startswith(m["group"] + ":")
        ]
        assert sum(parts) == pytest.approx(float(m["total_variance"]), rel=1e-6)
    assert main(["variance", str(run), "groups=layers"]) == 2
    assert "groups='layers' is not allowed" in capsys.readouterr().err
    assert main(["variance", "--help"]) == 0
    assert "groups (module" in capsys.readouterr().out
