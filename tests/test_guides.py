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

from pyro_vae import VAE, DiagonalGaussian, GuideFamily, build_guide, load_run
from pyro_vae.config import (
    compose_config,
    config_choices,
    guide_spec,
    resumed_config,
    run_training,
    validate_config,
)
from pyro_vae.errors import ArgumentError, ConfigError
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
        ("flow", "name", "name='flow' is not allowed: expected one of ['diagonal'"),
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
