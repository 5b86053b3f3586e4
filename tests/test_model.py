"""Model, guide and networks: shapes, log-densities against closed forms, eq. 8 scaling."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.config import compose_config
from pyro_vae.model import VAE, build_vae
from pyro_vae.networks import GaussianDecoder, init_parameters
from pyro_vae.optim import build_optimizer
from pyro_vae.priors import StandardNormal


def make_vae(likelihood="bernoulli", x_dim=12, latent_dim=3, hidden=(7,), num_data=None):
    torch.manual_seed(0)
    vae = VAE(x_dim, latent_dim, list(hidden), likelihood, StandardNormal(latent_dim))
    vae.num_data = num_data
    return vae


def test_shapes_with_vectorised_particles():
    vae = make_vae()
    x = torch.rand(5, 12).bernoulli()
    loc, scale = vae.encoder(x)
    assert loc.shape == scale.shape == (5, 3) and (scale > 0).all()
    z = torch.randn(4, 5, 3)
    d = vae.decoder.distribution(z)
    assert d.batch_shape == (4, 5) and d.event_shape == (12,)
    with pyro.plate("particles", 4, dim=-2):
        tr = poutine.trace(vae.guide).get_trace(x)
    assert tr.nodes["z"]["value"].shape == (4, 5, 3)


def test_empty_hidden_dims_gives_linear_maps():
    vae = make_vae(hidden=())
    assert len(vae.encoder.trunk) == 0 and len(vae.decoder.trunk) == 0
    x = torch.rand(2, 12)
    w, b = vae.encoder.loc.weight, vae.encoder.loc.bias
    torch.testing.assert_close(vae.encoder(x)[0], x @ w.T + b)


def test_bernoulli_log_density_matches_closed_form():
    vae = make_vae().double()
    z = torch.randn(6, 3, dtype=torch.float64)
    x = torch.rand(6, 12, dtype=torch.float64).bernoulli()
    y = torch.sigmoid(vae.decoder(z))
    expected = (x * y.log() + (1 - x) * (1 - y).log()).sum(-1)  # appendix C
    torch.testing.assert_close(vae.decoder.distribution(z).log_prob(x), expected)


def test_bernoulli_log_density_is_finite_at_saturated_logits():
    vae = make_vae()
    with torch.no_grad():
        vae.decoder.logits.weight.zero_()
        vae.decoder.logits.bias.fill_(200.0)
    x = torch.zeros(3, 12)
    lp = vae.decoder.distribution(torch.zeros(3, 3)).log_prob(x)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, torch.full((3,), -200.0 * 12))


def test_gaussian_log_density_matches_closed_form():
    vae = make_vae("gaussian").double()
    z = torch.randn(6, 3, dtype=torch.float64)
    x = torch.rand(6, 12, dtype=torch.float64)
    mean, log_var = vae.decoder(z)
    expected = (-0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 / log_var.exp())).sum(-1)
    torch.testing.assert_close(vae.decoder.distribution(z).log_prob(x), expected)
    assert ((mean > 0) & (mean < 1)).all()


def test_gaussian_decoder_variance_floor():
    dec = GaussianDecoder(2, 4, [], "tanh", min_var=1e-3)
    with torch.no_grad():
        dec.log_var.weight.zero_()
        dec.log_var.bias.copy_(torch.tensor([-50.0, math.log(1e-3), 0.0, 5.0]))
    _, log_var = dec(torch.zeros(1, 2))
    floor = math.log(1e-3)
    assert (log_var >= floor).all()
    torch.testing.assert_close(log_var[0, 0], torch.tensor(floor))  # far below: at the floor
    assert abs(log_var[0, 3].item() - 5.0) < 1e-3  # far above: unchanged
    # Soft, not hard: the gradient survives at the floor.
    raw = torch.tensor([floor], requires_grad=True)
    (floor + torch.nn.functional.softplus(raw - floor)).sum().backward()
    assert raw.grad.item() == pytest.approx(0.5)


def test_encoder_log_density_matches_closed_form():
    vae = make_vae().double()
    x = torch.rand(5, 12, dtype=torch.float64)
    mu, sigma = vae.encoder(x)
    z = mu + sigma * torch.randn_like(mu)
    expected = (-0.5 * math.log(2 * math.pi) - sigma.log() - 0.5 * ((z - mu) / sigma) ** 2).sum(-1)
    torch.testing.assert_close(vae.encoder.distribution(x).log_prob(z), expected)


def test_log_weights_equal_model_and_guide_traces():
    vae = make_vae(num_data=100)
    x = torch.rand(5, 12).bernoulli()
    torch.manual_seed(3)
    log_w = vae.log_weights(x, 1)[0]
    torch.manual_seed(3)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    per_point = sum(
        model_tr.nodes[s]["fn"].log_prob(model_tr.nodes[s]["value"]) for s in ("z", "x")
    ) - guide_tr.nodes["z"]["fn"].log_prob(guide_tr.nodes["z"]["value"])
    torch.testing.assert_close(log_w, per_point)


def test_trace_elbo_is_the_full_data_bound_of_eq_8():
    """With the same noise, Trace_ELBO's loss is -(N/M) sum_i ELBO_i (eq. 8)."""
    n, m = 1000, 5
    vae = make_vae(num_data=n)
    x = torch.rand(m, 12).bernoulli()
    torch.manual_seed(7)
    loss = Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
    torch.manual_seed(7)
    expected = -(n / m) * vae.log_weights(x, 1).sum().item()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_paper_initialisation_is_normal_with_std_001():
    vae = make_vae(hidden=(300,))
    init_parameters(vae, "paper", 0.01)
    flat = torch.cat([p.detach().flatten() for p in vae.parameters()])
    # n > 7000 values: the sample std is within 5% of 0.01 with overwhelming probability.
    assert flat.numel() > 7000
    assert flat.std().item() == pytest.approx(0.01, rel=0.05)
    assert abs(flat.mean().item()) < 5 * 0.01 / math.sqrt(flat.numel())
    with pytest.raises(ValueError, match="init='xavier'"):
        init_parameters(vae, "xavier")


def test_build_vae_from_config():
    cfg = compose_config(["latent_dim=4", "hidden_dims=[8,6]", "init=torch"])
    vae = build_vae(cfg, x_dim=10, num_data=50)
    assert [m.out_features for m in vae.encoder.trunk if hasattr(m, "out_features")] == [8, 6]
    # The decoder mirrors the encoder.
    assert [m.out_features for m in vae.decoder.trunk if hasattr(m, "out_features")] == [6, 8]
    assert vae.encoder.loc.out_features == 4 and vae.num_data == 50


def test_two_models_in_one_process_do_not_share_parameters():
    a, b = make_vae(num_data=10), make_vae(num_data=10)
    b_before = [p.detach().clone() for p in b.parameters()]
    cfg = compose_config(["lr=0.1"])
    svi = SVI(a.model, a.guide, build_optimizer(cfg, a.parameters()), Trace_ELBO())
    a_before = [p.detach().clone() for p in a.parameters()]
    svi.step(torch.rand(4, 12).bernoulli())
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), a_before, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), b_before, strict=True))


def test_plain_pyro_svi_with_pyro_optim_trains_the_model():
    """What a user writes in a notebook: SVI + pyro.optim.Adam + Trace_ELBO, unchanged."""
    import gc

    vae = make_vae(num_data=10)
    before = [p.detach().clone() for p in vae.parameters()]
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    svi.step(torch.rand(4, 12).bernoulli())
    assert all(not torch.equal(p, q) for p, q in zip(vae.parameters(), before, strict=True))
    prefix = vae._pyro_name + "."
    assert any(k.startswith(prefix) for k in pyro.get_param_store().keys())
    del vae, svi
    gc.collect()
    assert not any(k.startswith(prefix) for k in pyro.get_param_store().keys())
