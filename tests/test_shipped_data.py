"""The repository carries MNIST (experiments/data): the files are the official ones, git
tracks them, the default data lookup reads them in place from a clone (nothing is written
there), a directory the user names is the only one searched, and a download that fails
leaves no empty directory behind, inside or outside the repository."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

import pyro_vae
from pyro_vae import data
from pyro_vae.data import ChecksumError, DataNotFoundError, datasets, download, load_dataset

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "experiments" / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"
#: The official MNIST files: bytes, MD5 (torchvision's list) and SHA-256.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (
        9912422,
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train-labels-idx1-ubyte.gz": (
        28881,
        "d53e105ee54ea40749a09fcbcd1e9432",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "t10k-images-idx3-ubyte.gz": (
        1648877,
        "9fb629c4189551a2d022fa330f9573f3",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        4542,
        "ec29112dd5afa0611ce80d1b7f02629c",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}
# a port nothing listens on: every download attempt is refused at once
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


@pytest.fixture(autouse=True)
def no_data_environment(monkeypatch):
    """A developer's own data directory or mirror must not leak into these tests."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def test_the_shipped_mnist_files_are_the_official_ones():
    for name, (size, md5, sha256) in MNIST_FILES.items():
        content = (SHIPPED / "MNIST" / "raw" / name).read_bytes()
        assert len(content) == size, name
        assert hashlib.md5(content).hexdigest() == md5, name
        assert hashlib.sha256(content).hexdigest() == sha256, name
        # the loader checks the same MD5s before every use
        assert download.CHECKSUMS[name] == f"md5:{md5}"
    assert sorted(p.name for p in (SHIPPED / "MNIST" / "raw").iterdir()) == sorted(MNIST_FILES)


def test_the_data_readme_states_source_checksums_and_licence():
    text = (SHIPPED / "README.md").read_text()
    for _, md5, sha256 in MNIST_FILES.values():
        assert md5 in text and sha256 in text
    assert "Creative Commons Attribution-Share Alike 3.0" in text
    assert "LeCun" in text and "Cortes" in text and "Burges" in text
    # Frey Face's terms are unknown: not shipped, and the page says so
    assert "Frey Face: not shipped" in text
    assert not (SHIPPED / "FreyFace").exists()


def test_git_tracks_the_shipped_files():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "experiments/data"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    expected = ["experiments/data/README.md"] + [
        f"experiments/data/MNIST/raw/{n}" for n in MNIST_FILES
    ]
    assert sorted(tracked) == sorted(expected)


def test_the_default_lookup_reads_the_shipped_copy_from_the_repository_root(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    if (ROOT / "data" / "MNIST").exists():
        pytest.skip("./data holds MNIST here, which the lookup reads first")
    before = listing(SHIPPED)
    ds = load_dataset("mnist", download=False)
    assert ds.source.startswith(str(SHIPPED / "MNIST" / "raw"))
    assert ds.settings["data_dir"] is None  # read again the same way by evaluate
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    assert ds.train_labels is not None and ds.test_labels is not None
    # the pixels are the official file's, byte for byte: its uncompressed MD5
    pixels = (ds.train * 255).round().to(torch.uint8).numpy().tobytes()
    header = np.array([2051, 60000, 28, 28], dtype=">u4").tobytes()
    assert (
        f"md5:{hashlib.md5(header + pixels).hexdigest()}"
        == download.CHECKSUMS["train-images-idx3-ubyte"]
    )
    assert listing(SHIPPED) == before  # read in place: nothing written, nothing touched
    assert not (ROOT / "data").exists()  # and nothing downloaded


def test_the_default_lookup_finds_the_copy_beside_the_package_from_any_directory(
    monkeypatch, tmp_path
):
    if Path(pyro_vae.__file__).resolve().parents[1] != ROOT:
        pytest.skip("pyro_vae is not imported from this checkout (not an editable install)")
    monkeypatch.chdir(tmp_path)
    assert datasets.shipped_data_dirs() == [SHIPPED]
    ds = load_dataset("mnist", download=False, train_size=10)
    assert ds.source.startswith(str(SHIPPED))
    assert list(tmp_path.iterdir()) == []  # no ./data made in the working directory


def test_the_shipped_tensors_are_the_verified_copies(monkeypatch):
    if not (SHARED_DATA / "MNIST").is_dir():
        pytest.skip(f"no verified copy in {SHARED_DATA}")
    monkeypatch.chdir(ROOT)
    shipped = load_dataset("mnist", download=False)
    shared = load_dataset("mnist", SHARED_DATA, download=False)
    assert shipped.source != shared.source
    for a, b in [
        (shipped.train, shared.train),
        (shipped.test, shared.test),
        (shipped.train_labels, shared.train_labels),
        (shipped.test_labels, shared.test_labels),
    ]:
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_a_data_directory_the_user_names_is_the_only_one_searched(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    for setting in ("data_dir", "env"):
        chosen = tmp_path / setting
        if setting == "env":
            monkeypatch.setenv(data.DATA_DIR_ENV, str(chosen))
        with pytest.raises(DataNotFoundError) as error:
            load_dataset("mnist", chosen if setting == "data_dir" else None, download=False)
        message = str(error.value)
        assert str(chosen / "MNIST" / "raw") in message
        assert "experiments/data" in message and "data_dir unset" in message
        assert not chosen.exists()


def test_a_shipped_file_with_a_wrong_checksum_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "clone" / "experiments" / "data"
    shutil.copytree(SHIPPED / "MNIST", fake / "MNIST")
    images = fake / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    content = bytearray(gzip.decompress(images.read_bytes()))
    content[-1] ^= 1
    images.write_bytes(gzip.compress(bytes(content)))
    monkeypatch.chdir(tmp_path / "clone")
    monkeypatch.setattr(datasets, "shipped_data_dirs", lambda: [fake])
    with pytest.raises(ChecksumError, match=r"t10k-images-idx3-ubyte\.gz does not match"):
        load_dataset("mnist", download=False)


def test_frey_face_is_read_from_a_shipped_copy_in_place(monkeypatch, tmp_path):
    # Frey Face is not shipped (its terms are unknown); a copy put there would be read
    ff = np.random.RandomState(0).randint(0, 256, size=(560, 210)).astype(np.uint8)
    fake = tmp_path / "clone" / "experiments" / "data"
    (fake / "FreyFace").mkdir(parents=True)
    scipy.io.savemat(fake / "FreyFace" / "frey_rawface.mat", {"ff": ff})
    content = (fake / "FreyFace" / "frey_rawface.mat").read_bytes()
    monkeypatch.setitem(
        download.CHECKSUMS, "frey_rawface.mat", f"md5:{hashlib.md5(content).hexdigest()}"
    )
    monkeypatch.chdir(tmp_path / "clone")
    before = listing(fake)
    assert datasets.shipped_data_dirs()[0] == fake.resolve()
    ds = load_dataset("frey_face", download=False)
    assert ds.source == str(fake.resolve() / "FreyFace" / "frey_rawface.mat")
    assert ds.train.shape == (10, 560) and ds.test.shape == (200, 560)
    assert listing(fake) == before and not (tmp_path / "clone" / "data").exists()


def test_a_failed_download_leaves_no_empty_directories_outside_the_repository(tmp_path):
    # data_dir=../shared/data from a clone where no such directory exists
    outside = tmp_path / "shared" / "data"
    (tmp_path / "clone").mkdir()
    down = "http://127.0.0.1:9/"
    for name in ("mnist", "frey_face", "binarized_mnist", "omniglot", "cifar10"):
        with pytest.raises(DataNotFoundError):
            load_dataset(name, outside, mirrors=[down])
        assert not (tmp_path / "shared").exists(), name
    # directories that existed before stay, and so do files
    (outside / "MNIST").mkdir(parents=True)
    (outside / "keep.txt").write_text("mine")
    with pytest.raises(DataNotFoundError):
        load_dataset("mnist", outside, mirrors=[down])
    assert sorted(p.name for p in outside.iterdir()) == ["MNIST", "keep.txt"]
    assert list((outside / "MNIST").iterdir()) == []


def test_an_offline_command_leaves_no_data_directory_behind(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (data.DATA_DIR_ENV, data.MIRROR_ENV, "NO_PROXY", "no_proxy")
    }
    env.update(OFFLINE, PYTHONPATH=str(ROOT))
    (tmp_path / "clone").mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_vae",
            "train",
            "dataset=frey_face",
            "data_dir=../shared/data",
            f"run_dir={tmp_path / 'run'}",
            "progress=false",
        ],
        cwd=tmp_path / "clone",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Frey Face data not found in" in done.stderr and "Download failed" in done.stderr
    assert not (tmp_path / "shared").exists()  # ../shared/data was not made
