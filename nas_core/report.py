"""The reproduction report: the paper's Tables 3-6 and Figs. 3-5 from the artifacts on this machine.

:func:`build_report` reads what the pipeline wrote under ``root`` (``data/``) and writes
``out_dir`` (``data/report/``):

``README.md``
    every table as Markdown, each row ending with the artifact it came from, and the figures;
    a missing artifact is listed (with its path) instead of failing the report.
``table3_models.parquet``   ours and the baselines trained the same way (fine-tune stage):
    model, type, init, run, predicted (the accuracy predictor's score: top-1, or -loss when
    ``predictor.target`` is loss), inherited / fine-tuned top-1, params, macs,
    ``latency_ms.<device>`` (measured end to end), ``vs_mobilenetv2.<device>``, source
``table3_latency.parquet``  the compared architectures timed as published (1000-class head):
    model, type, params, ``latency_ms.<device>``, ``vs_mobilenetv2.<device>``, source
``table4_searches.parquet`` one row per search: run, name, devices, params_bound_m,
    ``target_ms.<device>``, predicted_accuracy, ``estimated_ms.<device>``,
    ``measured_ms.<device>``, within (measured in [-3 %, 0] of the target), params, macs,
    finetuned_top1, source
``table5_transfer.parquet`` model, dataset, top1, top5, params, epochs, source
``table6_detection.parquet`` model, mAP, mAP50, params, resolution, ``latency_ms.<device>``, source
``latency_predictor.parquet`` per device and estimator (lut_sum, calibrated, macs, params):
    a, b, validation spearman, mape_pct, rmse_ms, source (Fig. 3, Suppl. S4)
``accuracy_predictor.parquet`` per model: spearman, kendall, mae, top-10 % precision on the
    held-out test pairs, source (Suppl. S4/S5)
``fig3_calibration.png``, ``fig4_search_<run>.png``, ``fig5_front_<device>.png``,
``s4_predictor.png``

Pure: reads files, writes files, imports no orchestration.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .io import code_version, machine_fingerprint, read_json, read_parquet, utc_now, write_parquet, write_text
from .latency.calibration import plot_calibration
from .layout import Layout
from .search_report import plot_front, plot_history

REFERENCE_MODEL = "mobilenetv2_100"
CNN_MODELS = ("mobilenetv2", "mobilenetv3", "gernet", "resnet", "regnet")
_UNITS = {1e6: "M", 1e9: "G"}


def model_type(name: str) -> str:
    """Table 3's "type" column: CNN or hybrid (convolutions + attention)."""
    if name.startswith("ours"):
        return "hybrid (searched)"
    return "CNN" if name.startswith(CNN_MODELS) else "hybrid"


class Sources:
    """Collects the artifacts a report read and the ones it looked for but did not find."""

    def __init__(self, root: Path):
        self.root = root
        self.missing: list[str] = []

    def json(self, path: Path) -> dict | None:
        if not path.exists():
            self.missing.append(str(path))
            return None
        return read_json(path)

    def parquet(self, path: Path):
        if not path.exists():
            self.missing.append(str(path))
            return None
        return read_parquet(path)


# --------------------------------------------------------------------------- tables
def table3_models(layout: Layout, names: Sequence[str], devices: Sequence[str], src: Sources):
    """Ours and the trained baselines (``finetune/<name>/metrics.json``)."""
    rows = []
    for name in names:
        path = layout.finetune_metrics(name)
        m = src.json(path)
        if m is None:
            continue
        row = {"model": name, "type": model_type(name), "init": m.get("init"),
               "run": name.removeprefix("ours_") if name.startswith("ours_") else "",
               "predicted": m.get("predicted_accuracy"), "inherited_top1": (m.get("inherited") or {}).get("top1"),
               "finetuned_top1": m["finetuned"]["top1"], "params": m["params"], "macs": m["macs"]}
        for device in devices:
            row[f"latency_ms.{device}"] = (m.get("latency_ms") or {}).get(device, {}).get("median_ms", math.nan)
        rows.append({**row, "source": str(path)})
    return _with_ratios(pd.DataFrame(rows), devices)


def table3_latency(layout: Layout, devices: Sequence[str], src: Sources):
    """The compared architectures' latency (``baselines/<device>.parquet``)."""
    by_model: dict[str, dict] = {}
    for device in devices:
        path = layout.baselines(device)
        frame = src.parquet(path)
        if frame is None:
            continue
        for r in frame.itertuples():
            row = by_model.setdefault(r.model, {"model": r.model, "type": model_type(r.model), "params": r.params,
                                                "macs": getattr(r, "macs", math.nan),  # tables before MACs
                                                "sources": []})
            row[f"latency_ms.{device}"] = r.median_ms if not r.error else math.nan
            row["sources"].append(str(path))
    rows = [{**{k: v for k, v in row.items() if k != "sources"}, "source": ", ".join(dict.fromkeys(row["sources"]))}
            for row in by_model.values()]
    return _with_ratios(pd.DataFrame(rows), devices)


def _with_ratios(frame, devices: Sequence[str]):
    """``vs_mobilenetv2.<device>``: latency relative to MobileNetV2 in the same table (ratios within
    one run hold up better than milliseconds on a shared machine)."""
    if frame.empty or REFERENCE_MODEL not in set(frame["model"]):
        return frame
    reference = frame[frame["model"] == REFERENCE_MODEL].iloc[0]
    for device in devices:
        column = f"latency_ms.{device}"
        if column in frame:
            frame[f"vs_mobilenetv2.{device}"] = frame[column] / reference[column]
    return frame


def table4_searches(layout: Layout, runs: Sequence[str], src: Sources):
    """One row per search run (``search/<run>.json`` + the fine-tuned ``ours_<run>``)."""
    rows = []
    for run in runs:
        path = layout.search_summary(run)
        s = src.json(path)
        if s is None:
            continue
        row = {"run": run, "name": s.get("name"), "devices": "+".join(s.get("targets_ms") or {}),
               "params_bound_m": s.get("params_m"), "predicted_accuracy": s.get("predicted_accuracy"),
               "within": s.get("within") if s.get("measured") else None, "params": s.get("params"),
               "macs": s.get("macs")}
        for device, ms in (s.get("targets_ms") or {}).items():
            row[f"target_ms.{device}"] = ms
            row[f"estimated_ms.{device}"] = (s.get("latency_ms") or {}).get(device)
            row[f"measured_ms.{device}"] = (s.get("measured_ms") or {}).get(device)
        finetuned = layout.finetune_metrics(f"ours_{run}")
        row["finetuned_top1"] = read_json(finetuned)["finetuned"]["top1"] if finetuned.exists() else None
        rows.append({**row, "source": str(path) + (f", {finetuned}" if finetuned.exists() else "")})
    return pd.DataFrame(rows)


def table5_transfer(layout: Layout, src: Sources):
    summary = src.json(layout.transfer_metrics) or {}
    rows = [{"model": label, "dataset": r.get("dataset"), "top1": r.get("top1"), "top5": r.get("top5"),
             "params": r.get("params"), "epochs": r.get("epochs"), "source": r.get("source")}
            for label, r in summary.items()]
    return pd.DataFrame(rows)


def table6_detection(layout: Layout, devices: Sequence[str], src: Sources):
    summary = src.json(layout.detection_metrics) or {}
    rows = []
    for label, r in summary.items():
        row = {"model": label, "mAP": r.get("mAP"), "mAP50": r.get("mAP50"), "params": r.get("params"),
               "resolution": r.get("resolution")}
        for device in devices:
            row[f"latency_ms.{device}"] = (r.get("latency_ms") or {}).get(device)
        rows.append({**row, "source": r.get("source")})
    return pd.DataFrame(rows)


def latency_predictor_table(layout: Layout, devices: Sequence[str], src: Sources):
    """Fig. 3 / Suppl. S4 in numbers: the held-out validation subnets, per estimator."""
    rows = []
    for device in devices:
        path = layout.lut_paths(device).fit
        fit = src.json(path)
        if fit is None:
            continue
        lines = {"paper_line": {"a": fit.get("a"), "b": fit.get("b")}, **(fit.get("proxy_fits") or {})}
        model = fit["model"]["name"] if isinstance(fit.get("model"), dict) else "linear"
        for estimator, m in fit["metrics"].get("validation", {}).items():
            line = lines.get(estimator) or {}
            rows.append({"device": device, "estimator": f"calibrated ({model})" if estimator == "calibrated"
                         else estimator, "a": line.get("a"), "b": line.get("b"), "n": m.get("n"),
                         "spearman": m.get("spearman"), "mape_pct": m.get("mape_pct"), "rmspe_pct": m.get("rmspe_pct"),
                         "max_ape_pct": m.get("max_ape_pct"), "within_5_pct": m.get("within_5_pct"),
                         "within_10_pct": m.get("within_10_pct"), "rmse_ms": m.get("rmse_ms"),
                         "sampling": fit.get("sampling"), "location": fit.get("location", "local"),
                         "quiet_machine": (fit.get("quiet_machine") or {}).get("ok"), "source": str(path)})
    return pd.DataFrame(rows)


def accuracy_predictor_table(layout: Layout, src: Sources):
    path = layout.predictor_metrics
    metrics = src.json(path)
    if metrics is None:
        return pd.DataFrame()
    rows = []
    target = metrics.get("target", "top1")
    for model, m in metrics.get("test", {}).items():
        precision = next((v for k, v in m.items() if k.endswith("_precision")), None)
        row = {"model": model, "target": target, "spearman": m.get("spearman"), "kendall": m.get("kendall"),
               "mae": m.get("mae"), "top10_precision": precision}
        if "test_top1" in metrics:  # a proxy target: the same scorers against held-out top-1
            row["spearman_vs_top1"] = metrics["test_top1"].get(model, {}).get("spearman")
        rows.append({**row, "test_pairs": metrics.get("splits", {}).get("test"),
                     "winner": model == metrics.get("winner"), "source": str(path)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- figures
def figure3(layout: Layout, devices: Sequence[str], out: Path) -> Path | None:
    """Fig. 3: estimated vs measured latency, raw and calibrated, one panel per device."""
    frames = {d: read_parquet(p) for d in devices if (p := layout.lut_paths(d).calibration).exists()}
    return plot_calibration(frames, out) if frames else None


def figure4(layout: Layout, run: str, out: Path) -> Path | None:
    """Fig. 4-like: the search's Q, the valid rate of fresh draws from P and P's entropy per generation."""
    summary = layout.search_summary(run)
    if not summary.exists():
        return None
    arch_name = Path(read_json(summary)["arch_json"]).name  # <name>.arch.json beside <name>.parquet
    history = layout.search_dir(run) / (arch_name.removesuffix(".arch.json") + ".parquet")
    if not history.exists():
        return None
    frame = read_parquet(history)
    return plot_history({run: frame[frame["round"] == 1]}, out)


def figure5(layout: Layout, device: str, runs: Sequence[str], out: Path) -> Path | None:
    """Fig. 5: the accuracy-latency front on one device over its latency-only searches."""
    rows = []
    for run in runs:
        path = layout.search_summary(run)
        if not path.exists():
            continue
        s = read_json(path)
        if list(s.get("targets_ms") or {}) != [device] or s.get("params_m") is not None:
            continue
        rows.append({"target_ms": s["targets_ms"][device], "predicted_accuracy": s["predicted_accuracy"],
                     "latency_ms": s["latency_ms"][device], "measured_ms": (s.get("measured_ms") or {}).get(device)})
    if not rows:
        return None
    front = pd.DataFrame(rows)
    front["measured_ms"] = pd.to_numeric(front["measured_ms"])
    baselines = layout.baselines(device)
    reference = None
    if baselines.exists():
        frame = read_parquet(baselines)
        match = frame[(frame["model"] == REFERENCE_MODEL) & (frame["error"] == "")]
        reference = float(match["median_ms"].iloc[0]) if len(match) else None
    return plot_front(front, out, device, reference)


# --------------------------------------------------------------------------- Markdown
def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(frame, columns: Sequence[str] | None = None, scale: Mapping[str, float] | None = None) -> str:
    """A pandas frame as a Markdown table (``scale`` divides columns, e.g. params -> millions)."""
    if frame is None or frame.empty:
        return "_no rows (the stage has not run; see missing artifacts below)_\n"
    columns = [c for c in (columns or frame.columns) if c in frame.columns]
    scale = dict(scale or {})
    header = [f"{c} ({_UNITS.get(scale[c], f'÷{scale[c]:g}')})" if c in scale else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        values = [row[c] / scale[c] if c in scale and row[c] is not None and not _isnan(row[c]) else row[c]
                  for c in columns]
        lines.append("| " + " | ".join(_cell(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# --------------------------------------------------------------------------- the report
def build_report(root: str | Path, out_dir: str | Path, *, devices: Sequence[str], searches: Sequence[str],
                 baselines: Iterable[str] = (), params: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``out_dir`` (module docstring) from the artifacts under ``root``.

    ``devices``: the searched devices (latency columns); ``searches``: the search runs
    (``search/<run>.json``); ``baselines``: the baseline models fine-tuned like ours.
    Returns ``{name: path}`` of everything written (``readme`` included).
    """
    root, out_dir = Path(root), Path(out_dir)
    layout = Layout(root)
    src = Sources(root)
    models = [f"ours_{run}" for run in searches] + list(baselines)
    tables = {
        "table3_models": table3_models(layout, models, devices, src),
        "table3_latency": table3_latency(layout, devices, src),
        "table4_searches": table4_searches(layout, searches, src),
        "table5_transfer": table5_transfer(layout, src),
        "table6_detection": table6_detection(layout, devices, src),
        "latency_predictor": latency_predictor_table(layout, devices, src),
        "accuracy_predictor": accuracy_predictor_table(layout, src),
    }
    provenance = {"kind": "report", "root": str(root), "code_version": code_version(), "created": utc_now()}
    written: dict[str, Path] = {}
    for name, frame in tables.items():
        written[name] = write_parquet(out_dir / f"{name}.parquet", frame, provenance)
    figures = {"fig3_calibration": figure3(layout, devices, out_dir / "fig3_calibration.png")}
    for run in searches:
        figures[f"fig4_search_{run}"] = figure4(layout, run, out_dir / f"fig4_search_{run}.png")
    for device in devices:
        figures[f"fig5_front_{device}"] = figure5(layout, device, searches, out_dir / f"fig5_front_{device}.png")
    predictor_png = layout.predictor_figure
    if predictor_png.exists():
        shutil.copyfile(predictor_png, out_dir / "s4_predictor.png")
        figures["s4_predictor"] = out_dir / "s4_predictor.png"
    written.update({k: v for k, v in figures.items() if v is not None})
    text = readme(tables, {k: v for k, v in figures.items() if v is not None}, devices, src, params)
    written["readme"] = write_text(out_dir / "README.md", text)
    return written


def readme(tables: Mapping[str, Any], figures: Mapping[str, Path], devices: Sequence[str], src: Sources,
           params: Mapping[str, Any] | None) -> str:
    lat = [f"latency_ms.{d}" for d in devices]
    ratio = [f"vs_mobilenetv2.{d}" for d in devices]
    millions = {"params": 1e6, "macs": 1e6}
    machine = machine_fingerprint()
    s = tables["table4_searches"]
    target_cols = [c for c in s.columns if c.startswith(("target_ms.", "estimated_ms.", "measured_ms."))]
    parts = [
        "# SCAN-Edge reproduction report\n",
        f"Profile `{(params or {}).get('profile', '?')}`, code `{code_version()}`, machine {machine['cpu']} "
        f"({machine['cores']} cores, id {machine['id']}), written {utc_now()}. Every row names the artifact it "
        "came from (`source`); the tables are also in this folder as Parquet. Latency: median of timed calls, "
        "batch 1; timings on a shared machine are indicative, ratios to MobileNetV2 within one table compare "
        "better than milliseconds.\n",
        "## Table 3 — ours vs baselines trained the same way\n",
        "Fine-tuned on the pipeline's dataset with the same recipe and budget; accuracy on its test split; "
        "`predicted`: the accuracy predictor's score (its target is in the predictor table: top-1, or -loss); "
        "latency measured end to end on each device (`finetune` stage).\n",
        markdown_table(tables["table3_models"], ["model", "type", "init", "predicted", "inherited_top1",
                                                 "finetuned_top1", "params", "macs", *lat, *ratio, "source"], millions),
        "\n### Latency of the compared architectures (as published, 1000-class head; `baselines` stage)\n",
        markdown_table(tables["table3_latency"], ["model", "type", "params", "macs", *lat, *ratio, "source"], millions),
        "\n## Table 4 — searches (latency; latency + parameter count `_<M>M`)\n",
        "`within`: the returned model measured within [-3 %, 0] of its target on the device.\n",
        markdown_table(s, ["run", "name", "params_bound_m", *target_cols, "predicted_accuracy", "within", "params",
                           "macs", "finetuned_top1", "source"], millions),
        "\n## Table 5 — transfer to a downstream classification set\n",
        markdown_table(tables["table5_transfer"], ["model", "dataset", "top1", "top5", "params", "epochs", "source"],
                       millions),
        "\n## Table 6 — SSDLite detection\n",
        "COCO mAP on the detection set's test split; latency of the network without NMS.\n",
        markdown_table(tables["table6_detection"], ["model", "mAP", "mAP50", "params", "resolution", *lat, "source"],
                       millions),
        "\n## Latency estimation (Fig. 3, Suppl. S4)\n",
        "Held-out validation subnets (in the band around MobileNetV2's latency where the searches land): raw LUT "
        "sum, the paper's line `a * sum + b`, the calibrated model chosen by leave-one-out on the calibration "
        "subnets, and the zero-cost proxies. Bar: MAPE <= 3 %, max <= 8 %, Spearman >= 0.95, >= 90 % within 5 %.\n",
        markdown_table(tables["latency_predictor"]),
        "\n## Accuracy predictor (Suppl. S4/S5)\n",
        "Held-out test pairs (used neither for training nor for model selection).\n",
        markdown_table(tables["accuracy_predictor"]),
        "\n## Figures\n",
    ]
    parts += [f"- `{name}`\n\n  ![{name}]({path.name})\n" for name, path in figures.items()]
    if src.missing:
        parts.append("\n## Missing artifacts\n\n" + "".join(f"- `{p}`\n" for p in dict.fromkeys(src.missing)))
    return "\n".join(parts)
