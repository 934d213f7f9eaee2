"""Outputs of the search stage: tables, the best architecture's JSON, and figures.

Files under ``data/search/`` for one search named ``<run>`` (``search_algorithm.run_name``,
e.g. ``ort_cpu_fp32@7.6ms`` or ``ort_cpu_fp32@7.6ms+openvino_cpu_fp32@7ms_5M``):

``<run>.parquet`` - one row per generation (and search round):

=========================  =====  =========================================================
column                     type   meaning
=========================  =====  =========================================================
round                      int    1 = the search at the requested target; 2+ = re-targeted
                                  searches of ``refine_on_device``
search_target_ms.<device>  f64    the latency bound the round searched with
search_floor_ms.<device>   f64    the lower latency bound of a re-targeted round (NaN: none)
generation                 int    0 = the initial population
best_accuracy              f64    best predicted accuracy in the population
quality                    f64    Q: mean predicted accuracy of the top-k (§5.4)
space_evolved              bool   P was moved towards the top-k at this generation
attempts, valid            int    candidates drawn / valid ones kept (all kinds)
valid_rate                 f64    valid / attempts
fresh_attempts, fresh_valid          draws from P (the initial population)
mutation_attempts, mutation_valid    mutation children
crossover_attempts, crossover_valid  crossover children
space_valid_rate           f64    valid rate of fresh draws from the current P (probe;
                                  1 / rate = Fig. 4's sampling attempts per valid subnet)
space_entropy              f64    mean normalised entropy of P (1 = uniform)
population                 int    distinct subnets in the population
best_arch_id               str    the best subnet
best_latency_ms.<device>   f64    its estimated latency, per device
best_params, best_macs     f64    its parameter and MAC counts
seconds                    f64    wall time of the generation
=========================  =====  =========================================================

``<run>.topk.parquet`` - the final top-k of the last round, best first: rank, arch_id,
predicted_accuracy, ``latency_ms.<device>`` (estimates), params, macs, ``measured_ms.<device>``
(NaN where not measured), genome (list<int>), compact (paper notation), arch_json.

``<run>.arch.json`` - the chosen architecture: ``name`` (``ours_<run>``), ``arch`` (the
architecture dict; ``scan-edge arch show FILE`` reads it), ``arch_id``, ``compact``,
``predicted_accuracy``, ``latency_ms`` (estimated, per device), ``measured_ms`` (per device or
null), ``params``, ``macs``, ``resolution``, ``num_classes``, ``constraints``, ``search``
(config), ``sampling`` (attempts per valid subnet), ``lowest_achievable``, ``refine`` (the
device-measurement outcome or null), ``sampling_distribution`` (final P, gene -> probs),
``provenance``.

``<run>.measured.parquet`` - measurement cache of ``refine_on_device``: arch_id, device,
measured_ms, timestamp (a re-run measures nothing twice).

Every table carries provenance (``nas_core.io.read_provenance``) with ``inputs_key``, a hash
of everything that determines the result, so a re-run with the same inputs can skip the
search (:func:`is_up_to_date`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from .io import atomic_path, read_json, read_parquet, read_provenance, utc_now, write_json, write_parquet
from .search_algorithm import Candidate, SearchResult, model_name
from .search_refine import RefineResult
from .search_space import SearchSpace


# --------------------------------------------------------------------------- tables
def history_frame(result: SearchResult, round_number: int = 1,
                  search_targets: Mapping[str, float] | None = None):
    frame = pd.DataFrame(result.history)
    targets = search_targets or {c.device: c.target_ms for c in result.constraints.latency}
    frame.insert(0, "round", round_number)
    floors = {c.device: c.floor_ms for c in result.constraints.latency}
    for i, (device, ms) in enumerate(targets.items()):
        frame.insert(1 + 2 * i, f"search_target_ms.{device}", float(ms))
        frame.insert(2 + 2 * i, f"search_floor_ms.{device}", math.nan if floors.get(device) is None
                     else float(floors[device]))
    return frame


def top_frame(top: Sequence[Candidate], space: SearchSpace, devices: Sequence[str],
              measured: Mapping[str, Mapping[str, float]] | None = None):
    """The top-k table (module docstring); ``measured``: arch_id -> device -> ms."""
    rows = []
    for rank, cand in enumerate(top, start=1):
        arch = cand.arch(space)
        row = {"rank": rank, "arch_id": arch.arch_id, "predicted_accuracy": cand.predicted_accuracy,
               **{k: v for k, v in cand.metrics.items()}}
        for device in devices:
            row[f"measured_ms.{device}"] = (measured or {}).get(arch.arch_id, {}).get(device, math.nan)
        row.update(genome=list(cand.genome), compact=arch.compact(), arch_json=arch.to_json())
        rows.append(row)
    return pd.DataFrame(rows)


def best_record(result: SearchResult, space: SearchSpace, chosen: Candidate | None = None,
                refine: RefineResult | None = None, provenance: Mapping | None = None) -> dict:
    """The ``.arch.json`` content (module docstring). ``result`` is the search at the requested
    constraints (it names the model); ``chosen`` defaults to its best subnet."""
    cand = chosen or result.best
    arch = cand.arch(space)
    constraints = result.constraints.describe()
    return {
        "name": model_name(constraints["latency_ms"], constraints["max_params"], constraints["max_macs"]),
        "arch": arch.to_dict(), "arch_id": arch.arch_id, "compact": arch.compact(),
        "predicted_accuracy": cand.predicted_accuracy, "latency_ms": cand.latency_ms(),
        "measured_ms": refine.measured_ms if refine is not None and refine.within else None,
        "params": int(cand.metrics["params"]), "macs": int(cand.metrics["macs"]),
        "resolution": constraints["resolution"], "num_classes": constraints["num_classes"],
        "constraints": constraints, "search": result.config.to_dict(), "sampling": result.sampling_summary(),
        "lowest_achievable": result.lowest_achievable, "search_seconds": result.seconds,
        "refine": refine.to_dict(space) if refine is not None else None,
        "sampling_distribution": result.distribution.to_dict(),
        "provenance": dict(provenance or {}),
    }


# --------------------------------------------------------------------------- writing
def output_paths(out_dir: str | os.PathLike, run: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"history": out_dir / f"{run}.parquet", "top": out_dir / f"{run}.topk.parquet",
            "arch": out_dir / f"{run}.arch.json", "measured": out_dir / f"{run}.measured.parquet"}


def write_search(out_dir: str | os.PathLike, run: str, space: SearchSpace, results: Sequence[SearchResult],
                 search_targets: Sequence[Mapping[str, float]] | None = None, refine: RefineResult | None = None,
                 measured: Mapping[str, Mapping[str, float]] | None = None,
                 provenance: Mapping | None = None) -> dict[str, Path]:
    """Write the history (all rounds), the last round's top-k and the chosen architecture.

    ``results`` are the search rounds in order (one unless ``refine_on_device`` re-searched);
    the chosen subnet is ``refine.chosen`` when the device check found one, else the best of
    the first round.
    """
    paths = {k: v for k, v in output_paths(out_dir, run).items() if k != "measured"}
    provenance = {**dict(provenance or {}), "written": utc_now()}
    targets = list(search_targets or [None] * len(results))
    history = pd.concat([history_frame(r, i + 1, t) for i, (r, t) in enumerate(zip(results, targets))],
                        ignore_index=True)
    write_parquet(paths["history"], history, provenance)
    last = results[-1]
    write_parquet(paths["top"], top_frame(last.top, space, last.constraints.devices, measured), provenance)
    chosen = refine.chosen if refine is not None and refine.within else None
    write_json(paths["arch"], best_record(results[0], space, chosen, refine, provenance))
    return paths


def inputs_key(parts: Mapping[str, Any]) -> str:
    """A hash of everything that determines a search's result (config, constraints, artifact digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_up_to_date(out_dir: str | os.PathLike, run: str, key: str, need_refine: bool = False) -> bool:
    """Whether ``<run>``'s outputs exist and were made from inputs with this ``inputs_key``
    (and, if asked, include a device-measurement outcome)."""
    paths = output_paths(out_dir, run)
    if not (paths["history"].exists() and paths["top"].exists() and paths["arch"].exists()):
        return False
    try:
        same = read_provenance(paths["history"]).get("inputs_key") == key
        record = read_json(paths["arch"])
    except (OSError, ValueError):
        return False
    return same and record.get("provenance", {}).get("inputs_key") == key and (
        not need_refine or record.get("refine") is not None)


def read_best(out_dir: str | os.PathLike, run: str) -> dict:
    return read_json(output_paths(out_dir, run)["arch"])


def measured_latency(out_dir: str | os.PathLike, run: str, arch_id: str) -> dict[str, float] | None:
    """An architecture's measured latency per device from ``<run>.measured.parquet`` (also
    when it missed the target, unlike the ``.arch.json``); None when it was not measured."""
    path = output_paths(out_dir, run)["measured"]
    if not path.exists():
        return None
    rows = read_parquet(path)
    rows = rows[rows["arch_id"] == arch_id]
    return {row.device: float(row.measured_ms) for row in rows.itertuples()} or None


def first_round_fidelity(record: Mapping) -> dict:
    """How good the latency model was before any refinement: the first measured candidate of
    round 1 (the search's own choice), its estimate vs its measurement per device, and how many
    refinement rounds were used. Refinement should be a check, not a crutch."""
    refine = record.get("refine") or {}
    first = [r for r in refine.get("records") or [] if r.get("round") == 1]
    if not first:
        return {"refine_rounds": refine.get("rounds"), "first_estimate_error_pct": None}
    arch = first[0]["arch_id"]
    errors = {r["device"]: 100.0 * (r["estimated_ms"] / r["measured_ms"] - 1.0) for r in first if r["arch_id"] == arch}
    return {"refine_rounds": refine.get("rounds"), "first_estimate_error_pct": errors}


class MeasurementCache:
    """Wraps a ``measure_fn`` so each (architecture, device) is measured once, across runs:
    rows go to ``<run>.measured.parquet`` (written atomically after every measurement)."""

    def __init__(self, path: str | os.PathLike, measure_fn: Callable[[Candidate], Mapping[str, float]],
                 space: SearchSpace, provenance: Mapping | None = None):
        self.path, self.measure_fn, self.space = Path(path), measure_fn, space
        self.provenance = dict(provenance or {})
        self.rows: list[dict] = read_parquet(self.path).to_dict("records") if self.path.exists() else []

    def lookup(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for row in self.rows:
            out.setdefault(row["arch_id"], {})[row["device"]] = float(row["measured_ms"])
        return out

    def __call__(self, candidate: Candidate) -> dict[str, float]:
        arch_id = candidate.arch(self.space).arch_id
        known = self.lookup().get(arch_id, {})
        devices = list(candidate.latency_ms())
        if all(d in known for d in devices):
            return {d: known[d] for d in devices}
        fresh = self.measure_fn(candidate)
        stamp = utc_now()
        for device, ms in fresh.items():
            self.rows.append({"arch_id": arch_id, "device": device, "measured_ms": float(ms), "timestamp": stamp})
        write_parquet(self.path, pd.DataFrame(self.rows), self.provenance)
        return {d: float(fresh[d]) for d in devices}


# --------------------------------------------------------------------------- figures
# Figures are built as matplotlib Figure objects, never through pyplot: no global backend to
# set, no figure registry to close, and nothing changes for a notebook that imports this module.
def plot_front(front, path: str | os.PathLike, device: str, reference_ms: float | None = None,
               clouds: Sequence | None = None) -> Path:
    """Fig. 5: predicted accuracy against latency on one device, one point per searched target
    (estimated latency; measured latency too where known), with the MobileNetV2 latency.

    ``front`` columns: target_ms, predicted_accuracy, latency_ms, measured_ms (optional).
    ``clouds``: per-target top-k frames (columns ``latency_ms.<device>``, predicted_accuracy).
    """
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for cloud in clouds or []:
        ax.scatter(cloud[f"latency_ms.{device}"], cloud["predicted_accuracy"], s=8, color="0.75", zorder=1)
    front = front.sort_values("target_ms")
    ax.plot(front["latency_ms"], front["predicted_accuracy"], "o-", color="C0", label="searched (estimated)", zorder=3)
    if "measured_ms" in front and front["measured_ms"].notna().any():
        ax.plot(front["measured_ms"], front["predicted_accuracy"], "s--", color="C3", label="searched (measured)",
                zorder=3)
    for _, row in front.iterrows():
        ax.annotate(f"@{row['target_ms']:.3g}ms", (row["latency_ms"], row["predicted_accuracy"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=7)
    if reference_ms is not None:
        ax.axvline(reference_ms, color="C2", ls=":", label=f"MobileNetV2 ({reference_ms:.3g} ms)")
    ax.set_xlabel(f"latency on {device} (ms)")
    ax.set_ylabel("predicted accuracy")
    ax.set_title(f"Accuracy-latency front on {device}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sampling(table, path: str | os.PathLike, title: str = "Sampling attempts per valid subnet") -> Path:
    """Fig. 4a: attempts per valid subnet against the latency target, uniform space vs evolved.

    ``table`` columns: target_ms, uniform_attempts_per_valid, uniform_lower_bound (bool: no
    valid subnet found, the value is the number of draws), evolved_attempts_per_valid and,
    optionally, search_attempts_per_valid.
    """
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    t = table.sort_values("target_ms")
    found = ~t["uniform_lower_bound"].astype(bool)
    ax.plot(t["target_ms"][found], t["uniform_attempts_per_valid"][found], "o-", color="C0",
            label="uniform space (no evolution)")
    if (~found).any():
        ax.plot(t["target_ms"][~found], t["uniform_attempts_per_valid"][~found], "^", color="C0", mfc="none",
                label="uniform: none found (lower bound)")
    ax.plot(t["target_ms"], t["evolved_attempts_per_valid"], "s-", color="C3", label="evolved space (final P)")
    if "search_attempts_per_valid" in t:
        ax.plot(t["target_ms"], t["search_attempts_per_valid"], "d--", color="C1",
                label="whole search, fresh draws (evolution on)")
    ax.set_yscale("log")
    ax.set_xlabel("latency target (ms)")
    ax.set_ylabel("sampling attempts per valid subnet")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_history(histories: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Fig. 4b-like: per generation, Q, the valid rate of fresh draws from P and P's entropy,
    one line per labelled search history (e.g. evolution on / off)."""
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    for label, frame in histories.items():
        axes[0].plot(frame["generation"], frame["quality"], label=label)
        axes[1].plot(frame["generation"], frame["space_valid_rate"], label=label)
        axes[2].plot(frame["generation"], frame["space_entropy"], label=label)
    for ax, name in zip(axes, ("Q (mean predicted acc. of top-k)", "valid rate of fresh draws from P",
                               "entropy of P (1 = uniform)")):
        ax.set_xlabel("generation")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path
