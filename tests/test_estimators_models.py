"""Every estimator on Pyro's model class: global latents, nested plates, a user's plate at
dim -2, subsampling, masks, tensor scales, several latent sites, no latent site, separate
plates (the shapes of Pyro's tests/infer/test_gradient.py and test_valid_models.py).

Expected values and gradients come from Pyro itself on the same model and the same noise
(``Trace_ELBO``, ``TraceMeanField_ELBO``, ``RenyiELBO(alpha=0)``), or, for the hierarchical
guide, from the ELBO in closed form; the statistical checks' tolerance is Z standard
errors of the mean of the draws (see Z)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import MultiFrameTensor

from pyro_vae import gradient_variance
from pyro_vae.errors import ArgumentError, EstimatorError
from pyro_vae.estimators import ESTIMATORS, build_estimator
from pyro_vae.estimators.base import NonReparameterized, sample_sites
from pyro_vae.estimators.dreg import DReG_ELBO
from pyro_vae.estimators.stl import STL_ELBO

# |mean - expected| < Z standard errors per coordinate: with about 10 coordinates a correct
# estimator fails one with probability near 10 * 6e-5 under the normal approximation; the
# seeds are fixed, so the outcome is deterministic.
Z = 4.0
F64 = torch.float64
N = 6

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def p(name, *shape, init=0.3):
    """A real parameter of Pyro's param store (float64), initialised deterministically."""
    value = torch.linspace(-init, init, max(1, math.prod(shape)), dtype=F64).reshape(shape)
    return pyro.param(name, value)


def data(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- the models ---------------------------------------------------------------------------


class GlobalLocal:
    """A global latent mu outside the data plate, local z_i ~ N(mu, 1); the guide's z
    depends on mu (two dependent sites)."""

    units, nesting = None, 1
    x = data(N)

    def model(self, x):
        w = p("w", init=0.8)
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(w * z, 0.5), obs=x)

    def guide(self, x):
        a, log_sa = p("a"), p("log_sa", init=-0.5)
        b, c, log_s = p("b", init=0.5), p("c", init=0.4), p("log_s", init=-0.3)
        mu = pyro.sample("mu", dist.Normal(a, log_sa.exp()))
        with pyro.plate("data", N):
            pyro.sample("z", dist.Normal(b * x + c * mu, log_s.exp()))


class Nested:
    """Pixels nested in the data plate: z_i [N, 1], x_id [N, D]."""

    units, nesting = ("data",), 2
    x = data(N, 3)

    def model(self, x):
        w, bias = p("w", 3), p("bias", 3, init=0.1)
        with pyro.plate("data", N, dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=F64), 1.0))
            with pyro.plate("pixels", 3, dim=-1):
                pyro.sample("x", dist.Normal(w * z + bias, 1.0), obs=x)

    def guide(self, x):
        v, e, log_s = p("v", 3), p("e", init=0.1), p("log_s", init=-0.4)
        with pyro.plate("data", N, dim=-2):
            pyro.sample("z", dist.Normal((x @ v)[:, None] + e, log_s.exp()))


class UserPlate:
    """The user's own plate of chains at dim -2, around the data plate."""

    units, nesting = ("chains", "data"), 2
    x = data(N)

    def model(self, x):
        w = p("w", init=0.7)
        with pyro.plate("chains", 2, dim=-2), pyro.plate("data", N, dim=-1):
            z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
            pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)

    def guide(self, x):
        b, c = p("b", init=0.5), p("c", 2, 1, init=0.2)
        with pyro.plate("chains", 2, dim=-2), pyro.plate("data", N, dim=-1):
            pyro.sample("z", dist.Normal(b * x + c, 0.8))


class Subsampled:
    """``subsample_size``: 5 of 20 points per step, the bound scaled by 4."""

    units, nesting, scale = ("data",), 1, 4.0
    x = data(20)

    def model(self, x):
        w = p("w", init=0.6)
        with pyro.plate("data", 20, subsample_size=5) as idx:
            z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
            pyro.sample("x", dist.Normal(w * z, 1.0), obs=x[idx])

    def guide(self, x):
        b, log_s = p("b", init=0.5), p("log_s", init=-0.2)
        with pyro.plate("data", 20, subsample_size=5) as idx:
            pyro.sample("z", dist.Normal(b * x[idx], log_s.exp()))


class Masked:
    """``poutine.mask`` on the likelihood of some datapoints (missing data)."""

    units, nesting = ("data",), 1
    x = data(N)
    mask = torch.tensor([True, False, True, True, False, True])

    def model(self, x):
        w = p("w", init=0.6)
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
            with poutine.mask(mask=self.mask):
                pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)

    def guide(self, x):
        b, log_s = p("b", init=0.5), p("log_s", init=-0.2)
        with pyro.plate("data", N):
            pyro.sample("z", dist.Normal(b * x, log_s.exp()))


class Scaled:
    """A tensor of per-datapoint weights, ``poutine.scale(scale=tensor)``."""

    units, nesting = ("data",), 1
    x = data(N)
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.25, 1.0], dtype=F64)

    def model(self, x):
        w = p("w", init=0.6)
        with pyro.plate("data", N), poutine.scale(scale=self.weights):
            z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
            pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)

    def guide(self, x):
        b, log_s = p("b", init=0.5), p("log_s", init=-0.2)
        with pyro.plate("data", N), poutine.scale(scale=self.weights):
            pyro.sample("z", dist.Normal(b * x, log_s.exp()))


class TwoSites:
    """Two latent sites per datapoint: p(z2) p(z1|z2) p(x|z1) and the hierarchical guide
    q(z1|x) q(z2|z1). Its ELBO has a closed form (:meth:`exact_elbo`)."""

    units, nesting = ("data",), 1
    x = data(N)

    def params(self):
        return {
            "a": p("a", init=0.8),
            "b": p("b", init=0.2),
            "log_s1": p("log_s1", init=-0.3),
            "c": p("c", init=1.1),
            "d": p("d", init=-0.1),
            "log_s": p("log_s", init=-0.2),
            "e": p("e", init=0.6),
            "f": p("f", init=0.1),
            "log_g": p("log_g", init=-0.5),
            "h": p("h", init=0.7),
            "k": p("k", init=0.2),
            "log_l": p("log_l", init=-0.4),
        }

    def model(self, x):
        q = self.params()
        with pyro.plate("data", N):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(N, dtype=F64), 1.0))
            z1 = pyro.sample("z1", dist.Normal(q["a"] * z2 + q["b"], q["log_s1"].exp()))
            pyro.sample("x", dist.Normal(q["c"] * z1 + q["d"], q["log_s"].exp()), obs=x)

    def guide(self, x):
        q = self.params()
        with pyro.plate("data", N):
            z1 = pyro.sample("z1", dist.Normal(q["e"] * x + q["f"], q["log_g"].exp()))
            pyro.sample("z2", dist.Normal(q["h"] * z1 + q["k"], q["log_l"].exp()))

    def exact_elbo(self, x):
        """E_q[log p(x, z1, z2) - log q(z1, z2 | x)], summed over the datapoints."""
        q = self.params()
        m1, v1 = q["e"] * x + q["f"], torch.exp(2 * q["log_g"])
        h, k, l2 = q["h"], q["k"], torch.exp(2 * q["log_l"])
        ez1, ez1sq = m1, m1**2 + v1
        ez2, ez2sq = h * m1 + k, h**2 * ez1sq + 2 * h * k * m1 + k**2 + l2
        ez1z2 = h * ez1sq + k * m1
        a, b, s1sq = q["a"], q["b"], torch.exp(2 * q["log_s1"])
        c, d, ssq = q["c"], q["d"], torch.exp(2 * q["log_s"])
        log2pi = math.log(2 * math.pi)
        log_pz2 = -0.5 * log2pi - 0.5 * ez2sq
        sq1 = ez1sq + a**2 * ez2sq + b**2 - 2 * a * ez1z2 - 2 * b * ez1 + 2 * a * b * ez2
        log_pz1 = -0.5 * torch.log(2 * math.pi * s1sq) - sq1 / (2 * s1sq)
        sqx = (x - d) ** 2 - 2 * c * (x - d) * m1 + c**2 * ez1sq
        log_px = -0.5 * torch.log(2 * math.pi * ssq) - sqx / (2 * ssq)
        entropy = 0.5 * torch.log(2 * math.pi * math.e * v1) + 0.5 * torch.log(
            2 * math.pi * math.e * l2
        )
        return (log_pz2 + log_pz1 + log_px + entropy).sum()


class NoLatent:
    """Parameters only: the guide samples nothing; the bound is log p(x)."""

    units, nesting = ("data",), 1
    x = data(N)

    def model(self, x):
        loc = p("loc", init=0.4)
        with pyro.plate("data", N):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(self, x):
        pass


class SeparatePlates:
    """Latents in two separate plates (no plate holds every site): one weight per particle."""

    units, nesting = None, 1
    x = data(N)

    def model(self, x):
        w = p("w", init=0.6)
        with pyro.plate("plate_a", N):
            z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
            pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)
        with pyro.plate("plate_b", 3):
            u = pyro.sample("u", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
            pyro.sample("y", dist.Normal(u, 1.0), obs=x[:3])

    def guide(self, x):
        b, c = p("b", init=0.5), p("c", 3, init=0.2)
        with pyro.plate("plate_a", N):
            pyro.sample("z", dist.Normal(b * x, 0.8))
        with pyro.plate("plate_b", 3):
            pyro.sample("u", dist.Normal(c, 0.9))


class Sequential:
    """A sequential plate (a Python loop over ``pyro.plate``): no vectorised plate at all."""

    units, nesting = None, 0
    x = data(3)

    def model(self, x):
        w = p("w", init=0.6)
        for i in pyro.plate("seq", 3):
            z = pyro.sample(f"z_{i}", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
            pyro.sample(f"x_{i}", dist.Normal(w * z, 1.0), obs=x[i])

    def guide(self, x):
        b = p("b", init=0.5)
        for i in pyro.plate("seq", 3):
            pyro.sample(f"z_{i}", dist.Normal(b * x[i], 0.8))


ZOO = {
    "global_local": GlobalLocal,
    "nested": Nested,
    "user_plate": UserPlate,
    "subsampled": Subsampled,
    "masked": Masked,
    "scaled": Scaled,
    "two_sites": TwoSites,
    "no_latent": NoLatent,
    "separate_plates": SeparatePlates,
    "sequential": Sequential,
}
GLOBAL = [name for name, cls in ZOO.items() if cls.units is None]
LOCAL = [name for name, cls in ZOO.items() if cls.units is not None]


def params_of(m):
    """The param store's leaves that the model and guide use, after one run."""
    with poutine.trace(param_only=True) as tr:
        m.guide(m.x)
        m.model(m.x)
    return [site["value"].unconstrained() for site in tr.trace.nodes.values()]


def loss_and_grads(elbo, m, seed=0, params=None):
    params = params if params is not None else params_of(m)
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(m.model, m.guide, m.x)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [
        torch.zeros_like(q) if g is None else g for q, g in zip(params, grads, strict=True)
    ]


def pyro_loss_and_grads(elbo, model, guide, m, seed=0):
    """Pyro's loss and gradients, through ``loss_and_grads`` (RenyiELBO has no
    ``differentiable_loss``)."""
    params = params_of(m)
    for q in params:
        q.grad = None
    pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(model, guide, m.x)
    grads = [torch.zeros_like(q) if q.grad is None else q.grad.clone() for q in params]
    return torch.tensor(loss, dtype=F64), grads


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def assert_same(a, b):
    torch.testing.assert_close(a[0].to(F64), b[0].to(F64))
    torch.testing.assert_close(flat(a[1]), flat(b[1]))


# -- every estimator runs on every model, or refuses by name ------------------------------

#: (estimator, model) -> what the refusal says. Everything else must run.
REFUSALS = {
    ("nvil", "global_local"): r"nvil.*no plate holds every sample site",
    ("nvil", "separate_plates"): r"nvil.*no plate holds every sample site",
    ("score_function", "global_local"): r"baseline=batch.*site 'mu'.*baseline=particles",
    ("score_function", "separate_plates"): r"baseline=batch.*global latent",
    ("score_function", "sequential"): r"baseline=batch.*global latent",
    ("nvil", "sequential"): r"nvil.*no plate holds every sample site",
    ("sgvb_b", "two_sites"): r"sgvb_b.*model's order.*\['z2', 'z1'\].*\['z1', 'z2'\]",
}


@pytest.mark.filterwarnings("ignore:Failed to verify mean field")
@pytest.mark.parametrize("model_name", sorted(ZOO))
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_runs_on_every_model_or_refuses_naming_why(name, model_name):
    m = ZOO[model_name]()
    elbo = build_estimator(name, num_particles=3)
    refusal = REFUSALS.get((name, model_name))
    if refusal:
        with pytest.raises(EstimatorError, match=refusal):
            elbo.loss_and_grads(m.model, m.guide, m.x)
        return
    pyro.set_rng_seed(0)
    loss = elbo.loss_and_grads(m.model, m.guide, m.x)
    assert math.isfinite(loss)
    grads = [q.grad for q in params_of(m)]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


# -- against Pyro's own ELBOs on the same noise --------------------------------------------


@pytest.mark.parametrize("model_name", sorted(ZOO))
def test_estimator_a_is_pyros_trace_elbo_on_every_model(model_name):
    m = ZOO[model_name]()
    ours = loss_and_grads(build_estimator("sgvb_a", 3), m)
    nesting = m.nesting
    reference = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=nesting)
    assert_same(ours, pyro_loss_and_grads(reference, m.model, m.guide, m))
    # Pyro's own, through our registry (its plate nesting guessed without a random draw)
    assert_same(ours, loss_and_grads(build_estimator("trace_elbo", 3), m))


@pytest.mark.parametrize("model_name", sorted(set(ZOO) - {"two_sites"}))
def test_estimator_b_is_pyros_trace_mean_field_elbo(model_name):
    m = ZOO[model_name]()
    ours = loss_and_grads(build_estimator("sgvb_b", 3), m)
    reference = TraceMeanField_ELBO(
        num_particles=3, vectorize_particles=True, max_plate_nesting=m.nesting
    )
    assert_same(ours, pyro_loss_and_grads(reference, m.model, m.guide, m))


@pytest.mark.parametrize("model_name", sorted(ZOO))
def test_score_function_without_baseline_is_trace_elbo_with_sampled_sites(model_name):
    """Pyro's signals, Rao-Blackwellised by plates, for every shape of model."""
    m = ZOO[model_name]()
    ours = loss_and_grads(build_estimator("score_function", 3, baseline="none"), m)
    reference = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=m.nesting)
    guide = NonReparameterized()(m.guide)
    assert_same(ours, pyro_loss_and_grads(reference, m.model, guide, m))


@pytest.mark.parametrize("model_name", GLOBAL)
@pytest.mark.parametrize("name", ["iwae", "dreg", "iwae_stl", "vimco"])
def test_multi_sample_bounds_are_renyis_where_a_latent_is_global(name, model_name):
    """One importance weight per particle for the whole model: the bound's value is
    RenyiELBO(alpha=0)'s, and IWAE's gradient too."""
    m = ZOO[model_name]()
    renyi = RenyiELBO(
        alpha=0, num_particles=4, vectorize_particles=True, max_plate_nesting=m.nesting
    )
    expected = pyro_loss_and_grads(renyi, m.model, m.guide, m)
    ours = loss_and_grads(build_estimator(name, 4), m)
    torch.testing.assert_close(ours[0], expected[0].to(F64))
    if name == "iwae":
        torch.testing.assert_close(flat(ours[1]), flat(expected[1]))


@pytest.mark.parametrize("model_name", LOCAL)
def test_multi_sample_bounds_weigh_each_index_of_the_shared_plates(model_name):
    """Where every site lies in the named plates: one weight per index of them, log w summed
    within it from Pyro's scaled log-densities (MultiFrameTensor.sum_to), the plates'
    subsampling factor outside the logsumexp."""
    m = ZOO[model_name]()
    k = 4
    elbo = build_estimator("iwae", k)
    pyro.set_rng_seed(0)
    model_trace, guide_trace = elbo._get_trace(m.model, m.guide, (m.x,), {})
    layout = elbo.layout(model_trace, guide_trace)
    assert [f.name for f in layout.units] == list(m.units)
    assert layout.scale == getattr(m, "scale", 1.0)
    log_r = MultiFrameTensor()
    for sign, trace in ((1, model_trace), (-1, guide_trace)):
        for _, site in sample_sites(trace):
            log_r.add((site["cond_indep_stack"], sign * site["log_prob"]))
    frames = [f for _, s in sample_sites(model_trace) for f in s["cond_indep_stack"]]
    keep = {f for f in frames if f.name in (*m.units, "num_particles_vectorized")}
    per_unit = log_r.sum_to(keep) / layout.scale
    per_unit = per_unit.expand(layout.full_shape).reshape(k, -1)
    expected = -layout.scale * (torch.logsumexp(per_unit, 0) - math.log(k)).sum()
    pyro.set_rng_seed(0)
    loss = torch.tensor(elbo.loss(m.model, m.guide, m.x), dtype=F64)
    torch.testing.assert_close(loss, expected.detach())
    if layout.scale == 1.0:  # Pyro's RenyiELBO weighs the same units (it keeps N/M inside)
        renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)
        renyi.max_plate_nesting = m.nesting + 1
        pyro.set_rng_seed(0)
        torch.testing.assert_close(loss, torch.tensor(renyi.loss(m.model, m.guide, m.x), dtype=F64))


@pytest.mark.parametrize("autoguide", ["AutoNormal", "AutoDiagonalNormal"])
@pytest.mark.parametrize("model_name", ["global_local", "nested"])
def test_pyros_autoguides(autoguide, model_name):
    """Estimator A is Trace_ELBO with Pyro's autoguides; AutoDiagonalNormal's one joint
    latent lies outside every plate, so the multi-sample bounds weigh whole particles (where
    RenyiELBO would add that global log q to each datapoint's weight)."""
    from pyro.infer import autoguide as autoguides

    m = ZOO[model_name]()
    guide = getattr(autoguides, autoguide)(m.model)
    pyro.set_rng_seed(0)
    guide(m.x)
    trace_elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=m.nesting)
    for name in ("sgvb_a", "stl"):
        pyro.set_rng_seed(1)
        ours = build_estimator(name, 3).loss(m.model, guide, m.x)
        pyro.set_rng_seed(1)
        assert ours == pytest.approx(trace_elbo.loss(m.model, guide, m.x), rel=1e-12)
    iwae = build_estimator("iwae", 3)
    pyro.set_rng_seed(1)
    model_trace, guide_trace = iwae._get_trace(m.model, guide, (m.x,), {})
    if autoguide == "AutoDiagonalNormal":
        assert not iwae.layout(model_trace, guide_trace).local
        total = sum(s["log_prob"].reshape(3, -1).sum(-1) for _, s in sample_sites(model_trace))
        total = total - sum(
            s["log_prob"].reshape(3, -1).sum(-1) for _, s in sample_sites(guide_trace)
        )
        expected = -(torch.logsumexp(total, 0) - math.log(3)).item()
        pyro.set_rng_seed(1)
        assert iwae.loss(m.model, guide, m.x) == pytest.approx(expected, rel=1e-12)
    for name in ("dreg", "vimco", "score_function"):
        pyro.set_rng_seed(1)
        kwargs = {"baseline": "particles"} if name == "score_function" else {}
        assert math.isfinite(build_estimator(name, 3, **kwargs).loss_and_grads(m.model, guide, m.x))


def test_a_per_datapoint_weight_tempers_its_importance_weights():
    """The documented meaning of a tensor scale r_i inside the data plate: log w_i is
    multiplied by r_i within the logsumexp (K = 1: the ELBO weighted by r_i)."""
    m = Scaled()
    elbo = build_estimator("iwae", 4)
    pyro.set_rng_seed(0)
    model_trace, guide_trace = elbo._get_trace(m.model, m.guide, (m.x,), {})
    plain = sum(s["unscaled_log_prob"] for _, s in sample_sites(model_trace)) - sum(
        s["unscaled_log_prob"] for _, s in sample_sites(guide_trace)
    )
    expected = -(torch.logsumexp(m.weights * plain, 0) - math.log(4)).sum()
    pyro.set_rng_seed(0)
    assert elbo.loss(m.model, m.guide, m.x) == pytest.approx(expected.item())


# -- hierarchical guides: STL and DReG against the exact gradient --------------------------


class NaiveSTL(STL_ELBO):
    """STL with log q through each site's own sampling path only (what a per-site
    stop-gradient gives): q(z2|z1)'s dependence on z1 is lost. Still unbiased (the lost
    term has mean zero given z1) but not the path derivative: it does not vanish at the
    exact posterior. Here to show the checks below can tell."""

    def fixed_traces(self, guide_trace, with_model=False):
        return None


class NaiveDReG(DReG_ELBO):
    """DReG with d log w/dz from autograd through the sampled values, which follows z1 into
    q(z2|z1) and counts that path twice: not the doubly reparameterised gradient."""

    def fixed_traces(self, guide_trace, with_model=False):
        return None


def mean_and_se(elbo, m, params, repeats):
    draws = []
    pyro.set_rng_seed(1)
    for _ in range(repeats):
        loss = elbo.differentiable_loss(m.model, m.guide, m.x)
        draws.append(flat(torch.autograd.grad(loss, params)))
    draws = torch.stack(draws)
    return draws.mean(0), draws.std(0) / math.sqrt(repeats)


@pytest.fixture
def two_sites():
    m = TwoSites()
    params = params_of(m)
    exact = flat(torch.autograd.grad(-m.exact_elbo(m.x), params))
    return m, params, exact


@pytest.mark.parametrize(
    "elbo",
    [STL_ELBO(1), DReG_ELBO(1), build_estimator("sgvb_a", 1), build_estimator("iwae_stl", 1)],
    ids=["stl", "dreg_k1", "sgvb_a", "iwae_stl_k1"],
)
def test_path_derivative_estimators_are_unbiased_on_a_hierarchical_guide(elbo, two_sites):
    m, params, exact = two_sites
    mean, se = mean_and_se(elbo, m, params, 300)
    assert ((mean - exact).abs() <= Z * se + 1e-9).all(), (mean - exact) / se


def explicit_log_w(m, z1, z2):
    """log p(x, z1, z2) - log q(z1, z2 | x) of TwoSites written out, per sample [K, N]."""
    q = m.params()

    def normal(v, loc, log_scale):
        return -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((v - loc) / log_scale.exp()) ** 2

    log_p = (
        normal(z2, 0.0, torch.zeros((), dtype=F64))
        + normal(z1, q["a"] * z2 + q["b"], q["log_s1"])
        + normal(m.x, q["c"] * z1 + q["d"], q["log_s"])
    )
    log_q = normal(z1, q["e"] * m.x + q["f"], q["log_g"]) + normal(
        z2, q["h"] * z1 + q["k"], q["log_l"]
    )
    return log_p - log_q


@pytest.mark.parametrize(
    "elbo, naive, k",
    [(STL_ELBO(1), NaiveSTL(1), 1), (DReG_ELBO(4), NaiveDReG(4), 4)],
    ids=["stl", "dreg"],
)
def test_hierarchical_path_derivatives_follow_the_formula(elbo, naive, k):
    """The encoder's gradient is sum_k c_k sum_s (d log w_k/dz_ks) . (dz_ks/dphi) with the
    partial derivatives at the point (from log w written out, on leaf copies of the draws)
    and the total derivatives of the draws (autograd through the guide trace): c_k = 1/K for
    STL, w_k^2 for DReG; the decoder's is sum_k w_k grad log w_k (1/K for STL). The naive
    per-site versions (autograd through the sampled values) do not."""
    m = TwoSites()
    params = params_of(m)
    theta, phi = params[:6], params[6:]
    pyro.set_rng_seed(0)
    _, guide_trace = elbo._get_trace(m.model, m.guide, (m.x,), {})
    z1, z2 = guide_trace.nodes["z1"]["value"], guide_trace.nodes["z2"]["value"]
    leaves = [z1.detach().requires_grad_(), z2.detach().requires_grad_()]
    log_w = explicit_log_w(m, *leaves)
    partials = torch.autograd.grad(log_w.sum(), leaves)
    w = torch.softmax(log_w.detach(), 0)
    c = torch.full_like(w, 1.0 / k) if k == 1 else w**2
    path = sum((c * g * z).sum() for g, z in zip(partials, (z1, z2), strict=True))
    expected_phi = torch.autograd.grad(-path, phi)
    log_w_theta = explicit_log_w(m, z1.detach(), z2.detach())
    expected_theta = torch.autograd.grad(
        -(w * log_w_theta).sum() if k > 1 else -log_w_theta.mean(0).sum(), theta
    )
    for estimator, ok in ((elbo, True), (naive, False)):
        _, grads = loss_and_grads(estimator, m, seed=0, params=params)
        torch.testing.assert_close(flat(grads[:6]), flat(expected_theta))
        close = torch.allclose(flat(grads[6:]), flat(expected_phi), rtol=1e-6, atol=1e-9)
        assert close is ok, type(estimator).__name__


def test_dreg_and_iwae_estimate_the_same_gradient_on_a_hierarchical_guide(two_sites):
    """Both are unbiased for grad L_5 (no closed form): their means agree within Z combined
    standard errors, and DReG's encoder variance is the smaller."""
    m, params, _ = two_sites
    iwae, se1 = mean_and_se(build_estimator("iwae", 5), m, params, 300)
    dreg, se2 = mean_and_se(DReG_ELBO(5), m, params, 300)
    assert ((iwae - dreg).abs() < Z * (se1**2 + se2**2).sqrt()).all()
    phi = slice(6, 12)  # e, f, log_g, h, k, log_l: the guide's
    assert (se2[phi] ** 2).sum() < (se1[phi] ** 2).sum()


def test_stl_and_dreg_encoder_gradients_vanish_at_an_exact_hierarchical_posterior():
    """With x independent of z (c = 0) the posterior is the prior, p(z1|z2) p(z2), which
    this guide family holds exactly; at it the path derivative of log w is zero."""
    m = TwoSites()
    store = pyro.get_param_store()
    m.params()
    # prior: z2 ~ N(0, 1), z1 | z2 ~ N(a z2 + b, s1^2); its reversal z1 ~ N(b, a^2 + s1^2),
    # z2 | z1 ~ N(a (z1 - b) / (a^2 + s1^2), s1^2 / (a^2 + s1^2))
    a, b, s1sq = 0.8, 0.2, 0.5
    var1 = a**2 + s1sq
    values = {
        "a": a,
        "b": b,
        "log_s1": 0.5 * math.log(s1sq),
        "c": 0.0,
        "e": 0.0,
        "f": b,
        "log_g": 0.5 * math.log(var1),
        "h": a / var1,
        "k": -a * b / var1,
        "log_l": 0.5 * math.log(s1sq / var1),
    }
    for name, value in values.items():
        store[name] = torch.tensor(value, dtype=F64)
    params = params_of(m)
    phi = params[6:]
    for elbo in (STL_ELBO(1), DReG_ELBO(3), build_estimator("iwae_stl", 3)):
        pyro.set_rng_seed(0)
        loss = elbo.differentiable_loss(m.model, m.guide, m.x)
        g = flat(torch.autograd.grad(loss, phi))
        assert g.abs().max() < 1e-10, type(elbo).__name__
    pyro.set_rng_seed(0)
    g = flat(torch.autograd.grad(NaiveSTL(1).differentiable_loss(m.model, m.guide, m.x), phi))
    assert g.abs().max() > 1e-3


# -- enumeration, plate nesting, the variance lab ------------------------------------------


def enumerated_model(x):
    probs = p("probs_p", init=0.0).sigmoid()
    with pyro.plate("data", N):
        c = pyro.sample("c", dist.Bernoulli(probs.expand(N)))
        pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def enumerated_guide(x):
    logits = p("logits_q", N, init=0.5)
    with pyro.plate("data", N):
        pyro.sample("c", dist.Bernoulli(logits=logits), infer={"enumerate": "parallel"})


@pytest.mark.parametrize("name", ["score_function", "vimco", "nvil"])
def test_score_function_estimators_warn_of_enumerated_sites_as_trace_elbo_does(name):
    x = data(N)
    with pytest.warns(UserWarning, match=rf"{name} samples the guide sites \['c'\].*enumerat"):
        build_estimator(name, 3).loss(enumerated_model, enumerated_guide, x)


@pytest.mark.parametrize("name", ["sgvb_a", "iwae", "dreg", "stl", "iwae_stl", "sgvb_b"])
def test_pathwise_estimators_refuse_a_discrete_site_naming_it(name):
    with pytest.raises(EstimatorError, match=rf"{name} needs reparameterised.*site 'c'"):
        build_estimator(name, 3).loss(enumerated_model, enumerated_guide, data(N))


def test_a_model_latent_the_guide_does_not_sample_is_named():
    m = GlobalLocal()

    def guide(x):  # samples z, not mu
        with pyro.plate("data", N):
            pyro.sample("z", dist.Normal(x, 1.0))

    with pytest.raises(EstimatorError, match=r"latent sites \['mu'\] are not sampled"):
        build_estimator("iwae", 2).loss(m.model, guide, m.x)


def test_plate_nesting_is_guessed_without_a_random_draw_or_taken_as_given():
    m = Nested()
    losses, after = [], []
    for nesting in (None, 2, 3):
        elbo = build_estimator("iwae", 3, max_plate_nesting=nesting)
        pyro.set_rng_seed(0)
        losses.append(elbo.loss(m.model, m.guide, m.x))
        after.append(torch.rand(()).item())
        assert elbo.plate_nesting == (2 if nesting is None else nesting)
    assert losses[0] == losses[1] == pytest.approx(losses[2])
    assert after[0] == after[1] == after[2]


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
@pytest.mark.parametrize("name", ["iwae", "trace_elbo", "meanfield"])
def test_a_bad_plate_nesting_is_refused_by_name(name, bad):
    with pytest.raises(ArgumentError, match=r"max_plate_nesting.*integer >= 0"):
        build_estimator(name, 2, max_plate_nesting=bad)


def test_too_small_a_plate_nesting_is_a_named_error_not_a_collision():
    m = Nested()
    with pytest.raises((EstimatorError, ValueError), match=r"z|plate"):
        build_estimator("iwae", 3, max_plate_nesting=1).loss(m.model, m.guide, m.x)


def test_the_variance_lab_on_a_model_with_a_global_latent_groups_by_site():
    m = GlobalLocal()
    rows = gradient_variance(
        m.model,
        m.guide,
        m.x,
        estimators=["sgvb_a", "stl"],
        repeats=20,
        groups="site",
        per_datapoint=False,
    )
    groups = {r["group"] for r in rows}
    # a, log_sa parameterise q(mu); b, c, log_s q(z); w the likelihood p(x)
    assert groups == {"q:mu", "q:z", "p:x"}
    sizes = {r["group"]: r["num_params"] for r in rows}
    assert sizes == {"q:mu": 2, "q:z": 3, "p:x": 1}
    assert all(math.isfinite(r["total_variance"]) for r in rows)


def test_the_variance_lab_per_datapoint_divides_by_the_shared_plates_units():
    m = UserPlate()
    rows = gradient_variance(m.model, m.guide, m.x, estimators=["sgvb_a"], repeats=5)
    assert {r["num_data"] for r in rows} == {2 * N}
    with pytest.raises(ArgumentError, match=r"per_datapoint.*share no plate"):
        gradient_variance(GlobalLocal().model, GlobalLocal().guide, GlobalLocal.x, repeats=5)
