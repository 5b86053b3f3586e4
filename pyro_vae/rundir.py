"""One run directory per training run, and everything that reads it back.

Layout::

    <run_dir>/config.yaml          the resolved configuration
    <run_dir>/metrics.jsonl        one JSON object per evaluation (epoch ends)
    <run_dir>/summary.json         status and final figures (evaluate adds to it)
    <run_dir>/checkpoints/last.pt  full training state (model, optimiser, RNG, position)
    <run_dir>/checkpoints/epoch_NNNN.pt   model snapshots for later analysis
    <run_dir>/figures/*.png

Every file is written atomically (temporary file, fsync, rename), so a crash or a kill
leaves either the old or the new version, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
FIGURE_DIR = "figures"


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (missing, unfinished, corrupted)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def snapshot_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


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

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.config_path, yaml_text)

    def config(self) -> DictConfig:
        if not self.config_path.is_file():
            raise RunDirError(
                f"{self.path} is not a pyro-vae run directory: {CONFIG_FILE} is missing"
            )
        return OmegaConf.load(self.config_path)

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
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

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
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")
        return summary

    def is_finished(self) -> bool:
        return self.summary().get("status") == "finished"

    # checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def save_checkpoint(self, state: dict[str, Any], name: str = LAST_CHECKPOINT) -> Path:
        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.checkpoint_dir / name
        atomic_write_bytes(path, buf.getvalue())
        return path

    def load_checkpoint(
        self, name: str = LAST_CHECKPOINT, map_location: Any = "cpu"
    ) -> dict[str, Any]:
        path = self.checkpoint_dir / name
        if not path.is_file():
            raise RunDirError(f"checkpoint {path} does not exist")
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:
            raise RunDirError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e

    def snapshots(self) -> list[tuple[int, Path]]:
        """Model snapshots (epoch, path) in epoch order."""
        out = []
        for p in self.checkpoint_dir.glob("epoch_*.pt"):
            try:
                out.append((int(p.stem.split("_")[1]), p))
            except (IndexError, ValueError):
                continue
        return sorted(out)

    # figures
    @property
    def figure_dir(self) -> Path:
        return self.path / FIGURE_DIR
