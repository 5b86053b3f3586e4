"""Guide families (pyro_vae.guides): the default reproduces the paper's diagonal Gaussian,
families are chosen like priors (Python and configuration), and runs recorded before there
was a choice load and resume as the diagonal Gaussian."""

from __future__ import annotations

import re

import pyro
import pyro.distributions as dist
import pytest
import torch
import yaml

import pyro_vae
from pyro_vae import (
    AEVB,
    VAE,
    DiagonalGaussian,
    GuideFamily,
    build_estimator,
    build_guide,
    load_run,
)
from pyro_vae.config import (
    compose_config,
    config_choices,
    guide_spec,
    resumed_config,
    run_training,
    validate_config,
)
from pyro_vae.errors import ArgumentError, ConfigError, EstimatorError
from pyro_vae.model import MODEL_SETTINGS

from .conftest import tiny_overrides


def test_the_default_family_is_the_papers_diagonal_gaussian():
    pyro.set_rng_seed(0)
    vae = VAE.mlp(12, latent_dim=3, hidden_dims=[8])
    assert isinstance(vae.guide_family, DiagonalGaussian) and vae.guide_family.name == "diagonal"
    assert vae.guide_family.reparameterized and vae.guide_family.closed_form_kl
    assert not list(vae.guide_family.parameters())  # nothing added to the state dict
    assert not any(k.startswith("guide_family") for k in vae.state_dict())
    x = torch.rand(5, 12)
    q = vae.encode(x)
    loc, scale = vae.encoder(x)
    assert isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal)
    assert torch.equal(q.base_dist.loc, loc) and torch.equal(q.base_dist.scale, scale)
    assert q.event_shape == (3,) and q.batch_shape == (5,)
    assert vae.settings["guide"] == {
        "name": "diagonal",
        "_target_": "pyro_vae.guides.DiagonalGaussian",
    }
    assert set(vae.settings) == set(MODEL_SETTINGS)
    # VAE(...) with networks of one's own takes the same default
    own = VAE(vae.encoder, vae.decoder, latent_dim=3)
    assert isinstance(own.guide_family, DiagonalGaussian)


def test_a_family_is_passed_by_object_name_or_specification():
    for guide in (
        DiagonalGaussian(3),
        "diagonal",
        {"name": "diagonal"},
        {"_target_": "pyro_vae.guides.DiagonalGaussian", "name": "mine"},
    ):
        vae = VAE.mlp(12, latent_dim=3, hidden_dims=[8], guide=guide)
        assert isinstance(vae.guide_family, DiagonalGaussian)
        rebuilt = VAE.from_settings(vae.settings, 12)
        assert rebuilt.settings["guide"] == vae.settings["guide"]


def test_settings_recorded_before_guide_families_rebuild_the_diagonal_gaussian():
    settings = VAE.mlp(12, latent_dim=3, hidden_dims=[8]).settings
    old = {k: v for k, v in settings.items() if k != "guide"}
    vae = VAE.from_settings(old, 12)
    assert isinstance(vae.guide_family, DiagonalGaussian)
    assert vae.settings["guide"]["name"] == "diagonal"


@pytest.mark.parametrize(
    ("guide", "key", "message"),
    [
        ("flow", "name", "name='flow' is not allowed: expected one of ['bernoulli', "),
        (
            {"_target_": "pyro_vae.priors.StandardNormal"},
            "_target_",
            "expected the import path of a pyro_vae.guides.GuideFamily subclass",
        ),
        ({"_target_": "no.such.Family"}, "_target_", "_target_='no.such.Family' is not allowed"),
        ({"name": "diagonal", "width": 3}, "width", "width is not a parameter of"),
        (3, "guide", "guide=3 is not allowed"),
    ],
)
def test_bad_guides_are_refused_naming_the_key(guide, key, message):
    with pytest.raises(ArgumentError, match=re.escape(message)) as refused:
        VAE.mlp(12, latent_dim=3, hidden_dims=[8], guide=guide)
    assert refused.value.key == key


def test_a_family_over_another_width_is_refused():
    with pytest.raises(ArgumentError, match=r"guide=.*R\^4.*R\^3"):
        VAE.mlp(12, latent_dim=3, hidden_dims=[8], guide=DiagonalGaussian(4))


class Tempered(GuideFamily):
    """A user's family: the encoder's Gaussian with its scale multiplied by ``factor``."""

    def __init__(self, latent_dim: int, factor: float = 1.0):
        super().__init__(latent_dim)
        self.factor = factor

    def forward(self, encoder_output, x):
        loc, scale = encoder_output
        return dist.Normal(loc, self.factor * scale).to_event(1)


def test_a_users_family_by_target_records_its_parameters():
    spec = {"_target_": f"{__name__}.Tempered", "factor": 2.0}
    family = build_guide(spec, 3)
    assert family.spec() == {"name": "Tempered", "_target_": f"{__name__}.Tempered", **spec}
    vae = VAE.mlp(12, latent_dim=3, hidden_dims=[8], guide=spec)
    _, scale = vae.encoder(torch.zeros(1, 12))
    assert torch.allclose(vae.encode(torch.zeros(1, 12)).base_dist.scale, 2 * scale)
    assert VAE.from_settings(vae.settings, 12).guide_family.factor == 2.0


def test_the_configuration_chooses_the_guide_and_refuses_a_bad_one():
    assert "diagonal" in config_choices("guide")
    cfg = validate_config(compose_config([]))
    assert guide_spec(cfg["guide"]) == {
        "name": "diagonal",
        "_target_": "pyro_vae.guides.DiagonalGaussian",
    }
    with pytest.raises(ConfigError, match=r"guide._target_='pyro_vae.priors.StandardNormal'"):
        validate_config(compose_config(["guide._target_=pyro_vae.priors.StandardNormal"]))
    with pytest.raises(ConfigError, match=r"guide.width is not a parameter"):
        validate_config(compose_config(["+guide.width=3"]))


def test_a_run_written_before_guide_families_loads_and_resumes(bars_path, tmp_path):
    """A config.yaml without the guide group (as every run before it) is the diagonal
    Gaussian: load_run rebuilds it and resume=true continues the run."""
    run = tmp_path / "run"
    run_training(compose_config(tiny_overrides(bars_path, run, "epochs=1")))
    config = run / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    del saved["guide"]
    config.write_text(yaml.safe_dump(saved))
    assert isinstance(load_run(run).vae.guide_family, DiagonalGaussian)
    overrides = tiny_overrides(bars_path, run, "epochs=2", "resume=true")
    assert resumed_config(saved, compose_config(overrides), overrides)["guide"]["name"] == (
        "diagonal"
    )
    summary = run_training(compose_config(overrides), overrides=overrides)
    assert summary["epochs"] == 2


# The richer families ------------------------------------------------------------------

FAMILIES = ["full_covariance", "iaf", "planar"]


def small(guide, num_data=8, **kwargs):
    pyro.set_rng_seed(0)
    return VAE.mlp(12, latent_dim=3, hidden_dims=[8], guide=guide, num_data=num_data, **kwargs)


def binary(n=8, d=12, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


@pytest.mark.parametrize("guide", [*FAMILIES, {"name": "iaf", "context": "x"}])
def test_each_family_draws_and_scores_its_own_draws_and_any_other_point(guide):
    """log q at the flow's own draw (kept from the draw) equals log q at the same point
    given afresh (the transforms inverted: Pyro's inverse for IAF, the numerical one for a
    planar step), to float32 rounding."""
    vae = small(guide)
    x = binary()
    q = vae.encode(x)
    assert q.event_shape == (3,) and q.batch_shape == (8,) and q.has_rsample
    z = q.rsample((5,))
    assert z.shape == (5, 8, 3)
    torch.testing.assert_close(q.log_prob(z), q.log_prob(z.detach().clone()), atol=1e-4, rtol=0)
    # every z against every x (the aggregate posterior's terms): broadcasting
    assert q.log_prob(z[0].unsqueeze(1)).shape == (8, 8)
    rebuilt = VAE.from_settings(vae.settings, 12, num_data=8)
    rebuilt.load_state_dict(vae.state_dict())
    torch.testing.assert_close(rebuilt.encode(x).log_prob(z[0]), q.log_prob(z[0].clone()))


def test_full_covariance_starts_as_the_diagonal_gaussian():
    x = binary()
    full, diagonal = small("full_covariance"), small("diagonal")
    full.encoder.load_state_dict(diagonal.encoder.state_dict())
    z = torch.randn(4, 8, 3)
    torch.testing.assert_close(full.encode(x).log_prob(z), diagonal.encode(x).log_prob(z))


@pytest.mark.parametrize("guide", FAMILIES)
@pytest.mark.parametrize("estimator", ["trace_elbo", "sgvb_a", "stl", "dreg", "iwae", "meanfield"])
def test_the_monte_carlo_estimators_train_every_family(guide, estimator):
    vae = small(guide)
    x = binary()
    elbo = build_estimator(estimator, num_particles=3 if estimator in ("dreg", "iwae") else 1)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x, torch.arange(8))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in vae.guide_family.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("guide", ["iaf", "planar"])
def test_stl_on_a_flow_is_the_path_derivative(guide):
    """STL's encoder gradient on a flow equals the path derivative computed another way: the
    same draw z(phi) scored by a frozen copy of q (its parameters detached), so only the
    dependence through z is left (Roeder et al. 2017, eq. 8)."""
    vae = small(guide)
    x = binary()
    phi = vae.recognition_parameters()
    pyro.set_rng_seed(3)
    loss = build_estimator("stl").differentiable_loss(vae.model, vae.guide, x, torch.arange(8))
    stl = torch.autograd.grad(loss, phi)
    frozen = VAE.from_settings(vae.settings, 12, num_data=8)
    frozen.load_state_dict(vae.state_dict())
    frozen.requires_grad_(False)
    pyro.set_rng_seed(3)
    z = vae.encode(x).rsample((1,))  # the draw the trace made: one particle, [1, M, Nz]
    log_p = vae.decode(z).log_prob(x) + vae.prior().log_prob(z)
    reference = -(log_p - frozen.encode(x).log_prob(z)).sum()
    torch.testing.assert_close(loss, reference, atol=1e-3, rtol=1e-5)
    expected = torch.autograd.grad(reference, phi, allow_unused=True)
    for got, want in zip(stl, expected, strict=True):
        want = torch.zeros_like(got) if want is None else want
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("guide", ["iaf", "planar"])
def test_a_flow_on_the_first_of_two_layers(guide):
    """The family is q(z_1|x); the upper layers stay the Gaussian ones. STL and DReG rerun
    the guide at the drawn values (several latent sites), where a flow inverts itself."""
    vae = small(guide, upper_layers=[{"latent_dim": 2, "hidden_dims": [4]}])
    x = binary()
    for name in ("stl", "dreg", "score_function"):
        elbo = build_estimator(name, num_particles=2)
        assert torch.isfinite(elbo.differentiable_loss(vae.model, vae.guide, x, torch.arange(8)))
    assert [m.shape for m in vae.posterior_means(x)] == [(8, 3), (8, 2)]


def test_estimator_b_and_the_fast_path_refuse_a_family_without_eq_10s_kl(tmp_path):
    x = binary(40)
    for guide in FAMILIES:
        with pytest.raises(EstimatorError, match=f"guide={guide} has no such closed form"):
            vae = small(guide, num_data=None)
            pyro_vae.train(vae, x, tmp_path / guide, estimator="sgvb_b", batch_size=20)
        assert not (tmp_path / guide).exists()
    with pytest.raises(EstimatorError, match="guide=iaf has no such closed form"):
        AEVB(small("iaf"), "sgvb_b", fast=True)
    AEVB(small("iaf"), "sgvb_a", fast=True)  # estimator A's fast path takes any family
    AEVB(small("diagonal"), "sgvb_b", fast=True)
    with pytest.raises(ConfigError, match="guide=planar has no such closed form"):
        validate_config(compose_config(["guide=planar", "estimator=sgvb_b"]))
    validate_config(compose_config(["guide=planar", "estimator=stl"]))


def test_bad_family_settings_are_refused_naming_the_key():
    for guide, message in [
        ({"name": "iaf", "num_flows": 0}, "num_flows=0 is not allowed: expected an integer >= 1"),
        ({"name": "planar", "hidden_dims": []}, "hidden_dims=[] is not allowed"),
        ({"name": "full_covariance", "context": "h"}, "context='h' is not allowed"),
    ]:
        with pytest.raises(ArgumentError, match=re.escape(message)):
            small(guide)
    with pytest.raises(ArgumentError, match="guide=iaf: the VampPrior's components"):
        small("iaf", prior={"_target_": "pyro_vae.priors.VampPrior", "num_components": 2})
    with pytest.raises(ConfigError, match=re.escape("guide.num_flows=0 is not allowed")):
        validate_config(compose_config(["guide=iaf", "guide.num_flows=0"]))


def test_a_flow_guide_trains_evaluates_and_reloads_through_the_api(tmp_path):
    x = binary(60)
    vae = small("planar", num_data=None)
    summary = pyro_vae.train(vae, x, tmp_path / "run", epochs=2, batch_size=20, progress=False)
    assert summary["status"] == "finished"
    loaded = load_run(tmp_path / "run").vae
    assert loaded.settings["guide"]["name"] == "planar"
    pyro.set_rng_seed(1)
    a = loaded.log_weights(x[:5], 3)
    pyro.set_rng_seed(1)
    torch.testing.assert_close(a, vae.eval().log_weights(x[:5], 3))
    result = pyro_vae.evaluate(loaded, x, num_samples=5, progress=False)
    assert 0 <= result["active_units"] <= 3
    with pytest.raises(ArgumentError, match="guide=planar adds parts of its own"):
        pyro_vae.export_model(tmp_path / "run", tmp_path / "out")
