"""The paper's marginal-likelihood estimator (appendix D): exact on a linear-Gaussian model,
and in agreement with importance sampling on a trained VAE."""

import math

import pytest
import torch

from pyro_vae.config import run_training
from pyro_vae.evaluate import importance_log_likelihood
from pyro_vae.marginal import appendix_d_log_likelihood, fit_gaussian, hmc_marginal_log_likelihood
from pyro_vae.runs import load_run

from .test_evaluate import LinearGaussian, data


def test_fit_gaussian_is_the_sample_mean_and_covariance():
    torch.manual_seed(0)
    samples = torch.randn(500, 3, 2, dtype=torch.float64)  # 3 independent sets of 500
    q = fit_gaussian(samples)
    assert q.batch_shape == (3,) and q.event_shape == (2,)
    torch.testing.assert_close(q.mean, samples.mean(0))
    torch.testing.assert_close(
        q.covariance_matrix[1], torch.cov(samples[:, 1].T), rtol=1e-5, atol=0
    )


def test_appendix_d_recovers_the_exact_log_likelihood_of_a_linear_gaussian_model():
    torch.manual_seed(0)
    m = LinearGaussian(x_dim=5, latent_dim=3, s=0.5)
    x = data(m, n=30)

    def log_joint(z):
        prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return prior + torch.distributions.Normal(z @ m.W.T + m.b, m.s).log_prob(x).sum(-1)

    z_init = torch.randn(16, 30, 3, dtype=torch.float64)  # prior draws, far from the posteriors
    est = hmc_marginal_log_likelihood(log_joint, z_init, num_samples=200, burn_in=100)
    err = est - m.log_px(x)
    se = err.std() / math.sqrt(err.numel())
    # Per-point errors are independent, so their mean is within 4 SE of the estimator's bias,
    # which is upward (Jensen: log of an unbiased estimate of 1/p(x)) and under 0.01 nats
    # here; 0.01 is allowed for it.
    assert -4 * se < err.mean() < 4 * se + 0.01


def test_appendix_d_agrees_with_importance_sampling_on_a_trained_vae(tiny_cfg, tmp_path):
    run_training(tiny_cfg("epochs=20"))
    loaded = load_run(tmp_path / "run")
    x = loaded.data().test[:20]
    torch.manual_seed(0)
    is_ll = importance_log_likelihood(loaded.vae, x, num_samples=5000)
    d_ll = appendix_d_log_likelihood(loaded.vae, x, num_chains=16, num_samples=400, burn_in=100)
    diff = d_ll - is_ll
    # Both are consistent for log p(x), from opposite sides (IS below, appendix D above, by
    # a few thousandths of a nat at these sample sizes): the mean of the 20 independent
    # per-point differences is within 4 SE of 0, plus 0.01 for those biases.
    se = diff.std() / math.sqrt(diff.numel())
    assert diff.mean().abs() < 4 * se + 0.01


def test_one_chain_is_refused():
    with pytest.raises(ValueError, match="1 chain per datapoint"):
        hmc_marginal_log_likelihood(lambda z: -z.pow(2).sum(-1), torch.zeros(1, 4, 2))
