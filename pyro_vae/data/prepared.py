"""A dataset as a model trains on it: checked against the likelihood, binarised, on a device."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import refuse
from .batches import binarize
from .datasets import Dataset, check_data_for_likelihood

TRAIN_BINARIZE = ("dynamic", "fixed", "none")
TEST_BINARIZE = ("fixed", "none")


@dataclass
class RunData:
    """The dataset of a run, as the model sees it."""

    dataset: Dataset
    train: torch.Tensor  # on the device; fixed-binarised when binarize="fixed"
    train_binarize: str  # "dynamic" or "none": what Minibatches does per batch
    test: torch.Tensor  # on the device; binarised once when test_binarize="fixed"

    @property
    def x_dim(self) -> int:
        return self.train.shape[1]

    @property
    def num_train(self) -> int:
        return self.train.shape[0]

    def meta(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the model without reading the data again."""
        shape = self.dataset.image_shape
        return {
            "x_dim": self.x_dim,
            "num_data": self.num_train,
            "image_shape": list(shape) if shape else None,
            "dataset": self.dataset.name,
        }


def prepare_data(
    dataset: Dataset,
    *,
    binarize_train: str = "none",
    binarize_test: str = "none",
    binarize_seed: int = 0,
    likelihood: Any = None,
    device: torch.device | str = "cpu",
) -> RunData:
    """``dataset`` checked (finite ``[N, D]`` values, see
    :func:`~pyro_vae.data.check_data_for_likelihood`; and in the support of ``likelihood``,
    a :class:`~pyro_vae.likelihoods.Likelihood` or anything with its ``check(x, where)``),
    moved to ``device`` and binarised.

    ``binarize_train``: ``dynamic`` (a fresh Bernoulli draw of every minibatch, done by
    :class:`~pyro_vae.data.Minibatches`), ``fixed`` (one draw, seeded by
    ``binarize_seed``) or ``none``. ``binarize_test``: ``fixed`` (one draw, seeded by
    ``binarize_seed + 1``) or ``none``.
    """
    if binarize_train not in TRAIN_BINARIZE:
        raise refuse("binarize", binarize_train, f"one of {list(TRAIN_BINARIZE)}")
    if binarize_test not in TEST_BINARIZE:
        raise refuse("test_binarize", binarize_test, f"one of {list(TEST_BINARIZE)}")
    for split, x in (("train", dataset.train), ("test", dataset.test)):
        where = f"dataset={dataset.name} ({split}: {dataset.source})"
        check_data_for_likelihood(x, None, where=where)
        check = getattr(likelihood, "check", None)
        if callable(check):
            check(x, where)
    train, test = dataset.train.to(device), dataset.test.to(device)
    train_mode = binarize_train
    if train_mode == "fixed":
        train, train_mode = binarize(train, binarize_seed), "none"
    if binarize_test == "fixed":
        # A different stream from the training set's fixed draw.
        test = binarize(test, binarize_seed + 1)
    return RunData(dataset=dataset, train=train, train_binarize=train_mode, test=test)


def tensor_dataset(
    train: torch.Tensor,
    test: torch.Tensor | None = None,
    image_shape: tuple[int, int] | None = None,
    name: str = "tensor",
) -> Dataset:
    """A :class:`Dataset` of tensors given in Python ([N, D], or [N, H, W] images).

    Without ``test``, the training data are also the evaluation data. ``image_shape``
    defaults to (H, W) of 3-D input, else a square when D is a perfect square.
    """
    if train.ndim == 3 and image_shape is None:
        image_shape = (train.shape[1], train.shape[2])
    train = train.reshape(train.shape[0], -1).to(torch.float32)
    test = train if test is None else test.reshape(test.shape[0], -1).to(torch.float32)
    d = train.shape[1]
    if image_shape is None:
        side = math.isqrt(d)
        image_shape = (side, side) if side * side == d else None
    binary = bool(((train == 0) | (train == 1)).all() and ((test == 0) | (test == 1)).all())
    return Dataset(
        name=name,
        train=train,
        test=test,
        image_shape=image_shape,
        binary=binary,
        source="tensors given in Python",
    )
