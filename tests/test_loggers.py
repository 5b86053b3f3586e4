"""Experiment tracking (logger=tensorboard, logger=mlflow): what each records, read back with
the tools' own readers; that they change no number of a run; that a failing one never stops
it; that a missing package is refused before training."""

from __future__ import annotations

import csv
import json
import logging
import re
import socket
import sys

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae.config import ConfigError, check_overrides, compose_config, run_training
from pyro_vae.config.build import resumed_config
from pyro_vae.errors import MissingPackageError
from pyro_vae.runs import evaluate_run
from pyro_vae.training import MLflowLogger, RunDir, TensorBoardLogger
from pyro_vae.training.loggers import default_tracking_uri
from pyro_vae.variance import run_variance

from .conftest import bars_dataset, tiny_overrides

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds); each test has
    its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def mlflow_args(uri: str, experiment: str, *extra: str) -> list[str]:
    return [
        f"logger.mlflow.tracking_uri={uri}",
        f"logger.mlflow.experiment={experiment}",
        *extra,
    ]


def numbers(rows):
    """Metrics without the wall-clock fields, which legitimately differ between runs."""
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def hparams(acc: EventAccumulator) -> dict[str, HParamsPluginData]:
    return {
        tag: HParamsPluginData.FromString(content)
        for tag, content in acc.PluginTagToContent("hparams").items()
    }


def mlflow_run(summary):
    client = MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])
    return client, client.get_run(summary["mlflow_run_id"])


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_tensorboard_records_the_bound_the_epochs_the_figures_and_the_hparams(tiny_cfg, tmp_path):
    summary = run_training(
        tiny_cfg("logger=tensorboard", "logger.tensorboard.every_steps=2", "plots=true")
    )
    run = RunDir(tmp_path / "run")
    rows = run.metrics()  # metrics.jsonl as always
    assert summary["tensorboard_log_dir"] == str((run.path / "tensorboard").resolve())
    acc = events(run.path / "tensorboard")
    # 3 epochs of 9 steps: the bound every 2 steps, mean over them, per datapoint
    train = scalars(acc, "step/train_elbo")
    assert [s for s, _ in train] == list(range(2, 28, 2))
    assert all(-30 < v < 0 for _, v in train)
    for key in ("train_elbo", "test_elbo", "lr", "samples"):
        assert scalars(acc, f"epoch/{key}") == [
            (r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows
        ]
    # the run's figures, as images at the last step
    figures = sorted(p.stem for p in run.figure_dir.glob("*.png"))
    assert "elbo" in figures and "samples" in figures
    assert sorted(acc.Tags()["images"]) == [f"figures/{f}" for f in figures]
    image = acc.Images("figures/elbo")[-1]
    assert image.step == 27 and image.width > 100 and image.height > 100
    # the configuration as hparams, the final numbers of summary.json as their metrics
    data = hparams(acc)
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert start["latent_dim"].number_value == 2
    assert start["dataset.name"].string_value == "array"
    assert start["optim.name"].string_value == "adam"
    assert start["hidden_dims"].string_value == "[16]"
    metric_tags = [m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos]
    assert "summary/test_elbo" in metric_tags and "summary/best_test_elbo" in metric_tags
    assert scalars(acc, "summary/test_elbo") == [(27, pytest.approx(summary["test_elbo"]))]


def test_mlflow_records_params_metrics_and_artifacts(tiny_cfg, tmp_path, mlflow_uri):
    overrides = mlflow_args(mlflow_uri, "records", "logger.mlflow.every_steps=3", "plots=true")
    summary = run_training(tiny_cfg("logger=mlflow", *overrides))
    run = RunDir(tmp_path / "run")
    rows = run.metrics()
    client, mlrun = mlflow_run(summary)
    assert summary["mlflow_tracking_uri"] == mlflow_uri
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    assert client.get_experiment(mlrun.info.experiment_id).name == "records"
    assert mlrun.data.tags["pyro_vae.run_dir"] == str(run.path.resolve())
    # params: the configuration, flattened, as the command line writes it
    params = mlrun.data.params
    assert params["latent_dim"] == "2" and params["hidden_dims"] == "[16]"
    assert params["dataset.name"] == "array" and params["estimator.name"] == "trace_elbo"
    assert params["plots"] == "true" and params["num_samples"] == "null"
    assert params["logger.mlflow.every_steps"] == "3"
    # metrics: the bound every 3 steps, each epoch's row, the summary's final numbers
    run_id = mlrun.info.run_id
    assert [s for s, _ in history(client, run_id, "step/train_elbo")] == list(range(3, 28, 3))
    for key in ("train_elbo", "test_elbo", "lr"):
        assert history(client, run_id, f"epoch/{key}") == [
            (r["step"], pytest.approx(r[key])) for r in rows
        ]
    assert mlrun.data.metrics["summary/test_elbo"] == pytest.approx(summary["test_elbo"])
    assert mlrun.data.metrics["summary/best_test_elbo"] == pytest.approx(summary["best_test_elbo"])
    # artifacts: the run directory's files and figures
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "summary.json", "metrics.jsonl", "figures"} <= names
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert figures == {f"figures/{p.name}" for p in run.figure_dir.glob("*.png")}
    assert "figures/elbo.png" in figures
    local = client.download_artifacts(run_id, "summary.json", str(tmp_path))
    with open(local) as f:
        assert json.load(f)["status"] == "finished"


def test_loggers_change_no_number_of_the_run(tiny_cfg, tmp_path, mlflow_uri):
    run_training(tiny_cfg(run_dir=tmp_path / "plain"))
    both = [
        "logger=[tensorboard,mlflow]",
        "logger.tensorboard.every_steps=1",
        "logger.mlflow.every_steps=1",
        *mlflow_args(mlflow_uri, "same-numbers"),
    ]
    run_training(tiny_cfg(*both, run_dir=tmp_path / "logged"))
    plain, logged = RunDir(tmp_path / "plain"), RunDir(tmp_path / "logged")
    assert numbers(plain.metrics()) == numbers(logged.metrics())
    a, b = plain.load_checkpoint()["model"], logged.load_checkpoint()["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (logged.path / "tensorboard").is_dir() and logged.summary()["mlflow_run_id"]
    cfg = logged.config()
    assert set(cfg["logger"]) == {"tensorboard", "mlflow"}  # recorded in config.yaml


@pytest.mark.parametrize("method", ["__init__", "add_scalar", "add_image", "add_hparams"])
def test_a_failing_tensorboard_warns_once_and_the_run_goes_on(
    tiny_cfg, tmp_path, monkeypatch, caplog, method
):
    from torch.utils.tensorboard import SummaryWriter

    run_training(tiny_cfg(run_dir=tmp_path / "plain"))
    calls = []

    def disk_full(*args, **kwargs):
        calls.append(method)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, method, disk_full)
    caplog.set_level(logging.WARNING, logger="pyro_vae")
    overrides = ["logger=tensorboard", "logger.tensorboard.every_steps=1", "plots=true"]
    summary = run_training(tiny_cfg(*overrides, run_dir=tmp_path / "logged"))
    assert summary["status"] == "finished"
    assert len(calls) == 1  # off after the first failure
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "logger tensorboard failed" in warnings[0] and "No space left" in warnings[0]
    assert "training goes on" in warnings[0]
    plain, logged = RunDir(tmp_path / "plain"), RunDir(tmp_path / "logged")
    assert numbers(plain.metrics()) == numbers(logged.metrics())


def test_a_failing_mlflow_backend_warns_once_and_the_run_goes_on(
    tiny_cfg, tmp_path, monkeypatch, caplog, mlflow_uri
):
    calls = []

    def unreachable(*args, **kwargs):
        calls.append(1)
        raise ConnectionError("MLflow is down")

    monkeypatch.setattr(MlflowClient, "log_batch", unreachable)
    caplog.set_level(logging.WARNING, logger="pyro_vae")
    overrides = mlflow_args(mlflow_uri, "failing", "logger.mlflow.every_steps=1")
    summary = run_training(tiny_cfg("logger=[mlflow,tensorboard]", *overrides))
    assert summary["status"] == "finished" and len(calls) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "logger mlflow failed" in warnings[0], warnings
    # the other logger is not affected
    acc = events(tmp_path / "run" / "tensorboard")
    assert len(acc.Scalars("epoch/test_elbo")) == 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_warns_at_once_and_the_run_goes_on(
    tiny_cfg, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="pyro_vae")
    uri = f"http://127.0.0.1:{free_port()}"
    summary = run_training(tiny_cfg("logger=mlflow", f"logger.mlflow.tracking_uri={uri}"))
    assert summary["status"] == "finished" and "mlflow_run_id" not in summary
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "does not answer" in warnings[0], warnings


@pytest.mark.parametrize(
    ("logger", "module", "extra"),
    [("mlflow", "mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard", "tensorboard")],
)
def test_a_missing_package_is_refused_before_training(
    tiny_cfg, tmp_path, monkeypatch, logger, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    message = f'logger={logger} needs the {extra} package: pip install -e ".[{extra}]"'
    with pytest.raises(MissingPackageError, match=message.replace("[", r"\[").replace(".", r"\.")):
        run_training(tiny_cfg(f"logger={logger}"))
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing was started
    with pytest.raises(MissingPackageError, match=f"needs the {extra} package"):
        check_overrides([*tiny_overrides("data.npy", tmp_path / "other"), f"logger={logger}"])
    with pytest.raises(MissingPackageError, match=f"needs the {extra} package"):
        {"mlflow": MLflowLogger, "tensorboard": TensorBoardLogger}[logger]()


def test_several_loggers_are_one_list_and_their_keys_are_checked(bars_path, tmp_path):
    base = tiny_overrides(bars_path, tmp_path / "run")
    assert compose_config(base)["logger"] == {}
    cfg = compose_config([*base, "logger=[tensorboard,mlflow]"])
    assert set(cfg["logger"]) == {"tensorboard", "mlflow"}
    assert cfg["logger"]["tensorboard"]["every_steps"] == 50
    assert cfg["logger"]["mlflow"]["tracking_uri"] is None
    check_overrides([*base, "logger=[tensorboard,mlflow]", "logger.mlflow.every_steps=5"])
    for override, message in [
        ("logger=tensorbord", "did you mean 'tensorboard'"),
        ("logger=[tensorboard,mlfow]", "did you mean 'mlflow'"),
        ("logger.tensorboard.every_steps=0", "logger.tensorboard.every_steps=0 is not allowed"),
        ("logger.tensorboard.evry_steps=3", "did you mean 'logger.tensorboard.every_steps'"),
        ("logger.mlflow.experiment=''", "logger.mlflow.experiment='' is not allowed"),
        ("logger=tensorboard logger.mlflow.every_steps=5", "add logger=mlflow"),
    ]:
        chosen = [] if override.startswith("logger=") else ["logger=[tensorboard,mlflow]"]
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_overrides([*base, *chosen, *override.split()])


def test_a_run_may_be_resumed_with_a_logger_and_keeps_its_own(tmp_path):
    saved = {"epochs": 2, "latent_dim": 2}  # a config.yaml written before loggers existed
    requested = {"epochs": 4, "latent_dim": 2, "logger": {}}
    assert resumed_config(saved, requested, ["epochs=4"])["logger"] == {}
    node = {"tensorboard": {"log_dir": "tb", "every_steps": 5, "images": True}}
    cfg = resumed_config(saved, {**requested, "logger": node}, ["logger=tensorboard"])
    assert cfg["logger"] == node
    with_logger = {**saved, "logger": node}
    assert resumed_config(with_logger, requested, ["epochs=4"])["logger"] == node  # kept
    seven = {"tensorboard": {**node["tensorboard"], "every_steps": 7}}
    changed = resumed_config(
        with_logger, {**requested, "logger": seven}, ["logger.tensorboard.every_steps=7"]
    )
    assert changed["logger"] == seven


def crash_at_step(monkeypatch, step_number):
    step, calls = pyro_vae.methods.AEVB.step, []

    def crashing_step(self, x, idx):
        calls.append(1)
        if len(calls) == step_number:
            raise RuntimeError("the machine fell over")
        return step(self, x, idx)

    monkeypatch.setattr(pyro_vae.methods.AEVB, "step", crashing_step)


def test_a_resumed_run_goes_on_in_the_same_tensorboard_dir_and_mlflow_run(
    tiny_cfg, tmp_path, monkeypatch, mlflow_uri
):
    overrides = [
        "logger=[tensorboard,mlflow]",
        "logger.tensorboard.every_steps=1",
        "checkpoint_every_steps=3",
        *mlflow_args(mlflow_uri, "resumed"),
    ]
    with monkeypatch.context() as patch:
        crash_at_step(patch, 8)  # after the checkpoint of step 6
        with pytest.raises(RuntimeError, match="fell over"):
            run_training(tiny_cfg(*overrides))
    run = RunDir(tmp_path / "run")
    first = run.summary()["mlflow_run_id"]
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_run(first).info.status == "FAILED"
    summary = run_training(tiny_cfg(*overrides, "resume=true"))
    assert summary["status"] == "finished" and summary["mlflow_run_id"] == first
    mlrun = client.get_run(first)
    assert mlrun.info.status == "FINISHED"
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1
    epochs = history(client, first, "epoch/test_elbo")
    assert epochs == [(r["step"], pytest.approx(r["test_elbo"])) for r in run.metrics()]
    # TensorBoard: what the crashed attempt logged after its checkpoint (steps 7, 8) is purged
    acc = events(run.path / "tensorboard")
    assert [s for s, _ in scalars(acc, "step/train_elbo")] == list(range(1, 28))
    assert [s for s, _ in scalars(acc, "epoch/test_elbo")] == [9, 18, 27]


def test_evaluate_logs_to_the_run_the_loggers_started(tiny_cfg, tmp_path, mlflow_uri):
    overrides = mlflow_args(mlflow_uri, "evaluated")
    summary = run_training(tiny_cfg("logger=[tensorboard,mlflow]", *overrides))
    result = evaluate_run(tmp_path / "run", num_samples=5)
    _, mlrun = mlflow_run(summary)
    metrics = mlrun.data.metrics
    assert metrics["evaluate/test_log_likelihood"] == pytest.approx(result["test_log_likelihood"])
    assert metrics["evaluate/importance_samples"] == 5
    acc = events(tmp_path / "run" / "tensorboard")
    values = scalars(acc, "evaluate/test_log_likelihood")
    assert values == [(27, pytest.approx(result["test_log_likelihood"]))]


def test_the_variance_lab_logs_to_the_run_the_loggers_started(tiny_cfg, tmp_path, mlflow_uri):
    overrides = mlflow_args(mlflow_uri, "variance", "snapshots=all")
    summary = run_training(tiny_cfg("logger=[tensorboard,mlflow]", *overrides))
    lab = {"estimators": "trace_elbo,score_function:baseline=none", "repeats": 5}
    _, paths = run_variance(tmp_path / "run", checkpoints="all", **lab)
    rows = list(csv.DictReader((tmp_path / "run" / "variance" / "variance.csv").open()))
    client, _ = mlflow_run(summary)
    # One point per checkpoint (epochs 0-3) for every estimator, L, group and number; the
    # '=' MLflow refuses in a name is '_'.
    for row in rows:
        label = row["estimator"].replace("=", "_")
        key = f"variance/{label}/L{row['num_particles']}/{row['group']}/total_variance"
        mine = (int(row["epoch"]), pytest.approx(float(row["total_variance"])))
        assert mine in history(client, summary["mlflow_run_id"], key)
        assert mine in scalars(events(tmp_path / "run" / "tensorboard"), key)
    epochs = [s for s, _ in history(client, summary["mlflow_run_id"], key)]
    assert epochs == [0, 1, 2, 3] and len(rows) == 4 * 2 * 2  # checkpoints, estimators, groups
    artifacts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "variance")}
    assert artifacts == {f"variance/{p.name}" for p in paths}


def test_the_python_api_takes_loggers_as_callbacks(tmp_path, mlflow_uri):
    x = torch.as_tensor(bars_dataset(120))
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[8])
    loggers = [
        pyro_vae.TensorBoardLogger(every_steps=2),
        pyro_vae.MLflowLogger(tracking_uri=mlflow_uri, experiment="python", run_name="mine"),
    ]
    summary = pyro_vae.train(
        vae, x[:100], tmp_path / "mine", test=x[100:], epochs=2, batch_size=20,
        progress=False, plots=False, callbacks=loggers,
    )  # fmt: skip
    acc = events(tmp_path / "mine" / "tensorboard")
    assert [s for s, _ in scalars(acc, "epoch/test_elbo")] == [5, 10]
    _, mlrun = mlflow_run(summary)
    assert mlrun.info.run_name == "mine" and mlrun.data.params["epochs"] == "2"


def test_the_default_mlflow_store_is_a_sqlite_file_beside_the_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert MLflowLogger().tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert MLflowLogger().tracking_uri == "http://tracking:5000"
    assert MLflowLogger(tracking_uri="sqlite:///x.db").tracking_uri == "sqlite:///x.db"
