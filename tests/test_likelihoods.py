"""Likelihoods p(x|z): log-densities against scipy.stats, the decoder heads each takes, decoder
means, samples, support checks, bad arguments, specifications, and every likelihood end to
end in a VAE; the paper's two decoders are guarded bit for bit against the formulas of the
decoders they replaced."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
import yaml
from pyro.infer import SVI, Trace_ELBO
from scipy import special, stats
from torch import nn

from pyro_vae.errors import ArgumentError, DataError
from pyro_vae.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    Beta,
    Categorical,
    ContinuousBernoulli,
    Family,
    Gaussian,
    Laplace,
    Likelihood,
    NegativeBinomial,
    Poisson,
    build_likelihood,
    get_likelihood,
    upgrade_settings,
)
from pyro_vae.model import VAE
from pyro_vae.networks import GaussianEncoder, MLPDecoder, init_parameters, mlp_trunk


class MyLikelihood(Likelihood):
    """A user's likelihood, named by ``_target_: tests.test_likelihoods.MyLikelihood``: a
    Bernoulli whose logits are divided by a temperature."""

    name = "my_likelihood"
    support = "values in [0, 1]"

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def __call__(self, output):
        return dist.Bernoulli(logits=output / self.temperature, validate_args=False).to_event(1)

    def in_support(self, x):
        return (x >= 0) & (x <= 1)

    def spec(self):
        return {**super().spec(), "temperature": self.temperature}


# -- numpy references (float64) ----------------------------------------------------------------


def softplus(t):
    return np.logaddexp(0.0, t)


def floored_log(raw, floor):
    m = math.log(floor)
    return m + softplus(raw - m)


def location(lik, loc):
    return special.expit(loc) if lik.mean_link == "sigmoid" else loc


def gaussian_scale(lik, outputs):
    if lik.variance == "fixed":
        return np.full_like(outputs[0], lik.scale)
    return np.exp(0.5 * floored_log(outputs[1], lik.floor))


def laplace_scale(lik, outputs):
    if lik.variance == "fixed":
        return np.full_like(outputs[0], lik.scale)
    return np.exp(floored_log(outputs[1], lik.floor))


def cb_log_norm(lam):
    """log C(lambda), C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), C(1/2) = 2."""
    u = 1 - 2 * lam
    safe = np.where(u == 0, 0.5, u)
    return np.where(u == 0, math.log(2.0), np.log(2 * np.arctanh(safe) / safe))


def cb_mean(lam):
    """lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)); 1/2 at lambda = 1/2."""
    u = 1 - 2 * lam
    safe = np.where(u == 0, 0.5, u)
    lam_safe = np.where(u == 0, 0.25, lam)
    return np.where(u == 0, 0.5, lam_safe / (2 * lam_safe - 1) + 1 / (2 * np.arctanh(safe)))


def beta_params(lik, outputs):
    c = lik.min_concentration
    return softplus(outputs[0]) + c, softplus(outputs[1]) + c


def nb_params(lik, outputs):
    """scipy's nbinom(n, p') counts failures before n successes of probability p'; torch's
    NegativeBinomial(r, logits) has success probability sigmoid(logits) attached to the
    counted value, so n = r and p' = 1 - sigmoid(logits) = sigmoid(-logits)."""
    logits, raw = outputs
    return softplus(raw) + lik.min_total_count, special.expit(-logits)


def grey_levels(lik, x):
    return np.rint(x * (lik.levels - 1)).astype(np.int64)


def categorical_log_prob(lik, outputs, x):
    log_p = special.log_softmax(outputs[0], axis=-1)
    k = np.broadcast_to(grey_levels(lik, x), log_p.shape[:-1])
    return np.take_along_axis(log_p, k[..., None], axis=-1)[..., 0]


def family_kwargs(lik, outputs):
    links = {"identity": lambda t: t, "sigmoid": special.expit, "exp": np.exp}
    links["softplus"] = softplus
    kw = {p: links[link](t) for (p, link), t in zip(lik.params.items(), outputs, strict=True)}
    return {**kw, **lik.fixed}


def family_log_prob(lik, outputs, x):
    kw = family_kwargs(lik, outputs)
    name = lik.family.__name__
    if name == "Gamma":
        return stats.gamma.logpdf(x, kw["concentration"], scale=1 / kw["rate"])
    if name == "StudentT":
        return stats.t.logpdf(x, kw["df"], loc=kw["loc"], scale=kw["scale"])
    if name == "Normal":
        return stats.norm.logpdf(x, kw["loc"], kw["scale"])
    raise AssertionError(name)


def family_mean(lik, outputs):
    kw = family_kwargs(lik, outputs)
    name = lik.family.__name__
    if name == "Gamma":
        return stats.gamma.mean(kw["concentration"], scale=1 / kw["rate"])
    return np.broadcast_to(kw["loc"], outputs[0].shape)  # StudentT (df > 1), Normal


# -- data in each likelihood's support ---------------------------------------------------------


def unit(rng, shape):
    x = rng.uniform(0, 1, shape)
    x.flat[:2] = [0.0, 1.0]  # the ends of [0, 1]: MNIST's background and strokes
    return x


def binary(rng, shape):
    return (rng.uniform(0, 1, shape) < 0.5).astype(np.float64)


def real(rng, shape):
    return 3 * rng.standard_normal(shape)


def counts(rng, shape):
    x = rng.poisson(3.0, shape).astype(np.float64)
    x.flat[:2] = [0.0, 12.0]
    return x


def bytes_(rng, shape):
    x = rng.integers(0, 256, shape) / 255
    x.flat[:2] = [0.0, 1.0]
    return x


def positive(rng, shape):
    return rng.gamma(2.0, 1.0, shape) + 1e-3


# -- the likelihoods under test ----------------------------------------------------------------


@dataclass
class Case:
    make: Callable[[], Any]
    data: Callable[[np.random.Generator, tuple], np.ndarray]
    log_prob: Callable[[Any, list, np.ndarray], np.ndarray]  # per value, [..., D]
    mean: Callable[[Any, list], np.ndarray]
    sample_ok: Callable[[np.ndarray], np.ndarray]
    specials: list = field(default_factory=list)  # raw outputs to set in the first head


def location_scale_cases():
    cases = {}
    for family, cls, floor_key, floor, scale_of, ref in (
        ("gaussian", Gaussian, "min_var", 0.05, gaussian_scale, stats.norm.logpdf),
        ("laplace", Laplace, "min_scale", 0.1, laplace_scale, stats.laplace.logpdf),
    ):
        for mean in ("sigmoid", "identity"):
            for variance in ("output", "learned", "fixed"):
                # A floor of e^-3 or e^-2.3 puts the raw outputs drawn in (-3, 3) across it.
                kwargs = {"scale": 0.3} if variance == "fixed" else {floor_key: floor}

                def make(cls=cls, mean=mean, variance=variance, kwargs=kwargs):
                    return cls(mean=mean, variance=variance, **kwargs)

                def log_prob(lik, o, x, ref=ref, scale_of=scale_of):
                    return ref(x, location(lik, o[0]), scale_of(lik, o))

                cases[f"{family}-{mean}-{variance}"] = Case(
                    make,
                    unit if mean == "sigmoid" else real,
                    log_prob,
                    lambda lik, o: location(lik, o[0]),
                    np.isfinite,  # p(x|z) is a density on the reals, whatever the data's range
                )
    return cases


CASES: dict[str, Case] = {
    "bernoulli": Case(
        Bernoulli,
        binary,
        lambda lik, o, x: stats.bernoulli.logpmf(x, special.expit(o[0])),
        lambda lik, o: special.expit(o[0]),
        lambda s: (s == 0) | (s == 1),
    ),
    "continuous_bernoulli": Case(
        ContinuousBernoulli,
        unit,
        lambda lik, o, x: (
            cb_log_norm(special.expit(o[0]))
            + x * special.log_expit(o[0])
            + (1 - x) * special.log_expit(-o[0])
        ),
        lambda lik, o: cb_mean(special.expit(o[0])),
        lambda s: (s >= 0) & (s <= 1),
        # lambda = 1/2 exactly (C = 2), and both sides of torch's Taylor region |lambda - 1/2|
        # < 1e-3 (logits within 4e-3 of 0).
        specials=[0.0, 0.002, -0.002, 0.01, -0.01],
    ),
    **location_scale_cases(),
    "beta": Case(
        Beta,
        unit,
        lambda lik, o, x: stats.beta.logpdf(lik.eps + (1 - 2 * lik.eps) * x, *beta_params(lik, o)),
        lambda lik, o: (stats.beta.mean(*beta_params(lik, o)) - lik.eps) / (1 - 2 * lik.eps),
        lambda s: (s >= 0) & (s <= 1),
    ),
    "poisson": Case(
        Poisson,
        counts,
        lambda lik, o, x: stats.poisson.logpmf(x, np.exp(o[0])),
        lambda lik, o: stats.poisson.mean(np.exp(o[0])),
        lambda s: (s >= 0) & (s == np.round(s)),
    ),
    "negative_binomial": Case(
        NegativeBinomial,
        counts,
        lambda lik, o, x: stats.nbinom.logpmf(x, *nb_params(lik, o)),
        lambda lik, o: stats.nbinom.mean(*nb_params(lik, o)),
        lambda s: (s >= 0) & (s == np.round(s)),
    ),
    "categorical": Case(
        Categorical,
        bytes_,
        categorical_log_prob,
        lambda lik, o: special.softmax(o[0], axis=-1) @ (np.arange(lik.levels) / (lik.levels - 1)),
        lambda s: (s >= 0) & (s <= 1) & (np.abs(s * 255 - np.rint(s * 255)) < 1e-6),
    ),
    "family-gamma": Case(
        lambda: Family(
            "pyro.distributions.Gamma", {"concentration": "softplus", "rate": "softplus"}
        ),
        positive,
        family_log_prob,
        family_mean,
        lambda s: s >= 0,
    ),
    "family-studentt-fixed-df": Case(
        lambda: Family(dist.StudentT, {"loc": "identity", "scale": "softplus"}, {"df": 3.0}),
        real,
        family_log_prob,
        family_mean,
        np.isfinite,
    ),
    "family-normal-one-head": Case(
        lambda: Family(torch.distributions.Normal, {"loc": "identity"}, {"scale": 0.5}),
        real,
        family_log_prob,
        family_mean,
        np.isfinite,
    ),
}
NAMES = list(CASES)
K, M, D = 2, 3, 5


def raw_outputs(lik, case: Case, seed: int = 0, shape=(K, M, D)) -> list[np.ndarray]:
    """Raw decoder outputs for each head, uniform in (-3, 3), float64."""
    rng = np.random.default_rng(seed)
    outputs = [
        rng.uniform(-3, 3, (*shape, h.per_dim) if h.per_dim > 1 else shape) for h in lik.heads
    ]
    outputs[0].flat[: len(case.specials)] = case.specials
    return outputs


def as_output(tensors):
    """What a decoder returns: one tensor for one head, else a tuple in the heads' order."""
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def torch_output(outputs, dtype=torch.float64):
    return as_output([torch.tensor(o, dtype=dtype) for o in outputs])


def test_every_shipped_likelihood_has_a_case():
    tested = {type(CASES[n].make()).name for n in NAMES}
    assert set(LIKELIHOODS) <= tested
    variants = {(lik.mean_link, lik.variance) for lik in (CASES[n].make() for n in NAMES)
                if isinstance(lik, Gaussian)}  # fmt: skip
    assert len(variants) == 6


# -- log p(x|z) against scipy ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_matches_scipy(name):
    case = CASES[name]
    lik = case.make()
    outputs = raw_outputs(lik, case)
    x = case.data(np.random.default_rng(1), (M, D))  # broadcast over the K samples of z
    d = lik(torch_output(outputs))
    assert d.batch_shape == (K, M) and d.event_shape == (D,)
    got = d.log_prob(torch.tensor(x))
    assert got.dtype == torch.float64 and got.shape == (K, M)
    expected = case.log_prob(lik, outputs, np.broadcast_to(x, (K, M, D))).sum(-1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_bernoulli_on_grey_levels_is_the_binary_cross_entropy():
    """The relaxation ``dataset.binarize=none`` relies on: x log p + (1 - x) log(1 - p)."""
    rng = np.random.default_rng(0)
    y, x = rng.uniform(-3, 3, (M, D)), rng.uniform(0, 1, (M, D))
    expected = (x * special.log_expit(y) + (1 - x) * special.log_expit(-y)).sum(-1)
    got = Bernoulli()(torch.tensor(y)).log_prob(torch.tensor(x))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_discrete_likelihoods_say_so():
    discrete = {n for n in NAMES if CASES[n].make().discrete}
    assert discrete == {"bernoulli", "poisson", "negative_binomial", "categorical"}


# -- heads: what the decoder must give ---------------------------------------------------------


@pytest.mark.parametrize("name", [*NAMES, "categorical-16-levels"])
def test_an_mlp_decoder_built_with_the_heads_gives_what_the_likelihood_takes(name):
    torch.manual_seed(0)
    if name == "categorical-16-levels":
        case, lik = CASES["categorical"], Categorical(levels=16)
    else:
        case = CASES[name]
        lik = case.make()
    decoder = MLPDecoder(3, D, [4], "tanh", lik.heads)
    z = torch.randn(K, M, 3)  # K samples of z for each of M datapoints
    out = decoder(z)
    outs = (out,) if len(lik.heads) == 1 else out
    assert isinstance(outs, tuple) and len(outs) == len(lik.heads)
    for head, o in zip(lik.heads, outs, strict=True):
        assert o.shape == ((K, M, D, head.per_dim) if head.per_dim > 1 else (K, M, D))
        layer = getattr(decoder, head.name)
        if head.shared:  # one learned vector, the same for every z
            assert isinstance(layer, nn.Parameter) and layer.numel() == D * head.per_dim
            assert (o == o[0, 0]).all()
        else:
            assert isinstance(layer, nn.Linear) and layer.out_features == D * head.per_dim
    d = lik(out)
    assert d.batch_shape == (K, M) and d.event_shape == (D,)
    x = torch.tensor(case.data(np.random.default_rng(0), (M, D)), dtype=torch.float32)
    if name == "categorical-16-levels":
        x = torch.round(x * 15) / 15
    log_p = d.log_prob(x)
    assert log_p.shape == (K, M) and torch.isfinite(log_p).all()
    assert lik.mean(out).shape == (K, M, D)
    # Every head reaches log p(x|z): each of the decoder's parameters gets a gradient.
    log_p.sum().backward()
    for pname, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_shared_and_per_dim_heads():
    assert [h.shared for h in Gaussian(variance="learned").heads] == [False, True]
    assert [h.shared for h in Laplace(variance="learned").heads] == [False, True]
    assert [h.name for h in Gaussian().heads] == ["loc", "log_var"]  # the paper's names
    assert [h.name for h in Gaussian(scale=0.5).heads] == ["loc"]
    assert [h.per_dim for h in Categorical().heads] == [256]
    assert [h.name for h in Bernoulli().heads] == ["logits"]


# -- the decoder mean and samples --------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_mean_matches_its_closed_form(name):
    case = CASES[name]
    lik = case.make()
    outputs = raw_outputs(lik, case, seed=2)
    got = lik.mean(torch_output(outputs))
    assert got.shape == (K, M, D)
    np.testing.assert_allclose(got.numpy(), case.mean(lik, outputs), rtol=1e-6)


@pytest.mark.parametrize("name", ["gaussian-sigmoid-output", "laplace-sigmoid-learned"])
def test_sigmoid_mean_lies_in_the_unit_interval(name):
    lik = CASES[name].make()
    loc = torch.tensor([[-30.0, -3.0, 0.0, 3.0, 30.0]], dtype=torch.float64)
    mean = lik.mean((loc, torch.zeros_like(loc)))
    assert ((mean > 0) & (mean < 1)).all()
    torch.testing.assert_close(mean, torch.sigmoid(loc))


def test_continuous_bernoulli_mean_is_not_lambda_and_matches_torch():
    y = torch.tensor([-2.0, -0.5, 0.0, 0.001, 1.5], dtype=torch.float64)
    mean = ContinuousBernoulli().mean(y)
    torch.testing.assert_close(mean, torch.distributions.ContinuousBernoulli(logits=y).mean)
    np.testing.assert_allclose(mean.numpy(), cb_mean(special.expit(y.numpy())), rtol=1e-6)
    assert not torch.allclose(mean[[0, 1, 4]], torch.sigmoid(y[[0, 1, 4]]))


def test_categorical_mean_is_exact_in_float64():
    lik = Categorical()
    outputs = raw_outputs(lik, CASES["categorical"], seed=3)
    got = lik.mean(torch_output(outputs)).numpy()
    np.testing.assert_allclose(got, CASES["categorical"].mean(lik, outputs), rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_samples_lie_in_the_support(name):
    case = CASES[name]
    lik = case.make()
    torch.manual_seed(0)
    d = lik(torch_output(raw_outputs(lik, case, seed=4), torch.float32))
    s = d.sample()
    assert s.shape == (K, M, D) and s.dtype == torch.float32
    assert case.sample_ok(s.numpy()).all()
    if not isinstance(lik, Gaussian | Laplace):  # a density on the reals: samples leave [0, 1]
        lik.check(s, "samples")


# -- the variance floor ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lik, log_param",
    [
        (Gaussian(min_var=1e-3), lambda s: 2 * s.log()),  # log sigma^2, floored at log min_var
        (Laplace(min_scale=1e-3), torch.log),  # log b, floored at log min_scale
    ],
    ids=["gaussian", "laplace"],
)
def test_variance_floor(lik, log_param):
    floor = math.log(1e-3)
    decoder = MLPDecoder(2, 4, [], "tanh", lik.heads).double()
    scale_head = getattr(decoder, lik.heads[1].name)
    with torch.no_grad():
        scale_head.weight.zero_()
        scale_head.bias.copy_(torch.tensor([-50.0, floor, 0.0, 5.0]))
    d = lik(decoder(torch.zeros(1, 2, dtype=torch.float64)))
    log_var = log_param(d.base_dist.scale)
    assert (log_var >= floor - 1e-12).all()
    torch.testing.assert_close(log_var[0, 0].item(), floor)  # far below: at the floor
    assert abs(log_var[0, 3].item() - 5.0) < 1e-2  # far above: unchanged (within 7e-3)
    # Soft, not hard: the gradient survives at the floor (d log_var / d raw = 1/2 there).
    raw = torch.tensor([[floor]], dtype=torch.float64, requires_grad=True)
    log_param(lik((torch.zeros_like(raw), raw)).base_dist.scale).sum().backward()
    assert raw.grad.item() == pytest.approx(0.5)


def test_a_learned_variance_is_floored_too():
    lik = Gaussian(variance="learned", min_var=1e-3)
    decoder = MLPDecoder(2, 3, [4], "tanh", lik.heads)
    with torch.no_grad():
        decoder.log_var.copy_(torch.tensor([-50.0, 0.0, 5.0]))
    scale = lik(decoder(torch.zeros(6, 2))).base_dist.scale
    assert scale.shape == (6, 3)
    log_var = 2 * scale.log()
    torch.testing.assert_close(log_var[:, 0], torch.full((6,), math.log(1e-3)))
    torch.testing.assert_close(log_var[:, 2], torch.full((6,), 5.0), atol=1e-2, rtol=0)


# -- the support check -------------------------------------------------------------------------

CHECKS = [
    # (likelihood, values accepted, values refused)
    (Bernoulli(), [0.0, 1.0, 0.5], [-0.1, 1.5, math.nan]),
    (ContinuousBernoulli(), [0.0, 0.3, 1.0], [-0.1, 1.01]),
    (Beta(), [0.0, 0.3, 1.0], [-0.1, 1.01, math.inf]),
    (Categorical(), [k / 255 for k in (0, 1, 128, 254, 255)], [0.5 / 255, -1 / 255, 2.0]),
    (Categorical(levels=4), [0.0, 1 / 3, 2 / 3, 1.0], [0.5]),
    (Poisson(), [0.0, 1.0, 7.0, 1000.0], [-1.0, 0.5, math.nan]),
    (NegativeBinomial(), [0.0, 1.0, 7.0, 1000.0], [-1.0, 0.5]),
    (Gaussian(mean="identity"), [-3.5, 0.0, 1e3, -1e6], [math.nan, math.inf]),
    (Gaussian(), [0.0, 0.5, 1.0], [-0.1, 1.1]),
    (Gaussian(variance="learned"), [0.0, 1.0], [2.0]),
    (Laplace(mean="identity", scale=1.0), [-3.5, 1e3], [-math.inf]),
    (Laplace(), [0.0, 1.0], [-0.1]),
    (Family(dist.Gamma, {"concentration": "softplus", "rate": "softplus"}), [0.5, 3.0], [-1.0]),
    (Family(dist.Poisson, {"rate": "exp"}), [0.0, 4.0], [0.5, -1.0]),
    (MyLikelihood(), [0.0, 1.0], [2.0]),
]


def _value_named(message: str) -> float:
    found = re.search(r"found (\S+) \(", message)
    assert found, message
    return float(found.group(1))


@pytest.mark.parametrize("lik, good, bad", CHECKS, ids=[f"{c[0]!r}" for c in CHECKS])
def test_check_refuses_data_outside_the_support_naming_it(lik, good, bad):
    x = torch.tensor([good] * 3)
    lik.check(x, "train.npy")  # accepted
    for value in bad:
        y = x.clone()
        y[1, 1] = value
        with pytest.raises(DataError) as refused:
            lik.check(y, "data/train.npy")
        message = str(refused.value)
        assert "data/train.npy" in message and lik.name in message, message
        named = _value_named(message)
        assert named == pytest.approx(value, rel=1e-6, nan_ok=True) or (named == value), message
        assert "1 of" in message


def test_a_family_on_the_reals_refuses_infinite_data():
    lik = Family(dist.Normal, {"loc": "identity", "scale": "softplus"})
    with pytest.raises(DataError):
        lik.check(torch.tensor([0.0, math.inf]), "train.npy")


# -- bad arguments -----------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (lambda: Gaussian(mean="tanh"), "mean", "'tanh'"),
    (lambda: Gaussian(variance="fixed"), "scale", "None"),
    (lambda: Gaussian(scale=-1), "scale", "-1"),
    (lambda: Gaussian(variance="learned", scale=1.0), "scale", "1.0"),
    (lambda: Gaussian(variance="sometimes"), "variance", "'sometimes'"),
    (lambda: Gaussian(min_var=0), "min_var", "0"),
    (lambda: Laplace(mean="tanh"), "mean", "'tanh'"),
    (lambda: Laplace(min_scale=-1.0), "min_scale", "-1.0"),
    (lambda: Categorical(levels=1), "levels", "1"),
    (lambda: Categorical(levels=True), "levels", "True"),
    (lambda: Beta(eps=0.7), "eps", "0.7"),
    (lambda: Beta(min_concentration=0), "min_concentration", "0"),
    (lambda: NegativeBinomial(min_total_count=0), "min_total_count", "0"),
    (lambda: Family(dist.Normal, {"loc": "cube"}), "params.loc", "'cube'"),
    (lambda: Family(dist.Normal, {}), "params", "{}"),
    (lambda: Family(int, {"loc": "identity"}), "family", "int"),
    (lambda: build_likelihood({"name": "nope"}), "name", "'nope'"),
    (lambda: build_likelihood({"_target_": "builtins.dict"}), "_target_", "'builtins.dict'"),
    (
        lambda: build_likelihood(
            {"_target_": "pyro.distributions.Normal", "params": {"loc": "identity"}, "rate": 2}
        ),
        "rate",
        "2",
    ),
    (lambda: get_likelihood("nope"), "likelihood", "'nope'"),
    (lambda: get_likelihood(3), "likelihood", "3"),
    (
        lambda: Family("pyro.distributions.Nope", {"loc": "identity"}),
        "family",
        "'pyro.distributions.Nope'",
    ),
    (lambda: build_likelihood({"_target_": "nope.Thing"}), "_target_", "'nope.Thing'"),
]
BAD_ARGUMENTS_BUILT = [
    pytest.param(
        lambda: build_likelihood({"_target_": "pyro.distributions.Normal"}),
        "params",
        "pyro.distributions.Normal",
        id="family-without-params",
    ),
    pytest.param(
        lambda: build_likelihood({"name": "gaussian", "sigma": 1.0}),
        "sigma",
        "sigma",
        id="unknown-option",
    ),
]


@pytest.mark.parametrize(
    "make, key, value",
    [*[pytest.param(*b, id=f"{b[1]}={b[2]}") for b in BAD_ARGUMENTS], *BAD_ARGUMENTS_BUILT],
)
def test_bad_arguments_are_refused_naming_the_value(make, key, value):
    with pytest.raises(ArgumentError) as refused:
        make()
    message = str(refused.value)
    assert value in message, message
    # The message starts with the argument's name, as a word: "scale=-1 is not allowed: ...",
    # or says it is missing: "missing value for params: ...".
    assert refused.value.key == key or key in message, message
    name = re.escape(refused.value.key)
    assert re.match(rf"({name}|missing value for {name})\b", message), message


# -- specifications ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_build_likelihood_round_trips_the_spec(name):
    lik = CASES[name].make()
    spec = lik.spec()
    again = build_likelihood(spec)
    assert type(again) is type(lik) and again.spec() == spec
    assert [*again.heads] == [*lik.heads]
    assert yaml.safe_load(yaml.safe_dump(spec)) == spec  # a run's config.yaml records it
    assert repr(lik).startswith(type(lik).__name__ + "(")


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_a_name_gives_the_default_likelihood(name):
    assert build_likelihood({"name": name}).spec() == LIKELIHOODS[name]().spec()
    assert get_likelihood(name).spec() == LIKELIHOODS[name]().spec()
    assert get_likelihood({"name": name}).spec() == LIKELIHOODS[name]().spec()


def test_options_build_a_shipped_likelihood():
    lik = build_likelihood({"name": "gaussian", "mean": "identity", "variance": "learned"})
    assert isinstance(lik, Gaussian) and lik.mean_link == "identity" and lik.variance == "learned"
    lik = build_likelihood({"name": "categorical", "levels": 16})
    assert lik.heads[0].per_dim == 16


def test_a_target_names_a_users_likelihood_class():
    spec = {"_target_": "tests.test_likelihoods.MyLikelihood", "temperature": 2.0}
    lik = build_likelihood(spec)
    assert isinstance(lik, MyLikelihood) and lik.temperature == 2.0
    assert lik.spec() == {"name": "my_likelihood", **spec}
    assert build_likelihood(lik.spec()).spec() == lik.spec()
    y, x = torch.tensor([[4.0, -4.0]]), torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(lik(y).log_prob(x), -2 * F.softplus(torch.tensor([-2.0])))


@pytest.mark.parametrize(
    "target", ["pyro.distributions.Gamma", "torch.distributions.Gamma", dist.Gamma]
)
def test_a_target_names_a_distribution_family(target):
    params = {"concentration": "softplus", "rate": "softplus"}
    lik = build_likelihood({"name": "my_gamma", "_target_": target, "params": params})
    assert isinstance(lik, Family) and lik.name == "my_gamma" and lik.params == params
    assert [h.name for h in lik.heads] == ["concentration", "rate"]
    assert build_likelihood(lik.spec()).spec() == lik.spec()
    a, b = torch.tensor([[0.3, 1.0]]), torch.tensor([[-0.2, 2.0]])
    x = torch.tensor([[0.7, 2.5]])
    shape, rate = F.softplus(a).numpy(), F.softplus(b).numpy()
    expected = stats.gamma.logpdf(x.numpy(), shape, scale=1 / rate).sum(-1)
    np.testing.assert_allclose(lik((a, b)).log_prob(x).numpy(), expected, rtol=1e-5)  # float32
    unnamed = build_likelihood({"_target_": target, "params": params})
    assert unnamed.name == "gamma"


def test_a_family_with_fixed_parameters():
    lik = build_likelihood(
        {
            "_target_": "pyro.distributions.StudentT",
            "params": {"loc": "identity", "scale": "exp"},
            "fixed": {"df": 4.0},
        }
    )
    assert [h.name for h in lik.heads] == ["loc", "scale"] and lik.fixed == {"df": 4.0}
    loc, log_s = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[-1.0]]).double()
    x = torch.tensor([[2.0]], dtype=torch.float64)
    expected = stats.t.logpdf(2.0, 4.0, loc=0.5, scale=math.exp(-1.0))
    np.testing.assert_allclose(lik((loc, log_s)).log_prob(x).item(), expected, rtol=1e-6)


# -- upgrade_settings --------------------------------------------------------------------------


def test_upgrade_settings_moves_decoder_min_var_into_the_gaussian_spec():
    old = {"latent_dim": 3, "likelihood": "gaussian", "decoder_min_var": 1e-3}
    new = upgrade_settings(old)
    assert new["likelihood"] == Gaussian(min_var=1e-3).spec()
    assert new["likelihood"]["min_var"] == 1e-3
    assert "decoder_min_var" not in new and new["latent_dim"] == 3
    assert old["likelihood"] == "gaussian" and "decoder_min_var" in old  # not modified
    assert upgrade_settings(new) == new  # idempotent


def test_upgrade_settings_of_other_likelihoods():
    new = upgrade_settings({"likelihood": "bernoulli", "decoder_min_var": 1e-4})
    assert new == {"likelihood": Bernoulli().spec()}
    assert upgrade_settings({"likelihood": "mine"}) == {"likelihood": {"name": "mine"}}
    spec = Categorical(levels=16).spec()
    assert upgrade_settings({"likelihood": spec}) == {"likelihood": spec}


# -- every likelihood end to end ---------------------------------------------------------------

END_TO_END = {
    **{n: (lambda n=n: CASES[n].make().spec(), CASES[n].data) for n in NAMES},
    "my_likelihood": (lambda: {"_target_": "tests.test_likelihoods.MyLikelihood"}, unit),
}


@pytest.mark.parametrize("name", list(END_TO_END))
def test_every_likelihood_trains_in_a_vae(name, one_thread):
    make_spec, make_data = END_TO_END[name]
    spec = make_spec()
    pyro.set_rng_seed(0)
    x = torch.tensor(make_data(np.random.default_rng(0), (10, 16)), dtype=torch.float32)
    vae = VAE.mlp(16, 2, [8], likelihood=spec, num_data=10)
    vae.likelihood.check(x, "test data")
    assert vae.settings["likelihood"] == vae.likelihood.spec()
    log_w = vae.log_weights(x, 3)
    assert log_w.shape == (3, 10) and torch.isfinite(log_w).all()
    mean = vae.decode_mean(torch.randn(10, 2))
    assert mean.shape == (10, 16) and torch.isfinite(mean).all()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses), losses


# -- the paper's two decoders, bit for bit -----------------------------------------------------


class PaperGaussianDecoder(nn.Module):
    """The Gaussian decoder as it was before the likelihoods took over its output transforms
    (appendix C.2): mean = sigmoid(W4 h + b4), log sigma^2 = m + softplus(W5 h + b5 - m)."""

    def __init__(self, latent_dim, x_dim, hidden_dims, activation, min_var=1e-4):
        super().__init__()
        self.trunk = mlp_trunk(latent_dim, hidden_dims, activation)
        self.loc = nn.Linear(hidden_dims[-1], x_dim)
        self.log_var = nn.Linear(hidden_dims[-1], x_dim)
        self.min_log_var = math.log(min_var)

    def forward(self, z):
        h = self.trunk(z)
        raw = self.log_var(h)
        log_var = self.min_log_var + F.softplus(raw - self.min_log_var)
        return torch.sigmoid(self.loc(h)), log_var


def test_paper_gaussian_decoder_is_unchanged_bit_for_bit():
    pyro.set_rng_seed(0)
    vae = VAE.mlp(12, 3, [7], "gaussian", init="paper")
    # The same draws of the initialisation as the decoder it replaced: same parameters, in
    # the same order, with the same names.
    pyro.set_rng_seed(0)
    encoder = GaussianEncoder(12, 3, [7], "tanh")
    old = PaperGaussianDecoder(3, 12, [7], "tanh")
    init_parameters(encoder, "paper", 0.01)
    init_parameters(old, "paper", 0.01)
    new_state, old_state = vae.decoder.state_dict(), old.state_dict()
    assert list(new_state) == list(old_state)
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
    assert all(torch.equal(vae.encoder.state_dict()[k], v) for k, v in encoder.state_dict().items())

    z, x = torch.randn(4, 5, 3), torch.rand(5, 12)
    got = vae.decode(z).log_prob(x)
    # From the decoder's raw outputs, the float32 ops of Gaussian.__call__ in their order.
    loc_raw, raw = vae.decoder(z)
    m = math.log(1e-4)
    mean = torch.sigmoid(loc_raw)
    log_var = m + F.softplus(raw - m)
    expected = dist.Normal(mean, torch.exp(0.5 * log_var)).to_event(1).log_prob(x)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    # And from the old decoder's (mean, log variance), as the old Gaussian likelihood did.
    old_mean, old_log_var = old(z)
    old_log_p = dist.Normal(old_mean, torch.exp(0.5 * old_log_var)).to_event(1).log_prob(x)
    assert torch.equal(got, old_log_p)
    assert torch.equal(vae.decode_mean(z), old_mean)


def test_paper_bernoulli_decoder_is_unchanged_bit_for_bit():
    pyro.set_rng_seed(0)
    vae = VAE.mlp(12, 3, [7], "bernoulli", init="paper")
    pyro.set_rng_seed(0)  # as VAE.mlp: build the encoder, the decoder, then initialise both
    encoder = GaussianEncoder(12, 3, [7], "tanh")
    trunk, logits = mlp_trunk(3, [7], "tanh"), nn.Linear(7, 12)
    init_parameters(encoder, "paper", 0.01)
    init_parameters(nn.ModuleDict({"trunk": trunk, "logits": logits}), "paper", 0.01)
    assert list(vae.decoder.state_dict()) == [
        "trunk.0.weight",
        "trunk.0.bias",
        "logits.weight",
        "logits.bias",
    ]
    z, x = torch.randn(4, 5, 3), torch.rand(5, 12).bernoulli()
    with torch.no_grad():
        y = logits(trunk(z))
    assert torch.equal(vae.decoder(z), y)
    expected = dist.Bernoulli(logits=y, validate_args=False).to_event(1).log_prob(x)
    assert torch.equal(vae.decode(z).log_prob(x), expected)
    np.testing.assert_allclose(
        expected.double().numpy(),
        -F.binary_cross_entropy_with_logits(y.double(), x.double().expand_as(y), reduction="none")
        .sum(-1)
        .numpy(),
        rtol=1e-5,  # float32 against float64
    )
    assert torch.equal(vae.decode_mean(z), torch.sigmoid(y))
