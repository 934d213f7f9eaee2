"""Which blocks of a LUT really moved between two measurements, and by how much (re-profiling).

Two LUTs of one device (before and after a runtime update, or the same runtime timed twice)
never agree exactly: at the smoke timing budget a block's median moves by up to ±30 %
between two runs on a shared machine. A change report that flags every move above a
fixed threshold cannot tell what the compiler changed from what the timer did, so each
block's move is stated with its measurement uncertainty and flagged only beyond it.

The rule (:class:`ChangeRule`, :func:`compare_luts`)
----------------------------------------------------
Moves are compared on the log scale: ``d = ln(new_ms / old_ms)`` (a relative change;
symmetric, and latency noise is multiplicative). Its standard error combines, for the old
and the new LUT,

* the block's **repeat dispersion**: the standard error of its median from its own timed
  calls, ``(ln hi - ln lo) / (2 · 1.96)`` of the 95 % order-statistic interval recorded in
  the LUT (``median_ci_low_ms`` / ``median_ci_high_ms``, ``timing.median_ci``). A LUT timed
  before the interval was recorded falls back to ``1.2533 · σ / √n / median`` with
  ``σ = (p90 - p10) / 2.563`` (the normal-theory standard error of a median);
* the run's **drift floor**: the robust spread (1.4826 · MAD of the log medians) of the
  drift-reference block, re-timed every ``check_every`` blocks through the run
  (``reference_checks`` in the LUT's provenance). It is what one block's median varies by
  from one moment of the run to another, which the repeats of a single moment cannot
  see: machine load, cache and frequency states;
* the **session floor** ``session_floor`` (relative, per LUT): what re-opening a block's
  session moves its median by beyond the two above (memory placement of a new session,
  the kernels it picks). Neither the repeats nor the reference (one session kept open)
  see it directly; :func:`estimate_session_floor` fits it on a noise baseline
  (``scan-edge reprofile --force``, ``benchmarks/reprofile_noise.py``). It is 0 by
  default (params ``reprofile.session_floor``): on this machine the drift floor already
  explains the noise baseline,

``σ = sqrt(se_old² + se_new² + drift_old² + drift_new² + 2 · session_floor²)``. A block is
flagged when ``|d| > z · σ`` (``z`` = 3 by default: about 0.3 % of unchanged blocks by
chance if the errors were normal) **and** ``|new/old - 1| >= min_change`` (a move too
small to matter is not reported however sure it is). Each row states the move with its
``z``-interval, so a reader sees the uncertainty of unflagged blocks too.

The **common shift** (median of ``d`` over all blocks, and over each kind of block, with
a bootstrap 95 % interval) says whether everything, or one kind of operator, moved
together: pooled over hundreds of blocks it resolves moves of a few percent that no
single block can show. Its interval covers the blocks' scatter only, not the state of the
machine during each run, which all blocks of a run share: read it against the common
shift of a noise baseline on the same machine (``benchmarks/README.md``: up to +11 % for
one kind of block on this shared machine).

On a shared machine the drift floor dominates (±16-18 % per LUT here, against ±1 % from
the repeats): the moves of two runs of one runtime scatter by ±21 % (robust σ of ``d``),
which the floors predict (``estimate_session_floor`` fits 0 on top of them), so the rule
flags 0.5 % of blocks with nothing changed and only moves of about 2x and more for single
blocks; a quiet machine (or ``lut.timing`` with more repeats) gives narrower floors.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import numpy as np
import pandas as pd

from nas_core.config import SectionConfig

Z_95 = 1.959964
SIGMA_FROM_P10_P90 = 2.0 * 1.281552  # the p10-p90 width of a normal distribution, in σ
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2.0)  # se(median) = 1.2533 σ / √n for normal samples
MAD_TO_SIGMA = 1.4826

CHANGE_COLUMNS = ["block_id", "kind", "old_ms", "new_ms", "change", "change_low", "change_high", "uncertainty",
                  "z_score", "flagged"]


@dataclasses.dataclass(frozen=True)
class ChangeRule(SectionConfig):
    """When a block counts as moved (see the module docstring); params.yaml ``reprofile:``."""

    section: ClassVar[str] = "reprofile"

    z: float = 3.0
    min_change: float = 0.05
    session_floor: float = 0.0

    def __post_init__(self):
        if not self.z > 0:
            raise ValueError(f"change rule: z must be positive, not {self.z}")
        if not 0 <= self.min_change < 1:
            raise ValueError(f"change rule: min_change is a relative move in [0, 1), not {self.min_change}")
        if not 0 <= self.session_floor < 1:
            raise ValueError(f"change rule: session_floor is a relative spread in [0, 1), not {self.session_floor}")


@dataclasses.dataclass
class LutComparison:
    """Every block's move between two LUTs (``frame``: ``CHANGE_COLUMNS``, largest |z| first)
    and the run-level figures."""

    frame: pd.DataFrame
    rule: ChangeRule
    drift_floor: dict[str, float]
    common_shift: dict[str, float]
    shift_by_kind: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def flagged(self) -> pd.DataFrame:
        return self.frame[self.frame["flagged"]].reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        """The figures a report and a benchmark quote (JSON-ready)."""
        total = len(self.frame)
        unc = self.frame["uncertainty"]
        naive = int((self.frame["change"].abs() > 0.10).sum())
        return {"blocks_compared": total, "blocks_flagged": int(self.frame["flagged"].sum()),
                "fraction_flagged": round(float(self.frame["flagged"].mean()) if total else 0.0, 4),
                "blocks_beyond_10pct": naive, "rule": self.rule.to_dict(),
                "median_abs_change": _round(self.frame["change"].abs().median()),
                "max_abs_change": _round(self.frame["change"].abs().max()),
                "median_uncertainty": _round(unc.median()), "p90_uncertainty": _round(unc.quantile(0.9)),
                "drift_floor": {k: _round(v) for k, v in self.drift_floor.items()},
                "common_shift": {k: _round(v) for k, v in self.common_shift.items()},
                "shift_by_kind": {kind: {k: _round(v) for k, v in shift.items()}
                                  for kind, shift in self.shift_by_kind.items()}}

    def markdown_table(self, rows: int = 25, flagged_only: bool = True) -> str:
        """The (flagged) blocks as a Markdown table: move, its interval and z."""
        shown = (self.flagged if flagged_only else self.frame).head(rows)
        lines = ["| block | kind | old ms | new ms | change | 3σ interval | z |", "|---|---|---|---|---|---|---|"]
        for row in shown.itertuples():
            lines.append(f"| `{row.block_id}` | {row.kind} | {row.old_ms:.4f} | {row.new_ms:.4f} | "
                         f"{row.change:+.1%} | [{row.change_low:+.1%}, {row.change_high:+.1%}] | {row.z_score:+.1f} |")
        return "\n".join(lines)


def compare_luts(old_lut: pd.DataFrame, new_lut: pd.DataFrame, rule: ChangeRule | None = None,
                 old_provenance: Mapping | None = None, new_provenance: Mapping | None = None) -> LutComparison:
    """Each block's move from ``old_lut`` to ``new_lut`` with its uncertainty (module docstring).

    Blocks in only one LUT are left out. The provenance of each LUT
    (``nas_core.io.read_provenance``) gives its drift floor; without it, or without
    reference checks in it, that floor is 0.
    """
    rule = rule or ChangeRule()
    floors = {"old": drift_floor(old_provenance), "new": drift_floor(new_provenance)}
    old = _block_errors(old_lut).add_prefix("old_").rename(columns={"old_block_id": "block_id", "old_kind": "kind"})
    new = _block_errors(new_lut).drop(columns="kind").add_prefix("new_").rename(columns={"new_block_id": "block_id"})
    both = old.merge(new, on="block_id")
    log_ratio = np.log(both["new_ms"] / both["old_ms"])
    variance = (both["old_se"] ** 2 + both["new_se"] ** 2 + floors["old"] ** 2 + floors["new"] ** 2
                + 2 * rule.session_floor ** 2)
    sigma = np.sqrt(variance)
    frame = pd.DataFrame({
        "block_id": both["block_id"], "kind": both["kind"], "old_ms": both["old_ms"], "new_ms": both["new_ms"],
        "change": np.expm1(log_ratio), "change_low": np.expm1(log_ratio - rule.z * sigma),
        "change_high": np.expm1(log_ratio + rule.z * sigma), "uncertainty": np.expm1(sigma),
        "z_score": np.where(sigma > 0, log_ratio / sigma.where(sigma > 0, 1.0), np.inf * np.sign(log_ratio)),
    })
    frame["flagged"] = (frame["z_score"].abs() > rule.z) & (frame["change"].abs() >= rule.min_change)
    by_kind = {str(kind): {**common_shift(log_ratio[both["kind"] == kind]), "blocks": int((both["kind"] == kind).sum())}
               for kind in dict.fromkeys(both["kind"])}
    frame = frame.reindex(frame["z_score"].abs().sort_values(ascending=False, kind="stable").index)
    return LutComparison(frame[CHANGE_COLUMNS].reset_index(drop=True), rule, floors, common_shift(log_ratio), by_kind)


def median_standard_error(lut: pd.DataFrame) -> pd.Series:
    """Relative standard error of each block's median (of ``ln median_ms``), from its repeats."""
    median = lut["median_ms"].astype(float)
    low = _column(lut, "median_ci_low_ms")
    high = _column(lut, "median_ci_high_ms")
    from_interval = (np.log(high) - np.log(low)) / (2.0 * Z_95)
    spread = (lut["p90_ms"].astype(float) - lut["p10_ms"].astype(float)) / SIGMA_FROM_P10_P90
    repeats = lut["repeats"].astype(float).clip(lower=1.0)
    from_percentiles = MEDIAN_SE_FACTOR * spread / np.sqrt(repeats) / median
    usable = np.isfinite(from_interval) & (low > 0) & (high >= low)
    return pd.Series(np.where(usable, from_interval, from_percentiles), index=lut.index).clip(lower=0.0)


def drift_floor(provenance: Mapping | None) -> float:
    """Robust relative spread of the drift reference's medians through one LUT run
    (1.4826 · MAD of their logs, baseline timings included); 0 without checks."""
    provenance = provenance or {}
    reference = provenance.get("reference") or {}
    medians = [*(reference.get("baseline_timings_ms") or []),
               *[check["median_ms"] for check in provenance.get("reference_checks") or [] if check.get("median_ms")]]
    values = np.log(np.asarray([m for m in medians if m and m > 0], dtype=float))
    if values.size < 3:
        return 0.0
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def common_shift(log_ratio: pd.Series, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Median relative move of all blocks with a bootstrap 95 % interval."""
    values = np.asarray(log_ratio, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"median": math.nan, "low": math.nan, "high": math.nan}
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(resamples, values.size), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return {"median": float(np.expm1(np.median(values))), "low": float(np.expm1(low)), "high": float(np.expm1(high))}


def estimate_session_floor(old_lut: pd.DataFrame, new_lut: pd.DataFrame, old_provenance: Mapping | None = None,
                           new_provenance: Mapping | None = None) -> float:
    """The session floor that makes two measurements of the *same* runtime agree: the robust
    spread of their blocks' log moves (1.4826 · MAD around the median move) that the
    repeats and drift floors do not explain, per LUT (``sqrt((s² - mean other variance) / 2)``).
    Fit it on a noise baseline (``scan-edge reprofile --force``), not on a version change."""
    base = compare_luts(old_lut, new_lut, ChangeRule(min_change=0.0), old_provenance, new_provenance)
    log_ratio = np.log1p(base.frame["change"].to_numpy())
    spread = MAD_TO_SIGMA * np.median(np.abs(log_ratio - np.median(log_ratio)))
    explained = float(np.mean(np.log1p(base.frame["uncertainty"].to_numpy()) ** 2))
    return float(math.sqrt(max(0.0, (spread ** 2 - explained) / 2.0)))


def summary_markdown(comparison: LutComparison) -> str:
    """The run-level figures in a few lines of Markdown."""
    s = comparison.summary()
    rule, shift, floor = s["rule"], s["common_shift"], s["drift_floor"]
    return "\n".join([
        f"- **{s['blocks_flagged']} of {s['blocks_compared']} blocks moved beyond their uncertainty** "
        f"({s['fraction_flagged']:.1%}): |ln(new/old)| > {rule['z']:g} σ and |change| ≥ {rule['min_change']:.0%} "
        f"({s['blocks_beyond_10pct']} moved by more than 10 %, most of them within their noise)",
        f"- uncertainty (1 σ) of a block's move: median ±{s['median_uncertainty']:.1%}, 90th percentile "
        f"±{s['p90_uncertainty']:.1%}; drift floor (reference block) old ±{floor['old']:.1%}, new ±{floor['new']:.1%}"
        + (f"; session floor ±{rule['session_floor']:.1%} per LUT" if rule["session_floor"] else ""),
        f"- all blocks together moved by {shift['median']:+.1%} (median; 95 % interval "
        f"[{shift['low']:+.1%}, {shift['high']:+.1%}]); by kind: "
        + "; ".join(f"{kind} ({k['blocks']:.0f}) {k['median']:+.1%} [{k['low']:+.1%}, {k['high']:+.1%}]"
                    for kind, k in s["shift_by_kind"].items()),
        f"- median |change| {s['median_abs_change']:.1%}, largest {s['max_abs_change']:.1%}",
    ]) + "\n"


def _block_errors(lut: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"block_id": lut["block_id"], "kind": lut["kind"], "ms": lut["median_ms"].astype(float),
                         "se": median_standard_error(lut)})


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index)
    return pd.to_numeric(frame[name], errors="coerce").astype(float)


def _round(value: float, digits: int = 4) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


__all__ = ["ChangeRule", "LutComparison", "compare_luts", "median_standard_error", "drift_floor", "common_shift",
           "estimate_session_floor", "summary_markdown", "CHANGE_COLUMNS"]
