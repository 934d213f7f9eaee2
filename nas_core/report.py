"""The reproduction report: the paper's Tables 3-6 and Figs. 3-5 from the artifacts on this machine.

:func:`build_report` reads what the pipeline wrote under ``root`` (``data/``) and writes
``out_dir`` (``data/report/``):

``README.md``
    every table as Markdown, each row ending with the artifact it came from, and the figures;
    a missing artifact is listed (with its path) instead of failing the report.
``table3_models.parquet``   ours, the baselines trained the same way (fine-tune stage) and the
    random controls (``random<i>_<run>``, controls stage): model, type, init, run, predicted (the
    accuracy predictor's score: top-1, or -loss when ``predictor.target`` is loss), inherited /
    fine-tuned top-1 (the first seed's), seeds, top1_mean, top1_std, top1_seeds, own_images,
    supernet_images, train_images_seen, params, macs, ``latency_ms.<device>`` (measured end to
    end), ``vs_mobilenetv2.<device>``, source
``table3_search_gain.parquet`` did the search help: comparison, model, other, setting, diff_top1,
    ci_low, ci_high, confidence, method, n_ours, n_other, claim, note (ours vs the random mean;
    ours vs each baseline)
``predictor_window.parquet`` the accuracy predictor on subnets of each controlled target window:
    run, subnets, target, spearman, spearman_vs_top1, top_k, top_k_precision, chance,
    ours_inherited_top1, ours_beats_share, source
``table3_latency.parquet``  the compared architectures timed as published (1000-class head):
    model, type, params, ``latency_ms.<device>``, ``vs_mobilenetv2.<device>``, source
``table4_searches.parquet`` one row per search: run, name, devices, params_bound_m,
    ``target_ms.<device>``, predicted_accuracy, ``estimated_ms.<device>``,
    ``measured_ms.<device>``, within (measured in [-3 %, 0] of the target), params, macs,
    finetuned_top1, source
``table5_transfer.parquet`` model, dataset, top1, top5 (the first seed's), seeds, top1_mean, top1_std,
    top1_seeds, params, epochs, source
``table6_detection.parquet`` model, mAP, mAP50 (the first seed's), seeds, mAP_mean, mAP_std, mAP_seeds,
    params, resolution, ``latency_ms.<device>``, source
``table5_comparisons.parquet``, ``table6_comparisons.parquet`` ours vs each other model: comparison,
    model, other, metric, diff, ci_low, ci_high, confidence, method, n_ours, n_other, claim
``latency_predictor.parquet`` per device and estimator (lut_sum, calibrated, macs, params; and the
    calibrated model on each origin of held-out subnet, e.g. ``calibrated (per_op), frontier subnets``):
    a, b, validation spearman, mape_pct, rmse_ms, source (Fig. 3, Suppl. S4)
``accuracy_predictor.parquet`` per model: spearman, kendall, mae, top-10 % precision on the
    held-out test pairs, source (Suppl. S4/S5)
``fig3_calibration.png``, ``fig4_search_<run>.png``, ``fig5_front_<device>.png``,
``s4_predictor.png``

Pure: reads files, writes files, imports no orchestration.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .controls import blocked_difference_interval, claim, mean_std
from .io import code_version, machine_fingerprint, read_json, read_parquet, utc_now, write_parquet, write_text
from .latency.calibration import plot_calibration
from .layout import Layout
from .search_report import plot_front, plot_history
from .search_space import SearchSpace

REFERENCE_MODEL = "mobilenetv2_100"
CNN_MODELS = ("mobilenetv2", "mobilenetv3", "gernet", "resnet", "regnet")
_UNITS = {1e6: "M", 1e9: "G"}


def model_type(name: str) -> str:
    """Table 3's "type" column: CNN or hybrid (convolutions + attention)."""
    if name.startswith("ours"):
        return "hybrid (searched)"
    if name.startswith("random"):
        return "hybrid (random control)"
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
def table3_models(layout: Layout, names: Sequence[str], devices: Sequence[str], src: Sources,
                  controls: Mapping[str, Any] | None = None):
    """Ours, the trained baselines (``finetune/<name>/metrics.json``) and the random controls
    (``controls/summary.json``), each with its initialisation, the training images it has seen
    (its own + the supernet's for an inherited model) and its seeds (top-1 mean ± std)."""
    rows = []
    for name in names:
        path = layout.finetune_metrics(name)
        m = src.json(path)
        if m is None:
            continue
        seeds = m.get("seeds") or {"seeds": [(m.get("train") or {}).get("seed", (m.get("config") or {}).get("seed", 0))],
                                   "top1": [m["finetuned"]["top1"]]}
        mean, std = mean_std(seeds["top1"])
        own, shared = (m.get("train") or {}).get("images"), (m.get("supernet") or {}).get("images")
        row = {"model": name, "type": model_type(name), "init": m.get("init"),
               "run": name.removeprefix("ours_") if name.startswith("ours_") else "",
               "predicted": m.get("predicted_accuracy"), "inherited_top1": (m.get("inherited") or {}).get("top1"),
               "finetuned_top1": m["finetuned"]["top1"], "seeds": _seed_text(seeds["seeds"]), "top1_mean": mean,
               "top1_std": std, "top1_seeds": list(seeds["top1"]), **_images(m.get("init"), own, shared),
               "params": m["params"], "macs": m["macs"]}
        for device in devices:
            row[f"latency_ms.{device}"] = (m.get("latency_ms") or {}).get(device, {}).get("median_ms", math.nan)
        rows.append({**row, "source": str(path)})
    for run, entry in ((controls or {}).get("runs") or {}).items():
        for c in entry.get("controls") or []:
            row = {"model": c["name"], "type": model_type(c["name"]), "init": "supernet", "run": run,
                   "predicted": c.get("predicted"), "inherited_top1": c.get("inherited_top1"),
                   "finetuned_top1": c["top1"][0], "seeds": _seed_text(c["seeds"]), "top1_mean": c["top1_mean"],
                   "top1_std": c["top1_std"], "top1_seeds": list(c["top1"]),
                   **_images("supernet", c.get("train_images"), c.get("supernet_images")),
                   "params": c.get("params"), "macs": c.get("macs")}
            for device in devices:  # measured when it was drawn (the same architecture, the same runtime)
                row[f"latency_ms.{device}"] = (c.get("measured_ms") or {}).get(device, math.nan)
            rows.append({**row, "source": ", ".join(c.get("sources") or [])})
    return _with_ratios(pd.DataFrame(rows), devices)


def _seed_text(seeds: Sequence[int]) -> str:
    return ",".join(str(s) for s in seeds)


def _images(init: str | None, own: int | None, shared: int | None) -> dict[str, Any]:
    """``own_images``, ``supernet_images`` (inherited models: the supernet's training, shared by
    every subnet) and ``train_images_seen`` (their sum)."""
    shared = shared if init == "supernet" else 0
    total = None if own is None or shared is None else own + shared
    return {"own_images": own, "supernet_images": shared, "train_images_seen": total}


def search_gain_table(table3, controls: Mapping[str, Any] | None, confidence: float = 0.95):
    """Did the search help? Per controlled search: ours vs the random controls, seeds as blocks
    (``nas_core.controls.blocked_difference_interval``); and, per search, ours vs each baseline
    (the paper's setting: ours from the supernet, baselines from scratch, so the gap includes
    the initialisation). Each row: the difference of mean top-1 with its interval and the
    sentence it allows (``nas_core.controls.claim``)."""
    if table3 is None or table3.empty:
        return pd.DataFrame()
    rows = []
    by_model = {r["model"]: r for _, r in table3.iterrows()}
    ours_rows = [r for r in by_model.values() if str(r["model"]).startswith("ours_")]
    for run, entry in ((controls or {}).get("runs") or {}).items():
        ours = by_model.get(f"ours_{run}")
        randoms = [r for r in by_model.values() if str(r["model"]).startswith("random") and r["run"] == run]
        if ours is None:
            continue
        interval = blocked_difference_interval(_by_seed(ours), [_by_seed(r) for r in randoms], confidence)
        sampling = entry.get("sampling") or {}
        rows.append({"comparison": f"{ours['model']} vs random (same window, supernet, recipe and seeds)",
                     "model": ours["model"], "other": f"random controls of {run} ({len(randoms)})",
                     "setting": "equal: both inherited from the supernet, fine-tuned alike",
                     **_interval_columns(interval),
                     "claim": claim(ours["model"], f"random architectures at its latency (n={len(randoms)})",
                                    interval),
                     "note": sampling.get("message", "")})
    for ours in ours_rows:
        for other in by_model.values():
            if str(other["model"]).startswith(("ours_", "random")):
                continue
            interval = blocked_difference_interval(_by_seed(ours), [_by_seed(other)], confidence)
            same = other["init"] == ours["init"]
            equal = "equal_budget" in str(other["model"])
            setting = ("equal: same init" if same else
                       "equal images seen, baseline from scratch" if equal else
                       "paper's: ours from the supernet, baseline from scratch with the fine-tune budget only "
                       "(the gap includes the supernet's initialisation)")
            rows.append({"comparison": f"{ours['model']} vs {other['model']}", "model": ours["model"],
                         "other": other["model"],
                         "setting": setting, **_interval_columns(interval),
                         "claim": claim(ours["model"], other["model"], interval), "note": ""})
    return pd.DataFrame(rows)


def _by_seed(row, metric: str = "top1") -> dict[int, float]:
    """A table row's ``metric`` per seed (Table 3: fine-tuned top-1)."""
    return dict(zip((int(s) for s in str(row["seeds"]).split(",")), row[f"{metric}_seeds"]))


def _interval_columns(interval: Mapping[str, Any]) -> dict[str, Any]:
    return {"diff_top1": interval["diff"], "ci_low": interval["low"], "ci_high": interval["high"],
            "confidence": interval["confidence"], "method": interval["method"], "n_ours": interval["n_ours"],
            "n_other": interval["n_others"]}


def predictor_window_table(controls: Mapping[str, Any] | None, path: Path):
    """The accuracy predictor where the search uses it: subnets of each controlled search's
    target window (``controls.window_subnets``), against their inherited scores."""
    rows = []
    for run, entry in ((controls or {}).get("runs") or {}).items():
        w = entry.get("predictor_window")
        if not w:
            continue
        rows.append({"run": run, "subnets": w.get("n"), "target": w.get("target"), "spearman": w.get("spearman"),
                     "spearman_vs_top1": w.get("spearman_vs_top1"), "top_k": w.get("top_k"),
                     "top_k_precision": w.get("top_k_precision"), "chance": w.get("chance"),
                     "ours_inherited_top1": w.get("ours_inherited_top1"),
                     "ours_beats_share": w.get("ours_percentile"), "source": w.get("source") or str(path)})
    return pd.DataFrame(rows)


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


def esha_count(compact: str | None) -> int | None:
    """ESHAs in an architecture's compact form: each is written ``E(<act>)`` (``AttnConfig.compact``;
    no other token of the form ends in ``E(``: FFNs are ``U(``/``F(``, MHSAs ``M(``, the embedding ``DS(``)."""
    return None if compact is None else len(re.findall(r"(?<![A-Z])E\(", compact))


def table4_searches(layout: Layout, runs: Sequence[str], src: Sources, space: SearchSpace | None = None):
    """One row per search run (``search/<run>.json`` + the fine-tuned ``ours_<run>``); in a space
    with ESHA, ``esha``: how many of the chosen network's attentions are ESHAs."""
    space = space or SearchSpace()
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
        if space.spec.searches_attention_type:
            row["esha"] = esha_count(s.get("compact"))
        for device, ms in (s.get("targets_ms") or {}).items():
            row[f"target_ms.{device}"] = ms
            row[f"estimated_ms.{device}"] = (s.get("latency_ms") or {}).get(device)
            row[f"measured_ms.{device}"] = (s.get("measured_ms") or {}).get(device)
        finetuned = layout.finetune_metrics(f"ours_{run}")
        row["finetuned_top1"] = read_json(finetuned)["finetuned"]["top1"] if finetuned.exists() else None
        rows.append({**row, "source": str(path) + (f", {finetuned}" if finetuned.exists() else "")})
    return pd.DataFrame(rows)


def table5_transfer(layout: Layout, src: Sources):
    """One row per transferred model: the first seed's top-1 / top-5 and every seed's top-1
    (``seeds``, ``top1_mean``, ``top1_std``, ``top1_seeds``; ``transfer.seeds``)."""
    summary = src.json(layout.transfer_metrics) or {}
    rows = [{"model": label, "dataset": r.get("dataset"), "top1": r.get("top1"), "top5": r.get("top5"),
             **seed_columns(r, "top1"), "params": r.get("params"), "epochs": r.get("epochs"),
             "source": ", ".join(_seed_sources(r))}
            for label, r in summary.items()]
    return pd.DataFrame(rows)


def table6_detection(layout: Layout, devices: Sequence[str], src: Sources):
    """One row per detector: the first seed's mAP, mAP@0.5 and latency, and every seed's mAP
    (``seeds``, ``mAP_mean``, ``mAP_std``, ``mAP_seeds``; ``detection.seeds``)."""
    summary = src.json(layout.detection_metrics) or {}
    rows = []
    for label, r in summary.items():
        row = {"model": label, "mAP": r.get("mAP"), "mAP50": r.get("mAP50"), **seed_columns(r, "mAP"),
               "params": r.get("params"), "resolution": r.get("resolution")}
        for device in devices:
            row[f"latency_ms.{device}"] = (r.get("latency_ms") or {}).get(device)
        rows.append({**row, "source": ", ".join(_seed_sources(r))})
    return pd.DataFrame(rows)


def seed_columns(entry: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """``seeds``, ``<metric>_mean``, ``<metric>_std`` and ``<metric>_seeds`` of a downstream
    summary entry (its ``seeds`` block; a summary written before seeds: one run, seed 0)."""
    seeds = entry.get("seeds") or {"seeds": [0], metric: [entry.get(metric)]}
    mean, std = mean_std(seeds[metric])
    return {"seeds": _seed_text(seeds["seeds"]), f"{metric}_mean": mean, f"{metric}_std": std,
            f"{metric}_seeds": list(seeds[metric])}


def _seed_sources(entry: Mapping[str, Any]) -> list[str]:
    return list((entry.get("seeds") or {}).get("sources") or [entry.get("source")])


def downstream_comparisons(table, metric: str, what: str, confidence: float = 0.95):
    """Ours vs each other model of a downstream table (Table 5: ``top1``; Table 6: ``mAP``):
    the difference of means over the seeds, seeds as blocks (a seed fixes the head's
    initialisation and the data order of every model trained with it), its interval and the
    sentence it allows (``nas_core.controls.claim``: "not distinguishable (n = 1)" with one
    seed). Columns: comparison, model, other, metric, diff, ci_low, ci_high, confidence,
    method, n_ours, n_other, claim."""
    if table is None or table.empty:
        return pd.DataFrame()
    rows = []
    by_model = {r["model"]: r for _, r in table.iterrows()}
    ours = [r for name, r in by_model.items() if str(name).startswith("ours")]
    for mine in ours:
        for other in (r for name, r in by_model.items() if not str(name).startswith("ours")):
            interval = blocked_difference_interval(_by_seed(mine, metric), [_by_seed(other, metric)], confidence)
            columns = _interval_columns(interval)
            rows.append({"comparison": f"{mine['model']} vs {other['model']}", "model": mine["model"],
                         "other": other["model"], "metric": metric, "diff": columns.pop("diff_top1"), **columns,
                         "claim": claim(mine["model"], other["model"], interval, what=what)})
    return pd.DataFrame(rows)


def latency_predictor_table(layout: Layout, devices: Sequence[str], src: Sources):
    """Fig. 3 / Suppl. S4 in numbers: the held-out validation subnets, per estimator, for each
    calibration round (``round`` 2: refitted with the predictor's searched subnets, what the searches read)."""
    rows = []
    fits = [(d, p.fit) for d in devices for p in (layout.lut_paths(d), layout.lut_paths(d).second_round())]
    for device, path in fits:
        fit = src.json(path)
        if fit is None:
            continue
        lines = {"paper_line": {"a": fit.get("a"), "b": fit.get("b")}, **(fit.get("proxy_fits") or {})}
        model = fit["model"]["name"] if isinstance(fit.get("model"), dict) else "linear"
        # The chosen model again on each kind of held-out subnet (band draws, searched ones), when
        # the calibration drew both: the search-like subnets are the ones the searches' estimates need.
        by_origin = (fit.get("metrics_by_origin") or {}).get("validation", {})
        per_origin = {f"calibrated ({model}), {origin} subnets": m for origin, m in by_origin.items()}
        for estimator, m in {**fit["metrics"].get("validation", {}),
                             **(per_origin if len(per_origin) > 1 else {})}.items():
            line = lines.get(estimator) or {}
            rows.append({"device": device, "estimator": f"calibrated ({model})" if estimator == "calibrated"
                         else estimator, "a": line.get("a"), "b": line.get("b"), "n": m.get("n"),
                         "spearman": m.get("spearman"), "mape_pct": m.get("mape_pct"), "rmspe_pct": m.get("rmspe_pct"),
                         "max_ape_pct": m.get("max_ape_pct"), "within_5_pct": m.get("within_5_pct"),
                         "within_10_pct": m.get("within_10_pct"), "rmse_ms": m.get("rmse_ms"),
                         "round": fit.get("round", 1), "sampling": fit.get("sampling"),
                         "location": fit.get("location", "local"),
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
                 baselines: Iterable[str] = (), params: Mapping[str, Any] | None = None,
                 space: SearchSpace | None = None) -> dict[str, Path]:
    """Write ``out_dir`` (module docstring) from the artifacts under ``root``.

    ``devices``: the searched devices (latency columns); ``searches``: the search runs
    (``search/<run>.json``); ``baselines``: the baseline models fine-tuned like ours;
    ``space``: the space searched (default Table 2; named in the README, and with an
    attention-type gene Table 4 counts the ESHAs each search chose).
    Returns ``{name: path}`` of everything written (``readme`` included).
    """
    root, out_dir = Path(root), Path(out_dir)
    layout = Layout(root)
    src = Sources(root)
    models = [f"ours_{run}" for run in searches] + list(baselines)
    controls = src.json(layout.controls_summary)
    table3 = table3_models(layout, models, devices, src, controls)
    tables = {
        "table3_models": table3,
        "table3_search_gain": search_gain_table(table3, controls),
        "predictor_window": predictor_window_table(controls, layout.controls_summary),
        "table3_latency": table3_latency(layout, devices, src),
        "table4_searches": table4_searches(layout, searches, src, space or SearchSpace()),
        "table5_transfer": table5_transfer(layout, src),
        "table6_detection": table6_detection(layout, devices, src),
        "latency_predictor": latency_predictor_table(layout, devices, src),
        "accuracy_predictor": accuracy_predictor_table(layout, src),
    }
    tables["table5_comparisons"] = downstream_comparisons(tables["table5_transfer"], "top1", "transfer top-1")
    tables["table6_comparisons"] = downstream_comparisons(tables["table6_detection"], "mAP", "mAP")
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
    text = readme(tables, {k: v for k, v in figures.items() if v is not None}, devices, src, params,
                  (space or SearchSpace()).spec.label)
    written["readme"] = write_text(out_dir / "README.md", text)
    return written


def _claims(gain, empty: str = "no controls or baselines to compare (the controls / fine-tune stages have not run)"
            ) -> str:
    """The sentences a comparison table allows, one bullet each."""
    if gain is None or gain.empty:
        return f"_{empty}_\n"
    return "".join(f"- {c}\n" for c in gain["claim"]) + "\n"


def readme(tables: Mapping[str, Any], figures: Mapping[str, Path], devices: Sequence[str], src: Sources,
           params: Mapping[str, Any] | None, space_label: str = "Table 2") -> str:
    lat = [f"latency_ms.{d}" for d in devices]
    ratio = [f"vs_mobilenetv2.{d}" for d in devices]
    millions = {"params": 1e6, "macs": 1e6}
    machine = machine_fingerprint()
    s = tables["table4_searches"]
    target_cols = [c for c in s.columns if c.startswith(("target_ms.", "estimated_ms.", "measured_ms."))]
    parts = [
        "# SCAN-Edge reproduction report\n",
        f"Profile `{(params or {}).get('profile', '?')}`, code `{code_version()}`, machine {machine['cpu']} "
        f"({machine['cores']} cores, id {machine['id']}), written {utc_now()}. Search space: {space_label}. "
        "Every row names the artifact it came from (`source`); the tables are also in this folder as Parquet. "
        "Latency: median of timed calls, batch 1; timings on a shared machine are indicative, ratios to "
        "MobileNetV2 within one table compare better than milliseconds.\n",
        "## Table 3 — ours, random architectures at the same latency, and baselines\n",
        "Fine-tuned on the pipeline's dataset with the same recipe, budget and seeds; accuracy on its test split. "
        "`init`: where the weights start. The paper's setting is kept as it is: ours (and the random controls) "
        "inherit from the supernet, the baselines start from scratch with the fine-tune budget only, so a gap "
        "between them measures the initialisation as much as the architecture; `train_images_seen` counts the "
        "supernet's training images too (shared by every subnet; each sandwich step trains several subnets on "
        "one batch, counted once). `random<i>_<run>`: a subnet drawn uniformly from the space, measured within "
        "the same [-3 %, 0] window of the target on the same device, fine-tuned like ours (`controls` stage; its "
        "latency is the one measured when drawn). `predicted`: the accuracy predictor's score (top-1, or -loss); "
        "`top1_mean` ± `top1_std` over `seeds`.\n",
        markdown_table(tables["table3_models"], ["model", "type", "init", "predicted", "inherited_top1",
                                                 "finetuned_top1", "seeds", "top1_mean", "top1_std",
                                                 "train_images_seen", "params", "macs", *lat, *ratio, "source"],
                       {**millions, "train_images_seen": 1e3}),
        "\n### Did the search help?\n",
        "Differences of mean top-1 (ours minus the other) with a 95 % t-interval, seeds as blocks (a seed fixes "
        "the data order of every model trained with it); against random architectures the interval also counts "
        "which ones were drawn. A claim is worded only where the interval excludes zero. Ours vs random: the "
        "same supernet, window, recipe and seeds, so the gap is the search's (predictor + evolution) alone.\n",
        _claims(tables["table3_search_gain"]),
        markdown_table(tables["table3_search_gain"], ["comparison", "setting", "diff_top1", "ci_low", "ci_high",
                                                      "method", "n_ours", "n_other", "note"]),
        "\n### Latency of the compared architectures (as published, 1000-class head; `baselines` stage)\n",
        markdown_table(tables["table3_latency"], ["model", "type", "params", "macs", *lat, *ratio, "source"], millions),
        "\n## Table 4 — searches (latency; latency + parameter count `_<M>M`)\n",
        "`within`: the returned model measured within [-3 %, 0] of its target on the device.\n",
        markdown_table(s, ["run", "name", "params_bound_m", *target_cols, "predicted_accuracy", "within", "params",
                           "macs", "finetuned_top1", "source"], millions),
        "\n## Table 5 — transfer to a downstream classification set\n",
        "`top1`, `top5`: the first seed's run; `top1_mean` ± `top1_std` over `seeds` (`transfer.seeds`). Ours vs "
        "each other model: the difference of mean top-1 with a 95 % t-interval, seeds as blocks; a claim only "
        "where it excludes zero.\n",
        _claims(tables["table5_comparisons"], "no models to compare (the transfer stage has not run)"),
        markdown_table(tables["table5_transfer"], ["model", "dataset", "top1", "top5", "seeds", "top1_mean",
                                                   "top1_std", "params", "epochs", "source"], millions),
        "\n## Table 6 — SSDLite detection\n",
        "COCO mAP on the detection set's test split (`mAP`: the first seed's detector, the one timed; `mAP_mean` "
        "± `mAP_std` over `seeds`, `detection.seeds`); latency of the network without NMS. Ours vs each other "
        "backbone: the difference of mean mAP with a 95 % t-interval, seeds as blocks.\n",
        _claims(tables["table6_comparisons"], "no detectors to compare (the detection stage has not run)"),
        markdown_table(tables["table6_detection"], ["model", "mAP", "mAP50", "seeds", "mAP_mean", "mAP_std",
                                                    "params", "resolution", *lat, "source"], millions),
        "\n## Latency estimation (Fig. 3, Suppl. S4)\n",
        "Held-out validation subnets (in the band around MobileNetV2's latency where the searches land): raw LUT "
        "sum, the paper's line `a * sum + b`, the calibrated model chosen by leave-one-out on the calibration "
        "subnets, and the zero-cost proxies. Bar: MAPE <= 3 %, max <= 8 %, Spearman >= 0.95, >= 90 % within 5 %. "
        "`round` 2: refitted once the accuracy predictor exists, with the subnets its searches pick added "
        "(half held out, `searched subnets` rows); the searches read this round's fit.\n",
        markdown_table(tables["latency_predictor"]),
        "\n## Accuracy predictor (Suppl. S4/S5)\n",
        "Held-out test pairs (used neither for training nor for model selection).\n",
        markdown_table(tables["accuracy_predictor"]),
        "\n### Where the search uses it: subnets of the target window\n",
        "Uniform subnets of each controlled search's latency window (and its controls), scored with inherited "
        "weights as the pairs are: Spearman of the predictor vs the inherited score (its target; and vs top-1), "
        "top-k precision (share of the predictor's top k that are in the measured top k; `chance` = k / n), and "
        "the share of them ours beats on the inherited score (`controls.window_subnets`).\n",
        markdown_table(tables["predictor_window"]),
        "\n## Figures\n",
    ]
    parts += [f"- `{name}`\n\n  ![{name}]({path.name})\n" for name, path in figures.items()]
    if src.missing:
        parts.append("\n## Missing artifacts\n\n" + "".join(f"- `{p}`\n" for p in dict.fromkeys(src.missing)))
    return "\n".join(parts)
