"""What each baseline model adds to the baselines stage, per device: build + count + export
once, then the timing on each device, with the params' timing settings (the smoke budget).

    python benchmarks/zoo_cost.py                                  # every model, params.yaml's devices
    python benchmarks/zoo_cost.py --models gernet_l,microvit_s3 --profile imagenet

Prints one row per model: seconds to build/count/export, seconds per device, the total, and
the measured median (ms), so the smoke set in params.yaml (``baselines.models``) can be
chosen against the stage's budget. Run it on a quiet machine: it times on the CPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from nas_core.latency.baselines import BASELINE_MODELS, build_model, model_size
from nas_core.latency.devices import get_profile, load_profiles
from nas_core.latency.export import export_onnx
from nas_core.latency.measure import measure_onnx
from nas_core.latency.timing import TimingConfig
from nas_core.params import load_params, section


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(BASELINE_MODELS), help="comma-separated model names")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profile", default=None, help="params profile (default: the file's, smoke)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    params = load_params(args.params, args.profile)
    profiles = load_profiles(params.get("devices") or {})
    devices = [get_profile(name, profiles) for name in section(params, "search")["devices"]]
    timing = section(params, "baselines").get("timing")
    config = TimingConfig(**timing) if timing else TimingConfig()
    names = [n.strip() for n in args.models.split(",")]
    print(f"{'model':<24} {'prepare s':>9} " + " ".join(f"{d.name + ' s':>20}" for d in devices)
          + f" {'total s':>8}  median ms per device", flush=True)
    grand = 0.0
    with tempfile.TemporaryDirectory(prefix="zoo-cost-") as tmp:
        for name in names:
            resolution = BASELINE_MODELS.get(name, 224)
            started = time.perf_counter()
            module = build_model(name)
            model_size(module, resolution)  # the stage counts MACs too
            path = export_onnx(module, (1, 3, resolution, resolution), Path(tmp) / f"{name}.onnx")
            prepare = time.perf_counter() - started
            per_device, medians = [], []
            for profile in devices:
                started = time.perf_counter()
                try:
                    medians.append(f"{measure_onnx(path, profile.input_shape(resolution), profile, config).median_ms:.2f}")
                except Exception as err:  # noqa: BLE001 - the stage turns this into an error row
                    medians.append(f"error: {type(err).__name__}")
                per_device.append(time.perf_counter() - started)
            total = prepare + sum(per_device)
            grand += total
            print(f"{name:<24} {prepare:>9.1f} " + " ".join(f"{t:>20.1f}" for t in per_device)
                  + f" {total:>8.1f}  {', '.join(medians)}", flush=True)
    print(f"all {len(names)} models: {grand:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
