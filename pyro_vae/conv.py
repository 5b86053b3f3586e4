"""Convolutional encoder and decoder: drop-in replacements for the paper's MLPs on images.

:class:`ConvEncoder` is q_phi(z|x): stride-2 convolutions (each followed by the
activation), a flatten, an MLP trunk and two linear maps to the Gaussian's mean and log
variance; it returns ``(loc, scale)`` with ``scale = exp(0.5 * log_var)``, exactly as
:class:`~pyro_vae.networks.GaussianEncoder` does. :class:`ConvDecoder` is p_theta(x|z): an
MLP trunk, a linear map to the encoder's smallest feature map, then stride-2 transposed
convolutions back up to the image; its last layer is one transposed convolution per head
of the likelihood (:class:`~pyro_vae.networks.Head`), so it serves every likelihood the
MLP decoder serves (Bernoulli logits, Gaussian mean and log variance, shared or not, 256
logits per pixel for a categorical, ...). Both are plain ``torch.nn.Module`` objects, passed
to :class:`pyro_vae.model.VAE` like any user network::

    VAE(ConvEncoder((1, 28, 28), 20), ConvDecoder(20, (1, 28, 28)), latent_dim=20)

Shapes. ``image_shape`` is ``(C, H, W)``, or ``(H, W)`` for one channel. The data keep the
package's flat convention: x is ``[..., D]`` with ``D = C * H * W``, flattened
channel-first and row-major, i.e. pixel ``(c, h, w)`` is ``x[..., c*H*W + h*W + w]`` (a
``[N, C, H, W]`` array's ``reshape(N, -1)``; for one channel this is the order of the
MNIST and Frey Face vectors and of :func:`pyro_vae.plots.image_grid`). Any number of
leading batch dimensions (``[K, M, D]`` for K samples of a minibatch of M) are flattened
for the convolutions and restored afterwards. The encoder returns ``[..., latent_dim]``
twice; the decoder takes ``z`` of shape ``[..., latent_dim]`` and returns, per head,
``[..., D]`` (or ``[..., D, per_dim]``, the last axis being the head's per-pixel values),
one tensor for one head and a tuple in the heads' order for several.

Sizes. A stride-2 convolution with kernel k has padding ``(k - 1) // 2``, which halves a
side: ``n -> n // 2`` for an even kernel (the default 4: 28 -> 14 -> 7, 32 -> 16 -> 8,
20 -> 10 -> 5, 15 -> 7 -> 3), ``n -> ceil(n / 2)`` for an odd one. The decoder replays the
encoder's sequence of sizes backwards, choosing each transposed convolution's
``output_padding`` (0 or 1) so it lands on the encoder's size exactly, odd ones included
(3 -> 7 -> 15). An image too small for ``len(channels)`` halvings is refused. Tested
image shapes (``tests/test_conv.py``): 1x28x28 (MNIST), 3x32x32 (CIFAR-sized), 1x28x20 (Frey
Face), 1x12x12, and 2x15x13 (odd sides), each with kernels 3, 4 and 5.

Why this design. It is the DCGAN recipe (Radford et al. 2015: stride-2 convolutions instead
of pooling, stride-2 transposed convolutions to upsample, kernel 4) in the form most VAE
baselines on MNIST and CIFAR use (stride-2 conv layers of 32 then 64 channels, a dense
layer, and the mirror image in the decoder): the encoder and decoder are symmetric and need
no pooling or unpooling. Unlike DCGAN there is no batch normalisation, so an image's code
does not depend on the rest of its minibatch and the networks compute the same in training
and evaluation (importance sampling with K samples reuses them unchanged). The defaults
(1.7M parameters at 1x28x28, twice the paper's MLP) still train on a CPU: about 30 s per
MNIST epoch of forward and backward passes at batch 100 on two threads, some 7 times the
MLP's 4 s.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from .errors import ArgumentError, refuse
from .networks import ACTIVATIONS, Head, HeadedDecoder, mlp_trunk

__all__ = ["ConvDecoder", "ConvEncoder", "check_options", "conv_sizes"]


def _padding(kernel_size: int) -> int:
    return (kernel_size - 1) // 2


def _conv_out(n: int, kernel_size: int) -> int:
    """A side's length after a stride-2 convolution of padding ``(k - 1) // 2``."""
    return (n + 2 * _padding(kernel_size) - kernel_size) // 2 + 1


def _conv_t_out(n: int, kernel_size: int) -> int:
    """A side's length after a stride-2 transposed convolution, output_padding 0."""
    return (n - 1) * 2 - 2 * _padding(kernel_size) + kernel_size


def _min_side(num_layers: int, kernel_size: int) -> int:
    n = 1
    while not all(s >= 1 for s in _side_sizes(n, num_layers, kernel_size)):
        n += 1
    return n


def _side_sizes(n: int, num_layers: int, kernel_size: int) -> list[int]:
    sizes = [n]
    for _ in range(num_layers):
        sizes.append(_conv_out(sizes[-1], kernel_size) if sizes[-1] >= 1 else 0)
    return sizes


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _positive_ints(value: object) -> tuple[int, ...] | None:
    """``value`` as a tuple of positive integers, or None if it is not one."""
    try:
        values = tuple(value)  # type: ignore[call-overload]
    except TypeError:
        return None
    if not all(_is_int(v) and v > 0 for v in values):
        return None
    return tuple(int(v) for v in values)


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = _positive_ints(image_shape)
    if shape is None or len(shape) not in (2, 3):
        raise refuse("image_shape", image_shape, "(C, H, W) or (H, W) of positive integers")
    channels, height, width = (1, *shape) if len(shape) == 2 else shape
    return channels, height, width


def _check_args(
    image_shape: Sequence[int],
    latent_dim: int,
    channels: Sequence[int],
    kernel_size: int,
    hidden_dims: Sequence[int],
    activation: str,
) -> tuple[tuple[int, int, int], int, tuple[int, ...], int, tuple[int, ...]]:
    """The arguments both networks take, checked: (C, H, W), Nz, channels, kernel, hidden."""
    shape = _check_image_shape(image_shape)
    if not _is_int(latent_dim) or latent_dim < 1:
        raise refuse("latent_dim", latent_dim, "a positive integer")
    chans = _positive_ints(channels)
    if not chans:
        raise refuse("channels", channels, "a non-empty sequence of positive integers")
    if not _is_int(kernel_size) or kernel_size < 2:
        raise refuse("kernel_size", kernel_size, "an integer of at least 2")
    hidden = _positive_ints(hidden_dims)
    if hidden is None:
        raise refuse("hidden_dims", hidden_dims, "a sequence of positive integers (may be empty)")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise refuse("activation", activation, f"one of {sorted(ACTIVATIONS)}")
    _, height, width = shape
    layers = len(chans)
    if min(_side_sizes(height, layers, kernel_size) + _side_sizes(width, layers, kernel_size)) < 1:
        raise refuse(
            "image_shape",
            image_shape,
            f"height and width of at least {_min_side(layers, kernel_size)} for "
            f"{layers} stride-2 layer(s) of kernel size {kernel_size} (or fewer channels)",
        )
    return shape, int(latent_dim), chans, int(kernel_size), hidden


def check_options(
    channels: Sequence[int] = (32, 64),
    kernel_size: int = 4,
    hidden_dims: Sequence[int] = (256,),
    activation: str = "relu",
) -> None:
    """Refuse options no image could use (before the image shape is known: a configuration
    is checked before its data are read)."""
    _check_args((1, 1 << 16, 1 << 16), 1, channels, kernel_size, hidden_dims, activation)


def conv_sizes(
    image_shape: Sequence[int], num_layers: int, kernel_size: int = 4
) -> list[tuple[int, int]]:
    """The (height, width) of the image and of each stride-2 layer's output, largest first:
    ``conv_sizes((1, 28, 20), 2) == [(28, 20), (14, 10), (7, 5)]``."""
    _, height, width = _check_image_shape(image_shape)
    hs = _side_sizes(height, num_layers, kernel_size)
    ws = _side_sizes(width, num_layers, kernel_size)
    return list(zip(hs, ws, strict=True))


def _flatten_batch(t: torch.Tensor, event_dim: int, what: str) -> tuple[torch.Tensor, torch.Size]:
    """``[..., event_dim]`` as ``[B, event_dim]``, and the leading shape to restore."""
    if t.shape[-1:] != (event_dim,):
        raise ArgumentError(f"{what} of shape [..., {event_dim}], got {tuple(t.shape)}")
    return t.reshape(-1, event_dim), t.shape[:-1]


class ConvEncoder(nn.Module):
    """q_phi(z|x) = N(mu(x), diag sigma^2(x)) from a convolutional network.

    ``x`` [..., C*H*W] -> [-1, C, H, W] -> one stride-2 convolution per entry of
    ``channels`` (kernel ``kernel_size``, each followed by ``activation``) -> flatten -> MLP
    over ``hidden_dims`` -> ``mu = W h + b``, ``log sigma^2 = W' h + b'``.

    Args:
        image_shape: (C, H, W), or (H, W) for one channel.
        latent_dim: Nz.
        channels: the convolutions' output channels (each halves the height and width).
        kernel_size: the convolutions' kernel size (padding ``(k - 1) // 2``).
        hidden_dims: the dense layers between the convolutions and the Gaussian's
            parameters (``()``: none).
        activation: one of :data:`pyro_vae.networks.ACTIVATIONS`.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 4,
        hidden_dims: Sequence[int] = (256,),
        activation: str = "relu",
    ):
        super().__init__()
        shape, latent_dim, chans, kernel_size, hidden = _check_args(
            image_shape, latent_dim, channels, kernel_size, hidden_dims, activation
        )
        self.image_shape, self.latent_dim = shape, latent_dim
        self.x_dim = shape[0] * shape[1] * shape[2]
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise((shape[0], *chans)):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size, stride=2, padding=_padding(kernel_size)),
                act(),
            ]
        self.convs = nn.Sequential(*layers)
        h, w = conv_sizes(shape, len(chans), kernel_size)[-1]
        flat = chans[-1] * h * w
        self.trunk = mlp_trunk(flat, hidden, activation)
        width = hidden[-1] if hidden else flat
        self.loc = nn.Linear(width, latent_dim)
        self.log_var = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mu, sigma), each [..., latent_dim]."""
        flat, batch_shape = _flatten_batch(x, self.x_dim, "ConvEncoder expects x")
        h = self.convs(flat.reshape(-1, *self.image_shape))
        h = self.trunk(h.flatten(1))
        loc, log_var = self.loc(h), self.log_var(h)
        out_shape = (*batch_shape, self.latent_dim)
        return loc.reshape(out_shape), torch.exp(0.5 * log_var).reshape(out_shape)


class ConvDecoder(HeadedDecoder):
    """p_theta(x|z) from a transposed-convolutional network, with one output per head.

    ``z`` [..., Nz] -> MLP over ``hidden_dims`` -> linear to ``channels[0] x h0 x w0`` (the
    smallest feature map of a :class:`ConvEncoder` with as many layers) -> activation ->
    stride-2 transposed convolutions through ``channels`` (each followed by the activation)
    -> per head, a last stride-2 transposed convolution to ``C * per_dim`` channels at the
    image's H x W. A shared head is a learned vector (:class:`~pyro_vae.networks.HeadedDecoder`).

    Args:
        latent_dim: Nz.
        image_shape: (C, H, W), or (H, W) for one channel.
        heads: the likelihood's outputs (default the Bernoulli's ``(Head("logits"),)``).
        channels: the feature maps' channels from the smallest map up; ``len(channels)``
            upsampling steps in all, the last one being the heads'.
        kernel_size: the transposed convolutions' kernel size.
        hidden_dims: the dense layers between z and the first feature map (``()``: none).
        activation: one of :data:`pyro_vae.networks.ACTIVATIONS`.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        heads: Sequence[Head] = (Head("logits"),),
        channels: Sequence[int] = (64, 32),
        kernel_size: int = 4,
        hidden_dims: Sequence[int] = (256,),
        activation: str = "relu",
    ):
        super().__init__()
        shape, latent_dim, chans, kernel_size, hidden = _check_args(
            image_shape, latent_dim, channels, kernel_size, hidden_dims, activation
        )
        self.image_shape, self.latent_dim = shape, latent_dim
        sizes = conv_sizes(shape, len(chans), kernel_size)[::-1]  # smallest first
        self.feature_shape = (chans[0], *sizes[0])
        act = ACTIVATIONS[activation]
        self.trunk = mlp_trunk(latent_dim, hidden, activation)
        width = hidden[-1] if hidden else latent_dim
        self.project = nn.Sequential(nn.Linear(width, chans[0] * sizes[0][0] * sizes[0][1]), act())
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(pairwise(chans)):
            layers += [self._upsample(c_in, c_out, sizes[i], sizes[i + 1], kernel_size), act()]
        self.deconvs = nn.Sequential(*layers)
        # The heads: the last upsampling step, to C * per_dim channels at H x W.
        self.add_heads(
            heads,
            shape[0] * shape[1] * shape[2],
            lambda per_dim: self._upsample(
                chans[-1], shape[0] * per_dim, sizes[-2], sizes[-1], kernel_size
            ),
        )

    @staticmethod
    def _upsample(
        c_in: int,
        c_out: int,
        size_in: tuple[int, int],
        size_out: tuple[int, int],
        kernel_size: int,
    ) -> nn.ConvTranspose2d:
        """A stride-2 transposed convolution from ``size_in`` to exactly ``size_out``."""
        output_padding = tuple(
            o - _conv_t_out(i, kernel_size) for i, o in zip(size_in, size_out, strict=True)
        )
        assert all(p in (0, 1) for p in output_padding), (size_in, size_out, kernel_size)
        return nn.ConvTranspose2d(
            c_in,
            c_out,
            kernel_size,
            stride=2,
            padding=_padding(kernel_size),
            output_padding=output_padding,
        )

    def _flatten_head(self, out: torch.Tensor) -> torch.Tensor:
        """``[B, C * per_dim, H, W]`` (channel ``c * per_dim + p``) -> ``[B, D * per_dim]``
        with index ``(c*H*W + h*W + w) * per_dim + p``."""
        batch, chans, height, width = out.shape
        num_channels = self.image_shape[0]
        per_dim = chans // num_channels
        if per_dim == 1:
            return out.reshape(batch, -1)
        out = out.reshape(batch, num_channels, per_dim, height, width)
        return out.permute(0, 1, 3, 4, 2).reshape(batch, -1)

    def forward(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        flat, batch_shape = _flatten_batch(z, self.latent_dim, "ConvDecoder expects z")
        h = self.project(self.trunk(flat)).reshape(-1, *self.feature_shape)
        return self.apply_heads(self.deconvs(h), batch_shape, self._flatten_head)
