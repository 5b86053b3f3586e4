"""Training: one loop, its side effects as callbacks, and the run directory.

- :mod:`.loop`: :class:`Trainer` (the loop, top to bottom), :class:`TrainingPosition` (where
  training stands, saved as a unit) and :class:`Callback` (the points side effects hook into).
- :mod:`.hooks`: the callbacks: step-size search, run record, signals, progress bar,
  snapshots, metrics, checkpoints, the non-finite policy.
- :mod:`.loggers`: experiment tracking (:class:`TensorBoardLogger`, :class:`MLflowLogger`),
  callbacks that never change or stop a run.
- :mod:`.rundir`: :class:`RunDir`, the files of one run (atomic writes, a lock, checksummed
  checkpoints).

- :mod:`.session`: :func:`train`, which assembles them for a run from plain arguments.
"""

from __future__ import annotations

from .hooks import (
    Checkpoints,
    MetricsLog,
    NonFinitePolicy,
    ProgressBar,
    RunRecord,
    Snapshots,
    StepSizeSearch,
    StopOnSignals,
    snapshot_epochs,
)
from .loggers import MLflowLogger, TensorBoardLogger, TrackingLogger, build_loggers
from .loop import Callback, Trainer, TrainingPosition
from .rundir import LAST_CHECKPOINT, PREVIOUS_CHECKPOINT, RunDir, snapshot_name
from .session import SNAPSHOT_SCHEDULES, train

__all__ = [
    "LAST_CHECKPOINT",
    "PREVIOUS_CHECKPOINT",
    "SNAPSHOT_SCHEDULES",
    "Callback",
    "Checkpoints",
    "MLflowLogger",
    "MetricsLog",
    "NonFinitePolicy",
    "ProgressBar",
    "RunDir",
    "RunRecord",
    "Snapshots",
    "StepSizeSearch",
    "StopOnSignals",
    "TensorBoardLogger",
    "TrackingLogger",
    "Trainer",
    "TrainingPosition",
    "build_loggers",
    "snapshot_epochs",
    "snapshot_name",
    "train",
]
