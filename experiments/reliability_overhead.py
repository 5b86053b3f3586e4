"""What the fault handling costs: the NaN/Inf checks per step and a checkpoint write.

Both are timed against a baseline in the same process, interleaved in rounds (the order
alternating) so that machine load hits both alike; the figures are medians over rounds,
the ratio the median of the per-round ratios.

- step: one AEVB step (``AEVB.step``: Pyro's ``Trace_ELBO.loss_and_grads``, then
  ``guarded_step`` of the torch Adam optimiser) on the paper's MNIST model (784-500-20,
  minibatch 100) with the loss and gradient-norm checks, against the same step with
  the checks removed (``loss_and_grads``, a bare ``optimizer.step()`` and ``zero_grad``),
  and the check alone (the global gradient norm of that model's gradients, and ``isfinite``);
- checkpoint: ``RunDir.save_checkpoint`` of a full training state (SHA-256 digest,
  previous checkpoint kept, directory fsync) against the plain atomic write of the
  same ``torch.save`` bytes.

    python experiments/reliability_overhead.py [--rounds 30] [--steps 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import AEVB, RunDir
from pyro_vae.atomic import atomic_write
from pyro_vae.config import build_model, build_training_method, compose_config

RESULTS = Path(__file__).parent / "results" / "reliability_overhead.json"


class Unchecked:
    """``AEVB.step`` with the checks removed: the loss is not checked, the optimiser steps
    without the gradient-norm check."""

    def __init__(self, method: AEVB):
        self.method = method

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float:
        m = self.method
        loss = m.elbo.loss_and_grads(m.vae.model, m.vae.guide, x, idx)
        m.optimizer.step()
        m.optimizer.zero_grad(set_to_none=True)
        return loss


def time_steps(method: AEVB | Unchecked, x: torch.Tensor, idx: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        method.step(x, idx)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default=str(RESULTS), help=f"default {RESULTS}")
    args = parser.parse_args()

    pyro.set_rng_seed(0)
    cfg = compose_config([])
    x = torch.rand(100, 784).bernoulli()
    idx = torch.arange(100)
    vaes = [build_model(cfg, 784, num_data=60000) for _ in range(2)]
    checked = build_training_method(cfg, vaes[0])
    plain = Unchecked(build_training_method(cfg, vaes[1]))
    for method in (checked, plain):  # warm-up
        time_steps(method, x, idx, 10)
    step = {"checked": [], "unchecked": []}
    for r in range(args.rounds):
        for name in ("checked", "unchecked")[:: 1 if r % 2 == 0 else -1]:
            method = checked if name == "checked" else plain
            step[name].append(time_steps(method, x, idx, args.steps))
    ratios = [c / u for c, u in zip(step["checked"], step["unchecked"], strict=True)]

    checked.loss_and_grads(x, idx)  # gradients to check
    grads = [p.grad for p in vaes[0].parameters()]
    check = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps):
            torch.isfinite(torch.nn.utils.get_total_norm(grads)).item()
        check.append((time.perf_counter() - start) / args.steps)

    state = {
        "model": vaes[0].state_dict(),
        "method": checked.state_dict(),
        "rng": pyro.util.get_rng_state(),
        "position": {"epoch": 1, "batch": 3, "step": 603},
    }
    save = {"save_checkpoint": [], "plain_atomic_write": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        for _ in range(args.rounds):
            start = time.perf_counter()
            run.save_checkpoint(state)
            save["save_checkpoint"].append(time.perf_counter() - start)
            start = time.perf_counter()
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write(Path(tmp) / "plain.pt", buf.getvalue())
            save["plain_atomic_write"].append(time.perf_counter() - start)
        size = (Path(tmp) / "checkpoints" / "last.pt").stat().st_size

    med = {k: statistics.median(v) for k, v in {**step, **save}.items()}
    result = {
        "command": "python experiments/reliability_overhead.py "
        f"--rounds {args.rounds} --steps {args.steps}",
        "torch_threads": torch.get_num_threads(),
        "step_ms_checked": round(1e3 * med["checked"], 3),
        "step_ms_unchecked": round(1e3 * med["unchecked"], 3),
        "step_ratio_checked_over_unchecked": round(statistics.median(ratios), 4),
        "check_alone_ms": round(1e3 * statistics.median(check), 3),
        "checkpoint_bytes": size,
        "checkpoint_ms_save_checkpoint": round(1e3 * med["save_checkpoint"], 2),
        "checkpoint_ms_plain_atomic_write": round(1e3 * med["plain_atomic_write"], 2),
        "step_ms_all_rounds": {k: [round(1e3 * t, 3) for t in v] for k, v in step.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "step_ms_all_rounds"}, indent=2))


if __name__ == "__main__":
    main()
