"""Parsers of the image files of Omniglot (Burda et al.'s 28x28 ``chardata.mat``) and CIFAR-10
(the python version's pickled batches and their archive).

Each returns numpy arrays, rows being images flattened in row-major order, and raises
:class:`DataError` naming the file for anything it cannot use. Checksums, downloads and the
:class:`~pyro_vae.data.Dataset` built from the arrays are :mod:`.datasets`' business.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.io

from ..atomic import atomic_write
from ..errors import DataError

OMNIGLOT_SIDE = 28
#: chardata.mat's variables: the training and the test images, one per column
OMNIGLOT_VARIABLES = {"train": "data", "test": "testdata"}

CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_FOLDER = "cifar-10-batches-py"  # the archive's folder, and where its batches go
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"

# tarfile's "data" extraction filter, where this Python has it (3.10.12, 3.11.4, 3.12 and later);
# without it, the exact member names and the regular-file check below keep extraction safe
_data_filter = getattr(tarfile, "data_filter", None)


# --- Omniglot ------------------------------------------------------------------------------


def read_omniglot(path: str | Path) -> dict[str, np.ndarray]:
    """The ``"train"`` and ``"test"`` images of Burda et al.'s ``chardata.mat``: float32
    ``[N, 784]`` rows of upright 28x28 images in row-major order, values in [0, 1].

    The file holds ``data`` (784 x 24345) and ``testdata`` (784 x 8070), one image per column,
    each stored column by column (MATLAB's order). The IWAE code reads them as
    ``data.T.reshape((-1, 28, 28)).reshape((-1, 28*28), order='fortran')``; so does this,
    as the transpose of each 28x28 block (:func:`omniglot_rows`).

    Raises :class:`DataError` for a file that is not a MATLAB file, lacks either variable, has
    another number of rows than 784, or values outside [0, 1] (NaN included)."""
    path = Path(path)
    names = list(OMNIGLOT_VARIABLES.values())
    try:
        mat = scipy.io.loadmat(path, variable_names=names)
    except (OSError, ValueError, TypeError, scipy.io.matlab.MatReadError) as error:
        raise DataError(f"{path} could not be read as a MATLAB file ({error})") from error
    pixels = OMNIGLOT_SIDE * OMNIGLOT_SIDE
    splits = {}
    for split, name in OMNIGLOT_VARIABLES.items():
        columns = mat.get(name)
        if (
            not isinstance(columns, np.ndarray)
            or columns.ndim != 2
            or columns.shape[0] != pixels
            or columns.shape[1] == 0
            or not np.issubdtype(columns.dtype, np.number)
        ):
            found = columns.shape if isinstance(columns, np.ndarray) else None
            raise DataError(
                f"{path}: expected a variable {name!r} of shape ({pixels}, N > 0), one 28x28 "
                f"image per column; found {found}"
            )
        outside = int(np.count_nonzero(~((columns >= 0) & (columns <= 1))))
        if outside:
            raise DataError(
                f"{path}: {outside} of {columns.size} values of {name!r} are outside [0, 1] "
                "(or NaN); expected grey levels in [0, 1]"
            )
        splits[split] = omniglot_rows(columns)
    return splits


def omniglot_rows(columns: np.ndarray) -> np.ndarray:
    """``chardata.mat``'s ``[784, N]`` columns as float32 ``[N, 784]`` rows of upright images.

    Column ``n`` holds image ``n`` column by column (pixel ``(row, col)`` at ``28 * col + row``),
    so each 28x28 block read row by row is the image transposed."""
    n = columns.shape[1]
    blocks = np.asarray(columns, dtype=np.float32).T.reshape(n, OMNIGLOT_SIDE, OMNIGLOT_SIDE)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1)).reshape(n, -1)


# --- CIFAR-10 ------------------------------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of lists, strings and one uint8 array) and nothing else:
    a pickle naming any other class or function is refused instead of run."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            # how Python 3 writes bytes at protocol 2 (a batch pickled again by Python 3)
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of one CIFAR-10 batch of the python version: uint8
    ``[N, 3072]`` rows (channel-first, each of red, green, blue a 32x32 plane in row-major
    order: ``(C, H, W)`` flattened) and int64 ``[N]`` labels in 0..9.

    The batch is a pickled dict (written by Python 2; read with ``encoding="latin1"``, as
    torchvision does) with keys ``data`` and ``labels``; only numpy's array classes may
    appear in it. Raises :class:`DataError` for anything else."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, ValueError, TypeError, AttributeError, pickle.PickleError) as e:
        raise DataError(f"{path} could not be read as a CIFAR-10 batch ({e})") from e
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        keys = sorted(map(str, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', found {keys}")
    images, labels = batch["data"], np.asarray(batch["labels"])
    d = int(np.prod(CIFAR10_SHAPE))
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        found = (images.dtype, images.shape) if isinstance(images, np.ndarray) else type(images)
        raise DataError(f"{path}: expected 'data' as a uint8 [N, {d}] array, found {found}")
    if images.shape[1] != d or len(images) == 0:
        raise DataError(f"{path}: expected 'data' of shape [N > 0, {d}], found {images.shape}")
    if (
        labels.shape != (len(images),)
        or not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() > 9
    ):
        raise DataError(
            f"{path}: expected {len(images)} labels in 0..9, found shape {labels.shape} "
            f"of {labels.dtype}"
        )
    return images, labels.astype(np.int64)


def extract_cifar_batches(archive: Path, directory: Path, names: Sequence[str]) -> list[Path]:
    """Extract the batches ``names`` (from :data:`CIFAR10_TRAIN_BATCHES` and
    :data:`CIFAR10_TEST_BATCH`) of ``cifar-10-python.tar.gz`` into ``directory``; return the
    files written.

    Only those members are read, by their exact names, each checked by tarfile's ``"data"``
    filter (no absolute paths, no escape from ``directory``, no links or devices; Python 3.10.12,
    3.11.4 and later) and required to be a regular file, then written atomically under its own
    name, so an interrupted extraction never leaves a partial batch. Raises :class:`DataError`
    for an archive that cannot be read, lacks a batch or holds it as anything but a regular
    file."""
    written = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                member_name = f"{CIFAR10_FOLDER}/{name}"
                try:
                    member = tar.getmember(member_name)
                except KeyError:
                    raise DataError(f"{archive} has no member {member_name}") from None
                if _data_filter is not None:
                    try:
                        member = _data_filter(member, str(directory.parent))
                    except tarfile.FilterError as error:
                        raise DataError(f"{archive}: {member_name} is refused ({error})") from error
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise DataError(f"{archive}: {member_name} is not a regular file")
                with source:
                    content = source.read()
                try:
                    written.append(atomic_write(directory / name, content))
                except OSError as error:  # a read-only data directory, a full disk
                    raise DataError(f"{directory / name} cannot be written ({error})") from error
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{archive} could not be read as a .tar.gz archive ({error})") from error
    return written
