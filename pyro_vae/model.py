"""The paper's generative model and recognition model as Pyro programs (sec. 3, appendix C).

``VAE.model`` is p(z) p_theta(x|z) and ``VAE.guide`` is q_phi(z|x); both run inside a
``pyro.plate`` over the minibatch whose ``size`` is the number of training points N, so
every estimator built on their traces is scaled by N/M and estimates the full-data bound
of eq. 8.

The encoder and decoder are plain ``torch.nn.Module`` objects that ``model`` and ``guide``
register with ``pyro.module`` (as Pyro's VAE example does), so SVI sees their parameters
while code outside Pyro's handlers (evaluation, ``fast=true``) calls them at plain-PyTorch
cost: a ``PyroModule`` network sends a ``pyro.param`` message at every parameter access.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from typing import Any

import pyro
import torch
from pyro.nn import PyroModule

from .networks import GaussianEncoder, build_decoder, init_parameters
from .priors import Prior, build_prior

# PyroModule mirrors parameters into Pyro's global param store by name. Each VAE gets
# its own name prefix, so two models in one process (tests, sweeps, the variance lab)
# never alias each other's parameters, and its entries leave the store with the model.
_instance_ids = itertools.count()


def _forget_params(prefix: str) -> None:
    store = pyro.get_param_store()
    for name in [k for k in store.keys() if k.startswith(prefix)]:
        del store[name]


class VAE(PyroModule):
    """Encoder q_phi(z|x), decoder p_theta(x|z) and prior p(z) of the AEVB paper."""

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        hidden_dims: Sequence[int],
        likelihood: str,
        prior: Prior | None,
        activation: str = "tanh",
        decoder_min_var: float = 1e-4,
        num_data: int | None = None,
    ):
        super().__init__(name=f"vae{next(_instance_ids)}")
        weakref.finalize(self, _forget_params, self._pyro_name + ".")
        hidden_dims = list(hidden_dims)
        self.x_dim, self.latent_dim, self.likelihood = x_dim, latent_dim, likelihood
        self.hidden_dims = hidden_dims
        self.num_data = num_data
        self.encoder = GaussianEncoder(x_dim, latent_dim, hidden_dims, activation)
        # The decoder mirrors the encoder's widths (appendix C: same number of hidden units).
        self.decoder = build_decoder(
            likelihood, latent_dim, x_dim, hidden_dims[::-1], activation, decoder_min_var
        )
        self.prior = prior

    def data_scale(self, batch_size: int) -> float:
        """N/M: the weight of a minibatch of M points in the full-data bound (eq. 8); 1 when
        ``num_data`` is not set."""
        return (self.num_data or batch_size) / batch_size

    def _plate(self, x: torch.Tensor, idx: torch.Tensor | None) -> pyro.plate:
        batch = x.shape[0]
        size = self.num_data or batch
        if idx is None:
            idx = torch.arange(batch, device=x.device)
        # An explicit subsample avoids pyro.plate's randperm(N) per step; scale = N / M.
        return pyro.plate("data", size, subsample=idx)

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """p(z) p_theta(x|z) for a minibatch ``x`` [M, D] (``idx``: its dataset indices)."""
        pyro.module(self._pyro_name + ".decoder", self.decoder)
        with self._plate(x, idx):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decoder.distribution(z), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """q_phi(z|x) = N(mu(x), diag sigma^2(x)), reparameterised (sec. 2.4)."""
        pyro.module(self._pyro_name + ".encoder", self.encoder)
        with self._plate(x, idx):
            pyro.sample("z", self.encoder.distribution(x))

    def log_weights(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape [K, M] (unscaled, per datapoint).

        The same densities as ``model``/``guide`` (tests check this), written directly in
        torch so evaluation avoids Pyro's tracing: the mean over K=1 is the ELBO estimate,
        logsumexp over K minus log K the importance-sampled log p(x).
        """
        q = self.encoder.distribution(x)
        z = q.rsample((num_samples,))
        log_px_z = self.decoder.distribution(z).log_prob(x)
        return log_px_z + self.prior().log_prob(z) - q.log_prob(z)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z]: the images the paper draws (Figures 4 and 5)."""
        return self.decoder.mean(z)


def build_vae(cfg: Any, x_dim: int, num_data: int | None = None) -> VAE:
    """The VAE a run's configuration describes, initialised as ``cfg.init`` says."""
    vae = VAE(
        x_dim=x_dim,
        latent_dim=cfg.latent_dim,
        hidden_dims=list(cfg.hidden_dims),
        likelihood=cfg.likelihood,
        prior=None,
        activation=cfg.activation,
        decoder_min_var=cfg.decoder_min_var,
        num_data=num_data,
    )
    init_parameters(vae.encoder, cfg.init, cfg.init_std)
    init_parameters(vae.decoder, cfg.init, cfg.init_std)
    # Built after the networks: some priors (VampPrior) are defined through the encoder.
    vae.prior = build_prior(cfg.prior, cfg.latent_dim, x_dim=x_dim, encoder=vae.encoder)
    return vae
