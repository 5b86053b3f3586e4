"""Test ELBO and importance-sampled log p(x), checked on a linear-Gaussian model where
log p(x) is known in closed form."""

import math

import pytest
import torch
from torch import nn

from pyro_vae.errors import ArgumentError
from pyro_vae.evaluate import active_units, evaluate, importance_log_likelihood, mean_elbo
from pyro_vae.model import VAE
from pyro_vae.priors import StandardNormal

F64 = torch.float64


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I); proposal q(z|x) = exact posterior,
    optionally with its covariance inflated by ``inflate``."""

    def __init__(self, x_dim=5, latent_dim=2, s=0.5, inflate=1.0, seed=0):
        # importance_log_likelihood sizes its chunks by the decoder's widest linear layer:
        # this model has none, so by D.
        self.decoder = nn.Sequential()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(x_dim, latent_dim, generator=g, dtype=F64)
        self.b = torch.randn(x_dim, generator=g, dtype=F64)
        self.s, self.inflate = s, inflate
        eye = torch.eye(latent_dim, dtype=F64)
        self.post_cov = torch.linalg.inv(eye + self.W.T @ self.W / s**2)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(x.shape[1], dtype=F64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x):
        loc = (x - self.b) @ self.W @ self.post_cov.T / self.s**2
        return torch.distributions.MultivariateNormal(loc, self.inflate * self.post_cov)

    def log_weights(self, x, num_samples=1):
        q = self.posterior(x)
        z = q.sample((num_samples,))
        prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        lik = torch.distributions.Normal(z @ self.W.T + self.b, self.s).log_prob(x).sum(-1)
        return lik + prior - q.log_prob(z)


def data(model, n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.W.shape[1], generator=g, dtype=F64)
    return (
        z @ model.W.T + model.b + model.s * torch.randn(n, model.W.shape[0], generator=g, dtype=F64)
    )


@pytest.mark.parametrize("max_elements", [10**6, 50])  # one chunk; many chunks of 1 point
def test_exact_posterior_proposal_gives_exact_log_likelihood(max_elements):
    m = LinearGaussian()
    x = data(m)
    est = importance_log_likelihood(m, x, num_samples=7, max_elements=max_elements)
    # With q = p(z|x) every weight equals p(x): exact for any K, up to round-off.
    torch.testing.assert_close(est, m.log_px(x))


def test_importance_sampling_converges_and_bounds_from_below():
    torch.manual_seed(0)
    m = LinearGaussian(inflate=2.0)
    x = data(m, n=400)
    truth = m.log_px(x).mean().item()
    elbo = mean_elbo(m, x)
    is_1000 = importance_log_likelihood(m, x, num_samples=1000).mean().item()
    # For a 2x-inflated Gaussian proposal in 2-D, Var(w)/E[w]^2 = (2/sqrt(3))^2 - 1 = 1/3:
    # the bias of log-mean-weights is about 1/(6K) per point and its sd sqrt(1/(3K)), so at
    # K=1000 the 400-point mean is within 0.0002 (bias) + 4 x 0.0009 (SE) < 0.004 of log p(x).
    assert elbo < is_1000
    assert abs(truth - is_1000) < 0.004
    # log q - log p(z|x) = chi2_2 / 2 - log 2 for a 2x-inflated 2-D Gaussian: mean
    # KL = 1 - log 2 ~= 0.307 nats, sd 1 per point, so the 400-point mean has SE 0.05;
    # the tolerance is 4 SE.
    assert truth - elbo == pytest.approx(1 - math.log(2), abs=0.2)


def test_vae_importance_estimate_is_above_its_elbo():
    torch.manual_seed(0)
    vae = VAE.mlp(10, 2, [8], "bernoulli", prior=StandardNormal(2))
    x = torch.rand(30, 10).bernoulli()
    elbo = mean_elbo(vae, x, batch_size=7)
    ll = importance_log_likelihood(vae, x, num_samples=200)
    assert ll.shape == (30,)
    assert ll.mean().item() > elbo
    with pytest.raises(ArgumentError, match="num_samples=0"):
        importance_log_likelihood(vae, x, num_samples=0)


def test_active_units_count_the_latents_whose_posterior_mean_varies():
    torch.manual_seed(0)
    vae = VAE.mlp(12, 3, [7], "bernoulli", prior=StandardNormal(3))
    with torch.no_grad():
        vae.encoder.loc.weight[1:].zero_()  # z2, z3: the same mean for every x
        vae.encoder.loc.weight[0].mul_(10.0)
    x = torch.rand(200, 12).bernoulli()
    assert active_units(vae, x) == 1
    assert active_units(vae, x, threshold=1e9) == 0
    # Cov_x(E_q[z_u|x]) over the whole set, whatever the chunks it is computed in
    loc = vae.encoder(x)[0].detach()
    want = int((loc.var(dim=0) > 1e-3).sum())
    assert active_units(vae, x, threshold=1e-3, batch_size=7) == want


def test_evaluate_reports_the_active_units_without_moving_the_random_stream():
    torch.manual_seed(0)
    vae = VAE.mlp(12, 3, [7], "bernoulli", prior=StandardNormal(3))
    x = torch.rand(50, 12).bernoulli()
    result = evaluate(vae, x, num_samples=10, batch_size=20, seed=3)
    assert result["active_units"] == active_units(vae, x) and result["latent_dim"] == 3
    torch.manual_seed(3)  # the same draws as before active units were reported
    assert result["test_elbo"] == mean_elbo(vae, x, 20)
    ll = importance_log_likelihood(vae, x, 10)
    assert result["test_log_likelihood"] == ll.mean().item()


def test_the_fused_bernoulli_evaluation_draws_and_weighs_as_log_weights():
    # importance_log_likelihood fuses the MLP decoder's last layer with the Bernoulli
    # log-density (x.l = h.(W^T x) + b.x, softplus): the same draws, so the same weights up
    # to float32 rounding (1e-4 relative: sums of ~1000 terms of size ~1 in float32).
    from pyro_vae.evaluate import _fused_bernoulli

    torch.manual_seed(0)
    vae = VAE.mlp(30, 4, [16, 8], "bernoulli", prior=StandardNormal(4))
    with torch.no_grad():
        vae.decoder.logits.weight.mul_(20.0)  # logits past softplus' threshold (20) too
    x = torch.rand(6, 30).bernoulli()
    fused = _fused_bernoulli(vae)
    assert fused is not None
    torch.manual_seed(1)
    got = fused(x, 50)
    torch.manual_seed(1)
    want = vae.log_weights(x, 50)
    assert got.shape == want.shape == (50, 6)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.manual_seed(2)
    via_evaluate = importance_log_likelihood(vae, x, 50)
    torch.manual_seed(2)
    want = torch.logsumexp(vae.log_weights(x, 50), 0) - math.log(50)
    torch.testing.assert_close(via_evaluate, want, rtol=1e-4, atol=1e-4)
    # other likelihoods take the general path
    gauss = VAE.mlp(30, 4, [16], "gaussian", prior=StandardNormal(4))
    assert _fused_bernoulli(gauss) is None


def test_chunks_are_sized_by_the_decoders_output_when_no_linear_layer_is_as_wide():
    # A convolutional decoder's categorical logits (D x 256 per sample) come from a
    # transposed convolution, not a linear layer: the chunks must count them, and the draws
    # of each chunk are those of log_weights on its points.
    torch.manual_seed(0)
    network = {"name": "conv", "channels": [4, 6], "hidden_dims": [8]}
    vae = VAE.build(64, network, image_shape=(8, 8), latent_dim=2, likelihood="categorical")
    x = torch.randint(0, 256, (10, 64)) / 255.0  # grey levels in [0, 1]
    chunks = []
    log_weights = vae.log_weights

    def recording(points, num_samples):
        chunks.append(points.shape[0])
        return log_weights(points, num_samples)

    vae.log_weights = recording
    budget = 3 * 5 * 64 * 256  # three points of K=5 samples of D x 256 logits
    torch.manual_seed(1)
    got = importance_log_likelihood(vae, x, num_samples=5, max_elements=budget)
    assert chunks == [3, 3, 3, 1]
    torch.manual_seed(1)
    want = torch.cat(
        [torch.logsumexp(log_weights(x[s : s + 3], 5), 0) - math.log(5) for s in (0, 3, 6, 9)]
    )
    torch.testing.assert_close(got, want)
    assert all(m.training for m in vae.decoder.modules())  # the sizing pass left train mode
