"""The variance lab: how noisy each ELBO gradient estimator is, at a checkpoint and over training.

``pyro-vae variance RUN_DIR`` takes one minibatch of the run's training data (fixed by
``seed``: the first minibatch a run with that seed would see) and, at each checkpoint, for
each number of particles L and each estimator, draws R independent gradient estimates of
the per-datapoint bound, g = grad (-loss / N) (all estimators are compared on this one
scale). For the encoder parameters (phi) and the decoder and prior parameters (theta)
separately it reports

- ``total_variance``: tr Cov[g] = sum_p Var[g_p] (unbiased sample variances);
- ``mean_snr``: the mean over parameters of |E g_p| / sd g_p (Rainforth et al. 2018),
  over parameters whose gradient varies; with R repeats it cannot fall below about
  1/sqrt(R) even where E g_p = 0, since |mean| is then of the order sd/sqrt(R);
- ``relative_variance``: tr Cov[g] / ||E g||^2, with ||E g||^2 estimated without bias by
  ||mean||^2 - tr Cov / R; ``inf`` when that is not positive (R repeats do not resolve the
  mean gradient from the noise);
- ``seconds_per_estimate``: wall time of one estimate (forward and backward).

``groups=layer`` splits phi and theta by layer (``phi:trunk.0``, ``phi:loc``,
``theta:logits``, ...) and ``groups=parameter`` by tensor.

Moments are accumulated one estimate at a time in float64 (Welford), so memory does not
grow with R. A tight loop of R estimates is used: each is one vectorised forward and
backward pass of the minibatch, which keeps the 2 cores busy; R full gradient copies
are never stored.

:func:`gradient_variance` is the same lab on any Pyro model and guide (your own site
names, ``pyro.module``/``pyro.param`` parameters, one data plate), grouped by the names in
Pyro's param store. Both labs go through one loop, :func:`gradient_moments`.
"""

from __future__ import annotations

import csv
import inspect
import io
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.util
import torch
import yaml
from matplotlib.figure import Figure
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from .atomic import atomic_write
from .checks import SEED, integer, is_int
from .data import Minibatches
from .errors import ArgumentError, EstimatorError, RunDirError, refuse
from .estimators import ESTIMATORS, build_estimator
from .estimators.base import same_random_state
from .evaluate import check_model_data
from .model import VAE
from .plots import save_figure
from .runs import checkpoint_to_load, load_run
from .training.loggers import log_to_run
from .training.rundir import LAST_CHECKPOINT, RunDir, load_model_state

logger = logging.getLogger(__name__)

GROUPS = ("phi", "theta")
COLUMNS = (
    "checkpoint",
    "epoch",
    "estimator",
    "num_particles",
    "group",
    "repeats",
    "batch_size",
    "bound",
    "total_variance",
    "mean_snr",
    "relative_variance",
    "mean_grad_norm_sq",
    "seconds_per_estimate",
)
OUTPUT_DIR = "variance"


@dataclass(frozen=True)
class EstimatorSpec:
    """An estimator as the lab names it: its name, its parameters, and a label for tables."""

    cfg: dict[str, Any]

    @classmethod
    def of(cls, name: str, **params: Any) -> EstimatorSpec:
        """``name`` with ``params`` over the estimator's defaults (so the label shows them)."""
        if name not in ESTIMATORS:
            raise ArgumentError.refuse("estimators", name, f"names among {sorted(ESTIMATORS)}")
        signature = inspect.signature(ESTIMATORS[name]).parameters
        defaults = {
            k: p.default
            for k, p in signature.items()
            if k not in ("num_particles", "max_plate_nesting")
            and p.default is not inspect.Parameter.empty
        }
        return cls({"name": name, **defaults, **params})

    @property
    def label(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.cfg.items() if k != "name")
        return f"{self.cfg['name']} {params}".strip()


def parse_estimators(text: str | None) -> list[EstimatorSpec]:
    """``"sgvb_a,score_function:baseline=none"`` -> specs, each completed with the
    estimator's defaults; ``None`` gives every registered estimator."""
    names = text.split(",") if text else sorted(ESTIMATORS)
    specs = []
    for item in names:
        name, *params = item.strip().split(":")
        if name not in ESTIMATORS:
            raise ArgumentError.refuse(
                "estimators",
                name,
                f"one of {sorted(ESTIMATORS)}, optionally with parameters as in "
                "score_function:baseline=none",
            )
        given = {}
        for param in params:
            key, sep, value = param.partition("=")
            if not sep:
                raise ArgumentError(f"estimator parameter {param!r} is not key=value")
            given[key] = yaml.safe_load(value)  # YAML typing, as on the command line
        specs.append(EstimatorSpec.of(name, **given))
    return specs


def resolve_checkpoints(run: RunDir, checkpoints: str) -> list[str]:
    """``last`` (last.pt, else the latest snapshot), ``all`` (every snapshot, in epoch order)
    or a comma-separated list of file names in ``<run_dir>/checkpoints``."""
    snapshots = [p.name for _, p in run.snapshots()]
    if checkpoints == "all":
        names = snapshots
    elif checkpoints == "last":
        has_last = (run.checkpoint_dir / LAST_CHECKPOINT).is_file()
        names = [LAST_CHECKPOINT] if has_last else snapshots[-1:]
    else:
        names = [c.strip() for c in checkpoints.split(",") if c.strip()]
    if not names:
        raise RunDirError(f"{run.checkpoint_dir} holds no checkpoint (checkpoints={checkpoints})")
    return names


#: Prefixes of a VAE's recognition parameters (phi) in ``named_parameters``.
PHI_PREFIXES = ("encoder.", "stack.up.")


def parameter_group(name: str) -> str:
    """phi for the encoder's parameters (and the upper layers' q); theta for the rest
    (decoder, learnable prior, upper layers' p)."""
    return "phi" if name.startswith(PHI_PREFIXES) else "theta"


#: ``groups=`` by name: how parameters are grouped (see :func:`vae_grouping` for a VAE's
#: ``named_parameters`` and :func:`store_grouping` for Pyro's param store names).
GROUPINGS = ("module", "layer", "parameter", "site")
GroupSpec = str | Callable[[str], str | None] | None


def _allowed_groups() -> str:
    return f"one of {list(GROUPINGS)} or a callable name -> group name (None leaves it out)"


def _layer(path: str) -> str:
    """``trunk.0.weight`` -> ``trunk.0``; a name without a component to drop stays as it is."""
    head, _, _ = path.rpartition(".")
    return head or path


def check_groups(groups: GroupSpec) -> None:
    """Refuse a ``groups=`` value that is not a grouping's name, None or a callable."""
    if not (
        groups is None or callable(groups) or (isinstance(groups, str) and groups in GROUPINGS)
    ):
        raise refuse("groups", groups, _allowed_groups())


def site_grouping(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    named: Sequence[tuple[str, torch.Tensor]],
) -> Callable[[str], str | None]:
    """``groups=site``: each parameter under the sample sites whose distribution it enters
    directly, ``q:<site>`` for the guide's and ``p:<site>`` for the model's (a VAE's
    encoder under ``q:z``, its decoder under ``p:x``, a two-layer VAE's upper recognition
    layer under ``q:z2``); one that enters several sites is under their names joined by
    ``+``, one that enters none is left out. Found from one run of the guide, and of the
    guide and the model again at its values held fixed, so a parameter is not counted at
    a site it reaches only through an earlier sample; the random state is left as it was.
    """
    tensors = [t for _, t in named]
    owners: dict[str, list[str]] = {name: [] for name, _ in named}
    with same_random_state(), poutine.block(), torch.enable_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        fixed = guide_trace.copy()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                fixed.nodes[name] = {**site, "value": site["value"].detach()}
        for prefix, fn in (("q", guide), ("p", model)):
            trace = poutine.trace(poutine.replay(fn, trace=fixed)).get_trace(*args, **kwargs)
            trace = prune_subsample_sites(trace)
            trace.compute_log_prob()
            for site_name, site in trace.nodes.items():
                if site["type"] != "sample" or not site["log_prob"].requires_grad:
                    continue
                grads = torch.autograd.grad(
                    site["log_prob"].sum(), tensors, allow_unused=True, retain_graph=True
                )
                for (name, _), g in zip(named, grads, strict=True):
                    if g is not None:
                        owners[name].append(f"{prefix}:{site_name}")
    return lambda name: "+".join(owners.get(name, [])) or None


def vae_grouping(groups: GroupSpec = "module") -> Callable[[str], str | None]:
    """Group of a :class:`~pyro_vae.model.VAE` parameter, from its ``named_parameters`` name.

    ``module``: ``phi`` (encoder) and ``theta`` (decoder, learnable prior). ``layer``: the
    layer within those, ``phi:trunk.0``, ``phi:loc``, ``theta:logits``, ``theta:prior``
    (the name without ``encoder.``/``decoder.`` and without its last component).
    ``parameter``: one group per tensor, ``phi:trunk.0.weight``. A callable takes the name.
    ``site`` needs the model's traces: :func:`site_grouping`.
    """
    if callable(groups):
        return groups
    if groups in (None, "module"):
        return parameter_group

    def within(name: str) -> str:
        top = parameter_group(name)
        path = name.removeprefix("encoder.") if top == "phi" else name.removeprefix("decoder.")
        path = path.removeprefix("stack.")
        return f"{top}:{_layer(path) if groups == 'layer' else path}"

    if groups in ("layer", "parameter"):
        return within
    raise refuse("groups", groups, _allowed_groups())


def store_grouping(groups: GroupSpec = None) -> Callable[[str], str | None]:
    """Group of a parameter from its name in Pyro's param store.

    ``module`` (the default): the module registered with ``pyro.module`` (the name before
    the first ``$$$``: ``encoder$$$fc1.weight`` -> ``encoder``); a plain ``pyro.param`` is
    a group of its own, under its name. ``layer``: the name without its last component
    (``encoder$$$fc1.weight`` -> ``encoder$$$fc1``; a parameter of the module itself, as
    ``encoder$$$weight``, goes to ``encoder``). ``parameter``: one group per tensor. A
    callable takes the name and returns the group (None leaves the parameter out).
    """
    if callable(groups):
        return groups

    def module(name: str) -> str:
        return name.partition(_MODULE_DIVIDER)[0]

    def layer(name: str) -> str:
        owner, sep, path = name.partition(_MODULE_DIVIDER)
        if not sep:
            return _layer(name)
        head = path.rpartition(".")[0]
        return f"{owner}{sep}{head}" if head else owner

    chosen = {None: module, "module": module, "layer": layer, "parameter": str}
    if not isinstance(groups, str | None) or groups not in chosen:
        raise refuse("groups", groups, _allowed_groups())
    return chosen[groups]


_MODULE_DIVIDER = "$$$"  # pyro.module's separator between module and parameter names


class Moments:
    """Running mean and sum of squared deviations of a vector (Welford's update, float64)."""

    def __init__(self, size: int, device: torch.device | str = "cpu"):
        self.count = 0
        self.mean = torch.zeros(size, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(size, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def summary(self) -> dict[str, float]:
        """Total variance, mean SNR, relative variance and ||E g||^2 (see the module doc)."""
        var = self.m2 / (self.count - 1)
        total = var.sum().item()
        norm_sq = (self.mean.square().sum() - var.sum() / self.count).item()
        varies = var > 0
        snr = (self.mean[varies].abs() / var[varies].sqrt()).mean().item() if varies.any() else 0.0
        return {
            "total_variance": total,
            "mean_snr": snr,
            "relative_variance": total / norm_sq if norm_sq > 0 else math.inf,
            "mean_grad_norm_sq": norm_sq,
        }


def group_members(
    names: Sequence[str], group_of: Callable[[str], str | None]
) -> dict[str, list[int]]:
    """Group name -> indices of its parameters, groups in order of first appearance;
    a parameter whose group is None is left out."""
    members: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        group = group_of(name)
        if group is not None:
            members.setdefault(str(group), []).append(i)
    return members


def gradient_moments(
    loss: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    members: dict[str, list[int]],
    repeats: int,
    divisor: float = 1.0,
) -> dict[str, Any]:
    """The lab's one loop: R = ``repeats`` draws of g = grad(``loss()`` / ``divisor``) with
    respect to ``params``, accumulated per group of ``members`` (group -> indices into
    ``params``) by :class:`Moments`; returns each group's :meth:`Moments.summary`, the mean
    of -loss / divisor (``bound``) and the seconds per estimate (forward and backward).

    Gradients come from ``torch.autograd.grad``: the parameters' ``.grad`` is not touched.
    """
    device = params[0].device if params else "cpu"
    moments = {
        g: Moments(sum(params[i].numel() for i in m), device) for g, m in members.items() if m
    }
    seconds, bound = 0.0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        value = loss()
        grads = torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)
        seconds += time.perf_counter() - start
        bound += -value.item() / divisor / repeats
        for g, m in moments.items():
            m.add(torch.cat([grads[i].reshape(-1) for i in members[g]]) / divisor)
    return {
        "bound": bound,
        "seconds_per_estimate": seconds / repeats,
        "groups": {g: m.summary() for g, m in moments.items()},
    }


def gradient_statistics(
    elbo: Any,
    vae: VAE,
    x: torch.Tensor,
    idx: torch.Tensor,
    repeats: int,
    groups: GroupSpec = "module",
) -> dict[str, Any]:
    """R = ``repeats`` independent estimates of grad(-loss / N) on (x, idx): per group
    :meth:`Moments.summary`, and the mean bound and seconds per estimate.

    ``groups``: ``module`` (phi, theta), ``layer``, ``parameter`` or a callable
    (:func:`vae_grouping`); phi's groups come before theta's.
    """
    named = [(n, p) for n, p in vae.named_parameters() if p.requires_grad]
    if groups == "site":
        group_of = site_grouping(vae.model, vae.guide, (x, idx), {}, named)
    else:
        group_of = vae_grouping(groups)
    members = group_members([n for n, _ in named], group_of)
    if not callable(groups):  # phi's (q's) groups first, whatever the order of the modules
        members = dict(sorted(members.items(), key=lambda kv: not kv[0].startswith(("phi", "q:"))))
    return gradient_moments(
        lambda: elbo.differentiable_loss(vae.model, vae.guide, x, idx),
        [p for _, p in named],
        members,
        repeats,
        float(vae.num_data or x.shape[0]),
    )


def _checkpoint_epoch(state: dict[str, Any]) -> float | None:
    if "epoch" in state:
        return state["epoch"]
    return state.get("position", {}).get("epoch")


def estimator_variance(
    vae: VAE,
    x: torch.Tensor,
    idx: torch.Tensor | None = None,
    estimators: Sequence[str | EstimatorSpec] | None = None,
    num_particles: Sequence[int] = (1,),
    repeats: int = 100,
    seed: int = 0,
    groups: GroupSpec = "module",
) -> list[dict[str, Any]]:
    """Gradient variance of each estimator on the minibatch ``x`` (dataset indices ``idx``):
    one row per (L, estimator, parameter group) with :meth:`Moments.summary`'s measures,
    the mean bound and the seconds per estimate.

    ``estimators``: names (``"stl"``), ``"score_function:baseline=none"`` strings,
    (name, parameters) pairs or :class:`EstimatorSpec`; all registered ones by default.
    Each estimator's R estimates start from the random state ``seed``. An estimator that
    cannot run on this model (``sgvb_b`` with a mixture prior) is skipped with a warning.
    ``groups``: ``module`` (phi and theta), ``layer`` (``phi:trunk.0``, ...), ``parameter``
    or a callable name -> group (:func:`vae_grouping`).
    """
    num_particles = _check_lab(repeats, num_particles, seed)
    specs = estimator_specs(estimators)
    check_groups(groups)  # refuse a bad value before any estimate
    if not isinstance(vae, VAE):
        raise refuse("vae", vae, "a pyro_vae.VAE (gradient_variance takes any Pyro model)")
    x = check_model_data(vae, x, "x")
    if idx is None:
        idx = torch.arange(x.shape[0], device=x.device)
    elif not (
        isinstance(idx, torch.Tensor)
        and not idx.is_floating_point()
        and tuple(idx.shape) == (x.shape[0],)
    ):
        raise refuse("idx", idx, f"None or an integer tensor of the {x.shape[0]} points' indices")

    def measure(elbo: Any) -> dict[str, Any]:
        return gradient_statistics(elbo, vae, x, idx, repeats, groups)

    skipped: list[str] = []
    extra = {"batch_size": x.shape[0]}
    rows = _lab_rows(specs, num_particles, repeats, seed, measure, extra, skipped)
    if not rows:
        raise EstimatorError("variance: every estimator was skipped: " + "; ".join(skipped))
    return rows


def estimator_specs(estimators: Any) -> list[EstimatorSpec]:
    """The lab's estimators from None (every registered one), a comma-separated string, or
    a sequence of names, ``name:key=value`` strings, (name, parameters) pairs and
    :class:`EstimatorSpec`."""
    if estimators is None or isinstance(estimators, str):
        return parse_estimators(estimators)
    specs: list[EstimatorSpec] = []
    for item in estimators:
        if isinstance(item, EstimatorSpec):
            specs.append(item)
        elif isinstance(item, str):
            specs += parse_estimators(item)
        elif (
            isinstance(item, tuple | list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], Mapping)
        ):
            specs.append(EstimatorSpec.of(item[0], **item[1]))
        else:
            raise refuse(
                "estimators",
                item,
                "names, 'name:key=value' strings, (name, parameters) pairs or EstimatorSpec",
            )
    if not specs:
        raise refuse("estimators", estimators, "at least one estimator")
    return specs


def _lab_rows(
    specs: Sequence[EstimatorSpec],
    num_particles: Sequence[int],
    repeats: int,
    seed: int | None,
    measure: Callable[[Any], dict[str, Any]],
    extra: dict[str, Any] | None = None,
    skipped: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (L, estimator, group) of ``measure(elbo)`` (:func:`gradient_moments`'s
    result), with ``extra`` after ``repeats``; each estimator starts from the random state
    ``seed`` (unless None). An estimator refused with an :class:`ArgumentError` is skipped
    with a warning (and its message appended to ``skipped``)."""
    rows = []
    for num in num_particles:
        for spec in specs:
            if seed is not None:
                pyro.set_rng_seed(seed)
            try:
                elbo = build_estimator(spec.cfg, num)
                stats = measure(elbo)
            except ArgumentError as e:
                # E.g. sgvb_b on a run with a mixture prior: the others still run.
                logger.warning("variance: skipped %s at L=%d: %s", spec.label, num, e)
                if skipped is not None:
                    skipped.append(f"{spec.label} at L={num}: {e}")
                continue
            for group, summary in stats["groups"].items():
                rows.append(
                    {
                        "estimator": spec.label,
                        "num_particles": num,
                        "group": group,
                        "repeats": repeats,
                        **(extra or {}),
                        "bound": stats["bound"],
                        **summary,
                        "seconds_per_estimate": stats["seconds_per_estimate"],
                    }
                )
    return rows


def _check_lab(repeats: Any, num_particles: Any, seed: Any = 0) -> list[int]:
    """Refuse a bad ``repeats`` (an integer >= 2), ``num_particles`` (an integer >= 1 or a
    non-empty list of them) or ``seed`` (0..2^32-1, or None where the lab takes None);
    returns the numbers of particles as a list."""
    integer(2).check("repeats", repeats)
    counts = [num_particles] if is_int(num_particles) else num_particles
    if not (
        isinstance(counts, list | tuple) and counts and all(integer(1).accepts(k) for k in counts)
    ):
        raise ArgumentError.refuse(
            "num_particles", num_particles, "an integer >= 1 or a non-empty list of them"
        )
    SEED.check("seed", seed, nullable=True)
    return list(counts)


# ---------------------------------------------------------------------------------------
# The lab on any Pyro model and guide


def gradient_variance(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    estimators: Any = None,
    repeats: int = 100,
    groups: GroupSpec = None,
    num_particles: int | Sequence[int] = 1,
    per_datapoint: bool = True,
    seed: int | None = 0,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Gradient variance of ELBO estimators on your own Pyro ``model`` and ``guide``,
    called with ``*args`` and ``**kwargs`` (the keywords above are the lab's).

    For each L in ``num_particles`` and each estimator, R = ``repeats`` independent
    estimates of g = grad(loss / N) with respect to the parameters in Pyro's param store
    that the model and guide use (``pyro.module``, ``pyro.param``), where loss is the
    estimator's ``differentiable_loss`` (minus the bound at full-data scale) and N the size
    of the plate every sample site lies in (the full size, when the plate subsamples):
    g is the gradient of minus the per-datapoint bound, as in the run lab. With
    ``per_datapoint=False`` N = 1: the loss as the estimator returns it (and no plate is
    needed, for estimators that need none).

    Returns one dict per (L, estimator, group): ``estimator``, ``num_particles``, ``group``,
    ``repeats``, ``bound`` (mean of -loss / N), ``total_variance``, ``mean_snr``,
    ``relative_variance``, ``mean_grad_norm_sq`` (see the module doc),
    ``seconds_per_estimate``, ``num_params`` (scalars in the group) and ``num_data`` (N).

    ``estimators``: names (``"stl"``), ``"score_function:baseline=none"`` strings,
    (name, parameters) pairs, :class:`EstimatorSpec`, or None for every registered one;
    one the model cannot take is skipped with a warning (all refused: the error).
    ``groups``: ``"module"`` (default: one group per ``pyro.module`` name, each plain
    ``pyro.param`` a group of its own), ``"layer"``, ``"parameter"`` or a callable
    name -> group (:func:`store_grouping`). ``seed``: each estimator's R estimates start
    from it (so ``trace_elbo`` and ``sgvb_a`` see the same noise); the global random state
    is restored afterwards. None: no reseeding.

    Parameters keep their values and ``.grad``; parameters this call put into the param
    store (a model never run before) are removed from it again.
    """
    counts = _check_lab(repeats, num_particles, seed)
    if not isinstance(per_datapoint, bool):
        raise refuse("per_datapoint", per_datapoint, "True or False")
    specs = estimator_specs(estimators)
    check_groups(groups)
    store = pyro.get_param_store()
    known = set(store.keys())
    rng = pyro.util.get_rng_state() if seed is not None else None
    try:
        names, params, num_data = _traced_parameters(model, guide, args, kwargs, per_datapoint)
        if groups == "site":
            named = list(zip(names, params, strict=True))
            group_of = site_grouping(model, guide, args, kwargs, named)
        else:
            group_of = store_grouping(groups)
        members = group_members(names, group_of)
        if not members:
            raise refuse("groups", groups, f"a grouping that keeps some of {names}")

        def measure(elbo: Any) -> dict[str, Any]:
            return gradient_moments(
                lambda: elbo.differentiable_loss(model, guide, *args, **kwargs),
                params,
                members,
                repeats,
                float(num_data or 1),
            )

        skipped: list[str] = []
        rows = _lab_rows(specs, counts, repeats, seed, measure, skipped=skipped)
    finally:
        for name in set(store.keys()) - known:
            del store[name]
        if rng is not None:
            pyro.util.set_rng_state(rng)
    if not rows:
        raise EstimatorError(
            "gradient_variance: every estimator was refused: " + "; ".join(skipped)
        )
    sizes = {g: sum(params[i].numel() for i in m) for g, m in members.items()}
    return [{**r, "num_params": sizes[r["group"]], "num_data": num_data} for r in rows]


def _traced_parameters(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    per_datapoint: bool,
) -> tuple[list[str], list[torch.Tensor], int | None]:
    """The param-store names and unconstrained tensors that ``guide`` and ``model`` (replayed
    against it) use, as ``pyro.infer.SVI`` finds them; and N, the full size of the plate
    every sample site lies in (None unless ``per_datapoint``)."""
    with poutine.trace(param_only=True) as captured:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    names, params = [], []
    for name, site in captured.trace.nodes.items():
        if site["type"] != "param":
            continue
        leaf = site["value"].unconstrained()
        if leaf.requires_grad:
            names.append(name)
            params.append(leaf)
    if not params:
        raise ArgumentError(
            "gradient_variance: the model and guide use no parameter of Pyro's param store "
            "(pyro.module or pyro.param) that requires a gradient"
        )
    return names, params, _plate_size(model_trace) if per_datapoint else None


def _plate_size(model_trace: Any) -> int:
    """The number of units of the plates that every sample site of the model lies in (the
    product of their full sizes: the data plate's N for a VAE; N times a user's plate of
    chains around it), as the estimators' importance weights are laid out."""
    shared: set | None = None
    sizes: dict[str, int] = {}
    for site in model_trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        frames = {f.name for f in site["cond_indep_stack"] if f.vectorized}
        for f in site["cond_indep_stack"]:
            sizes[f.name] = int(f.full_size if f.full_size is not None else f.size)
        shared = frames if shared is None else shared & frames
    if not shared:
        raise ArgumentError(
            "{key}=True divides by the size of the plates every sample site lies in; the "
            "model's sample sites share no plate (a global latent, or sites in separate "
            "plates): pass {key}=False for the gradient of the loss as the estimator "
            "returns it",
            "per_datapoint",
        )
    return math.prod(sizes[name] for name in shared)


def variance_lab(
    run_dir: str | Path,
    estimators: str | None = None,
    num_particles: Sequence[int] = (1,),
    repeats: int = 100,
    checkpoints: str = "last",
    batch_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    vae: VAE | None = None,
    groups: GroupSpec = "module",
) -> list[dict[str, Any]]:
    """The lab's table on a run (one row per checkpoint, L, estimator and parameter group).

    The minibatch is the first one a run with ``seed`` would see (``batch_size``: the
    run's); ``vae`` is the model to load the run into, for a model of your own.
    ``groups``: ``module`` (phi and theta), ``layer`` (one group per layer: ``phi:trunk.0``,
    ``phi:loc``, ``phi:log_var``, ``theta:trunk.0``, ``theta:logits``, ...), ``parameter``
    (one per tensor) or a callable name -> group (:func:`vae_grouping`).
    """
    specs = estimator_specs(estimators)
    num_particles = _check_lab(repeats, num_particles, seed)
    integer(1).check("batch_size", batch_size, nullable=True)
    check_groups(groups)  # refuse a bad value before loading anything
    if not isinstance(checkpoints, str):
        raise refuse("checkpoints", checkpoints, "last, all or comma-separated file names")
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"run directory {run.path} does not exist")
    names = [checkpoint_to_load(run, n) for n in resolve_checkpoints(run, checkpoints)]
    loaded = load_run(run.path, names[0], device, vae=vae)
    vae, data = loaded.vae, loaded.data()
    m = batch_size if batch_size is not None else loaded.cfg.get("batch_size", 100)
    if not 1 <= m <= data.num_train:
        raise ArgumentError.refuse(
            "batch_size", m, f"1..{data.num_train} (the training set's size)"
        )
    batches = Minibatches(
        data.train, m, seed=seed, binarize=data.train_binarize, device=loaded.device
    )
    idx, x = next(batches.epoch(0))
    rows = []
    with pyro.validation_enabled(bool(loaded.cfg.get("validate", False))):
        for name in names:
            state = loaded.checkpoint if name == names[0] else run.load_checkpoint(name)
            load_model_state(vae, state["model"], str(run.checkpoint_dir / name))
            at = {"checkpoint": name, "epoch": _checkpoint_epoch(state)}
            for row in estimator_variance(vae, x, idx, specs, num_particles, repeats, seed, groups):
                rows.append({**at, **row})
    return rows


# ---------------------------------------------------------------------------------------
# Output: CSV, Markdown, figures


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3g}"
    return str(value)


def _groups(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rows' parameter groups, in order of first appearance."""
    return list(dict.fromkeys(r["group"] for r in rows))


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (checkpoint, L, estimator), phi and theta side by side; with other
    groups (``groups=layer``), one line per (checkpoint, L, estimator, group)."""
    if not set(_groups(rows)) <= set(GROUPS):
        return _long_markdown_table(rows)
    head = (
        "| epoch | L | estimator | bound | phi tr Cov | phi SNR | phi rel. var "
        "| theta tr Cov | theta SNR | theta rel. var | ms / estimate |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    merged: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["checkpoint"], r["num_particles"], r["estimator"])
        merged.setdefault(key, dict(r))[r["group"]] = r
    for r in merged.values():
        cells = [_fmt(r["epoch"]), str(r["num_particles"]), r["estimator"], f"{r['bound']:.2f}"]
        for g in GROUPS:
            s = r.get(g)
            keys = ("total_variance", "mean_snr", "relative_variance")
            cells += [_fmt(s[k]) for k in keys] if s else ["-"] * 3
        cells.append(f"{1000 * r['seconds_per_estimate']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _long_markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| epoch | L | estimator | group | bound | tr Cov | SNR | rel. var | ms / estimate |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [_fmt(r["epoch"]), str(r["num_particles"]), r["estimator"], r["group"]]
        cells.append(f"{r['bound']:.2f}")
        cells += [_fmt(r[k]) for k in ("total_variance", "mean_snr", "relative_variance")]
        cells.append(f"{1000 * r['seconds_per_estimate']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# Marker and line style per estimator, so that estimators with identical numbers (A by
# hand and by Pyro, say) stay visible on top of each other.
_STYLES = [(m, ls) for ls in ("-", "--", ":") for m in "o^sv<D>xP"]


_TITLES = {"phi": "phi: encoder", "theta": "theta: decoder, prior"}


def _axes(title: str, groups: Sequence[str] = GROUPS) -> tuple[Figure, Any]:
    """2 x G panels: total variance (top) and mean SNR (bottom), one column per group
    (phi left, theta right; one per layer with ``groups=layer``)."""
    fig = Figure(figsize=(max(11, 4.5 * len(groups)), 7.5), layout="constrained")
    axes = fig.subplots(2, len(groups), sharex=True, squeeze=False)
    for col, group in enumerate(groups):
        axes[0, col].set_title(_TITLES.get(group, group))
        axes[0, col].set_ylabel("total variance tr Cov[g]")
        axes[1, col].set_ylabel("mean SNR |E g| / sd g")
        for ax in axes[:, col]:
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig, axes


def _panels(
    rows: Sequence[dict[str, Any]], x_key: str, xlabel: str, title: str, path: Path
) -> Path:
    """The two measures against ``x_key`` (epoch or L), one line per estimator."""
    groups = _groups(rows)
    fig, axes = _axes(title, groups)
    labels = list(dict.fromkeys(r["estimator"] for r in rows))
    ticks = sorted({r[x_key] for r in rows})
    for col, group in enumerate(groups):
        for i, label in enumerate(labels):
            pts = sorted(
                (r[x_key], r["total_variance"], r["mean_snr"])
                for r in rows
                if r["estimator"] == label and r["group"] == group
            )
            marker, line = _STYLES[i % len(_STYLES)]
            for row, ys in enumerate(list(zip(*pts, strict=True))[1:] if pts else []):
                axes[row, col].plot(
                    [p[0] for p in pts], ys, marker=marker, ls=line, ms=4, label=label
                )
        for ax in axes[:, col]:
            # Epoch 0 (initialisation) has no logarithm: linear below 1.
            ax.set_xscale("symlog", linthresh=1.0) if x_key == "epoch" else ax.set_xscale("log")
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axes[1, col].set_xlabel(xlabel)
    axes[0, -1].legend(fontsize=7)
    return save_figure(fig, path)


def _by_estimator(rows: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """The two measures of each estimator side by side, one marker per L."""
    groups = _groups(rows)
    fig, axes = _axes(title, groups)
    labels = list(dict.fromkeys(r["estimator"] for r in rows))
    for col, group in enumerate(groups):
        for j, num in enumerate(sorted({r["num_particles"] for r in rows})):
            pts = {
                r["estimator"]: r for r in rows if r["group"] == group and r["num_particles"] == num
            }
            xs = [i for i, label in enumerate(labels) if label in pts]
            for row, key in enumerate(("total_variance", "mean_snr")):
                ys = [pts[labels[i]][key] for i in xs]
                axes[row, col].plot(xs, ys, _STYLES[j][0], label=f"L={num}")
        axes[1, col].set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    axes[0, -1].legend(fontsize=7)
    return save_figure(fig, path)


def plot_report(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The estimators side by side at the last checkpoint; against L where there are several
    L; against epochs where there are several checkpoints (at the first L)."""
    last = rows[-1]["checkpoint"]
    at_last = [r for r in rows if r["checkpoint"] == last]
    setting = f"M={rows[0]['batch_size']}, R={rows[0]['repeats']}"
    out = [
        _by_estimator(
            at_last,
            f"Gradient variance per datapoint at {last} ({setting})",
            out_dir / "variance_by_estimator.png",
        )
    ]
    if len({r["num_particles"] for r in at_last}) > 1:
        out.append(
            _panels(
                at_last,
                "num_particles",
                "particles L (K for iwae, dreg)",
                f"Gradient variance per datapoint against L at {last} ({setting})",
                out_dir / "variance_vs_particles.png",
            )
        )
    first_l = rows[0]["num_particles"]
    over_training = [r for r in rows if r["num_particles"] == first_l]
    if len({r["checkpoint"] for r in over_training}) > 1:
        out.append(
            _panels(
                over_training,
                "epoch",
                "epoch (checkpoint)",
                f"Gradient variance per datapoint over training (L={first_l}, {setting})",
                out_dir / "variance_vs_epoch.png",
            )
        )
    return out


def write_report(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, header: str = ""
) -> list[Path]:
    """variance.csv, variance.md (with ``header`` above the table) and the figures."""
    if not rows:
        raise ArgumentError("variance: no estimates to report (every estimator was skipped)")
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / "variance.csv", out_dir / "variance.md"
    atomic_write(csv_path, csv_text(rows))
    atomic_write(md_path, (header + "\n\n" if header else "") + markdown_table(rows))
    return [csv_path, md_path, *plot_report(rows, out_dir)]


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


int_list.__name__ = "comma-separated list of integers"

# ``pyro-vae variance RUN_DIR key=value ...``: the keys and how their values are read.
VARIANCE_KEYS = {
    "estimators": str,
    "num_particles": int_list,
    "repeats": int,
    "checkpoints": str,
    "batch_size": int,
    "seed": int,
    "device": str,
    "out_dir": str,
    "groups": str,
}


_GROUPS_NOTE = {
    "layer": ", one group per layer (phi:trunk.0 = the encoder's first hidden layer)",
    "parameter": ", one group per parameter tensor",
    "site": ", one group per sample site whose distribution the parameters enter (q:z = the "
    "guide's z, p:x = the likelihood)",
}


def run_variance(
    run_dir: str | Path, out_dir: str | Path | None = None, **lab: Any
) -> tuple[str, list[Path]]:
    """``pyro-vae variance``: the lab's table (Markdown, returned) written, with its figures,
    to ``out_dir`` (default ``<run_dir>/variance``); returns (table, paths). An ``out_dir``
    that cannot be written is refused (RunDirError) before the lab runs."""
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / OUTPUT_DIR
    if RunDir(run_dir).path.is_dir():  # else variance_lab names the missing run
        RunDir(out).check_location()
    rows = variance_lab(run_dir, **lab)
    table = markdown_table(rows)
    header = (
        f"Variance lab on `{run_dir}`: {rows[0]['repeats']} gradient estimates per estimator on "
        f"one minibatch of M={rows[0]['batch_size']} (seed {lab.get('seed', 0)}); gradients of "
        "the per-datapoint bound; phi = encoder, theta = decoder and prior"
        f"{_GROUPS_NOTE.get(lab.get('groups', 'module'), '')}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads."
    )
    try:
        paths = write_report(rows, out, header)
    except OSError as e:  # a full disk, a directory made read-only meanwhile
        raise RunDirError(f"cannot write the variance report into {out}: {e.strerror or e}") from e
    log_to_run(RunDir(run_dir), "the variance lab", tracked_points(rows), paths, OUTPUT_DIR)
    return table, paths


#: The numbers of a lab row that go to TensorBoard and MLflow (:func:`tracked_points`): the
#: table's columns from ``bound`` on.
TRACKED = COLUMNS[COLUMNS.index("bound") :]


def tracked_points(rows: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """The lab's rows as tracking points: ``variance/<estimator>/L<L>/<group>/<number>`` at
    the checkpoint's epoch (x-axis), one point per checkpoint; characters MLflow refuses in
    a name (the ``=`` of ``score_function:baseline=none``) become ``_``."""
    points: dict[int, dict[str, float]] = {}
    for row in rows:
        name = f"variance/{row['estimator']}/L{row['num_particles']}/{row['group']}"
        name = re.sub(r"[^\w./ :-]", "_", name)
        values = points.setdefault(int(row["epoch"]), {})
        values.update({f"{name}/{key}": float(row[key]) for key in TRACKED})
    return sorted(points.items())
