"""Does every searched model meet its latency target *on the device*? (issue 6, "How good")

    python benchmarks/search_on_device.py --data data --out benchmarks/results/search_on_device.json
                                          [--multiples 0.75 1.0 1.5] [--devices ort_cpu_fp32 openvino_cpu_fp32]

Reads a finished pipeline's accuracy predictor, calibrated LUTs and baseline latencies
(``<data>/predictor``, ``<data>/lut``, ``<data>/baselines``: run ``scan-edge reproduce``
first), copies them into a scratch root (``--work``; ``<data>`` is never written) and runs
the pipeline's own search stage (``tasks.stages.stage_search``: evolutionary search, then
measurement of the best candidates on the device and re-search until one measures within
[target - 3%, target]) for each device and each target ``k x MobileNetV2's measured
latency on that device``.

Prints one line per search and writes JSON: ``{"params": profile, "runs": [{"device",
"multiple", "target_ms", "estimated_ms", "measured_ms", "measured_vs_target" (measured /
target - 1), "within", "rounds", "first_estimate_error_pct" (round 1's estimate vs its
measurement), "measured_candidates", "predicted_accuracy", "params", "arch_id", "seconds",
"error"}], "all_within": bool, "created", "code_version", "machine"}``. A target below the lowest latency the space can reach is reported as an
error naming that value, not run.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas_core.io import code_version, machine_fingerprint, read_json, utc_now, write_json  # noqa: E402

INPUTS = ("predictor", "lut", "baselines")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="a finished pipeline's data root (read only)")
    parser.add_argument("--work", default=None, help="scratch root for the searches (default: a temp dir)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="params profile (default: the file's top level, smoke)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: params search.devices")
    parser.add_argument("--multiples", nargs="+", type=float, default=[0.75, 1.0, 1.5],
                        help="targets as multiples of MobileNetV2's measured latency")
    parser.add_argument("--out", default="benchmarks/results/search_on_device.json")
    return parser.parse_args(argv)


def copy_inputs(data: Path, work: Path) -> None:
    for name in INPUTS:
        source = data / name
        if not source.exists():
            raise SystemExit(f"{source} is missing: run `scan-edge reproduce` (or its lut, calibration, "
                             "baselines and predictor stages) first")
        shutil.copytree(source, work / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("_work"))


def one_search(params, device: str, multiple: float, work: Path) -> dict:
    from nas_core.search_constraints import SearchError
    from tasks.stages import stage_search

    row = {"device": device, "multiple": multiple}
    started = time.perf_counter()
    try:
        paths = stage_search(params, device, f"{multiple}x", root=work)
    except SearchError as error:  # e.g. a target below the fastest subnet: reported, not raised
        return {**row, "within": False, "error": str(error), "seconds": time.perf_counter() - started}
    summary, record = read_json(paths["summary"]), read_json(paths["arch"])
    refine = record.get("refine") or {}
    target = summary["targets_ms"][device]
    measured = (summary.get("measured_ms") or {}).get(device)
    return {**row, "target_ms": target, "estimated_ms": summary["latency_ms"][device], "measured_ms": measured,
            "measured_vs_target": None if measured is None else measured / target - 1,
            "within": bool(summary["within"]), "rounds": refine.get("rounds"),
            "first_estimate_error_pct": (summary.get("first_estimate_error_pct") or {}).get(device),
            "measured_candidates": len({r["arch_id"] for r in refine.get("records", [])}),
            "predicted_accuracy": summary["predicted_accuracy"], "params": summary["params"],
            "arch_id": summary["arch_id"], "seconds": time.perf_counter() - started, "error": None}


def main(argv=None) -> int:
    from nas_core.params import load_params
    from tasks.stages import search_devices

    args = parse_args(argv)
    params = load_params(args.params, args.profile)
    devices = args.devices or search_devices(params)
    with tempfile.TemporaryDirectory(prefix="search_on_device_") as tmp:
        work = Path(args.work or tmp)
        copy_inputs(Path(args.data), work)
        runs = []
        for device in devices:
            for multiple in args.multiples:
                row = one_search(params, device, multiple, work)
                runs.append(row)
                print(format_row(row), flush=True)
    result = {"params": args.profile or params.get("profile", "smoke"), "data": str(args.data), "runs": runs,
              "all_within": all(r["within"] for r in runs), "created": utc_now(), "code_version": code_version(),
              "machine": machine_fingerprint()}
    write_json(args.out, result)
    print(f"{sum(r['within'] for r in runs)}/{len(runs)} searches measured within [-3%, 0] of their target; "
          f"wrote {args.out}")
    return 0 if result["all_within"] else 1


def format_row(row: dict) -> str:
    head = f"{row['device']:<20} {row['multiple']:>5.2f}x"
    if row.get("error"):
        return f"{head}  error: {row['error']}"
    measured = "n/a" if row["measured_ms"] is None else f"{row['measured_ms']:.3f}"
    gap = "" if row["measured_vs_target"] is None else f" ({100 * row['measured_vs_target']:+.1f}%)"
    first = row.get("first_estimate_error_pct")
    gap += "" if first is None else f"  first estimate {first:+.1f}%"
    return (f"{head}  target {row['target_ms']:.3f} ms  estimated {row['estimated_ms']:.3f}  measured {measured}{gap}"
            f"  within={row['within']}  rounds {row['rounds']}  {row['measured_candidates']} measured"
            f"  {row['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
