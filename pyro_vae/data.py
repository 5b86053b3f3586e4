"""Datasets of the AEVB paper (Kingma & Welling 2013, section 5) and minibatches over them.

``load_dataset`` returns a :class:`Dataset`: float32 ``[N, D]`` train and test tensors with values
in ``[0, 1]``. Built-in datasets, each looked for under a data directory
(see :func:`resolve_data_dir`) and verified against known checksums before use:

- ``"mnist"``: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``, torchvision's
  layout, so a copy torchvision downloaded is reused (its uncompressed files are accepted too).
- ``"frey_face"``: ``FreyFace/frey_rawface.mat`` (Roweis' file, variable ``ff``).
- ``"binarized_mnist"``: ``BinarizedMNIST/binarized_mnist.npz``, Larochelle & Murray's fixed
  binarisation, bit-packed; built from their three ``.amat`` text files when absent.
- ``"array"``: the user's own ``.npy`` / ``.npz`` / ``.pt`` file.

Missing files are downloaded when ``download=True``; a present file whose checksum is wrong is
never used nor overwritten (:class:`ChecksumError`). :class:`Minibatches` yields shuffled
minibatches, optionally re-binarised at every draw, deterministic given (seed, epoch, batch) so
that a run resumes mid-epoch exactly.

Nothing here imports the model, estimators or trainer: data come first in the chain.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import pickle
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.io
import torch

DATA_DIR_ENV = "PYRO_VAE_DATA_DIR"
MIRROR_ENV = "PYRO_VAE_MIRROR"
DATASET_NAMES = ("mnist", "frey_face", "binarized_mnist", "array")

# Base URLs, tried in order; a file's URL is the base followed by its name.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "frey_face": ("https://cs.nyu.edu/~roweis/data/",),
    "binarized_mnist": ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
}

# "algorithm:hexdigest" per file name (names are unique across datasets). A module-level table so
# that tests can substitute the digests of small fake files instead of skipping verification.
CHECKSUMS: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    "train-images-idx3-ubyte": "md5:6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "md5:a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "md5:2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "md5:27ae3e4e09519cfbb04c329615203637",
    "frey_rawface.mat": "md5:5aeb024d42b8a6091f30e5eb18c8a48d",
    "binarized_mnist_train.amat": (
        "sha256:ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"
    ),
    "binarized_mnist_valid.amat": (
        "sha256:1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"
    ),
    "binarized_mnist_test.amat": (
        "sha256:e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"
    ),
    # The npz is verified by the arrays it holds (sha256 of the unpacked uint8 bytes, C order),
    # not by its bytes: one written here from the .amat files may be compressed differently.
    "binarized_mnist.npz:train": (
        "sha256:43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a"
    ),
    "binarized_mnist.npz:valid": (
        "sha256:069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e"
    ),
    "binarized_mnist.npz:test": (
        "sha256:ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86"
    ),
}

FREY_FACE_TEST_SIZE = 200
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_IDX_IMAGES, _IDX_LABELS = 2051, 2049
_MNIST_PIXELS = 784
_BINARIZED_SPLITS = ("train", "valid", "test")


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are absent and could not be downloaded."""


class ChecksumError(ValueError):
    """A present data file does not match its known checksum (corrupt, truncated or different)."""


@dataclass
class Dataset:
    """An in-memory dataset: rows are data points, flattened images in row-major order."""

    name: str
    train: torch.Tensor  # float32 [N, D] in [0, 1]
    test: torch.Tensor  # float32 [N_test, D]
    image_shape: tuple[int, int] | None  # (height, width) for plots; None when unknown
    binary: bool  # the stored values are exactly 0/1, so dynamic binarisation changes nothing
    source: str  # the files it was read from
    valid: torch.Tensor | None = None  # binarized_mnist's 10000-point validation split
    train_labels: torch.Tensor | None = None  # int64 digit classes (MNIST), for plots only
    test_labels: torch.Tensor | None = None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data directory: ``data_dir`` if given (not None or empty), else ``$PYRO_VAE_DATA_DIR``
    if set, else ``./data`` relative to the current directory; ``~`` expanded, made absolute."""
    for candidate in (data_dir, os.environ.get(DATA_DIR_ENV)):
        if candidate is not None and str(candidate) != "":
            return Path(candidate).expanduser().absolute()
    return Path("data").absolute()


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    train_size: int | None = None,
    path: str | os.PathLike[str] | None = None,
    test_path: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.1,
    image_shape: Sequence[int] | None = None,
    mirrors: Sequence[str] | None = None,
) -> Dataset:
    """Load one of :data:`DATASET_NAMES`.

    Built-in datasets (``data_dir``, ``download``, ``mirrors`` apply):

    - ``"mnist"``: 60000 train / 10000 test images, 28x28, grey levels / 255. Labels are loaded
      into ``train_labels`` / ``test_labels`` when their files are present.
    - ``"frey_face"``: 1965 images of 28x20, grey levels / 255. Split: the last 200 indices of
      ``numpy.random.RandomState(0).permutation(1965)`` are the test set, the other 1765 (in
      that permuted order) the training set. The legacy ``RandomState`` stream is stable across
      numpy versions, so the split is too.
    - ``"binarized_mnist"``: Larochelle & Murray's fixed binarisation, 50000 train / 10000 test,
      values exactly 0/1 (``binary=True``); the 10000 validation points are in ``valid``.

    ``"array"`` reads ``path`` (``.npy``; ``.npz`` holding one array or the key ``"x"`` or
    ``"train"``; ``.pt`` holding a tensor or a dict with one of those keys). ``[N, D]`` is used
    as is, ``[N, H, W]`` is flattened with ``image_shape=(H, W)``. Integer data with values in
    ``0..255`` and a maximum above 1 are taken as 8-bit grey levels and divided by 255; anything
    else is converted to float32 unchanged. The test set is read from ``test_path`` (whose
    preferred keys are ``"x"`` and ``"test"``, so one ``.npz`` with ``train`` and ``test`` may
    serve as both) or else split off: the last ``round(test_fraction * N)`` (at least 1) indices
    of ``numpy.random.RandomState(0).permutation(N)``; the rest, in permuted order, is the
    training set. ``image_shape`` is the argument if given, else ``(H, W)`` of 3-D data, else a
    square if D is a perfect square, else None.

    ``train_size`` keeps the first ``train_size`` training points (Figure 3 of the paper uses
    1000 to show overfitting).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset name={name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name == "array":
        if path is None:
            raise ValueError("dataset name='array' needs path=... (a .npy, .npz or .pt file)")
        dataset = _load_array(path, test_path, test_fraction, image_shape)
    else:
        given = {"path": path, "test_path": test_path, "image_shape": image_shape}
        misplaced = [key for key, value in given.items() if value is not None]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} only apply to name='array', not {name!r}")
        urls = _mirror_list(MIRRORS[name] if mirrors is None else mirrors)
        loader = {
            "mnist": _load_mnist,
            "frey_face": _load_frey_face,
            "binarized_mnist": _load_binarized_mnist,
        }[name]
        dataset = loader(resolve_data_dir(data_dir), urls, download)

    if train_size is None:
        return dataset
    n = dataset.train.shape[0]
    if not 1 <= train_size <= n:
        raise ValueError(
            f"train_size={train_size} must be in 1..{n}, the size of {name}'s training set"
        )
    labels = dataset.train_labels
    # clone so the full training set's memory is released
    return replace(
        dataset,
        train=dataset.train[:train_size].clone(),
        train_labels=None if labels is None else labels[:train_size].clone(),
    )


def binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw per value, P(1) = x, from a generator of its own seeded with ``seed``
    on ``x``'s device: the same (x, seed, device) always gives the same float32 0/1 tensor.

    For the fixed binarisations (a test set), which stay the draws of earlier versions;
    minibatches use the faster :func:`bernoulli_draw`.
    """
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    return torch.bernoulli(x.to(torch.float32), generator=generator)


def bernoulli_draw(x: torch.Tensor, seed: int) -> torch.Tensor:
    """The distribution of :func:`binarize` (a different stream): 1[U < x], U ~ Uniform[0, 1).

    With a seeded generator, ``torch.bernoulli``'s CPU kernel takes about twice as long as
    uniform draws and a comparison (10 ms against 5 ms for 1000 x 784 values on 2 cores,
    where a training step at batch 1000 takes about 50 ms). Deterministic given (x, seed,
    device).
    """
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return (u < x).to(torch.float32)


def check_data_for_likelihood(x: torch.Tensor, likelihood: str | None, where: str) -> None:
    """Raise a ValueError, naming ``where`` (e.g. ``"dataset.path=/x.npy"``), unless ``x`` is a
    non-empty 2-D ``[N, D]`` tensor of finite values, and for the ``"bernoulli"`` and
    ``"gaussian"`` likelihoods inside [0, 1], the range of their sigmoid decoder means.
    ``likelihood=None`` checks the shape and finiteness only."""
    if x.ndim != 2:
        raise ValueError(f"{where}: expected [N, D] data, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{where}: the data are empty (shape {tuple(x.shape)})")
    non_finite = int((~torch.isfinite(x)).sum())
    if non_finite:
        raise ValueError(f"{where}: {non_finite} of {x.numel()} values are NaN or Inf")
    if likelihood in ("bernoulli", "gaussian"):
        outside = int(((x < 0) | (x > 1)).sum())
        if outside:
            raise ValueError(
                f"{where}: the {likelihood} likelihood needs values in [0, 1] (its decoder mean "
                f"is a sigmoid), but {outside} of {x.numel()} values are outside "
                f"(min {x.min().item():.4g}, max {x.max().item():.4g}); rescale the data"
            )


class Minibatches:
    """Shuffled minibatches of an in-memory tensor, with optional dynamic binarisation.

    Deterministic given (seed, epoch, batch position), so a run resumes mid-epoch exactly: the
    epoch's permutation comes from a generator seeded from (seed, epoch), and the dynamic
    binarisation of batch b of epoch e from one seeded from (seed, e, b). Both generators live
    on ``device``, where the data are moved once, so the same seed gives different (equally
    valid) streams on CPU and GPU. ``binarize="dynamic"`` draws a fresh Bernoulli(x) sample of
    each batch at every visit, the usual treatment of grey-level MNIST under a Bernoulli
    likelihood; ``"none"`` yields the data as stored.
    """

    def __init__(
        self,
        data: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        binarize: str = "dynamic",
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ) -> None:
        if data.ndim != 2:
            raise ValueError(f"Minibatches needs [N, D] data, got shape {tuple(data.shape)}")
        if binarize not in ("dynamic", "none"):
            raise ValueError(f"binarize={binarize!r}; choose 'dynamic' or 'none'")
        self.num_data = data.shape[0]
        if not 1 <= batch_size <= self.num_data:
            raise ValueError(f"batch_size={batch_size} must be in 1..{self.num_data} (num_data)")
        self.batch_size = batch_size
        self.seed = seed
        self.binarize = binarize
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.data = data.to(device=self.device, dtype=torch.float32)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_data // self.batch_size
        return math.ceil(self.num_data / self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(idx, x)`` for batches ``start, start + 1, ...`` of ``epoch``: ``idx`` the
        int64 dataset indices ``[M]``, ``x`` the float32 data ``[M, D]``, both on ``device``."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start={start} must be in 0..{len(self)} (batches per epoch)")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_derive_seed(self.seed, 0, epoch))
        order = torch.randperm(self.num_data, generator=generator, device=self.device)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.data[idx]
            if self.binarize == "dynamic":
                x = bernoulli_draw(x, _derive_seed(self.seed, 1, epoch, b))
            yield idx, x


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (LeCun's MNIST format; gzip-compressed if the name ends
    in ``.gz``), checking its magic number (2051 images, 2049 labels) and its length."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path} is not a complete gzip file ({error})") from error
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise ValueError(f"{path} is not the expected kind of idx file: magic {found}, not {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, shorter than its header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise ValueError(
            f"{path} has {len(data)} bytes but its header {shape} implies {expected} (truncated?)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


# --- built-in datasets ---------------------------------------------------------------------


def _load_mnist(data_dir: Path, urls: list[str], download: bool) -> Dataset:
    raw = data_dir / "MNIST" / "raw"
    stems = {
        "train": "train-images-idx3-ubyte",
        "test": "t10k-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }

    def present(stem: str) -> Path | None:
        return next((p for p in (raw / f"{stem}.gz", raw / stem) if p.is_file()), None)

    if present(stems["train"]) is None or present(stems["test"]) is None:
        # a fresh download fetches the labels too, but missing labels alone trigger nothing:
        # they are only used for plots
        missing = [f"{stem}.gz" for stem in stems.values() if present(stem) is None]
        note = "Uncompressed copies (same names without .gz) work too; labels are optional."
        _obtain(raw, missing, urls, download, "MNIST", note)

    arrays: dict[str, torch.Tensor | None] = {}
    sources = []
    for key, stem in stems.items():
        file = present(stem)
        if file is None:
            arrays[key] = None
            continue
        _verify(file)
        sources.append(str(file))
        if key.endswith("labels"):
            arrays[key] = torch.from_numpy(read_idx(file, _IDX_LABELS).astype(np.int64))
        else:
            images = read_idx(file, _IDX_IMAGES)
            if images.shape[1:] != (28, 28):
                raise ValueError(f"{file}: expected 28x28 images, got {images.shape[1:]}")
            arrays[key] = _grey_levels(images)
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        if labels is not None and len(labels) != len(arrays[split]):
            raise ValueError(f"MNIST {split}: {len(labels)} labels for {len(arrays[split])} images")
    return Dataset(
        name="mnist",
        train=arrays["train"],
        test=arrays["test"],
        image_shape=(28, 28),
        binary=False,
        source=", ".join(sources),
        train_labels=arrays["train_labels"],
        test_labels=arrays["test_labels"],
    )


def _load_frey_face(data_dir: Path, urls: list[str], download: bool) -> Dataset:
    directory = data_dir / "FreyFace"
    file = directory / "frey_rawface.mat"
    if not file.is_file():
        _obtain(directory, [file.name], urls, download, "Frey Face")
    _verify(file)
    ff = scipy.io.loadmat(file, variable_names=["ff"]).get("ff")
    if ff is None or ff.ndim != 2 or ff.shape[0] != 28 * 20 or ff.shape[1] <= FREY_FACE_TEST_SIZE:
        shape = None if ff is None else ff.shape
        raise ValueError(
            f"{file}: expected a variable 'ff' of shape (560, N > {FREY_FACE_TEST_SIZE}), "
            f"one 28x20 image per column; found {shape}"
        )
    faces = ff.T
    train_idx, test_idx = _split(len(faces), FREY_FACE_TEST_SIZE)
    return Dataset(
        name="frey_face",
        train=_grey_levels(faces[train_idx]),
        test=_grey_levels(faces[test_idx]),
        image_shape=(28, 20),
        binary=False,
        source=str(file),
    )


def _load_binarized_mnist(data_dir: Path, urls: list[str], download: bool) -> Dataset:
    directory = data_dir / "BinarizedMNIST"
    npz = directory / "binarized_mnist.npz"
    if not npz.is_file():
        names = [f"binarized_mnist_{split}.amat" for split in _BINARIZED_SPLITS]
        note = f"Alternatively {npz.name}, which is written from them on first use."
        downloaded = _obtain(directory, names, urls, download, "Binarized MNIST", note)
        packed = {}
        for split, name in zip(_BINARIZED_SPLITS, names, strict=True):
            _verify(directory / name)
            packed[split] = np.packbits(_read_amat(directory / name), axis=1)
        _write_npz(npz, packed)
        # the npz holds the same bits in a 30th of the space
        for file in downloaded:
            file.unlink()

    splits = {}
    with np.load(npz, allow_pickle=False) as archive:
        for split in _BINARIZED_SPLITS:
            if split not in archive.files:
                raise ChecksumError(f"{npz} has no array {split!r}; delete it to rebuild it")
            bits = np.unpackbits(archive[split], axis=1)
            _verify_bytes(bits.tobytes(), f"{npz.name}:{split}", f"{npz} (array {split!r})")
            splits[split] = torch.from_numpy(bits).to(torch.float32)
    return Dataset(
        name="binarized_mnist",
        train=splits["train"],
        test=splits["test"],
        image_shape=(28, 28),
        binary=True,
        source=str(npz),
        valid=splits["valid"],
    )


def _read_amat(path: Path) -> np.ndarray:
    """Parse a Larochelle ``.amat`` file: one row per line of 784 space-separated 0/1."""
    text = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    bits = text[(text == ord("0")) | (text == ord("1"))] - ord("0")
    rows = int(np.count_nonzero(text == ord("\n")))
    if rows == 0 or bits.size != rows * _MNIST_PIXELS:
        raise ValueError(
            f"{path}: expected lines of {_MNIST_PIXELS} 0/1 values, found {bits.size} values "
            f"on {rows} lines"
        )
    return bits.reshape(rows, _MNIST_PIXELS)


def _write_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    # via a temporary file so an interrupted write never leaves a half npz that looks complete
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez_compressed(out, **arrays)
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


# --- the user's own array ------------------------------------------------------------------


def _load_array(
    path: str | os.PathLike[str],
    test_path: str | os.PathLike[str] | None,
    test_fraction: float,
    image_shape: Sequence[int] | None,
) -> Dataset:
    file = Path(path).expanduser()
    x, inferred_shape = _read_array_file(file, role="train")
    if test_path is None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
        n_test = max(1, round(test_fraction * len(x)))
        if n_test >= len(x):
            raise ValueError(
                f"{file}: {len(x)} points leave none to train on with test_fraction={test_fraction}"
            )
        train_idx, test_idx = _split(len(x), n_test)
        train, test = x[train_idx], x[test_idx]
        source = str(file)
    else:
        test_file = Path(test_path).expanduser()
        train, (test, _) = x, _read_array_file(test_file, role="test")
        if test.shape[1] != train.shape[1]:
            raise ValueError(
                f"{test_file} has D={test.shape[1]} values per point, {file} has D={train.shape[1]}"
            )
        source = f"{file} (test: {test_file})"

    d = train.shape[1]
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 2 or math.prod(shape) != d:
            raise ValueError(
                f"image_shape={list(image_shape)} is not (height, width) with D={d} pixels"
            )
    elif inferred_shape is not None:
        shape = inferred_shape
    else:
        side = math.isqrt(d)
        shape = (side, side) if side * side == d else None
    binary = bool(torch.all((train == 0) | (train == 1)) and torch.all((test == 0) | (test == 1)))
    return Dataset(
        name="array", train=train, test=test, image_shape=shape, binary=binary, source=source
    )


def _read_array_file(file: Path, role: str) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """The float32 ``[N, D]`` data in ``file`` and, for ``[N, H, W]`` input, ``(H, W)``."""
    if not file.is_file():
        raise FileNotFoundError(f"dataset file {file} does not exist")
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".npz", ".pt"):
        raise ValueError(f"{file}: unknown extension {suffix!r}; use .npy, .npz or .pt")
    try:
        if suffix == ".npy":
            a = np.load(file, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                a = archive[_pick_key(archive.files, file, role)]
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj[_pick_key(list(obj), file, role)]
            if not isinstance(obj, torch.Tensor):
                raise ValueError(f"{file} holds a {type(obj).__name__}, not a tensor")
            a = obj.detach().numpy()
    except (
        EOFError,
        OSError,
        RuntimeError,
        ValueError,
        zipfile.BadZipFile,
        pickle.PickleError,
    ) as e:
        if str(file) in str(e):  # one of ours above, already clear
            raise
        # numpy and torch say what is wrong but not with which file (empty, truncated,
        # not an array file, pickled objects)
        raise ValueError(f"dataset file {file} could not be read as {suffix} ({e})") from e

    if a.ndim not in (2, 3):
        raise ValueError(f"{file}: expected [N, D] or [N, H, W] data, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{file}: the data are empty (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise ValueError(f"{file}: expected real numbers, got dtype {a.dtype}")
    inferred_shape = (a.shape[1], a.shape[2]) if a.ndim == 3 else None
    a = a.reshape(a.shape[0], -1)
    if np.issubdtype(a.dtype, np.integer) and a.min() >= 0 and 1 < a.max() <= 255:
        x = _grey_levels(a)
    else:
        x = torch.tensor(a, dtype=torch.float32)
    check_data_for_likelihood(x, None, where=f"dataset file {file}")
    return x, inferred_shape


def _pick_key(keys: Sequence[str], file: Path, role: str) -> str:
    if len(keys) == 1:
        return keys[0]
    for key in ("x", role):
        if key in keys:
            return key
    raise ValueError(
        f"{file} holds several arrays {sorted(keys)}; keep one or name it 'x' or {role!r}"
    )


# --- shared helpers ------------------------------------------------------------------------


def _grey_levels(images: np.ndarray) -> torch.Tensor:
    """8-bit images ``[N, ...]`` as float32 ``[N, D]`` in [0, 1]."""
    # torch.tensor copies, so read-only numpy buffers (np.frombuffer) are fine
    return torch.tensor(images.reshape(len(images), -1)).to(torch.float32).div_(255)


def _split(n: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    # the legacy RandomState stream is frozen by numpy's compatibility policy
    order = np.random.RandomState(0).permutation(n)
    return order[:-n_test], order[-n_test:]


def _derive_seed(*parts: int) -> int:
    # a fixed polynomial hash: Python's hash() is salted per process for str, so not reproducible
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % 2**63
    return seed


# --- files: checksums and downloads --------------------------------------------------------

# actual digest per (path, size, mtime, algorithm): verifying an unchanged file again is free
_digest_cache: dict[tuple[str, int, int, str], str] = {}


def _cache_key(path: Path, algorithm: str) -> tuple[str, int, int, str]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, algorithm


def _file_digest(path: Path, algorithm: str) -> str:
    key = _cache_key(path, algorithm)
    if key not in _digest_cache:
        digest = hashlib.new(algorithm)
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]


def _verify(path: Path) -> None:
    algorithm, expected = CHECKSUMS[path.name].split(":")
    actual = _file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(_checksum_message(str(path), algorithm, expected, actual))


def _verify_bytes(data: bytes, checksum_key: str, what: str) -> None:
    algorithm, expected = CHECKSUMS[checksum_key].split(":")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise ChecksumError(_checksum_message(what, algorithm, expected, actual))


def _checksum_message(what: str, algorithm: str, expected: str, actual: str) -> str:
    return (
        f"{what} does not match its known {algorithm}: expected {expected}, got {actual}. "
        "It is corrupt, truncated or a different file; delete it so it is downloaded again."
    )


def _mirror_list(bases: Sequence[str]) -> list[str]:
    env_mirror = os.environ.get(MIRROR_ENV)
    return ([env_mirror] if env_mirror else []) + list(bases)


def _obtain(
    directory: Path,
    names: Sequence[str],
    bases: Sequence[str],
    download: bool,
    what: str,
    note: str = "",
) -> list[Path]:
    """Download each of ``names`` into ``directory`` from the first of ``bases`` that serves it
    with the right checksum; return the files written. Raise DataNotFoundError if not allowed
    or not possible."""
    urls = {name: [base.rstrip("/") + "/" + name for base in bases] for name in names}
    failures: list[str] = []
    written: list[Path] = []
    if download:
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            file = _download(directory / name, urls[name], failures)
            if file is None:
                break
            written.append(file)
        else:
            return written

    lines = [f"{what} data not found in {directory}. Expected files:"]
    lines += [f"  {directory / name}" for name in names]
    if note:
        lines.append(note)
    if failures:
        lines.append("Download failed; tried:")
        lines += [f"  {failure}" for failure in failures]
    else:
        lines.append("download=False; get them from:")
        lines += [f"  {url}" for name in names for url in urls[name]]
    lines.append(
        f"Set data_dir=... or ${DATA_DIR_ENV} to a directory that holds them "
        f"(or ${MIRROR_ENV} to a base URL serving them)."
    )
    raise DataNotFoundError("\n".join(lines))


def _download(target: Path, urls: Sequence[str], failures: list[str]) -> Path | None:
    """Stream the first good copy among ``urls`` into ``target``; append why each failed."""
    algorithm, expected = CHECKSUMS[target.name].split(":")
    for url in urls:
        print(f"downloading {target.name} from {url}", file=sys.stderr)
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        try:
            digest = hashlib.new(algorithm)
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            ):
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                failures.append(
                    f"{url}: checksum mismatch, expected {algorithm} {expected}, "
                    f"got {digest.hexdigest()}"
                )
                continue
            os.replace(temporary, target)
            _digest_cache[_cache_key(target, algorithm)] = expected
            return target
        except urllib.error.HTTPError as error:
            failures.append(f"{url}: HTTP {error.code} {error.reason}")
            error.close()
        except urllib.error.URLError as error:
            failures.append(f"{url}: {error.reason}")
        except (OSError, http.client.HTTPException, ValueError) as error:
            # timeouts, resets, short reads, malformed URLs
            failures.append(f"{url}: {type(error).__name__}: {error}")
        finally:
            Path(temporary).unlink(missing_ok=True)
    return None
