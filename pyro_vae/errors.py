"""The package's exceptions. Imports nothing of pyro-vae, so every layer can raise them.

Every error a user can fix from its message alone derives from :class:`PyroVAEError`; the
command line prints those as one ``error: ...`` line, and shows the traceback of anything
else (a bug).

A component refuses a bad argument with :class:`ArgumentError`, whose message starts with
the argument's name (``scale=-1 is not allowed: expected ...``). The configuration layer
re-raises it under the configuration key that set the argument
(:meth:`ArgumentError.within`: ``prior.scale=-1 is not allowed: ...``), so the same check
serves Python callers and the command line, each in their own terms.
"""

from __future__ import annotations

import signal
from typing import Any


class PyroVAEError(Exception):
    """Base class of the errors a user can fix from the message alone."""


class ArgumentError(PyroVAEError, ValueError):
    """An argument (or configuration value) that is refused.

    ``key`` is the argument's name and ``detail`` the rest of the message: the message is
    ``{key}{detail}``, or ``detail`` with the literal ``{key}`` replaced by the name where
    the name belongs elsewhere (``missing value for {key}: ...``), or ``detail`` alone
    without a key.
    """

    def __init__(self, detail: str, key: str | None = None):
        self.key, self.detail = key, detail
        super().__init__(_render(detail, key))

    @classmethod
    def refuse(cls, key: str, value: Any, allowed: str) -> ArgumentError:
        """``key=value is not allowed: expected <allowed>``."""
        return cls(f"={value!r} is not allowed: expected {allowed}", key)

    def within(self, prefix: str) -> ConfigError:
        """The same error under the configuration key ``prefix.key`` (``prior.scale``)."""
        if self.key is None:
            return ConfigError(self.detail)
        return ConfigError(self.detail, f"{prefix}.{self.key}")


def _render(detail: str, key: str | None) -> str:
    if key is None:
        return detail
    return detail.replace("{key}", key) if "{key}" in detail else key + detail


def refuse(key: str, value: Any, allowed: str) -> ArgumentError:
    """Shorthand for :meth:`ArgumentError.refuse`, to ``raise refuse(...)``."""
    return ArgumentError.refuse(key, value, allowed)


class ConfigError(ArgumentError):
    """A configuration value that is refused, naming its key, the value and what is allowed."""


class EstimatorError(ArgumentError):
    """An estimator that cannot be used as asked; the message names the alternative."""


class DataError(PyroVAEError, ValueError):
    """Data that cannot be used: unreadable, of the wrong shape, or outside a likelihood's
    support. The message names the file or dataset."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset's files are absent and could not be downloaded."""


class ChecksumError(DataError):
    """A present data file does not match its known checksum (corrupt, truncated or different)."""


class MissingPackageError(PyroVAEError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra
    that installs it (``pip install -e ".[mlflow]"``)."""


class RunDirError(PyroVAEError, RuntimeError):
    """A run directory that cannot be used as asked (missing, unfinished, locked, unwritable)."""


class CheckpointError(RunDirError):
    """A checkpoint file that is missing, truncated or does not match its checksum."""


class RunMismatchError(RunDirError):
    """A run directory or checkpoint that holds another run than the one asked for: a
    finished run of another configuration (``overwrite=True`` retrains it), a resume that
    would change the run, or a checkpoint of another architecture than the model given.
    The message names what differs."""


class NonFiniteError(PyroVAEError, ArithmeticError):
    """A loss or gradient is NaN or Inf; raised before the parameters are updated."""


class TrainingError(PyroVAEError, RuntimeError):
    """Training cannot go on (a non-finite loss, for instance)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; training stopped between two steps, its state consistent."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
