"""The posterior diagnostics (pyro_vae.diagnostics) against exact values on a linear-Gaussian
model, where p(x), p(z|x), the best q of each Gaussian family and I(x; z) are known in
closed form.

The VAE's decoder is set to the data's generating model x = W z + b + sigma eps (a linear
decoder, a Gaussian likelihood of fixed sigma, the N(0, I) prior), so its log p_theta(x)
is the data's exact one, and its posterior N(A (x - b), Lambda^-1), Lambda = I + W^T W /
sigma^2, has a covariance that is the same for every x. Its encoder is set to a known,
deliberately imperfect q (means shrunk by 0.7, variances too large by e^0.5), so that
every gap is known exactly:

- the best full-covariance Gaussian is the posterior itself: approximation gap 0;
- the best diagonal Gaussian is N(m(x), diag(1 / Lambda_jj)): approximation gap
  (1/2) [sum_j log Lambda_jj - log det Lambda] for every point;
- the inference gap log p(x) - ELBO(q) is KL(q(z|x) || p(z|x)), the amortisation gap its
  difference with the approximation gap.

Tolerances: each comparison allows 4 standard errors of the Monte Carlo estimate (over the
points of the per-point error, so the spread of the points themselves is not counted),
plus 0.01 nats for the local optimisation's budget (what it leaves of the gap after 300
annealed Adam steps: measured ~0.003 here). The random state is fixed (seed 0), so the
tests are deterministic; the tolerances say how far an unlucky seed could move them.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae import VAE
from pyro_vae.data.synthetic import LinearGaussian
from pyro_vae.diagnostics import (
    inference_gaps,
    kl_per_dimension,
    linear_gaussian_marginal,
    mutual_information,
    plot_diagnostics,
)
from pyro_vae.errors import ArgumentError

D, K = 6, 2
SHRINK, VAR_SHIFT = 0.7, 0.5


@pytest.fixture(scope="module")
def truth():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D, 1, generator=g, dtype=torch.float64)
    weight = torch.cat([w, w + 0.4 * torch.randn(D, 1, generator=g, dtype=torch.float64)], 1)
    model = LinearGaussian(
        weight=weight, bias=torch.randn(D, generator=g).double(), noise_scale=0.6
    )
    x = model.sample(2000, g).float()
    precision = torch.eye(K, dtype=torch.float64) + weight.T @ weight / model.noise_scale**2
    return model, x, precision


def true_vae(truth, guide):
    """The generating model as a VAE, with the encoder's q set to the imperfect one."""
    model, _, precision = truth
    a = torch.linalg.inv(precision) @ model.weight.T / model.noise_scale**2
    pyro.set_rng_seed(0)
    lik = {"name": "gaussian", "mean": "identity", "variance": "fixed", "scale": model.noise_scale}
    vae = VAE.mlp(D, latent_dim=K, hidden_dims=[], likelihood=lik, guide=guide)
    with torch.no_grad():
        vae.decoder.loc.weight.copy_(model.weight)
        vae.decoder.loc.bias.copy_(model.bias)
        vae.encoder.loc.weight.copy_(SHRINK * a)
        vae.encoder.loc.bias.copy_(-(SHRINK * a) @ model.bias)
        vae.encoder.log_var.weight.zero_()
        vae.encoder.log_var.bias.copy_(-torch.log(torch.diag(precision)) + VAR_SHIFT)
    return vae, a


def exact_inference_gap(truth, x, a):
    """KL(q(z|x) || p(z|x)) per point for the imperfect q: log p(x) - ELBO(q)."""
    model, _, precision = truth
    sigma = torch.linalg.inv(precision)
    post = (x.double() - model.bias) @ a.T
    diff = post - SHRINK * post
    var = torch.exp(-torch.log(torch.diag(precision)) + VAR_SHIFT)
    quad = torch.einsum("ni,ij,nj->n", diff, precision, diff)
    return 0.5 * ((precision.diag() * var).sum() + quad - K + torch.logdet(sigma) - var.log().sum())


def test_the_models_own_marginal_is_the_generating_one(truth):
    model, x, _ = truth
    vae, _ = true_vae(truth, "diagonal")
    exact = linear_gaussian_marginal(vae)
    torch.testing.assert_close(exact(x[:50]).double(), model.log_prob(x[:50]), rtol=1e-5, atol=1e-4)
    assert linear_gaussian_marginal(VAE.mlp(D, latent_dim=K)) is None  # not linear-Gaussian


@pytest.mark.parametrize("guide", ["diagonal", "full_covariance"])
def test_the_gaps_sum_to_log_px_minus_the_elbo_and_match_their_exact_values(truth, guide):
    model, x, precision = truth
    vae, a = true_vae(truth, guide)
    n = 100
    gaps = inference_gaps(vae, x, n, steps=300, lr=0.05, train_samples=20, per_point=True)
    assert gaps["gap_log_likelihood"].startswith("exact")
    per = {k: torch.tensor(v, dtype=torch.float64) for k, v in gaps["per_point"].items()}
    torch.testing.assert_close(per["log_likelihood"], model.log_prob(x[:n]), rtol=0, atol=1e-3)
    # the parts add up to the whole, point by point (an identity of the estimates) ...
    total = per["approximation_gap"] + per["amortisation_gap"]
    torch.testing.assert_close(total, per["inference_gap"], rtol=0, atol=1e-9)
    # ... and the whole is KL(q || p(z|x)) within the Monte Carlo error of ELBO(q)
    error = per["inference_gap"] - exact_inference_gap(truth, x[:n], a)
    assert abs(error.mean()) < 4 * error.std() / math.sqrt(n) + 1e-3, error.mean()
    diagonal_gap = 0.5 * (torch.log(precision.diag()).sum() - torch.logdet(precision)).item()
    assert diagonal_gap > 0.3  # a correlated posterior: the diagonal family cannot fit it
    expected = diagonal_gap if guide == "diagonal" else 0.0  # full covariance closes it
    se = gaps["approximation_gap_se"]
    assert abs(gaps["approximation_gap"] - expected) < 4 * se + 0.01, (gaps, expected)
    assert gaps["amortisation_gap"] > 0.5  # the shrunk encoder is far from q*
    assert len(gaps["gap_history"]) > 2 and gaps["gap_steps"] == 300


def test_the_importance_sampled_log_px_is_within_its_error(truth):
    model, x, _ = truth
    vae, _ = true_vae(truth, "full_covariance")
    gaps = inference_gaps(vae, x, 50, steps=200, lr=0.05, log_likelihood=None, per_point=True)
    assert gaps["gap_log_likelihood"].startswith("importance sampling")
    error = torch.tensor(gaps["per_point"]["log_likelihood"]).double() - model.log_prob(x[:50])
    assert error.abs().max() < 0.02  # q* is the exact posterior: the weights are constant


def test_the_mutual_information_is_within_its_error_of_the_exact_value(truth):
    """He et al.'s estimator on 2000 points of p(x), against I(x; z) under q in closed form:
    q(z|x) = N(A' x + c, S) with x ~ N(b, C) makes q(z) = N(A' b + c, A' C A'^T + S), so
    I = (1/2) [log det(A' C A'^T + S) - log det S]; for the exact posterior, (1/2) log det
    Lambda. Tolerance: 4 standard errors (over points) plus 0.05 nats for the estimator's
    bias at N = 2000 (the aggregate posterior of N points)."""
    model, x, precision = truth
    for guide in ("diagonal", "full_covariance"):
        vae, a = true_vae(truth, guide)
        if guide == "full_covariance":  # the exact posterior: shrink undone, its covariance
            chol = torch.linalg.cholesky(torch.linalg.inv(precision))
            with torch.no_grad():
                vae.encoder.loc.weight.copy_(a)
                vae.encoder.loc.bias.copy_(-a @ model.bias)
                vae.encoder.log_var.bias.copy_(2 * chol.diag().log())
                vae.guide_family.off_diagonal.bias.copy_(chol[1, 0].reshape(1))
            exact = 0.5 * torch.logdet(precision).item()
        else:
            s = torch.diag(torch.exp(-torch.log(precision.diag()) + VAR_SHIFT))
            aq = SHRINK * a
            cov = model.covariance()
            exact = 0.5 * (torch.logdet(aq @ cov @ aq.T + s) - torch.logdet(s)).item()
        pyro.set_rng_seed(0)
        mi = mutual_information(vae, x, num_points=2000)
        assert mi["mi_points"] == 2000
        assert abs(mi["mutual_information"] - exact) < 4 * mi["mutual_information_se"] + 0.05, (
            guide,
            mi,
            exact,
        )


def test_kl_per_dimension_sums_to_the_kl_of_a_diagonal_guide(truth):
    _, x, _ = truth
    vae, _ = true_vae(truth, "diagonal")
    kl = kl_per_dimension(vae, x)
    q = vae.encode(x)
    total = torch.distributions.kl_divergence(q, vae.prior().expand([x.shape[0]])).mean()
    torch.testing.assert_close(kl.sum(), total, rtol=1e-4, atol=1e-4)
    assert kl_per_dimension(VAE.mlp(D, latent_dim=K, guide="iaf"), x) is None  # no marginals


def test_evaluate_reports_the_dashboard_and_the_gaps(truth, tmp_path):
    _, x, _ = truth
    vae, _ = true_vae(truth, "diagonal")
    before = pyro_vae.evaluate(vae, x[:200], num_samples=20, progress=False, mi_points=0)
    result = pyro_vae.evaluate(
        vae, x[:200], num_samples=20, progress=False, gap_points=20, gap_steps=50
    )
    for key in ("test_elbo", "test_log_likelihood", "active_units"):  # unchanged by them
        assert result[key] == before[key]
    assert len(result["kl_per_dimension"]) == K and result["collapsed_dims"] == 0
    assert result["mutual_information"] > 0 and result["gap_points"] == 20
    assert result["gap_log_likelihood"].startswith("exact")
    path = plot_diagnostics(result, tmp_path / "d.png", title="linear Gaussian")
    assert path.stat().st_size > 1000
    with pytest.raises(ArgumentError, match="gap_points=-1 is not allowed"):
        pyro_vae.evaluate(vae, x[:20], num_samples=2, progress=False, gap_points=-1)
    lik = {"name": "gaussian", "mean": "identity", "variance": "learned"}
    layers = [{"latent_dim": 1, "hidden_dims": [3]}]
    two = VAE.mlp(D, latent_dim=K, likelihood=lik, upper_layers=layers)
    with pytest.raises(ArgumentError, match="the inference gaps"):
        pyro_vae.evaluate(two, x[:20], num_samples=2, progress=False, gap_points=5)
    assert "kl_per_dimension" not in pyro_vae.evaluate(two, x[:20], 2, progress=False)


def test_pyro_vae_evaluate_writes_the_diagnostics_into_the_summary_and_a_figure(tmp_path, capsys):
    from pyro_vae.cli import main
    from pyro_vae.config import compose_config, run_training

    run = tmp_path / "run"
    overrides = [
        "dataset=linear_gaussian",
        "dataset.dim=4",
        "dataset.latent_dim_true=2",
        "dataset.num_points=200",
        "dataset.test_points=100",
        "latent_dim=2",
        "guide=full_covariance",
        "epochs=1",
        "batch_size=50",
        f"run_dir={run}",
        "progress=false",
        "plots=false",
    ]
    run_training(compose_config(overrides))
    args = ["evaluate", str(run), "num_samples=10", "gap_points=10", "gap_steps=20"]
    assert main([*args, "progress=false"]) == 0
    out = capsys.readouterr().out
    assert "I(x; z) under q" in out and "= approximation" in out
    summary = pyro_vae.RunDir(run).summary()
    assert summary["gap_points"] == 10 and len(summary["kl_per_dimension"]) == 2
    assert summary["gap_log_likelihood"].startswith("exact")
    assert (run / "figures" / "diagnostics.png").is_file()
    assert main(["evaluate", str(run), "gap_steps=0"]) == 2
    assert "gap_steps=0 is not allowed" in capsys.readouterr().err
