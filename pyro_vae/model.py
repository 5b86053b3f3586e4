"""The paper's generative model and recognition model as Pyro programs (sec. 3, appendix C).

``VAE(encoder, decoder, prior)`` takes any networks: the encoder maps x to the (loc,
scale) of the Gaussian q_phi(z|x), the decoder maps z to what the likelihood takes (logits
for the Bernoulli), as in Pyro's own VAE example. :meth:`VAE.mlp` builds the paper's MLPs.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from .errors import ArgumentError, refuse
from .likelihoods import LikelihoodLike, get_likelihood
from .networks import GaussianEncoder, build_decoder, init_parameters
from .priors import Prior, StandardNormal, build_prior

# PyroModule mirrors parameters into Pyro's global param store by name. Each VAE gets
# its own name prefix, so two models in one process (tests, sweeps, the variance lab)
# never alias each other's parameters, and its entries leave the store with the model.
_instance_ids = itertools.count()

#: The settings :meth:`VAE.mlp` takes besides ``x_dim`` and ``num_data``: what a run
#: directory's ``config.yaml`` records of the model, and :meth:`VAE.from_settings` reads.
MLP_SETTINGS = (
    "latent_dim",
    "hidden_dims",
    "likelihood",
    "activation",
    "decoder_min_var",
    "init",
    "init_std",
    "prior",
)

Init = str | Callable[[nn.Module], None] | None


def _forget_params(prefix: str) -> None:
    store = pyro.get_param_store()
    for name in [k for k in store.keys() if k.startswith(prefix)]:
        del store[name]


class _FixedPrior(Prior):
    """A Pyro distribution given as the prior: returned as it is (no learnable parameters)."""

    def __init__(self, distribution: dist.TorchDistribution):
        super().__init__(distribution.event_shape[0])
        self.distribution = distribution
        self.name = type(distribution).__name__

    def forward(self) -> dist.TorchDistribution:
        return self.distribution


class VAE(PyroModule):
    """Encoder q_phi(z|x), decoder p_theta(x|z) and prior p(z) of the AEVB paper.

    Args:
        encoder: ``nn.Module`` mapping x [..., D] to (loc, scale) of q(z|x), each [..., Nz].
        decoder: ``nn.Module`` mapping z [..., Nz] to the likelihood's input.
        prior: a :class:`~pyro_vae.priors.Prior` (learnable or not; a
            :class:`~pyro_vae.priors.VampPrior` without an encoder takes this VAE's), a Pyro
            distribution with event shape [Nz], or None for N(0, I) (then ``latent_dim``).
        likelihood: ``"bernoulli"`` (the decoder gives logits), ``"gaussian"`` (it gives
            mean and log variance), a :class:`~pyro_vae.likelihoods.Likelihood`, or any
            callable from the decoder's output to a distribution with event shape [D].
        num_data: N, the training set's size: the data plate's size, so the model's
            log-density is the full-data one (eq. 8). :func:`pyro_vae.train` sets it.
        init: ``"torch"`` (keep the networks' initialisation), ``"paper"`` (every
            parameter ~ N(0, init_std^2), sec. 5), or a function called on each network.
        latent_dim: Nz, needed only when ``prior`` is None.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior | dist.TorchDistribution | None = None,
        *,
        likelihood: LikelihoodLike = "bernoulli",
        num_data: int | None = None,
        init: Init = None,
        init_std: float = 0.01,
        latent_dim: int | None = None,
    ):
        super().__init__(name=f"vae{next(_instance_ids)}")
        weakref.finalize(self, _forget_params, self._pyro_name + ".")
        for key, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise refuse(key, net, "a torch.nn.Module")
        self.encoder, self.decoder = encoder, decoder
        for net in (encoder, decoder):
            if callable(init):
                init(net)
            elif init is not None:
                init_parameters(net, init, init_std)
        if prior is None:
            if latent_dim is None:
                raise ArgumentError("VAE needs a prior, or latent_dim for the N(0, I) prior")
            prior = StandardNormal(latent_dim)
        elif isinstance(prior, torch.distributions.Distribution):
            prior = _FixedPrior(prior)
        elif not isinstance(prior, Prior):
            raise refuse("prior", prior, "a pyro_vae.priors.Prior, a distribution, or None")
        self.prior = prior
        prior.bind(self)
        self.likelihood = get_likelihood(likelihood)
        self.num_data = num_data
        #: How to build this model again (:meth:`mlp` sets it); recorded in run directories.
        self.settings: dict[str, Any] | None = None

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    @classmethod
    def mlp(
        cls,
        x_dim: int,
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (500,),
        likelihood: str = "bernoulli",
        prior: Prior | Mapping[str, Any] | None = None,
        activation: str = "tanh",
        decoder_min_var: float = 1e-4,
        init: str = "torch",
        init_std: float = 0.01,
        num_data: int | None = None,
    ) -> VAE:
        """The paper's VAE (appendix C): MLP encoder and decoder with the same hidden widths
        (``hidden_dims``, the decoder's in reverse; ``[]`` gives linear maps), a Bernoulli or
        Gaussian likelihood, and ``prior`` (None: N(0, I); a Prior; or a specification
        :func:`~pyro_vae.priors.build_prior` takes, built after the networks are
        initialised, since a VampPrior draws its pseudo-inputs from the same random stream).
        """
        hidden_dims = list(hidden_dims)
        encoder = GaussianEncoder(x_dim, latent_dim, hidden_dims, activation)
        decoder = build_decoder(
            likelihood, latent_dim, x_dim, hidden_dims[::-1], activation, decoder_min_var
        )
        init_parameters(encoder, init, init_std)
        init_parameters(decoder, init, init_std)
        if prior is None:
            prior = StandardNormal(latent_dim)
            prior.name = "standard_normal"
        elif isinstance(prior, Mapping):
            prior = build_prior(prior, latent_dim, x_dim=x_dim, encoder=encoder)
        vae = cls(encoder, decoder, prior, likelihood=likelihood, num_data=num_data)
        vae.settings = {
            "latent_dim": latent_dim,
            "hidden_dims": hidden_dims,
            "likelihood": likelihood,
            "activation": activation,
            "decoder_min_var": decoder_min_var,
            "init": init,
            "init_std": init_std,
            "prior": vae.prior.spec(),
        }
        return vae

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], x_dim: int, num_data: int | None = None
    ) -> VAE:
        """:meth:`mlp` with the keys of :data:`MLP_SETTINGS` read from ``settings`` (a run's
        configuration, say)."""
        missing = [k for k in MLP_SETTINGS if k not in settings]
        if missing:
            raise ArgumentError(
                f"the settings do not describe the paper's MLP VAE: {missing} missing (a model "
                "of your own is loaded by passing it: load_run(run_dir, vae=...))"
            )
        return cls.mlp(x_dim, num_data=num_data, **{k: settings[k] for k in MLP_SETTINGS})

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

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q_phi(z|x) = N(mu(x), diag sigma^2(x)), reparameterised (sec. 2.4)."""
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p_theta(x|z)."""
        return self.likelihood(self.decoder(z))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z]: the images the paper draws (Figures 4 and 5)."""
        output = self.decoder(z)
        mean = getattr(self.likelihood, "mean", None)
        return mean(output) if callable(mean) else self.likelihood(output).mean

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """p(z) p_theta(x|z) for a minibatch ``x`` [M, D] (``idx``: its dataset indices)."""
        pyro.module(self._pyro_name + ".decoder", self.decoder)
        with self._plate(x, idx):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decode(z), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """q_phi(z|x) = N(mu(x), diag sigma^2(x)), reparameterised (sec. 2.4)."""
        pyro.module(self._pyro_name + ".encoder", self.encoder)
        with self._plate(x, idx):
            pyro.sample("z", self.encode(x))

    def log_weights(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape [K, M] (unscaled, per datapoint).

        The same densities as ``model``/``guide`` (tests check this), written directly in
        torch so evaluation avoids Pyro's tracing: the mean over K=1 is the ELBO estimate,
        logsumexp over K minus log K the importance-sampled log p(x).
        """
        q = self.encode(x)
        z = q.rsample((num_samples,))
        log_px_z = self.decode(z).log_prob(x)
        return log_px_z + self.prior().log_prob(z) - q.log_prob(z)
