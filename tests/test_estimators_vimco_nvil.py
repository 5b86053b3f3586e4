"""VIMCO and NVIL: their formulas, unbiasedness against a reference gradient, K < 2 refused
for VIMCO, NVIL's baseline training under SVI and its state, and runs in training and in
the variance labs."""

import io
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_vae
from pyro_vae.config import ConfigError, compose_config, run_training, validate_config
from pyro_vae.errors import ArgumentError, EstimatorError
from pyro_vae.estimators import build_estimator
from pyro_vae.estimators.base import log_density, sample_sites
from pyro_vae.model import VAE
from pyro_vae.priors import StandardNormal

from .test_estimators import LinearGaussian, Z, flat, grads, make_vae, mean_and_se
from .test_gradient_variance import X_DIM, ExampleVAE, M

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def linear_gaussian():
    lg = LinearGaussian()
    return lg, lg.x[:5], torch.arange(5)


# -- VIMCO -----------------------------------------------------------------------------------


def test_vimco_refuses_fewer_than_two_particles_naming_num_particles():
    with pytest.raises(EstimatorError, match=r"num_particles >= 2.*num_particles=1"):
        build_estimator("vimco", num_particles=1)
    with pytest.raises(ConfigError, match=r"estimator=vimco needs num_particles >= 2"):
        validate_config(compose_config(["estimator=vimco"]))
    validate_config(compose_config(["estimator=vimco", "num_particles=2"]))


def test_vimco_gradient_follows_the_formula():
    """sum_j (L - L_{-j}) grad log q(z_j) + sum_j w~_j grad log w_j at fixed z, with L_{-j}
    computed here one j at a time from its definition."""
    lg, x, idx = linear_gaussian()
    params = lg.encoder + lg.decoder
    k = 4
    vimco = build_estimator("vimco", k)
    loss, g = grads(vimco, lg.model, lg.guide, params, x, idx, seed=0)
    pyro.set_rng_seed(0)
    model_trace, guide_trace = vimco._get_trace(lg.model, lg.guide, (x, idx), {})
    shape = vimco.layout(model_trace, guide_trace)
    assert not any(s["value"].requires_grad for _, s in sample_sites(guide_trace))
    log_q = log_density(guide_trace, shape)
    log_w = log_density(model_trace, shape) - log_q
    lw = log_w.detach()
    bound = torch.logsumexp(lw, 0) - math.log(k)
    signals = []
    for j in range(k):
        others = torch.cat([lw[:j], lw[j + 1 :]])
        replaced = torch.cat([others, others.mean(0, keepdim=True)])
        signals.append(bound - (torch.logsumexp(replaced, 0) - math.log(k)))
    signal = torch.stack(signals)
    w = torch.softmax(lw, 0)
    scale = shape.scale
    expected = torch.autograd.grad(-scale * (signal * log_q + w * log_w).sum(), params)
    torch.testing.assert_close(flat(g), flat(expected))
    torch.testing.assert_close(loss, -scale * bound.sum())


def test_vimco_is_unbiased_for_the_iwae_gradient():
    """No closed form for grad L_K at K > 1: the reference is IWAE's reparameterised
    estimator, unbiased for the same gradient (checked against DReG's in test_estimators).
    The means agree within Z combined standard errors per coordinate (32 coordinates, seeds
    fixed: a correct estimator fails with probability below 32 * 6e-5); the check has the
    power to see the wrong target, VIMCO's mean being over 10 Z from the ELBO's gradient."""
    lg, x, idx = linear_gaussian()
    pyro.set_rng_seed(0)
    m_iwae, se_iwae = mean_and_se(build_estimator("iwae", 3), lg, (x, idx), 300)
    m_vimco, se_vimco = mean_and_se(build_estimator("vimco", 3), lg, (x, idx), 600)
    assert ((m_vimco - m_iwae).abs() < Z * (se_iwae**2 + se_vimco**2).sqrt()).all()
    exact_elbo = flat(torch.autograd.grad(-lg.exact_bound(x), lg.encoder + lg.decoder))
    assert ((m_vimco - exact_elbo).abs() / se_vimco).max() > 10 * Z


def test_vimco_works_with_a_discrete_latent(clean_store):
    """No reparameterisation needed: a Bernoulli latent trains under SVI."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(3.0 * z, 1.0), obs=x)

    def guide(x):
        w = pyro.param("w", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=w * x))

    x = torch.tensor([-1.0, 0.0, 2.0, 4.0])
    svi = SVI(model, guide, Adam({"lr": 0.1}), build_estimator("vimco", 3))
    pyro.set_rng_seed(0)
    for _ in range(30):
        assert math.isfinite(svi.step(x))
    assert pyro.param("w").item() > 0.5  # large x -> z = 1


# -- NVIL --------------------------------------------------------------------------------------


def test_fresh_nvil_is_the_score_function_without_baseline():
    """Before its first update NVIL's baseline is zero (c = 0, b = 0 at its zero output
    layer, v = 1): the model's gradient is REINFORCE's without baseline, under the same
    noise (the net's initialisation does not advance the random state)."""
    vae, x, idx = make_vae()
    params = list(vae.parameters())
    ref = build_estimator("score_function", 3, baseline="none")
    loss_ref, g_ref = grads(ref, vae.model, vae.guide, params, x, idx, seed=0)
    nvil = build_estimator("nvil", 3)
    loss, g = grads(nvil, vae.model, vae.guide, params, x, idx, seed=0)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(flat(g), flat(g_ref))
    assert len(nvil.parameters()) == 4 and nvil.updates == 0


def trained_looking_state(nvil, lg, x, idx, variance):
    """A state with a nonzero baseline network, c and v, as after training."""
    nvil.differentiable_loss(lg.model, lg.guide, x, idx)  # builds the network
    state = nvil.state_dict()
    g = torch.Generator().manual_seed(1)
    state["baseline"] = {
        k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in state["baseline"].items()
    }
    state.update(mean=-3.0, variance=variance, updates=5)
    nvil.load_state_dict(state)


@pytest.mark.parametrize("normalize", [True, False])
def test_nvil_is_unbiased_with_a_trained_baseline(normalize):
    """theta: grad ELBO; phi: grad ELBO / max(1, sqrt(v)) (v = 4: half), whatever b(x) and
    c are; against the closed-form gradient, with the tolerance of test_estimators."""
    lg, x, idx = linear_gaussian()
    exact = flat(torch.autograd.grad(-lg.exact_bound(x), lg.encoder + lg.decoder))
    n_phi = sum(p.numel() for p in lg.encoder)
    if normalize:
        exact[:n_phi] /= 2.0
    nvil = build_estimator("nvil", 1, hidden_dim=8, normalize=normalize)
    trained_looking_state(nvil, lg, x, idx, variance=4.0)
    assert nvil.net[2].weight.abs().sum() > 0
    pyro.set_rng_seed(0)
    mean, se = mean_and_se(nvil, lg, (x, idx), 400)
    assert ((mean - exact).abs() <= Z * se + 1e-9 * (1 + exact.abs())).all()
    assert nvil.updates == 5 and nvil.mean == -3.0  # differentiable_loss leaves c, v alone


def test_nvil_statistics_follow_the_running_averages():
    lg, x, idx = linear_gaussian()
    nvil = build_estimator("nvil", 2, decay=0.8)
    residuals = []
    for seed in range(3):
        pyro.set_rng_seed(seed)
        model_trace, guide_trace = nvil._get_trace(lg.model, lg.guide, (x, idx), {})
        shape = nvil.layout(model_trace, guide_trace)
        log_w = log_density(model_trace, shape) - log_density(guide_trace, shape)
        nvil.differentiable_loss(lg.model, lg.guide, x, idx)  # builds the network
        b = nvil.net(lg.x[:5]).squeeze(-1)
        residuals.append((log_w - b).detach())
        pyro.set_rng_seed(seed)
        nvil.loss_and_grads(lg.model, lg.guide, x, idx)
        for p in lg.encoder + lg.decoder + nvil.parameters():
            p.grad = None
    mean, var = residuals[0].mean().item(), residuals[0].var(unbiased=False).item()
    for r in residuals[1:]:
        mean = 0.8 * mean + 0.2 * r.mean().item()
        var = 0.8 * var + 0.2 * r.var(unbiased=False).item()
    assert nvil.updates == 3
    assert nvil.mean == pytest.approx(mean, rel=1e-12)
    assert nvil.variance == pytest.approx(var, rel=1e-12)
    nvil.loss(lg.model, lg.guide, x, idx)
    assert nvil.updates == 3  # evaluation leaves them alone


def test_nvil_baseline_trains_under_svi_and_its_state_round_trips(clean_store):
    torch.manual_seed(0)
    vae = ExampleVAE()
    x = torch.rand(M, X_DIM).bernoulli()
    nvil = build_estimator("nvil", 1, hidden_dim=16)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 0.01}), nvil)
    pyro.set_rng_seed(0)
    svi.step(x)
    before = [p.detach().clone() for p in nvil.parameters()]
    assert {k.partition("$$$")[0] for k in pyro.get_param_store().keys()} == {
        "encoder",
        "decoder",
        nvil.pyro_name,
    }
    for _ in range(10):
        assert math.isfinite(svi.step(x))
    after = nvil.parameters()
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert nvil.updates == 11 and nvil.mean < 0 and nvil.variance > 0

    buffer = io.BytesIO()
    torch.save(nvil.state_dict(), buffer)
    buffer.seek(0)
    restored = build_estimator("nvil", 1, hidden_dim=16)
    restored.load_state_dict(torch.load(buffer))
    assert restored.state_dict()["mean"] == nvil.mean
    assert restored.state_dict()["variance"] == nvil.variance
    assert restored.updates == nvil.updates
    for a, b in zip(restored.parameters(), nvil.parameters(), strict=True):
        assert torch.equal(a, b) and a is not b
    # The same state gives bit-identical gradients under the same noise.
    params = list(vae.parameters())
    _, g1 = grads(nvil, vae.model, vae.guide, params, x, seed=3)
    _, g2 = grads(restored, vae.model, vae.guide, params, x, seed=3)
    assert torch.equal(flat(g1), flat(g2))
    # Loading into an estimator that already has a network keeps its parameter objects.
    restored.load_state_dict(build_estimator("nvil", 1, hidden_dim=16).state_dict())
    assert restored.net is None and restored.updates == 0
    restored.load_state_dict(nvil.state_dict())
    held = restored.parameters()
    restored.load_state_dict(nvil.state_dict())
    assert all(a is b for a, b in zip(held, restored.parameters(), strict=True))
    with pytest.raises(EstimatorError, match="hidden_dim=8"):
        build_estimator("nvil", hidden_dim=8).load_state_dict(nvil.state_dict())


def test_nvil_reads_observed_data_of_any_shape(clean_store):
    """x of shape [M, 1, 4, 4] (an image site with event shape (1, 4, 4)) and a second
    observed site: the baseline's input is both, flattened per datapoint."""
    torch.manual_seed(0)
    vae = ExampleVAE()
    x = torch.rand(M, 1, 4, 4).bernoulli()
    y = torch.randn(M, 3)

    def model(x, y):
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(M, 2), 1.0).to_event(1))
            probs = vae.decoder(z).reshape((*z.shape[:-1], 1, 4, 4))
            pyro.sample("obs", dist.Bernoulli(probs).to_event(3), obs=x)
            loc = z.sum(-1, keepdim=True).expand((*z.shape[:-1], 3))
            pyro.sample("label", dist.Normal(loc, 1.0).to_event(1), obs=y)

    def guide(x, y):
        vae.guide(x)

    nvil = build_estimator("nvil", 2)
    svi = SVI(model, guide, Adam({"lr": 0.01}), nvil)
    pyro.set_rng_seed(0)
    assert math.isfinite(svi.step(x, y))
    assert nvil.net[0].in_features == 16 + 3

    def unobserved(x, y):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", dist.Normal(x.new_zeros(M, 2), 1.0).to_event(1))

    with pytest.raises(EstimatorError, match="no observed sample site"):
        build_estimator("nvil").loss(unobserved, guide, x, y)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"hidden_dim": 0}, "hidden_dim=0 is not allowed"),
        ({"decay": 1.0}, "decay=1.0 is not allowed"),
        ({"normalize": "yes"}, "normalize='yes' is not allowed"),
    ],
)
def test_nvil_refuses_bad_parameters(params, message):
    with pytest.raises(ArgumentError, match=message):
        build_estimator("nvil", **params)


# -- training and the variance labs ----------------------------------------------------------


@pytest.mark.parametrize("estimator", ["estimator=vimco", "estimator=nvil"])
def test_training_run(tiny_cfg, estimator):
    summary = run_training(tiny_cfg(estimator, "num_particles=3", "epochs=2"))
    assert summary["status"] == "finished" and summary["test_elbo"] > -11.0


def test_gradient_variance_lab_on_a_user_model(clean_store):
    torch.manual_seed(0)
    vae = ExampleVAE()
    x = torch.rand(M, X_DIM).bernoulli()
    rows = pyro_vae.gradient_variance(
        vae.model, vae.guide, x, estimators=["vimco", "nvil"], num_particles=[1, 2], repeats=3
    )
    assert [(r["estimator"].split()[0], r["num_particles"], r["group"]) for r in rows] == [
        ("nvil", 1, "encoder"),
        ("nvil", 1, "decoder"),
        ("vimco", 2, "encoder"),
        ("vimco", 2, "decoder"),
        ("nvil", 2, "encoder"),
        ("nvil", 2, "decoder"),
    ]  # vimco skipped at L=1
    assert all(math.isfinite(r["total_variance"]) and r["total_variance"] > 0 for r in rows)
    assert not list(pyro.get_param_store().keys())


def test_estimator_variance_lab_on_the_vae():
    torch.manual_seed(0)
    vae = VAE.mlp(6, 3, [5], "bernoulli", StandardNormal(3), num_data=50)
    x = torch.rand(8, 6).bernoulli()
    rows = pyro_vae.estimator_variance(
        vae, x, estimators=["vimco", "nvil:hidden_dim=4"], num_particles=[3], repeats=3
    )
    assert [(r["estimator"], r["group"]) for r in rows] == [
        ("vimco", "phi"),
        ("vimco", "theta"),
        ("nvil hidden_dim=4 decay=0.8 normalize=True", "phi"),
        ("nvil hidden_dim=4 decay=0.8 normalize=True", "theta"),
    ]
    assert all(r["total_variance"] > 0 for r in rows)
