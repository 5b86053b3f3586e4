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

from .checks import HIDDEN_DIMS, Allowed, check_arguments, integer, one_of, positive, resolve_device
from .errors import ArgumentError, refuse
from .guides import DiagonalGaussian, GuideFamily, GuideLike, build_guide
from .latents import (
    DISCRETE_PRIORS,
    LogitsEncoder,
    check_prior,
    default_prior,
    latent_family,
    num_categories_of,
)
from .layers import VAMP_ON_STACK, LatentStack, layer_specs
from .likelihoods import LikelihoodLike, get_likelihood, likelihood_heads, upgrade_settings
from .networks import (
    ACTIVATIONS,
    INITS,
    GaussianEncoder,
    MLPDecoder,
    build_user_network,
    init_parameters,
)
from .priors import Prior, StandardNormal, VampPrior, build_prior
from .targets import check_params, import_target, path_of

# PyroModule mirrors parameters into Pyro's global param store by name. Each VAE gets
# its own name prefix, so two models in one process (tests, sweeps, the variance lab)
# never alias each other's parameters, and its entries leave the store with the model.
_instance_ids = itertools.count()

#: The settings :meth:`VAE.build` takes besides ``x_dim``, ``num_data`` and
#: ``image_shape``: what a run directory's ``config.yaml`` records of the model, and
#: :meth:`VAE.from_settings` reads.
MODEL_SETTINGS = (
    "latent_dim",
    "hidden_dims",
    "likelihood",
    "activation",
    "network",
    "init",
    "init_std",
    "prior",
    "upper_layers",
    "guide",
)
#: What the numeric and named arguments of :meth:`VAE.build` (and :meth:`VAE.mlp`,
#: ``VAE(...)``) allow; the configuration's keys of the same names are declared with these
#: checks (:mod:`pyro_vae.config.schema`), so a model is refused in the same words from
#: Python and from the command line. ``num_data`` may also be None.
MODEL_CHECKS: dict[str, Allowed] = {
    "x_dim": integer(1),
    "latent_dim": integer(1),
    "hidden_dims": HIDDEN_DIMS,
    "activation": one_of(sorted(ACTIVATIONS)),
    "init": one_of(INITS),
    "init_std": positive(),
    "num_data": integer(1),
}
IMAGE_SHAPE = Allowed(
    "None, (H, W) or (C, H, W) (positive integers)",
    lambda v: (
        isinstance(v, list | tuple)
        and len(v) in (2, 3)
        and all(MODEL_CHECKS["x_dim"].accepts(s) for s in v)
    ),
)

#: Why a VampPrior takes only the diagonal Gaussian guide.
VAMP_NEEDS_DIAGONAL = (
    "the VampPrior's components are the encoder's diagonal Gaussians at its pseudo-inputs, "
    "not this guide family's q(z|u); use guide=diagonal with prior=vamp, or another prior"
)

#: The guide family of runs recorded before there was a choice: the paper's diagonal Gaussian.
DEFAULT_GUIDE = {"name": "diagonal", "_target_": "pyro_vae.guides.DiagonalGaussian"}

#: The networks :meth:`VAE.build` makes by name (``network=``); a mapping with
#: ``encoder._target_`` and ``decoder._target_`` names a user's own classes.
NETWORKS = ("mlp", "conv")

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
        likelihood: a name (:data:`~pyro_vae.likelihoods.LIKELIHOODS`: ``"bernoulli"``, the
            decoder gives logits; ``"gaussian"``, it gives the mean's pre-sigmoid and the log
            variance; ...), a specification, a :class:`~pyro_vae.likelihoods.Likelihood`, or
            any callable from the decoder's output to a distribution with event shape [D].
        num_data: N, the training set's size: the data plate's size, so the model's
            log-density is the full-data one (eq. 8). :func:`pyro_vae.train` sets it.
        init: ``"torch"`` (keep the networks' initialisation), ``"paper"`` (every
            parameter ~ N(0, init_std^2), sec. 5), or a function called on each network.
        latent_dim: Nz, needed only when ``prior`` is None.
        upper_layers: stochastic layers above the first, a
            :class:`~pyro_vae.layers.LatentStack` (its ``dims[0]`` the encoder's output
            width, its top the prior's); None: the one layer ``z``.
        guide: the family of q(z|x) (of the first layer z_1) that the encoder's output
            parameterises, a :class:`~pyro_vae.guides.GuideFamily` or a specification
            :func:`~pyro_vae.guides.build_guide` takes; None: the paper's diagonal Gaussian
            (:class:`~pyro_vae.guides.DiagonalGaussian`). Held as ``vae.guide_family``.
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
        upper_layers: LatentStack | None = None,
        guide: GuideLike = None,
    ):
        super().__init__(name=f"vae{next(_instance_ids)}")
        weakref.finalize(self, _forget_params, self._pyro_name + ".")
        for key, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise refuse(key, net, "a torch.nn.Module")
        check_arguments(
            {"num_data": num_data, "init_std": init_std, "latent_dim": latent_dim},
            MODEL_CHECKS,
            nullable=("num_data", "latent_dim"),
        )
        if not (init is None or callable(init)):
            MODEL_CHECKS["init"].check("init", init)
        self.encoder, self.decoder = encoder, decoder
        if upper_layers is not None and not isinstance(upper_layers, LatentStack):
            raise refuse("upper_layers", upper_layers, "a pyro_vae.layers.LatentStack or None")
        self.stack = upper_layers if upper_layers is not None and len(upper_layers) > 1 else None
        for net in (encoder, decoder):
            if callable(init):
                init(net)
            elif init is not None:
                init_parameters(net, init, init_std)
        if prior is None:
            if latent_dim is None:
                raise ArgumentError("VAE needs a prior, or latent_dim for the N(0, I) prior")
            if self.stack is not None:
                latent_dim = self.stack.top_dim
            family = latent_family(guide)
            if family == "gaussian":
                prior = StandardNormal(latent_dim)
            else:  # Bernoulli(1/2), the uniform categorical
                prior = default_prior(family, latent_dim, num_categories_of(guide))
        elif isinstance(prior, torch.distributions.Distribution):
            prior = _FixedPrior(prior)
        elif not isinstance(prior, Prior):
            raise refuse("prior", prior, "a pyro_vae.priors.Prior, a distribution, or None")
        if self.stack is not None and isinstance(prior, VampPrior):
            raise ArgumentError(VAMP_ON_STACK, "prior")
        if self.stack is not None and prior.latent_dim != self.stack.top_dim:
            raise refuse(
                "prior",
                f"a prior over R^{prior.latent_dim}",
                f"a prior over the top layer's R^{self.stack.top_dim}",
            )
        self.prior = prior
        prior.bind(self)
        self.likelihood = get_likelihood(likelihood)
        self.num_data = num_data
        if guide is None:
            guide = DiagonalGaussian(self.latent_dim)
        elif not isinstance(guide, GuideFamily):
            guide = build_guide(guide, self.latent_dim)
        if guide.latent_dim != self.latent_dim:
            raise refuse(
                "guide",
                f"a guide family over R^{guide.latent_dim}",
                f"a family over the first layer's R^{self.latent_dim}",
            )
        if isinstance(prior, VampPrior) and not isinstance(guide, DiagonalGaussian):
            raise ArgumentError(f"guide={guide.name}: {VAMP_NEEDS_DIAGONAL}", "guide")
        if latent_family(guide) != "gaussian" or isinstance(prior, DISCRETE_PRIORS):
            check_prior(latent_family(guide), prior, guide.name)
        #: q(z|x)'s family (:mod:`pyro_vae.guides`), applied to the encoder's output.
        self.guide_family = guide
        guide.bind(self)
        #: How to build this model again (:meth:`mlp` sets it); recorded in run directories.
        self.settings: dict[str, Any] | None = None

    @property
    def latent_dim(self) -> int:
        """Nz of the first stochastic layer z (z_1): the encoder's output, the decoder's
        input. The prior's space is the top layer's, ``prior.latent_dim``."""
        return self.stack.dims[0] if self.stack is not None else self.prior.latent_dim

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """The model's latent sites from the first layer up: ``("z",)``, or ``("z1", ...,
        "zL")`` with upper layers."""
        return self.stack.site_names if self.stack is not None else ("z",)

    def require_one_layer(self, what: str) -> None:
        """Refuse ``what`` (a computation over the one latent z) for a VAE with upper layers."""
        if self.stack is not None:
            raise ArgumentError(
                f"{what} works on one stochastic layer z, but this VAE has upper_layers "
                f"(latent sites {list(self.latent_sites)}); use a VAE without upper_layers"
            )

    def recognition_parameters(self) -> list[nn.Parameter]:
        """phi: the encoder's parameters, its guide family's (a flow's weights; none for the
        diagonal Gaussian) and those of the upper layers' q(z_{l+1} | z_l)."""
        params = list(self.encoder.parameters()) + list(self.guide_family.parameters())
        if self.stack is not None:
            params += list(self.stack.up.parameters())
        return params

    def descend(self, z: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """z_1 from a point ``z`` of the prior's space (the top layer), through the upper
        layers' conditional means (or draws, ``sample``); ``z`` itself for one layer."""
        return self.stack.descend(z, sample) if self.stack is not None else z

    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """E_q[z_l | x] for each stochastic layer, [M, dim_l]: the encoder's loc for the
        first, Monte Carlo over q's upper layers for the others
        (:meth:`~pyro_vae.layers.LatentStack.posterior_means`). With another guide family
        than the diagonal Gaussian, E_q[z_1|x] is q's mean where it has one (full covariance:
        its loc), else the mean of ``num_samples`` draws (a flow's), and the upper layers'
        are Rao-Blackwellised means over those draws of z_1."""
        if isinstance(self.guide_family, DiagonalGaussian):
            loc, scale = self.encoder(x)
            return self.stack.posterior_means(loc, scale) if self.stack is not None else [loc]
        return self._posterior_means_of_family(x)

    @torch.no_grad()
    def _posterior_means_of_family(self, x: torch.Tensor, num_samples: int = 200) -> list:
        q = self.encode(x)
        try:
            first = q.mean
        except NotImplementedError:
            first = None
        if first is not None and self.stack is None:
            return [first]
        z = q.sample((num_samples,))
        means = [z.mean(0) if first is None else first]
        for _, layer in self.stack.upward() if self.stack is not None else ():
            q_up = layer.distribution(z)
            means.append(q_up.mean.mean(0))
            z = q_up.sample()
        return means

    @classmethod
    def mlp(
        cls,
        x_dim: int,
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (500,),
        likelihood: LikelihoodLike = "bernoulli",
        prior: Prior | Mapping[str, Any] | None = None,
        activation: str = "tanh",
        init: str = "torch",
        init_std: float = 0.01,
        num_data: int | None = None,
        upper_layers: Sequence[Mapping[str, Any]] = (),
        device: str | torch.device | None = None,
        guide: GuideLike = None,
    ) -> VAE:
        """The paper's VAE (appendix C): MLP encoder and decoder with the same hidden widths
        (``hidden_dims``, the decoder's in reverse; ``[]`` gives linear maps), the decoder
        giving what ``likelihood`` takes (a name, a specification, or a
        :class:`~pyro_vae.likelihoods.Likelihood`), and ``prior`` (None: N(0, I); a Prior; or
        a specification :func:`~pyro_vae.priors.build_prior` takes, built after the
        networks are initialised, since a VampPrior draws its pseudo-inputs from the same
        random stream). ``upper_layers``: stochastic layers above z (Burda et al.'s two
        layers: ``latent_dim=100, hidden_dims=[200, 200], upper_layers=[{"latent_dim": 50,
        "hidden_dims": [100, 100]}]``; :mod:`pyro_vae.layers`), the prior on the top one.
        ``guide``: q(z|x)'s family (None: the paper's diagonal Gaussian; a
        :class:`~pyro_vae.guides.GuideFamily`, a shipped family's name or a specification
        :func:`~pyro_vae.guides.build_guide` takes), built after the prior. ``device``: where
        the model lives (``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device``; it is
        initialised on the CPU and moved, so it starts from the same numbers on every device).
        :meth:`build` with ``network="mlp"``.

        Every argument is checked first: ``x_dim``, ``latent_dim`` and ``num_data`` are
        integers >= 1 (``num_data`` may be None), ``hidden_dims`` positive integers,
        ``activation`` one of ``tanh``, ``relu``, ``softplus``, ``init`` ``torch`` or
        ``paper`` and ``init_std`` a finite number > 0; anything else is an
        :class:`~pyro_vae.errors.ArgumentError` naming the argument.
        """
        return cls.build(
            x_dim,
            network="mlp",
            latent_dim=latent_dim,
            hidden_dims=hidden_dims,
            likelihood=likelihood,
            prior=prior,
            activation=activation,
            init=init,
            init_std=init_std,
            num_data=num_data,
            upper_layers=upper_layers,
            device=device,
            guide=guide,
        )

    @classmethod
    def build(
        cls,
        x_dim: int,
        network: str | Mapping[str, Any] = "mlp",
        *,
        image_shape: Sequence[int] | None = None,
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (500,),
        likelihood: LikelihoodLike = "bernoulli",
        prior: Prior | Mapping[str, Any] | None = None,
        activation: str = "tanh",
        init: str = "torch",
        init_std: float = 0.01,
        num_data: int | None = None,
        upper_layers: Sequence[Mapping[str, Any]] | None = (),
        device: str | torch.device | None = None,
        guide: GuideLike = None,
    ) -> VAE:
        """A VAE with the networks ``network`` names, for data of ``x_dim`` values.

        ``network``: ``"mlp"`` (the paper's; ``hidden_dims`` and ``activation`` apply),
        ``"conv"`` or ``{"name": "conv", **options}`` (:mod:`pyro_vae.conv`: ``channels``,
        ``kernel_size``, ``hidden_dims``, ``activation``; needs ``image_shape``, (H, W) or
        (C, H, W)), or ``{"encoder": {"_target_": ..., **kwargs}, "decoder": {...}}``
        naming a user's own classes: each is called with its kwargs and those of
        ``x_dim``, ``latent_dim``, ``image_shape`` and ``heads`` (the decoder outputs the
        likelihood takes, :class:`~pyro_vae.networks.Head`) that its signature accepts.
        The decoder's last layer has one output per head of the likelihood. The other
        arguments are :meth:`mlp`'s (``device`` and ``guide`` too); ``upper_layers`` (MLPs
        with ``activation``) stack above any of these networks.
        """
        check_arguments(
            {
                "x_dim": x_dim,
                "latent_dim": latent_dim,
                "hidden_dims": hidden_dims,
                "activation": activation,
                "init": init,
                "init_std": init_std,
                "num_data": num_data,
            },
            MODEL_CHECKS,
            nullable=("num_data",),
        )
        IMAGE_SHAPE.check("image_shape", image_shape, nullable=True)
        where = None if device is None else resolve_device(device)
        try:
            spec = network_spec(network)
        except ArgumentError as e:
            raise ArgumentError(e.detail, f"network.{e.key}" if e.key else None) from None
        lik = get_likelihood(likelihood)
        heads = likelihood_heads(lik)
        hidden_dims = list(hidden_dims)
        name = spec.get("name")
        family = latent_family(guide)
        if name == "mlp" and family != "gaussian":  # q's logits (pyro_vae.latents)
            encoder: nn.Module = LogitsEncoder(x_dim, latent_dim, hidden_dims, activation)
            decoder: nn.Module = MLPDecoder(latent_dim, x_dim, hidden_dims[::-1], activation, heads)
        elif name == "mlp":
            encoder = GaussianEncoder(x_dim, latent_dim, hidden_dims, activation)
            decoder = MLPDecoder(latent_dim, x_dim, hidden_dims[::-1], activation, heads)
        elif name == "conv":
            from .conv import ConvDecoder, ConvEncoder

            if family != "gaussian":
                raise ArgumentError(
                    f"network=conv's encoder gives a Gaussian's (loc, scale), not the logits a "
                    f"{family} latent takes; use network=mlp, or your own encoder "
                    "(network.encoder._target_) returning logits [M, latent_dim]",
                    "network",
                )
            if image_shape is None:
                raise ArgumentError(
                    "network=conv needs the images' shape: image_shape=(C, H, W) or (H, W)",
                    "image_shape",
                )
            options = {k: v for k, v in spec.items() if k != "name"}
            encoder = ConvEncoder(image_shape, latent_dim, **options)
            decoder = ConvDecoder(latent_dim, image_shape, heads, **mirrored(options))
        else:
            context = {
                "x_dim": x_dim,
                "latent_dim": latent_dim,
                "image_shape": tuple(image_shape) if image_shape else None,
            }
            encoder = build_user_network(spec["encoder"], "network.encoder", context)
            decoder = build_user_network(
                spec["decoder"], "network.decoder", {**context, "heads": heads}
            )
        init_parameters(encoder, init, init_std)
        init_parameters(decoder, init, init_std)
        layers = layer_specs(upper_layers)
        stack = None
        if layers and family == "gaussian":
            stack = LatentStack(latent_dim, layers, activation)
        elif layers:  # sigmoid (or softmax) layers between discrete stochastic layers
            stack = LatentStack(latent_dim, layers, activation, family, num_categories_of(guide))
        if stack is not None:
            init_parameters(stack, init, init_std)
        top_dim = stack.top_dim if stack is not None else latent_dim
        if prior is None and family != "gaussian":
            prior = default_prior(family, top_dim, num_categories_of(guide))
        elif prior is None:
            prior = StandardNormal(top_dim)
            prior.name = "standard_normal"
        elif isinstance(prior, Mapping):
            prior = build_prior(prior, top_dim, x_dim=x_dim, encoder=encoder)
        # After the prior: the default family has no parameters, and no family draws from
        # the random stream before the networks and the prior have.
        if guide is None:
            guide = DiagonalGaussian(latent_dim)
        elif not isinstance(guide, GuideFamily):
            guide = build_guide(guide, latent_dim, x_dim=x_dim)
        vae = cls(
            encoder,
            decoder,
            prior,
            likelihood=lik,
            num_data=num_data,
            upper_layers=stack,
            guide=guide,
        )
        vae.settings = {
            "latent_dim": latent_dim,
            "hidden_dims": hidden_dims,
            "likelihood": lik.spec() if hasattr(lik, "spec") else repr(lik),
            "activation": activation,
            "network": spec,
            "init": init,
            "init_std": init_std,
            "prior": vae.prior.spec(),
            "upper_layers": layers,
            "guide": vae.guide_family.spec(),
        }
        # Built on the CPU, then moved: the same initialisation on every device.
        return vae if where is None else vae.to(where)

    @classmethod
    def from_settings(
        cls,
        settings: Mapping[str, Any],
        x_dim: int,
        num_data: int | None = None,
        image_shape: Sequence[int] | None = None,
    ) -> VAE:
        """:meth:`build` with the keys of :data:`MODEL_SETTINGS` read from ``settings`` (a
        run's configuration, say; those of earlier versions are read too)."""
        settings = upgrade_settings(settings)
        settings.setdefault("network", "mlp")
        settings.setdefault("upper_layers", [])  # runs written before stacked layers
        settings.setdefault("guide", dict(DEFAULT_GUIDE))  # runs written before guide families
        missing = [k for k in MODEL_SETTINGS if k not in settings]
        if missing:
            raise ArgumentError(
                f"the settings do not describe a pyro-vae model: {missing} missing (a model "
                "of your own is loaded by passing it: load_run(run_dir, vae=...))"
            )
        return cls.build(
            x_dim,
            num_data=num_data,
            image_shape=image_shape,
            **{k: settings[k] for k in MODEL_SETTINGS},
        )

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
        """q_phi(z|x): the guide family applied to the encoder's output (the paper's
        N(mu(x), diag sigma^2(x)), reparameterised, sec. 2.4, by default)."""
        return self.guide_family(self.encoder(x), x)

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
        if self.stack is None:
            with self._plate(x, idx):
                z = pyro.sample("z", self.prior())
                pyro.sample("x", self.decode(z), obs=x)
            return
        pyro.module(self._pyro_name + ".stack.down", self.stack.down)
        with self._plate(x, idx):
            z = pyro.sample(self.latent_sites[-1], self.prior())
            for name, layer in self.stack.downward():
                z = pyro.sample(name, layer.distribution(z))
            pyro.sample("x", self.decode(z), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """q_phi(z|x) = N(mu(x), diag sigma^2(x)), reparameterised (sec. 2.4); with upper
        layers q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}); q(z_1|x) is :meth:`encode`'s."""
        pyro.module(self._pyro_name + ".encoder", self.encoder)
        if next(self.guide_family.parameters(), None) is not None:
            pyro.module(self._pyro_name + ".guide_family", self.guide_family)
        if self.stack is None:
            with self._plate(x, idx):
                pyro.sample("z", self.encode(x))
            return
        pyro.module(self._pyro_name + ".stack.up", self.stack.up)
        with self._plate(x, idx):
            z = pyro.sample(self.latent_sites[0], self.encode(x))
            for name, layer in self.stack.upward():
                z = pyro.sample(name, layer.distribution(z))

    def log_weights(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape [K, M] (unscaled, per datapoint).

        The same densities as ``model``/``guide`` (tests check this), written directly in
        torch so evaluation avoids Pyro's tracing: the mean over K=1 is the ELBO estimate,
        logsumexp over K minus log K the importance-sampled log p(x). With upper layers
        (z_1 = z, ..., z_L): log p(x|z_1) + log p(z_L) + sum_l log p(z_l|z_{l+1}) - log q(z_1|x)
        - sum_l log q(z_{l+1}|z_l), every z_l drawn from q in the guide's order.
        """
        q = self.encode(x)
        # Discrete latents have no rsample: drawn with sample() (no gradient through them).
        z = q.rsample((num_samples,)) if q.has_rsample else q.sample((num_samples,))
        log_px_z = self.decode(z).log_prob(x)
        if self.stack is None:
            return log_px_z + self.prior().log_prob(z) - q.log_prob(z)
        zs, log_q = self.stack.sample_up(z, q.log_prob(z))
        return log_px_z + self.stack.log_prob_down(zs, self.prior().log_prob(zs[-1])) - log_q


def network_spec(network: str | Mapping[str, Any]) -> dict[str, Any]:
    """``network`` as a mapping with a ``name``: ``mlp``, ``conv`` (with its options), or
    ``custom`` (a user's ``encoder`` and ``decoder`` classes, each a mapping with a
    ``_target_``). Errors name the key within the network's node (``name``,
    ``encoder._target_``, ``channels``)."""
    if isinstance(network, str):
        network = {"name": network}
    if not isinstance(network, Mapping):
        raise refuse("name", network, f"one of {list(NETWORKS)} or a mapping")
    spec = dict(network)
    if "encoder" in spec or "decoder" in spec:
        for part in ("encoder", "decoder"):
            if not isinstance(spec.get(part), Mapping) or "_target_" not in spec[part]:
                raise refuse(part, spec.get(part), "a mapping with a _target_ (import path)")
        spec.setdefault("name", "custom")
        return spec
    spec.setdefault("name", "mlp")
    if spec["name"] not in NETWORKS:
        raise refuse("name", spec["name"], f"one of {list(NETWORKS)}, or encoder/decoder _target_s")
    if spec["name"] == "mlp" and len(spec) > 1:
        extra = sorted(set(spec) - {"name"})[0]
        raise refuse(extra, spec[extra], "no option (the MLP's are hidden_dims, activation)")
    return spec


def check_network(network: str | Mapping[str, Any]) -> dict[str, Any]:
    """:func:`network_spec`, with the options checked against the classes' signatures (a
    user's classes imported) before any data are read."""
    spec = network_spec(network)
    options = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "conv":
        from .conv import ConvEncoder, check_options

        check_params(ConvEncoder, options, "network=conv", skip=("self", *_CONV_CONTEXT))
        check_options(**options)
    elif spec["name"] not in NETWORKS:
        for part in ("encoder", "decoder"):
            params = dict(spec[part])
            cls = import_target(params.pop("_target_"), f"{part}._target_", "an nn.Module class")
            try:
                check_params(cls, params, path_of(cls), skip=("self", *_USER_CONTEXT))
            except ArgumentError as e:
                raise ArgumentError(e.detail, f"{part}.{e.key}" if e.key else None) from None
    return spec


def mirrored(options: Mapping[str, Any]) -> dict[str, Any]:
    """The decoder's options from the encoder's: ``channels`` and ``hidden_dims`` listed
    from the encoder's input side are the decoder's in reverse, as for the MLP."""
    out = dict(options)
    for key in ("channels", "hidden_dims"):
        if isinstance(out.get(key), Sequence) and not isinstance(out[key], str):
            out[key] = list(out[key])[::-1]
    return out


_CONV_CONTEXT = ("image_shape", "latent_dim", "heads")
_USER_CONTEXT = ("x_dim", "latent_dim", "image_shape", "heads")
