"""The ``pyro-vae`` command.

    pyro-vae train [key=value ...] [-m]     train (Hydra overrides; -m for a sweep)
    pyro-vae evaluate RUN_DIR [key=value]   test ELBO and importance-sampled log p(x)
    pyro-vae plot RUN_DIR [key=value]       the run's figures
    pyro-vae export RUN_DIR [key=value]     the decoder/encoder as plain torch modules
    pyro-vae variance RUN_DIR [key=value]   gradient variance of the ELBO estimators

``train`` is a Hydra application: ``pyro-vae train --help`` lists the config groups and
``pyro-vae train --cfg job`` prints the composed configuration without training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import ConfigError, PyroVAEError, TrainingError, TrainingInterrupted

USAGE = """usage: pyro-vae COMMAND [ARGS]

commands:
  train [key=value ...]          train a VAE with Pyro SVI (Hydra overrides, -m to sweep)
  evaluate RUN_DIR [key=value]   test ELBO and importance-sampled log-likelihood
                                 keys: num_samples (K, default from the run: 1000),
                                       checkpoint (last.pt), device, seed,
                                       progress (true: a bar with the time left),
                                       mi_points (1000: I(x;z) under q; 0 skips it),
                                       gap_points (0; N > 0: the approximation and
                                       amortisation gaps on N test points), gap_steps
                                       (500), gap_lr (0.01), gap_samples (10),
                                       gap_elbo_samples (1000)
  plot RUN_DIR [key=value]       ELBO curves, 2-D manifold, samples, reconstructions
                                 keys: checkpoint (last.pt)
  export RUN_DIR [key=value]     the trained decoder and/or encoder as plain torch modules,
                                 loaded without pyro-vae (a state dict or torch.export
                                 program, export.json, and the loader vae_export.py)
                                 keys: out (RUN_DIR/export), part (both | decoder | encoder),
                                       checkpoint (last.pt)
  compare RUN_DIR... [out=PATH]  table and overlaid ELBO curves of any runs (directories,
                                 globs, or a sweep directory); out: figure (compare.png),
                                 the table is also written beside it as .csv
  variance RUN_DIR [key=value]   gradient variance, SNR and time of each ELBO estimator
                                 keys: estimators (all; e.g. sgvb_a,score_function:baseline=none),
                                       num_particles (1; e.g. 1,10), repeats (100),
                                       checkpoints (last | all | epoch_0004.pt,...),
                                       batch_size (the run's), seed (0), device, out_dir,
                                       groups (module: phi, theta | layer: phi:trunk.0, ...
                                               | parameter: one per tensor
                                               | site: q:z, p:x, ...)

examples:
  pyro-vae train                                    # the paper's MNIST model, defaults
  pyro-vae train dataset=frey_face latent_dim=2 epochs=100
  pyro-vae train --cfg job                          # show the configuration
  pyro-vae evaluate runs/mnist/2026-01-01_12-00-00 num_samples=5000
  pyro-vae variance runs/mnist/2026-01-01_12-00-00 checkpoints=all num_particles=1,10
  pyro-vae export runs/mnist/2026-01-01_12-00-00 out=mnist_decoder part=decoder
"""

# Errors a user can fix from the message alone: printed without a traceback (exit code 2).
# Anything else is a bug, and shows its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (PyroVAEError,)


class _TqdmHandler(logging.Handler):
    """Messages to stderr through tqdm, so they do not break a progress bar; warnings start
    with ``warning: `` (unless logged with ``extra={"plain": True}``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING and not getattr(record, "plain", False):
                message = "warning: " + message
            tqdm.write(message, file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
    """The package's messages (``pyro_vae.*`` loggers) on stderr, one line each."""
    logger = logging.getLogger("pyro_vae")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        logger.addHandler(_TqdmHandler())
    logger.setLevel(level)


def parse_key_values(
    args: Sequence[str], allowed: dict[str, Callable[[str], Any]], command: str
) -> dict[str, Any]:
    """``key=value`` arguments of the non-Hydra commands, converted by ``allowed[key]``."""
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"{command}: argument {arg!r} is not key=value")
        if key not in allowed:
            raise ConfigError(f"{command}: unknown key {key!r}; allowed keys: {sorted(allowed)}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise ConfigError(
                f"{command}: {key}={value!r} is not a valid {allowed[key].__name__}"
            ) from None
    return out


def _split_run_dir(args: Sequence[str], command: str) -> tuple[str, list[str]]:
    """The run directory (the first argument) and the ``key=value`` arguments after it. A
    first argument with ``=`` in it is a run directory where that path exists: a sweep's
    runs are named ``key=value,...`` (``multirun/.../latent_dim=2,prior=laplace``)."""
    if not args or ("=" in args[0] and not Path(args[0]).exists()):
        raise ConfigError(f"{command}: the first argument must be a run directory")
    return args[0], list(args[1:])


def _bool(text: str) -> bool:
    """``true``/``false`` (and yes/no, 1/0), as the command line writes booleans."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.strip().lower() not in value:
        raise ValueError(text)
    return value[text.strip().lower()]


_bool.__name__ = "boolean (true or false)"


def cmd_train(args: Sequence[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from .config import SweepJobFailed, check_overrides, run_training, use_config_dirs

    first = check_overrides(args)  # before Hydra creates a run directory
    created: set[Path] = set()  # directories of the run's path that this command creates
    composed: Path | None = None
    if first is not None and first.get("run_dir"):
        from .training.rundir import RunDir

        composed = Path(str(first.run_dir)).absolute()
        RunDir(composed).check_location()  # a file, under a file, not writable: before Hydra
        created = set(RunDir(composed).missing_dirs())
    status = {"code": 0}
    command_pid = os.getpid()

    @hydra.main(config_path="config/conf", config_name="config", version_base="1.3")
    def _task(cfg: DictConfig) -> None:
        configure_logging()  # also in a job's own process (joblib, submitit)
        hc = HydraConfig.get()
        # A job in a process of its own knows the user's config directories from Hydra.
        use_config_dirs(
            [
                s.path
                for s in hc.runtime.config_sources
                if s.schema == "file" and s.provider != "main"
            ]
        )
        run_dir = Path(hc.runtime.output_dir)
        # In a -m sweep one failed run does not stop the others; its message names it.
        where = f"{run_dir}: " if hc.mode == RunMode.MULTIRUN else ""
        try:
            summary = run_training(cfg, run_dir, list(hc.overrides.task))
        except TrainingError as e:
            code, message = 1, f"error: {where}{e}"
        except USER_ERRORS as e:
            _remove_created(run_dir, created, composed)
            code, message = 2, f"error: {where}{e}"
        except KeyboardInterrupt:  # before training wrote anything: no empty directory left
            _remove_created(run_dir, created, composed)
            raise
        else:
            _report(run_dir, summary)
            return
        print(message, file=sys.stderr)  # a job's own log, for a job elsewhere
        if os.getpid() != command_pid:
            # A launcher's job (joblib, submitit) in another process: its result carries
            # the failure back; Hydra raises it in the command once the sweep has run.
            raise SweepJobFailed(message, code)
        status["code"] = status["code"] or code  # the first failed run's, as Hydra reports

    argv = sys.argv
    sys.argv = ["pyro-vae train", *args]
    try:
        _task()
    except TrainingInterrupted as e:  # also ends a -m sweep: the remaining runs do not start
        return e.exit_code
    except SystemExit as e:  # Hydra printed a job's failure (the message) and exits 1
        if isinstance(e.__context__, SweepJobFailed):
            return e.__context__.code
        raise
    finally:
        sys.argv = argv
    return status["code"]


def _remove_created(run_dir: Path, created: set[Path], composed: Path | None) -> None:
    """Undo Hydra's mkdir of a run directory when the run was refused before writing: the
    run directory (where Hydra named it: a timestamp, a sweep's job; not a directory the
    user gave that existed) and the parents this command created, if nothing is in them."""
    from .training.rundir import RunDir

    path = run_dir.absolute()
    named = composed is not None and (path == composed or path in composed.parents)
    mine = [path] if path in created or not named else []
    mine += [p for p in path.parents if p in created]
    with contextlib.suppress(OSError):
        RunDir(path).remove_unused(mine)


def _report(run_dir: Path, summary: dict[str, Any]) -> None:
    if summary.get("test_elbo") is not None:
        trained = f"{summary.get('epochs')} epochs ({summary.get('samples')} samples)"
        if summary.get("epochs") == 0:  # num_samples= fewer than one epoch's
            trained = f"{summary.get('samples')} samples (less than one epoch)"
        print(
            f"{run_dir}: {summary.get('status')}, test ELBO {summary['test_elbo']:.2f} nats "
            f"after {trained}"
        )
    where = shlex.quote(str(run_dir))  # as a shell takes it back (a space, a quote)
    print(f"next: pyro-vae evaluate {where}   |   pyro-vae plot {where}")


def _active(result: dict) -> str:
    """``3 of 20``, or per stochastic layer ``3+1 of 100+50``."""
    per_layer = result.get("active_units_per_layer")
    dims = result.get("latent_dims")
    if per_layer and dims:
        return f"{'+'.join(map(str, per_layer))} of {'+'.join(map(str, dims))}"
    return f"{result['active_units']} of {result['latent_dim']}"


def cmd_evaluate(args: Sequence[str]) -> int:
    from .runs import evaluate_run

    run_dir, rest = _split_run_dir(args, "evaluate")
    opts = parse_key_values(
        rest,
        {
            "num_samples": int,
            "checkpoint": str,
            "device": str,
            "seed": int,
            "progress": _bool,
            "mi_points": int,
            "gap_points": int,
            "gap_steps": int,
            "gap_lr": float,
            "gap_samples": int,
            "gap_elbo_samples": int,
        },
        "evaluate",
    )
    result = evaluate_run(run_dir, **opts)
    print(json.dumps(result, indent=2))
    print(
        f"test ELBO {result['test_elbo']:.2f} nats; importance-sampled log p(x) "
        f"{result['test_log_likelihood']:.2f} ± {result['test_log_likelihood_se']:.2f} nats "
        f"(K={result['importance_samples']}); {_active(result)} latent units active; "
        "written to "
        f"{Path(run_dir) / 'summary.json'}"
    )
    if "test_exact_log_likelihood" in result:
        print(
            f"exact log p(x) {result['test_exact_log_likelihood']:.2f} nats: the ELBO is "
            f"{result['elbo_gap']:.3f} and the importance-sampled estimate "
            f"{result['importance_gap']:.3f} nats below it"
        )
    if "mutual_information" in result:
        kl = (
            f"; KL per dimension sums to {result['kl_sum']:.2f} nats, "
            f"{result['collapsed_dims']} dimensions under 0.01"
            if "kl_sum" in result
            else ""
        )
        print(
            f"I(x; z) under q {result['mutual_information']:.2f} ± "
            f"{result['mutual_information_se']:.2f} nats ({result['mi_points']} points){kl}"
        )
    if "approximation_gap" in result:
        print(
            f"inference gap {result['inference_gap']:.2f} nats on {result['gap_points']} "
            f"points = approximation {result['approximation_gap']:.2f} + amortisation "
            f"{result['amortisation_gap']:.2f} (local optimisation: {result['gap_steps']} "
            f"steps; log p(x): {result['gap_log_likelihood']})"
        )
    return 0


def cmd_plot(args: Sequence[str]) -> int:
    from .runs import plot_run

    run_dir, rest = _split_run_dir(args, "plot")
    opts = parse_key_values(rest, {"checkpoint": str}, "plot")
    for path in plot_run(run_dir, **opts):
        print(path)
    return 0


def cmd_export(args: Sequence[str]) -> int:
    from .export import export_model

    run_dir, rest = _split_run_dir(args, "export")
    opts = parse_key_values(rest, {"out": str, "part": str, "checkpoint": str}, "export")
    out = Path(opts.pop("out", None) or Path(run_dir) / "export")
    manifest = export_model(run_dir, out, **opts)
    for path in manifest["files"]:
        print(path)
    parts = manifest["parts"]
    formats = ", ".join(f"{name}: {entry['format']}" for name, entry in parts.items())
    loads = " | ".join(f"vae_export.load_{name}()" for name in parts)
    print(
        f"exported {formats} from {manifest['checkpoint']}; without pyro-vae: "
        f"sys.path.insert(0, {str(out)!r}); import vae_export; {loads}"
    )
    return 0


def cmd_compare(args: Sequence[str]) -> int:
    from .compare import compare_runs

    # Sweep directories are named key=value,...: only out= is an option.
    out = [a.partition("=")[2] for a in args if a.startswith("out=")]
    patterns = [a for a in args if not a.startswith("out=")]
    if not patterns:
        raise ConfigError("compare: give at least one run directory, glob or sweep directory")
    table, figure = compare_runs(patterns, *out[-1:])
    print(table)
    print(f"curves: {figure}; table: {figure.with_suffix('.csv')}")
    return 0


def cmd_variance(args: Sequence[str]) -> int:
    from .variance import VARIANCE_KEYS, run_variance

    run_dir, rest = _split_run_dir(args, "variance")
    table, paths = run_variance(run_dir, **parse_key_values(rest, VARIANCE_KEYS, "variance"))
    print(table)
    for path in paths:
        print(path)
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "plot": cmd_plot,
    "export": cmd_export,
    "compare": cmd_compare,
    "variance": cmd_variance,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"error: unknown command {command!r}; choose from {sorted(COMMANDS)}", file=sys.stderr
        )
        return 2
    if command != "train" and rest and rest[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    configure_logging()
    try:
        return COMMANDS[command](rest)
    except TrainingInterrupted as e:
        return e.exit_code
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted (Ctrl-C); {INTERRUPTED[command]}", file=sys.stderr)
        return 130


#: What a Ctrl-C leaves, command by command: every file is written atomically, so each one
#: is either as it was or complete.
INTERRUPTED = {
    "train": "the run directory holds its last complete checkpoint (if any); "
    "`pyro-vae train run_dir=<dir> resume=true` continues from it",
    "evaluate": "nothing was written (the results go into summary.json at the end)",
    "plot": "the figures written so far are complete; the others were not written",
    "export": "the files written so far are complete; run it again for the rest",
    "compare": "nothing was written",
    "variance": "nothing was written (the table and figures are written at the end)",
}


if __name__ == "__main__":
    sys.exit(main())
