"""Speed against plain PyTorch, in one process: training steps, importance sampling, variance lab.

Every measurement compares the project, as a user runs it, with a plain-PyTorch program of
identical architecture written here: the naive loop a user would write (``nn.Linear``
layers, ``torch.optim.Adam`` with its defaults, ``F.binary_cross_entropy_with_logits``,
MNIST held in memory as one tensor, each minibatch drawn by index and binarised with
``torch.bernoulli``). Configurations are timed in short rounds, their order alternating
between rounds so that load from elsewhere hits all alike, after warm-up rounds; a
configuration's time is the median over rounds, its ratio the median over rounds of (its
time / the baseline's time in the same round): below 1 is faster than the baseline.

Training (MNIST, the paper's model 784-500-20, tanh, Bernoulli decoder; batch 100 and
1000), every step including the drawing of its minibatch:

- ``plain_a``: baseline for estimator A (eq. 6): log p(x|z) + log p(z) - log q(z|x) at the
  sample, L = 1;
- ``plain_b``: baseline for estimator B (eq. 7): log p(x|z) - KL in closed form (eq. 10);
- ``default``: ``pyro-vae train``'s step with the defaults (``Minibatches``, then
  ``AEVB.step``: Pyro's ``Trace_ELBO.loss_and_grads`` on the traced model and guide,
  estimator A, and the guarded torch Adam step), against ``plain_a``;
- ``traced_sgvb_b``: the same traced step with the hand-derived estimator B, against
  ``plain_b`` (results before the Python-first refactor call it ``svi_sgvb_b``: the step
  went through ``pyro.infer.SVI``, whose ``step`` calls the same ``loss_and_grads``);
- ``fast_a`` / ``fast_b``: ``fast=true`` (estimator A / B without Pyro's tracing,
  ``pyro_vae/fast.py``), against ``plain_a`` / ``plain_b``;
- ``data_project`` / ``data_plain``: drawing the minibatch alone.

Evaluation: ``importance_log_likelihood`` (K = 1000, 1000 test points, in slices of 100
that the two take in turn) against a plain loop over chunks of 10 points, all K samples of
a chunk in one pass, on the same weights. Variance lab: R = 100 gradient estimates
(``pyro_vae.gradient_statistics``, Trace_ELBO, batch 100) against R ``torch.autograd.grad``
calls on the ``plain_a`` loss feeding the same running moments.

    python experiments/benchmark.py [--profile] [--devices cpu,cuda] [--out DIR]

Writes ``<out>/benchmark.json`` (every round's times) and ``<out>/benchmark.md`` (tables
and the machine), by default in ``experiments/results/benchmark``; ``--profile`` adds
cProfile tables of the default and fast steps; ``--quick`` runs a few rounds of everything
into ``experiments/results/benchmark-smoke``, to check the script.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import platform
import pstats
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import (
    Minibatches,
    RunData,
    build_estimator,
    gradient_statistics,
    importance_log_likelihood,
    load_data,
)
from pyro_vae.config import as_plain, build_model, build_training_method, compose_config
from pyro_vae.variance import Moments

ROOT = Path(__file__).resolve().parents[1]
LOG_2PI = math.log(2 * math.pi)

# name -> (estimator of the plain baseline it is compared with, config overrides)
PROJECT_CONFIGS: dict[str, tuple[str, list[str]]] = {
    "default": ("a", []),
    "traced_sgvb_b": ("b", ["estimator=sgvb_b"]),
    "fast_a": ("a", ["fast=true", "estimator=sgvb_a"]),
    "fast_b": ("b", ["fast=true", "estimator=sgvb_b"]),
}


# ---------------------------------------------------------------------------------------
# The plain-PyTorch baseline


class PlainVAE(nn.Module):
    """The paper's MNIST VAE as a user writes it without Pyro (same layers as pyro_vae):
    ``hidden`` tanh layers in the encoder, the same reversed in the decoder."""

    def __init__(self, x_dim: int = 784, hidden: int | tuple[int, ...] = 500, z_dim: int = 20):
        super().__init__()
        widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.enc = self._trunk(x_dim, widths)
        self.enc_mu = nn.Linear(widths[-1], z_dim)
        self.enc_logvar = nn.Linear(widths[-1], z_dim)
        self.dec = self._trunk(z_dim, widths[::-1])
        self.dec_out = nn.Linear(widths[0], x_dim)

    @staticmethod
    def _trunk(width: int, widths: tuple[int, ...]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Linear(width, w), nn.Tanh()]
            width = w
        return nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc(x)
        return self.enc_mu(h), self.enc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec_out(self.dec(z))

    def elbo(self, x: torch.Tensor, estimator: str) -> torch.Tensor:
        """Per-datapoint ELBO estimate [M] (one sample), estimator "a" or "b"."""
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        z = mu + std * eps
        log_px = -F.binary_cross_entropy_with_logits(self.decode(z), x, reduction="none").sum(-1)
        if estimator == "b":
            return log_px - 0.5 * (mu**2 + std**2 - 1 - logvar).sum(-1)
        log_pz = -0.5 * (z**2 + LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps**2 + LOG_2PI + logvar).sum(-1)
        return log_px + log_pz - log_qz

    def log_likelihood(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Importance-sampled log p(x) [M] with K samples of q per point."""
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(k, *mu.shape, device=mu.device)
        z = mu + std * eps
        log_px = -F.binary_cross_entropy_with_logits(
            self.decode(z), x.expand(k, *x.shape), reduction="none"
        ).sum(-1)
        log_w = log_px - 0.5 * (z**2).sum(-1) + 0.5 * (eps**2 + logvar).sum(-1)
        return torch.logsumexp(log_w, 0) - math.log(k)


class PlainTrainer:
    """Plain loop: minibatch by index, bernoulli, forward, backward, Adam, loss.item()."""

    def __init__(self, train: torch.Tensor, batch_size: int, estimator: str, device: str):
        self.model = PlainVAE(train.shape[1]).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.train, self.batch_size, self.estimator = train, batch_size, estimator
        self.batches = self._batches()

    def _batches(self) -> Iterator[torch.Tensor]:
        n = self.train.shape[0]
        while True:
            order = torch.randperm(n, device=self.train.device)
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                yield torch.bernoulli(self.train[order[start : start + self.batch_size]])

    def step(self) -> float:
        x = next(self.batches)
        self.opt.zero_grad()
        loss = -self.model.elbo(x, self.estimator).sum() * (self.train.shape[0] / x.shape[0])
        loss.backward()
        self.opt.step()
        return loss.item()


class ProjectTrainer:
    """The project's step as ``Trainer.fit`` runs it: Minibatches, then ``method.step``
    (the method ``pyro-vae train`` builds from the same overrides)."""

    def __init__(self, overrides: list[str], data: RunData, batch_size: int, device: str):
        cfg = compose_config([*overrides, f"batch_size={batch_size}", f"device={device}"])
        pyro.enable_validation(cfg.validate)
        shape = data.dataset.image_shape
        self.vae = build_model(cfg, data.x_dim, data.num_train, shape).to(device)
        self.method = build_training_method(cfg, self.vae)
        self.minibatches = Minibatches(
            data.train, batch_size, seed=0, binarize=data.train_binarize, device=device
        )
        self.batches = self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            yield from self.minibatches.epoch(epoch)
            epoch += 1

    def step(self) -> float:
        idx, x = next(self.batches)
        return self.method.step(x, idx)


class DataOnly:
    """A step that only draws the next minibatch of a trainer's stream."""

    def __init__(self, batches: Iterator[Any]):
        self.batches = batches

    def step(self) -> None:
        next(self.batches)


# ---------------------------------------------------------------------------------------
# Timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    runs: dict[str, Callable[[int], Any]], rounds: int, warmup: int, device: str
) -> dict[str, list[float]]:
    """Seconds per call ``run(r)`` of each function in rounds r = 0, 1, ..., one list entry
    per round after ``warmup`` rounds; the order of the functions alternates between rounds
    (forwards, backwards)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(warmup + rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            _sync(device)
            start = time.perf_counter()
            runs[name](r)
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
    return statistics.median(t / b for t, b in zip(times[name], times[baseline], strict=True))


def steps_of(trainer: Any, steps: int) -> Callable[[int], None]:
    def run(r: int) -> None:
        for _ in range(steps):
            trainer.step()

    return run


def bench_training(
    data: RunData, batch_size: int, device: str, rounds: int, steps: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    trainers: dict[str, Any] = {
        f"plain_{e}": PlainTrainer(data.train, batch_size, e, device) for e in "ab"
    }
    baseline_of = {}
    for name, (estimator, overrides) in PROJECT_CONFIGS.items():
        trainers[name] = ProjectTrainer(overrides, data, batch_size, device)
        baseline_of[name] = f"plain_{estimator}"
    # Drawing the minibatches alone, to show what data handling takes of a step.
    trainers["data_plain"] = DataOnly(trainers["plain_a"].batches)
    trainers["data_project"] = DataOnly(trainers["default"].batches)
    baseline_of["data_project"] = "data_plain"
    times = interleaved(
        {name: steps_of(t, steps) for name, t in trainers.items()}, rounds, 2, device
    )
    per_step = {name: [t / steps for t in ts] for name, ts in times.items()}
    return {
        "batch_size": batch_size,
        "steps_per_round": steps,
        "examples_per_second": {
            name: round(batch_size / statistics.median(ts), 1) for name, ts in per_step.items()
        },
        "ratio_to_baseline": {
            name: {"baseline": base, "ratio": round(ratio(per_step, name, base), 4)}
            for name, base in baseline_of.items()
        },
        "seconds_per_step_by_round": {
            name: [round(t, 6) for t in ts] for name, ts in per_step.items()
        },
    }


#: network=... configurations timed against the paper's MLP (same step, same data)
NETWORK_CONFIGS: dict[str, list[str]] = {
    "mlp": [],
    "conv": ["network=conv"],
    "mlp_categorical": ["likelihood=categorical", "dataset.binarize=none"],
    "conv_categorical": ["network=conv", "likelihood=categorical", "dataset.binarize=none"],
}


def bench_networks(
    data: RunData, grey: RunData, device: str, rounds: int, steps: int
) -> dict[str, Any]:
    """Seconds per training step (batch 100, the default AEVB step) and per MNIST epoch
    (600 steps) of the conv network and of the categorical likelihood beside the MLP."""
    torch.manual_seed(0)
    trainers = {
        name: ProjectTrainer(o, grey if "binarize=none" in " ".join(o) else data, 100, device)
        for name, o in NETWORK_CONFIGS.items()
    }
    times = interleaved(
        {name: steps_of(t, steps) for name, t in trainers.items()}, rounds, 1, device
    )
    per_step = {name: statistics.median(t / steps for t in ts) for name, ts in times.items()}
    per_round = {name: [t / steps for t in ts] for name, ts in times.items()}
    return {
        "batch_size": 100,
        "steps_per_round": steps,
        "overrides": NETWORK_CONFIGS,
        "parameters": {
            name: sum(p.numel() for p in t.vae.parameters()) for name, t in trainers.items()
        },
        "seconds_per_step": {name: round(v, 5) for name, v in per_step.items()},
        "seconds_per_epoch": {
            name: round(v * data.num_train / 100, 1) for name, v in per_step.items()
        },
        "ratio_to_mlp": {name: round(ratio(per_round, name, "mlp"), 3) for name in trainers},
    }


def networks_markdown(res: dict[str, Any], device: str) -> list[str]:
    lines = [
        f"## {device}: networks (batch 100, the default step; an epoch is 600 steps)",
        "",
        "| configuration | overrides | parameters | s/step | s/epoch | ratio to mlp |",
        "|---|---|---|---|---|---|",
    ]
    for name, overrides in res["overrides"].items():
        lines.append(
            f"| {name} | `{' '.join(overrides) or '(defaults)'}` | {res['parameters'][name]:,} "
            f"| {res['seconds_per_step'][name]:.4f} | {res['seconds_per_epoch'][name]:.1f} "
            f"| {res['ratio_to_mlp'][name]:.2f} |"
        )
    return [*lines, ""]


def bench_evaluation(
    data: RunData,
    device: str,
    rounds: int,
    points: int,
    k: int,
    overrides: tuple[str, ...] = (),
    hidden: tuple[int, ...] = (500,),
    z_dim: int = 20,
    chunk: int = 10,
) -> dict[str, Any]:
    """importance_log_likelihood against the plain loop (``chunk`` points at a time, all K
    samples of a chunk in one pass), on the same weights; the points are split into
    ``rounds`` slices, each evaluated by both in turn. ``overrides``: the project's model
    (``hidden`` and ``z_dim`` are the plain one's)."""
    torch.manual_seed(0)
    cfg = compose_config([f"device={device}", *overrides])
    vae = build_model(cfg, data.x_dim, data.num_train).to(device).eval()
    plain = PlainVAE(data.x_dim, hidden, z_dim).to(device).eval()
    linear = [[m for m in net.modules() if isinstance(m, nn.Linear)] for net in (plain, vae)]
    assert [m.weight.shape for m in linear[0]] == [m.weight.shape for m in linear[1]]
    for p, v in zip(*linear, strict=True):  # encoder trunk, mu, log var, decoder trunk, out
        p.load_state_dict(v.state_dict())
    x = torch.bernoulli(data.test[:points], generator=torch.Generator(device).manual_seed(1))
    # Round r evaluates slice r - 1; the warm-up round a few points of its own.
    slices = [x[:10], *x.chunk(rounds)]
    results: dict[str, list[torch.Tensor]] = {"plain": [], "project": []}

    @torch.no_grad()
    def plain_loop(r: int) -> None:
        x = slices[r]
        results["plain"].append(
            torch.cat([plain.log_likelihood(x[s : s + chunk], k) for s in range(0, len(x), chunk)])
        )

    def project(r: int) -> None:
        results["project"].append(importance_log_likelihood(vae, slices[r], k))

    times = interleaved({"plain": plain_loop, "project": project}, rounds, 1, device)
    return {
        "overrides": list(overrides),
        "plain_chunk": chunk,
        "points": points,
        "importance_samples": k,
        "rounds": rounds,
        "seconds": {name: round(sum(ts), 3) for name, ts in times.items()},
        "ratio_to_baseline": round(ratio(times, "project", "plain"), 4),
        "mean_log_likelihood": {
            name: round(torch.cat(v[1:]).mean().item(), 3) for name, v in results.items()
        },
        "seconds_by_round": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
    }


def bench_variance(data: RunData, device: str, rounds: int, repeats: int) -> dict[str, Any]:
    """R gradient estimates of the lab (Trace_ELBO) against a plain autograd loop."""
    torch.manual_seed(0)
    cfg = compose_config([f"device={device}"])
    vae = build_model(cfg, data.x_dim, data.num_train).to(device)
    elbo = build_estimator("trace_elbo", num_particles=1)
    idx, x = next(Minibatches(data.train, 100, seed=0, device=device).epoch(0))
    plain = PlainVAE(data.x_dim).to(device)
    params = list(plain.parameters())
    n = float(data.num_train)

    def plain_loop(r: int) -> None:
        moments = Moments(sum(p.numel() for p in params), device)
        for _ in range(repeats):
            loss = -plain.elbo(x, "a").sum() * (n / x.shape[0])
            grads = torch.autograd.grad(loss, params)
            moments.add(torch.cat([g.reshape(-1) for g in grads]) / n)

    def project(r: int) -> None:
        gradient_statistics(elbo, vae, x, idx, repeats)

    times = interleaved({"plain": plain_loop, "project": project}, rounds, 1, device)
    return {
        "repeats": repeats,
        "batch_size": 100,
        "estimator": "trace_elbo",
        "seconds": {name: round(statistics.median(ts), 3) for name, ts in times.items()},
        "ratio_to_baseline": round(ratio(times, "project", "plain"), 4),
    }


def profile_steps(data: RunData, device: str, overrides: list[str], steps: int = 300) -> str:
    """cProfile of ``steps`` project steps (minibatch drawing included), by own time."""
    trainer = ProjectTrainer(overrides, data, 100, device)
    for _ in range(20):
        trainer.step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        trainer.step()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    return f"# {steps} steps, batch 100, overrides {overrides}\n" + out.getvalue()


# ---------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": torch.multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Benchmark: pyro-vae against plain PyTorch",
        "",
        f"Command: `{result['command']}` ({result['seconds']:.0f} s).",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['torch_threads']} torch "
        f"threads; torch {m['torch']}, pyro {m['pyro']}, Python {m['python']}"
        + (f"; GPU {m['cuda_device']}" if "cuda_device" in m else "")
        + ".",
        "",
        "Ratios are time per step over the baseline's (the plain-PyTorch loop; for the "
        "networks, the paper's MLP), medians over alternating rounds in one process (below "
        "1: faster than the baseline).",
        "",
    ]
    for device, res in result["devices"].items():
        if "networks" in res:
            lines += networks_markdown(res["networks"], device)
        if "evaluation_k5000" in res:
            lines += k5000_markdown(res["evaluation_k5000"], device)
        if "training" not in res:
            continue
        lines += [
            f"## {device}: training",
            "",
            "| configuration | batch | examples/s | baseline | ratio |",
            "|---|---|---|---|---|",
        ]
        for t in res["training"]:
            eps = t["examples_per_second"]
            for name in eps:
                if name not in t["ratio_to_baseline"]:
                    lines.append(f"| {name} | {t['batch_size']} | {eps[name]:.0f} | | |")
                else:
                    r = t["ratio_to_baseline"][name]
                    lines.append(
                        f"| {name} | {t['batch_size']} | {eps[name]:.0f} "
                        f"| {r['baseline']} | {r['ratio']:.3f} |"
                    )
        ev, var = res["evaluation"], res["variance"]
        lines += [
            "",
            f"## {device}: importance sampling and variance lab",
            "",
            "| measurement | plain s | project s | ratio |",
            "|---|---|---|---|",
            evaluation_row(ev),
            f"| variance lab, R={var['repeats']} gradient estimates, batch {var['batch_size']} "
            f"| {var['seconds']['plain']:.2f} | {var['seconds']['project']:.2f} "
            f"| {var['ratio_to_baseline']:.3f} |",
            "",
            f"Mean log p(x) on the same weights: plain {ev['mean_log_likelihood']['plain']}, "
            f"project {ev['mean_log_likelihood']['project']}.",
            "",
        ]
    return "\n".join(lines)


def evaluation_row(ev: dict[str, Any]) -> str:
    """The Markdown table row of a :func:`bench_evaluation` result."""
    return (
        f"| log p(x), K={ev['importance_samples']}, {ev['points']} test points "
        f"| {ev['seconds']['plain']:.2f} | {ev['seconds']['project']:.2f} "
        f"| {ev['ratio_to_baseline']:.3f} |"
    )


def bench_k5000(data: RunData, device: str, rounds: int, points: int) -> dict[str, Any]:
    """:func:`bench_evaluation` at K = 5000 on +experiment=iwae's 784-200-200-50 model; the
    plain loop takes 2 points (10,000 samples) a pass, the memory of the K = 1000 loop's."""
    res = bench_evaluation(
        data, device, rounds, points, 5000, ("+experiment=iwae",), (200, 200), 50, chunk=2
    )
    print(f"{device} importance sampling K=5000 / plain = {res['ratio_to_baseline']}")
    return res


def k5000_markdown(ev: dict[str, Any], device: str) -> list[str]:
    return [
        f"## {device}: importance sampling at K = 5000 (`{' '.join(ev['overrides'])}`)",
        "",
        "| measurement | plain s | project s | ratio |",
        "|---|---|---|---|",
        evaluation_row(ev),
        "",
        f"Mean log p(x) on the same (untrained) weights: plain "
        f"{ev['mean_log_likelihood']['plain']}, project {ev['mean_log_likelihood']['project']}. "
        f"At this speed the 10,000 test images take "
        f"{ev['seconds']['project'] / ev['points'] * 10000 / 60:.0f} minutes.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--eval-rounds", type=int, default=10)
    parser.add_argument("--devices", default=None, help="default: cpu, and cuda when present")
    # default: pyro-vae's own lookup (./data, then MNIST from experiments/data)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="a few rounds, to check the script")
    parser.add_argument(
        "--profile", action="store_true", help="also write cProfile tables of the training step"
    )
    parser.add_argument(
        "--networks",
        action="store_true",
        help="only the networks' seconds per epoch (conv, categorical, against the MLP), "
        "written to networks.json and networks.md",
    )
    parser.add_argument(
        "--k5000",
        action="store_true",
        help="only the importance-sampled log p(x) at the literature's K = 5000 on Burda et "
        "al.'s 784-200-200-50 model (+experiment=iwae), written to k5000.json and k5000.md",
    )
    args = parser.parse_args()
    devices = (args.devices or ("cpu,cuda" if torch.cuda.is_available() else "cpu")).split(",")
    rounds, eval_rounds = (3, 2) if args.quick else (args.rounds, args.eval_rounds)
    out = Path(args.out or ROOT / "experiments" / "results" / f"benchmark{'-smoke' * args.quick}")
    command = "python experiments/benchmark.py" + " --quick" * args.quick
    command += " --profile" * args.profile + " --networks" * args.networks + " --k5000" * args.k5000
    if args.rounds != 25 or args.eval_rounds != 10:
        command += f" --rounds {args.rounds} --eval-rounds {args.eval_rounds}"
    start = time.perf_counter()
    result: dict[str, Any] = {"command": command, "machine": machine(), "devices": {}}
    for device in devices:
        data_dir = [f"data_dir={args.data_dir}"] if args.data_dir else []
        data = load_data(as_plain(compose_config(data_dir)), device)
        res: dict[str, Any] = {}
        points = 20 if args.quick else 200
        if args.k5000:
            res["evaluation_k5000"] = bench_k5000(data, device, eval_rounds, points)
            result["devices"][device] = res
            continue
        grey_cfg = [*data_dir, "dataset.binarize=none", "likelihood=categorical"]
        grey = load_data(as_plain(compose_config(grey_cfg)), device)
        res["networks"] = bench_networks(data, grey, device, max(2, rounds // 5), 3)
        print(f"{device} networks: {res['networks']['seconds_per_epoch']} s/epoch")
        if args.networks:
            result["devices"][device] = res
            continue
        res["training"] = []
        # About 0.15 s of work per configuration and round at 2 CPU cores: short rounds,
        # so that a burst of load from elsewhere spoils few of them.
        for batch_size, steps in ((100, 15), (1000, 3)):
            t = bench_training(data, batch_size, device, rounds, steps)
            res["training"].append(t)
            for name, r in t["ratio_to_baseline"].items():
                print(f"{device} batch {batch_size}: {name} / {r['baseline']} = {r['ratio']:.3f}")
        points = 100 if args.quick else 1000
        res["evaluation"] = bench_evaluation(data, device, eval_rounds, points, 1000)
        print(f"{device} importance sampling / plain = {res['evaluation']['ratio_to_baseline']}")
        res["evaluation_k5000"] = bench_k5000(data, device, eval_rounds, points)
        res["variance"] = bench_variance(data, device, max(2, eval_rounds // 2), 100)
        print(f"{device} variance lab / plain = {res['variance']['ratio_to_baseline']}")
        result["devices"][device] = res
        if args.profile:
            out.mkdir(parents=True, exist_ok=True)
            for name in ("default", "fast_b"):
                text = profile_steps(data, device, PROJECT_CONFIGS[name][1])
                (out / f"profile_{device}_{name}.txt").write_text(text)
    result["seconds"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    stem = "networks" if args.networks else "k5000" if args.k5000 else "benchmark"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
