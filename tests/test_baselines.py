"""Wake-sleep's two phases, the MCEM step and batched HMC, checked on a linear-Gaussian model
whose posterior and log p(x) are known in closed form; then both methods in the trainer, and
their refusal of a prior defined through the encoder."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.config import (
    ConfigError,
    build_model,
    build_training_method,
    compose_config,
    run_training,
    validate_config,
)
from pyro_vae.errors import ArgumentError
from pyro_vae.hmc import adapt_step_size, hmc_step, log_joint
from pyro_vae.methods import MCEM, WakeSleep
from pyro_vae.model import VAE
from pyro_vae.optim import optimizer_factory
from pyro_vae.priors import StandardNormal, VampPrior
from pyro_vae.training.rundir import RunDir

X_DIM, Z_DIM, NOISE = 5, 2, 0.5


def numbers(rows):
    """Metrics without the wall-clock fields, which legitimately differ between runs."""
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


class LinearDecoder(nn.Module):
    """z -> W z + b, the mean of p(x|z) = N(W z + b, s^2 I) (:func:`linear_gaussian`)."""

    def __init__(self, W, b):
        super().__init__()
        self.W, self.b = nn.Parameter(W.clone()), nn.Parameter(b.clone())

    def forward(self, z):
        return z @ self.W.T + self.b


def linear_gaussian(mean):
    """The likelihood p(x|z) = N(mean, NOISE^2 I) of the decoder's output."""
    return dist.Normal(mean, NOISE).to_event(1)


def linear_gaussian_vae(num_data, seed=0):
    """A VAE whose decoder is linear-Gaussian and whose encoder is its exact posterior.

    W has orthogonal columns, so the posterior covariance (I + W'W / s^2)^-1 is diagonal
    and the paper's diagonal Gaussian encoder with no hidden layer represents it exactly.
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(X_DIM, Z_DIM, generator=g))
    W, b = q * torch.tensor([2.0, 1.2]), torch.randn(X_DIM, generator=g)
    # The paper's networks are drawn first, so the seeded tests below see the random stream
    # they were written with; its decoder is replaced by the linear one.
    paper = VAE.mlp(X_DIM, Z_DIM, [], "gaussian", prior=StandardNormal(Z_DIM))
    vae = VAE(
        paper.encoder,
        LinearDecoder(W, b),
        StandardNormal(Z_DIM),
        likelihood=linear_gaussian,
        num_data=num_data,
    )
    post_var = 1.0 / (1.0 + (W**2).sum(0) / NOISE**2)  # diagonal of the posterior covariance
    with torch.no_grad():
        vae.encoder.loc.weight.copy_(post_var[:, None] * W.T / NOISE**2)
        vae.encoder.loc.bias.copy_(-post_var * (W.T @ b) / NOISE**2)
        vae.encoder.log_var.weight.zero_()
        vae.encoder.log_var.bias.copy_(post_var.log())
    return vae, post_var


def sample_data(vae, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, Z_DIM, generator=g)
    return vae.decode_mean(z).detach() + NOISE * torch.randn(n, X_DIM, generator=g)


def exact_log_px(vae, x):
    W, b = vae.decoder.W, vae.decoder.b
    cov = W @ W.T + NOISE**2 * torch.eye(X_DIM)
    return torch.distributions.MultivariateNormal(b, cov).log_prob(x)


def grads(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def assert_mean_within_4_se(samples, expected):
    """Each component of the mean of independent ``samples`` [R, P] is within 4 standard
    errors of ``expected`` [P] (with 20 or fewer components, a false failure has
    probability under 20 x 6e-5 ~ 1e-3; the seeds are fixed)."""
    se = samples.std(0) / math.sqrt(samples.shape[0])
    assert torch.all((samples.mean(0) - expected).abs() < 4 * se + 1e-6), (
        samples.mean(0),
        expected,
        se,
    )


OPTIMIZER = optimizer_factory("adam", lr=0.01)


def test_wake_phase_is_fisher_ascent_on_theta_and_leaves_phi_alone():
    torch.manual_seed(0)
    n = 40
    vae, _ = linear_gaussian_vae(num_data=1000)
    x, idx = sample_data(vae, n), torch.arange(n)
    ws = WakeSleep(vae, optimizer=OPTIMIZER)
    theta = [vae.decoder.W, vae.decoder.b]
    # With q the exact posterior, E_q[grad_theta log p(x, z)] = grad_theta log p(x)
    # (Fisher's identity), at the plate's scale N/M.
    exact = grads(-1000 / n * exact_log_px(vae, x).sum(), theta)
    samples = []
    for _ in range(100):
        loss, elbo = ws.wake_loss(x, idx)
        samples.append(grads(loss, theta))
        assert not elbo.requires_grad
    assert_mean_within_4_se(torch.stack(samples), exact)
    loss, _ = ws.wake_loss(x, idx)
    assert all(
        g is None
        for g in torch.autograd.grad(loss, list(vae.encoder.parameters()), allow_unused=True)
    )


def test_sleep_phase_fits_the_encoder_to_dreams_from_the_model():
    torch.manual_seed(0)
    n, shift = 50, torch.tensor([0.3, -0.2])
    vae, post_var = linear_gaussian_vae(num_data=1000)
    with torch.no_grad():
        vae.encoder.loc.bias += shift
    ws = WakeSleep(vae, optimizer=OPTIMIZER)
    phi = [vae.encoder.loc.bias, vae.encoder.log_var.bias]
    # On (z, x) ~ p(z) p(x|z), -log q(z|x) for q = N(mu_post(x) + shift, post_var) has expected
    # gradient shift / var in the mean's bias and -shift^2 / (2 var) in the log-variance's
    # bias: N times that at the plate's scale. The data passed in are ignored (only dreams).
    exact = 1000 * torch.cat([shift / post_var, -(shift**2) / (2 * post_var)])
    junk = torch.full((n, X_DIM), 7.0)
    samples = torch.stack([grads(ws.sleep_loss(junk, torch.arange(n)), phi) for _ in range(150)])
    assert_mean_within_4_se(samples, exact)
    theta = [vae.decoder.W, vae.decoder.b]
    loss = ws.sleep_loss(junk, torch.arange(n))
    assert all(g is None for g in torch.autograd.grad(loss, theta, allow_unused=True))


def test_batched_hmc_samples_each_datapoints_posterior_and_tunes_its_step_size():
    torch.manual_seed(0)
    n = 30
    vae, post_var = linear_gaussian_vae(num_data=n)
    x = sample_data(vae, n)
    post_mean = vae.encoder(x)[0].detach()
    log_prob = log_joint(vae, x)
    # 8 chains per datapoint, started from the prior, sharing a step size far too small.
    z, eps = torch.randn(8, n, Z_DIM), torch.full((n,), 0.01)
    for _ in range(100):
        z, accept_prob, log_p = hmc_step(log_prob, z, eps, num_leapfrog=10)
        eps = adapt_step_size(eps, accept_prob, target=0.9, rate=0.5)
    torch.testing.assert_close(log_p, log_prob(z).detach())
    draws, accepted = [], []
    for _ in range(100):
        z, accept_prob, _ = hmc_step(log_prob, z, eps, num_leapfrog=10)
        draws.append((z - post_mean) / post_var.sqrt())
        accepted.append(accept_prob.mean())
    std = torch.stack(draws).flatten(0, 2)  # 8 x 30 x 100 standardised draws per dimension
    # Chain draws are correlated: the standard error of their mean is taken as 3x the
    # independent-draw value 1/sqrt(24000) (generous: HMC's lag-1 autocorrelation here is
    # negative); likewise for the variance, whose independent-draw SE is sqrt(2/24000).
    assert torch.all(std.mean(0).abs() < 4 * 3 / math.sqrt(std.shape[0]))
    assert torch.all((std.var(0) - 1).abs() < 4 * 3 * math.sqrt(2 / std.shape[0]))
    # The step size settles where the mean acceptance probability is the 0.9 target.
    assert torch.stack(accepted).mean().item() == pytest.approx(0.9, abs=0.03)


def test_mcem_step_keeps_posterior_chains_and_its_m_step_ascends_log_px():
    torch.manual_seed(0)
    n, copies = 20, 40
    vae, _ = linear_gaussian_vae(num_data=n * copies)
    x = sample_data(vae, n).repeat(copies, 1)  # 40 independent chains per datapoint
    idx = torch.arange(n * copies)
    mcem = MCEM(vae, optimizer=OPTIMIZER, step_size=0.3)
    with torch.no_grad():  # chains started at exact posterior draws
        mcem.z = vae.encode(x).sample()
    for _ in range(3):  # HMC leaves the posterior invariant: the draws stay exact
        z = mcem.e_step(x, idx)
    assert not torch.equal(z, vae.encoder(x)[0])
    theta = [vae.decoder.W, vae.decoder.b]
    # Fisher's identity: E_{p(z|x)}[grad_theta log p(x, z)] = grad_theta log p(x). Each copy
    # of the data is an independent estimate of the M-step gradient for the 20 points.
    per_copy = torch.stack(
        [
            grads(mcem.m_step_loss(x[c * n : (c + 1) * n], z[c * n : (c + 1) * n]), theta)
            for c in range(copies)
        ]
    )
    exact = grads(-copies * exact_log_px(vae, x[:n]).sum(), theta)
    assert_mean_within_4_se(per_copy, exact)


@pytest.mark.parametrize("method", ["wake_sleep", "mcem"])
def test_baseline_trains_and_resumes_to_the_same_numbers(method, tiny_cfg, tmp_path):
    run_training(tiny_cfg(f"method={method}", "epochs=4", run_dir=tmp_path / "whole"))
    run_training(tiny_cfg(f"method={method}", "epochs=2", run_dir=tmp_path / "parts"))
    run_training(
        tiny_cfg(f"method={method}", "epochs=4", "resume=true", run_dir=tmp_path / "parts")
    )
    whole, parts = RunDir(tmp_path / "whole"), RunDir(tmp_path / "parts")
    assert numbers(whole.metrics()) == numbers(parts.metrics())
    a, b = whole.load_checkpoint(), parts.load_checkpoint()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    if method == "mcem":  # the persistent chains are part of the checkpoint
        assert torch.equal(a["method"]["z"], b["method"]["z"])
    else:  # (MCEM's monitoring ELBO can dip early on while theta outruns the encoder)
        rows = whole.metrics()
        assert rows[-1]["test_elbo"] > rows[0]["test_elbo"]


# -- a prior defined through the encoder --------------------------------------------------------


def vamp_vae(num_components=3):
    torch.manual_seed(0)
    return VAE.mlp(
        X_DIM,
        Z_DIM,
        [4],
        prior=VampPrior(Z_DIM, X_DIM, num_components=num_components),
        num_data=10,
    )


@pytest.mark.parametrize(("name", "cls"), [("wake_sleep", WakeSleep), ("mcem", MCEM)])
def test_baselines_refuse_a_prior_that_depends_on_the_encoder(name, cls):
    """The VampPrior's density is the encoder's: wake-sleep and MCEM train the encoder on
    another objective than the generative model, so the prior's gradient through it would
    be lost. Refused, naming the method and the prior; a prior of its own parameters is not."""
    with pytest.raises(ArgumentError, match=rf"method={name} with prior=VampPrior is not allowed"):
        cls(vamp_vae())
    torch.manual_seed(0)
    learnable = {"_target_": "pyro.distributions.Normal", "loc": 0.0, "scale": 1.0}
    vae = VAE.mlp(X_DIM, Z_DIM, [4], prior={**learnable, "learnable": True}, num_data=10)
    method = cls(vae)
    prior_params = {id(p) for p in vae.prior.parameters()}
    assert prior_params and prior_params <= {
        id(p) for p in method.theta_optim.param_groups[0]["params"]
    }


@pytest.mark.parametrize("method", ["wake_sleep", "mcem"])
def test_config_refuses_a_baseline_with_the_vamp_prior_naming_both_keys(method):
    overrides = [f"method={method}", "prior=vamp", "latent_dim=2", "hidden_dims=[4]"]
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError, match=rf"method={method} with prior=vamp is not allowed"):
        validate_config(cfg)
    # The same refusal where a caller builds the method without validating the whole config.
    torch.manual_seed(0)
    vae = build_model(cfg, x_dim=X_DIM, num_data=10)
    with pytest.raises(ConfigError, match=rf"method={method} with prior=vamp is not allowed"):
        build_training_method(cfg, vae)
    # The prior alone, or the method alone, is allowed.
    validate_config(compose_config(["method=aevb", *overrides[1:]]))
    validate_config(compose_config([overrides[0], "prior=laplace", *overrides[2:]]))
