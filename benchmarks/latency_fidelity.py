"""How far to trust the latency model where the searches land (issue "Latency you can trust").

Two figures per device, from a finished pipeline (``scan-edge reproduce``):

1. **Held-out calibrated error** on subnets at 0.5-2x the device's MobileNetV2: read from the
   calibration's fit file (``data/lut/<device>.fit.json``: the chosen model scored on the
   validation subnets, which never took part in fitting or choosing it): MAPE, RMSPE, max
   error, Spearman, share within ±5 % / ±10 % (what nn-Meter and LitePred report), against the
   bar MAPE <= 3 %, max <= 8 %, Spearman >= 0.95, >= 90 % within ±5 %.
2. **Searches at 0.75x, 1.0x and 1.5x MobileNetV2**, each run by the search stage with the
   on-device check: the chosen candidate's *first* estimate against its measurement (before any
   refinement round), the rounds used, and whether the result is measured within [-3 %, 0].

The searches run in a scratch copy of the artifacts they read (``--work``), so ``data/`` is
left as the pipeline wrote it.

    python benchmarks/latency_fidelity.py --root data --out benchmarks/results/latency_fidelity.json
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from nas_core.io import read_json, write_json  # noqa: E402
from nas_core.latency.calibration import TARGETS  # noqa: E402
from nas_core.layout import Layout  # noqa: E402
from nas_core.params import load_params  # noqa: E402
from tasks import stages  # noqa: E402

MULTIPLES = (0.75, 1.0, 1.5)
FIGURES = ("n", "mape_pct", "rmspe_pct", "max_ape_pct", "spearman", "within_5_pct", "within_10_pct")


def heldout(root: Path, device: str) -> dict:
    fit = read_json(Layout(root).lut_paths(device).fit)
    validation = fit["metrics"]["validation"]
    return {"model": fit["model"]["name"], "sampling": fit.get("sampling"), "band": fit.get("band"),
            "n_calibration": fit.get("n_calibration"),
            "calibrated": {k: validation["calibrated"].get(k) for k in FIGURES},
            "paper_line": {k: validation["paper_line"].get(k) for k in FIGURES},
            "lut_sum": {k: validation["lut_sum"].get(k) for k in FIGURES},
            "targets": fit["targets"], "quiet_machine": fit.get("quiet_machine", {}).get("ok")}


def scratch_root(root: Path, work: Path) -> Path:
    """The artifacts a search reads, copied to ``work`` (searches write there, not into ``root``)."""
    for sub in ("lut", "baselines", "predictor", "runtime"):
        target = work / sub
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(root / sub, target, ignore=shutil.ignore_patterns("_work"))
    return work


def remeasured_root(root: Path, work: Path, params: dict, devices: list[str]) -> Path:
    """``work`` with the predictor of ``root`` and every device's LUT, baselines and calibration
    measured again now (block exports reused): the figures of a quiet moment, whatever the
    machine was doing when the pipeline ran."""
    if work.exists():
        shutil.rmtree(work)
    source, scratch = Layout(root), Layout(work)
    shutil.copytree(source.predictor_dir, scratch.predictor_dir)
    if source.lut_exports.exists():
        shutil.copytree(source.lut_exports, scratch.lut_exports)
    for device in devices:
        for stage in ("runtime", "lut", "baselines", "calibration"):
            started = time.perf_counter()
            stages.STAGES[stage].function(params, device=device, root=work)
            print(f"{stage}@{device}: {time.perf_counter() - started:.0f} s", flush=True)
    return work


def search_row(params, work: Path, device: str, multiple: float) -> dict:
    started = time.perf_counter()
    paths = stages.stage_search(params, device, f"{multiple}x", root=work)
    summary = read_json(paths["summary"])
    target = summary["targets_ms"][device]
    measured = (summary.get("measured_ms") or {}).get(device)
    return {"device": device, "multiple": multiple, "target_ms": target,
            "estimated_ms": summary["latency_ms"][device], "measured_ms": measured,
            "measured_vs_target_pct": None if measured is None else 100 * (measured / target - 1),
            "first_estimate_error_pct": (summary.get("first_estimate_error_pct") or {}).get(device),
            "refine_rounds": summary.get("refine_rounds"), "within": summary["within"],
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT / "data", help="a finished pipeline's data folder")
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--devices", nargs="+", help="default: params search.devices")
    parser.add_argument("--multiples", type=float, nargs="+", default=list(MULTIPLES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/scan-edge-latency-fidelity"))
    parser.add_argument("--no-search", action="store_true", help="only the held-out figures")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure the LUT, baselines and calibration again in --work first (a quiet moment)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "benchmarks/results/latency_fidelity.json")
    args = parser.parse_args(argv)

    params = load_params(args.params, args.profile)
    devices = args.devices or stages.search_devices(params)
    source = remeasured_root(args.root, args.work, params, devices) if args.remeasure else args.root
    results = {"heldout": {d: heldout(source, d) for d in devices}, "searches": [], "bar": TARGETS,
               "remeasured": args.remeasure}
    for device, row in results["heldout"].items():
        c = row["calibrated"]
        print(f"{device}: {row['model']} on {c['n']} held-out subnets: MAPE {c['mape_pct']:.2f} %, RMSPE "
              f"{c['rmspe_pct']:.2f} %, max {c['max_ape_pct']:.2f} %, Spearman {c['spearman']:.3f}, within 5 % "
              f"{c['within_5_pct']:.0%}, within 10 % {c['within_10_pct']:.0%} -> "
              f"{'meets' if row['targets']['met'] else 'misses'} the bar (paper's line: MAPE "
              f"{row['paper_line']['mape_pct']:.2f} %, max {row['paper_line']['max_ape_pct']:.2f} %)")
    if not args.no_search:
        work = args.work if args.remeasure else scratch_root(args.root, args.work)
        for device in devices:
            for multiple in args.multiples:
                row = search_row(params, work, device, multiple)
                results["searches"].append(row)
                print(f"{device} @ {multiple}x ({row['target_ms']:.3f} ms): measured {row['measured_ms']} ms "
                      f"({row['measured_vs_target_pct']:+.2f} % of target), first estimate off by "
                      f"{row['first_estimate_error_pct']:+.2f} %, {row['refine_rounds']} round(s), within: "
                      f"{row['within']}")
    searches = results["searches"]
    results["summary"] = {
        "heldout_all_met": all(r["targets"]["met"] for r in results["heldout"].values()),
        "searches_within": sum(bool(r["within"]) for r in searches), "searches": len(searches),
        "first_estimates_within_5_pct": sum(abs(r["first_estimate_error_pct"] or 99) <= 5 for r in searches),
        "max_refine_rounds": max((r["refine_rounds"] or 0 for r in searches), default=None)}
    write_json(args.out, results)
    print(f"summary: {results['summary']}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
