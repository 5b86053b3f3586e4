"""A plain (deterministic) autoencoder beside the VAE: the course notes' claims
(``../shared/seeds/``), measured on MNIST with the same networks.

    python experiments/autoencoder.py [budget=cpu|full]

The autoencoder is the VAE's encoder mean and decoder: code = mu(x) (the same MLP as the
encoder, its variance head unused), reconstruction = the decoder's sigmoid(logits). It is
trained on a reconstruction loss only: ``bernoulli`` = -log p(x | z = mu(x)) (the VAE's
likelihood term without sampling or KL) or ``l2`` = ||x - sigmoid(logits)||^2. Both it and
the VAE (``pyro-vae train``, default settings: Adam 1e-3) see the same dynamically
binarised minibatches for the same number of training samples (``cpu``: 6 x 10^5, ten
epochs; ``full``: 6 x 10^6).

The notes' claims and what is measured:

1. "Since VAEs learn to model the data, we can sample from the distribution" and an
   autoencoder's deterministic code cannot: decoded z ~ N(0, I) for both (Nz = 10), and the
   spread of their codes on the test set (a VAE's aggregate posterior is pulled toward
   N(0, I) by the KL term; an autoencoder's codes are wherever training left them).
2. "If the dimension of the latent space is larger than the dimension of the input space,
   the autoencoder will learn to simply be the identity mapping": test reconstruction
   error against Nz in {2, 10, 50, 1000} with the paper's 500 tanh hidden units (which
   bound the code's useful width at 500 < 784), and without hidden layers (a linear code
   of width 50 or 1000 > 784). An identity map reconstructs anything, so the error on
   random binary images (not digits) tells a copy from a learned code.
3. "The commonly used L2 loss ... is generally considered to be a bad proxy for visual
   similarity": autoencoders trained with each loss (Nz = 10), each scored with both, and
   the L2 distance from a test digit to itself shifted by two pixels against the distance
   to its blurry L2 reconstruction.

Writes ``autoencoder_samples.png``, ``autoencoder_reconstructions.png``,
``autoencoder.csv`` (every model, every metric) and ``autoencoder_shift.csv``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    Options,
    data_dir_overrides,
    finish,
    save_csv,
    save_figure,
    show_images,
    sweep,
)
from matplotlib.figure import Figure
from torch import nn

from pyro_vae import GaussianEncoder, Minibatches, MLPDecoder, RunData, load_data, load_run
from pyro_vae.config import as_plain, compose_config
from pyro_vae.data import binarize

SAMPLES = {"smoke": 20_000, "cpu": 600_000, "full": 6_000_000}
# (loss, latent_dim, hidden_dims)
AUTOENCODERS = [
    ("bernoulli", 2, [500]),
    ("bernoulli", 10, [500]),
    ("bernoulli", 50, [500]),
    ("bernoulli", 1000, [500]),
    ("bernoulli", 50, []),
    ("bernoulli", 1000, []),
    ("l2", 10, [500]),
]
VAE_LATENT_DIMS = (2, 10, 50, 1000)


class Autoencoder(nn.Module):
    """code = mu(x) of the VAE's encoder; reconstruction = its Bernoulli decoder's mean."""

    def __init__(self, x_dim: int, latent_dim: int, hidden_dims: list[int]):
        super().__init__()
        self.encoder = GaussianEncoder(x_dim, latent_dim, hidden_dims, "tanh")
        self.decoder = MLPDecoder(latent_dim, x_dim, hidden_dims[::-1], "tanh")  # logits

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.code(x))


def reconstruction_loss(loss: str, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per image: Bernoulli -log p(x|z) from the logits, or the squared L2 error."""
    if loss == "bernoulli":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    return (torch.sigmoid(logits) - x).pow(2).sum(-1)


def train_autoencoder(
    data: RunData, loss: str, latent_dim: int, hidden: list[int], samples: int, path: Path
) -> tuple[Autoencoder, float]:
    """Train (or load, if ``path`` holds a finished one) an autoencoder; (model, seconds)."""
    torch.manual_seed(0)
    ae = Autoencoder(data.x_dim, latent_dim, hidden)
    if path.is_file():
        state = torch.load(path)
        ae.load_state_dict(state["model"])
        return ae, state["seconds"]
    optim = torch.optim.Adam(ae.parameters(), lr=1e-3)
    batches = Minibatches(data.train, 100, seed=0, binarize=data.train_binarize)
    start, seen, epoch = time.perf_counter(), 0, 0
    while seen < samples:
        for _, x in batches.epoch(epoch):
            optim.zero_grad()
            reconstruction_loss(loss, ae.logits(x), x).mean().backward()
            optim.step()
            seen += x.shape[0]
            if seen >= samples:
                break
        epoch += 1
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": ae.state_dict(), "seconds": seconds}, path)
    return ae, seconds


@torch.no_grad()
def scores(code, decode_logits, x: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
    """Test reconstruction errors (both losses), the same on random binary images, and the
    spread of the codes (mean |mean| and mean std per dimension)."""
    z = code(x)
    logits = decode_logits(z)
    noise_logits = decode_logits(code(noise))
    return {
        "test_bernoulli": reconstruction_loss("bernoulli", logits, x).mean().item(),
        "test_l2": reconstruction_loss("l2", logits, x).mean().item(),
        "noise_bernoulli": reconstruction_loss("bernoulli", noise_logits, noise).mean().item(),
        "noise_l2": reconstruction_loss("l2", noise_logits, noise).mean().item(),
        "code_abs_mean": z.mean(0).abs().mean().item(),
        "code_std": z.std(0).mean().item(),
    }


def shift_right(x: torch.Tensor, pixels: int) -> torch.Tensor:
    images = x.reshape(-1, 28, 28)
    shifted = torch.zeros_like(images)
    shifted[:, :, pixels:] = images[:, :, :-pixels]
    return shifted.reshape(x.shape)


def main(argv: list[str]) -> None:
    opts = Options(argv, "autoencoder")
    samples = SAMPLES[opts.budget]
    vaes = sweep(
        opts,
        "autoencoder",
        [
            "dataset=mnist",
            f"latent_dim={','.join(map(str, VAE_LATENT_DIMS))}",
            "method=aevb",
            f"num_samples={samples}",
        ],
    )
    vaes = {r.config["latent_dim"]: r for r in vaes if r.config["num_samples"] == samples}
    data = load_data(
        as_plain(compose_config([*data_dir_overrides(opts.data_dir), "dataset=mnist"]))
    )
    test = data.test
    noise = binarize(torch.full((1000, data.x_dim), 0.5), seed=1)

    rows, models = [], {}
    for loss, nz, hidden in AUTOENCODERS:
        name = f"ae-{loss}-nz{nz}-h{'x'.join(map(str, hidden)) or 'none'}-{samples}.pt"
        ae, seconds = train_autoencoder(
            data, loss, nz, hidden, samples, opts.runs / "autoencoder" / name
        )
        models[(loss, nz, tuple(hidden))] = ae
        rows.append(
            {
                "model": f"autoencoder ({loss})",
                "latent_dim": nz,
                "hidden_dims": str(hidden),
                "train_seconds": round(seconds, 1),
                **scores(ae.code, ae.decoder, test, noise),
            }
        )
        print(rows[-1], flush=True)
    for nz, r in sorted(vaes.items()):
        vae = load_run(r.path).vae
        rows.append(
            {
                "model": "VAE (ELBO)",
                "latent_dim": nz,
                "hidden_dims": str([500]),
                "train_seconds": r.summary["train_seconds"],
                **scores(lambda x, v=vae: v.encoder(x)[0], vae.decoder, test, noise),
                "test_elbo": r.summary["test_elbo"],
            }
        )
        print(rows[-1], flush=True)
    save_csv(opts, "autoencoder.csv", rows)

    # Claim 1: decode z ~ N(0, I) with both models of Nz = 10.
    z = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    ae, vae = models[("bernoulli", 10, (500,))], load_run(vaes[10].path).vae
    fig = Figure(figsize=(10, 5.4))
    for ax, (title, decoder) in zip(
        fig.subplots(1, 2),
        [("plain autoencoder", ae.decoder), ("VAE", vae.decoder)],
        strict=True,
    ):
        with torch.no_grad():
            images = torch.sigmoid(decoder(z))
        show_images(ax, images, (28, 28), 8, f"{title}: decoder mean at z ~ N(0, I), Nz = 10")
    save_figure(opts, fig, "autoencoder_samples.png")

    # Claim 3: L2 against Bernoulli reconstructions, and a two-pixel shift under L2.
    x = test[:12]
    l2_ae = models[("l2", 10, (500,))]
    with torch.no_grad():
        rec_b, rec_l2 = torch.sigmoid(ae.logits(x)), torch.sigmoid(l2_ae.logits(x))
    fig = Figure(figsize=(10, 4.2))
    title = "rows: test digit | shifted 2 px | Bernoulli-loss AE | L2-loss AE (Nz = 10)"
    images = torch.cat([x, shift_right(x, 2), rec_b, rec_l2])
    show_images(fig.add_subplot(), images, (28, 28), 12, title)
    save_figure(opts, fig, "autoencoder_reconstructions.png")
    with torch.no_grad():
        all_x = test[:1000]
        to_shift = (shift_right(all_x, 2) - all_x).pow(2).sum(-1)
        to_rec = reconstruction_loss("l2", l2_ae.logits(all_x), all_x)
    shift_rows = [
        {"pair": "test digit vs itself shifted 2 px", "mean_l2": to_shift.mean().item()},
        {
            "pair": "test digit vs its L2-autoencoder reconstruction",
            "mean_l2": to_rec.mean().item(),
        },
        {
            "pair": "fraction of digits nearer (L2) to the reconstruction than to the shift",
            "mean_l2": (to_rec < to_shift).float().mean().item(),
        },
    ]
    save_csv(opts, "autoencoder_shift.csv", shift_rows)
    finish(opts, samples=samples)


if __name__ == "__main__":
    main(sys.argv[1:])
