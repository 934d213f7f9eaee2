"""Our exported efficientformerv2_s0 vs timm's own export, in ONNX Runtime (target ratio <= 1.05).

Both models are exported with the same exporter settings and timed in sessions with the same
options; the two sessions alternate in rounds so machine drift hits both alike, and the
ratio is the median of per-round ratios.

    python benchmarks/export_vs_timm.py --out benchmarks/results/export_vs_timm.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm

from nas_core.io import machine_fingerprint, utc_now, write_json
from nas_core.latency.export import export_onnx
from nas_core.search_space import SearchSpace
from nas_core.subnet import SubnetModel


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_ms(session, feed, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs-per-round", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/export_vs_timm.json")
    args = parser.parse_args(argv)
    shape = (1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        ours_path = export_onnx(SubnetModel(SearchSpace().preset("efficientformerv2_s0")), shape, Path(tmp) / "ours.onnx")
        timm_path = export_onnx(timm.create_model("efficientformerv2_s0"), shape, Path(tmp) / "timm.onnx")
        ours, theirs = _session(ours_path, args.threads), _session(timm_path, args.threads)
        feed = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        for s in (ours, theirs):
            _median_ms(s, feed, 10)  # warm-up
        rounds = []
        for _ in range(args.rounds):
            a = _median_ms(ours, feed, args.runs_per_round)
            b = _median_ms(theirs, feed, args.runs_per_round)
            rounds.append((a, b))
    ratio = statistics.median(a / b for a, b in rounds)
    result = {
        "benchmark": "export_vs_timm", "model": "efficientformerv2_s0", "runtime": f"onnxruntime {ort.__version__}",
        "threads": args.threads, "ours_median_ms": statistics.median(a for a, _ in rounds),
        "timm_median_ms": statistics.median(b for _, b in rounds), "ratio": ratio, "target": 1.05,
        "rounds": rounds, "machine": machine_fingerprint(), "timestamp": utc_now(),
    }
    print(f"ours {result['ours_median_ms']:.2f} ms, timm {result['timm_median_ms']:.2f} ms, "
          f"ratio {ratio:.3f} (target <= 1.05; {args.threads} thread(s))")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
