"""Build and calibrate LUTs for some devices and report how well they predict subnet latency.

    python benchmarks/lut_accuracy.py --devices ort_cpu_fp32,openvino_cpu_fp32
    python benchmarks/lut_accuracy.py --devices ort_cpu_fp32 --skip-build --out /tmp/acc.json
    python benchmarks/lut_accuracy.py --devices ort_cpu_fp32 --resume        # continue an interrupted run
    python benchmarks/lut_accuracy.py --clock cpu --root data/lut/cpu_clock  # on a machine others use

For each device: the full LUT (``scan-edge lut build``; skipped with --skip-build, which
uses the existing one), then the calibration on --n-calibration random subnets scored on
--n-validation others (``scan-edge lut calibrate``). Prints, per device, the wall time of
both phases and Spearman / MAPE / RMSE / max error of the raw LUT sum, the calibrated
estimate and the zero-cost proxies (MACs, params; Suppl. S4) on the held-out subnets, with
the project's targets (calibrated MAPE <= 3 %, Spearman >= 0.95). Writes the figures to
--out (JSON) and one Fig. 3-style PNG with a panel per device to --figure.

Holds the machine's CPU lock exclusively while measuring; a busy machine (see the load
average printed) inflates and scatters the timings, which is what ``quiet_machine`` in
each fit file records.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from nas_core.io import code_version, machine_fingerprint, utc_now, write_json
from nas_core.latency.calibration import TARGETS, calibrate, plot_calibration
from nas_core.latency.devices import get_profile, load_profiles
from nas_core.latency.lut import LutPaths, build_lut
from nas_core.latency.timing import TimingConfig
from nas_core.layout import DATA


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="ort_cpu_fp32,openvino_cpu_fp32", help="comma-separated profile names")
    parser.add_argument("--root", default=str(DATA.lut_dir), help="folder of the LUT files")
    parser.add_argument("--exports", default=str(DATA.lut_exports), help="ONNX export cache (shared by every root)")
    parser.add_argument("--clock", choices=("wall", "cpu"),
                        help="override the profiles' clock (cpu: process CPU time, for a machine others use)")
    parser.add_argument("--n-calibration", type=int, default=10)
    parser.add_argument("--n-validation", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampling", choices=("uniform", "stratified"), default="uniform")
    parser.add_argument("--timing", type=json.loads, default=None,
                        help='TimingConfig overrides as JSON, e.g. \'{"min_total_ms": 100, "min_repeats": 20}\' '
                             "(the calibration times subnets with the LUT's configuration)")
    parser.add_argument("--skip-build", action="store_true", help="use the existing LUTs")
    parser.add_argument("--resume", action="store_true", help="continue interrupted LUT / subnet timings")
    parser.add_argument("--out", type=Path, default=DATA.lut_dir / "accuracy.json")
    parser.add_argument("--figure", type=Path, default=DATA.lut_dir / "calibration.png")
    return parser.parse_args(argv)


@contextlib.contextmanager
def exclusive_cpu():
    try:
        from tasks import cpu_lock
    except ImportError:  # run outside the project: nothing to coordinate with
        yield
        return
    with cpu_lock("exclusive"):
        yield


def run_device(name: str, args) -> tuple[dict, object]:
    profile = get_profile(name, load_profiles())
    if args.clock:
        profile = dataclasses.replace(profile, options={**profile.options, "clock": args.clock})
    paths = LutPaths.for_device(name, args.root, args.exports)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    if not args.skip_build:
        build_lut(profile, paths, resume=args.resume, config=TimingConfig.from_dict(args.timing))
    built = time.monotonic()
    report = calibrate(profile, paths, n_calibration=args.n_calibration, n_validation=args.n_validation,
                       seed=args.seed, sampling=args.sampling, resume=args.resume, figure=True)
    done = time.monotonic()
    print(report.summary(), flush=True)
    result = {"device": name, "lut_build_s": None if args.skip_build else built - started,
              "calibration_s": done - built, "load_average_at_start": load_before,
              "load_average_at_end": os.getloadavg()[0], "a": report.a, "b": report.b,
              "metrics": report.document["metrics"], "targets": report.document["targets"],
              "quiet_machine": report.document["quiet_machine"], "clock": profile.options.get("clock", "wall"),
              "lut": str(paths.lut), "fit": str(paths.fit)}
    return result, report.frame


def format_table(results: list[dict]) -> str:
    lines = [f"{'device':<20} {'predictor':<11} {'spearman':>8} {'MAPE %':>7} {'RMSE ms':>8} {'max err ms':>10}"]
    for r in results:
        for name, m in r["metrics"]["validation"].items():
            spearman = f"{m['spearman']:.3f}" if m["spearman"] is not None else "-"
            lines.append(f"{r['device']:<20} {name:<11} {spearman:>8} {m['mape_pct']:>7.2f} {m['rmse_ms']:>8.3f} "
                         f"{m['max_abs_err_ms']:>10.3f}")
        build = f"{r['lut_build_s'] / 60:.1f} min" if r["lut_build_s"] is not None else "skipped"
        lines.append(f"{'':<20} LUT build {build}, calibration {r['calibration_s'] / 60:.1f} min, "
                     f"a={r['a']:.4f} b={r['b']:.3f}, targets {'met' if r['targets']['met'] else 'NOT met'}, "
                     f"quiet machine {'yes' if r['quiet_machine'].get('ok') else 'no'}, "
                     f"load {r['load_average_at_start']:.1f}->{r['load_average_at_end']:.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    results, frames = [], {}
    with exclusive_cpu():
        for name in devices:
            result, frame = run_device(name, args)
            results.append(result)
            frames[name] = frame
    print()
    print(format_table(results))
    write_json(args.out, {"results": results, "targets": TARGETS, "machine": machine_fingerprint(),
                          "code_version": code_version(), "created_at": utc_now()})
    plot_calibration(frames, args.figure)
    print(f"wrote {args.out} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
