"""Model, guide and networks: shapes, log-densities against closed forms, eq. 8 scaling; the
VAE constructor with a user's own networks, priors, initialisations and settings."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
import yaml
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_vae.config import build_model, compose_config
from pyro_vae.errors import ArgumentError
from pyro_vae.methods import AEVB
from pyro_vae.model import MODEL_SETTINGS, VAE
from pyro_vae.networks import init_parameters
from pyro_vae.optim import optimizer_factory
from pyro_vae.priors import MixtureOfGaussians, StandardNormal, VampPrior

from .conftest import bars_dataset


def make_vae(likelihood="bernoulli", x_dim=12, latent_dim=3, hidden=(7,), num_data=None):
    torch.manual_seed(0)
    return VAE.mlp(
        x_dim,
        latent_dim,
        list(hidden),
        likelihood,
        prior=StandardNormal(latent_dim),
        num_data=num_data,
    )


def test_shapes_with_vectorised_particles():
    vae = make_vae()
    x = torch.rand(5, 12).bernoulli()
    loc, scale = vae.encoder(x)
    assert loc.shape == scale.shape == (5, 3) and (scale > 0).all()
    z = torch.randn(4, 5, 3)
    d = vae.decode(z)
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
    torch.testing.assert_close(vae.decode(z).log_prob(x), expected)


def test_bernoulli_log_density_is_finite_at_saturated_logits():
    vae = make_vae()
    with torch.no_grad():
        vae.decoder.logits.weight.zero_()
        vae.decoder.logits.bias.fill_(200.0)
    x = torch.zeros(3, 12)
    lp = vae.decode(torch.zeros(3, 3)).log_prob(x)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, torch.full((3,), -200.0 * 12))


def test_gaussian_log_density_matches_closed_form():
    vae = make_vae("gaussian").double()
    z = torch.randn(6, 3, dtype=torch.float64)
    x = torch.rand(6, 12, dtype=torch.float64)
    # The decoder gives the mean's pre-sigmoid and the raw log variance (appendix C.2); the
    # likelihood applies the sigmoid and the soft floor at min_var = 1e-4.
    loc_raw, raw = vae.decoder(z)
    mean = torch.sigmoid(loc_raw)
    log_var = math.log(1e-4) + F.softplus(raw - math.log(1e-4))
    expected = (-0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 / log_var.exp())).sum(-1)
    torch.testing.assert_close(vae.decode(z).log_prob(x), expected)
    torch.testing.assert_close(vae.likelihood.mean((loc_raw, raw)), mean)
    torch.testing.assert_close(vae.decode_mean(z), mean)
    assert ((mean > 0) & (mean < 1)).all()


# The Gaussian's variance floor is tested with the likelihoods (tests/test_likelihoods.py).


def test_encoder_log_density_matches_closed_form():
    vae = make_vae().double()
    x = torch.rand(5, 12, dtype=torch.float64)
    mu, sigma = vae.encoder(x)
    z = mu + sigma * torch.randn_like(mu)
    expected = (-0.5 * math.log(2 * math.pi) - sigma.log() - 0.5 * ((z - mu) / sigma) ** 2).sum(-1)
    torch.testing.assert_close(vae.encode(x).log_prob(z), expected)


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
    with pytest.raises(ArgumentError, match="init='xavier'"):
        init_parameters(vae, "xavier")


def test_build_model_from_config():
    cfg = compose_config(["latent_dim=4", "hidden_dims=[8,6]", "init=torch"])
    vae = build_model(cfg, x_dim=10, num_data=50)
    assert [m.out_features for m in vae.encoder.trunk if hasattr(m, "out_features")] == [8, 6]
    # The decoder mirrors the encoder.
    assert [m.out_features for m in vae.decoder.trunk if hasattr(m, "out_features")] == [6, 8]
    assert vae.encoder.loc.out_features == 4 and vae.num_data == 50


@pytest.mark.parametrize("trainer", ["svi", "aevb"])
def test_two_models_in_one_process_do_not_share_parameters(trainer):
    """Training one model leaves another of the same architecture (same names inside,
    same initial values) untouched: by SVI, whose optimiser finds the parameters by name
    in Pyro's param store, and by the package's AEVB step with a torch optimiser."""
    a, b = make_vae(num_data=10), make_vae(num_data=10)
    b_before = [p.detach().clone() for p in b.parameters()]
    a_before = [p.detach().clone() for p in a.parameters()]
    x = torch.rand(4, 12).bernoulli()
    if trainer == "svi":
        SVI(a.model, a.guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO()).step(x)
    else:
        AEVB(a, optimizer=optimizer_factory("adam", lr=0.1)).step(x, torch.arange(4))
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


# -- VAE(encoder, decoder, prior): a user's own networks --------------------------------------

X_DIM, Z_DIM, HIDDEN = 16, 2, 32


class Encoder(nn.Module):
    """As in Pyro's examples/vae/vae.py: softplus hidden layer, (z_loc, z_scale)."""

    def __init__(self, z_dim=Z_DIM, hidden_dim=HIDDEN, x_dim=X_DIM):
        super().__init__()
        self.x_dim = x_dim
        self.fc1 = nn.Linear(x_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, self.x_dim)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class Decoder(nn.Module):
    """As in Pyro's examples/vae/vae.py, returning the Bernoulli's logits (the example
    returns their sigmoid and builds the Bernoulli from probabilities)."""

    def __init__(self, z_dim=Z_DIM, hidden_dim=HIDDEN, x_dim=X_DIM):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, x_dim)
        self.softplus = nn.Softplus()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return self.fc21(hidden)


def test_a_vae_of_the_users_own_networks_trains_with_pyro_svi(one_thread):
    torch.manual_seed(0)
    data = torch.tensor(bars_dataset())  # 200 bars images, 4 x 4
    vae = VAE(Encoder(), Decoder(), latent_dim=Z_DIM)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())

    def loss_per_point():  # the mean of 5 draws: its noise is under 0.1 nats per point
        return sum(svi.evaluate_loss(data) for _ in range(5)) / (5 * len(data))

    before = loss_per_point()
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        svi.step(data[torch.randint(0, len(data), (20,), generator=g)])
    after = loss_per_point()
    # Untrained, -ELBO is above 16 log 2 = 11.1 nats per point; 100 steps take it to about
    # 9.5 (the bars' structure), 1.5 nats below at least.
    assert before > 11.0
    assert after < before - 1.5


def test_vamp_prior_given_to_a_vae_is_the_mixture_of_its_encoders_posteriors():
    torch.manual_seed(0)
    encoder = Encoder()
    prior = VampPrior(Z_DIM, X_DIM, num_components=5)
    vae = VAE(encoder, Decoder(), prior=prior)
    assert vae.prior is prior and vae.latent_dim == Z_DIM
    p = vae.prior()
    loc, scale = encoder(prior.pseudo_inputs)
    assert loc.shape == (5, Z_DIM)
    torch.testing.assert_close(p.component_distribution.base_dist.loc, loc)
    torch.testing.assert_close(p.component_distribution.base_dist.scale, scale)
    z = torch.randn(7, Z_DIM)
    expected = torch.logsumexp(
        dist.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1), dim=-1
    ) - math.log(5)
    torch.testing.assert_close(p.log_prob(z), expected)
    # Through the encoder itself: log p(z) has a gradient in the encoder's weights.
    grads = torch.autograd.grad(p.log_prob(z).sum(), list(encoder.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # Held by reference: the encoder's weights appear once in the state_dict, as encoder.*.
    keys = list(vae.state_dict())
    assert sum(k.endswith("fc1.weight") for k in keys) == 2  # encoder's and decoder's
    assert "encoder.fc1.weight" in keys and not any(
        k.startswith("prior.") and "fc" in k for k in keys
    )


def test_no_prior_and_a_latent_dim_give_the_standard_normal():
    vae = VAE(Encoder(), Decoder(), prior=None, latent_dim=Z_DIM)
    assert isinstance(vae.prior, StandardNormal) and vae.latent_dim == Z_DIM
    p = vae.prior()
    assert p.event_shape == (Z_DIM,) and p.batch_shape == ()
    z = torch.randn(6, Z_DIM)
    torch.testing.assert_close(p.log_prob(z), (-0.5 * math.log(2 * math.pi) - 0.5 * z**2).sum(-1))


def test_a_pyro_distribution_is_a_prior():
    torch.manual_seed(0)
    laplace = dist.Laplace(torch.zeros(Z_DIM), 2 * torch.ones(Z_DIM)).to_event(1)
    vae = VAE(Encoder(), Decoder(), prior=laplace)
    assert vae.latent_dim == Z_DIM and vae.prior() is laplace
    x = torch.tensor(bars_dataset(n=8))
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    z = model_tr.nodes["z"]["value"]
    expected = (-math.log(2 * 2.0) - z.abs() / 2.0).sum(-1)  # Laplace(0, 2) per coordinate
    torch.testing.assert_close(model_tr.nodes["z"]["fn"].log_prob(z), expected)
    loss = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(x)
    assert math.isfinite(loss)


def test_paper_initialisation_is_applied_to_both_networks():
    torch.manual_seed(0)
    encoder, decoder = Encoder(hidden_dim=400), Decoder(hidden_dim=400)
    VAE(encoder, decoder, latent_dim=Z_DIM, init="paper", init_std=0.01)
    for net in (encoder, decoder):
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
        # n > 7000 values each: the sample std is within 5% of 0.01 with overwhelming
        # probability (torch's own initialisation of these layers has std above 0.04).
        assert flat.numel() > 7000
        assert flat.std().item() == pytest.approx(0.01, rel=0.05)
        assert abs(flat.mean().item()) < 5 * 0.01 / math.sqrt(flat.numel())


def test_an_init_function_is_called_on_each_network_and_none_keeps_their_weights():
    encoder, decoder = Encoder(), Decoder()
    called = []

    def init(net):
        called.append(net)
        for p in net.parameters():
            torch.nn.init.constant_(p, 0.25)

    VAE(encoder, decoder, latent_dim=Z_DIM, init=init)
    assert len(called) == 2 and called[0] is encoder and called[1] is decoder
    assert all((p == 0.25).all() for p in [*encoder.parameters(), *decoder.parameters()])
    encoder, decoder = Encoder(), Decoder()
    before = [p.detach().clone() for p in [*encoder.parameters(), *decoder.parameters()]]
    VAE(encoder, decoder, latent_dim=Z_DIM)  # init=None: the networks as given
    after = [*encoder.parameters(), *decoder.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(after, before, strict=True))


@pytest.mark.parametrize(
    "likelihood, prior",
    [
        ("bernoulli", None),
        (
            {"name": "gaussian", "min_var": 1e-3},
            {"name": "laplace", "_target_": "pyro.distributions.Laplace", "loc": 0.0, "scale": 2.0},
        ),
        (
            "bernoulli",
            {"name": "vamp", "_target_": "pyro_vae.priors.VampPrior", "num_components": 4},
        ),
        ("bernoulli", MixtureOfGaussians(3, num_components=4)),
    ],
)
def test_mlp_settings_rebuild_the_same_model(likelihood, prior):
    vae = VAE.mlp(
        10,
        3,
        [7, 5],
        likelihood,
        prior=prior,
        activation="relu",
        init="paper",
        init_std=0.02,
        num_data=40,
    )
    again = VAE.from_settings(vae.settings, 10, num_data=40)
    assert again.settings == vae.settings
    name = likelihood if isinstance(likelihood, str) else likelihood["name"]
    assert again.num_data == 40 and again.likelihood.name == name
    assert again.likelihood.spec() == vae.likelihood.spec() == vae.settings["likelihood"]
    if name == "gaussian":
        assert again.likelihood.spec()["min_var"] == 1e-3
    assert type(again.prior) is type(vae.prior)
    shapes = {k: v.shape for k, v in vae.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes
    again.load_state_dict(vae.state_dict())  # a checkpoint of one loads into the other
    # A run directory records the settings as YAML: plain values only.
    assert yaml.safe_load(yaml.safe_dump(vae.settings)) == vae.settings


def test_settings_of_earlier_versions_rebuild_the_model():
    """Run directories written before likelihoods were a config group record the likelihood
    by name, the Gaussian's variance floor as ``decoder_min_var`` and no ``network``."""
    old = {
        "latent_dim": 3,
        "hidden_dims": [7],
        "likelihood": "gaussian",
        "activation": "tanh",
        "decoder_min_var": 1e-3,
        "init": "torch",
        "init_std": 0.01,
        "prior": {"name": "standard_normal", "_target_": "pyro_vae.priors.StandardNormal"},
    }
    vae = VAE.from_settings(old, 10)
    assert vae.likelihood.name == "gaussian" and vae.likelihood.spec()["min_var"] == 1e-3
    assert "decoder_min_var" not in vae.settings and vae.settings["network"] == {"name": "mlp"}
    assert set(vae.settings) == set(MODEL_SETTINGS)
    assert [k for k in vae.decoder.state_dict() if not k.startswith("trunk")] == [
        "loc.weight",
        "loc.bias",
        "log_var.weight",
        "log_var.bias",
    ]


@pytest.mark.parametrize(
    "kwargs, key, message",
    [
        ({"encoder": "x"}, "encoder", "encoder='x' is not allowed"),
        ({"decoder": "x"}, "decoder", "decoder='x' is not allowed"),
        ({"likelihood": "binomial"}, "likelihood", "likelihood='binomial' is not allowed"),
        ({"prior": "normal"}, "prior", "prior='normal' is not allowed"),
        ({"latent_dim": None}, None, r"prior.*latent_dim"),  # neither a prior nor latent_dim
    ],
)
def test_bad_vae_arguments_are_refused_naming_the_argument(kwargs, key, message):
    args = {"encoder": Encoder(), "decoder": Decoder(), "latent_dim": Z_DIM, **kwargs}
    with pytest.raises(ArgumentError, match=message) as refused:
        VAE(**args)
    assert refused.value.key == key
