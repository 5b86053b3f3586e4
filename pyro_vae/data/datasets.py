"""The datasets of the AEVB paper (Kingma & Welling 2013, section 5), more image datasets, a
synthetic one with a known likelihood, and the user's own arrays.

``load_dataset`` returns a :class:`Dataset`: float32 ``[N, D]`` train and test tensors, values in
``[0, 1]`` for the images. Built-in image datasets, each looked for under a data directory
(see :func:`resolve_data_dir`; for MNIST and Frey Face also in the repository's read-only
copies, :func:`shipped_data_dirs`) and verified against known checksums before use
(:mod:`.download`, which also fetches missing files when ``download=True``):

- ``"mnist"``: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``, torchvision's
  layout, so a copy torchvision downloaded is reused (its uncompressed files are accepted too).
- ``"frey_face"``: ``FreyFace/frey_rawface.mat`` (Roweis' file, variable ``ff``).
- ``"binarized_mnist"``: ``BinarizedMNIST/binarized_mnist.npz``, Larochelle & Murray's fixed
  binarisation, bit-packed; built from their three ``.amat`` text files when absent.
- ``"fashion_mnist"``, ``"kmnist"``: MNIST's format and torchvision's layout under
  ``FashionMNIST/raw/`` and ``KMNIST/raw/`` (the gzip files only).
- ``"omniglot"``: ``Omniglot/chardata.mat``, Burda et al.'s 28x28 version (:mod:`.images`).
- ``"cifar10"``: ``cifar-10-batches-py/``, the python version's batches, extracted from
  ``cifar-10-python.tar.gz`` when absent (:mod:`.images`).

Files of none:

- ``"linear_gaussian"``: synthetic real-valued data of a linear Gaussian model whose exact
  log-likelihood comes with them (:mod:`.synthetic`).
- ``"array"``: the user's own ``.npy`` / ``.npz`` / ``.pt`` file.

Any image dataset of ``torchvision.datasets`` by its class name, with ``library="torchvision"``
(the ``[vision]`` extra; :mod:`.vision`).

Errors (from :mod:`pyro_vae.errors`): :class:`ArgumentError` for a refused argument,
:class:`DataNotFoundError` for absent files, :class:`ChecksumError` for a present file that is not
the known one, :class:`DataError` for any other data that cannot be used; each names the file.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch

from ..atomic import atomic_write
from ..errors import ArgumentError, ChecksumError, DataError, DataNotFoundError, refuse
from .download import MIRROR_ENV, MIRRORS, mirror_list, obtain, verify_bytes, verify_file
from .images import (
    CIFAR10_FOLDER,
    CIFAR10_SHAPE,
    CIFAR10_TEST_BATCH,
    CIFAR10_TRAIN_BATCHES,
    extract_cifar_batches,
    read_cifar_batch,
    read_omniglot,
)
from .synthetic import linear_gaussian_data

DATA_DIR_ENV = "PYRO_VAE_DATA_DIR"
DATASET_NAMES = (
    "mnist",
    "frey_face",
    "binarized_mnist",
    "fashion_mnist",
    "kmnist",
    "omniglot",
    "cifar10",
    "linear_gaussian",
    "array",
)
FREY_FACE_TEST_SIZE = 200
#: The repository's read-only copies of datasets, relative to a clone's root (MNIST ships
#: there; experiments/data/README.md says which datasets and why).
SHIPPED_DATA = Path("experiments") / "data"
#: The datasets looked for in :data:`SHIPPED_DATA` too: their readers write nothing.
SHIPPED_DATASETS = ("mnist", "frey_face")
#: ``library=`` values of :func:`load_dataset`: another library's datasets by class name.
LIBRARIES = ("torchvision",)
#: linear_gaussian's arguments of :func:`load_dataset` and their defaults
LINEAR_GAUSSIAN_DEFAULTS = {
    "dim": 20,
    "latent_dim_true": 5,
    "num_points": 10000,
    "test_points": 2000,
    "seed": 0,
}

_IDX_IMAGES, _IDX_LABELS = 2051, 2049
_MNIST_PIXELS = 784
_BINARIZED_SPLITS = ("train", "valid", "test")
# the last line of the message when a built-in dataset's files are absent
_ADVICE = (
    f"Set data_dir=... or ${DATA_DIR_ENV} to a directory that holds them "
    f"(or ${MIRROR_ENV} to a base URL serving them)."
)


@dataclass
class Dataset:
    """An in-memory dataset: rows are data points, flattened images in row-major order."""

    name: str
    train: torch.Tensor  # float32 [N, D]; in [0, 1] for images, real for linear_gaussian, arrays
    test: torch.Tensor  # float32 [N_test, D]
    # for plots: (height, width) of grey images, (channels, height, width) of colour images
    # (CIFAR-10: each row is the C, H, W array flattened in row-major order); None when unknown
    image_shape: tuple[int, int] | tuple[int, int, int] | None
    binary: bool  # the stored values are exactly 0/1, so dynamic binarisation changes nothing
    source: str  # the files it was read from
    valid: torch.Tensor | None = None  # binarized_mnist's 10000-point validation split
    # int64 classes (MNIST's digits, Fashion-MNIST's, KMNIST's, CIFAR-10's), for plots only
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    #: How it was loaded: the arguments of :func:`load_dataset` that read it again (what a
    #: run directory records, so ``pyro-vae evaluate`` finds the data of a run started in
    #: Python). Empty for data that are no files (tensors given in Python).
    settings: dict = field(default_factory=dict)
    #: The exact log-likelihood, where the data come from a known density (linear_gaussian):
    #: a callable taking float ``[N, D]`` data (any device) to float64 ``log p(x)`` ``[N]``,
    #: computed in float64. None for other datasets.
    exact_log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data directory: ``data_dir`` if given (not None or empty), else ``$PYRO_VAE_DATA_DIR``
    if set, else ``./data`` relative to the current directory; ``~`` expanded, made absolute.

    Raises :class:`ArgumentError` for a ``~user`` whose home directory is unknown."""
    return _chosen_data_dir(data_dir) or Path("data").absolute()


def _chosen_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The data directory the caller chose (``data_dir`` or ``$PYRO_VAE_DATA_DIR``), or None."""
    for key, candidate in (
        ("data_dir", data_dir),
        (f"${DATA_DIR_ENV}", os.environ.get(DATA_DIR_ENV)),
    ):
        if candidate is not None and str(candidate) != "":
            return _expand(key, candidate).absolute()
    return None


def shipped_data_dirs() -> list[Path]:
    """The repository's read-only copies of datasets (:data:`SHIPPED_DATA`) that exist:
    ``experiments/data`` under the current directory (the root of a clone), then the one
    beside the imported ``pyro_vae`` package (an editable install from a clone, found from
    any directory). A wheel carries none.

    :func:`load_dataset` reads :data:`SHIPPED_DATASETS` from there, in place and verified
    like any file, when no data directory was chosen (neither ``data_dir`` nor
    ``$PYRO_VAE_DATA_DIR``) and ``./data`` lacks them; nothing is ever written there."""
    found: list[Path] = []
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        folder = (root / SHIPPED_DATA).resolve()
        if folder.is_dir() and folder not in found:
            found.append(folder)
    return found


def is_shipped_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies in (or is) one of :func:`shipped_data_dirs`."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved == d or d in resolved.parents for d in shipped_data_dirs())


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
    dim: int | None = None,
    latent_dim_true: int | None = None,
    num_points: int | None = None,
    test_points: int | None = None,
    seed: int | None = None,
    library: str | None = None,
    root: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    train_split: Any = None,
    test_split: Any = None,
) -> Dataset:
    """Load one of :data:`DATASET_NAMES`, or with ``library="torchvision"`` the image dataset
    of ``torchvision.datasets`` whose class is ``name``.

    Built-in image datasets (``data_dir``, ``download``, ``mirrors`` apply):

    - ``"mnist"``: 60000 train / 10000 test images, 28x28, grey levels / 255. Labels are loaded
      into ``train_labels`` / ``test_labels`` when their files are present.
    - ``"frey_face"``: 1965 images of 28x20, grey levels / 255. Split: the last 200 indices of
      ``numpy.random.RandomState(0).permutation(1965)`` are the test set, the other 1765 (in
      that permuted order) the training set. The legacy ``RandomState`` stream is stable across
      numpy versions, so the split is too.
    - ``"binarized_mnist"``: Larochelle & Murray's fixed binarisation, 50000 train / 10000 test,
      values exactly 0/1 (``binary=True``); the 10000 validation points are in ``valid``.
    - ``"fashion_mnist"`` (Zalando's Fashion-MNIST), ``"kmnist"`` (Kuzushiji-MNIST): as
      ``"mnist"``, 60000 / 10000 images of 28x28, grey levels / 255, labels when present.
    - ``"omniglot"``: Burda et al.'s (2015) 28x28 Omniglot, 24345 train / 8070 test images in
      the file's order (IWAE's own validation split is not made), grey levels in [0, 1] as
      stored, read in the IWAE code's pixel order so that the images are upright. No labels.
    - ``"cifar10"``: 50000 train (batches 1 to 5, in order) / 10000 test colour images of 32x32,
      each row the (channel, height, width) array flattened in row-major order, values / 255;
      ``image_shape=(3, 32, 32)``; labels loaded.

    ``"linear_gaussian"`` draws real-valued data of a linear Gaussian (factor-analysis) model
    ``x = W z + b + sigma * eps``, ``z ~ N(0, I_K)``, ``eps ~ N(0, I_D)``, whose parameters are
    drawn too, from one ``torch.Generator`` seeded with ``seed``
    (:func:`~pyro_vae.data.synthetic.linear_gaussian_data`), so that
    ``p(x) = N(b, W W^T + sigma^2 I)`` exactly: ``exact_log_likelihood`` gives it. Arguments
    (defaults in :data:`LINEAR_GAUSSIAN_DEFAULTS`): ``dim`` (D, 20), ``latent_dim_true``
    (K, 5), ``num_points`` (training points, 10000), ``test_points`` (2000), ``seed`` (0).
    The same arguments give the same data in every run. No files: ``data_dir`` is unused.

    ``"array"`` reads ``path`` (``.npy``; ``.npz`` holding one array or the key ``"x"`` or
    ``"train"``; ``.pt`` holding a tensor or a dict with one of those keys). ``[N, D]`` is used
    as is, ``[N, H, W]`` is flattened with ``image_shape=(H, W)``. ``uint8`` data with a
    maximum above 1 are taken as 8-bit grey levels and divided by 255; anything else (other
    integers too: counts for ``likelihood=poisson``) is converted to float32 unchanged. The
    test set is read from ``test_path`` (whose preferred keys are ``"x"`` and ``"test"``, so
    one ``.npz`` with ``train`` and ``test`` may serve as both) or else split off: the last
    ``round(test_fraction * N)`` (at least 1) indices of
    ``numpy.random.RandomState(0).permutation(N)``; the rest, in permuted order, is the
    training set. ``image_shape`` is the argument if given, else ``(H, W)`` of 3-D data, else a
    square if D is a perfect square, else None.

    ``library="torchvision"`` (the ``[vision]`` extra): ``name`` is a class of
    ``torchvision.datasets`` whose items are images (``"FashionMNIST"``, ``"EMNIST"``,
    ``"SVHN"``, ``"CIFAR10"``, ``"Omniglot"``, ...), built under ``root`` (default: the data
    directory) with ``download=download`` and the keyword arguments ``options`` (e.g.
    ``{"split": "balanced"}`` for EMNIST), and converted once to float32 ``[N, D]`` in
    [0, 1] with its ``image_shape`` (:func:`~pyro_vae.data.vision.load_torchvision_dataset`:
    ``train_split`` / ``test_split`` override the values of its train/test argument,
    ``test_fraction`` splits a class without one).

    ``train_size`` keeps the first ``train_size`` training points (Figure 3 of the paper uses
    1000 to show overfitting).

    MNIST and Frey Face are also looked for in the repository's read-only copies
    (:func:`shipped_data_dirs`) when no data directory was chosen (``data_dir`` and
    ``$PYRO_VAE_DATA_DIR`` unset) and ``./data`` lacks them; files are downloaded into the
    data directory only when neither has them.

    Raises :class:`ArgumentError` for an unknown ``name``, ``path`` missing for ``"array"`` or
    given for another dataset (likewise ``test_path`` and ``image_shape``; ``dim``,
    ``latent_dim_true``, ``num_points``, ``test_points`` and ``seed`` given for another dataset
    than ``"linear_gaussian"``), ``train_size``, ``test_fraction``, ``image_shape`` or a
    ``linear_gaussian`` argument out of range; :class:`DataNotFoundError` (also a
    ``FileNotFoundError``) for absent files that could not be downloaded; :class:`ChecksumError`
    for a present file that is not the known one; :class:`DataError` for any other file that
    cannot be used (unreadable, wrong shape, empty, NaN or Inf)."""
    if library is not None and library not in LIBRARIES:
        raise refuse("library", library, f"None or one of {list(LIBRARIES)}")
    if library is None and name not in DATASET_NAMES:
        raise refuse("name", name, f"a dataset name, one of {', '.join(DATASET_NAMES)}")
    owner_of_name = f"library={library}" if library else name
    # arguments that only one dataset reads, refused for the others rather than ignored
    own_arguments = {
        "library=torchvision": {
            "root": root,
            "options": options,
            "train_split": train_split,
            "test_split": test_split,
        },
        "array": {"path": path, "test_path": test_path, "image_shape": image_shape},
        "linear_gaussian": {
            "dim": dim,
            "latent_dim_true": latent_dim_true,
            "num_points": num_points,
            "test_points": test_points,
            "seed": seed,
        },
    }
    for owner, given in own_arguments.items():
        misplaced = [key for key, value in given.items() if value is not None]
        if owner != owner_of_name and misplaced:
            several = len(misplaced) > 1
            where = owner if owner.startswith("library=") else f"name={owner!r}"
            raise ArgumentError(
                f"{', '.join(misplaced)} only {'apply' if several else 'applies'} to "
                f"{where}, not {name!r}; leave {'them' if several else 'it'} unset"
            )

    settings: dict = {"name": name, "data_dir": None if data_dir is None else str(data_dir)}
    if library is not None:
        from .vision import load_torchvision_dataset  # imports this module

        dataset = load_torchvision_dataset(
            name,
            resolve_data_dir(data_dir) if root is None else _expand("root", root),
            download=download,
            options=dict(options or {}),
            train_split=train_split,
            test_split=test_split,
            test_fraction=test_fraction,
        )
        settings.update(
            library=library,
            root=None if root is None else str(root),
            options=dict(options or {}),
            train_split=train_split,
            test_split=test_split,
            test_fraction=test_fraction,
        )
    elif name == "array":
        if path is None:
            raise refuse("path", None, "a .npy, .npz or .pt file, which name='array' reads")
        dataset = _load_array(path, test_path, test_fraction, image_shape)
        settings.update(
            path=str(path),
            test_path=None if test_path is None else str(test_path),
            test_fraction=test_fraction,
            image_shape=None if image_shape is None else list(image_shape),
        )
    elif name == "linear_gaussian":
        arguments = {
            key: LINEAR_GAUSSIAN_DEFAULTS[key] if value is None else value
            for key, value in own_arguments[name].items()
        }
        dataset = _load_linear_gaussian(**arguments)
        settings.update(arguments)
    else:
        urls = mirror_list(MIRRORS[name] if mirrors is None else mirrors)
        loader = _FILE_LOADERS[name]
        if name in SHIPPED_DATASETS:
            # the repository's copies serve only the default lookup: a directory the user
            # chose is the one searched
            shipped = [] if _chosen_data_dir(data_dir) else shipped_data_dirs()
            loader = partial(loader, shipped=shipped)
        dataset = loader(resolve_data_dir(data_dir), urls, download)
    settings["train_size"] = train_size
    dataset = replace(dataset, settings=settings)
    if train_size is None:
        return dataset
    n = dataset.train.shape[0]
    if not 1 <= train_size <= n:
        raise refuse("train_size", train_size, f"1..{n}, the size of {name}'s training set")
    labels = dataset.train_labels
    # clone so the full training set's memory is released
    return replace(
        dataset,
        train=dataset.train[:train_size].clone(),
        train_labels=None if labels is None else labels[:train_size].clone(),
    )


def check_data_for_likelihood(x: torch.Tensor, likelihood: str | None, where: str) -> None:
    """Raise a :class:`DataError`, naming ``where`` (e.g. ``"dataset.path=/x.npy"``), unless ``x``
    is a non-empty 2-D ``[N, D]`` tensor of finite values, and for the ``"bernoulli"`` and
    ``"gaussian"`` likelihoods inside [0, 1], the range of their sigmoid decoder means.
    ``likelihood=None`` checks the shape and finiteness only."""
    if x.ndim != 2:
        raise DataError(f"{where}: expected [N, D] data, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise DataError(f"{where}: the data are empty (shape {tuple(x.shape)})")
    non_finite = int((~torch.isfinite(x)).sum())
    if non_finite:
        raise DataError(f"{where}: {non_finite} of {x.numel()} values are NaN or Inf")
    if likelihood in ("bernoulli", "gaussian"):
        outside = int(((x < 0) | (x > 1)).sum())
        if outside:
            raise DataError(
                f"{where}: the {likelihood} likelihood needs values in [0, 1] (its decoder mean "
                f"is a sigmoid), but {outside} of {x.numel()} values are outside "
                f"(min {x.min().item():.4g}, max {x.max().item():.4g}); rescale the data"
            )


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (LeCun's MNIST format; gzip-compressed if the name ends
    in ``.gz``), checking its magic number (2051 images, 2049 labels) and its length.

    Raises :class:`DataError` for a file that cannot be read, is not a complete gzip file, has
    another magic number or another length than its header implies."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path} cannot be read ({error})") from error
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path} is not a complete gzip file ({error})") from error
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise DataError(f"{path} is not the expected kind of idx file: magic {found}, not {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise DataError(
            f"{path} has {len(data)} bytes but its header {shape} implies {expected} (truncated?)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


# --- built-in datasets ---------------------------------------------------------------------


def _advice(name: str, shipped: Sequence[Path]) -> str:
    """The message's last lines when a built-in dataset's files are absent."""
    if name != "mnist":
        return _ADVICE
    if shipped:
        looked = ", ".join(str(d) for d in shipped)
        return f"Also searched (read only): {looked}.\n{_ADVICE}"
    return (
        f"{_ADVICE}\nA clone of the pyro-vae repository carries MNIST in {SHIPPED_DATA}, "
        "found when the command runs from the clone's root with data_dir unset."
    )


def _read_idx_file(path: Path, magic: int) -> np.ndarray:
    """An idx file's array: uncompressed files by torchvision's own reader where torchvision
    is installed (what its downloads leave), else (and for ``.gz`` files) by
    :func:`read_idx`. Both give the same array."""
    from .vision import read_idx_with_torchvision  # imports this module

    if path.suffix != ".gz":
        array = read_idx_with_torchvision(path, magic)
        if array is not None:
            return array
    return read_idx(path, magic)


@dataclass(frozen=True)
class _IdxDataset:
    """A dataset in MNIST's idx format and torchvision's layout."""

    name: str  # load_dataset's name
    folder: str  # under the data directory: torchvision's class name
    title: str  # the dataset's name in messages
    # CHECKSUMS' keys are checksum_prefix + file name: MNIST's are the bare names, the others'
    # the paths under the data directory (their file names are MNIST's)
    checksum_prefix: str
    # whether uncompressed copies are accepted (only where their checksums are known)
    uncompressed: bool


_IDX_DATASETS = {
    "mnist": _IdxDataset("mnist", "MNIST", "MNIST", "", uncompressed=True),
    "fashion_mnist": _IdxDataset(
        "fashion_mnist", "FashionMNIST", "Fashion-MNIST", "FashionMNIST/raw/", uncompressed=False
    ),
    "kmnist": _IdxDataset("kmnist", "KMNIST", "KMNIST", "KMNIST/raw/", uncompressed=False),
}


def _load_idx_dataset(
    spec: _IdxDataset,
    data_dir: Path,
    urls: list[str],
    download: bool,
    shipped: Sequence[Path] = (),
) -> Dataset:
    """MNIST, Fashion-MNIST or KMNIST (``spec``): 28x28 images and their labels, if present,
    from the first of ``data_dir`` and the read-only ``shipped`` folders that holds both
    image files; downloaded into ``data_dir`` when none does."""
    stems = {
        "train": "train-images-idx3-ubyte",
        "test": "t10k-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }

    def present(raw: Path, stem: str) -> Path | None:
        candidates = (
            (raw / f"{stem}.gz", raw / stem) if spec.uncompressed else (raw / f"{stem}.gz",)
        )
        return next((p for p in candidates if p.is_file()), None)

    def complete(raw: Path) -> bool:
        return present(raw, stems["train"]) is not None and present(raw, stems["test"]) is not None

    folders = [root / spec.folder / "raw" for root in (data_dir, *shipped)]
    raw = next((folder for folder in folders if complete(folder)), folders[0])
    if not complete(raw):
        # a fresh download fetches the labels too, but missing labels alone trigger nothing:
        # they are only used for plots
        missing = [f"{stem}.gz" for stem in stems.values() if present(raw, stem) is None]
        if spec.uncompressed:
            note = "Uncompressed copies (same names without .gz) work too; labels are optional."
        else:
            note = "Labels are optional."
        advice = _advice(spec.name, shipped)
        obtain(raw, missing, urls, download, spec.title, note, advice, spec.checksum_prefix)

    arrays: dict[str, torch.Tensor | None] = {}
    sources = []
    for key, stem in stems.items():
        file = present(raw, stem)
        if file is None:
            arrays[key] = None
            continue
        verify_file(file, spec.checksum_prefix + file.name)
        sources.append(str(file))
        if key.endswith("labels"):
            labels = _read_idx_file(file, _IDX_LABELS)
            arrays[key] = torch.from_numpy(np.asarray(labels).astype(np.int64))
        else:
            images = _read_idx_file(file, _IDX_IMAGES)
            if images.shape[1:] != (28, 28):
                raise DataError(f"{file}: expected 28x28 images, got {images.shape[1:]}")
            arrays[key] = _grey_levels(images)
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        if labels is not None and len(labels) != len(arrays[split]):
            raise DataError(
                f"{spec.title} {split}: {len(labels)} labels for {len(arrays[split])} images"
            )
    return Dataset(
        name=spec.name,
        train=arrays["train"],
        test=arrays["test"],
        image_shape=(28, 28),
        binary=False,
        source=", ".join(sources),
        train_labels=arrays["train_labels"],
        test_labels=arrays["test_labels"],
    )


def _load_frey_face(
    data_dir: Path, urls: list[str], download: bool, shipped: Sequence[Path] = ()
) -> Dataset:
    files = [root / "FreyFace" / "frey_rawface.mat" for root in (data_dir, *shipped)]
    file = next((f for f in files if f.is_file()), files[0])
    if not file.is_file():
        advice = _advice("frey_face", shipped)
        obtain(file.parent, [file.name], urls, download, "Frey Face", advice=advice)
    verify_file(file)
    try:
        ff = scipy.io.loadmat(file, variable_names=["ff"]).get("ff")
    except (OSError, ValueError, TypeError, scipy.io.matlab.MatReadError) as error:
        raise DataError(f"{file} could not be read as a MATLAB file ({error})") from error
    if ff is None or ff.ndim != 2 or ff.shape[0] != 28 * 20 or ff.shape[1] <= FREY_FACE_TEST_SIZE:
        shape = None if ff is None else ff.shape
        raise DataError(
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
        # .amat files already there are verified and used, never downloaded over
        missing = [name for name in names if not (directory / name).is_file()]
        downloaded: list[Path] = []
        if missing:
            note = f"Alternatively {npz.name}, which is written from them on first use."
            downloaded = obtain(
                directory, missing, urls, download, "Binarized MNIST", note, _ADVICE
            )
        packed = {}
        for split, name in zip(_BINARIZED_SPLITS, names, strict=True):
            verify_file(directory / name)
            packed[split] = np.packbits(_read_amat(directory / name), axis=1)
        _write_npz(npz, packed)
        # the npz holds the same bits in a 30th of the space
        for file in downloaded:
            file.unlink()

    bits_of = {}
    try:
        with np.load(npz, allow_pickle=False) as archive:
            for split in _BINARIZED_SPLITS:
                if split in archive.files:
                    bits_of[split] = np.unpackbits(archive[split], axis=1)
    except (OSError, EOFError, ValueError, TypeError, zipfile.BadZipFile) as error:
        raise DataError(f"{npz} could not be read ({error}); delete it to rebuild it") from error
    splits = {}
    for split in _BINARIZED_SPLITS:
        if split not in bits_of:
            raise ChecksumError(f"{npz} has no array {split!r}; delete it to rebuild it")
        bits = bits_of[split]
        verify_bytes(bits.tobytes(), f"{npz.name}:{split}", f"{npz} (array {split!r})")
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


def _load_omniglot(data_dir: Path, urls: list[str], download: bool) -> Dataset:
    directory = data_dir / "Omniglot"
    file = directory / "chardata.mat"
    if not file.is_file():
        obtain(directory, [file.name], urls, download, "Omniglot", advice=_ADVICE)
    verify_file(file)
    splits = read_omniglot(file)
    train, test = (torch.from_numpy(splits[split]) for split in ("train", "test"))
    return Dataset(
        name="omniglot",
        train=train,
        test=test,
        image_shape=(28, 28),
        binary=_is_binary(train, test),
        source=str(file),
    )


def _load_cifar10(data_dir: Path, urls: list[str], download: bool) -> Dataset:
    directory = data_dir / CIFAR10_FOLDER
    names = [*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH]
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        archive = data_dir / "cifar-10-python.tar.gz"
        downloaded: list[Path] = []
        if not archive.is_file():
            note = (
                f"Alternatively its extracted batches, {directory}/data_batch_1 to "
                f"data_batch_5 and {CIFAR10_TEST_BATCH}."
            )
            downloaded = obtain(data_dir, [archive.name], urls, download, "CIFAR-10", note, _ADVICE)
        verify_file(archive)
        # batches already there are verified and used, never extracted over
        extract_cifar_batches(archive, directory, missing)
        # the batches hold the same data, so an archive downloaded here is deleted once
        # extracted (torchvision keeps it); the user's own stays
        for file in downloaded:
            file.unlink()

    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for name in names:
        file = directory / name
        verify_file(file, f"{CIFAR10_FOLDER}/{name}")
        split = "test" if name == CIFAR10_TEST_BATCH else "train"
        batch_images, batch_labels = read_cifar_batch(file)
        images[split].append(batch_images)
        labels[split].append(batch_labels)
    return Dataset(
        name="cifar10",
        train=_grey_levels(np.concatenate(images["train"])),
        test=_grey_levels(np.concatenate(images["test"])),
        image_shape=CIFAR10_SHAPE,
        binary=False,
        source=str(directory),
        train_labels=torch.from_numpy(np.concatenate(labels["train"])),
        test_labels=torch.from_numpy(np.concatenate(labels["test"])),
    )


_FILE_LOADERS: dict[str, Callable[[Path, list[str], bool], Dataset]] = {
    **{name: partial(_load_idx_dataset, spec) for name, spec in _IDX_DATASETS.items()},
    "frey_face": _load_frey_face,
    "binarized_mnist": _load_binarized_mnist,
    "omniglot": _load_omniglot,
    "cifar10": _load_cifar10,
}


# --- synthetic data ------------------------------------------------------------------------


def _load_linear_gaussian(
    dim: int, latent_dim_true: int, num_points: int, test_points: int, seed: int
) -> Dataset:
    train, test, model = linear_gaussian_data(dim, latent_dim_true, num_points, test_points, seed)
    return Dataset(
        name="linear_gaussian",
        train=train,
        test=test,
        image_shape=None,
        binary=False,
        source=(
            f"synthetic: linear_gaussian(dim={dim}, latent_dim_true={latent_dim_true}, "
            f"num_points={num_points}, test_points={test_points}, seed={seed})"
        ),
        exact_log_likelihood=model,
    )


def _read_amat(path: Path) -> np.ndarray:
    """Parse a Larochelle ``.amat`` file: one row per line of 784 space-separated 0/1."""
    text = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    bits = text[(text == ord("0")) | (text == ord("1"))] - ord("0")
    rows = int(np.count_nonzero(text == ord("\n")))
    if rows == 0 or bits.size != rows * _MNIST_PIXELS:
        raise DataError(
            f"{path}: expected lines of {_MNIST_PIXELS} 0/1 values, found {bits.size} values "
            f"on {rows} lines"
        )
    return bits.reshape(rows, _MNIST_PIXELS)


def _write_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    # compressed in memory (about 10 MB), then written atomically: an interrupted write never
    # leaves a half npz that looks complete
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(target, buffer.getvalue())


# --- the user's own array ------------------------------------------------------------------


def _load_array(
    path: str | os.PathLike[str],
    test_path: str | os.PathLike[str] | None,
    test_fraction: float,
    image_shape: Sequence[int] | None,
) -> Dataset:
    file = _expand("path", path)
    x, inferred_shape = _read_array_file(file, role="train")
    if test_path is None:
        if not 0 < test_fraction < 1:
            raise refuse("test_fraction", test_fraction, "a fraction in (0, 1)")
        n_test = max(1, round(test_fraction * len(x)))
        if n_test >= len(x):
            raise DataError(
                f"{file}: {len(x)} points leave none to train on with test_fraction={test_fraction}"
            )
        train_idx, test_idx = _split(len(x), n_test)
        train, test = x[train_idx], x[test_idx]
        source = str(file)
    else:
        test_file = _expand("test_path", test_path)
        train, (test, _) = x, _read_array_file(test_file, role="test")
        if test.shape[1] != train.shape[1]:
            raise DataError(
                f"{test_file} has D={test.shape[1]} values per point, {file} has D={train.shape[1]}"
            )
        source = f"{file} (test: {test_file})"

    d = train.shape[1]
    if image_shape is not None:
        shape = _image_shape(image_shape, d)
    elif inferred_shape is not None:
        shape = inferred_shape
    else:
        side = math.isqrt(d)
        shape = (side, side) if side * side == d else None
    return Dataset(
        name="array",
        train=train,
        test=test,
        image_shape=shape,
        binary=_is_binary(train, test),
        source=source,
    )


def _image_shape(image_shape: Sequence[int], d: int) -> tuple[int, int]:
    """``image_shape`` as ``(height, width)``, refused unless it holds D pixels."""
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):  # not a sequence, or not of integers
        shape = ()
    if len(shape) != 2 or min(shape) < 1 or math.prod(shape) != d:
        shown = list(image_shape) if isinstance(image_shape, Sequence) else image_shape
        raise refuse("image_shape", shown, f"[height, width] with height * width = D={d} pixels")
    return shape  # type: ignore[return-value]  # two ints, checked above


def _read_array_file(file: Path, role: str) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """The float32 ``[N, D]`` data in ``file`` and, for ``[N, H, W]`` input, ``(H, W)``."""
    if not file.is_file():
        raise DataNotFoundError(f"dataset file {file} does not exist")
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".npz", ".pt"):
        raise DataError(f"{file}: unknown extension {suffix!r}; use .npy, .npz or .pt")
    try:
        if suffix in (".npy", ".npz"):
            # np.load goes by the content, not the name: accept what it finds
            loaded = np.load(file, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded as archive:
                    a = archive[_pick_key(archive.files, file, role)]
            else:
                a = loaded
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj[_pick_key(list(obj), file, role)]
            if not isinstance(obj, torch.Tensor):
                raise DataError(f"{file} holds a {type(obj).__name__}, not a tensor")
            a = obj.detach().numpy()
    except DataError:  # one of ours above, already clear
        raise
    except (
        EOFError,
        OSError,
        RuntimeError,
        ValueError,
        TypeError,
        zipfile.BadZipFile,
        pickle.PickleError,
    ) as e:
        # numpy and torch say what is wrong but not with which file (empty, truncated,
        # not an array file, pickled objects)
        raise DataError(f"dataset file {file} could not be read as {suffix} ({e})") from e

    if not isinstance(a, np.ndarray):  # a memory-mapped or otherwise odd object from np.load
        raise DataError(f"{file} holds a {type(a).__name__}, not an array")
    if a.ndim not in (2, 3):
        raise DataError(f"{file}: expected [N, D] or [N, H, W] data, got shape {a.shape}")
    if a.size == 0:
        raise DataError(f"{file}: the data are empty (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise DataError(f"{file}: expected real numbers, got dtype {a.dtype}")
    inferred_shape = (a.shape[1], a.shape[2]) if a.ndim == 3 else None
    a = a.reshape(a.shape[0], -1)
    if a.dtype == np.uint8 and a.max() > 1:  # 8-bit images; other integers are counts
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
    raise DataError(
        f"{file} holds several arrays {sorted(keys)}; keep one or name it 'x' or {role!r}"
    )


# --- shared helpers ------------------------------------------------------------------------


def _expand(key: str, value: str | os.PathLike[str]) -> Path:
    """``value`` as a path with ``~`` expanded; :class:`ArgumentError` naming ``key`` if the
    home directory it names is unknown."""
    try:
        return Path(value).expanduser()
    except RuntimeError as error:  # ~nosuchuser/...
        raise refuse(key, str(value), f"a path whose ~user is known ({error})") from error


def _grey_levels(images: np.ndarray) -> torch.Tensor:
    """8-bit images ``[N, ...]`` as float32 ``[N, D]`` in [0, 1]."""
    # torch.tensor copies, so read-only numpy buffers (np.frombuffer) are fine
    return torch.tensor(images.reshape(len(images), -1)).to(torch.float32).div_(255)


def _is_binary(train: torch.Tensor, test: torch.Tensor) -> bool:
    """Whether every value is exactly 0 or 1."""
    return bool(torch.all((train == 0) | (train == 1)) and torch.all((test == 0) | (test == 1)))


def _split(n: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    # the legacy RandomState stream is frozen by numpy's compatibility policy
    order = np.random.RandomState(0).permutation(n)
    return order[:-n_test], order[-n_test:]
