"""Data for the AEVB paper's experiments: datasets, their files, and minibatches over them.

- :mod:`.datasets`: :func:`load_dataset` and the :class:`Dataset` it returns (MNIST, Frey Face,
  binarized MNIST, Fashion-MNIST, KMNIST, Omniglot, CIFAR-10, a linear Gaussian, the user's own
  array), the idx and array parsers, :func:`check_data_for_likelihood`.
- :mod:`.images`: the parsers of Omniglot's ``chardata.mat`` and CIFAR-10's batches.
- :mod:`.synthetic`: :class:`LinearGaussian`, the model of the ``linear_gaussian`` data, whose
  exact log-likelihood it computes.
- :mod:`.download`: the files' known checksums and mirrors; verifying present files and
  downloading missing ones.
- :mod:`.batches`: :class:`Minibatches` and the seeded Bernoulli draws that binarise grey levels.
- :mod:`.prepared`: :class:`RunData`, a dataset as a model trains on it (checked against the
  likelihood, binarised, on a device), and :func:`tensor_dataset` for tensors given in Python.
- :mod:`.torch_data`: a user's ``torch.utils.data.Dataset`` or ``DataLoader`` (torchvision's
  datasets) as tensors: :func:`tensor_from_torch_data`, :func:`torch_dataset`.
- :mod:`.vision`: torchvision where it is installed (the ``[vision]`` extra): any of its image
  datasets by class name (``load_dataset(name, library="torchvision")``), its idx reader.

Nothing here imports the model, estimators or trainer (only :mod:`pyro_vae.errors` and
:mod:`pyro_vae.atomic`): data come first in the chain.
"""

from __future__ import annotations

from ..errors import ChecksumError, DataError, DataNotFoundError
from .batches import Minibatches, bernoulli_draw, binarize
from .datasets import (
    DATA_DIR_ENV,
    DATASET_NAMES,
    LINEAR_GAUSSIAN_DEFAULTS,
    Dataset,
    check_data_for_likelihood,
    load_dataset,
    read_idx,
    resolve_data_dir,
)
from .download import MIRROR_ENV
from .images import read_cifar_batch, read_omniglot
from .prepared import RunData, prepare_data, tensor_dataset
from .synthetic import LinearGaussian, linear_gaussian_data
from .torch_data import TorchData, is_torch_data, tensor_from_torch_data, torch_dataset

__all__ = [
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "LINEAR_GAUSSIAN_DEFAULTS",
    "MIRROR_ENV",
    "ChecksumError",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "LinearGaussian",
    "Minibatches",
    "RunData",
    "TorchData",
    "bernoulli_draw",
    "binarize",
    "check_data_for_likelihood",
    "is_torch_data",
    "linear_gaussian_data",
    "load_dataset",
    "prepare_data",
    "read_cifar_batch",
    "read_idx",
    "read_omniglot",
    "resolve_data_dir",
    "tensor_dataset",
    "tensor_from_torch_data",
    "torch_dataset",
]
