"""The change report of a re-profiled device (``scan-edge reprofile``, ``flows/reprofile.py``).

What a user decides after a runtime update is whether the models they deployed still meet
their latency targets and whether the new searches chose better ones. The report puts that
first, then the evidence:

1. **searched models, before and after** (:func:`searched_model_rows`): for each search of
   the device, the architecture it had chosen (*deployed*) and the one it chooses now
   (*new*), each with its latency target, calibrated estimate and measured latency under
   the old and the new runtime, and whether it meets the target now;
2. **LUT blocks** that moved beyond their measurement uncertainty
   (``nas_core.latency.lut_change``), with the run-level figures;
3. **calibration** before and after.

Rows of :func:`searched_model_rows` (also the ``models`` list of the report's JSON)::

    run, device, model ("deployed" | "new"), arch_id, compact,
    target_old_ms, target_new_ms, calibrated_old_ms, calibrated_new_ms,
    measured_old_ms, measured_new_ms, meets_target (measured_new_ms <= target_new_ms; None
    when not measured), margin (measured_new_ms / target_new_ms - 1)

Old values of the new architecture are what the old LUT + fit estimate for it (it was not
measured on the old runtime); new values of the deployed one are its estimate from the new
LUT + fit and its measurement on the new runtime.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from nas_core.latency.lut_change import LutComparison, summary_markdown

MODEL_ROLES = ("deployed", "new")


def searched_model_row(run: str, device: str, model: str, summary: Mapping[str, Any] | None, *,
                       target_old_ms: float | None, target_new_ms: float | None,
                       calibrated: Mapping[str, float | None], measured: Mapping[str, float | None]) -> dict:
    """One searched model's latency before and after (``calibrated`` / ``measured``: ``old`` /
    ``new`` in ms, None when unknown)."""
    summary = summary or {}
    measured_new = measured.get("new")
    meets = None if measured_new is None or target_new_ms is None else bool(measured_new <= target_new_ms)
    margin = None if meets is None else measured_new / target_new_ms - 1.0
    return {"run": run, "device": device, "model": model, "arch_id": summary.get("arch_id"),
            "compact": summary.get("compact"), "target_old_ms": target_old_ms, "target_new_ms": target_new_ms,
            "calibrated_old_ms": calibrated.get("old"), "calibrated_new_ms": calibrated.get("new"),
            "measured_old_ms": measured.get("old"), "measured_new_ms": measured_new, "meets_target": meets,
            "margin": margin}


def decision_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per search: does the deployed model still meet its target, and what the new search chose."""
    lines = []
    for run in dict.fromkeys(row["run"] for row in rows):
        by_role = {row["model"]: row for row in rows if row["run"] == run}
        deployed, new = by_role.get("deployed"), by_role.get("new")
        parts = [f"`{run}`:"]
        if deployed and deployed.get("arch_id"):
            parts.append(f"the deployed model `{deployed['arch_id']}` {_verdict(deployed)}.")
        else:
            parts.append("no deployed model (the search had not run before).")
        if new and new.get("arch_id"):
            same = deployed and new["arch_id"] == deployed.get("arch_id")
            parts.append("The new search chose the same architecture." if same else
                         f"The new search chose `{new['arch_id']}`, which {_verdict(new)}.")
        lines.append(" ".join(parts))
    return lines


def _verdict(row: Mapping[str, Any]) -> str:
    target, measured = row.get("target_new_ms"), row.get("measured_new_ms")
    if measured is None:
        return "was not measured on the new runtime"
    if target is None:
        return f"measures {measured:.3f} ms (no target)"
    word = "**meets its target**" if row["meets_target"] else "**misses its target**"
    return f"{word} on the new runtime: {measured:.3f} ms measured vs {target:.3f} ms ({row['margin']:+.1%})"


def models_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| search | model | architecture | target ms (old → new) | calibrated ms (old → new) | "
             "measured ms (old → new) | meets target now |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        meets = {True: "yes", False: "**no**", None: "—"}[row["meets_target"]]
        lines.append(f"| `{row['run']}` | {row['model']} | `{row['arch_id'] or '—'}` | "
                     f"{_pair(row['target_old_ms'], row['target_new_ms'])} | "
                     f"{_pair(row['calibrated_old_ms'], row['calibrated_new_ms'])} | "
                     f"{_pair(row['measured_old_ms'], row['measured_new_ms'])} | {meets} |")
    return "\n".join(lines)


def _pair(old: float | None, new: float | None) -> str:
    return f"{_ms(old)} → {_ms(new)}"


def _ms(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def fit_line(label: str, fit: Mapping[str, Any] | None) -> str:
    if not fit:
        return f"- {label}: no calibration fit"
    validation = ((fit.get("metrics") or {}).get("validation") or {}).get("calibrated") or {}
    mape, spearman = validation.get("mape_pct"), validation.get("spearman")
    return (f"- {label}: measured ≈ {_number(fit.get('a'))} · LUT sum + {_number(fit.get('b'))} ms; validation "
            f"MAPE {_number(mape)} %, Spearman {_number(spearman)}")


def _number(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def change_report_markdown(device: str, old_version: str | None, new_version: str | None, *, forced: bool,
                           comparison: LutComparison, fits: Mapping[str, Mapping | None],
                           models: Sequence[Mapping[str, Any]], sources: Mapping[str, str], written: str,
                           show_blocks: int = 25) -> str:
    """The re-profiling report of one device as Markdown (module docstring)."""
    if forced and old_version == new_version:
        title = f"# Re-profiling {device}: runtime {new_version} re-measured (no version change: a noise baseline)\n"
    else:
        title = f"# Re-profiling {device}: runtime {old_version} -> {new_version}\n"
    flagged = comparison.flagged
    decisions = [f"- {line}" for line in decision_lines(models)] or ["- no searches for this device"]
    lines = [title, f"Written {written}. Sources: " + ", ".join(f"{k} `{v}`" for k, v in sources.items()) + ".\n",
             "## What to decide\n", *decisions,
             "\n## Searched models, before and after\n",
             "Calibrated: the LUT sum through the calibration fit; measured: timed on the device. Old values of the "
             "new model are the old LUT's estimate (it did not exist then); the deployed model is measured again on "
             "the new runtime.\n", models_table(models) if models else "_no searches_",
             "\n## LUT blocks\n", summary_markdown(comparison),
             f"Flagged blocks, largest |z| first{f' (first {show_blocks})' if len(flagged) > show_blocks else ''}; "
             f"the interval is the move ± {comparison.rule.z:g} σ:\n",
             comparison.markdown_table(show_blocks) if len(flagged) else "_none_",
             "\n## Calibration\n", *[fit_line(label, fit) for label, fit in fits.items()]]
    return "\n".join(lines) + "\n"


__all__ = ["searched_model_row", "decision_lines", "models_table", "change_report_markdown", "MODEL_ROLES"]
