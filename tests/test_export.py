"""Exported encoders and decoders load with torch alone and compute what the trained networks
compute: checked in a process where pyro_vae and pyro cannot be imported."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae import ArgumentError
from pyro_vae.cli import main

from .conftest import bars_dataset

# Run in a fresh interpreter, in an empty directory: pyro_vae and pyro are made unimportable
# (a None entry in sys.modules makes `import` raise ImportError), the export directory is
# put on sys.path and its loader computes the networks' outputs on the saved inputs.
LOAD_WITHOUT_PYRO_VAE = r"""
import sys
sys.modules["pyro_vae"] = None
sys.modules["pyro"] = None
for name in ("pyro_vae", "pyro"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(name + " is importable")
export_dir, inputs_path, results_path = sys.argv[1:]
sys.path.insert(0, export_dir)
import torch
import vae_export

inputs = torch.load(inputs_path)
results = {}
with torch.no_grad():
    if "z" in inputs:
        decoder = vae_export.load_decoder()
        results["decoder"] = decoder(inputs["z"])
        results["mean_available"] = decoder.mean_available
        if decoder.mean_available:
            results["mean"] = decoder.mean(inputs["z"])
    if "x" in inputs:
        results["encoder"] = vae_export.load_encoder()(inputs["x"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pyro", "pyro_vae")
                and sys.modules[m] is not None)
results["pyro_modules"] = loaded
torch.save(results, results_path)
"""


def run_without_pyro_vae(export_dir: Path, inputs: dict, tmp_path: Path) -> dict:
    inputs_path, results_path = tmp_path / "inputs.pt", tmp_path / "results.pt"
    torch.save(inputs, inputs_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    empty = tmp_path / "cwd"
    empty.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PYRO_VAE, str(export_dir), str(inputs_path),
         str(results_path)],
        cwd=empty, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = torch.load(results_path)
    assert results["pyro_modules"] == []
    return results


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def assert_equal_outputs(got, want) -> None:
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and torch.equal(g, w)


def check_export(vae, export_dir: Path, tmp_path: Path, z_lead=(4, 5), x_lead=(3,)) -> dict:
    """The exported networks of ``vae`` in ``export_dir`` against ``vae``'s own, bit for bit
    (random inputs with leading dimensions); returns the subprocess's results."""
    g = torch.Generator().manual_seed(0)
    x_dim = json.loads((export_dir / "export.json").read_text())["x_dim"]
    inputs = {
        "z": torch.randn(*z_lead, vae.latent_dim, generator=g),
        "x": torch.rand(*x_lead, x_dim, generator=g),
    }
    results = run_without_pyro_vae(export_dir, inputs, tmp_path)
    vae.eval()
    with torch.no_grad():
        assert_equal_outputs(results["decoder"], vae.decoder(inputs["z"]))
        assert_equal_outputs(results["encoder"], vae.encoder(inputs["x"]))
        if results["mean_available"]:
            assert_equal_outputs(results["mean"], vae.decode_mean(inputs["z"]))
    return results


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_an_mlp_exports_as_plain_modules_loaded_without_pyro_vae(tmp_path, likelihood):
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=12, latent_dim=3, hidden_dims=[8, 6], likelihood=likelihood)
    manifest = pyro_vae.export_model(vae, tmp_path / "exp")
    parts = manifest["parts"]
    assert {p["format"] for p in parts.values()} == {"python"}
    heads = [o["name"] for o in parts["decoder"]["outputs"]]
    assert heads == (["logits"] if likelihood == "bernoulli" else ["loc", "log_var"])
    results = check_export(vae, tmp_path / "exp", tmp_path)
    assert results["mean_available"]
    # The state dict is the networks' own: the loader's modules have the same names.
    state = torch.load(tmp_path / "exp" / "decoder.pt", weights_only=True)
    assert state.keys() == vae.decoder.state_dict().keys()


def test_a_conv_network_exports_with_torch_export(tmp_path):
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.build(
        2 * 9 * 7,
        {"name": "conv", "channels": [4, 6], "hidden_dims": [10]},
        image_shape=(2, 9, 7),
        latent_dim=3,
        likelihood={"name": "gaussian", "variance": "learned"},
    )
    manifest = pyro_vae.export_model(vae, tmp_path / "exp")
    assert {p["format"] for p in manifest["parts"].values()} == {"torch.export"}
    assert manifest["image_shape"] == [2, 9, 7]
    assert {Path(f).name for f in manifest["files"]} == {
        "encoder.pt2", "decoder.pt2", "vae_export.py", "export.json"
    }  # fmt: skip
    check_export(vae, tmp_path / "exp", tmp_path, z_lead=(2, 3), x_lead=(1,))


class Encoder(nn.Module):
    """A user's encoder, as in Pyro's VAE example."""

    def __init__(self, x_dim: int = 12, z_dim: int = 2):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(x_dim, 7), nn.Linear(7, z_dim), nn.Linear(7, 2)

    def forward(self, x):
        h = nn.functional.softplus(self.fc1(x))
        return self.fc21(h), torch.exp(self.fc22(h))


class Decoder(nn.Module):
    def __init__(self, z_dim: int = 2, x_dim: int = 12, branchy: bool = False):
        super().__init__()
        self.fc, self.branchy = nn.Linear(z_dim, x_dim), branchy

    def forward(self, z):
        out = self.fc(z)
        if self.branchy and out.sum() > 0:  # data-dependent: torch.export cannot trace it
            return -out
        return out


def test_your_own_networks_and_an_mlp_on_request_export_with_torch_export(tmp_path):
    pyro.set_rng_seed(0)
    own = pyro_vae.VAE(Encoder(), Decoder(), latent_dim=2)
    with pytest.raises(ArgumentError, match="input size is unknown: pass x_dim"):
        pyro_vae.export_model(own, tmp_path / "own")  # nothing records the data's size
    manifest = pyro_vae.export_model(own, tmp_path / "own", x_dim=12)
    assert manifest["parts"]["decoder"]["network"].endswith("test_export.Decoder")
    check_export(own, tmp_path / "own", tmp_path)

    mlp = pyro_vae.VAE.mlp(x_dim=12, latent_dim=3, hidden_dims=[5])
    manifest = pyro_vae.export_model(mlp, tmp_path / "mlp", backend="torch.export")
    assert {p["format"] for p in manifest["parts"].values()} == {"torch.export"}
    check_export(mlp, tmp_path / "mlp", tmp_path)


def load_in_process(export_dir: Path):
    """The export's loader imported from its directory (in this process)."""
    spec = importlib.util.spec_from_file_location("vae_export_test", export_dir / "vae_export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MEANS = [
    "bernoulli",
    {"name": "gaussian", "mean": "identity", "scale": 0.5},
    "laplace",
    "poisson",
    {"name": "categorical", "levels": 5},
    "beta",
    "negative_binomial",
]


@pytest.mark.parametrize("likelihood", MEANS, ids=lambda s: s if isinstance(s, str) else s["name"])
def test_the_decoder_mean_is_the_likelihoods(tmp_path, likelihood):
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=6, latent_dim=2, hidden_dims=[4], likelihood=likelihood).eval()
    pyro_vae.export_model(vae, tmp_path, part="decoder")
    decoder = load_in_process(tmp_path).load_decoder(tmp_path)
    z = torch.randn(3, 2) * 3
    with torch.no_grad():
        assert_equal_outputs(decoder(z), vae.decoder(z))
        assert torch.equal(decoder.mean(z), vae.decode_mean(z))


def test_a_likelihood_without_a_simple_mean_exports_its_outputs(tmp_path):
    vae = pyro_vae.VAE.mlp(
        x_dim=6, latent_dim=2, hidden_dims=[4], likelihood="continuous_bernoulli"
    )
    manifest = pyro_vae.export_model(vae, tmp_path, part="decoder")
    assert manifest["parts"]["decoder"]["mean"] is None and "encoder" not in manifest["parts"]
    decoder = load_in_process(tmp_path).load_decoder(tmp_path)
    assert not decoder.mean_available
    with pytest.raises(NotImplementedError, match="not exported for this likelihood"):
        decoder.mean(torch.zeros(2))
    with pytest.raises(ValueError, match="holds no encoder"):
        load_in_process(tmp_path).load_encoder(tmp_path)


def test_the_cli_exports_a_trained_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[8])
    x = torch.tensor(bars_dataset(60))
    pyro_vae.train(vae, x, run_dir, epochs=1, batch_size=20, progress=False, plots=False)
    assert main(["export", str(run_dir), f"out={tmp_path / 'dec'}", "part=decoder"]) == 0
    printed = capsys.readouterr().out
    assert "decoder: python" in printed and "vae_export.load_decoder()" in printed
    manifest = json.loads((tmp_path / "dec" / "export.json").read_text())
    assert list(manifest["parts"]) == ["decoder"] and manifest["checkpoint"] == "last.pt"
    assert manifest["run_dir"] == str(run_dir) and manifest["x_dim"] == 16

    assert main(["export", str(run_dir), "checkpoint=epoch_0001.pt"]) == 0  # out: RUN_DIR/export
    manifest = json.loads((run_dir / "export" / "export.json").read_text())
    assert sorted(manifest["parts"]) == ["decoder", "encoder"]
    assert manifest["checkpoint"] == "epoch_0001.pt"
    loaded = pyro_vae.load_run(run_dir, checkpoint="epoch_0001.pt")
    check_export(loaded.vae, run_dir / "export", tmp_path)


def test_bad_arguments_are_refused_naming_them(tmp_path, capsys):
    vae = pyro_vae.VAE.mlp(x_dim=6, latent_dim=2, hidden_dims=[4])
    with pytest.raises(ArgumentError, match=r"part='decodr' is not allowed: expected one of"):
        pyro_vae.export_model(vae, tmp_path / "x", part="decodr")
    with pytest.raises(ArgumentError, match=r"backend='onnx' is not allowed"):
        pyro_vae.export_model(vae, tmp_path / "x", backend="onnx")
    with pytest.raises(ArgumentError, match="source='list' is not allowed"):
        pyro_vae.export_model([vae], tmp_path / "x")
    conv = pyro_vae.VAE.build(64, "conv", image_shape=(8, 8), latent_dim=2)
    with pytest.raises(ArgumentError, match=r"backend=python .* the encoder is a ConvEncoder"):
        pyro_vae.export_model(conv, tmp_path / "x", backend="python")
    branchy = pyro_vae.VAE(Encoder(), Decoder(branchy=True), latent_dim=2)
    with pytest.raises(ArgumentError, match=r"the decoder \(Decoder\) cannot be exported with"):
        pyro_vae.export_model(branchy, tmp_path / "x", part="decoder", x_dim=12)

    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "part=both2"]) == 2  # checked before the run is read
    assert "error: part='both2' is not allowed: expected one of" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "format=onnx"]) == 2
    assert "unknown key 'format'" in capsys.readouterr().err
