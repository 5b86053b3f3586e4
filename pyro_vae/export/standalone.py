"""Networks exported from pyro-vae, loaded with torch alone (no pyro-vae, no Pyro).

This file is written by ``pyro-vae export`` (``pyro_vae.export_model``) beside the weights
and ``export.json``; it imports only torch and the standard library, so it runs wherever
torch does. Keep the directory together::

    import sys
    sys.path.insert(0, "path/to/export")         # the directory holding this file
    import vae_export

    decoder = vae_export.load_decoder()          # a torch.nn.Module, in eval mode
    out = decoder(z)                             # z [..., latent_dim]: the likelihood's inputs
    images = decoder.mean(z)                     # E[x|z], [..., D]
    encoder = vae_export.load_encoder()
    loc, scale = encoder(x)                      # x [..., D]: q(z|x) = N(loc, diag scale^2)

What the decoder returns is the pyro-vae decoder's output, unchanged: one tensor per
output ("head") of the likelihood, a tuple where there are several (``export.json`` says
what each is: Bernoulli logits, a Gaussian's pre-sigmoid mean and raw log variance, ...).
``decoder.mean(z)`` applies the likelihood's mean to them where it is a simple function
(Bernoulli: sigmoid of the logits; Gaussian/Laplace: the mean's link; Poisson, categorical
grey levels, Beta, negative binomial); ``decoder.mean_available`` says whether it is.

Two formats, named per network in ``export.json``:

- ``python``: the paper's MLPs are rebuilt here from ``nn.Linear`` and activations and load
  their state dict (``encoder.pt``/``decoder.pt``, ``torch.load(weights_only=True)``);
  they are ordinary modules (``.to(device)``, fine-tuning, ``torch.compile``).
- ``torch.export``: other networks (the conv networks, a user's own) are saved as
  ``torch.export`` programs (``.pt2``) and loaded with ``torch.export.load``; the batch
  dimension is dynamic and any leading dimensions are flattened for them and restored.
  A program is best loaded by the torch version that wrote it (``export.json`` records it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
MANIFEST = "export.json"
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus}
PARTS = ("encoder", "decoder")


def load(part: str = "decoder", directory: str | Path | None = None) -> nn.Module:
    """The exported ``part`` (``"encoder"`` or ``"decoder"``) of ``directory`` (default:
    this file's), on the CPU, in eval mode."""
    directory = Path(directory) if directory is not None else HERE
    manifest = json.loads((directory / MANIFEST).read_text())
    if part not in PARTS:
        raise ValueError(f"part={part!r} is not allowed: expected one of {list(PARTS)}")
    entry = manifest["parts"].get(part)
    if entry is None:
        raise ValueError(
            f"{directory} holds no {part} (exported: {sorted(manifest['parts'])}); "
            f"export it with: pyro-vae export RUN_DIR part={part}"
        )
    path = directory / entry["file"]
    if entry["format"] == "python":
        arch = entry["architecture"]
        if part == "encoder":
            module: nn.Module = MLPEncoder(**arch)
        else:
            module = MLPDecoder(**arch)
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    elif entry["format"] == "torch.export":
        program = torch.export.load(str(path)).module()
        cls = ProgramEncoder if part == "encoder" else ProgramDecoder
        module = cls(program, entry["in_dim"])
    else:
        raise ValueError(f"{path}: unknown format {entry['format']!r} (a newer pyro-vae's?)")
    if part == "decoder":
        module.mean_spec = entry.get("mean")
    return module.eval()


def load_decoder(directory: str | Path | None = None) -> nn.Module:
    """The exported decoder: ``decoder(z)``, ``decoder.mean(z)``."""
    return load("decoder", directory)


def load_encoder(directory: str | Path | None = None) -> nn.Module:
    """The exported encoder: ``loc, scale = encoder(x)``."""
    return load("encoder", directory)


def _trunk(in_dim: int, hidden_dims: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """q(z|x) = N(loc, diag scale^2): ``h = act(W x + b)`` per hidden layer, ``loc = W h + b``,
    ``scale = exp(0.5 * (W' h + b'))`` (log variance)."""

    def __init__(self, x_dim: int, latent_dim: int, hidden_dims: list[int], activation: str):
        super().__init__()
        self.trunk = _trunk(x_dim, hidden_dims, activation)
        width = hidden_dims[-1] if hidden_dims else x_dim
        self.loc = nn.Linear(width, latent_dim)
        self.log_var = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.loc(h), torch.exp(0.5 * self.log_var(h))


class _Mean:
    """``mean(z)``: E[x|z] from the decoder's outputs (the likelihood's mean)."""

    mean_spec: dict | None = None

    @property
    def mean_available(self) -> bool:
        return self.mean_spec is not None

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        if self.mean_spec is None:
            raise NotImplementedError(
                "E[x|z] was not exported for this likelihood: apply it to the outputs of "
                "decoder(z), described in export.json"
            )
        return likelihood_mean(self.mean_spec, self(z))


class MLPDecoder(_Mean, nn.Module):
    """``h = act(W z + b)`` per hidden layer, then one linear map per head (a shared head is
    one learned vector, the same for every z)."""

    def __init__(
        self, latent_dim: int, x_dim: int, hidden_dims: list[int], activation: str, heads: list
    ):
        super().__init__()
        self.trunk = _trunk(latent_dim, hidden_dims, activation)
        width = hidden_dims[-1] if hidden_dims else latent_dim
        self.x_dim = x_dim
        self.heads = [(str(name), int(per_dim), bool(shared)) for name, per_dim, shared in heads]
        for name, per_dim, shared in self.heads:
            if shared:
                setattr(self, name, nn.Parameter(torch.zeros(x_dim * per_dim)))
            else:
                setattr(self, name, nn.Linear(width, x_dim * per_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        h = self.trunk(z)
        batch_shape = z.shape[:-1]
        outputs = []
        for name, per_dim, shared in self.heads:
            layer = getattr(self, name)
            out = layer.expand(*batch_shape, -1) if shared else layer(h).reshape(*batch_shape, -1)
            if per_dim > 1:
                out = out.reshape(*out.shape[:-1], self.x_dim, per_dim)
            outputs.append(out)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _restore(out: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    return out.reshape(*lead, *out.shape[1:])


class _Program(nn.Module):
    """Holds a ``torch.export`` program's module, which computes the same in training and
    evaluation mode (its graph was traced in evaluation mode; it refuses ``train()``)."""

    def __init__(self, program: nn.Module, in_dim: int):
        super().__init__()
        self.program, self.in_dim = program, in_dim

    def train(self, mode: bool = True) -> _Program:
        self.training = mode
        return self


class ProgramEncoder(_Program):
    """A ``torch.export`` program of an encoder, over any leading dimensions of x."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        loc, scale = self.program(x.reshape(-1, self.in_dim))
        return _restore(loc, lead), _restore(scale, lead)


class ProgramDecoder(_Mean, _Program):
    """A ``torch.export`` program of a decoder, over any leading dimensions of z."""

    def forward(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        lead = z.shape[:-1]
        out = self.program(z.reshape(-1, self.in_dim))
        if isinstance(out, torch.Tensor):
            return _restore(out, lead)
        return tuple(_restore(o, lead) for o in out)


def likelihood_mean(spec: dict, output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """E[x|z] from the decoder's ``output``, as pyro-vae's likelihood ``spec["name"]``
    computes it."""
    outputs = output if isinstance(output, tuple) else (output,)
    name = spec["name"]
    if name == "sigmoid":  # Bernoulli logits; a sigmoid-linked Gaussian or Laplace mean
        return torch.sigmoid(outputs[0])
    if name == "identity":
        return outputs[0]
    if name == "exp":  # Poisson: the rate
        return torch.exp(outputs[0])
    if name == "grey_levels":  # categorical over levels k / (levels - 1)
        logits = outputs[0] - outputs[0].logsumexp(dim=-1, keepdim=True)
        probs = torch.softmax(logits, dim=-1)
        grid = torch.linspace(0, 1, spec["levels"], device=probs.device, dtype=probs.dtype)
        return (probs * grid).sum(-1)
    if name == "beta":  # a / (a + b), un-squeezed from (eps, 1 - eps)
        softplus = nn.functional.softplus
        a, b = (softplus(t) + spec["min_concentration"] for t in outputs[:2])
        a, b = torch.broadcast_tensors(a, b)
        eps = spec["eps"]
        return (a / (a + b) - eps) / (1 - 2 * eps)
    if name == "negative_binomial":  # r exp(logits)
        logits, raw = outputs[:2]
        total = nn.functional.softplus(raw) + spec["min_total_count"]
        return total * torch.exp(logits)
    raise NotImplementedError(f"unknown mean {name!r} (written by a newer pyro-vae?)")
