"""The package's one way to write a file: atomically, so a crash never leaves half of one.

Run directories (configuration, summary, checkpoints, figures, tables) and data files
written from downloads all go through :func:`atomic_write`. Imports nothing of pyro-vae.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(
    path: str | os.PathLike, data: bytes | str, keep_previous: Path | None = None
) -> Path:
    """Write ``data`` to ``path`` so that a kill at any moment leaves the old or the new file.

    The data go to a temporary file beside ``path`` (``.<name>.<random>.tmp``), are flushed
    and fsynced, and the temporary file is renamed over ``path``; the directory entry is
    then fsynced too, so the rename survives a power cut. Text is written as UTF-8.

    ``keep_previous``: move the file being replaced there first (after the new data are on
    disk, so the window with neither at ``path`` is two renames wide; readers fall back to it).
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp's file is private (0600); the file it becomes gets the permissions open()
        # would give a new file (0666 less the umask), so a shared run directory stays
        # readable by those the user's umask allows.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def remove_partial_files(directory: Path) -> None:
    """Delete the temporary files a killed :func:`atomic_write` left in ``directory``."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
