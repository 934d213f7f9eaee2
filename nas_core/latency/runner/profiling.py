"""Timing many models into one table (a latency lookup table): a drift-detecting reference
model, atomic checkpoints and resume."""
from __future__ import annotations

import dataclasses
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .host import load_average, machine_fingerprint, pinned_cpus, utc_now
from .sessions import open_entry, runtime_identity
from .settings import ModelEntry, normalise_settings
from .table import check_same_identity, read_rows, run_identity, write_rows
from .timer import (CLOCKS, Clock, TimingConfig, TimingResult, paired_timing, settings_clock, time_paired,
                    time_session)

# The reference model's drift baseline is the median of its first this-many timings.
BASELINE_TIMINGS = 3

Opener = Callable[[ModelEntry, Mapping], Any]


def profile_models(entries: Iterable, settings: Any, out_path: str | os.PathLike, reference_id: str | None = None,
                   seed: int = 0, resume: bool = True, drift_tolerance: float = 0.10, *,
                   config: TimingConfig | None = None, check_every: int = 10, max_retries: int = 2,
                   drift_pause_s: float = 2.0, open_fn: Opener | None = None, runtime: tuple[str, str] | None = None,
                   code_version: str = "unknown", clock: Clock | None = None, pin_cpus: bool = True,
                   on_measured: Callable[[str, TimingResult], None] | None = None, progress: bool = True,
                   extra_provenance: Mapping | None = None, yardstick_ms: float | None = None) -> list[dict]:
    """Time every entry under ``settings``; write (and return) one row per model to ``out_path``.

    * Order: the reference model first, then the others shuffled with ``seed`` (so slow
      drifts spread over all kinds of blocks rather than hitting one stage).
    * Drift: every ``check_every`` models the reference is re-timed (its session stays
      open). When its median is off its baseline (the median of its first
      ``BASELINE_TIMINGS`` timings, back to back at the start) by more than
      ``drift_tolerance`` (relative), the models timed since the last good check are
      re-timed, after ``drift_pause_s``, up to ``max_retries`` times; if the reference is
      still off, the rows are kept with ``drift_flag`` True.
    * Checkpoints: each block's rows are written (atomically) only after the reference
      check that vouches for them; an interrupted run loses at most the block in flight.
    * Resume: rows already in ``out_path`` with the same id and input shape are skipped;
      a file made with other settings, timing configuration (``config``), runtime
      version, resolution, machine or reference raises. Drift is judged against the
      first run's reference baseline, so a machine that changed between the runs shows
      up as re-measured / flagged rows, not silently. ``resume=False`` starts over.
    ``entries``: ``ModelEntry`` or dicts with ``id``, ``path`` and ``input_shape``.
    ``open_fn(entry, settings)`` opens a session (default: ONNX file on the runtime);
    ``runtime`` overrides (name, version) when ``open_fn`` brings its own runtime.
    ``on_measured(id, result)`` is called after each timing (tests use it to interrupt).
    ``clock`` defaults to the settings' clock (``settings_clock``); tests pass a fake one.
    * Paired timing (the device option ``paired_reference``): every model is timed call by call next to
      the reference (``time_paired``) and expressed on the scale ``yardstick_ms`` (default:
      the reference's own baseline, recorded as ``reference["yardstick_ms"]``); drift
      re-timing is then off (the pairing already cancels it) and the checks are a record.
    """
    settings = normalise_settings(settings)
    config = config or TimingConfig()
    paired = paired_timing(settings)
    clock_name = settings_clock(settings) if clock is None else "custom"
    clock = clock or CLOCKS[clock_name]
    out_path = Path(out_path)
    all_entries = _unique_entries(entries)
    reference_id = reference_id or sorted(all_entries)[0]
    if reference_id not in all_entries:
        raise KeyError(f"reference model {reference_id!r} is not among the entries")
    open_fn = open_fn or (lambda entry, s: open_entry(entry, s, seed))
    runtime = tuple(runtime or runtime_identity(settings["backend"]))
    fingerprint = machine_fingerprint()
    identity = run_identity(settings, runtime, fingerprint, config)
    state = _RunState.start(out_path, identity, resume, all_entries, reference_id)
    if state.reference is None and reference_id in state.rows:  # a table without the reference's metadata
        state.reference = {"id": reference_id, "baseline_ms": state.rows[reference_id]["median_ms"]}

    todo = [all_entries[i] for i in sorted(all_entries) if i not in state.rows and i != reference_id]
    random.Random(seed).shuffle(todo)
    row_base = {**{k: v for k, v in identity.items() if k not in ("options", "timing")}, "code_version": code_version}
    reporter = _Progress(len(todo) + (reference_id not in state.rows), settings["name"], progress)

    def measure(entry: ModelEntry, attempt: int, session=None) -> dict:
        own_session = session is None
        session = session or open_fn(entry, settings)
        try:
            if paired:
                result = time_paired(session.run, reference_session.run, state.reference["yardstick_ms"], config,
                                     clock)
                result = dataclasses.replace(result, info={**getattr(session, "info", {}), **result.info})
            else:
                result = time_session(session, config, clock)
        finally:
            if own_session:
                session.close()
        if on_measured is not None:
            on_measured(entry.id, result)
        reporter.measured(entry.id, result, attempt)
        return {**row_base, **result.to_row(), **result.dispersion_row(), "id": entry.id,
                "input_shape": entry.shape_text, "attempts": attempt,
                "drift_flag": False, "reference_ratio": 1.0, "timestamp": utc_now(), "load_average": load_average(),
                "precision_actual": result.info.get("precision_actual", "unknown"),
                "provider": result.info.get("provider", settings["provider"]),
                **({"raw_median_ms": result.info["raw_median_ms"]} if paired else {})}

    provenance = {
        "kind": "latency_table", "settings": settings, "identity": identity, "machine": fingerprint,
        "timing": config.to_dict(), "seed": seed, "drift_tolerance": drift_tolerance, "check_every": check_every,
        "code_version": code_version, "clock": clock_name, **(extra_provenance or {}),
    }
    with pinned_cpus(settings["threads"], enabled=pin_cpus and settings["options"].get("pin_cpus", True)) as cpus:
        provenance["cpu_affinity"] = cpus
        reference = all_entries[reference_id]
        reference_session = open_fn(reference, settings)
        try:
            if reference_id not in state.rows:
                if paired:
                    state.reference = _reference_baseline(reference_id, time_session(reference_session, config, clock)
                                                          .median_ms, reference_session, config, clock)
                    state.reference["yardstick_ms"] = float(yardstick_ms or state.reference["baseline_ms"])
                    first = measure(reference, 1, reference_session)
                else:
                    first = measure(reference, 1, reference_session)
                    # A drift yardstick only matters when other models follow (a one-model job: none).
                    state.reference = (_reference_baseline(reference_id, first["median_ms"], reference_session,
                                                           config, clock) if todo else
                                       {"id": reference_id, "baseline_ms": first["median_ms"],
                                        "baseline_timings_ms": [first["median_ms"]]})
                state.add_rows([first])
                state.write(provenance)
            elif paired and yardstick_ms is not None \
                    and abs(state.reference.get("yardstick_ms", yardstick_ms) - yardstick_ms) > 1e-9 * yardstick_ms:
                raise ValueError(f"{out_path}: timed on the scale of a {state.reference['yardstick_ms']} ms reference, "
                                 f"now {yardstick_ms} ms; start over (resume=False)")
            tolerance = float("inf") if paired else drift_tolerance
            for block in _chunks(todo, max(1, check_every)):
                rows = _measure_block(block, measure, reference_session, state, config, clock,
                                      tolerance, max_retries, drift_pause_s, reporter)
                state.add_rows(rows)
                state.write(provenance)
        finally:
            reference_session.close()
            reporter.close()
    return [state.rows[i] for i in state.order]


def _reference_baseline(reference_id: str, first_ms: float, session, config: TimingConfig, clock: Clock) -> dict:
    """The drift checks' yardstick: the median of the reference's first ``BASELINE_TIMINGS``
    timings, taken back to back before any other model.

    One timing alone can be spoiled by a noisy moment, and every later check would then
    look drifted (every block re-timed, then flagged). The baseline is settled before the
    first check, so that real drift during the run cannot leak into it.
    """
    timings = [first_ms] + [time_session(session, config, clock).median_ms for _ in range(BASELINE_TIMINGS - 1)]
    return {"id": reference_id, "baseline_ms": float(statistics.median(timings)), "baseline_timings_ms": timings}


def _measure_block(block, measure, reference_session, state, config, clock, tolerance, max_retries, pause_s,
                   reporter) -> list[dict]:
    """Time a block, then the reference; re-time the block while the reference drifted."""
    for attempt in range(1, max_retries + 2):
        rows = [measure(entry, attempt) for entry in block]
        reference_ms = time_session(reference_session, config, clock).median_ms
        ratio = reference_ms / state.reference["baseline_ms"]
        drifted = abs(ratio - 1.0) > tolerance
        state.checks.append({"after": len(state.rows) + len(rows), "attempt": attempt, "median_ms": reference_ms,
                             "ratio": ratio, "drifted": drifted, "timestamp": utc_now(), "load_average": load_average()})
        if not drifted:
            break
        reporter.note(f"reference {state.reference['id']} at {ratio:.3f}x its baseline "
                      f"(tolerance {tolerance:.0%}); attempt {attempt} of {max_retries + 1} for {len(block)} models")
        if attempt <= max_retries and pause_s > 0:
            time.sleep(pause_s)
    for row in rows:
        row["reference_ratio"] = ratio
        row["drift_flag"] = drifted
    return rows


def _unique_entries(entries: Iterable) -> dict[str, ModelEntry]:
    unique: dict[str, ModelEntry] = {}
    for raw in entries:
        entry = ModelEntry.from_any(raw)
        if entry.id in unique:
            raise ValueError(f"duplicate model id {entry.id!r}")
        unique[entry.id] = entry
    if not unique:
        raise ValueError("no models to profile")
    return unique


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclasses.dataclass
class _RunState:
    """Rows measured so far (from the file when resuming), the reference baseline and its checks."""

    path: Path
    identity: dict
    rows: dict[str, dict]
    order: list[str]
    reference: dict | None
    checks: list[dict]

    @classmethod
    def start(cls, path: Path, identity: dict, resume: bool, entries: Mapping[str, ModelEntry],
              reference_id: str) -> "_RunState":
        if not (resume and path.exists()):
            return cls(path, identity, {}, [], None, [])
        rows, provenance = read_rows(path)
        # Tables written before the identity held the timing settings have them beside it.
        check_same_identity(path, {"timing": provenance.get("timing"), **provenance.get("identity", {})}, identity)
        reference = provenance.get("reference")
        if reference and reference["id"] != reference_id:
            raise ValueError(f"{path}: drift was checked against reference {reference['id']!r}, "
                             f"now {reference_id!r}; keep the reference, or start over")
        for row in rows:
            entry = entries.get(row["id"])
            if entry is not None and row["input_shape"] != entry.shape_text:
                raise ValueError(f"{path}: model {row['id']!r} was timed with input {row['input_shape']}, "
                                 f"now {entry.shape_text}; refusing to mix")
        return cls(path, identity, {r["id"]: r for r in rows}, [r["id"] for r in rows],
                   provenance.get("reference"), list(provenance.get("reference_checks", [])))

    def add_rows(self, rows: Sequence[dict]) -> None:
        for row in rows:
            if row["id"] not in self.rows:
                self.order.append(row["id"])
            self.rows[row["id"]] = row

    def write(self, provenance: dict) -> None:
        provenance = {**provenance, "reference": self.reference, "reference_checks": self.checks,
                      "written_at": utc_now()}
        write_rows(self.path, [self.rows[i] for i in self.order], provenance)


class _Progress:
    """tqdm bar when tqdm is importable, else one plain line per model (stderr)."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.enabled = enabled
        self.count = 0
        self.total = total
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=label, unit="model", file=sys.stderr)
            except ImportError:
                pass

    def measured(self, model_id: str, result: TimingResult, attempt: int) -> None:
        if not self.enabled:
            return
        if attempt > 1 and self.bar is not None:
            self.bar.total += 1
        self.count += 1
        text = f"{model_id}: {result.median_ms:.3f} ms (p10 {result.p10_ms:.3f}, p90 {result.p90_ms:.3f}, n={result.repeats})"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        else:
            print(f"[{self.count}/{self.total}] {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
