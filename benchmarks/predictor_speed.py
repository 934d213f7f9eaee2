"""Accuracy-predictor throughput: architectures scored per second (the search needs >= 50,000/s).

    python benchmarks/predictor_speed.py                                  # random-weight default network
    python benchmarks/predictor_speed.py --bundle data/predictor/predictor.pt --out /tmp/speed.json

Times ``PredictorBundle.predict_genomes`` (genomes -> catalog rows -> gather + network) on
``--n`` uniformly sampled genomes, and for reference the paper's input path (``ArchEncoder``
matrices -> ``predict_encodings``) and the encoder alone. Reports the median over
``--repeats`` of wall-clock and CPU-time rates: on a shared machine the wall-clock rate
drops with the load, the CPU-time rate much less (both are printed with the load average).
"""
from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import asdict
import time
from pathlib import Path

import numpy as np
import torch

from nas_core.accuracy_predictor import AccuracyPredictor, PredictorBundle
from nas_core.threads import torch_threads
from nas_core.io import code_version, machine_fingerprint, utc_now, write_json
from nas_core.search_space import SearchSpace


def _rates(fn, n: int, repeats: int) -> dict[str, float]:
    """Median per-second rates of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_per_s": n / statistics.median(wall), "cpu_per_s": n / statistics.median(cpu),
            "wall_s": statistics.median(wall)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a saved predictor (default: the default network, random weights)")
    parser.add_argument("--n", type=int, default=200_000, help="genomes per timed call (default 200000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, predict_genomes' default)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    space = SearchSpace()
    bundle = PredictorBundle.load(args.bundle) if args.bundle else PredictorBundle(AccuracyPredictor())
    genomes = space.sample_genomes(args.n, np.random.default_rng(0))
    subset = genomes[: min(args.n, 20_000)]  # the slow paths on fewer genomes
    load_before = os.getloadavg()

    fast = _rates(lambda: bundle.predict_genomes(genomes, threads=args.threads), len(genomes), args.repeats)
    with torch_threads(args.threads):
        encoded = _rates(lambda: bundle.predict_encodings(bundle.encoder.encode_genomes(subset)), len(subset),
                         args.repeats)
    encoder = _rates(lambda: bundle.encoder.encode_genomes(subset), len(subset), args.repeats)
    max_diff = float(np.abs(bundle.predict_genomes(subset[:5000])
                            - bundle.predict_encodings(bundle.encoder.encode_genomes(subset[:5000]))).max())

    result = {
        "predict_genomes": fast, "encode_then_predict_encodings": encoded, "encode_genomes_only": encoder,
        "max_abs_difference_fast_vs_encodings": max_diff, "n": args.n, "repeats": args.repeats,
        "threads": args.threads, "network": asdict(bundle.model.shape), "bundle": str(args.bundle or "random"),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "torch": torch.__version__, "machine": machine_fingerprint(), "code_version": code_version(),
        "created": utc_now(),
    }
    print(f"predict_genomes:                    {fast['wall_per_s']:>10,.0f} archs/s wall, "
          f"{fast['cpu_per_s']:>10,.0f} archs/s CPU time  ({args.n:,} genomes, {args.threads} thread(s))")
    print(f"encode_genomes + predict_encodings: {encoded['wall_per_s']:>10,.0f} archs/s wall, "
          f"{encoded['cpu_per_s']:>10,.0f} archs/s CPU time")
    print(f"encode_genomes alone:               {encoder['wall_per_s']:>10,.0f} archs/s wall")
    print(f"max |fast - exact| = {max_diff:.2e}; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores (wall-clock rates are indicative on a shared machine)")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
