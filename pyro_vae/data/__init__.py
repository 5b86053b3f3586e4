"""Data for the AEVB paper's experiments: datasets, their files, and minibatches over them.

- :mod:`.datasets`: :func:`load_dataset` and the :class:`Dataset` it returns (MNIST, Frey Face,
  binarized MNIST, the user's own array), the file parsers, :func:`check_data_for_likelihood`.
- :mod:`.download`: the files' known checksums and mirrors; verifying present files and
  downloading missing ones.
- :mod:`.batches`: :class:`Minibatches` and the seeded Bernoulli draws that binarise grey levels.
- :mod:`.prepared`: :class:`RunData`, a dataset as a model trains on it (checked against the
  likelihood, binarised, on a device), and :func:`tensor_dataset` for tensors given in Python.

Nothing here imports the model, estimators or trainer (only :mod:`pyro_vae.errors` and
:mod:`pyro_vae.atomic`): data come first in the chain.
"""

from __future__ import annotations

from ..errors import ChecksumError, DataError, DataNotFoundError
from .batches import Minibatches, bernoulli_draw, binarize
from .datasets import (
    DATA_DIR_ENV,
    DATASET_NAMES,
    Dataset,
    check_data_for_likelihood,
    load_dataset,
    read_idx,
    resolve_data_dir,
)
from .download import MIRROR_ENV
from .prepared import RunData, prepare_data, tensor_dataset

__all__ = [
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "MIRROR_ENV",
    "ChecksumError",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "Minibatches",
    "RunData",
    "bernoulli_draw",
    "binarize",
    "check_data_for_likelihood",
    "load_dataset",
    "prepare_data",
    "read_idx",
    "resolve_data_dir",
    "tensor_dataset",
]
