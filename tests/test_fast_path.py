"""The fast path computes the same estimators as Pyro's traces, and the optimiser's speed-ups
change nothing but speed."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_vae.config import (
    ConfigError,
    build_model,
    build_training_method,
    compose_config,
    validate_config,
)
from pyro_vae.estimators import build_estimator
from pyro_vae.fast import direct_bound
from pyro_vae.methods import AEVB
from pyro_vae.optim import build_optimizer, guarded_step

# Float32 sums of the same terms in a different order: a relative error of a few ulps.
RTOL = 1e-5


def tiny_vae(*overrides: str, x_dim: int = 12, num_data: int = 500):
    cfg = compose_config(["hidden_dims=[16]", "latent_dim=3", *overrides])
    pyro.set_rng_seed(0)
    return cfg, build_model(cfg, x_dim, num_data)


def loss_and_grads(loss_fn, vae, seed: int) -> tuple[float, list[torch.Tensor]]:
    pyro.set_rng_seed(seed)
    loss = loss_fn()
    params = [p for p in vae.parameters() if p.requires_grad]
    return loss.item(), torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize(
    ("estimator", "particles", "overrides"),
    [
        ("trace_elbo", 1, []),
        ("trace_elbo", 3, ["prior=laplace"]),  # A takes any prior
        ("sgvb_a", 2, ["likelihood=gaussian"]),
        ("sgvb_b", 1, []),
        ("sgvb_b", 4, ["prior=learnable_normal"]),  # gradients reach the prior's parameters
    ],
)
def test_direct_bound_equals_the_traced_estimator(one_thread, estimator, particles, overrides):
    cfg, vae = tiny_vae(f"estimator={estimator}", *overrides)
    x = torch.rand(7, 12).bernoulli() if cfg.likelihood == "bernoulli" else torch.rand(7, 12)
    idx = torch.arange(7)
    elbo = build_estimator(cfg.estimator, particles)
    traced = loss_and_grads(lambda: elbo.differentiable_loss(vae.model, vae.guide, x, idx), vae, 1)
    direct = loss_and_grads(lambda: -direct_bound(vae, x, estimator, particles), vae, 1)
    assert direct[0] == pytest.approx(traced[0], rel=RTOL)
    for g_direct, g_traced in zip(direct[1], traced[1], strict=True):
        assert torch.allclose(g_direct, g_traced, rtol=RTOL, atol=RTOL * g_traced.abs().max())


@pytest.mark.parametrize("estimator", ["trace_elbo", "sgvb_b"])
def test_fast_training_steps_equal_traced_steps(one_thread, estimator):
    """Same initialisation and noise: ten steps of each path end at the same parameters."""
    x = torch.rand(100, 12).bernoulli()
    models = []
    for fast in ("false", "true"):
        cfg, vae = tiny_vae(f"estimator={estimator}", f"fast={fast}", "lr=0.01")
        method = build_training_method(cfg, vae)
        assert isinstance(method, AEVB) and (method.fast_estimator is not None) == (fast == "true")
        pyro.set_rng_seed(2)
        losses = [method.step(x[i : i + 10], torch.arange(i, i + 10)) for i in range(0, 100, 10)]
        models.append((losses, vae.state_dict()))
    (traced_losses, traced_state), (fast_losses, fast_state) = models
    assert fast_losses == pytest.approx(traced_losses, rel=RTOL)
    for name, value in traced_state.items():
        assert torch.allclose(fast_state[name], value, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize(
    "overrides", [["estimator=iwae"], ["estimator=score_function"], ["method=wake_sleep"]]
)
def test_fast_path_refuses_what_it_does_not_compute(overrides):
    with pytest.raises(ConfigError, match=r"fast=True is not allowed.*sgvb_a"):
        validate_config(compose_config(["fast=true", *overrides]))


@pytest.mark.parametrize("name", ["adam", "adagrad"])
def test_optimizer_is_fused_and_releases_gradients(name):
    cfg, vae = tiny_vae(f"optim={name}")
    optim = build_optimizer(vae.parameters(), cfg.optim.name, lr=cfg.lr)
    assert all(group["fused"] for group in optim.param_groups)
    before = [p.detach().clone() for p in vae.parameters()]
    (-direct_bound(vae, torch.rand(5, 12).bernoulli(), "sgvb_a")).backward()
    guarded_step(optim)
    assert all(p.grad is None for p in vae.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(vae.parameters(), before, strict=True))
