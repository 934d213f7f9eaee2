"""Measure the paper's baseline models end to end on every usable device profile.

    python benchmarks/baseline_latency.py                          # all usable profiles
    python benchmarks/baseline_latency.py --devices ort_cpu_fp32,openvino_cpu_fp32,openvino_cpu_lowp
    python benchmarks/baseline_latency.py --models mobilenetv2_100,efficientformerv2_s0 --quick --out /tmp/b.json

Prints a table (median ms, p10-p90, ratio to MobileNetV2 on the same device) and writes
it to --out: Parquet (schema in nas_core/latency/baselines.py) or, for a ``.json`` name,
JSON with ``rows`` and ``provenance``. Profiles come from params.yaml's ``devices:``
section laid over the defaults (nas_core/latency/devices.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from nas_core.io import write_json
from nas_core.latency.baselines import BASELINE_MODELS, measure_baselines
from nas_core.latency.devices import get_profile, load_profiles
from nas_core.latency.timing import TimingConfig, load_average

# Not the pipeline's baselines/<device>.parquet (the baselines stage writes those, one per device).
DEFAULT_OUT = Path("benchmarks/results/baseline_latency.parquet")
QUICK_TIMING = TimingConfig(warmup_runs=3, warmup_ms=20, min_repeats=10, min_total_ms=100, max_total_ms=2000)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="all",
                        help="comma-separated device profile names, or 'all' (every profile; unusable ones are skipped)")
    parser.add_argument("--models", default=",".join(BASELINE_MODELS),
                        help="comma-separated timm names (resolution from BASELINE_MODELS, else 224)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file with a devices: section")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output .parquet or .json (default {DEFAULT_OUT})")
    parser.add_argument("--clock", choices=("wall", "cpu"),
                        help="override the profiles' clock (cpu: process CPU time, for single-thread CPU "
                             "profiles on a machine others use; see nas_core.latency.timing.CLOCKS)")
    parser.add_argument("--quick", action="store_true", help="short timing (10+ repeats): a smoke test, not figures")
    return parser.parse_args(argv)


def load_device_section(params_path: Path) -> dict:
    if not params_path.exists():
        return {}
    from nas_core.params import load_params

    return load_params(params_path).get("devices") or {}


def format_table(frame) -> str:
    shown = frame.assign(
        latency=[f"{m:.2f} ({lo:.2f}-{hi:.2f})" if not e else "error" for m, lo, hi, e
                 in zip(frame.median_ms, frame.p10_ms, frame.p90_ms, frame.error)],
        ratio=[f"{r:.2f}" if r == r else "-" for r in frame.vs_mobilenetv2],
    )
    latency = shown.pivot(index="model", columns="device", values="latency")
    ratio = shown.pivot(index="model", columns="device", values="ratio")
    order = [m for m in frame.model.unique()]
    lines = ["median ms (p10-p90), batch 1:", latency.loc[order].to_string(), "",
             "relative to mobilenetv2_100 on the same device:", ratio.loc[order].to_string()]
    precisions = frame.drop_duplicates("device").set_index("device")["precision_actual"]
    lines += ["", "precision used: " + ", ".join(f"{d}={p}" for d, p in precisions.items())]
    errors = frame[frame.error != ""]
    for row in errors.itertuples():
        lines.append(f"error {row.model} on {row.device}: {row.error[:200]}")
    return "\n".join(lines)


def warn_if_busy() -> None:
    """Timings on a shared machine are only as good as its idleness: say so up front."""
    busy = load_average()
    cores = os.cpu_count() or 1
    if busy is not None and busy > 0.5 * cores:
        print(f"warning: 1-minute load average {busy:.1f} on {cores} cores; other processes compete for the CPU "
              "and medians will be inflated (see the load_average column)", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    profiles = load_profiles(load_device_section(args.params))
    chosen = list(profiles.values()) if args.devices == "all" else [get_profile(n.strip(), profiles)
                                                                    for n in args.devices.split(",")]
    if args.clock:
        chosen = [dataclasses.replace(p, options={**p.options, "clock": args.clock}) for p in chosen]
    models = {name.strip(): BASELINE_MODELS.get(name.strip(), 224) for name in args.models.split(",")}
    warn_if_busy()
    as_json = args.out.suffix == ".json"
    frame = measure_baselines(chosen, models, out_path=None if as_json else args.out,
                              config=QUICK_TIMING if args.quick else None)
    if as_json:
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")  # NaN is not JSON
        write_json(args.out, {"rows": records, "provenance": frame.attrs["provenance"]})
    print()
    print(format_table(frame))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
