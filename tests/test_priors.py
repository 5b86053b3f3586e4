"""Priors: log-densities against scipy and numerical integration, quantiles, learnable
parameters (gradients, checkpoints, resume), refusals, a user's own prior, and every
shipped prior trained, evaluated and plotted from the command line."""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from pyro_vae.cli import main
from pyro_vae.config import (
    ConfigError,
    build_model,
    build_training_method,
    compose_config,
    config_choices,
    prior_spec,
    run_training,
    validate_config,
)
from pyro_vae.config.validate import build_prior_for_validation
from pyro_vae.errors import ArgumentError
from pyro_vae.priors import build_prior, prior_quantiles
from pyro_vae.runs import load_run, plot_run
from pyro_vae.training import RunDir

from .conftest import tiny_overrides

LEARNABLE = {
    "learnable_normal": [],
    "mixture_of_gaussians": ["prior.num_components=3"],
    "vamp": ["prior.num_components=4"],
}


def make_vae(prior, *overrides, latent_dim=2, x_dim=6):
    cfg = compose_config(
        [f"prior={prior}", f"latent_dim={latent_dim}", "hidden_dims=[5]", *overrides]
    )
    validate_config(cfg)
    torch.manual_seed(0)
    return build_model(cfg, x_dim=x_dim, num_data=100)


def grid_points(lim=3.0, n=7):
    a = torch.linspace(-lim, lim, n)
    return torch.cartesian_prod(a, a)  # [n*n, 2]


@pytest.mark.parametrize(
    ("prior", "overrides", "reference"),
    [
        ("standard_normal", [], stats.norm(0.0, 1.0)),
        ("normal", ["prior.loc=[0.5,-1]", "prior.scale=[2,0.5]"], stats.norm([0.5, -1], [2, 0.5])),
        ("learnable_normal", ["prior.loc=0.3", "prior.scale=1.5"], stats.norm(0.3, 1.5)),
        (
            "laplace",
            ["prior.loc=[0.5,-1]", "prior.scale=[2,0.5]"],
            stats.laplace([0.5, -1], [2, 0.5]),
        ),
        ("student_t", ["prior.df=2.5", "prior.scale=0.7"], stats.t(2.5, 0.0, 0.7)),
        ("logistic", ["prior.loc=1", "prior.scale=[1,0.3]"], stats.logistic(1.0, [1, 0.3])),
        # Any pyro (or torch) family by import path, independent over the dimensions.
        ("normal", ["prior._target_=pyro.distributions.Cauchy"], stats.cauchy(0.0, 1.0)),
        ("normal", ["prior._target_=torch.distributions.Gumbel"], stats.gumbel_r(0.0, 1.0)),
    ],
)
def test_factorized_log_density_matches_scipy(prior, overrides, reference):
    vae = make_vae(prior, *overrides)
    z = grid_points()
    p = vae.prior()
    assert p.event_shape == (2,) and p.batch_shape == ()
    expected = reference.logpdf(z.numpy()).sum(-1)
    np.testing.assert_allclose(p.log_prob(z).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_only_gaussian_priors_look_gaussian():
    """Estimator B's closed-form KL recognises Normal(loc, scale).to_event(1), and only it."""
    for name in config_choices("prior"):
        prior = make_vae(name, *LEARNABLE.get(name, [])).prior
        assert prior.name == name  # the config's label, for messages naming the prior
        p = prior()
        gaussian = isinstance(p, dist.Independent) and type(p.base_dist) is dist.Normal
        assert gaussian == (name in ("standard_normal", "normal", "learnable_normal")), name


def mixture_reference(z, weights, locs, scales):
    """log sum_k w_k prod_d N(z_d; mu_kd, s_kd), directly with scipy."""
    comp = stats.norm(locs[None], scales[None]).logpdf(z[:, None, :]).sum(-1)  # [n, K]
    return logsumexp(comp + np.log(weights / weights.sum()), axis=-1)


def test_mixture_of_gaussians_log_density_matches_scipy():
    locs = [[0, 1], [2, -1], [-1, -2]]
    vae = make_vae(
        "mixture_of_gaussians",
        "prior.num_components=3",
        f"prior.locs={locs}",
        "prior.scale=[[0.5,1],[1,1],[2,0.3]]",
        "prior.weights=[1,2,3]",
    )
    z = grid_points(5.0)
    p = vae.prior()
    expected = mixture_reference(
        z.numpy(), np.array([1, 2, 3.0]), np.array(locs), np.array([[0.5, 1], [1, 1], [2, 0.3]])
    )
    np.testing.assert_allclose(p.log_prob(z).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    # Inside a pyro.plate the mixture is expanded and takes torch's direct formula: the same.
    expanded = p.expand([z.shape[0]]).log_prob(z)
    np.testing.assert_allclose(expanded.detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_vamp_prior_is_the_mixture_of_the_encoders_posteriors():
    vae = make_vae("vamp", "prior.num_components=4")
    u = vae.prior.pseudo_inputs.detach()
    assert u.shape == (4, 6) and ((u > 0) & (u < 1)).all()
    loc, scale = (t.detach().numpy() for t in vae.encoder(u))
    z = grid_points()
    expected = mixture_reference(z.numpy(), np.ones(4), loc, scale)
    log_p = vae.prior().log_prob(z).detach().numpy()
    np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-5)
    # The encoder is the VAE's own, not a copy: no duplicate parameters in checkpoints.
    assert vae.prior._encoder is vae.encoder
    assert [k for k in vae.state_dict() if k.startswith("prior.")] == [
        "prior.pseudo_inputs_unconstrained"
    ]
    double = vae.double()
    assert double.prior().log_prob(z.double()).dtype == torch.float64


@pytest.mark.parametrize(
    ("prior", "overrides"),
    [
        ("mixture_of_gaussians", ["prior.num_components=3", "prior.scale=0.6"]),
        ("vamp", ["prior.num_components=4", "prior.pseudo_inputs_std=0.3"]),
    ],
)
def test_mixture_densities_integrate_to_one(prior, overrides):
    """Trapezoid rule over [-10, 10]^2 with step 0.04: the rule's error for these smooth
    densities (component scales >= 0.5, means within 3 of 0) is below 1e-6, and the mass
    outside the square below 1e-12, so 1e-4 leaves room only for float32 rounding."""
    vae = make_vae(prior, *overrides)
    a = torch.linspace(-10, 10, 501, dtype=torch.float64)
    z = torch.cartesian_prod(a, a)
    density = vae.double().prior().log_prob(z).exp().reshape(501, 501).detach().numpy()
    mass = np.trapezoid(np.trapezoid(density, a.numpy(), axis=1), a.numpy())
    assert mass == pytest.approx(1.0, abs=1e-4)


def test_quantiles_exact_numerically_inverted_and_empirical():
    u = torch.tensor([0.1, 0.5, 0.9])
    laplace = make_vae("laplace", "prior.scale=[1,2]").prior()
    q, note = prior_quantiles(laplace, u)
    assert note == "prior quantiles"
    np.testing.assert_allclose(q.numpy(), stats.laplace(0, [1, 2]).ppf(u[:, None]), rtol=1e-5)

    locs, scale, weights = np.array([[-2.0, 0.0], [1.0, 3.0]]), 0.5, np.array([0.25, 0.75])
    mog = make_vae(
        "mixture_of_gaussians",
        "prior.num_components=2",
        "prior.locs=[[-2,0],[1,3]]",
        f"prior.scale={scale}",
        "prior.weights=[1,3]",
    ).prior()
    q, note = prior_quantiles(mog, u)
    assert note == "prior quantiles, CDF inverted numerically"
    cdf = (weights[:, None, None] * stats.norm(locs[:, None], scale).cdf(q.numpy())).sum(0)
    np.testing.assert_allclose(cdf, u[:, None].expand(3, 2).numpy(), atol=1e-5)

    student = make_vae("student_t", "prior.df=3").prior()
    q, note = prior_quantiles(student, u)
    assert note == "empirical quantiles of 2^16 prior samples"
    # A sample quantile's standard error is sqrt(u(1-u)/n) / f(q); allow 4 of them.
    ref = stats.t(3)
    levels = u.numpy()
    se = np.sqrt(levels * (1 - levels) / 2**16) / ref.pdf(ref.ppf(levels))
    assert (np.abs(q.numpy() - ref.ppf(u.numpy())[:, None]) < 4 * se[:, None]).all()


@pytest.mark.parametrize("prior", sorted(LEARNABLE))
def test_learnable_prior_parameters_are_trained_by_svi(prior):
    cfg = compose_config(
        [f"prior={prior}", "latent_dim=2", "hidden_dims=[5]", "lr=0.01", *LEARNABLE[prior]]
    )
    torch.manual_seed(0)
    vae = build_model(cfg, x_dim=6, num_data=100)
    params = dict(vae.prior.named_parameters())
    assert params
    before = {k: v.detach().clone() for k, v in params.items()}
    method = build_training_method(cfg, vae)
    method.step(torch.rand(8, 6).bernoulli(), torch.arange(8))
    # Adam moves every parameter whose gradient is not exactly zero by about lr.
    for k, v in params.items():
        assert torch.isfinite(v).all()
        assert (v.detach() != before[k]).all(), k


def test_fixed_priors_have_no_parameters_and_keep_their_values():
    cfg = compose_config(
        [
            "prior=mixture_of_gaussians",
            "prior.learn_weights=false",
            "prior.learn_locs=false",
            "prior.learn_scales=false",
            "latent_dim=2",
            "hidden_dims=[5]",
        ]
    )
    vae = build_model(cfg, x_dim=6, num_data=100)
    assert not list(vae.prior.parameters())
    assert sorted(dict(vae.prior.named_buffers())) == ["locs", "logits", "scales"]
    for name in ("laplace", "student_t", "normal"):
        assert not list(make_vae(name).prior.parameters())


def test_learnable_prior_survives_checkpoint_resume_and_evaluation(tiny_cfg, tmp_path):
    extra = ("prior=vamp", "prior.num_components=5")
    run_training(tiny_cfg(*extra, "epochs=2", run_dir=tmp_path / "whole"))
    run_training(tiny_cfg(*extra, "epochs=1", run_dir=tmp_path / "parts"))
    run_training(tiny_cfg(*extra, "epochs=2", "resume=true", run_dir=tmp_path / "parts"))
    key = "prior.pseudo_inputs_unconstrained"
    whole, parts = (RunDir(tmp_path / d).load_checkpoint()["model"] for d in ("whole", "parts"))
    assert torch.equal(whole[key], parts[key])
    loaded = load_run(tmp_path / "whole")
    assert torch.equal(loaded.vae.state_dict()[key], whole[key])
    initial = load_run(tmp_path / "whole", checkpoint="epoch_0000.pt").vae.state_dict()[key]
    assert not torch.equal(initial, whole[key])  # trained, and restored as trained
    assert loaded.vae.prior._encoder is loaded.vae.encoder


@pytest.mark.parametrize("prior", config_choices("prior"))
def test_every_shipped_prior_trains_and_evaluates_from_the_command_line(prior, bars_path, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [f"prior={prior}", *LEARNABLE.get(prior, []), "epochs=1"]
    assert main(["train", *tiny_overrides(bars_path, run_dir, *overrides)]) == 0
    assert RunDir(run_dir).summary()["status"] == "finished"
    # The trained prior is what evaluation and plots load back; learnable ones have moved.
    trained = {k: v for k, v in load_run(run_dir).vae.state_dict().items() if "prior." in k}
    saved = RunDir(run_dir).load_checkpoint()["model"]
    initial = RunDir(run_dir).load_checkpoint("epoch_0000.pt")["model"]
    assert trained and all(torch.equal(v, saved[k]) for k, v in trained.items())
    moved = any(not torch.equal(v, initial[k]) for k, v in trained.items())
    assert moved == (prior in LEARNABLE)
    assert main(["evaluate", str(run_dir), "num_samples=10"]) == 0
    assert math.isfinite(RunDir(run_dir).summary()["test_log_likelihood"])
    # The figures drawn from the prior: its quantiles, its samples, its density.
    figures = ("manifold", "samples", "aggregate_posterior")
    paths = plot_run(run_dir, figures=figures)
    assert sorted(p.stem for p in paths) == sorted(figures)


USER_MODULE = '''
import pyro.distributions as dist
import torch

from pyro_vae.priors import Prior


class ShiftedLaplace(Prior):
    """A user's prior: Laplace(shift, 1) per dimension."""

    def __init__(self, latent_dim, shift, x_dim=None):
        super().__init__(latent_dim)
        self.shift, self.x_dim = shift, x_dim

    def forward(self):
        return dist.Laplace(torch.full((self.latent_dim,), float(self.shift)), 1.0).to_event(1)
'''


def test_a_users_own_prior_by_import_path(tiny_cfg, tmp_path, monkeypatch):
    (tmp_path / "my_priors_for_test.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    target = ["prior._target_=my_priors_for_test.ShiftedLaplace", "prior.name=shifted"]
    with pytest.raises(ConfigError, match=r"missing value for prior.shift"):
        validate_config(tiny_cfg(*target))
    run_training(tiny_cfg(*target, "+prior.shift=0.5"))
    vae = load_run(tmp_path / "run").vae
    assert type(vae.prior).__name__ == "ShiftedLaplace" and vae.prior.shift == 0.5
    assert vae.prior.x_dim == 16  # context the constructor asked for
    z = grid_points()
    expected = stats.laplace(0.5, 1).logpdf(z.numpy()).sum(-1)
    np.testing.assert_allclose(vae.prior().log_prob(z).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["prior._target_=pyro.distributions.Lapalce"], r"prior._target_=.*Lapalce.*Laplace"),
        (["prior._target_=nowhere.Prior"], r"prior._target_='nowhere.Prior'.*prior=\["),
        (["prior._target_=torch.nn.Linear"], r"prior._target_='torch.nn.Linear' is not allowed"),
        (
            [
                "prior._target_=pyro.distributions.Gamma",
                "~prior.loc",
                "~prior.scale",
                "+prior.concentration=1",
                "+prior.rate=1",
            ],
            r"prior._target_=.*Gamma.*real line",
        ),
        (["~prior.scale"], r"missing value for prior.scale: .*Laplace needs \['loc', 'scale'\]"),
        (["+prior.shape=2"], r"prior.shape is not a parameter of .*Laplace.*\['loc', 'scale'"),
        (["prior.scale=-1"], r"prior.scale=-1 is not allowed: expected values in GreaterThan"),
        (["prior.scale=0"], r"prior.scale=0 is not allowed"),
        (["prior.loc=[0,0,0]"], r"prior.loc=\[0, 0, 0\] .* shape \[2\] \(latent_dim=2\)"),
        (["prior.loc=nan"], r"prior.loc=nan is not allowed"),
        (["prior.learnable=maybe"], r"prior.learnable='maybe' .* true or false"),
        (["prior=student_t", "prior.df=0"], r"prior.df=0 is not allowed"),
        (["prior=student_t", "~prior.df"], r"missing value for prior.df"),
        (["prior=mixture_of_gaussians", "prior.num_components=0"], r"num_components=0 .*>= 1"),
        (["prior=mixture_of_gaussians", "prior.locs=[[0,0]]"], r"prior.locs=.*shape \[10, 2\]"),
        (["prior=mixture_of_gaussians", "prior.weights=[1,-1]"], r"prior.weights=.*shape \[10\]"),
        (
            ["prior=mixture_of_gaussians", "prior.num_components=2", "prior.weights=[1,-1]"],
            r"prior.weights=\[1, -1\] is not allowed: expected numbers > 0",
        ),
        (["prior=vamp", "prior.num_components=-1"], r"prior.num_components=-1 .*>= 1"),
        (["prior=vamp", "prior.pseudo_inputs_mean=1.5"], r"pseudo_inputs_mean=1.5 .*\(0, 1\)"),
        (["prior=standard_normal", "+prior.loc=1"], r"prior.loc is not .*Normal: it takes no"),
    ],
)
def test_bad_prior_config_is_refused_naming_the_key(overrides, message):
    cfg = compose_config(["prior=laplace", "latent_dim=2", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_a_bad_prior_is_refused_before_training_starts(bars_path, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_overrides(bars_path, run_dir, "prior=laplace", "prior.scale=-2")
    assert main(["train", *args]) == 2
    assert "prior.scale=-2 is not allowed" in capsys.readouterr().err
    assert not run_dir.exists()


def test_validation_leaves_the_random_stream_alone():
    cfg = compose_config(["prior=vamp"])
    torch.manual_seed(0)
    a = torch.rand(3)
    torch.manual_seed(0)
    build_prior_for_validation(cfg.prior, 20)
    assert torch.equal(torch.rand(3), a)


def test_a_name_alone_selects_a_shipped_configuration():
    prior = build_prior(prior_spec({"name": "student_t", "df": 5.0}), latent_dim=3)
    p = prior()
    assert type(p.base_dist) is dist.StudentT and torch.equal(p.base_dist.df, torch.full((3,), 5.0))
    with pytest.raises(ConfigError, match=r"prior.name='cauchy' .*'laplace'"):
        prior_spec({"name": "cauchy"})
    # Without the configuration layer a specification names its class.
    with pytest.raises(ArgumentError, match=r"missing value for _target_"):
        build_prior({"name": "student_t"}, latent_dim=3)
