"""Did the search help? Random-architecture controls, seeds and the intervals behind a claim.

A NAS result means little without the control a researcher asks for first: subnets drawn
*uniformly* from the same space under the same constraints, trained the same way (Li &
Talwalkar 2019; Yu et al. 2020). This module holds the pieces of that control that do not
depend on the pipeline:

* :class:`ControlsConfig`: params ``controls:`` (how many controls, which searches, seeds);
* :func:`sample_in_window`: the space's uniform per-gene distribution (the one the search
  starts from) conditioned on an *estimated* latency window (calibrated LUT) and the search's
  other bounds (parameters), by Gibbs sampling (:func:`gibbs_in_window`); rejection sampling
  is exact too, but at MobileNetV2's latency not one uniform subnet in 10^7 lands there (the
  smoke ORT target 5.19 ms; the lowest of 200,000 uniform draws 7.15 ms);
* :func:`draw_controls`: those draws confirmed by *measurement* on the device, the way the
  search's own on-device check measures (``measure_fn``): a draw is a control only when its
  measured latency is within ``[target * (1 - tolerance), target]``, as the searched model's
  is. The estimated window is first translated by the measured / estimated ratio the search
  saw, then by the ratios measured so far;
* :func:`mean_std`, :func:`blocked_difference_interval` (seeds as blocks: the models share
  each seed's data order), :func:`difference_interval` (Welch), :func:`claim`: mean ± std over
  seeds, the confidence interval of a difference (ours − random mean, ours − a baseline) and the one
  sentence a report may say about it: "A beats B" only when the interval excludes zero,
  "not distinguishable" otherwise;
* :func:`window_quality`: the accuracy predictor judged where the search uses it (subnets in
  the target window): Spearman and top-k precision against their inherited scores.

Pure numpy / scipy: no torch, no orchestration.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
from scipy import stats

from .config import SectionConfig
from .search_algorithm import SamplingDistribution
from .search_constraints import Constraints, LatencyConstraint
from .search_space import SearchSpace

CONFIDENCE = 0.95


# --------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class ControlsConfig(SectionConfig):
    """params.yaml ``controls:``.

    ``count`` controls per controlled search (0: none); ``searches``: ``first`` (the first
    search of the pipeline, "ours" downstream) or ``all``; ``seeds``: the fine-tuning seeds
    of each control (None: ``finetune.seeds``, ours'); ``sample_seed``: the draws';
    ``max_measured``: measurements per search before giving up (None: 3 x count + 2);
    ``sampler``: ``gibbs`` (:func:`gibbs_in_window`, ``sweeps`` per chain) or ``rejection``
    (``max_draws`` uniform draws per call in batches of ``batch``: exact, but no uniform subnet
    reaches MobileNetV2's latency in 10^7 draws); ``window_subnets``:
    random subnets of the window whose inherited score judges the predictor there (0: none).
    """

    section: ClassVar[str] = "controls"

    count: int = 5
    searches: str = "first"
    seeds: tuple[int, ...] | None = None
    sample_seed: int = 0
    max_measured: int | None = None
    max_draws: int = 20_000_000
    batch: int = 65_536
    sampler: str = "gibbs"
    sweeps: int = 20
    window_subnets: int = 0

    def __post_init__(self):
        if self.count < 0 or self.window_subnets < 0:
            raise ValueError(f"params controls: count and window_subnets must be >= 0, got {self}")
        if self.searches not in ("first", "all"):
            raise ValueError(f"params controls.searches: first or all, not {self.searches!r}")
        if self.sampler not in ("gibbs", "rejection"):
            raise ValueError(f"params controls.sampler: gibbs or rejection, not {self.sampler!r}")
        if self.seeds is not None and not self.seeds:
            raise ValueError("params controls.seeds: give at least one seed, or null for finetune.seeds")

    @property
    def measurement_budget(self) -> int:
        return self.max_measured if self.max_measured is not None else 3 * self.count + 2


# --------------------------------------------------------------------------- sampling
class WindowSamplingError(ValueError):
    """Too few subnets of the space fall in the window within the draw budget."""


def window_constraints(catalog, estimators: Mapping[str, Any], window_ms: Mapping[str, tuple[float, float]],
                       max_params: float | None = None, num_classes: int = 1000) -> Constraints:
    """The search's constraint set with a floor: estimated latency within ``window_ms``
    (device -> (low, high) ms) and the parameter bound."""
    latency = [LatencyConstraint(d, float(hi), estimators[d], floor_ms=float(lo)) for d, (lo, hi) in window_ms.items()]
    return Constraints(catalog, latency, max_params, None, num_classes)


def sample_in_window(space: SearchSpace, constraints: Constraints, n: int, rng: np.random.Generator, *,
                     method: str = "gibbs", sweeps: int = 20, batch: int = 65_536, max_draws: int = 20_000_000,
                     exclude: set[bytes] | None = None) -> tuple[np.ndarray, int]:
    """``n`` distinct canonical genomes from the space's uniform per-gene distribution (the
    search's initial one) *conditioned* on every constraint of ``constraints``. Returns
    ``(genomes [n, G], work)``; ``exclude``: genome bytes already taken (updated).

    * ``rejection``: draw, keep the ones that satisfy them (``work``: draws). Exact, but at
      the paper's targets (about MobileNetV2's latency) not one uniform subnet in 10^7 does;
    * ``gibbs``: :func:`gibbs_in_window`, one chain per wanted genome (``work``: genomes evaluated).

    Raises :class:`WindowSamplingError` when it cannot find them (``max_draws``; a chain that
    cannot reach the window)."""
    seen = exclude if exclude is not None else set()
    found: list[np.ndarray] = []
    work = 0
    uniform = SamplingDistribution.uniform(space)
    attempts = 0
    while len(found) < n:
        if method == "gibbs":
            attempts += 1
            if attempts > 5:
                raise WindowSamplingError(f"gibbs: {len(found)} of {n} distinct subnets after 5 rounds of chains")
            genomes, used = gibbs_in_window(space, constraints, n - len(found), rng, sweeps=sweeps)
            ok = np.arange(len(genomes))
        elif method == "rejection":
            if work >= max_draws:
                raise WindowSamplingError(f"only {len(found)} of {n} uniform subnets within {constraints.limits()} "
                                          f"(floors {constraints.floors()}) in {work:,} draws")
            genomes, used = uniform.sample(batch, rng), batch
            ok = np.flatnonzero(constraints.violation(constraints.evaluate(genomes)) == 0)
        else:
            raise ValueError(f"sampling method {method!r}: gibbs or rejection")
        for i in ok:
            key = np.ascontiguousarray(genomes[i], dtype=np.int8).tobytes()
            if key in seen:
                continue
            seen.add(key)
            found.append(genomes[i])
            if len(found) == n:
                if method == "rejection":
                    used = int(i) + 1  # counted as if drawn one by one
                break
        work += used
    return np.stack(found) if found else np.empty((0, len(space.genes)), dtype=np.int64), work


def gibbs_in_window(space: SearchSpace, constraints: Constraints, n: int, rng: np.random.Generator, *,
                    sweeps: int = 20, chains: int | None = None, repair_sweeps: int = 30,
                    max_sweeps: int = 200) -> tuple[np.ndarray, int]:
    """``n`` subnets from the uniform per-gene distribution conditioned on the constraints, by
    Gibbs sampling over raw genomes (inactive genes included, as the search draws them; the
    constraints judge the canonical genome).

    The chains run on the constraints *without their latency floors* (latency at most the
    target, params bound): there a block can always be removed, so single-gene moves connect
    the set and the chains mix (inside a 3 %-wide window a depth change jumps past it, and
    Gibbs inside the window alone kept each chain at the depth it started with: its samples had
    1.2 M fewer params than rejection sampling's at the same window). The states inside the
    window (the floors too) are the samples: the stationary distribution conditioned on them.

    Each of ``chains`` chains (default ``max(n, 8)``) starts from a uniform draw, is *repaired*
    into the set (coordinate descent: each gene in random order set to a choice of least
    violation, ties at random), runs ``sweeps`` burn-in sweeps (each gene in random order
    redrawn uniformly among its choices that keep the constraints: the conditional of the
    uniform distribution restricted to the set; the current choice is always one), then one
    sweep at a time until ``n`` distinct in-window states were seen at sweep ends (at most
    one per chain and sweep; ``max_sweeps``). Returns ``(canonical genomes [n, G], genomes
    evaluated)``."""
    chains = chains or max(n, 8)
    relaxed = constraints.with_latency_targets({}, {})  # the same bounds without floors
    uniform = SamplingDistribution.uniform(space)
    raw = uniform.sample_raw(chains, rng)
    choices = space.num_choices
    evaluated = 0

    def violation(genomes: np.ndarray, within: Constraints = relaxed) -> np.ndarray:
        nonlocal evaluated
        evaluated += len(genomes)
        return within.violation(within.evaluate(space.canonicalize(genomes)))

    def variants(rows: np.ndarray, gene: int) -> np.ndarray:
        out = np.repeat(rows, choices[gene], axis=0)
        out[:, gene] = np.tile(np.arange(choices[gene]), len(rows))
        return out

    current = violation(raw)
    for _ in range(repair_sweeps):
        if not (current > 0).any():
            break
        for gene in rng.permutation(len(choices)):
            todo = np.flatnonzero(current > 0)
            if not len(todo):
                break
            values = violation(variants(raw[todo], gene)).reshape(len(todo), choices[gene])
            best = values.min(axis=1, keepdims=True)
            pick = np.argmax(np.where(values <= best, rng.random(values.shape), -1.0), axis=1)
            raw[todo, gene] = pick
            current[todo] = values[np.arange(len(todo)), pick]
    if (current > 0).any():
        raise WindowSamplingError(f"gibbs: {int((current > 0).sum())} of {chains} chains found no subnet within "
                                  f"{constraints.limits()} in {repair_sweeps} sweeps")
    found: dict[bytes, np.ndarray] = {}
    for sweep in range(max_sweeps):
        for gene in rng.permutation(len(choices)):
            feasible = (violation(variants(raw, gene)) == 0).reshape(chains, choices[gene])
            raw[:, gene] = np.argmax(np.where(feasible, rng.random(feasible.shape), -1.0), axis=1)
        if sweep + 1 < sweeps:
            continue
        canonical = space.canonicalize(raw)
        for i in np.flatnonzero(violation(raw, constraints) == 0):
            found.setdefault(np.ascontiguousarray(canonical[i], dtype=np.int8).tobytes(), canonical[i])
        if len(found) >= n:
            return np.stack(list(found.values())[:n]), evaluated
    raise WindowSamplingError(f"gibbs: {len(found)} of {n} subnets within {constraints.limits()} (floors "
                              f"{constraints.floors()}) after {max_sweeps} sweeps of {chains} chains")


def estimated_window(targets: Mapping[str, float], ratios: Mapping[str, float],
                     tolerance: float) -> dict[str, tuple[float, float]]:
    """The measured window ``[t (1 - tol), t]`` in estimated ms: its middle half divided by
    the measured / estimated ratio (as ``search_refine`` re-targets a search)."""
    return {d: (t * (1 - 3 * tolerance / 4) / ratios[d], t * (1 - tolerance / 4) / ratios[d])
            for d, t in targets.items()}


def within_window(measured: Mapping[str, float], targets: Mapping[str, float], tolerance: float,
                  lower_bound: bool = True) -> bool:
    """The search's rule (``search_refine``): at most the target everywhere and (with
    ``lower_bound``; not when a params bound binds) within ``tolerance`` below it somewhere."""
    return (all(measured[d] <= t for d, t in targets.items())
            and (not lower_bound or any(measured[d] >= t * (1 - tolerance) for d, t in targets.items())))


@dataclasses.dataclass
class ControlDraw:
    """One measured draw: its genome, estimated and measured ms per device, and whether it is a control."""

    genome: tuple[int, ...]
    estimated_ms: dict[str, float]
    measured_ms: dict[str, float]
    within: bool
    round: int
    params: float


def draw_controls(space: SearchSpace, catalog, estimators: Mapping[str, Any], targets: Mapping[str, float],
                  count: int, measure_fn: Callable[[np.ndarray], Mapping[str, float]] | None, rng: np.random.Generator,
                  *, tolerance: float = 0.03, max_params: float | None = None, initial_ratio: Mapping[str, float] | None = None,
                  max_measured: int | None = None, method: str = "gibbs", sweeps: int = 20, batch: int = 65_536,
                  max_draws: int = 20_000_000, num_classes: int = 1000,
                  log: Callable[[str], None] | None = None) -> tuple[list[ControlDraw], dict]:
    """``count`` controls: uniform subnets whose *measured* latency is within the search's
    window of ``targets`` (device -> ms), under ``max_params``.

    Each round draws the missing number in the estimated window (:func:`estimated_window`,
    the ratio starting from ``initial_ratio``, then the median measured / estimated ratio of
    every draw measured so far), measures them (``measure_fn(genome)`` -> device -> ms) and
    keeps those within (:func:`within_window`). At most ``max_measured`` measurements (default
    3 x count + 2). Without ``measure_fn`` (a device not measurable here) the estimate decides
    and every draw is kept, marked as not measured. Returns the draws (controls and
    rejected ones) and a summary (rounds, draws, measured, accepted, message).
    """
    say = log or (lambda _m: None)
    max_measured = 3 * count + 2 if max_measured is None else max_measured
    ratios = {d: float((initial_ratio or {}).get(d) or 1.0) for d in targets}
    params_estimator = Constraints(catalog, (), None, None, num_classes).params_estimator
    lower_bound = max_params is None  # a binding params bound may keep a subnet below the window (as for ours)
    draws: list[ControlDraw] = []
    seen: set[bytes] = set()
    total_draws, round_number = 0, 0
    while sum(d.within for d in draws) < count and (measure_fn is None or len(draws) < max_measured):
        round_number += 1
        need = count - sum(d.within for d in draws)
        if measure_fn is not None:
            need = min(need, max_measured - len(draws))
        window = estimated_window(targets, ratios, tolerance)
        if measure_fn is None:
            window = {d: (t * (1 - tolerance), t) for d, t in targets.items()}
        constraints = window_constraints(catalog, estimators, window, max_params, num_classes)
        genomes, used = sample_in_window(space, constraints, need, rng, method=method, sweeps=sweeps, batch=batch,
                                         max_draws=max_draws, exclude=seen)
        total_draws += used
        estimates = constraints.evaluate(genomes, [f"latency_ms.{d}" for d in targets])
        params = params_estimator.predict_genomes(genomes)
        for i, genome in enumerate(genomes):
            estimated = {d: float(estimates[f"latency_ms.{d}"][i]) for d in targets}
            if measure_fn is None:
                measured, inside = {}, True
            else:
                measured = {d: float(v) for d, v in measure_fn(genome).items() if d in targets}
                inside = within_window(measured, targets, tolerance, lower_bound)
            draws.append(ControlDraw(tuple(int(g) for g in genome), estimated, measured, inside, round_number,
                                     float(params[i])))
            say(f"control draw {len(draws)} (round {round_number}): " + ", ".join(
                f"{d} est {estimated[d]:.3f} ms" + (f" measured {measured[d]:.3f} ms" if measured else "")
                for d in targets) + (" -> control" if inside else " -> outside the window"))
        if measure_fn is None:
            break
        measured_draws = [d for d in draws if d.measured_ms]
        ratios = {dev: float(np.median([d.measured_ms[dev] / d.estimated_ms[dev] for d in measured_draws]))
                  for dev in targets}
        if round_number >= 2 * max(1, max_measured):
            break
    accepted = sum(d.within for d in draws)
    message = (f"{accepted} of {count} controls measured within [-{tolerance:.0%}, 0] of {dict(targets)} "
               f"({len(draws)} measured; {method} sampling, {total_draws:,} genomes evaluated)"
               if measure_fn is not None else
               f"{accepted} controls by the calibrated estimate only (the device is not measurable here)")
    return draws, {"rounds": round_number, "sampler": method, "sweeps": sweeps if method == "gibbs" else None,
                   "genomes_evaluated": total_draws, "measured": len(draws) if measure_fn else 0,
                   "accepted": accepted, "requested": count, "measured_on_device": measure_fn is not None,
                   "message": message}


# --------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN with fewer than two values)."""
    x = np.asarray([v for v in values if v is not None and not _isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan


def difference_interval(ours: Sequence[float], others: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """The difference of means ``mean(ours) - mean(others)`` with a t-interval.

    * both with two or more values: Welch's interval (unequal variances);
    * one value of ours (one seed): ``others`` as a sample, ours as a fixed value (a
      one-sample t-interval of ``ours - others``; ours' own seed noise is not counted, the
      method says so);
    * fewer than two values of ``others`` and of ours: no interval (NaN bounds).

    Returns ``{diff, low, high, confidence, method, n_ours, n_others}``.
    """
    a = np.asarray([v for v in ours if v is not None and not _isnan(v)], dtype=float)
    b = np.asarray([v for v in others if v is not None and not _isnan(v)], dtype=float)
    out = {"diff": math.nan, "low": math.nan, "high": math.nan, "confidence": confidence, "method": "none",
           "n_ours": int(len(a)), "n_others": int(len(b))}
    if len(a) == 0 or len(b) == 0:
        return out
    diff = float(a.mean() - b.mean())
    out["diff"] = diff
    q = 0.5 + confidence / 2
    if len(a) >= 2 and len(b) >= 2:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        if se == 0:
            out.update(low=diff, high=diff, method="welch (no spread)")
            return out
        dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        half = float(stats.t.ppf(q, dof)) * se
        out.update(low=diff - half, high=diff + half, method="welch t")
    elif len(b) >= 2 or len(a) >= 2:
        sample, n = (b, len(b)) if len(b) >= 2 else (a, len(a))
        se = float(sample.std(ddof=1)) / math.sqrt(n)
        half = float(stats.t.ppf(q, n - 1)) * se
        fixed = "ours" if len(b) >= 2 else "the other"
        out.update(low=diff - half, high=diff + half,
                   method=f"one-sample t ({fixed}: one run, its seed noise not counted)")
    return out


def blocked_difference_interval(ours: Mapping[int, float], others: Sequence[Mapping[int, float]],
                                confidence: float = CONFIDENCE) -> dict:
    """``mean(ours) - mean(others)`` over the seeds they share, with seeds as blocks.

    A seed fixes the data order and augmentation of every model trained with it, so its effect
    is shared: in the smoke benchmark seed 0 gave every model 26-28 % and seeds 1-2 gave 31-34 %.
    Per seed s, ``d_s = ours_s - mean_k other_{k,s}``; the estimate is their mean, its variance
    ``var_s(d_s) / S`` (seed noise) plus, with two or more others (random architectures, a sample
    of a population), ``var_k(m_k) / K`` (m_k: other k's mean over the seeds; which architectures
    were drawn), degrees of freedom by Welch-Satterthwaite. One other: a paired t-interval
    against that model. Falls back to :func:`difference_interval` (ours' seeds vs the others'
    means) when fewer than two seeds are shared.
    """
    shared = sorted(set(ours).intersection(*[set(o) for o in others])) if others else []
    if len(shared) < 2:
        return difference_interval(list(ours.values()), [float(np.mean(list(o.values()))) for o in others if o],
                                   confidence)
    table = np.array([[o[s] for s in shared] for o in others], dtype=float)  # [K, S]
    d = np.array([ours[s] for s in shared], dtype=float) - table.mean(axis=0)
    k, n = table.shape
    seed_part = d.var(ddof=1) / n
    arch_part = table.mean(axis=1).var(ddof=1) / k if k >= 2 else 0.0
    diff = float(d.mean())
    out = {"diff": diff, "low": math.nan, "high": math.nan, "confidence": confidence,
           "method": f"seed-blocked t ({n} shared seeds" + (f", {k} architectures)" if k >= 2 else ", paired)"),
           "n_ours": n, "n_others": k}
    variance = seed_part + arch_part
    if variance == 0:
        out.update(low=diff, high=diff)
        return out
    terms = [(seed_part, n - 1)] + ([(arch_part, k - 1)] if k >= 2 else [])
    dof = variance ** 2 / sum(v ** 2 / f for v, f in terms if v > 0)
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(variance)
    out.update(low=diff - half, high=diff + half)
    return out


def claim(name: str, other: str, interval: Mapping[str, Any], unit: float = 100.0, what: str = "top-1") -> str:
    """The one sentence a report may say: ``name`` beats (or trails) ``other`` only when the
    interval excludes zero; "not distinguishable" otherwise (also when there is no interval)."""
    diff, low, high = interval["diff"], interval["low"], interval["high"]
    level = f"{100 * interval.get('confidence', CONFIDENCE):.0f} %"
    if _isnan(diff):
        return f"{name} vs {other}: no result to compare"
    numbers = f"{diff * unit:+.2f} points of {what}"
    if _isnan(low) or _isnan(high):
        counts = {interval["n_ours"], interval["n_others"]}
        n = f"n = {counts.pop()}" if len(counts) == 1 else f"n = {interval['n_ours']} and {interval['n_others']}"
        return f"{name} and {other} are not distinguishable ({n}): {numbers}, too few runs for an interval"
    span = f"{numbers}, {level} CI [{low * unit:+.2f}, {high * unit:+.2f}] ({interval['method']})"
    if low > 0:
        return f"{name} beats {other}: {span}"
    if high < 0:
        return f"{name} trails {other}: {span}"
    return f"{name} and {other} are not distinguishable: {span} includes 0"


# --------------------------------------------------------------------------- the predictor where the search uses it
def window_quality(predicted: Sequence[float], measured: Sequence[float], top_fraction: float = 0.25) -> dict:
    """The predictor on the subnets of one target window: Spearman of predicted vs measured
    (inherited) scores, and top-k precision (the share of the predictor's top k that are in
    the measured top k; k = ``top_fraction`` of the subnets, at least 1; chance = k / n)."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    n = len(p)
    if n < 3:
        return {"n": n, "spearman": math.nan, "top_k": 0, "top_k_precision": math.nan, "chance": math.nan}
    k = max(1, int(round(top_fraction * n)))
    rho = stats.spearmanr(p, m).statistic
    top_p, top_m = set(np.argsort(-p, kind="stable")[:k]), set(np.argsort(-m, kind="stable")[:k])
    return {"n": n, "spearman": float(rho), "top_k": k, "top_k_precision": len(top_p & top_m) / k, "chance": k / n}


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


__all__ = ["ControlsConfig", "ControlDraw", "WindowSamplingError", "window_constraints", "sample_in_window",
           "gibbs_in_window",
           "estimated_window", "within_window", "draw_controls", "mean_std", "difference_interval",
           "blocked_difference_interval", "claim",
           "window_quality", "CONFIDENCE"]
