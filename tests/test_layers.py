"""Stochastic layers above the first (pyro_vae/layers.py): Burda et al.'s two-layer VAE
from Python and from the configuration, its densities, training, resume, evaluation,
figures and the lab; and what it refuses."""

import json
import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import VAE, evaluate
from pyro_vae.config import ConfigError, compose_config, run_training, validate_config
from pyro_vae.errors import ArgumentError, EstimatorError
from pyro_vae.estimators import build_estimator
from pyro_vae.evaluate import _fused_bernoulli, active_units_per_layer
from pyro_vae.fast import direct_bound
from pyro_vae.layers import layer_specs
from pyro_vae.methods import build_method
from pyro_vae.plots import plot_figures
from pyro_vae.runs import load_run
from pyro_vae.variance import estimator_variance

pytestmark = pytest.mark.usefixtures("one_thread")

UPPER = [{"latent_dim": 3, "hidden_dims": [8]}]


def two_layer(**kw):
    pyro.set_rng_seed(0)
    return VAE.mlp(16, latent_dim=4, hidden_dims=[12], upper_layers=UPPER, num_data=40, **kw)


def data(m=6):
    return torch.rand(m, 16, generator=torch.Generator().manual_seed(0)).bernoulli()


def test_burda_two_layer_architecture_from_python():
    pyro.set_rng_seed(0)
    vae = VAE.mlp(
        784,
        latent_dim=100,
        hidden_dims=[200, 200],
        upper_layers=[{"latent_dim": 50, "hidden_dims": [100, 100]}],
    )
    assert vae.latent_sites == ("z1", "z2")
    assert (vae.latent_dim, vae.prior.latent_dim) == (100, 50)
    widths = [m.out_features for m in vae.stack.up[0].modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [100, 100, 50, 50]  # q(z2|z1): 100-100-100-(loc, log var) of 50
    widths = [m.out_features for m in vae.stack.down[0].modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [100, 100, 100, 100]  # p(z1|z2): 50-100-100-(loc, log var) of 100
    assert vae.settings["upper_layers"] == [{"latent_dim": 50, "hidden_dims": [100, 100]}]


def test_one_layer_keeps_its_site_parameters_and_numbers():
    pyro.set_rng_seed(0)
    plain = VAE.mlp(16, latent_dim=4, hidden_dims=[12])
    pyro.set_rng_seed(0)
    empty = VAE.mlp(16, latent_dim=4, hidden_dims=[12], upper_layers=[])
    assert plain.latent_sites == ("z",) and empty.stack is None
    assert list(plain.state_dict()) == list(empty.state_dict())
    x = data()
    torch.manual_seed(1)
    a = plain.log_weights(x, 3)
    torch.manual_seed(1)
    assert torch.equal(a, empty.log_weights(x, 3))


def test_log_weights_are_the_model_and_guide_densities():
    vae, x = two_layer(), data()
    torch.manual_seed(3)
    direct = vae.log_weights(x, 1)[0]
    torch.manual_seed(3)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    traced = torch.zeros(x.shape[0])
    for trace, sign in ((model, 1), (guide, -1)):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and name != "data":
                traced = traced + sign * site["fn"].log_prob(site["value"])
    assert set(guide.nodes) >= {"z1", "z2"} and set(model.nodes) >= {"z1", "z2", "x"}
    torch.testing.assert_close(direct, traced)


def test_fast_estimator_a_is_the_traced_one_and_fused_evaluation_agrees():
    vae, x = two_layer(), data()
    idx = torch.arange(x.shape[0])
    params = list(vae.parameters())
    pyro.set_rng_seed(0)
    traced = build_estimator("sgvb_a", 2).differentiable_loss(vae.model, vae.guide, x, idx)
    g1 = torch.autograd.grad(traced, params)
    pyro.set_rng_seed(0)
    fast = -direct_bound(vae, x, "sgvb_a", 2)
    g2 = torch.autograd.grad(fast, params)
    torch.testing.assert_close(traced, fast)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)
    fused = _fused_bernoulli(vae)
    torch.manual_seed(5)
    want = vae.log_weights(x, 7)
    torch.manual_seed(5)
    torch.testing.assert_close(fused(x, 7), want, rtol=1e-5, atol=1e-4)


def test_evaluate_counts_active_units_per_layer_and_leaves_the_stream_alone():
    vae, x = two_layer(), data(30)
    result = evaluate(vae, x, num_samples=20)
    per_layer = result["active_units_per_layer"]
    assert len(per_layer) == 2 and result["active_units"] == sum(per_layer)
    assert result["latent_dims"] == [4, 3]
    assert 0 <= per_layer[0] <= 4 and 0 <= per_layer[1] <= 3
    torch.manual_seed(0)
    before = torch.rand(())
    torch.manual_seed(0)
    assert active_units_per_layer(vae, x) == per_layer
    assert torch.rand(()) == before


def test_figures_of_a_two_layer_vae(tmp_path):
    vae = two_layer()
    paths = plot_figures(vae, None, tmp_path, image_shape=(4, 4))
    assert {p.name for p in paths} == {"manifold.png", "samples.png"}


@pytest.mark.parametrize(
    "prior", [{"name": "laplace"}, {"name": "mixture_of_gaussians", "num_components": 3}]
)
def test_priors_go_on_the_top_layer(prior):
    from pyro_vae.config import prior_spec

    vae = two_layer(prior=prior_spec(prior))
    assert vae.prior.latent_dim == 3
    assert torch.isfinite(vae.log_weights(data(), 2)).all()


@pytest.mark.parametrize(
    "layers, key",
    [
        ({"latent_dim": 3}, "upper_layers"),
        ([{"latent_dim": 0}], r"upper_layers\[0\]\.latent_dim"),
        ([{"latent_dim": "3"}], r"upper_layers\[0\]\.latent_dim"),
        ([{"latent_dim": 3, "hidden_dims": [0]}], r"upper_layers\[0\]\.hidden_dims"),
        ([{"latent_dim": 3, "hidden_dims": "8"}], r"upper_layers\[0\]\.hidden_dims"),
        ([{"latent_dim": 3, "width": 8}], r"upper_layers\[0\]\.width"),
        ([{"hidden_dims": [8]}], r"upper_layers\[0\] needs a latent_dim"),
        ([3], r"upper_layers\[0\]"),
    ],
)
def test_bad_layers_are_refused_naming_the_entry(layers, key):
    with pytest.raises(ArgumentError, match=key):
        layer_specs(layers)
    with pytest.raises(ArgumentError, match=key):
        VAE.mlp(16, latent_dim=4, upper_layers=layers)


def test_what_needs_one_layer_refuses_a_stack_by_name():
    vae, x = two_layer(), data()
    with pytest.raises(EstimatorError, match=r"sgvb_b.*model's order"):
        build_estimator("sgvb_b").loss(vae.model, vae.guide, x)
    with pytest.raises(ArgumentError, match=r"fast=true with estimator=sgvb_b.*upper_layers"):
        build_method("aevb", vae, estimator="sgvb_b", fast=True)
    with pytest.raises(ArgumentError, match=r"method=mcem.*upper_layers"):
        build_method("mcem", vae)
    from pyro_vae.config import prior_spec

    with pytest.raises(ArgumentError, match=r"prior=vamp is not allowed with upper_layers"):
        two_layer(prior=prior_spec({"name": "vamp", "num_components": 3}))


def test_the_lab_counts_the_upper_recognition_layer_as_phi():
    vae, x = two_layer(), data()
    rows = estimator_variance(vae, x, estimators=["sgvb_a"], repeats=3, groups="layer")
    groups = {r["group"] for r in rows}
    assert "phi:up.0.trunk.0" in groups and "theta:down.0.trunk.0" in groups
    rows = estimator_variance(vae, x, estimators=["stl"], repeats=3, groups="site")
    assert {r["group"] for r in rows} == {"q:z1", "q:z2", "p:z1", "p:x"}


# -- from the configuration -----------------------------------------------------------------


def test_the_presets_compose():
    cfg = validate_config(compose_config(["+experiment=iwae_2layer_cpu"]))
    assert cfg["upper_layers"] == [{"latent_dim": 50, "hidden_dims": [100, 100]}]
    assert (cfg["latent_dim"], cfg["hidden_dims"], cfg["batch_size"]) == (100, [200, 200], 100)
    paper = validate_config(compose_config(["+experiment=iwae_2layer"]))
    assert paper["batch_size"] == 20 and paper["lr_schedule"] == "iwae"


@pytest.mark.parametrize(
    "override, key",
    [
        ("upper_layers=[{latent_dim:0}]", "upper_layers"),
        ("upper_layers=[{latent_dim:3,depth:2}]", "upper_layers"),
        ("upper_layers=[{latent_dim:3}] prior=vamp", "prior"),
    ],
)
def test_bad_layers_from_the_command_line_are_refused(override, key):
    with pytest.raises(ConfigError, match=key):
        validate_config(compose_config(override.split()))


def test_a_two_layer_run_trains_resumes_bit_for_bit_and_loads(tiny_cfg, tmp_path):
    layers = "upper_layers=[{latent_dim:2,hidden_dims:[8]}]"
    straight = run_training(tiny_cfg(layers, "epochs=2", run_dir=tmp_path / "a"))
    run_training(tiny_cfg(layers, "epochs=1", run_dir=tmp_path / "b"))
    resumed = run_training(tiny_cfg(layers, "epochs=2", "resume=true", run_dir=tmp_path / "b"))
    assert straight["test_elbo"] == resumed["test_elbo"]
    assert math.isfinite(straight["test_elbo"])
    loaded = load_run(tmp_path / "a")
    assert loaded.vae.latent_sites == ("z1", "z2")
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "finished"
