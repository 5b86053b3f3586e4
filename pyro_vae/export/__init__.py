"""A trained encoder or decoder as a plain ``torch.nn.Module``, for use without pyro-vae.

::

    pyro_vae.export_model("runs/mnist/2026-01-01_12-00-00", "exported", part="both")
    # or: pyro-vae export runs/mnist/2026-01-01_12-00-00 out=exported

writes into ``exported/``:

- ``export.json``: what was exported (the run and checkpoint, the likelihood, latent and
  data sizes, the image shape), and per network its format, file and outputs;
- ``vae_export.py``: a loader that imports only torch (:mod:`pyro_vae.export.standalone`,
  copied): ``vae_export.load_decoder()`` / ``load_encoder()``;
- the weights: for the paper's MLPs (:class:`~pyro_vae.networks.GaussianEncoder`,
  :class:`~pyro_vae.networks.MLPDecoder`), a state dict (``decoder.pt``) that the loader
  puts into the same layers rebuilt from ``nn.Linear`` and activations (format
  ``python``); for any other network (the conv networks, a user's own), a
  ``torch.export`` program (``decoder.pt2``, format ``torch.export``) with a dynamic batch
  dimension, which needs no Python class to load. A network ``torch.export`` cannot trace
  is refused, naming it.

The loaded decoder returns what pyro-vae's decoder returns (the likelihood's inputs, e.g.
Bernoulli logits; ``export.json`` says what each output is), and ``decoder.mean(z)`` gives
E[x|z] (the images the figures draw) for the likelihoods whose mean is a simple function
of them. The loaded encoder returns (loc, scale) of q(z|x). Both compute exactly what the
trained networks compute (``tests/test_export.py`` checks equality in a process where
pyro-vae and Pyro cannot be imported).
"""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import ArgumentError, refuse
from ..guides import DiagonalGaussian
from ..likelihoods import (
    Bernoulli,
    Beta,
    Categorical,
    ContinuousBernoulli,
    Family,
    Gaussian,
    Laplace,
    NegativeBinomial,
    Poisson,
    likelihood_heads,
)
from ..model import VAE
from ..networks import ACTIVATIONS, GaussianEncoder, MLPDecoder
from ..runs import LoadedRun, checkpoint_to_load, load_run
from ..training.rundir import LAST_CHECKPOINT
from ..version import __version__
from . import standalone

__all__ = ["BACKENDS", "LOADER", "PARTS", "export_model"]

PARTS = ("decoder", "encoder", "both")
BACKENDS = ("auto", "python", "torch.export")
#: The loader's file name in the export directory (import it as ``vae_export``).
LOADER = "vae_export.py"


def export_model(
    source: str | os.PathLike | VAE | LoadedRun,
    out_dir: str | os.PathLike,
    part: str = "both",
    *,
    checkpoint: str = LAST_CHECKPOINT,
    backend: str = "auto",
    x_dim: int | None = None,
) -> dict[str, Any]:
    """Export the decoder and/or encoder of ``source`` into ``out_dir``; returns the
    manifest written as ``export.json`` (with ``files``: the paths written).

    Args:
        source: a run directory (loaded with :func:`~pyro_vae.runs.load_run` at
            ``checkpoint``), a :class:`~pyro_vae.runs.LoadedRun` or a
            :class:`~pyro_vae.model.VAE`.
        out_dir: the directory to write (created; files of an earlier export replaced).
        part: ``"decoder"``, ``"encoder"`` or ``"both"``.
        checkpoint: for a run directory, the checkpoint (``last.pt``, ``epoch_0004.pt``).
        backend: ``"auto"`` (plain modules for the paper's MLPs, ``torch.export`` for other
            networks), ``"python"`` (plain modules, refused for other networks) or
            ``"torch.export"`` (for every network).
        x_dim: the data's size D, for a :class:`~pyro_vae.model.VAE` whose networks do not
            record it (``x_dim`` attribute; pyro-vae's do; a run's metadata do): a network
            exported with ``torch.export`` is traced on inputs of that size.
    """
    if part not in PARTS:
        raise refuse("part", part, f"one of {list(PARTS)}")
    if backend not in BACKENDS:
        raise refuse("backend", backend, f"one of {list(BACKENDS)}")
    vae, meta, origin = _source(source, checkpoint)
    if getattr(vae, "stack", None) is not None:
        vae.require_one_layer("pyro-vae export (an encoder x -> z and a decoder z -> x)")
    family = getattr(vae, "guide_family", None)
    if part != "decoder" and family is not None and not isinstance(family, DiagonalGaussian):
        raise ArgumentError(
            f"pyro-vae export writes the encoder's (loc, scale) of a diagonal Gaussian q(z|x); "
            f"this VAE's guide={family.name} adds parts of its own that are not exported: "
            "export part=decoder, or load the run with pyro_vae.load_run"
        )
    if x_dim is not None:
        meta["x_dim"] = x_dim
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    likelihood = vae.likelihood
    manifest: dict[str, Any] = {
        "exported_by": f"pyro-vae {__version__}",
        "torch_version": torch.__version__,
        **origin,
        "latent_dim": vae.latent_dim,
        "x_dim": meta.get("x_dim"),
        "image_shape": meta.get("image_shape"),
        "likelihood": _likelihood_spec(likelihood),
        "parts": {},
    }
    files = []
    parts = ("encoder", "decoder") if part == "both" else (part,)
    for name in parts:
        net = copy.deepcopy(getattr(vae, name)).to("cpu").eval()
        entry, payload = _export(name, net, backend, manifest)
        _check_export(name, net, entry, payload)
        if name == "decoder":
            entry["outputs"] = _describe_outputs(likelihood)
            entry["mean"] = mean_spec(likelihood)
        files.append(atomic_write(out / entry["file"], payload))
        manifest["parts"][name] = entry
    files.append(atomic_write(out / LOADER, Path(standalone.__file__).read_text()))
    files.append(atomic_write(out / standalone.MANIFEST, json.dumps(manifest, indent=2) + "\n"))
    return {**manifest, "files": [str(f) for f in files]}


def _source(
    source: str | os.PathLike | VAE | LoadedRun, checkpoint: str
) -> tuple[VAE, dict[str, Any], dict[str, Any]]:
    """(the model, what is known of its data, where it came from)."""
    loaded_from = None
    if isinstance(source, str | os.PathLike):
        source = load_run(source, checkpoint=checkpoint, device="cpu")
        loaded_from = checkpoint_to_load(source.run, checkpoint)
    if isinstance(source, LoadedRun):
        origin = {"run_dir": str(source.run.path), "checkpoint": loaded_from}
        return source.vae, dict(source.meta), origin
    if isinstance(source, VAE):
        shape = getattr(source.encoder, "image_shape", None)
        x_dim = getattr(source.decoder, "x_dim", getattr(source.encoder, "x_dim", None))
        meta = {"x_dim": x_dim, "image_shape": list(shape) if shape else None}
        return source, meta, {"run_dir": None, "checkpoint": None}
    raise refuse("source", type(source).__name__, "a run directory, a LoadedRun or a VAE")


def _export(
    name: str, net: nn.Module, backend: str, manifest: dict[str, Any]
) -> tuple[dict[str, Any], bytes]:
    """(the manifest's entry for ``net``, the file's bytes)."""
    arch = _mlp_architecture(name, net) if backend != "torch.export" else None
    if arch is None and backend == "python":
        raise ArgumentError(
            f"backend=python writes plain modules for the paper's MLPs only; the {name} is a "
            f"{type(net).__name__}: use backend=torch.export (or auto)"
        )
    buffer = io.BytesIO()
    if arch is not None:
        torch.save(net.state_dict(), buffer)
        entry = {"format": "python", "file": f"{name}.pt", "architecture": arch}
        return entry, buffer.getvalue()
    in_dim = manifest["x_dim"] if name == "encoder" else manifest["latent_dim"]
    if in_dim is None:
        raise ArgumentError(
            f"the {name}'s input size is unknown: pass x_dim=D (the data's size), or export "
            "from a run directory or a LoadedRun, whose metadata name it"
        )
    torch.export.save(_program(name, net, in_dim), buffer)
    entry = {
        "format": "torch.export",
        "file": f"{name}.pt2",
        "in_dim": in_dim,
        "network": f"{type(net).__module__}.{type(net).__qualname__}",
    }
    return entry, buffer.getvalue()


def _check_export(name: str, net: nn.Module, entry: dict[str, Any], payload: bytes) -> None:
    """Load ``payload`` as the loader does and check that it computes what ``net`` does,
    exactly, on random inputs."""
    if entry["format"] == "python":
        cls = standalone.MLPEncoder if name == "encoder" else standalone.MLPDecoder
        module: nn.Module = cls(**entry["architecture"])
        module.load_state_dict(torch.load(io.BytesIO(payload), weights_only=True))
        in_dim = entry["architecture"]["x_dim" if name == "encoder" else "latent_dim"]
    else:
        program = torch.export.load(io.BytesIO(payload)).module()
        cls = standalone.ProgramEncoder if name == "encoder" else standalone.ProgramDecoder
        module, in_dim = cls(program, entry["in_dim"]), entry["in_dim"]
    x = torch.rand(6, in_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = net(x), module.eval()(x)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    if len(want) != len(got) or not all(torch.equal(a, b) for a, b in zip(want, got, strict=True)):
        raise RuntimeError(
            f"the exported {name} ({entry['format']}) does not compute what the "
            f"{type(net).__name__} computes: please report this"
        )


def _program(name: str, net: nn.Module, in_dim: int) -> Any:
    """``net`` as a ``torch.export`` program over inputs [B, in_dim], B dynamic."""
    example = torch.rand(2, in_dim, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            return torch.export.export(
                net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ArgumentError(
            f"the {name} ({type(net).__name__}) cannot be exported with torch.export "
            f"({type(e).__name__}: {first}); pyro-vae exports the paper's MLPs as plain "
            "modules and other networks as torch.export programs, which need a network "
            "torch.export can trace (no data-dependent Python control flow): save its "
            f"state dict with its class instead (torch.save(vae.{name}.state_dict(), ...))"
        ) from e


def _mlp_architecture(name: str, net: nn.Module) -> dict[str, Any] | None:
    """The loader's arguments for the paper's MLP ``net``; None for any other network."""
    if type(net) not in (GaussianEncoder, MLPDecoder):
        return None
    linears = [m for m in net.trunk if isinstance(m, nn.Linear)]
    kinds = {type(m) for m in net.trunk if not isinstance(m, nn.Linear)}
    activation = "tanh"  # no hidden layer: none is used
    if kinds:
        names = [n for n, cls in standalone.ACTIVATIONS.items() if {cls} == kinds]
        if not names or ACTIVATIONS.get(names[0]) is not standalone.ACTIVATIONS[names[0]]:
            return None
        activation = names[0]
    hidden = [m.out_features for m in linears]
    if name == "encoder" and isinstance(net, GaussianEncoder):
        return {
            "x_dim": linears[0].in_features if linears else net.loc.in_features,
            "latent_dim": net.loc.out_features,
            "hidden_dims": hidden,
            "activation": activation,
        }
    if name == "decoder" and isinstance(net, MLPDecoder):
        return {
            "latent_dim": linears[0].in_features if linears else _first_head_in(net),
            "x_dim": net.x_dim,
            "hidden_dims": hidden,
            "activation": activation,
            "heads": [[h.name, h.per_dim, h.shared] for h in net.heads],
        }
    return None


def _first_head_in(net: MLPDecoder) -> int:
    for head in net.heads:
        layer = getattr(net, head.name)
        if isinstance(layer, nn.Linear):
            return layer.in_features
    raise ArgumentError("the decoder has only shared heads: its latent size is unknown")


def mean_spec(likelihood: Any) -> dict[str, Any] | None:
    """How the loader computes E[x|z] from the decoder's outputs (as ``likelihood.mean``
    does); None where it is not a simple function of them (the continuous Bernoulli, a
    :class:`~pyro_vae.likelihoods.Family`, a likelihood of your own)."""
    kind = type(likelihood)
    if kind is Bernoulli:
        return {"name": "sigmoid"}
    if kind in (Gaussian, Laplace):
        return {"name": likelihood.mean_link}
    if kind is Poisson:
        return {"name": "exp"}
    if kind is Categorical:
        return {"name": "grey_levels", "levels": likelihood.levels}
    if kind is Beta:
        return {
            "name": "beta",
            "eps": likelihood.eps,
            "min_concentration": likelihood.min_concentration,
        }
    if kind is NegativeBinomial:
        return {"name": "negative_binomial", "min_total_count": likelihood.min_total_count}
    return None


def _likelihood_spec(likelihood: Any) -> Any:
    spec = getattr(likelihood, "spec", None)
    return json.loads(json.dumps(spec(), default=str)) if callable(spec) else repr(likelihood)


def _describe_outputs(likelihood: Any) -> list[dict[str, Any]]:
    """The decoder's outputs, in order, and what the likelihood makes of each."""
    kind = type(likelihood)
    text: dict[str, str] = {}
    if kind is Bernoulli:
        text["logits"] = "logits y: p(x_d = 1 | z) = sigmoid(y_d)"
    elif kind is ContinuousBernoulli:
        text["logits"] = "logits y of the continuous Bernoulli: lambda = sigmoid(y)"
    elif kind in (Gaussian, Laplace):
        link = "sigmoid(loc)" if likelihood.mean_link == "sigmoid" else "loc"
        text["loc"] = f"the mean before its link: mean = {link}"
        if kind is Gaussian:
            text["log_var"] = (
                f"raw log variance r: log sigma^2 = m + softplus(r - m), m = "
                f"log(min_var={likelihood.floor})"
            )
        else:
            text["log_scale"] = (
                f"raw log scale r: log b = m + softplus(r - m), m = "
                f"log(min_scale={likelihood.floor})"
            )
    elif kind is Beta:
        c = likelihood.min_concentration
        text["concentration1"] = f"raw r: a = softplus(r) + {c}"
        text["concentration0"] = f"raw r: b = softplus(r) + {c}"
    elif kind is Poisson:
        text["logits"] = "log rate: rate = exp(y)"
    elif kind is NegativeBinomial:
        text["logits"] = "logits y: mean = r exp(y)"
        text["total_count"] = f"raw r': r = softplus(r') + {likelihood.min_total_count}"
    elif kind is Categorical:
        text["logits"] = f"logits over {likelihood.levels} grey levels k / {likelihood.levels - 1}"
    elif isinstance(likelihood, Family):
        for param, link in likelihood.params.items():
            text[param] = f"{likelihood.family.__name__}'s {param} = {link}(output)"
    out = []
    for head in likelihood_heads(likelihood):
        shape = "[..., D]" if head.per_dim == 1 else f"[..., D, {head.per_dim}]"
        if head.shared:
            shape += " (shared: the same for every z)"
        meaning = text.get(head.name, f"what the likelihood {likelihood!r} takes")
        out.append({"name": head.name, "shape": shape, "meaning": meaning})
    return out
