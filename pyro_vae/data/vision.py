"""torchvision, where it is installed (the ``[vision]`` extra): its datasets by class name, and
its idx reader for the MNIST family's uncompressed files.

Nothing else in the package needs torchvision: without it everything works as before, and
a feature that needs it raises :class:`~pyro_vae.errors.MissingPackageError` naming the extra
and the install line (:data:`INSTALL_LINE`).

- :func:`load_torchvision_dataset`: any image dataset of ``torchvision.datasets``
  (``load_dataset(name, library="torchvision")``, ``pyro-vae train dataset=torchvision
  dataset.name=<class>``), built with torchvision's own ``download=`` and converted once to
  float32 ``[N, D]`` in [0, 1] with its ``image_shape``.
- :func:`read_idx_with_torchvision`: the built-in MNIST, Fashion-MNIST and KMNIST readers
  parse uncompressed idx files (what torchvision's downloads leave) with
  ``torchvision.datasets.mnist``'s reader; the arrays are the project's own reader's, bit
  for bit.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.error import URLError

import numpy as np
import torch

from ..errors import ArgumentError, DataError, DataNotFoundError, MissingPackageError, refuse
from .datasets import Dataset, _is_binary, _split, is_shipped_path
from .download import no_new_empty_directories
from .torch_data import tensors_and_labels

#: How to install torchvision beside a torch it works with (on the project's machines, the
#: only pair that installs: a CUDA build of torch that also runs on the CPU).
INSTALL_LINE = 'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[vision]"'

#: The arguments through which torchvision's dataset classes choose their train or test set,
#: tried in this order, with the values that choose each.
_SPLIT_ARGUMENTS = {"train": (True, False), "split": ("train", "test"), "background": (True, False)}


@functools.cache
def _import_torchvision() -> tuple[ModuleType | None, str]:
    """(the module, "") or (None, why not); imported once (it takes seconds), and only
    where it is installed."""
    if importlib.util.find_spec("torchvision") is None:
        return None, "which is not installed"
    try:
        return importlib.import_module("torchvision"), ""
    except Exception as error:  # a torchvision built for another torch fails in many ways
        return None, f"which is installed but cannot be imported ({type(error).__name__}: {error})"


def optional_torchvision() -> ModuleType | None:
    """The ``torchvision`` module where it is installed and imports, else None."""
    return _import_torchvision()[0]


def require_torchvision(feature: str) -> ModuleType:
    """The ``torchvision`` module, or :class:`MissingPackageError` saying that ``feature``
    needs it and how to install it."""
    module = optional_torchvision()
    if module is not None:
        return module
    raise MissingPackageError(
        f"{feature} needs torchvision, {_import_torchvision()[1]}: it is the [vision] extra. "
        f"Install it with: {INSTALL_LINE} (torch first, the version torchvision 0.29.1 "
        "is built for, so that pip keeps it)"
    )


def read_idx_with_torchvision(path: Path, magic: int) -> np.ndarray | None:
    """An uncompressed idx file's uint8 array read by torchvision's MNIST reader
    (``read_image_file`` for images, magic 2051; ``read_label_file`` for labels, 2049), or
    None where torchvision is not installed. Raises :class:`DataError` naming the file for
    a file that reader refuses."""
    if optional_torchvision() is None:
        return None
    from torchvision.datasets import mnist

    reader = mnist.read_image_file if magic == 2051 else mnist.read_label_file
    try:
        tensor = reader(str(path))
    except (AssertionError, TypeError, ValueError, RuntimeError, OSError) as error:
        raise DataError(f"{path} could not be read as an idx file ({error!r})") from error
    if magic == 2049:  # read_label_file returns int64; the file holds bytes
        tensor = tensor.to(torch.uint8)
    return tensor.numpy()


def image_dataset_classes() -> list[str]:
    """The classes of ``torchvision.datasets`` (their names), the image datasets among them."""
    tv = require_torchvision("the list of torchvision's datasets")
    vision_dataset = tv.datasets.VisionDataset
    return sorted(
        name
        for name in tv.datasets.__all__
        if inspect.isclass(getattr(tv.datasets, name, None))
        and issubclass(getattr(tv.datasets, name), vision_dataset)
        and name != "VisionDataset"
    )


def load_torchvision_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    download: bool = True,
    options: Mapping[str, Any] | None = None,
    train_split: Any = None,
    test_split: Any = None,
    test_fraction: float = 0.1,
) -> Dataset:
    """``torchvision.datasets.<name>``'s training and test sets as a :class:`Dataset`.

    The class is built as ``cls(root, <split argument>, download=download, **options)``.
    Its train/test choice is made through the first of its ``train`` (``True``/``False``;
    the MNIST family's), ``split`` (``"train"``/``"test"``) and ``background``
    (``True``/``False``; Omniglot's) arguments; ``train_split`` and ``test_split`` replace
    those values (``test_split="val"`` for ImageNet, which has no test split). A class
    without such an argument (Caltech101, SEMEION, ...) is built once and split like an
    array: the last ``round(test_fraction * N)`` points of a ``RandomState(0)``
    permutation are the test set. ``download`` is passed where the class takes it, so
    torchvision downloads and checks its own files; a failed or refused download leaves no
    empty directory behind.

    Items are converted once, without transforms: the first element of each item (a PIL
    image, an array or a tensor; integer targets are kept as labels) becomes a row, 8-bit
    values divided by 255, colour images channel-first; ``image_shape`` is ``(H, W)`` for
    grey images, ``(C, H, W)`` for colour ones. The whole set is held in memory as
    float32: resize large images in Python with a ``transform=`` and pass the torch
    Dataset itself to :func:`pyro_vae.train`.

    Raises :class:`MissingPackageError` without torchvision; :class:`ArgumentError` for a
    name that is no image dataset class of torchvision's, for ``options`` that are not
    plain values or that the class refuses, for a ``root`` inside the repository's
    read-only data (:func:`~pyro_vae.data.datasets.shipped_data_dirs`);
    :class:`DataNotFoundError` for absent files that were not (or could not be)
    downloaded; :class:`DataError` for items that are no images or values outside [0, 1].
    """
    tv = require_torchvision(f"dataset=torchvision (dataset.name={name})")
    cls = getattr(tv.datasets, name, None) if isinstance(name, str) else None
    classes = image_dataset_classes()
    if name not in classes or cls is None:
        raise refuse(
            "name",
            name,
            f"an image dataset class of torchvision.datasets {tv.__version__}, one of "
            f"{', '.join(classes)}",
        )
    options = dict(options or {})
    _check_plain(options)
    if not 0 < test_fraction < 1:
        raise refuse("test_fraction", test_fraction, "a fraction in (0, 1)")
    root = Path(root).expanduser().absolute()
    if is_shipped_path(root):
        raise refuse(
            "root",
            str(root),
            "a directory outside the repository's read-only data (experiments/data): "
            "torchvision writes into its root (it unpacks downloads there); dataset=mnist "
            "reads those files in place",
        )
    parameters = inspect.signature(cls.__init__).parameters
    split_argument = next(
        (
            argument
            for argument in _SPLIT_ARGUMENTS
            if argument in parameters
            or (argument == "train" and issubclass(cls, tv.datasets.MNIST))
        ),
        None,
    )
    for key, given in (("train_split", train_split), ("test_split", test_split)):
        if given is not None and split_argument is None:
            raise ArgumentError(
                f"{key}={given!r} is not allowed: torchvision.datasets.{name} has no train/test "
                "argument (train, split or background); it is split by test_fraction"
            )
    if split_argument in options:
        raise ArgumentError(
            f"options.{split_argument} is not allowed: pyro-vae chooses "
            f"torchvision.datasets.{name}'s {split_argument}= for its training and test sets; "
            "set train_split / test_split to other values"
        )
    keywords: dict[str, Any] = dict(options)
    if "root" in parameters:
        keywords["root"] = str(root)
    if "download" in parameters or issubclass(cls, tv.datasets.MNIST):
        keywords["download"] = download
    where = f"torchvision.datasets.{name}(root={root})"
    if split_argument is None:
        whole = _build(cls, keywords, where, download)
        x, labels = tensors_and_labels(whole, f"{name}")
        n_test = max(1, round(test_fraction * len(x)))
        if n_test >= len(x):
            raise DataError(
                f"{where}: {len(x)} images leave none to train on with "
                f"test_fraction={test_fraction}"
            )
        train_idx, test_idx = (torch.from_numpy(i) for i in _split(len(x), n_test))
        train, test = x[train_idx], x[test_idx]
        train_labels = None if labels is None else labels[train_idx]
        test_labels = None if labels is None else labels[test_idx]
        split_note = f"split by test_fraction={test_fraction}"
    else:
        default_train, default_test = _SPLIT_ARGUMENTS[split_argument]
        train_value = default_train if train_split is None else train_split
        test_value = default_test if test_split is None else test_split
        train_set = _build(cls, {**keywords, split_argument: train_value}, where, download)
        test_set = _build(cls, {**keywords, split_argument: test_value}, where, download)
        train, train_labels = tensors_and_labels(
            train_set, f"{name}({split_argument}={train_value!r})"
        )
        test, test_labels = tensors_and_labels(test_set, f"{name}({split_argument}={test_value!r})")
        split_note = f"{split_argument}={train_value!r} / {test_value!r}"
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{where}: the training images have shape {list(train.shape[1:])}, the test "
            f"images {list(test.shape[1:])}; they must have one shape"
        )
    image_shape = _image_shape(train, where)
    flat_train, flat_test = (t.reshape(t.shape[0], -1) for t in (train, test))
    for split, t in (("training", flat_train), ("test", flat_test)):
        if t.numel() and (t.min() < 0 or t.max() > 1 or not torch.isfinite(t).all()):
            raise DataError(
                f"{where}: the {split} images have values in [{t.min().item():.4g}, "
                f"{t.max().item():.4g}], not in [0, 1] (images that are not 8-bit); "
                "convert them with a transform in Python and pass the torch Dataset to "
                "pyro_vae.train"
            )
    return Dataset(
        name=name,
        train=flat_train.contiguous(),
        test=flat_test.contiguous(),
        image_shape=image_shape,
        binary=_is_binary(flat_train, flat_test),
        source=f"{where}, {split_note}",
        train_labels=train_labels,
        test_labels=test_labels,
    )


def _build(cls: type, keywords: dict[str, Any], where: str, download: bool) -> Any:
    """``cls(**keywords)``, torchvision's errors turned into the project's; a failed
    download leaves no new empty directory under its root."""
    root = keywords.get("root")
    try:
        if root is None:
            return cls(**keywords)
        with no_new_empty_directories(Path(root)):
            return cls(**keywords)
    except (URLError, OSError) as error:
        raise DataNotFoundError(
            f"{where}: downloading its files failed ({error}). Offline, put them under the "
            "root (dataset.root=..., default the data directory) as torchvision lays them out"
        ) from error
    except RuntimeError as error:
        text = str(error)
        if "not found" in text.lower() or "download" in text.lower():
            how = (
                "download=true lets torchvision download it"
                if not download
                else "its download failed; offline, put its files under the root"
            )
            raise DataNotFoundError(f"{where}: {text.strip()} ({how})") from error
        raise DataError(f"{where}: {text}") from error
    except (TypeError, ValueError) as error:
        shown = {k: v for k, v in keywords.items() if k not in ("root", "download")}
        raise ArgumentError(
            f"{where} refused its arguments {shown}: {error}. Its own arguments go in "
            "options (dataset.options={...}); train_split / test_split choose the two sets"
        ) from error


def _image_shape(x: torch.Tensor, where: str) -> tuple[int, ...]:
    """(H, W) for grey items ([H, W] or [1, H, W]), (C, H, W) for colour ones."""
    shape = tuple(x.shape[1:])
    if len(shape) == 3 and shape[0] == 1:
        return shape[1:]
    if len(shape) in (2, 3):
        return shape
    raise DataError(
        f"{where}: its items are not images: the first element of each has shape "
        f"{list(shape)}, expected [H, W] or [C, H, W]"
    )


def _check_plain(options: Mapping[str, Any]) -> None:
    """Refuse options that a run's config.yaml cannot record (transforms, callables)."""
    try:
        json.dumps(dict(options), allow_nan=False)
    except (TypeError, ValueError):
        raise refuse(
            "options",
            {k: type(v).__name__ for k, v in options.items()},
            "plain values (strings, numbers, booleans, lists, mappings), which a run "
            "records; pass a transform= through the torch Dataset itself: "
            "pyro_vae.train(vae, torchvision.datasets.X(root, transform=...), ...)",
        ) from None
