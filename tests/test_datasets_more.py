"""Tests of the datasets beyond the paper's: Fashion-MNIST, KMNIST, Omniglot, CIFAR-10 and the
linear Gaussian, and real-valued arrays. Every test writes its own small files under tmp_path
and serves downloads from 127.0.0.1; none needs the network or the real datasets."""

import gzip
import hashlib
import io
import logging
import pickle
import tarfile

import numpy as np
import pytest
import scipy.io
import scipy.stats
import torch

from pyro_vae import data
from pyro_vae.data import (
    ChecksumError,
    DataError,
    DataNotFoundError,
    LinearGaussian,
    download,
    load_dataset,
    read_cifar_batch,
    read_omniglot,
)
from pyro_vae.data.images import omniglot_rows
from pyro_vae.errors import ArgumentError

from .test_data import download_log, idx_bytes, no_data_environment, serve, server, trust

# test_data's fixtures, active here by name: the HTTP server on 127.0.0.1, and (autouse) no
# $PYRO_VAE_DATA_DIR or mirror from the environment
__all__ = ["no_data_environment", "server"]

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "t10k-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")


# --- helpers ---------------------------------------------------------------------------------


def fake_idx_files(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {
        "train-images-idx3-ubyte": rng.randint(0, 256, size=(3, 28, 28)),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, size=(2, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, size=3),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, size=2),
    }


def chardata_bytes(tmp_path, train: np.ndarray, test: np.ndarray) -> bytes:
    """A chardata.mat holding ``train`` and ``test`` ([N, 28, 28] upright images) as Burda et
    al.'s does: one image per column, each stored column by column (MATLAB's order)."""

    def columns(images):
        return np.stack([image.flatten(order="F") for image in images], axis=1)

    scratch = tmp_path / "scratch-chardata.mat"
    scipy.io.savemat(scratch, {"data": columns(train), "testdata": columns(test)})
    return scratch.read_bytes()


def cifar_batch_bytes(images: np.ndarray, labels) -> bytes:
    """One batch as the python version of CIFAR-10 pickles it (a dict; protocol 2)."""
    batch = {
        "batch_label": "a batch",
        "labels": [int(label) for label in labels],
        "data": np.ascontiguousarray(images, dtype=np.uint8),
        "filenames": [f"{i}.png" for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=2)


def fake_cifar(seed: int = 0) -> dict[str, tuple[bytes, np.ndarray, np.ndarray]]:
    """batch name -> (file content, uint8 [N, 3, 32, 32] images, labels); 2 images a batch."""
    rng = np.random.RandomState(seed)
    out = {}
    for name in (*CIFAR_BATCHES, "test_batch"):
        images = rng.randint(0, 256, size=(2, 3, 32, 32)).astype(np.uint8)
        labels = rng.randint(0, 10, size=2)
        out[name] = (cifar_batch_bytes(images.reshape(2, -1), labels), images, labels)
    return out


def tar_gz_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def trust_cifar(monkeypatch, batches, archive: bytes | None = None) -> None:
    for name, (content, _, _) in batches.items():
        trust(monkeypatch, f"cifar-10-batches-py/{name}", content)
    if archive is not None:
        trust(monkeypatch, "cifar-10-python.tar.gz", archive)


# --- Fashion-MNIST and KMNIST ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"), [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")]
)
def test_idx_dataset_downloaded_then_loaded(tmp_path, server, monkeypatch, caplog, name, folder):
    caplog.set_level(logging.INFO, logger=download.__name__)
    root, url = server
    arrays = fake_idx_files(seed=1)
    for stem, a in arrays.items():
        packed = gzip.compress(idx_bytes(a))
        serve(root, name, f"{stem}.gz", packed)
        # its own table entries: MNIST's (same file names) are not consulted
        trust(monkeypatch, f"{folder}/raw/{stem}.gz", packed)
    ds = load_dataset(name, tmp_path / "data", mirrors=[url + name + "/"])
    assert ds.name == name and ds.image_shape == (28, 28) and not ds.binary
    assert ds.train.shape == (3, 784) and ds.test.shape == (2, 784)
    expected = arrays["train-images-idx3-ubyte"].reshape(3, 784) / 255
    torch.testing.assert_close(ds.train, torch.tensor(expected, dtype=torch.float32))
    assert ds.train_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    raw = tmp_path / "data" / folder / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{stem}.gz" for stem in IDX_STEMS)
    assert sum(m.startswith("downloading ") for m in download_log(caplog)) == 4
    assert ds.settings == {"name": name, "data_dir": str(tmp_path / "data"), "train_size": None}
    again = load_dataset(**{**ds.settings, "download": False})
    assert torch.equal(again.train, ds.train)


def test_idx_dataset_without_labels_and_train_size(tmp_path, monkeypatch):
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem, a in fake_idx_files(seed=2).items():
        if "images" in stem:
            packed = gzip.compress(idx_bytes(a))
            (raw / f"{stem}.gz").write_bytes(packed)
            trust(monkeypatch, f"KMNIST/raw/{stem}.gz", packed)
    ds = load_dataset("kmnist", tmp_path, download=False, train_size=2)
    assert ds.train.shape == (2, 784) and ds.train_labels is None and ds.test_labels is None


@pytest.mark.parametrize(
    ("name", "folder", "url"),
    [
        ("fashion_mnist", "FashionMNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        ("kmnist", "KMNIST", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    ],
)  # fmt: skip
def test_idx_dataset_offline_error(tmp_path, name, folder, url):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    # an uncompressed copy is not enough: no published checksum to verify it against
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((1, 28, 28))))
    with pytest.raises(DataNotFoundError) as error:
        load_dataset(name, tmp_path, download=False)
    message = str(error.value)
    assert str(raw) in message and "download=False" in message
    for stem in IDX_STEMS:
        assert str(raw / f"{stem}.gz") in message and f"{url}{stem}.gz" in message
    assert "Labels are optional." in message and "Uncompressed" not in message
    assert "data_dir=" in message and "PYRO_VAE_DATA_DIR" in message


def test_idx_dataset_checksum_mismatch_names_the_file(tmp_path, monkeypatch):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem, a in fake_idx_files(seed=3).items():
        (raw / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(a)))
    # the real table: these fake files are not Zalando's
    with pytest.raises(ChecksumError) as error:
        load_dataset("fashion_mnist", tmp_path, download=False)
    message = str(error.value)
    assert str(raw / "train-images-idx3-ubyte.gz") in message
    assert "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in message and "delete it" in message


def test_idx_dataset_unparseable_file(tmp_path, monkeypatch):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in IDX_STEMS[:2]:
        content = gzip.compress(idx_bytes(np.zeros((2, 28, 28))))[:-10]  # truncated gzip
        (raw / f"{stem}.gz").write_bytes(content)
        trust(monkeypatch, f"FashionMNIST/raw/{stem}.gz", content)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is not a complete gzip"):
        load_dataset("fashion_mnist", tmp_path, download=False)


def test_mnist_checksums_are_not_shared_with_fashion_mnist():
    table = download.CHECKSUMS
    assert table["train-images-idx3-ubyte.gz"] == "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"
    fashion = table["FashionMNIST/raw/train-images-idx3-ubyte.gz"]
    assert fashion == "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert table["KMNIST/raw/train-images-idx3-ubyte.gz"] == "md5:bdb82020997e1d708af4cf47b453dcf7"


# --- Omniglot --------------------------------------------------------------------------------


def test_omniglot_pixel_order_is_upright(tmp_path):
    # an "L": a vertical bar down the left column, a foot along the bottom row, and a marker at
    # (row 2, column 5), which a transposed reading would put at (5, 2)
    image = np.zeros((28, 28))
    image[:, 0] = 1.0
    image[27, :10] = 0.5
    image[2, 5] = 0.25
    path = tmp_path / "chardata.mat"
    path.write_bytes(chardata_bytes(tmp_path, image[None], image.T[None]))
    splits = read_omniglot(path)
    assert splits["train"].dtype == np.float32 and splits["train"].shape == (1, 784)
    np.testing.assert_array_equal(splits["train"].reshape(28, 28), image)
    assert splits["train"].reshape(28, 28)[2, 5] == 0.25

    # exactly the IWAE code's reading
    columns = np.random.RandomState(0).rand(784, 3)
    iwae = columns.T.reshape((-1, 28, 28)).reshape((-1, 28 * 28), order="F")
    np.testing.assert_array_equal(omniglot_rows(columns), iwae.astype(np.float32))


def test_omniglot_downloaded_then_loaded(tmp_path, server, monkeypatch):
    root, url = server
    rng = np.random.RandomState(4)
    train, test = rng.rand(5, 28, 28), rng.rand(3, 28, 28)
    content = chardata_bytes(tmp_path, train, test)
    serve(root, "iwae", "chardata.mat", content)
    trust(monkeypatch, "chardata.mat", content)
    ds = load_dataset("omniglot", tmp_path / "data", mirrors=[url + "iwae/"])
    assert ds.source == str(tmp_path / "data" / "Omniglot" / "chardata.mat")
    assert (
        ds.train.shape == (5, 784) and ds.test.shape == (3, 784) and ds.train.dtype == torch.float32
    )
    assert ds.image_shape == (28, 28) and not ds.binary and ds.train_labels is None
    torch.testing.assert_close(ds.train, torch.tensor(train.reshape(5, 784), dtype=torch.float32))
    torch.testing.assert_close(ds.test, torch.tensor(test.reshape(3, 784), dtype=torch.float32))


def test_omniglot_offline_checksum_and_parse_errors(tmp_path, monkeypatch):
    directory = tmp_path / "Omniglot"
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("omniglot", tmp_path, download=False)
    message = str(error.value)
    assert str(directory / "chardata.mat") in message and "PYRO_VAE_DATA_DIR" in message
    assert "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat" in message

    directory.mkdir()
    file = directory / "chardata.mat"
    file.write_bytes(chardata_bytes(tmp_path, np.zeros((1, 28, 28)), np.zeros((1, 28, 28))))
    with pytest.raises(ChecksumError, match=r"chardata.mat does not match its known md5"):
        load_dataset("omniglot", tmp_path, download=False)

    file.write_bytes(b"not a MATLAB file")
    trust(monkeypatch, "chardata.mat", b"not a MATLAB file")
    with pytest.raises(DataError, match=r"chardata.mat could not be read as a MATLAB file"):
        load_dataset("omniglot", tmp_path, download=False)

    scipy.io.savemat(file, {"data": np.zeros((784, 2)), "testdata": np.zeros((100, 2))})
    trust(monkeypatch, "chardata.mat", file.read_bytes())
    with pytest.raises(DataError, match=r"variable 'testdata' of shape \(784, N > 0\).*\(100, 2\)"):
        load_dataset("omniglot", tmp_path, download=False)

    scipy.io.savemat(file, {"data": np.full((784, 2), 2.0), "testdata": np.zeros((784, 2))})
    trust(monkeypatch, "chardata.mat", file.read_bytes())
    with pytest.raises(DataError, match=r"1568 of 1568 values of 'data' are outside \[0, 1\]"):
        load_dataset("omniglot", tmp_path, download=False)


# --- CIFAR-10 --------------------------------------------------------------------------------


def test_cifar_batch_round_trip(tmp_path):
    images = np.arange(2 * 3072).reshape(2, 3072) % 256
    path = tmp_path / "batch"
    path.write_bytes(cifar_batch_bytes(images, [3, 9]))
    read, labels = read_cifar_batch(path)
    assert read.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(read, images)
    assert labels.tolist() == [3, 9]


def test_cifar_batch_refuses_other_pickles(tmp_path):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({"data": print, "labels": []}))
    with pytest.raises(DataError, match=r"evil could not be read as a CIFAR-10 batch.*print"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({"labels": [1]}))
    with pytest.raises(DataError, match=r"expected a dict with 'data' and 'labels'"):
        read_cifar_batch(path)
    path.write_bytes(cifar_batch_bytes(np.zeros((2, 3072)), [1, 10]))
    with pytest.raises(DataError, match=r"expected 2 labels in 0\.\.9"):
        read_cifar_batch(path)


def test_cifar10_extracted_from_present_archive(tmp_path, monkeypatch):
    batches = fake_cifar()
    archive = tar_gz_bytes(
        {f"cifar-10-batches-py/{name}": content for name, (content, _, _) in batches.items()}
        | {"cifar-10-batches-py/batches.meta": b"unused"}
    )
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive)
    trust_cifar(monkeypatch, batches, archive)
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.image_shape == (3, 32, 32) and not ds.binary
    assert ds.train.shape == (10, 3072) and ds.test.shape == (2, 3072)
    # batches 1..5 in order; each row the (C, H, W) array flattened row-major, / 255
    train_images = np.concatenate([batches[name][1] for name in CIFAR_BATCHES])
    expected = torch.tensor(train_images.reshape(10, -1) / 255, dtype=torch.float32)
    torch.testing.assert_close(ds.train, expected)
    red_corner = ds.train[0].reshape(3, 32, 32)[0, 0, 0]
    assert red_corner == float(train_images[0, 0, 0, 0]) / 255
    labels = np.concatenate([batches[name][2] for name in CIFAR_BATCHES])
    assert ds.train_labels.tolist() == labels.tolist()
    assert ds.test_labels.tolist() == batches["test_batch"][2].tolist()
    # only the batches extracted; the user's archive stays; no temporary file left
    assert sorted(p.name for p in (tmp_path / "cifar-10-batches-py").iterdir()) == sorted(batches)
    assert (tmp_path / "cifar-10-python.tar.gz").is_file()


def test_cifar10_downloaded_archive_gives_way_to_batches(tmp_path, server, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=download.__name__)
    root, url = server
    batches = fake_cifar(seed=1)
    archive = tar_gz_bytes(
        {f"cifar-10-batches-py/{name}": content for name, (content, _, _) in batches.items()}
    )
    serve(root, "kriz", "cifar-10-python.tar.gz", archive)
    trust_cifar(monkeypatch, batches, archive)
    ds = load_dataset("cifar10", tmp_path / "data", mirrors=[url + "kriz/"])
    assert ds.train.shape == (10, 3072)
    assert download_log(caplog) == [
        f"downloading cifar-10-python.tar.gz from {url}kriz/cifar-10-python.tar.gz"
    ]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["cifar-10-batches-py"]
    again = load_dataset(**{**ds.settings, "download": False})  # from the batches alone
    assert torch.equal(again.test, ds.test)


def test_cifar10_present_batches_need_no_archive_and_are_verified(tmp_path, monkeypatch):
    batches = fake_cifar(seed=2)
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    for name, (content, _, _) in batches.items():
        (directory / name).write_bytes(content)
    trust_cifar(monkeypatch, batches)
    assert load_dataset("cifar10", tmp_path, download=False).test.shape == (2, 3072)
    monkeypatch.setitem(download.CHECKSUMS, "cifar-10-batches-py/data_batch_3", "md5:" + "0" * 32)
    with pytest.raises(ChecksumError) as error:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(directory / "data_batch_3") in str(error.value) and "0" * 32 in str(error.value)


def test_cifar10_offline_error_and_bad_archives(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("cifar10", tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert str(tmp_path / "cifar-10-batches-py") in message and "PYRO_VAE_DATA_DIR" in message

    archive_path = tmp_path / "cifar-10-python.tar.gz"
    archive_path.write_bytes(b"not the archive")
    with pytest.raises(ChecksumError, match=r"c58f30108f718f92721af3b95e74349a"):
        load_dataset("cifar10", tmp_path, download=False)

    trust(monkeypatch, "cifar-10-python.tar.gz", b"not the archive")
    with pytest.raises(DataError, match=r"could not be read as a .tar.gz archive"):
        load_dataset("cifar10", tmp_path, download=False)

    # a member that is a link out of the directory is refused, not followed
    batches = fake_cifar()
    members = {
        f"cifar-10-batches-py/{n}": c for n, (c, _, _) in batches.items() if n != "test_batch"
    }
    evil = tar_gz_bytes(members, symlinks={"cifar-10-batches-py/test_batch": "/etc/passwd"})
    archive_path.write_bytes(evil)
    trust(monkeypatch, "cifar-10-python.tar.gz", evil)
    with pytest.raises(
        DataError, match=r"cifar-10-batches-py/test_batch is (refused|not a regular)"
    ):
        load_dataset("cifar10", tmp_path, download=False)
    assert not (tmp_path / "cifar-10-batches-py" / "test_batch").exists()

    missing = tar_gz_bytes(members)
    archive_path.write_bytes(missing)
    trust(monkeypatch, "cifar-10-python.tar.gz", missing)
    with pytest.raises(DataError, match=r"has no member cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", tmp_path, download=False)


# --- linear Gaussian -------------------------------------------------------------------------


def test_linear_gaussian_is_deterministic_and_recorded():
    ds = load_dataset("linear_gaussian", num_points=50, test_points=7, seed=3)
    assert ds.train.shape == (50, 20) and ds.test.shape == (7, 20)
    assert ds.train.dtype == torch.float32 and ds.image_shape is None and not ds.binary
    assert ds.train.min() < 0 or ds.train.max() > 1  # real-valued, not in [0, 1]
    assert ds.settings == {
        "name": "linear_gaussian",
        "data_dir": None,
        "dim": 20,
        "latent_dim_true": 5,
        "num_points": 50,
        "test_points": 7,
        "seed": 3,
        "train_size": None,
    }
    again = load_dataset(**ds.settings)
    assert torch.equal(again.train, ds.train) and torch.equal(again.test, ds.test)
    model, other = ds.exact_log_likelihood, load_dataset("linear_gaussian", seed=4)
    assert isinstance(model, LinearGaussian) and model.latent_dim == 5
    assert torch.equal(again.exact_log_likelihood.weight, model.weight)
    assert not torch.equal(other.exact_log_likelihood.weight, model.weight)
    # the parameters do not depend on the number of points
    bigger = load_dataset("linear_gaussian", num_points=60, test_points=7, seed=3)
    assert torch.equal(bigger.exact_log_likelihood.bias, model.bias)
    # the documented recipe: one generator seeded with seed draws W, b, sigma, then z and eps
    small = load_dataset("linear_gaussian", dim=2, latent_dim_true=1, num_points=1, seed=0)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 1, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64)
    sigma = 0.2 + 0.8 * torch.rand((), generator=g, dtype=torch.float64)
    z = torch.randn(1, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(1, 2, generator=g, dtype=torch.float64)
    expected = (z @ w.T + b + sigma * eps).float()
    assert torch.equal(small.train, expected)


def test_linear_gaussian_exact_log_likelihood_matches_scipy():
    ds = load_dataset(
        "linear_gaussian", dim=6, latent_dim_true=2, num_points=40, test_points=5, seed=1
    )
    model = ds.exact_log_likelihood
    covariance = model.covariance().numpy()
    expected_cov = model.weight @ model.weight.T + model.noise_scale**2 * torch.eye(6).double()
    np.testing.assert_allclose(covariance, expected_cov.numpy(), rtol=1e-12)
    assert 0.2 <= model.noise_scale <= 1.0
    for x in (ds.train, ds.test, ds.train.double() * 3):
        log_p = model(x)
        assert log_p.dtype == torch.float64 and log_p.shape == (len(x),)
        reference = scipy.stats.multivariate_normal.logpdf(
            x.double().numpy(), mean=model.bias.numpy(), cov=covariance
        )
        np.testing.assert_allclose(log_p.numpy(), reference, rtol=1e-6)
    with pytest.raises(ArgumentError, match=r"^x of shape \(3, 5\) is not allowed: .*\[N, 6\]"):
        model(torch.zeros(3, 5))


def test_other_datasets_have_no_exact_log_likelihood(tmp_path):
    np.save(tmp_path / "x.npy", np.random.rand(10, 4))
    assert load_dataset("array", path=tmp_path / "x.npy").exact_log_likelihood is None


def test_linear_gaussian_argument_errors(tmp_path):
    with pytest.raises(ArgumentError, match=r"^dim=0 is not allowed: expected an integer >= 1"):
        load_dataset("linear_gaussian", dim=0)
    with pytest.raises(ArgumentError, match=r"^num_points=2.5 is not allowed"):
        load_dataset("linear_gaussian", num_points=2.5)
    with pytest.raises(ArgumentError, match=r"^seed=-1 is not allowed"):
        load_dataset("linear_gaussian", seed=-1)
    with pytest.raises(
        ArgumentError, match=r"^dim, seed only apply to name='linear_gaussian', not 'mnist'"
    ):
        load_dataset("mnist", tmp_path, dim=3, seed=1)
    with pytest.raises(ArgumentError, match=r"^path only applies to name='array', not 'linear"):
        load_dataset("linear_gaussian", path="x.npy")
    assert load_dataset("linear_gaussian", num_points=30, train_size=10).train.shape == (10, 20)


# --- the user's own real-valued arrays -------------------------------------------------------


@pytest.mark.parametrize(
    "a",
    [
        np.array([[-1.5, 2.0], [0.25, 300.0], [1e6, -7.0], [0.0, 0.5]]),
        np.array([[-3, 2], [5, 1000], [7, 8], [0, 0]], dtype=np.int64),
        np.array([[-1, 200], [5, 7], [7, 8], [0, 0]], dtype=np.int16),  # negative: not grey
    ],
)
def test_real_valued_arrays_load_unchanged(tmp_path, a):
    np.save(tmp_path / "x.npy", a)
    np.save(tmp_path / "t.npy", a[:2])
    ds = load_dataset("array", path=tmp_path / "x.npy", test_path=tmp_path / "t.npy")
    assert ds.train.dtype == torch.float32 and not ds.binary
    torch.testing.assert_close(ds.train, torch.tensor(a, dtype=torch.float32), rtol=0, atol=0)
    torch.testing.assert_close(ds.test, torch.tensor(a[:2], dtype=torch.float32), rtol=0, atol=0)


def test_dataset_names_include_the_new_ones():
    for name in ("fashion_mnist", "kmnist", "omniglot", "cifar10", "linear_gaussian"):
        assert name in data.DATASET_NAMES


def test_checksum_table_md5s_are_well_formed():
    for key, value in download.CHECKSUMS.items():
        algorithm, digest = value.split(":")
        assert len(digest) == hashlib.new(algorithm).digest_size * 2, key
        int(digest, 16)
