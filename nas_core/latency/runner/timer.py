"""Timing one callable until its median is stable (``TimingConfig``), and the statistics of the
timed calls (``TimingResult``, with a distribution-free confidence interval of the median)."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

# What a call's duration is read from: ``options["clock"]`` of the settings. ``wall`` (the
# default) is the latency a device's user waits. ``cpu`` is this process's CPU time: it
# leaves out the time the scheduler gave other processes, so single-thread CPU timings on
# a busy shared machine read close to a quiet machine's (cache and memory-bandwidth
# interference remain). It equals latency only for single-thread CPU work whose runtime
# does not spin other threads, hence ``settings_clock`` refuses it elsewhere.
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}
CPU_PROVIDERS = ("CPUExecutionProvider", "CPU", "cpu")


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """When to stop timing one model.

    Warm-up: at least ``warmup_runs`` calls and ``warmup_ms`` of them (first calls pay for
    allocation, kernel selection, cold caches). Then time calls one by one until there are
    at least ``min_repeats`` of them and ``min_total_ms`` of timed work, and the median
    moved by at most ``stability`` (relative) since the previous check (checks every
    ``check_every`` calls, or a quarter of the calls so far when that is more). Hard caps
    ``max_repeats`` and ``max_total_ms`` bound slow models; ``stable`` in the result says
    whether the median had converged when timing stopped.
    """

    warmup_runs: int = 10
    warmup_ms: float = 100.0
    min_repeats: int = 50
    min_total_ms: float = 500.0
    max_repeats: int = 2000
    max_total_ms: float = 10_000.0
    stability: float = 0.01
    check_every: int = 20

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping | None) -> "TimingConfig":
        return cls(**(values or {}))


@dataclasses.dataclass(frozen=True)
class TimingResult:
    """Statistics of the timed calls of one model, in milliseconds; ``info`` is session detail."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    total_ms: float
    stable: bool
    info: dict = dataclasses.field(default_factory=dict, compare=False)
    median_ci_low_ms: float = float("nan")  # 95 % CI of the median (``median_ci``)
    median_ci_high_ms: float = float("nan")

    def to_row(self) -> dict:
        return {k: getattr(self, k) for k in ("median_ms", "p10_ms", "p90_ms", "mean_ms", "min_ms", "repeats", "stable")}

    def dispersion_row(self) -> dict:
        """The repeat dispersion of the median (the ``median_ci_*`` columns of a table)."""
        return {"median_ci_low_ms": self.median_ci_low_ms, "median_ci_high_ms": self.median_ci_high_ms}


Clock = Callable[[], int]


def time_callable(run: Callable[[], Any], config: TimingConfig | None = None,
                  clock: Clock = time.perf_counter_ns) -> TimingResult:
    """Time ``run()`` as described in ``TimingConfig``; each call is timed on its own."""
    config = config or TimingConfig()
    _warm_up(run, config, clock)

    def one_call() -> tuple[float, int]:
        start = clock()
        run()
        elapsed = clock() - start
        return elapsed, elapsed

    samples_ns, stable = _sample_until_stable(one_call, config)
    return _summarise(samples_ns, stable)


def _sample_until_stable(take: Callable[[], tuple[float, int]], config: TimingConfig) -> tuple[list[float], bool]:
    """Samples from ``take()`` (each: the value whose median is wanted, and the model's timed
    ns that count toward ``min_total_ms`` / ``max_total_ms``) until ``config``'s stopping rule
    says so; returns them and whether the median had converged."""
    samples: list[float] = []
    total_ns = 0
    previous_median = None
    stable = False
    next_check = config.min_repeats
    while True:
        value, timed_ns = take()
        samples.append(value)
        total_ns += timed_ns
        count = len(samples)
        capped = count >= config.max_repeats or total_ns >= config.max_total_ms * 1e6
        if not capped and (count < next_check or total_ns < config.min_total_ms * 1e6):
            continue
        median = statistics.median(samples)
        stable = previous_median is not None and abs(median - previous_median) <= config.stability * previous_median
        if stable or capped:
            return samples, stable
        previous_median = median
        next_check = count + max(config.check_every, count // 4)


# --------------------------------------------------------------------------------------
# Paired timing. On a shared virtual machine the host's speed moves by +-30 % within
# seconds, whatever this guest does (measured here: MobileNetV2 7.3-11 ms in successive
# half-second windows, on an idle guest). A model's median is then a sample of the host's
# mood, and a LUT summed from such medians misses subnets timed minutes later. Timing each
# call right next to a call of a fixed reference model and keeping the ratio cancels what
# both calls share (the ratio's spread over windows was 1.5 % where the raw times' was
# 5-6 %). A paired result is ``median(model / reference) * yardstick_ms``: milliseconds of
# a machine whose reference takes ``yardstick_ms``, the same scale for every job of a
# device when they share the reference and ``yardstick_ms`` (the LUT's; see
# ``nas_core.latency.lut.yardstick``).
# --------------------------------------------------------------------------------------
def paired_timing(settings: Mapping) -> bool:
    """Whether a device is timed in pairs with its reference (``options["paired_reference"]``)."""
    return bool((settings.get("options") or {}).get("paired_reference", False))


def time_paired(run: Callable[[], Any], reference_run: Callable[[], Any], yardstick_ms: float,
                config: TimingConfig | None = None, clock: Clock = time.perf_counter_ns) -> TimingResult:
    """Time ``run()`` paired with ``reference_run()``; statistics are of the per-pair ratio
    times ``yardstick_ms``. Stops as ``time_callable`` does, counting ``run``'s time only;
    ``info["raw_median_ms"]`` is the model's own median, for the record."""
    config = config or TimingConfig()
    _warm_up(run, config, clock)
    _warm_up(reference_run, dataclasses.replace(config, warmup_ms=0.0), clock)
    raw_ns: list[int] = []

    def one_pair() -> tuple[float, int]:
        start = clock()
        run()
        model_ns = clock() - start
        start = clock()
        reference_run()
        reference_ns = clock() - start
        raw_ns.append(model_ns)
        return model_ns / max(reference_ns, 1), model_ns

    ratios, stable = _sample_until_stable(one_pair, config)
    result = _summarise([r * yardstick_ms * 1e6 for r in ratios], stable)
    return dataclasses.replace(result, info={"raw_median_ms": float(statistics.median(raw_ns)) / 1e6,
                                             "yardstick_ms": float(yardstick_ms)})


def _warm_up(run: Callable[[], Any], config: TimingConfig, clock: Clock) -> None:
    start = clock()
    calls = 0
    while calls < config.warmup_runs or (clock() - start) < config.warmup_ms * 1e6:
        run()
        calls += 1
        if calls >= 100 * max(config.warmup_runs, 1):  # a zero-cost fake clock must not spin forever
            break


def _summarise(samples_ns: Sequence[int], stable: bool) -> TimingResult:
    samples_ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p10, median, p90 = np.percentile(samples_ms, [10, 50, 90])
    low, high = median_ci(samples_ms)
    return TimingResult(
        median_ms=float(median), p10_ms=float(p10), p90_ms=float(p90),
        mean_ms=float(samples_ms.mean()), min_ms=float(samples_ms.min()),
        repeats=int(samples_ms.size), total_ms=float(samples_ms.sum()), stable=bool(stable),
        median_ci_low_ms=low, median_ci_high_ms=high,
    )


def median_ci(samples: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (``z`` = 1.96: 95 %).

    The order statistics of ranks ``n/2 -+ z*sqrt(n)/2`` (1-based, rounded outwards; the
    normal approximation of the binomial count of samples below the median) bound the
    population median with that confidence for independent samples, whatever their
    distribution. Timed calls in a row are not quite independent (a busy moment spans
    several calls), so the interval is a lower bound on the median's real uncertainty.
    """
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    n = ordered.size
    if n == 0:
        return float("nan"), float("nan")
    half_width = z * np.sqrt(n) / 2.0
    low_rank = max(1, int(np.floor(n / 2.0 - half_width)))
    high_rank = min(n, int(np.ceil(n / 2.0 + 1.0 + half_width)))
    return float(ordered[low_rank - 1]), float(ordered[high_rank - 1])


def settings_clock(settings: Mapping) -> str:
    """The clock name of ``settings`` (``options["clock"]``, default ``wall``), checked."""
    name = (settings.get("options") or {}).get("clock", "wall")
    if name not in CLOCKS:
        raise ValueError(f"device {settings.get('name')!r}: clock {name!r} is not one of {', '.join(CLOCKS)}")
    if name == "cpu" and (int(settings["threads"]) != 1 or settings["provider"] not in CPU_PROVIDERS):
        raise ValueError(f"device {settings.get('name')!r}: the cpu clock reads latency only for "
                         "single-thread CPU profiles")
    return name


def time_session(session, config: TimingConfig | None = None, clock: Clock = time.perf_counter_ns) -> TimingResult:
    """Time an open session's ``run``; the result's ``info`` is the session's ``info``."""
    result = time_callable(session.run, config, clock)
    return dataclasses.replace(result, info=dict(getattr(session, "info", {})))
