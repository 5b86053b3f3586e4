"""The prior study's measurements (experiments/priors_study.py) on a tiny model."""

import importlib.util
from pathlib import Path

import pytest
import torch

from pyro_vae.model import VAE
from pyro_vae.priors import StandardNormal

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "priors_study.py"
spec = importlib.util.spec_from_file_location("priors_study", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def make_vae():
    torch.manual_seed(0)
    return VAE.mlp(12, 3, [7], "bernoulli", prior=StandardNormal(3))


def test_monte_carlo_kl_matches_the_closed_form_for_a_gaussian_prior():
    vae = make_vae()
    x = torch.rand(20, 12).bernoulli()
    s = 2000
    torch.manual_seed(1)
    terms = study.elbo_terms(vae, x, num_samples=s)
    with torch.no_grad():
        mu, sigma = vae.encoder(x)
        exact = 0.5 * (mu**2 + sigma**2 - 1 - 2 * sigma.log()).sum(-1)  # appendix B
        q = vae.encode(x)
        z = q.sample((s,))
        spread = (q.log_prob(z) - vae.prior().log_prob(z)).std().item()
    # The estimate averages s * 20 independent draws: 4 standard errors of that mean.
    assert terms["kl"] == pytest.approx(exact.mean().item(), abs=4 * spread / (s * 20) ** 0.5)
    assert terms["test_elbo"] == pytest.approx(terms["reconstruction"] - terms["kl"])
