"""Synthetic data whose exact log-likelihood is known: a linear Gaussian (factor-analysis) model.

``x = W z + b + sigma * eps`` with ``z ~ N(0, I_K)`` and ``eps ~ N(0, I_D)``, so that
``p(x) = N(x; b, W W^T + sigma^2 I_D)`` in closed form: the yardstick against which a
marginal-likelihood estimate of a model trained on these data can be checked.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import torch
from torch.distributions import MultivariateNormal

from ..errors import ArgumentError, refuse

#: the noise scale sigma is drawn uniformly from this range
NOISE_SCALE_RANGE = (0.2, 1.0)


@dataclass(frozen=True, eq=False)
class LinearGaussian:
    """The model ``x = W z + b + sigma * eps`` (``z ~ N(0, I_K)``, ``eps ~ N(0, I_D)``), in
    float64; calling it on ``x`` gives the exact ``log p(x)``."""

    weight: torch.Tensor  # W, float64 [D, K]
    bias: torch.Tensor  # b, float64 [D]
    noise_scale: float  # sigma > 0
    _scale_tril: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the Cholesky factor of the covariance, once: every call reuses it
        object.__setattr__(self, "_scale_tril", torch.linalg.cholesky(self.covariance()))

    @classmethod
    def draw(cls, dim: int, latent_dim: int, generator: torch.Generator) -> LinearGaussian:
        """Parameters drawn from ``generator``, in this order: ``W`` with independent N(0, 1)
        entries, ``b`` likewise, ``sigma`` uniform in :data:`NOISE_SCALE_RANGE`."""
        weight = torch.randn(dim, latent_dim, generator=generator, dtype=torch.float64)
        bias = torch.randn(dim, generator=generator, dtype=torch.float64)
        low, high = NOISE_SCALE_RANGE
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        return cls(weight=weight, bias=bias, noise_scale=low + (high - low) * u)

    def __repr__(self) -> str:
        return (
            f"LinearGaussian(dim={self.dim}, latent_dim={self.latent_dim}, "
            f"noise_scale={self.noise_scale:.6g})"
        )

    @property
    def dim(self) -> int:
        return self.weight.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.weight.shape[1]

    def covariance(self) -> torch.Tensor:
        """``W W^T + sigma^2 I``, float64 ``[D, D]``."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return self.weight @ self.weight.T + self.noise_scale**2 * eye

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` draws of ``x``, float64 ``[n, D]``: ``z`` for all ``n`` first, then ``eps``."""
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return z @ self.weight.T + self.bias + self.noise_scale * eps

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The exact ``log p(x)`` of each row of ``x`` (``[N, D]``, any float dtype, any
        device), computed in float64: float64 ``[N]`` on ``x``'s device."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ArgumentError(
                f" of shape {tuple(x.shape)} is not allowed: expected [N, {self.dim}]", "x"
            )
        device = x.device
        normal = MultivariateNormal(
            self.bias.to(device), scale_tril=self._scale_tril.to(device), validate_args=False
        )
        return normal.log_prob(x.to(torch.float64))

    __call__ = log_prob


def linear_gaussian_data(
    dim: int, latent_dim: int, num_points: int, test_points: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, LinearGaussian]:
    """float32 ``[num_points, dim]`` training and ``[test_points, dim]`` test data of a
    :class:`LinearGaussian` drawn with ``latent_dim`` latent dimensions, and the model.

    One ``torch.Generator`` seeded with ``seed`` draws, in order, the parameters
    (:meth:`LinearGaussian.draw`), the training set and the test set
    (:meth:`LinearGaussian.sample`): the same arguments give the same data in every run, and
    the parameters depend on ``seed``, ``dim`` and ``latent_dim`` only.

    Raises :class:`ArgumentError` for a size below 1 or a seed that is not an integer."""
    for key, value in (
        ("dim", dim),
        ("latent_dim_true", latent_dim),
        ("num_points", num_points),
        ("test_points", test_points),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise refuse(key, value, "an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise refuse("seed", seed, f"an integer in 0..{2**63 - 1}")
    generator = torch.Generator().manual_seed(int(seed))
    model = LinearGaussian.draw(int(dim), int(latent_dim), generator)
    train = model.sample(int(num_points), generator).to(torch.float32)
    test = model.sample(int(test_points), generator).to(torch.float32)
    return train, test, model
