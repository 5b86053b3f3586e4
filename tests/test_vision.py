"""torchvision, the [vision] extra: its datasets by class name (dataset=torchvision), its idx
reader behind the built-in MNIST readers (bit-identical tensors), make_grid behind the
figures (the same pictures), a user's transforms through pyro_vae.train, and the error
that names the extra where it is absent.

The tests that need torchvision are marked ``torchvision`` and skipped without it; CI runs
this file's marked tests in its second environment (``pytest -m torchvision
tests/test_vision.py``, .ci/run): keep them here."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae import plots
from pyro_vae.config import compose_config, run_training
from pyro_vae.data import DataError, DataNotFoundError, datasets, load_dataset, read_idx, vision
from pyro_vae.errors import ArgumentError, MissingPackageError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MNIST = ROOT / "experiments" / "data" / "MNIST" / "raw"
SHARED_MNIST = ROOT.parent / "shared" / "data" / "MNIST" / "raw"
HAVE_TORCHVISION = importlib.util.find_spec("torchvision") is not None
REASON = (
    "needs torchvision (the [vision] extra: pip install torch==2.14.1 torchvision==0.29.1 && "
    'pip install -e ".[vision]"); CI runs it in its second environment: pytest -m torchvision'
)
# a port nothing listens on: every download attempt is refused at once
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def needs_torchvision(test):
    return pytest.mark.torchvision(pytest.mark.skipif(not HAVE_TORCHVISION, reason=REASON)(test))


@pytest.fixture(autouse=True)
def no_data_environment(monkeypatch):
    monkeypatch.delenv(pyro_vae.data.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(pyro_vae.data.MIRROR_ENV, raising=False)


@pytest.fixture
def offline(monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
        monkeypatch.setenv(key.lower(), value)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def verified_gz() -> Path:
    """The verified gzip files: the shared copies where present, else the shipped ones."""
    return SHARED_MNIST if SHARED_MNIST.is_dir() else SHIPPED_MNIST


def uncompressed_copy(root: Path) -> Path:
    """``root/MNIST/raw`` holding MNIST's four idx files uncompressed, as torchvision leaves
    them (and no .gz files)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in STEMS:
        (raw / stem).write_bytes(gzip.decompress((verified_gz() / f"{stem}.gz").read_bytes()))
    return raw


def same(a: pyro_vae.Dataset, b: pyro_vae.Dataset) -> bool:
    pairs = [
        (a.train, b.train),
        (a.test, b.test),
        (a.train_labels, b.train_labels),
        (a.test_labels, b.test_labels),
    ]
    return all(x.dtype == y.dtype and torch.equal(x, y) for x, y in pairs)


# --- without torchvision --------------------------------------------------------------------


def test_a_torchvision_feature_without_it_names_the_extra_and_the_install_line(monkeypatch):
    monkeypatch.setattr(vision, "_import_torchvision", lambda: (None, "which is not installed"))
    with pytest.raises(MissingPackageError) as error:
        load_dataset("FashionMNIST", library="torchvision")
    message = str(error.value)
    assert "dataset=torchvision (dataset.name=FashionMNIST) needs torchvision" in message
    assert "[vision]" in message and vision.INSTALL_LINE in message
    assert "pip install torch==2.14.1 torchvision==0.29.1" in message
    # the rest works without it: the project's own readers and grids
    assert vision.read_idx_with_torchvision(Path("unused"), 2051) is None
    grid = plots.image_grid(torch.zeros(4, 6), (2, 3), 2)
    assert grid.shape == (5, 7)


def test_torchvision_only_arguments_are_refused_for_the_built_in_datasets():
    with pytest.raises(ArgumentError, match=r"root, options only apply to library=torchvision"):
        load_dataset("mnist", root="data", options={"split": "x"})
    with pytest.raises(ArgumentError, match=r"library='keras' is not allowed"):
        load_dataset("MNIST", library="keras")


# --- the built-in MNIST readers -------------------------------------------------------------


@needs_torchvision
def test_torchvision_reads_uncompressed_idx_files_as_the_project_reader_does(tmp_path):
    raw = uncompressed_copy(tmp_path)
    for stem, magic in zip(STEMS, (2051, 2049, 2051, 2049), strict=True):
        ours = read_idx(raw / stem, magic)
        theirs = vision.read_idx_with_torchvision(raw / stem, magic)
        assert theirs.dtype == ours.dtype == np.uint8 and np.array_equal(theirs, ours)
    with pytest.raises(DataError, match="could not be read as an idx file"):
        vision.read_idx_with_torchvision(raw / STEMS[1], 2051)  # labels read as images


@needs_torchvision
def test_the_built_in_mnist_reader_uses_torchvision_and_gives_the_same_tensors(
    tmp_path, monkeypatch
):
    from torchvision.datasets import mnist

    read = []
    original = mnist.read_image_file
    monkeypatch.setattr(mnist, "read_image_file", lambda p: read.append(p) or original(p))
    uncompressed_copy(tmp_path / "tv")
    by_torchvision = load_dataset("mnist", tmp_path / "tv", download=False)
    assert sorted(Path(p).name for p in read) == [
        "t10k-images-idx3-ubyte",
        "train-images-idx3-ubyte",
    ]
    by_project = load_dataset("mnist", verified_gz().parents[1], download=False)
    assert ".gz" in by_project.source and ".gz" not in by_torchvision.source
    assert same(by_torchvision, by_project)
    # the pixels are the official ones: the MD5 of the uncompressed training images
    pixels = (by_torchvision.train * 255).round().to(torch.uint8).numpy().tobytes()
    header = np.array([2051, 60000, 28, 28], dtype=">u4").tobytes()
    assert hashlib.md5(header + pixels).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"


@needs_torchvision
def test_a_copy_torchvision_downloaded_is_read_as_it_is(tmp_path, offline):
    import torchvision

    # torchvision's download with the verified .gz files in place: it checks their MD5s,
    # fetches nothing, and unpacks them beside the .gz files
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in STEMS:
        shutil.copyfile(verified_gz() / f"{stem}.gz", raw / f"{stem}.gz")
    torchvision.datasets.MNIST(tmp_path, train=True, download=True)
    assert sorted(p.name for p in raw.iterdir()) == sorted([*STEMS, *(f"{s}.gz" for s in STEMS)])
    both = load_dataset("mnist", tmp_path, download=False)
    for stem in STEMS:
        (raw / f"{stem}.gz").unlink()
    uncompressed = load_dataset("mnist", tmp_path, download=False)
    via_class = load_dataset("MNIST", library="torchvision", root=tmp_path, download=False)
    assert same(both, uncompressed) and same(uncompressed, via_class)
    assert via_class.image_shape == (28, 28) and via_class.name == "MNIST"


# --- dataset=torchvision ----------------------------------------------------------------------


@needs_torchvision
def test_a_torchvision_dataset_trains_from_the_command_line_and_reads_back(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        "dataset=torchvision",
        "dataset.name=FakeData",
        "dataset.options={size: 60, image_size: [1, 8, 6], num_classes: 3}",
        "dataset.test_fraction=0.25",
        f"run_dir={run_dir}",
        "latent_dim=2",
        "hidden_dims=[16]",
        "batch_size=15",
        "epochs=2",
        "progress=false",
        "eval_num_samples=5",
    ]
    summary = run_training(compose_config(overrides))
    assert summary["status"] == "finished" and np.isfinite(summary["test_elbo"])
    loaded = pyro_vae.load_run(run_dir)
    data = loaded.data()
    assert loaded.cfg["dataset"]["name"] == "FakeData"
    assert loaded.cfg["dataset"]["library"] == "torchvision"
    assert data.dataset.image_shape == (8, 6) and data.train.shape == (45, 48)
    assert data.test.shape == (15, 48)
    direct = load_dataset(
        "FakeData",
        library="torchvision",
        options={"size": 60, "image_size": [1, 8, 6], "num_classes": 3},
        test_fraction=0.25,
    )
    # the fixed binarisation of the test set is a function of the grey levels read again
    assert torch.equal(direct.train, data.dataset.train)
    assert direct.train_labels is not None and int(direct.train_labels.max()) <= 2
    assert (run_dir / "figures" / "samples.png").is_file()  # grids of (8, 6) images


@needs_torchvision
def test_torchvision_images_become_rows_in_zero_one_with_their_shape():
    import torchvision

    colour = load_dataset(
        "FakeData", library="torchvision", options={"size": 20, "image_size": [3, 5, 4]}
    )
    assert colour.image_shape == (3, 5, 4) and colour.train.shape == (18, 60)
    fake = torchvision.datasets.FakeData(size=20, image_size=(3, 5, 4))
    order = np.random.RandomState(0).permutation(20)
    first = torch.from_numpy(np.array(fake[int(order[0])][0])).permute(2, 0, 1) / 255
    assert torch.equal(colour.train[0], first.reshape(-1).float())
    assert (
        colour.train.dtype == torch.float32 and 0 <= colour.train.min() <= colour.train.max() <= 1
    )
    assert "FakeData" in colour.source and "test_fraction=0.1" in colour.source


@needs_torchvision
def test_torchvision_datasets_refuse_what_they_cannot_use(tmp_path):
    with pytest.raises(ArgumentError) as error:
        load_dataset("NoSuchSet", library="torchvision", root=tmp_path)
    assert "name='NoSuchSet' is not allowed" in str(error.value)
    assert "FashionMNIST" in str(error.value) and "SVHN" in str(error.value)
    with pytest.raises(ArgumentError, match="refused its arguments"):
        load_dataset("FakeData", library="torchvision", options={"colour": True})
    with pytest.raises(ArgumentError, match=r"options=.*plain values.*transform="):
        load_dataset("FakeData", library="torchvision", options={"transform": print})
    with pytest.raises(ArgumentError, match="has no train/test argument"):
        load_dataset("FakeData", library="torchvision", test_split="val")
    with pytest.raises(ArgumentError, match=r"options\.train is not allowed"):
        load_dataset("MNIST", library="torchvision", root=tmp_path, options={"train": False})
    # the repository's read-only copy is never torchvision's root (it would unpack there)
    with pytest.raises(ArgumentError, match="read-only data"):
        load_dataset("MNIST", library="torchvision", root=SHIPPED_MNIST.parents[1])
    # absent and not downloaded: named, and no directory made
    with pytest.raises(DataNotFoundError, match=r"MNIST\(root=.*download=true lets torchvision"):
        load_dataset("MNIST", library="torchvision", root=tmp_path / "tv", download=False)
    assert not (tmp_path / "tv").exists()


@needs_torchvision
def test_a_failed_torchvision_download_leaves_no_empty_directories(tmp_path, offline):
    root = tmp_path / "outside" / "data"
    with pytest.raises(DataNotFoundError, match=r"KMNIST\(root="):
        load_dataset("KMNIST", library="torchvision", root=root, download=True)
    assert not (tmp_path / "outside").exists()


# --- the figures --------------------------------------------------------------------------------


@needs_torchvision
def test_make_grid_tiles_the_same_grids(monkeypatch):
    import torchvision

    calls = []
    original = torchvision.utils.make_grid
    monkeypatch.setattr(
        torchvision.utils, "make_grid", lambda *a, **k: calls.append(k) or original(*a, **k)
    )
    cases = [((28, 28), 100, 10), ((28, 20), 400, 20), ((3, 8, 8), 12, 4), ((28, 28), 3, 8)]
    for shape, n, ncol in cases:
        images = torch.rand(n, int(np.prod(shape)))
        with_torchvision = plots.image_grid(images, shape, ncol)
        with monkeypatch.context() as m:
            m.setattr(plots, "optional_torchvision", lambda: None)
            without = plots.image_grid(images, shape, ncol)
        assert with_torchvision.dtype == without.dtype and np.array_equal(with_torchvision, without)
    assert len(calls) == 3  # three cases fill a row; the narrow one is tiled by the project


@needs_torchvision
def test_the_sample_and_manifold_figures_are_the_same_pictures(tmp_path, monkeypatch):
    torch.manual_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=28 * 20, latent_dim=2, hidden_dims=[16])
    pictures = {}
    for label in ("torchvision", "project"):
        with monkeypatch.context() as m:
            if label == "project":
                m.setattr(plots, "optional_torchvision", lambda: None)
            for figure in (plots.plot_samples, plots.plot_manifold):
                path = tmp_path / f"{label}_{figure.__name__}.png"
                figure(vae, (28, 20), path)
                pictures[label, figure.__name__] = path.read_bytes()
    for name in ("plot_samples", "plot_manifold"):
        assert pictures["torchvision", name] == pictures["project", name]


# --- a user's transforms ------------------------------------------------------------------------


@needs_torchvision
def test_the_transform_example_of_the_docs_runs(tmp_path):
    text = (ROOT / "docs" / "data.md").read_text()
    block = re.search(
        r"tests/test_vision\.py runs this block -->\n```python\n(.*?)```", text, re.S
    ).group(1)
    # offline, as the page says: the repository's copy where torchvision downloads to
    shutil.copytree(SHIPPED_MNIST.parent, tmp_path / "data" / "MNIST")
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(OFFLINE, OMP_NUM_THREADS="1", PYTHONPATH="")
    done = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert np.isfinite(float(done.stdout.strip().splitlines()[-1]))
    config = (tmp_path / "runs" / "mnist_rotated" / "config.yaml").read_text()
    assert "binarize: dynamic" in config
    assert not any(datasets.is_shipped_path(p) for p in (tmp_path / "data").rglob("*"))
