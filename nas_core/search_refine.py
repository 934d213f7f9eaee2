"""Meeting the latency target on the device itself, after the search (paper §5.4's last step).

The search ranks subnets by *estimated* latency (calibrated LUT sums), which is within a few
percent of the device, not exact. :func:`refine_on_device` measures the best candidates where
they will run and returns the most accurate one whose measured latency is within
``[target * (1 - tolerance), target]``; when none is, it re-targets the search (``research``)
by how far the measurements fell from the window, for at most ``max_rounds`` rounds.
:func:`device_measure_fn` is a ``measure_fn`` for devices of this machine.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .block_catalog import HEAD_CLASSES
from .latency.measure import measure_module
from .search_algorithm import Candidate
from .search_constraints import SearchError
from .search_space import SearchSpace
from .subnet import SubnetModel


# --------------------------------------------------------------------------- meeting the target on the device
MeasureFn = Callable[[Candidate], "float | Mapping[str, float]"]
ResearchFn = Callable[[Mapping[str, float], Mapping[str, float]], Sequence[Candidate]]  # (targets, floors)


@dataclass(frozen=True)
class RefineConfig:
    """Knobs of :func:`refine_on_device` (params.yaml ``search.refine``)."""

    tolerance: float = 0.03  # accept measured latency in [target * (1 - tolerance), target]
    measure_top: int = 5  # candidates measured per round, in order of predicted accuracy
    max_rounds: int = 3  # search rounds (the first + re-targeted ones)

    def __post_init__(self):
        if not 0 < self.tolerance < 1 or self.measure_top < 1 or self.max_rounds < 1:
            raise ValueError(f"search.refine: need 0 < tolerance < 1, measure_top >= 1, max_rounds >= 1; got {self}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "RefineConfig":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        if set(values) - known:
            raise ValueError(f"search.refine: unknown keys {sorted(set(values) - known)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RefineResult:
    """Outcome of :func:`refine_on_device`. ``records`` has one dict per (measured candidate,
    device): round, search_target_ms, search_floor_ms (NaN in round 1), arch_id,
    predicted_accuracy, device, target_ms, estimated_ms, measured_ms,
    measured_over_estimated, bound_by (non-latency constraints that bind), within."""

    chosen: Candidate | None
    measured_ms: dict[str, float]
    records: list[dict]
    rounds: int
    message: str
    window: dict[str, tuple[float, float]]

    @property
    def within(self) -> bool:
        return self.chosen is not None

    def to_dict(self, space: SearchSpace | None = None) -> dict:
        out = {"within": self.within, "measured_ms": self.measured_ms, "rounds": self.rounds,
               "message": self.message, "window_ms": {d: list(w) for d, w in self.window.items()},
               "records": self.records}
        if self.chosen is not None and space is not None:
            out["arch_id"] = self.chosen.arch(space).arch_id
        return out


def refine_on_device(candidates: Sequence[Candidate], measure_fn: MeasureFn, target: float | Mapping[str, float], *,
                     tolerance: float = 0.03, measure_top: int = 5, max_rounds: int = 3,
                     research: ResearchFn | None = None, arch_id: Callable[[Candidate], str] | None = None,
                     other_limits: Mapping[str, float] | None = None,
                     log: Callable[[str], None] | None = None,
                     prefetch: Callable[[Sequence[Candidate]], None] | None = None) -> RefineResult:
    """The most accurate candidate whose *measured* latency is within
    ``[target * (1 - tolerance), target]``.

    With several devices, one architecture rarely sits at every target at once (usually one
    constraint binds), so "within" means: at most the target on every device and within the
    window on at least one of them. When a non-latency constraint binds instead
    (``other_limits``, e.g. ``{"params": 5e6}``: the candidate's value is within ``tolerance``
    of that limit), the latency cannot be pushed up to the window, and at most the target on
    every device is enough.

    Each round measures up to ``measure_top`` candidates in order of predicted accuracy and
    stops at the first one within the window (it is the most accurate within, since the order
    is by accuracy). If none is, ``research(targets, floors)`` is asked for new candidates
    confined to the window translated into *estimated* milliseconds: with ``r`` = the median
    measured / estimated ratio of the round on a device, the band is
    ``[target * (1 - 3/4 tol) / r, target * (1 - 1/4 tol) / r]`` (the middle half of the
    window, a margin for the ratio's spread between architectures). Once the rounds have
    measured candidates at different estimates, the translation is a line fitted to all
    measurements instead of the last ratio (:func:`_estimated_for`). The upper bound corrects
    the estimator's bias; the floor removes the search's slack (without it the predictor's
    favourite may sit far below the target, where no re-targeting of the bound alone moves it).
    With several devices only the most binding one (highest measured / target) gets a floor.
    At most ``max_rounds`` rounds; without ``research`` only one. A re-search that fails
    (:class:`SearchError`, e.g. no subnet in the band) ends the refinement with that message.
    Measurements are reused by ``arch_id`` (default: the genome).

    ``measure_fn(candidate)`` returns measured milliseconds: a float for one device, or
    device -> ms. ``prefetch(candidates)``, when given, is called with each round's candidates
    before any of them is measured: a board measures them in one job (one round trip)
    instead of one job per candidate.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    targets = _targets_by_device(candidates, target)
    window = {d: (t * (1 - tolerance), t) for d, t in targets.items()}
    key = arch_id or (lambda c: ",".join(map(str, c.genome)))
    say = log or (lambda _msg: None)
    measured: dict[str, dict[str, float]] = {}
    records: list[dict] = []
    search_targets, floors = dict(targets), {}
    for round_number in range(1, max_rounds + 1):
        round_records: list[dict] = []
        chosen_for_round = sorted(candidates, key=lambda c: -c.predicted_accuracy)[:measure_top]
        if prefetch is not None:
            prefetch([c for c in chosen_for_round if key(c) not in measured])
        for cand in chosen_for_round:
            if key(cand) not in measured:
                measured[key(cand)] = _as_device_ms(measure_fn(cand), targets)
            ms = measured[key(cand)]
            bound_by = [k for k, limit in (other_limits or {}).items() if cand.metrics[k] >= (1 - tolerance) * limit]
            inside = _within(ms, window, lower_bound=not bound_by)
            for d in targets:
                round_records.append(_refine_record(round_number, search_targets[d], floors.get(d), key(cand), cand,
                                                    d, targets[d], ms[d], bound_by, inside))
            records.extend(round_records[-len(targets):])
            say(f"round {round_number}: {key(cand)} acc {cand.predicted_accuracy:.4f} " +
                " ".join(f"{d} est {cand.latency_ms()[d]:.3f} ms measured {ms[d]:.3f} ms" for d in targets) +
                (" -> within" if inside else ""))
            if inside:
                message = f"measured within [-{tolerance:.0%}, 0] of the target in round {round_number}"
                return RefineResult(cand, ms, records, round_number, message, window)
        if research is None or round_number == max_rounds:
            break
        search_targets, floors = _research_band(round_records, records, targets, tolerance)
        say("none within; searching again in " + ", ".join(
            f"{d} [{floors[d]:.3f}, {t:.3f}] ms" if d in floors else f"{d} <= {t:.3f} ms"
            for d, t in search_targets.items()) + " (estimated)")
        try:
            candidates = list(research(search_targets, floors))
        except SearchError as error:
            say(f"re-search failed: {error}")
            return RefineResult(None, {}, records, round_number,
                                f"no candidate measured within [-{tolerance:.0%}, 0] of {targets}: the re-search "
                                f"in round {round_number + 1} failed ({error})", window)
    ratios = {d: float(np.median([r["measured_over_estimated"] for r in records if r["device"] == d]))
              for d in targets}
    message = (f"no candidate measured within [-{tolerance:.0%}, 0] of {targets} after {round_number} round(s) "
               f"({len(measured)} measured; median measured/estimated {ratios})")
    return RefineResult(None, {}, records, round_number, message, window)


def _research_band(round_records: Sequence[dict], all_records: Sequence[dict], targets: Mapping[str, float],
                   tolerance: float) -> tuple[dict[str, float], dict[str, float]]:
    """(search targets, floors) in estimated ms for the next round (see :func:`refine_on_device`)."""
    def median_of(device: str, column: str) -> float:
        return float(np.median([r[column] for r in round_records if r["device"] == device]))

    to_estimated = {d: _estimated_for([r for r in all_records if r["device"] == d],
                                      median_of(d, "measured_over_estimated")) for d in targets}
    upper = {d: to_estimated[d](t * (1 - tolerance / 4)) for d, t in targets.items()}
    binding = max(targets, key=lambda d: median_of(d, "measured_ms") / targets[d])
    return upper, {binding: to_estimated[binding](targets[binding] * (1 - 3 * tolerance / 4))}


def _estimated_for(records: Sequence[dict], last_ratio: float) -> Callable[[float], float]:
    """Measured ms -> the estimated ms that should measure it on one device (``records``: its measurements).

    After one round: the round's median measured / estimated ratio. Once rounds have
    measured candidates at clearly different estimates (> 2% apart), a straight line
    ``measured = a * estimated + b`` fitted to all of them: the ratio is not constant across
    the space (e.g. on OpenVINO it moved from 0.72 to 0.85 between 8 and 10 estimated ms), and a
    ratio taken from the last round alone then overshoots back and forth around the window;
    the line interpolates between the rounds (a secant step) instead.
    """
    estimated = np.array([r["estimated_ms"] for r in records])
    measured = np.array([r["measured_ms"] for r in records])
    if len(records) >= 2 and estimated.max() > 1.02 * estimated.min():
        slope, intercept = np.polyfit(estimated, measured, 1)
        if slope > 0:
            return lambda ms: float((ms - intercept) / slope)
    return lambda ms: float(ms / last_ratio)


def _refine_record(round_number, search_target, floor, arch_id, cand, device, target, measured, bound_by,
                   inside) -> dict:
    estimate = cand.latency_ms()[device]
    return {"round": round_number, "search_target_ms": search_target,
            "search_floor_ms": math.nan if floor is None else float(floor), "arch_id": arch_id,
            "predicted_accuracy": cand.predicted_accuracy, "device": device, "target_ms": target,
            "estimated_ms": estimate, "measured_ms": measured, "measured_over_estimated": measured / estimate,
            "bound_by": ",".join(bound_by), "within": inside}


def _within(measured: Mapping[str, float], window: Mapping[str, tuple[float, float]], lower_bound: bool = True) -> bool:
    """At most the target everywhere, and (if ``lower_bound``) at most ``tolerance`` below it somewhere."""
    return (all(measured[d] <= hi for d, (_lo, hi) in window.items())
            and (not lower_bound or any(measured[d] >= lo for d, (lo, _hi) in window.items())))


def _targets_by_device(candidates: Sequence[Candidate], target: float | Mapping[str, float]) -> dict[str, float]:
    if not candidates:
        raise SearchError("refine_on_device: no candidates to measure")
    devices = list(candidates[0].latency_ms())
    if isinstance(target, Mapping):
        missing = set(target) - set(devices)
        if missing:
            raise SearchError(f"refine_on_device: candidates have no latency estimate for {sorted(missing)}")
        return {d: float(t) for d, t in target.items()}
    if len(devices) != 1:
        raise SearchError(f"refine_on_device: a single target needs candidates for one device; they have {devices}")
    return {devices[0]: float(target)}


def _as_device_ms(value: float | Mapping[str, float], targets: Mapping[str, float]) -> dict[str, float]:
    if isinstance(value, Mapping):
        missing = set(targets) - set(value)
        if missing:
            raise SearchError(f"measure_fn returned no latency for {sorted(missing)}")
        return {d: float(value[d]) for d in targets}
    if len(targets) != 1:
        raise SearchError("measure_fn returned one number for several devices; return device -> ms")
    return {next(iter(targets)): float(value)}


def device_measure_fn(space: SearchSpace, profiles: Mapping[str, Any], *, num_classes: int = HEAD_CLASSES,
                      resolution: int | None = None, timing_config=None) -> MeasureFn:
    """A ``measure_fn`` timing the candidate as a standalone ``SubnetModel`` (random weights:
    weights do not change latency) on each device profile of this machine with
    ``nas_core.latency.measure.measure_module``; returns device -> median ms. The pipeline
    measures through device accesses instead (``nas_core.search_run.device_measure``), so that
    a board's candidates are timed on the board. The caller holds the machine's exclusive
    CPU lock around it (nas_core cannot import tasks)."""
    def measure(candidate: Candidate) -> dict[str, float]:
        out = {}
        for name, profile in profiles.items():
            size = resolution or profile.resolution
            model = SubnetModel(candidate.arch(space), num_classes=num_classes, resolution=size).eval()
            out[name] = measure_module(model, profile.input_shape(size), profile, config=timing_config).median_ms
        return out

    return measure
