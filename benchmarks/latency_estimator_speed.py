"""How many architectures per second the calibrated-LUT latency estimator scores (target >= 100 000).

    python benchmarks/latency_estimator_speed.py                               # a device's real LUT if built
    python benchmarks/latency_estimator_speed.py --device ort_cpu_fp32 --batch 100000 --out /tmp/speed.json

Uses ``data/lut/<device>.parquet`` + ``.fit.json`` when both exist (and match the device),
else a synthetic LUT (random block latencies: the speed does not depend on the values).
Times ``predict_genomes`` on batches of random genomes (best of --repeats), the same for
``count_params``, ``predict`` on ArchConfig objects (the slow path, for contrast) and
``min_latency_ms``; prints the figures (wall clock, and per CPU-second, which is what a
quiet machine would show) and writes them to --out as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

from nas_core.block_catalog import BlockCatalog
from nas_core.efficiency_predictor import LatencyEstimator
from nas_core.io import code_version, machine_fingerprint, utc_now, write_json
from nas_core.latency.lut import LutError, LutPaths
from nas_core.layout import DATA
from nas_core.search_space import SearchSpace
from search_sampling import device_profile  # a sibling script: the profile as the pipeline sees it

TARGET_PER_S = 100_000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="ort_cpu_fp32", help="device whose LUT to use when it exists")
    parser.add_argument("--root", default=str(DATA.lut_dir), help="folder of the LUT files")
    parser.add_argument("--clock", choices=("wall", "cpu"), help="the clock the LUT was measured with")
    parser.add_argument("--batch", type=int, default=100_000, help="genomes per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (the best counts)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    return parser.parse_args(argv)


def load_estimator(device: str, root: str, clock: str | None) -> tuple[LatencyEstimator, str]:
    paths = LutPaths.for_device(device, root)
    if paths.lut.exists() and paths.fit.exists():
        profile = device_profile(device, Path("params.yaml"))  # params.yaml's overrides, as the pipeline
        if clock:
            profile = dataclasses.replace(profile, options={**profile.options, "clock": clock})
        try:
            return LatencyEstimator.from_files(paths.lut, paths.fit, profile), f"{paths.lut} + {paths.fit.name}"
        except LutError as err:
            print(f"note: {err}; using a synthetic LUT", file=sys.stderr)
    catalog = BlockCatalog(SearchSpace(), 224)
    block_ms = np.random.default_rng(0).uniform(0.02, 3.0, len(catalog.blocks))
    return LatencyEstimator(catalog, block_ms, a=0.85, b=0.5, device="synthetic"), "synthetic LUT"


def best_seconds(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best process-CPU seconds of ``fn()`` over ``repeats`` calls.

    On a machine others use, the wall time includes their share of the CPU; the CPU time is
    what the call itself costs (what a quiet machine's wall time would be; numpy runs this
    single-threaded)."""
    fn()  # warm caches (catalog tables, numpy buffers)
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def main(argv=None) -> int:
    args = parse_args(argv)
    estimator, source = load_estimator(args.device, args.root, args.clock)
    space = estimator.space
    genomes = space.sample_genomes(args.batch, np.random.default_rng(1))
    archs = [space.decode(g) for g in genomes[:2000]]
    predict_wall, predict_cpu = best_seconds(lambda: estimator.predict_genomes(genomes), args.repeats)
    params_wall, params_cpu = best_seconds(lambda: estimator.count_params(genomes), args.repeats)
    objects_wall, _ = best_seconds(lambda: estimator.predict(archs), 1)
    minimum_wall, _ = best_seconds(estimator.min_latency_ms, 1)
    per_s = args.batch / predict_wall
    figures = {
        "source": source, "device": estimator.device, "batch": args.batch,
        "predict_genomes_per_s": per_s, "predict_genomes_per_cpu_s": args.batch / predict_cpu,
        "count_params_per_s": args.batch / params_wall, "count_params_per_cpu_s": args.batch / params_cpu,
        "predict_archconfig_per_s": len(archs) / objects_wall, "min_latency_ms": estimator.min_latency_ms(),
        "min_latency_seconds": minimum_wall, "target_per_s": TARGET_PER_S, "meets_target": per_s >= TARGET_PER_S,
        "load_average": os.getloadavg()[0], "machine": machine_fingerprint(), "code_version": code_version(),
        "created_at": utc_now(),
    }
    print(f"estimator: {source}; 1-minute load average {figures['load_average']:.1f} on {os.cpu_count()} cores")
    verdict = "met" if per_s >= TARGET_PER_S else "NOT met"
    print(f"predict_genomes     {per_s:>12,.0f} architectures/s wall, {figures['predict_genomes_per_cpu_s']:>12,.0f} "
          f"per CPU-second (batch {args.batch:,}; target {TARGET_PER_S:,}: {verdict})")
    print(f"count_params        {figures['count_params_per_s']:>12,.0f} architectures/s wall, "
          f"{figures['count_params_per_cpu_s']:>12,.0f} per CPU-second")
    print(f"predict(ArchConfig) {figures['predict_archconfig_per_s']:>12,.0f} architectures/s (encodes each object)")
    print(f"min_latency_ms      {figures['min_latency_ms']:.3f} ms, computed in {minimum_wall * 1e3:.1f} ms")
    if args.out:
        write_json(args.out, figures)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
