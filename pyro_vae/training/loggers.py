"""Experiment tracking: TensorBoard and MLflow, each a :class:`~pyro_vae.training.loop.Callback`.

::

    loggers = [TensorBoardLogger(), MLflowLogger()]
    pyro_vae.train(vae, x, "runs/mine", test=x_test, callbacks=loggers)

or ``pyro-vae train logger=tensorboard`` / ``logger=mlflow`` / ``logger=[tensorboard,mlflow]``
(:func:`build_loggers`). Both record the same things, under the same names:

- ``step/train_elbo``: the training bound per datapoint, the mean over the finite steps
  since the last point, every ``every_steps`` steps (x-axis: the training step);
- ``epoch/<key>``: every number of each metrics.jsonl row (``train_elbo``, ``test_elbo``,
  ``lr``, ``epoch``, ``samples``, ``skipped_steps``, ``seconds``, ``wall_seconds``), at
  the row's step;
- ``summary/<key>``: the final numbers of summary.json (``test_elbo``, ``best_test_elbo``,
  ...), with the run's configuration, flattened (``dataset.name``, ``optim.name``, ...), as
  TensorBoard hparams / MLflow params; and the run's figures (TensorBoard images, MLflow
  artifacts, with config.yaml, summary.json and metrics.jsonl).

metrics.jsonl is written as before: a logger only reads. A logger never changes what a run
computes (every call into its backend leaves the random state as it found it), and never
stops it: the first exception inside a logger (a tracking server that is down, a full disk,
anything) is one warning, after which that logger is off for the rest of the run. A
missing package is refused at once, before training (:class:`MissingPackageError`, naming
the ``pip install`` extra).

A resumed run goes on in the same TensorBoard directory (events after the checkpoint that
an interrupted attempt wrote are purged) and the same MLflow run (found by its
``pyro_vae.run_dir`` tag). summary.json records where: ``tensorboard_log_dir``,
``mlflow_tracking_uri``, ``mlflow_run_id``; ``pyro-vae evaluate`` logs its results there
(:func:`log_evaluation`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyro

from ..errors import MissingPackageError, TrainingInterrupted, refuse
from ..version import __version__
from .loop import Callback, Trainer
from .rundir import RunDir

logger = logging.getLogger("pyro_vae.training")

#: Numbers of summary.json logged as ``summary/<key>`` (and TensorBoard's hparams metrics).
SUMMARY_METRICS = (
    "test_elbo",
    "best_test_elbo",
    "train_elbo",
    "epochs",
    "steps",
    "samples",
    "skipped_steps",
    "train_seconds",
    "num_parameters",
    "lr",
)
#: The MLflow store when neither ``tracking_uri`` nor $MLFLOW_TRACKING_URI says: a SQLite
#: file beside the default run directories (relative to the working directory).
DEFAULT_MLFLOW_DB = Path("runs") / "mlflow.db"
MLFLOW_EXTRA = "mlflow"
TENSORBOARD_EXTRA = "tensorboard"
# MLflow refuses longer parameter values in older versions (500) and newer ones (6000).
_MAX_PARAM_LENGTH = 500
_MAX_METRICS_PER_BATCH = 1000


@contextlib.contextmanager
def same_random_state() -> Iterator[None]:
    """Leave the random state (torch, numpy, Python's ``random``) as it was: a backend that
    draws (MLflow's random run names) must not change what the run computes."""
    state = pyro.util.get_rng_state()
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)


def require(module: str, extra: str, what: str, package: str | None = None) -> Any:
    """Import ``module``, or raise MissingPackageError naming what needs it, the
    ``package`` (default: the module's top level) and the extra of pyro-vae that installs it."""
    try:
        with same_random_state():
            return importlib.import_module(module)
    except ImportError as e:
        package = package or module.split(".")[0]
        raise MissingPackageError(
            f'{what} needs the {package} package: pip install -e ".[{extra}]" '
            f"(in a pyro-vae checkout; {type(e).__name__}: {e})"
        ) from None


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"name": "adam"}}`` -> ``{"optim.name": "adam"}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def as_text(value: Any) -> str:
    """A configuration value as the command line writes it (``true``, ``null``, ``[500]``)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class TrackingLogger(Callback):
    """What the loggers share: when to log, and the guard that keeps a failing backend from
    stopping the run. Subclasses implement the ``_open``, ``_log``, ``_flush``, ``_finish``
    and ``_close`` methods, each called inside :meth:`_guard`, and ``_abandon`` (drop what
    is held, without calling the backend again) for a logger that failed."""

    name = "logger"

    def __init__(self, every_steps: int = 50):
        if not isinstance(every_steps, int) or isinstance(every_steps, bool) or every_steps < 1:
            raise refuse("every_steps", every_steps, "an integer >= 1")
        self.every_steps = every_steps
        self.failed = False  # an exception was raised inside: off for the rest of the run
        self.opened = False
        self._sum, self._count = 0.0, 0
        self._ambient: BaseException | None = None

    # the backend ------------------------------------------------------------
    def _open(self, trainer: Trainer, config: dict[str, Any]) -> None:
        raise NotImplementedError

    def _log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        pass

    def _finish(self, trainer: Trainer, summary: dict[str, Any], figures: list[Path]) -> None:
        pass

    def _close(self, status: str) -> None:
        pass

    def _abandon(self) -> None:
        pass

    # the guard --------------------------------------------------------------
    def _guard(self, what: str, call: Callable[..., Any], *args: Any) -> None:
        """``call(*args)``; its first exception is one warning and turns this logger off."""
        if self.failed:
            return
        try:
            with same_random_state():
                call(*args)
        except Exception as e:
            self.failed = True
            logger.warning(
                "logger %s failed while %s (%s: %s); training goes on without it",
                self.name,
                what,
                type(e).__name__,
                e,
            )
            self.opened = False
            with contextlib.suppress(Exception), same_random_state():
                self._abandon()

    # the callback points ----------------------------------------------------
    def on_fit_start(self, trainer: Trainer) -> None:
        self.failed, self.opened = False, False
        self._sum, self._count = 0.0, 0
        # An exception being handled where train() was called is not this run's failure.
        self._ambient = sys.exc_info()[1]
        self._guard("starting", self._start, trainer)

    def _start(self, trainer: Trainer) -> None:
        config: dict[str, Any] = {}
        if trainer.run_dir is not None and RunDir(trainer.run_dir).config_path.is_file():
            config = RunDir(trainer.run_dir).config()
        self._open(trainer, config)
        self.opened = True

    def on_step(self, trainer: Trainer, loss: float | None) -> None:
        if loss is not None:
            self._sum += loss
            self._count += 1
        step = trainer.position.step
        if self.opened and step % self.every_steps == 0 and self._count:
            elbo = -self._sum / self._count / trainer.num_data
            self._sum, self._count = 0.0, 0
            self._guard("logging a step", self._log, {"step/train_elbo": elbo}, step)

    def on_period_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if not self.opened:
            return
        values = {f"epoch/{k}": float(v) for k, v in row.items() if k != "step" and is_number(v)}
        self._guard("logging an epoch", self._log, values, int(row["step"]))
        self._guard("flushing", self._flush)

    def on_fit_end(self, trainer: Trainer) -> None:
        if not self.opened:
            return
        error = sys.exc_info()[1]
        if error is None or error is self._ambient:  # trained: on_run_end records the rest
            self._guard("flushing", self._flush)
            return
        self.opened = False
        stopped = isinstance(error, TrainingInterrupted | KeyboardInterrupt)
        status = "KILLED" if stopped else "FAILED"
        self._guard("closing", self._close, status)

    def on_run_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if not self.opened:
            return
        figures: list[Path] = []
        if trainer.run_dir is not None:
            figures = sorted(RunDir(trainer.run_dir).figure_dir.glob("*.png"))
        self._guard("recording the results", self._finish, trainer, summary, figures)
        if self.opened:
            self.opened = False
            self._guard("closing", self._close, "FINISHED")


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The final numbers of a run's summary.json, as ``summary/<key>``."""
    return {f"summary/{k}": float(summary[k]) for k in SUMMARY_METRICS if is_number(summary.get(k))}


def _record(trainer: Trainer, **fields: Any) -> None:
    if trainer.run_dir is not None:
        RunDir(trainer.run_dir).update_summary(**fields)


class TensorBoardLogger(TrackingLogger):
    """TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``) in ``log_dir``.

    Args:
        log_dir: where the event files go; relative to the run directory (default
            ``<run_dir>/tensorboard``, so ``tensorboard --logdir runs`` shows every run).
        every_steps: the training bound every this many steps.
        images: the run's figures (``<run_dir>/figures/*.png``) as images at the end.
        flush_secs: how often the writer flushes to disk (and at every epoch's end).
    """

    name = "tensorboard"

    def __init__(
        self,
        log_dir: str | os.PathLike = "tensorboard",
        every_steps: int = 50,
        images: bool = True,
        flush_secs: int = 30,
    ):
        super().__init__(every_steps)
        require("torch.utils.tensorboard", TENSORBOARD_EXTRA, "logger=tensorboard", "tensorboard")
        self.log_dir, self.images, self.flush_secs = Path(log_dir), images, flush_secs
        self.writer: Any = None
        self.path: Path | None = None

    def _open(self, trainer: Trainer, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        base = trainer.run_dir if trainer.run_dir is not None else Path.cwd()
        self.path = (base / self.log_dir).resolve()
        self.config = config
        step = trainer.position.step
        if step:
            wait_for_a_later_second(self.path)
        # A resumed run hides what an interrupted attempt logged after its checkpoint.
        self.writer = SummaryWriter(
            str(self.path), purge_step=step + 1 if step else None, flush_secs=self.flush_secs
        )
        _record(trainer, tensorboard_log_dir=str(self.path))

    def _log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def _flush(self) -> None:
        self.writer.flush()

    def _finish(self, trainer: Trainer, summary: dict[str, Any], figures: list[Path]) -> None:
        import numpy as np
        from PIL import Image

        step = trainer.position.step
        if self.images:
            for path in figures:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(f"figures/{path.stem}", pixels, step, dataformats="HWC")
        hparams = {
            k: v if isinstance(v, int | float | str) and not isinstance(v, bool) else as_text(v)
            for k, v in flatten(self.config).items()
        }
        # In the same directory (run_name "."), so the HParams tab lists the run as itself.
        self.writer.add_hparams(hparams, summary_metrics(summary), run_name=".", global_step=step)

    def _close(self, status: str) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()

    def _abandon(self) -> None:
        self._close("FAILED")


def wait_for_a_later_second(log_dir: Path) -> None:
    """TensorBoard reads the event files of a directory in the order of their names, which
    start with the second they were created in (then a counter that does not sort as a
    number): a resumed run's file must come from a later second than the earlier ones, so
    that its purge of what they logged after the checkpoint applies to them."""
    seconds = []
    for path in log_dir.glob("events.out.tfevents.*"):
        with contextlib.suppress(IndexError, ValueError):
            seconds.append(int(path.name.split(".")[3]))
    wait = max(seconds, default=0) + 1 - time.time()
    if wait > 0:
        time.sleep(wait)


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store in ``runs/mlflow.db`` (working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_MLFLOW_DB.resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


class MLflowLogger(TrackingLogger):
    """An MLflow run: params (the configuration, flattened), metrics, and the run
    directory's figures, config.yaml, summary.json and metrics.jsonl as artifacts.

    Args:
        tracking_uri: any MLflow tracking URI (``http://host:5000``, ``sqlite:///file.db``,
            ``databricks``); None: $MLFLOW_TRACKING_URI, else ``sqlite:///runs/mlflow.db``
            (a local file, no server; artifacts in ``runs/mlartifacts``).
        experiment: the MLflow experiment (created when absent).
        run_name: the run's name (default: the run directory's name).
        every_steps: the training bound every this many steps (sent at each epoch's end).
        artifacts: upload the run directory's files at the end.
    """

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "pyro-vae",
        run_name: str | None = None,
        every_steps: int = 50,
        artifacts: bool = True,
    ):
        super().__init__(every_steps)
        require("mlflow", MLFLOW_EXTRA, "logger=mlflow")
        self.tracking_uri = tracking_uri or default_tracking_uri()
        if sqlite_path(self.tracking_uri) is not None:  # MLflow's SQL store needs these
            require("sqlalchemy", MLFLOW_EXTRA, f"logger=mlflow with {self.tracking_uri}")
            require("alembic", MLFLOW_EXTRA, f"logger=mlflow with {self.tracking_uri}")
        self.experiment, self.run_name, self.artifacts = experiment, run_name, artifacts
        self.client: Any = None
        self.run_id: str | None = None
        self._pending: list[Any] = []

    def _open(self, trainer: Trainer, config: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        check_reachable(self.tracking_uri)
        db = sqlite_path(self.tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.client = client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment_id = self._experiment_id(db)
        run_dir = None if trainer.run_dir is None else str(trainer.run_dir.resolve())
        run = self._earlier_run(experiment_id, run_dir) if trainer.position.step else None
        if run is None:
            name = self.run_name or (trainer.run_dir.name if trainer.run_dir else "pyro-vae")
            tags = {"pyro_vae.version": __version__}
            if run_dir is not None:
                tags["pyro_vae.run_dir"] = run_dir
            run = client.create_run(experiment_id, run_name=name, tags=tags)
            logged: dict[str, str] = {}
        else:
            client.update_run(run.info.run_id, status="RUNNING")
            logged = dict(run.data.params)
        self.run_id = run.info.run_id
        self._log_params(config, logged)
        _record(
            trainer,
            mlflow_tracking_uri=self.tracking_uri,
            mlflow_experiment_id=experiment_id,
            mlflow_run_id=self.run_id,
        )

    def _experiment_id(self, db: Path | None) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None if db is None else (db.parent / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # created meanwhile by another run of a sweep
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _earlier_run(self, experiment_id: str, run_dir: str | None) -> Any:
        """The run an interrupted attempt in ``run_dir`` started, to resume it."""
        if run_dir is None or "'" in run_dir:
            return None
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`pyro_vae.run_dir` = '{run_dir}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def _log_params(self, config: dict[str, Any], logged: dict[str, str]) -> None:
        from mlflow.entities import Param

        # A resumed run keeps the values it was started with (MLflow refuses changes).
        params = [
            Param(k, as_text(v)[:_MAX_PARAM_LENGTH])
            for k, v in flatten(config).items()
            if k not in logged
        ]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, v, now, step) for k, v in values.items()]

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        log_metrics(self.client, self.run_id, pending)

    def _finish(self, trainer: Trainer, summary: dict[str, Any], figures: list[Path]) -> None:
        self._log(summary_metrics(summary), trainer.position.step)
        self._flush()
        if not self.artifacts or trainer.run_dir is None:
            return
        run = RunDir(trainer.run_dir)
        for path in (run.config_path, run.summary_path, run.metrics_path):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        for path in figures:
            self.client.log_artifact(self.run_id, str(path), "figures")

    def _close(self, status: str) -> None:
        if self.client is None or self.run_id is None:
            return
        try:
            self._flush()
        finally:
            self.client.set_terminated(self.run_id, status=status)

    def _abandon(self) -> None:  # a server that failed is not asked again
        self._pending = []


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """An HTTP tracking server that does not answer fails at once (ConnectionError), rather
    than after the MLflow client's retries (several minutes: $MLFLOW_HTTP_REQUEST_MAX_RETRIES
    and $MLFLOW_HTTP_REQUEST_TIMEOUT bound them for a server that goes away mid-run)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as e:
        raise ConnectionError(f"the MLflow tracking server {uri} does not answer ({e})") from e


LOGGERS: dict[str, type[TrackingLogger]] = {
    "tensorboard": TensorBoardLogger,
    "mlflow": MLflowLogger,
}


def build_loggers(spec: Mapping[str, Mapping[str, Any]] | None) -> list[TrackingLogger]:
    """The loggers a configuration's ``logger`` node names (``{"tensorboard": {...}}``), each
    with its settings; MissingPackageError where a package is missing."""
    out = []
    for name, settings in (spec or {}).items():
        if name not in LOGGERS:
            raise refuse("logger", name, f"one of {sorted(LOGGERS)}")
        out.append(LOGGERS[name](**dict(settings or {})))
    return out


def log_metrics(client: Any, run_id: str, metrics: Sequence[Any]) -> None:
    """MLflow metrics in batches of the size its server takes."""
    for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH])


def log_evaluation(run: RunDir, result: Mapping[str, Any], step: int | None = None) -> None:
    """``pyro-vae evaluate``'s numbers, as ``evaluate/<key>``, into the TensorBoard directory
    and the MLflow run that trained ``run`` (as its summary.json records them), at ``step``
    (default: the run's last); a logger that is not installed or fails is a warning, never
    an error of the evaluation."""
    values = {f"evaluate/{k}": float(v) for k, v in result.items() if is_number(v)}
    if step is None:
        step = int(run.summary().get("steps") or 0)
    log_to_run(run, "the evaluation", [(step, values)])


def log_to_run(
    run: RunDir,
    what: str,
    points: Sequence[tuple[int, Mapping[str, float]]],
    artifacts: Sequence[Path] = (),
    artifact_dir: str | None = None,
) -> None:
    """Numbers computed after training (``points``: ``(step, {name: value})``) and files
    (MLflow artifacts under ``artifact_dir``; default: summary.json) into the TensorBoard
    directory and the MLflow run that trained ``run``, as its summary.json records them;
    nothing where it records none. A logger that is not installed or fails is one warning
    naming ``what``, never an error of the caller."""
    summary = run.summary()
    log_dir = summary.get("tensorboard_log_dir")
    if log_dir:
        _safely("tensorboard", what, _points_to_tensorboard, log_dir, points)
    if summary.get("mlflow_run_id") and summary.get("mlflow_tracking_uri"):
        files = list(artifacts) if artifacts else [run.summary_path]
        _safely("mlflow", what, _points_to_mlflow, summary, points, files, artifact_dir)


def _safely(name: str, what: str, call: Callable[..., Any], *args: Any) -> None:
    try:
        with same_random_state():
            call(*args)
    except Exception as e:
        logger.warning("logger %s: %s was not logged (%s: %s)", name, what, type(e).__name__, e)


def _points_to_tensorboard(log_dir: str, points: Sequence[tuple[int, Mapping[str, float]]]) -> None:
    require("torch.utils.tensorboard", TENSORBOARD_EXTRA, "logging to TensorBoard", "tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir) as writer:
        for step, values in points:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)


def _points_to_mlflow(
    summary: dict[str, Any],
    points: Sequence[tuple[int, Mapping[str, float]]],
    files: Sequence[Path],
    artifact_dir: str | None,
) -> None:
    require("mlflow", MLFLOW_EXTRA, "logging to MLflow")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = summary["mlflow_tracking_uri"]
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    run_id = summary["mlflow_run_id"]
    metrics = [Metric(k, v, now, step) for step, values in points for k, v in values.items()]
    log_metrics(client, run_id, metrics)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=artifact_dir)
