"""The paper's baselines (sec. 5), as training methods beside AEVB (``method=...``).

- :class:`~pyro_vae.baselines.wake_sleep.WakeSleep`: Hinton et al. (1995), with the same
  encoder and decoder as AEVB (Figures 2 and 3).
- :class:`~pyro_vae.baselines.mcem.MCEM`: Monte Carlo EM with an HMC posterior sampler
  (Figure 3, appendix E).

Both follow the interface of :class:`pyro_vae.methods.TrainingMethod`, so the trainer,
checkpoints, metrics and plots are the same for every method.
"""

from __future__ import annotations

import torch

from ..model import VAE
from ..optim import TorchOptimizer


def split_parameters(vae: VAE) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(theta, phi): the generative model's parameters (decoder, prior) and the encoder's.

    A prior defined through the encoder (VampPrior) shares the encoder's weights; those
    count as phi, so each parameter has exactly one optimiser.
    """
    phi = list(vae.encoder.parameters())
    ids = {id(p) for p in phi}
    theta = [p for p in vae.parameters() if id(p) not in ids]
    return theta, phi


def descend(loss: torch.Tensor, optim: TorchOptimizer, vae: VAE) -> None:
    """One step of ``optim`` on ``loss``; the model's gradients are cleared before and after,
    so a parameter set that ``loss`` reaches but ``optim`` does not hold stays unchanged."""
    vae.zero_grad(set_to_none=True)
    loss.backward()
    optim()
    vae.zero_grad(set_to_none=True)
