"""A user's ``torch.utils.data.Dataset`` or ``DataLoader`` as in-memory tensors.

:func:`pyro_vae.train` takes a map-style (or iterable) ``torch.utils.data.Dataset`` or a
``DataLoader`` for ``data`` and ``test``, so torchvision's datasets train as they are::

    mnist = torchvision.datasets.MNIST("data", download=True)          # (PIL image, label)
    pyro_vae.train(vae, mnist, "runs/tv", test=torchvision.datasets.MNIST("data", train=False))

Items. An item is a tensor, a numpy array or a PIL image, or a tuple/list whose first
element is one (torchvision's ``(image, target)``; an integer target is kept as the point's
label, which only colours the figures). A PIL image becomes ``numpy.asarray(image)``,
channels first for colour images (``[C, H, W]``, as torchvision's ``ToTensor``). ``uint8``
values are scaled to [0, 1] (divided by 255, as ``ToTensor`` does), booleans become 0/1,
other numbers are kept as they are (float32). All items must have one shape: ``[D]``,
``[H, W]``, ``[1, H, W]`` (grey images) or ``[C, H, W]``; each becomes a row of the flat
``[N, D]`` data (channel-first, row-major: :mod:`pyro_vae.conv`'s convention) and the
image shape is kept for the figures. Anything else (a string, a dict, ragged shapes) is
refused with a :class:`~pyro_vae.errors.DataError` naming the item (``data[17]``).

A ``DataLoader`` is iterated once and its batches concatenated (the first element of each
batch, in the order the loader yields them: its sampler, ``collate_fn`` and workers are
used; with ``batch_size=None`` its items are taken one by one). Its batching and shuffling
are *not* used for training: pyro-vae draws its own minibatches from the data in memory, in
an order given by ``seed`` and the training position, which is what makes a run resume bit
for bit from a checkpoint (a loader's iterator state cannot be saved with the model's).
Random transforms of a dataset are therefore applied once, not at every epoch.

The conversion leaves torch's global random state as it found it (a ``DataLoader``
draws a seed from it at every iteration): training on a Dataset gives the same numbers as
training on the equivalent tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.data import Dataset as TorchDataset

from ..errors import DataError
from .datasets import Dataset
from .prepared import tensor_dataset

__all__ = [
    "TorchData",
    "is_torch_data",
    "tensor_from_torch_data",
    "tensors_and_labels",
    "torch_dataset",
]

#: What :func:`tensor_from_torch_data` takes.
TorchData = TorchDataset | DataLoader

_EXPECTED = "a tensor, a numpy array or a PIL image, or a tuple/list whose first element is one"


def is_torch_data(obj: Any) -> bool:
    """Whether ``obj`` is a ``torch.utils.data.Dataset`` or ``DataLoader``."""
    return isinstance(obj, TorchDataset | DataLoader)


def tensor_from_torch_data(obj: TorchData, name: str = "data") -> torch.Tensor:
    """The items of a ``torch.utils.data.Dataset`` (or the batches of a ``DataLoader``)
    stacked into one float32 tensor ``[N, *item_shape]`` (see the module's docstring for
    the items taken). ``name`` names the value in errors (``data[3]=...``).

    Raises :class:`~pyro_vae.errors.DataError` for an item that is not an array, for
    items of different shapes, and for an empty dataset.
    """
    return _collect(obj, name)[0]


def tensors_and_labels(
    obj: TorchData, name: str = "data"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`tensor_from_torch_data`'s tensor and the items' integer targets as int64
    labels (None unless every item has one)."""
    return _collect(obj, name)


def torch_dataset(
    train: TorchData | torch.Tensor,
    test: TorchData | torch.Tensor | None = None,
    name: str = "tensor",
) -> Dataset:
    """A :class:`~pyro_vae.data.Dataset` of tensors and/or torch data given in Python.

    Tensors are taken as :func:`~pyro_vae.data.tensor_dataset` takes them (that function is
    called, with the converted data, in every case); a torch ``Dataset``/``DataLoader`` is
    converted by :func:`tensor_from_torch_data`, its image shape kept (``[1, H, W]`` items
    give ``(H, W)``, ``[C, H, W]`` give ``(C, H, W)``) and its integer targets kept as
    labels. Without ``test``, the training data are also the evaluation data.
    """
    if not is_torch_data(train) and not is_torch_data(test):
        return tensor_dataset(train, test, name=name)
    x, labels, source = _as_tensor(train, "data")
    x_test, test_labels, test_source = (
        (None, labels, source) if test is None else _as_tensor(test, "test")
    )
    image_shape = _image_shape(x)
    flat_test = None if x_test is None else x_test.reshape(x_test.shape[0], -1)
    if flat_test is not None and flat_test.shape[1] != x[0].numel():
        raise DataError(
            f"test has {flat_test.shape[1]} values per point ({source} has "
            f"{x[0].numel()}): the training and test data must have the same size"
        )
    dataset = tensor_dataset(
        x.reshape(x.shape[0], -1), flat_test, image_shape=image_shape, name=name
    )
    return dataclasses.replace(
        dataset,
        source=source if test_source == source else f"{source}; test: {test_source}",
        train_labels=labels,
        test_labels=test_labels,
    )


def _as_tensor(
    obj: TorchData | torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(data, labels or None, a description for messages)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(torch.float32), None, "tensors given in Python"
    if not is_torch_data(obj):
        raise DataError(
            f"{name}={_short(obj)} is not allowed: expected a tensor, a torch "
            "Dataset or a DataLoader"
        )
    x, labels = _collect(obj, name)
    return x, labels, f"a {type(obj).__name__} given in Python"


def _image_shape(x: torch.Tensor) -> tuple[int, ...] | None:
    shape = tuple(x.shape[1:])
    if len(shape) == 3 and shape[0] == 1:
        return shape[1:]
    if len(shape) in (2, 3):
        return shape
    return None  # tensor_dataset guesses a square from D


def _collect(obj: TorchData, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not is_torch_data(obj):
        raise DataError(
            f"{name}={_short(obj)} is not allowed: expected a torch.utils.data.Dataset "
            "or DataLoader"
        )
    if isinstance(obj, TensorDataset) and obj.tensors:  # its items are rows of its tensors
        x = _as_float(obj.tensors[0], f"{name}.tensors[0]")
        labels = obj.tensors[1] if len(obj.tensors) > 1 else None
        return x, _as_labels(labels, len(x))
    # A DataLoader draws a seed from torch's global generator at every iteration, and a
    # dataset's random transforms draw from it too: leave the caller's stream untouched.
    with torch.random.fork_rng(devices=[]):
        if isinstance(obj, DataLoader) and obj.batch_size is not None:
            return _stack_batches(obj, name)
        return _stack_items(_items(obj, name), name)


def _items(obj: TorchData, name: str) -> Iterable[Any]:
    if isinstance(obj, DataLoader | IterableDataset):
        yield from obj
        return
    try:
        n = len(obj)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(
            f"{name}: a map-style torch Dataset ({type(obj).__name__}) needs __len__ "
            "(or use an IterableDataset or a DataLoader)"
        ) from None
    for i in range(n):
        yield obj[i]


def _stack_items(items: Iterable[Any], name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    rows: list[torch.Tensor] = []
    labels: list[Any] = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        rows.append(_item_array(item, where))
        if rows[-1].shape != rows[0].shape:
            raise DataError(
                f"{where} has shape {list(rows[-1].shape)} but {name}[0] has "
                f"{list(rows[0].shape)}: all items must have the same shape"
            )
        labels.append(item[1] if isinstance(item, tuple | list) and len(item) > 1 else None)
    if not rows:
        raise DataError(f"{name}: the torch dataset holds no items")
    return torch.stack(rows), _labels_of(labels)


def _stack_batches(loader: DataLoader, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    parts: list[torch.Tensor] = []
    labels: list[Any] = []
    for b, batch in enumerate(loader):
        where = f"{name} batch {b}"
        x = _item_array(batch, where)
        if x.ndim == 0:
            raise DataError(f"{where} is a single number: expected a batch [B, ...]")
        if parts and x.shape[1:] != parts[0].shape[1:]:
            raise DataError(
                f"{where} has items of shape {list(x.shape[1:])} but batch 0 has "
                f"{list(parts[0].shape[1:])}: all items must have the same shape"
            )
        parts.append(x)
        target = batch[1] if isinstance(batch, tuple | list) and len(batch) > 1 else None
        labels.append(_as_labels(target, len(x)))
    if not parts:
        raise DataError(f"{name}: the DataLoader yields no batches")
    x = torch.cat(parts)
    if any(t is None for t in labels):
        return x, None
    return x, torch.cat(labels)


def _item_array(item: Any, where: str) -> torch.Tensor:
    """One item (or batch) as float32; the first element of a tuple/list."""
    value = item[0] if isinstance(item, tuple | list) and len(item) > 0 else item
    if isinstance(value, torch.Tensor):
        return _as_float(value.detach().cpu(), where)
    if isinstance(value, np.ndarray):
        return _as_float(_from_numpy(value, where), where)
    if _is_pil_image(value):
        array = np.asarray(value)
        if array.ndim == 3:  # H, W, C -> C, H, W, as torchvision's ToTensor
            array = array.transpose(2, 0, 1)
        return _as_float(_from_numpy(array, where), where)
    raise DataError(f"{where}={_short(value)} is not allowed: expected {_EXPECTED}")


def _from_numpy(array: np.ndarray, where: str) -> torch.Tensor:
    try:
        return torch.from_numpy(np.array(array, order="C"))  # a copy: PIL's are read-only
    except TypeError:
        raise DataError(
            f"{where}={_short(array)} is not allowed: expected numbers, not an array of "
            f"dtype {array.dtype}"
        ) from None


def _as_float(t: torch.Tensor, where: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.to(torch.float32) / 255
    if t.dtype.is_complex:
        raise DataError(f"{where}={_short(t)} is not allowed: expected real numbers")
    return t.to(torch.float32)  # booleans become 0/1


def _is_pil_image(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "getbands")


def _labels_of(labels: list[Any]) -> torch.Tensor | None:
    """Integer targets as int64 labels; None unless every item has one."""
    out = []
    for label in labels:
        if isinstance(label, torch.Tensor) and label.ndim == 0:
            label = label.item()
        if isinstance(label, np.integer):
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool):
            return None
        out.append(label)
    return torch.tensor(out, dtype=torch.int64)


def _as_labels(target: Any, n: int) -> torch.Tensor | None:
    if isinstance(target, torch.Tensor) and target.shape == (n,) and not target.is_floating_point():
        return target.to(torch.int64).cpu()
    return None


def _short(value: Any, limit: int = 80) -> str:
    """A value for a message: its repr, or its type and shape where that would be long."""
    text = repr(value)
    if len(text) <= limit:
        return text
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} of shape {list(shape)}>"
    return text[: limit - 3] + "..."
