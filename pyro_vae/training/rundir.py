"""One run directory per training run, and everything that reads it back.

Layout::

    <run_dir>/config.yaml          the resolved configuration
    <run_dir>/metrics.jsonl        one JSON object per evaluation (epoch ends)
    <run_dir>/summary.json         status and final figures (evaluate adds to it)
    <run_dir>/checkpoints/last.pt  full training state (model, optimiser, RNG, position)
    <run_dir>/checkpoints/last.prev.pt    the one before it, kept in case last.pt is damaged
    <run_dir>/checkpoints/epoch_NNNN.pt   model snapshots for later analysis
    <run_dir>/figures/*.png

Every file is written atomically (:func:`~pyro_vae.atomic.atomic_write`), so a crash or a
kill leaves either the old or the new version, never half of one. Checkpoints also carry a
SHA-256 of their contents: ``torch.load`` notices a truncated file but not a changed byte
inside a tensor, and a resumed run must not start from silently damaged numbers. A write
that fails (a full disk, no permission) is a :class:`~pyro_vae.errors.RunDirError` naming
the file.

``config.yaml`` is plain YAML, read back as a dict; nothing here needs the configuration
layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from filelock import FileLock, Timeout

from ..atomic import atomic_write, remove_partial_files
from ..errors import CheckpointError, RunDirError, RunMismatchError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
PREVIOUS_CHECKPOINT = "last.prev.pt"
FIGURE_DIR = "figures"
LOCK_FILE = ".lock"
_DIGEST_KEY = "sha256"
#: What a run directory holds before its run has written anything: the lock of a run that
#: was refused or killed at once.
_EMPTY_RUN_ENTRIES = frozenset({LOCK_FILE})


def snapshot_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def snapshot_epoch(name: str | os.PathLike[str]) -> int | None:
    """The epoch of a snapshot's file name (``epoch_0004.pt`` -> 4); None for any other."""
    path = Path(name)
    if not (path.name.startswith("epoch_") and path.suffix == ".pt"):
        return None
    try:
        return int(path.stem.split("_")[1])
    except (IndexError, ValueError):
        return None


def _is_partial_file(name: str) -> bool:
    """A temporary file of an interrupted atomic write (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def load_model_state(module: torch.nn.Module, state: dict[str, Any], source: str) -> None:
    """``module.load_state_dict(state)``, or a :class:`~pyro_vae.errors.RunMismatchError`
    naming ``source`` (the checkpoint) and what differs, where ``state`` is the model of
    another architecture (parameters missing, unexpected or of other shapes)."""
    check_model_state(module, state, source)
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise RunMismatchError(
            f"{source} holds a model that does not load into the one given: "
            f"{str(e).strip().splitlines()[0]}"
        ) from None


def check_model_state(module: torch.nn.Module, state: Any, source: str) -> None:
    """The :class:`~pyro_vae.errors.RunMismatchError` of :func:`load_model_state`, without
    loading anything: the model is left as it is."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: its model is a {type(state).__name__}, not a state dict")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} is {list(state[k].shape)} there, {list(own[k].shape)} here"
        for k in own
        if k in state
        and isinstance(state[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if shapes:
        problems.append(
            "; ".join(shapes[:3]) + (f" (and {len(shapes) - 3} more)" if shapes[3:] else "")
        )
    if missing:
        problems.append(f"this model's {missing[:3]} are not in it")
    if unexpected:
        problems.append(f"it has {unexpected[:3]}, which this model does not")
    if not problems:
        return
    raise RunMismatchError(
        f"{source} holds a model of another architecture than the one given: "
        f"{'; '.join(problems)}. Build the model the run was trained with (its config.yaml "
        "records it), or let load_run rebuild it"
    )


def _feed(h: Any, obj: Any) -> None:
    """Hash a checkpoint's nested dicts, lists, tensors, arrays and scalars, in order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(obj)).cast("B"))
    elif isinstance(obj, dict):
        h.update(b"{")
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[")
        for value in obj:
            _feed(h, value)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of everything in a checkpoint except its own digest."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != _DIGEST_KEY})
    return h.hexdigest()


class RunDir:
    """Read and write the files of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # configuration
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def write_config(self, config: dict[str, Any]) -> None:
        """Record the run's settings (plain values) as ``config.yaml``."""
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)
        self._write(self.config_path, text)

    def config(self) -> dict[str, Any]:
        """The settings the run recorded, as plain values."""
        if not self.config_path.is_file():
            raise RunDirError(
                f"{self.path} is not a pyro-vae run directory: {CONFIG_FILE} is missing"
            )
        try:
            config = yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError as e:
            raise RunDirError(f"{self.config_path} is not valid YAML ({e})") from None
        if not isinstance(config, dict):
            raise RunDirError(f"{self.config_path} holds a {type(config).__name__}, not a mapping")
        return config

    # metrics
    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    # A line cut short by a kill mid-write: every earlier line is intact.
                    break
        return rows

    def write_metrics(self, rows: Iterable[dict[str, Any]]) -> None:
        self._write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def append_metrics(self, row: dict[str, Any]) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RunDirError(f"cannot write {self.metrics_path}: {e.strerror or e}") from e

    # summary
    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    def summary(self) -> dict[str, Any]:
        if not self.summary_path.is_file():
            return {}
        return json.loads(self.summary_path.read_text())

    def update_summary(self, **fields: Any) -> dict[str, Any]:
        summary = {**self.summary(), **fields}
        self._write(self.summary_path, json.dumps(summary, indent=2) + "\n")
        return summary

    def is_finished(self) -> bool:
        return self.summary().get("status") == "finished"

    # checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def save_checkpoint(self, state: dict[str, Any], name: str = LAST_CHECKPOINT) -> Path:
        """Write ``state`` with its digest; the replaced ``last.pt`` becomes ``last.prev.pt``."""
        buf = io.BytesIO()
        torch.save({**state, _DIGEST_KEY: state_digest(state)}, buf)
        path = self.checkpoint_dir / name
        previous = self.checkpoint_dir / PREVIOUS_CHECKPOINT if name == LAST_CHECKPOINT else None
        return self._write(path, buf.getvalue(), keep_previous=previous)

    def has_checkpoint(self) -> bool:
        """Whether training can resume: ``last.pt`` or the previous one exists."""
        names = (LAST_CHECKPOINT, PREVIOUS_CHECKPOINT)
        return any((self.checkpoint_dir / n).is_file() for n in names)

    def load_checkpoint(
        self, name: str = LAST_CHECKPOINT, map_location: Any = "cpu"
    ) -> dict[str, Any]:
        """The checkpoint ``name``, checked against its digest (CheckpointError names the file)."""
        path = self.checkpoint_dir / name
        try:
            return self._read_checkpoint(path, map_location)
        except CheckpointError as e:
            previous = self.checkpoint_dir / PREVIOUS_CHECKPOINT
            if name == LAST_CHECKPOINT and previous.is_file():
                raise CheckpointError(
                    f"{e}. The previous checkpoint is {previous}: pass "
                    f"checkpoint={PREVIOUS_CHECKPOINT}, or `pyro-vae train run_dir={self.path} "
                    "resume=true` continues training from it"
                ) from e
            raise

    def _read_checkpoint(self, path: Path, map_location: Any = "cpu") -> dict[str, Any]:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupted ({type(e).__name__}: {e})"
            ) from e
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
        # Checkpoints written before digests existed are taken as they are.
        if _DIGEST_KEY in state and state.pop(_DIGEST_KEY) != state_digest(state):
            raise CheckpointError(f"checkpoint {path} is corrupted: its contents fail the SHA-256")
        return state

    def resume_checkpoint(self) -> tuple[dict[str, Any], Path]:
        """The newest complete training checkpoint: ``last.pt``, else ``last.prev.pt``.

        A damaged ``last.pt`` is renamed ``last.pt.corrupt`` (kept for inspection, and so
        the next checkpoint does not push the good previous one out) and a warning says so.
        """
        last = self.checkpoint_dir / LAST_CHECKPOINT
        previous = self.checkpoint_dir / PREVIOUS_CHECKPOINT
        try:
            return self._read_checkpoint(last), last
        except CheckpointError as e:
            if not previous.is_file():
                raise
            problem = e
        state = self._read_checkpoint(previous)
        if last.exists():
            os.replace(last, last.with_name(last.name + ".corrupt"))
            problem = f"{problem}; it is kept as {last.name}.corrupt"
        logger.warning("%s; resuming from %s instead", problem, previous)
        return state, previous

    def remove_partial_files(self) -> None:
        """Delete temporary files a killed writer left behind (never a complete file)."""
        for directory in (self.path, self.checkpoint_dir):
            remove_partial_files(directory)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for one process: a second training in it is refused.

        ``filelock``'s lock on ``<run_dir>/.lock`` (an ``flock`` on POSIX): the kernel
        releases it when the process dies, even by SIGKILL, so a killed run never leaves a
        stale lock. The empty ``.lock`` file stays: deleting it would let a third process
        lock a new file while a second still holds the old one.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create {self.path}: {e.strerror or e}") from e
        lock = FileLock(self.path / LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirError(
                f"{self.path} is in use by another pyro-vae process (a training or an "
                "evaluation of it); wait for it to end or choose another run_dir"
            ) from None
        except OSError as e:  # a read-only directory
            raise RunDirError(
                f"cannot lock {self.path / LOCK_FILE}: {e.strerror or e} (the run directory "
                "must be writable)"
            ) from e
        try:
            yield
        finally:
            lock.release()

    # what the directory is
    def is_run(self) -> bool:
        """Whether this is a pyro-vae run directory: it has a training checkpoint, or the
        summary.json or config.yaml a run writes when it starts."""
        if self.has_checkpoint():
            return True
        try:
            summary = json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            summary = None
        if isinstance(summary, dict) and ("pyro_vae_version" in summary or "status" in summary):
            return True
        try:
            config = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return False
        return isinstance(config, dict) and "run_dir" in config

    def foreign_entries(self) -> list[str]:
        """The names in a directory that is not a run (sorted): what training into it
        would mix with its own files. Empty for a run, a missing or an empty directory
        (the lock and partial files of a refused or killed start do not count)."""
        if not self.path.is_dir() or self.is_run():
            return []
        try:
            names = [p.name for p in self.path.iterdir()]
        except OSError:
            return []
        return sorted(n for n in names if n not in _EMPTY_RUN_ENTRIES and not _is_partial_file(n))

    def check_location(self) -> None:
        """RunDirError unless the directory exists and is writable, or can be created: not
        a file, not under a file, its nearest existing parent writable."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunDirError(f"run_dir {path} is a file, not a directory")
        existing = path
        while not existing.exists():
            if existing.parent == existing:
                break
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            raise RunDirError(f"run_dir {path} cannot be created: {existing} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            what = "is not writable" if existing == path else f"cannot be created in {existing}"
            raise RunDirError(f"run_dir {path} {what} (permission denied)")

    def check_usable(self) -> None:
        """:meth:`check_location`, and RunDirError for a directory that is not a run but
        holds files (they are named): a run never writes over files it did not make."""
        self.check_location()
        foreign = self.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if foreign[5:] else ""
            )
            raise RunDirError(
                f"{self.path} is not a pyro-vae run directory and holds files of its own "
                f"({shown}); nothing was written: choose a new or empty run_dir"
            )

    def missing_dirs(self) -> list[Path]:
        """This directory and its parents that do not exist yet, deepest first: what
        creating it creates (and :meth:`remove_unused` takes away again)."""
        missing, path = [], self.path
        while not path.exists() and path.parent != path:
            missing.append(path)
            path = path.parent
        return missing

    def remove_unused(self, created: Iterable[Path] = ()) -> None:
        """Undo what a refused or failed start left in a run directory that nothing was
        written into: the lock (unless another process holds it), partial files and empty
        subdirectories; then those of ``created`` (:meth:`missing_dirs` before the call:
        this directory and parents that the call made) that are now empty. A directory
        that holds anything else is left as it is, and so is one the caller did not create."""
        path = self.path
        try:
            entries = list(path.iterdir()) if path.is_dir() else []
            for entry in entries:
                if entry.is_dir() and not entry.is_symlink():
                    if any(entry.iterdir()):
                        return  # written into: keep it
                elif entry.name not in _EMPTY_RUN_ENTRIES and not _is_partial_file(entry.name):
                    return
        except OSError:
            return
        lock = FileLock(path / LOCK_FILE, timeout=0)
        if (path / LOCK_FILE).exists():
            try:
                lock.acquire()
            except (Timeout, OSError):
                return  # another process holds the directory
        try:
            for entry in entries:
                with contextlib.suppress(OSError):
                    entry.rmdir() if entry.is_dir() else entry.unlink()
        finally:
            if lock.is_locked:
                lock.release()
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty

    # starting and restarting
    def check_start(self, resume: bool, overwrite: bool) -> bool:
        """Whether training may go ahead in this directory; False for a finished run that is
        left as it is (neither ``resume`` nor ``overwrite``). Raises RunDirError for an
        unfinished run without ``resume``: its checkpoint would otherwise be overwritten."""
        if self.is_finished() and not (resume or overwrite):
            return False
        if self.has_checkpoint() and not (resume or overwrite):
            raise RunDirError(
                f"{self.path} holds an unfinished run; pass resume=true to continue it, "
                "or choose another run_dir"
            )
        return True

    def clear(self) -> None:
        """Remove a run's results (``overwrite``): metrics, summary, checkpoints, figures."""
        for name in (self.metrics_path, self.summary_path):
            name.unlink(missing_ok=True)
        for d in (self.checkpoint_dir, self.figure_dir):
            shutil.rmtree(d, ignore_errors=True)

    def _write(self, path: Path, data: bytes | str, keep_previous: Path | None = None) -> Path:
        try:
            return atomic_write(path, data, keep_previous=keep_previous)
        except OSError as e:
            raise RunDirError(f"cannot write {path}: {e.strerror or e}") from e

    def snapshots(self) -> list[tuple[int, Path]]:
        """Model snapshots (epoch, path) in epoch order."""
        epochs = ((snapshot_epoch(p), p) for p in self.checkpoint_dir.glob("epoch_*.pt"))
        return sorted((epoch, p) for epoch, p in epochs if epoch is not None)

    # figures
    @property
    def figure_dir(self) -> Path:
        return self.path / FIGURE_DIR
