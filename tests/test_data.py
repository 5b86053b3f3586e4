"""Tests for the pyro_vae.data package. Every test writes its own small files under tmp_path;
only the last one reads the real datasets, and is skipped where they are absent."""

import functools
import gzip
import hashlib
import http.server
import logging
import math
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from pyro_vae import data
from pyro_vae.data import (
    ChecksumError,
    DataError,
    DataNotFoundError,
    Minibatches,
    binarize,
    check_data_for_likelihood,
    download,
    load_dataset,
    read_idx,
    resolve_data_dir,
)
from pyro_vae.errors import ArgumentError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --- helpers ---------------------------------------------------------------------------------


def trust(monkeypatch, name: str, content: bytes, algorithm: str = "md5") -> None:
    """Make the checksum table accept ``content`` as the file ``name``."""
    digest = hashlib.new(algorithm, content).hexdigest()
    monkeypatch.setitem(download.CHECKSUMS, name, f"{algorithm}:{digest}")


def idx_bytes(a: np.ndarray) -> bytes:
    return struct.pack(f">I{a.ndim}I", 0x0800 | a.ndim, *a.shape) + a.astype(np.uint8).tobytes()


def frey_mat_bytes(tmp_path: Path, n: int = 210, seed: int = 1) -> tuple[bytes, np.ndarray]:
    ff = np.random.RandomState(seed).randint(0, 256, size=(560, n)).astype(np.uint8)
    scratch = tmp_path / f"scratch-{seed}.mat"
    scipy.io.savemat(scratch, {"ff": ff})
    return scratch.read_bytes(), ff


def amat_bytes(bits: np.ndarray) -> bytes:
    return "".join(" ".join(map(str, row)) + "\n" for row in bits).encode()


def unused_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(autouse=True)
def no_data_environment(monkeypatch):
    """A developer's own data directory or mirror must not leak into these tests."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)


@pytest.fixture
def server(tmp_path):
    """(root directory served, base URL): an HTTP server on 127.0.0.1 in a thread."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve(root: Path, mirror: str, name: str, content: bytes) -> None:
    (root / mirror).mkdir(exist_ok=True)
    (root / mirror / name).write_bytes(content)


def download_log(caplog) -> list[str]:
    """The progress messages the download module logged (the test set INFO on its logger)."""
    return [r.getMessage() for r in caplog.records if r.name == download.__name__]


# --- data directory --------------------------------------------------------------------------


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir(None) == tmp_path / "data"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir("") == tmp_path / "env"
    assert resolve_data_dir("given") == tmp_path / "given"
    assert resolve_data_dir("~/x") == Path.home() / "x"


# --- idx files -------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    raw = idx_bytes(images)
    path = tmp_path / ("x.gz" if compress else "x")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    np.testing.assert_array_equal(read_idx(path, 2051), images)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.arange(5)))
    with pytest.raises(DataError, match=r"labels is not the expected kind.*magic 2049, not 2051"):
        read_idx(path, 2051)


def test_read_idx_truncated(tmp_path):
    raw = idx_bytes(np.zeros((4, 28, 28)))
    path = tmp_path / "cut"
    path.write_bytes(raw[:-10])
    with pytest.raises(DataError, match=r"cut has 3142 bytes but its header.*truncated"):
        read_idx(path, 2051)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(DataError, match=r"cut.gz is not a complete gzip file"):
        read_idx(gz, 2051)


# --- MNIST -----------------------------------------------------------------------------------


def fake_mnist_files() -> dict[str, tuple[bytes, np.ndarray]]:
    rng = np.random.RandomState(0)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, size=(3, 28, 28)),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, size=(2, 28, 28)),
        "train-labels-idx1-ubyte": np.array([5, 0, 4]),
        "t10k-labels-idx1-ubyte": np.array([7, 2]),
    }
    return {stem: (idx_bytes(a), a) for stem, a in arrays.items()}


def test_mnist_downloaded_then_loaded(tmp_path, server, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=download.__name__)
    root, url = server
    files = fake_mnist_files()
    for stem, (raw, _) in files.items():
        packed = gzip.compress(raw)
        serve(root, "mnist", f"{stem}.gz", packed)
        trust(monkeypatch, f"{stem}.gz", packed)
    ds = load_dataset("mnist", tmp_path / "data", mirrors=[url + "mnist/"])
    assert ds.train.shape == (3, 784) and ds.test.shape == (2, 784)
    assert ds.train.dtype == torch.float32 and ds.image_shape == (28, 28) and not ds.binary
    expected = files["train-images-idx3-ubyte"][1].reshape(3, 784) / 255
    torch.testing.assert_close(ds.train, torch.tensor(expected, dtype=torch.float32))
    assert ds.train_labels.tolist() == [5, 0, 4] and ds.test_labels.tolist() == [7, 2]
    assert sorted(p.name for p in (tmp_path / "data/MNIST/raw").iterdir()) == sorted(
        f"{stem}.gz" for stem in files
    )
    assert sum(m.startswith("downloading ") for m in download_log(caplog)) == 4


def test_mnist_uncompressed_files_without_labels(tmp_path, monkeypatch):
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for stem, (raw, _) in fake_mnist_files().items():
        if "images" in stem:
            (raw_dir / stem).write_bytes(raw)
            trust(monkeypatch, stem, raw)
    ds = load_dataset("mnist", tmp_path, download=False, train_size=2)
    assert ds.train.shape == (2, 784) and ds.test.shape == (2, 784)
    assert ds.train_labels is None and ds.test_labels is None


def test_mnist_absent_offline_names_directory_files_and_urls(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("mnist", tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz" in message and "t10k-images-idx3-ubyte.gz" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert "data_dir=" in message and "PYRO_VAE_DATA_DIR" in message


# --- Frey Face -------------------------------------------------------------------------------


def test_frey_face_split(tmp_path, monkeypatch):
    content, ff = frey_mat_bytes(tmp_path)
    (tmp_path / "FreyFace").mkdir()
    (tmp_path / "FreyFace" / "frey_rawface.mat").write_bytes(content)
    trust(monkeypatch, "frey_rawface.mat", content)
    ds = load_dataset("frey_face", tmp_path, download=False)
    assert ds.train.shape == (10, 560) and ds.test.shape == (200, 560)
    assert ds.image_shape == (28, 20)
    order = np.random.RandomState(0).permutation(210)
    faces = torch.tensor(ff.T / 255, dtype=torch.float32)
    torch.testing.assert_close(ds.train, faces[order[:10]])
    torch.testing.assert_close(ds.test, faces[order[10:]])


def test_present_file_with_bad_checksum_is_refused_and_left_alone(tmp_path, server, monkeypatch):
    root, url = server
    good, _ = frey_mat_bytes(tmp_path)
    serve(root, "good", "frey_rawface.mat", good)
    trust(monkeypatch, "frey_rawface.mat", good)
    local = tmp_path / "data" / "FreyFace" / "frey_rawface.mat"
    local.parent.mkdir(parents=True)
    local.write_bytes(good[:-100])  # truncated
    before = local.stat().st_mtime_ns
    with pytest.raises(ChecksumError) as error:
        load_dataset("frey_face", tmp_path / "data", mirrors=[url + "good/"])
    message = str(error.value)
    assert str(local) in message and download.CHECKSUMS["frey_rawface.mat"][4:] in message
    assert hashlib.md5(good[:-100]).hexdigest() in message and "delete it" in message
    assert local.read_bytes() == good[:-100] and local.stat().st_mtime_ns == before


def test_checksum_of_unchanged_file_is_computed_once(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert download._file_digest(path, "md5") == hashlib.md5(b"abc").hexdigest()
    with monkeypatch.context() as m:
        m.setattr(download.hashlib, "new", None)  # any re-hash would fail
        assert download._file_digest(path, "md5") == hashlib.md5(b"abc").hexdigest()
    path.write_bytes(b"abcd")
    assert download._file_digest(path, "md5") == hashlib.md5(b"abcd").hexdigest()


# --- downloads -------------------------------------------------------------------------------


def test_download_lands_the_file(tmp_path, server, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=download.__name__)
    root, url = server
    good, _ = frey_mat_bytes(tmp_path)
    serve(root, "good", "frey_rawface.mat", good)
    trust(monkeypatch, "frey_rawface.mat", good)
    ds = load_dataset("frey_face", tmp_path / "data", mirrors=[url + "good"])
    directory = tmp_path / "data" / "FreyFace"
    assert (directory / "frey_rawface.mat").read_bytes() == good
    assert [p.name for p in directory.iterdir()] == ["frey_rawface.mat"]  # no temp file left
    assert ds.source == str(directory / "frey_rawface.mat")
    assert f"downloading frey_rawface.mat from {url}good/frey_rawface.mat" in download_log(caplog)


def test_download_skips_a_corrupt_mirror(tmp_path, server, monkeypatch):
    root, url = server
    good, _ = frey_mat_bytes(tmp_path)
    serve(root, "bad", "frey_rawface.mat", good[:-1] + b"!")
    serve(root, "good", "frey_rawface.mat", good)
    trust(monkeypatch, "frey_rawface.mat", good)
    load_dataset("frey_face", tmp_path / "data", mirrors=[url + "bad/", url + "good/"])
    assert (tmp_path / "data" / "FreyFace" / "frey_rawface.mat").read_bytes() == good


def test_download_all_mirrors_bad_lists_each_url_and_why(tmp_path, server, monkeypatch):
    root, url = server
    good, _ = frey_mat_bytes(tmp_path)
    serve(root, "bad", "frey_rawface.mat", b"not the file")
    trust(monkeypatch, "frey_rawface.mat", good)
    mirrors = [url + "bad/", url + "missing/"]
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("frey_face", tmp_path / "data", mirrors=mirrors)
    message = str(error.value)
    assert f"{url}bad/frey_rawface.mat: checksum mismatch" in message
    assert hashlib.md5(b"not the file").hexdigest() in message
    assert f"{url}missing/frey_rawface.mat: HTTP 404" in message
    # nothing left behind: no partial file, and not the directories made for the download
    assert not (tmp_path / "data").exists()


def test_mirror_from_environment_is_tried_first(tmp_path, server, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=download.__name__)
    root, url = server
    good, _ = frey_mat_bytes(tmp_path)
    serve(root, "good", "frey_rawface.mat", good)
    trust(monkeypatch, "frey_rawface.mat", good)
    monkeypatch.setenv(data.MIRROR_ENV, url + "good/")
    load_dataset("frey_face", tmp_path / "data", mirrors=[unused_port_url()])
    assert sum("downloading" in m for m in download_log(caplog)) == 1


def test_offline_error_names_directory_files_and_attempts(tmp_path):
    directory = tmp_path / "data" / "FreyFace"
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("frey_face", tmp_path / "data", download=False)
    message = str(error.value)
    assert str(directory / "frey_rawface.mat") in message
    assert "https://cs.nyu.edu/~roweis/data/frey_rawface.mat" in message
    assert "PYRO_VAE_DATA_DIR" in message

    down = unused_port_url()  # nothing listens there: connection refused
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("frey_face", tmp_path / "data", mirrors=[down])
    message = str(error.value)
    assert str(directory / "frey_rawface.mat") in message and f"{down}frey_rawface.mat:" in message
    assert not (tmp_path / "data").exists()


def test_file_mirror_from_environment(tmp_path, monkeypatch):
    # a local mirror (pooch has no downloader of its own for file:// URLs)
    good, _ = frey_mat_bytes(tmp_path)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "frey_rawface.mat").write_bytes(good)
    trust(monkeypatch, "frey_rawface.mat", good)
    monkeypatch.setenv(data.MIRROR_ENV, (tmp_path / "mirror").as_uri() + "/")
    load_dataset("frey_face", tmp_path / "data", mirrors=[unused_port_url()])
    assert (tmp_path / "data" / "FreyFace" / "frey_rawface.mat").read_bytes() == good


def test_data_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("frey_face", blocker)
    message = str(error.value)
    assert f"{blocker / 'FreyFace'} cannot be created" in message
    assert str(blocker / "FreyFace" / "frey_rawface.mat") in message and "data_dir=" in message


# --- binarized MNIST -------------------------------------------------------------------------


def test_binarized_mnist_built_from_downloaded_amat(tmp_path, server, monkeypatch):
    root, url = server
    rng = np.random.RandomState(0)
    bits = {split: rng.randint(0, 2, size=(n, 784)).astype(np.uint8) for split, n in
            [("train", 4), ("valid", 2), ("test", 3)]}  # fmt: skip
    for split, b in bits.items():
        content = amat_bytes(b)
        serve(root, "larochelle", f"binarized_mnist_{split}.amat", content)
        trust(monkeypatch, f"binarized_mnist_{split}.amat", content, "sha256")
        trust(monkeypatch, f"binarized_mnist.npz:{split}", b.tobytes(), "sha256")
    ds = load_dataset("binarized_mnist", tmp_path, mirrors=[url + "larochelle/"])
    for split in ("train", "valid", "test"):
        torch.testing.assert_close(getattr(ds, split), torch.tensor(bits[split]).float())
    assert ds.binary and ds.image_shape == (28, 28)
    # the npz replaces the text files and is what the next call reads
    directory = tmp_path / "BinarizedMNIST"
    assert [p.name for p in directory.iterdir()] == ["binarized_mnist.npz"]
    again = load_dataset("binarized_mnist", tmp_path, download=False)
    torch.testing.assert_close(again.train, ds.train)

    monkeypatch.setitem(download.CHECKSUMS, "binarized_mnist.npz:test", "sha256:" + "0" * 64)
    with pytest.raises(ChecksumError, match=r"binarized_mnist.npz \(array 'test'\)"):
        load_dataset("binarized_mnist", tmp_path, download=False)


def test_binarized_mnist_present_amat_is_used_not_downloaded(tmp_path, server, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=download.__name__)
    root, url = server
    rng = np.random.RandomState(1)
    directory = tmp_path / "BinarizedMNIST"
    directory.mkdir()
    bits = {split: rng.randint(0, 2, size=(2, 784)).astype(np.uint8) for split in
            ("train", "valid", "test")}  # fmt: skip
    for split, b in bits.items():
        content = amat_bytes(b)
        trust(monkeypatch, f"binarized_mnist_{split}.amat", content, "sha256")
        trust(monkeypatch, f"binarized_mnist.npz:{split}", b.tobytes(), "sha256")
        if split == "train":
            (directory / "binarized_mnist_train.amat").write_bytes(content)
        else:
            serve(root, "larochelle", f"binarized_mnist_{split}.amat", content)
    ds = load_dataset("binarized_mnist", tmp_path, mirrors=[url + "larochelle/"])
    torch.testing.assert_close(ds.train, torch.tensor(bits["train"]).float())
    assert sorted(download_log(caplog)) == [
        f"downloading {name} from {url}larochelle/{name}"
        for name in ("binarized_mnist_test.amat", "binarized_mnist_valid.amat")
    ]
    # the user's own file stays; the downloaded ones gave way to the npz
    assert sorted(p.name for p in directory.iterdir()) == [
        "binarized_mnist.npz",
        "binarized_mnist_train.amat",
    ]


def test_binarized_mnist_unreadable_npz(tmp_path):
    directory = tmp_path / "BinarizedMNIST"
    directory.mkdir()
    (directory / "binarized_mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"binarized_mnist.npz could not be read .*delete it"):
        load_dataset("binarized_mnist", tmp_path, download=False)


def test_binarized_mnist_absent_offline(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"binarized_mnist_train.amat[\s\S]*\.npz"):
        load_dataset("binarized_mnist", tmp_path, download=False)


# --- binarisation and minibatches ------------------------------------------------------------


def test_binarize_is_a_fixed_draw():
    x = torch.rand(20, 30, generator=torch.Generator().manual_seed(0))
    once = binarize(x, seed=3)
    assert once.dtype == torch.float32 and set(once.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(once, binarize(x, seed=3))
    assert not torch.equal(once, binarize(x, seed=4))


@pytest.mark.parametrize("drop_last", [False, True])
def test_each_index_once_per_epoch(drop_last):
    batches = Minibatches(torch.rand(103, 5), 10, seed=0, drop_last=drop_last)
    idx = [i for i, _ in batches.epoch(0)]
    assert len(idx) == len(batches) == (10 if drop_last else 11)
    assert all(len(i) == 10 for i in idx[:10])
    seen = torch.cat(idx)
    assert len(seen.unique()) == len(seen) == (100 if drop_last else 103)


def test_order_depends_only_on_seed_and_epoch():
    x = torch.rand(50, 3)

    def order(seed, epoch):
        return torch.cat([i for i, _ in Minibatches(x, 7, seed=seed).epoch(epoch)])

    assert torch.equal(order(0, 5), order(0, 5))
    assert not torch.equal(order(0, 5), order(0, 6))
    assert not torch.equal(order(0, 5), order(1, 5))


def test_resuming_mid_epoch_yields_the_tail():
    batches = Minibatches(torch.rand(40, 6), 6, seed=11)
    full = list(batches.epoch(3))
    tail = list(Minibatches(torch.rand(40, 6).copy_(batches.data), 6, seed=11).epoch(3, start=4))
    assert len(tail) == len(full) - 4
    for (i, x), (j, y) in zip(full[4:], tail, strict=True):
        assert torch.equal(i, j) and torch.equal(x, y)
    assert list(batches.epoch(3, start=len(batches))) == []
    with pytest.raises(ArgumentError, match=r"^start=8 is not allowed: expected 0\.\.7 \(batches"):
        next(batches.epoch(3, start=8))


def test_dynamic_binarisation_matches_grey_levels_on_average():
    grey = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    batches = Minibatches(grey.repeat(200, 1), 50, seed=0)
    draws = torch.cat([x for e in range(20) for _, x in batches.epoch(e)])
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    n = len(draws)  # 4000 draws per pixel
    standard_error = (grey * (1 - grey) / n).sqrt()
    # 5 standard errors: a false failure has probability below 1e-6 per pixel
    assert torch.all((draws.mean(0) - grey).abs() <= 5 * standard_error)


def test_binarize_none_passes_data_through():
    x = torch.rand(30, 4)
    for idx, batch in Minibatches(x, 8, seed=0, binarize="none").epoch(0):
        assert torch.equal(batch, x[idx])


@pytest.mark.parametrize("batch_size", [0, 31])
def test_bad_batch_size_refused(batch_size):
    with pytest.raises(
        ArgumentError, match=rf"^batch_size={batch_size} is not allowed: expected 1\.\.30 "
    ):
        Minibatches(torch.rand(30, 4), batch_size, seed=0)


def test_bad_binarize_mode_refused():
    with pytest.raises(ArgumentError, match=r"^binarize='static' is not allowed: .*'dynamic'"):
        Minibatches(torch.rand(30, 4), 5, seed=0, binarize="static")


# --- the user's own arrays -------------------------------------------------------------------


def test_array_npy_split_and_grey_levels(tmp_path):
    a = np.random.RandomState(0).randint(0, 256, size=(50, 16)).astype(np.uint8)
    np.save(tmp_path / "x.npy", a)
    ds = load_dataset("array", path=tmp_path / "x.npy", test_fraction=0.1)
    order = np.random.RandomState(0).permutation(50)
    torch.testing.assert_close(ds.test, torch.tensor(a[order[-5:]] / 255, dtype=torch.float32))
    assert ds.train.shape == (45, 16) and ds.image_shape == (4, 4) and not ds.binary


def test_array_npz_keys(tmp_path):
    x, y = np.random.rand(10, 6), np.random.rand(4, 6)
    np.savez(tmp_path / "one.npz", anything=x)
    assert load_dataset("array", path=tmp_path / "one.npz").train.shape == (9, 6)
    np.savez(tmp_path / "x.npz", x=x, labels=np.arange(10))
    assert load_dataset("array", path=tmp_path / "x.npz").train.shape == (9, 6)
    both = tmp_path / "both.npz"
    np.savez(both, train=x, test=y)
    ds = load_dataset("array", path=both, test_path=both)
    torch.testing.assert_close(ds.train, torch.tensor(x, dtype=torch.float32))
    torch.testing.assert_close(ds.test, torch.tensor(y, dtype=torch.float32))
    assert ds.image_shape is None
    np.savez(tmp_path / "many.npz", a=x, b=x)
    with pytest.raises(DataError, match=r"many.npz holds several arrays \['a', 'b'\]"):
        load_dataset("array", path=tmp_path / "many.npz")


def test_array_pt_tensor_and_dict(tmp_path):
    x = (torch.rand(20, 9) > 0.5).float()
    torch.save(x, tmp_path / "t.pt")
    ds = load_dataset("array", path=tmp_path / "t.pt", test_fraction=0.25)
    assert ds.train.shape == (15, 9) and ds.test.shape == (5, 9) and ds.binary
    assert ds.image_shape == (3, 3)
    torch.save({"train": x, "note": torch.zeros(1)}, tmp_path / "d.pt")
    assert load_dataset("array", path=tmp_path / "d.pt").train.shape == (18, 9)


def test_array_image_shape(tmp_path):
    np.save(tmp_path / "img.npy", np.random.rand(10, 3, 5))
    assert load_dataset("array", path=tmp_path / "img.npy").image_shape == (3, 5)
    np.save(tmp_path / "flat.npy", np.random.rand(10, 15))
    assert load_dataset("array", path=tmp_path / "flat.npy").image_shape is None
    flat = load_dataset("array", path=tmp_path / "flat.npy", image_shape=[5, 3])
    assert flat.image_shape == (5, 3)
    with pytest.raises(ArgumentError, match=r"^image_shape=\[4, 4\] is not allowed: .*D=15"):
        load_dataset("array", path=tmp_path / "flat.npy", image_shape=[4, 4])


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("absent.npy", None, DataNotFoundError, "absent.npy does not exist"),
        ("x.csv", np.zeros((3, 2)), DataError, r"unknown extension '.csv'; use .npy, .npz or .pt"),
        ("empty.npy", np.zeros((0, 4)), DataError, "empty"),
        ("vector.npy", np.zeros(5), DataError, r"expected \[N, D\] or \[N, H, W\].*\(5,\)"),
        ("4d.npy", np.zeros((2, 2, 2, 2)), DataError, r"shape \(2, 2, 2, 2\)"),
        ("nan.npy", np.array([[0.1, np.nan], [0.2, 0.3]]), DataError, "1 of 4 values are NaN"),
        ("inf.npy", np.array([[0.1, np.inf], [0.2, 0.3]]), DataError, "NaN or Inf"),
    ],
)
def test_array_errors_name_the_file(tmp_path, name, content, error, match):
    path = tmp_path / name
    if content is not None:
        with path.open("wb") as f:
            np.save(f, content)
    with pytest.raises(error, match=match) as raised:
        load_dataset("array", path=path)
    assert str(path) in str(raised.value)


def test_missing_array_file_is_a_file_not_found_error(tmp_path):
    absent = tmp_path / "absent.npy"
    with pytest.raises(FileNotFoundError, match="does not exist") as raised:
        load_dataset("array", path=absent)
    assert isinstance(raised.value, DataNotFoundError) and isinstance(raised.value, DataError)
    assert str(absent) in str(raised.value)
    np.save(tmp_path / "x.npy", np.random.rand(10, 4))
    with pytest.raises(DataNotFoundError, match=r"absent_test.npy does not exist"):
        load_dataset("array", path=tmp_path / "x.npy", test_path=tmp_path / "absent_test.npy")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.npy", b"this is not an array file"),
        ("nothing.npy", b""),
        ("truncated.npy", None),  # a valid header, half the data
        ("pickled.npy", "object"),  # needs allow_pickle, which is refused
        ("garbage.npz", b"PK\x03\x04 not really a zip"),
        ("garbage.pt", b"\x80\x02 not a pickle"),
        ("tuple.pt", "tuple"),
    ],
)
def test_malformed_array_file_is_a_data_error(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        with path.open("wb") as f:
            np.save(f, np.random.rand(100, 10))
        path.write_bytes(path.read_bytes()[:-4000])
    elif content == "object":
        with path.open("wb") as f:
            np.save(f, np.array([[{"a": 1}, None]], dtype=object), allow_pickle=True)
    elif content == "tuple":
        torch.save((torch.zeros(3, 2), torch.zeros(3, 2)), path)
    else:
        path.write_bytes(content)
    with pytest.raises(DataError) as raised:
        load_dataset("array", path=path)
    assert str(path) in str(raised.value)
    # the command line prints DataError as one line; a plain ValueError would be a bug there
    assert type(raised.value) is DataError


def test_array_values_and_test_file_checks(tmp_path):
    np.save(tmp_path / "big.npy", np.array([[0, 300], [2, 7], [1, 1]]))
    big = load_dataset("array", path=tmp_path / "big.npy")
    assert torch.cat([big.train, big.test]).max() == 300  # not 8-bit grey levels: kept as is
    np.save(tmp_path / "d3.npy", np.zeros((5, 3)))
    np.save(tmp_path / "d15.npy", np.zeros((5, 15)))
    with pytest.raises(DataError, match=r"has D=3 values per point.*D=15"):
        load_dataset("array", path=tmp_path / "d15.npy", test_path=tmp_path / "d3.npy")
    with pytest.raises(
        ArgumentError, match=r"^test_fraction=1.0 is not allowed: expected a fraction in \(0, 1\)"
    ):
        load_dataset("array", path=tmp_path / "d15.npy", test_fraction=1.0)


# --- load_dataset arguments and data checks --------------------------------------------------


def test_unknown_dataset_name_is_an_argument_error():
    with pytest.raises(ArgumentError) as raised:
        load_dataset("cifar")
    assert not isinstance(raised.value, DataError)
    assert raised.value.key == "name"  # so the configuration layer can say dataset.name=...
    for allowed in data.DATASET_NAMES:
        assert allowed in str(raised.value)


def test_load_dataset_argument_errors(tmp_path):
    with pytest.raises(
        ArgumentError,
        match=r"^name='cifar' is not allowed: .*one of mnist, frey_face, .*, array$",
    ):
        load_dataset("cifar")
    with pytest.raises(ArgumentError, match=r"^path=None is not allowed: expected a \.npy"):
        load_dataset("array")
    with pytest.raises(ArgumentError, match="path, image_shape only apply to name='array'"):
        load_dataset("mnist", tmp_path, path="x.npy", image_shape=(28, 28))
    np.save(tmp_path / "x.npy", np.random.rand(10, 4))
    assert load_dataset("array", path=tmp_path / "x.npy", train_size=3).train.shape == (3, 4)
    for bad in (0, 10):
        with pytest.raises(
            ArgumentError, match=rf"^train_size={bad} is not allowed: expected 1\.\.9, the size of"
        ):
            load_dataset("array", path=tmp_path / "x.npy", train_size=bad)


@pytest.mark.parametrize(
    ("x", "likelihood", "match"),
    [
        (torch.zeros(3), "bernoulli", r"expected \[N, D\] data, got shape \(3,\)"),
        (torch.zeros(0, 4), "bernoulli", "empty"),
        (torch.tensor([[0.5, float("inf")]]), "gaussian", "1 of 2 values are NaN or Inf"),
        (torch.tensor([[0.5, 3.0], [-1.0, 0.0]]), "bernoulli", r"2 of 4 .* \(min -1, max 3\)"),
    ],
)
def test_check_data_for_likelihood_errors(x, likelihood, match):
    with pytest.raises(DataError, match=rf"^dataset.path=/x.npy: .*{match}"):
        check_data_for_likelihood(x, likelihood, "dataset.path=/x.npy")


def test_check_data_for_likelihood_accepts():
    check_data_for_likelihood(torch.rand(4, 3), "bernoulli", "here")
    check_data_for_likelihood(torch.randn(4, 3) * 10, "laplace", "here")  # no range to respect


# --- the real datasets, where present --------------------------------------------------------


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} absent")
def test_real_datasets_load():
    mnist = load_dataset("mnist", SHARED_DATA, download=False)
    assert mnist.train.shape == (60000, 784) and mnist.test.shape == (10000, 784)
    assert mnist.train[0, 0] == 0 and mnist.train[0].max() == 1
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    frey = load_dataset("frey_face", SHARED_DATA, download=False)
    assert frey.train.shape == (1765, 560) and frey.test.shape == (200, 560)
    assert math.isclose(float(torch.cat([frey.train, frey.test]).min()), 8 / 255, rel_tol=1e-6)
    binarized = load_dataset("binarized_mnist", SHARED_DATA, download=False)
    assert binarized.train.shape == (50000, 784) and binarized.test.shape == (10000, 784)
    assert binarized.train.sum() == 5_118_041 and binarized.test.sum() == 1_038_896  # README
