"""Wall time of the evolutionary search: 100 generations with population 100 (required: <= 10 s).

    python benchmarks/search_speed.py
    python benchmarks/search_speed.py --repeats 5 --target-ms 7.6 --out data/search/speed.json

The accuracy predictor is the real network (``nas_core.accuracy_predictor``): the trained one
from data/predictor/predictor.pt when it exists, else an untrained one of the same shape (same
cost). The latency estimator is the calibrated LUT of --device when data/lut has it, else the
stand-in of benchmarks/search_sampling.py (the same table-sum cost). The target defaults to
MobileNetV2's latency on the device (data/baselines/<device>.parquet) or 7.6 ms (ONNX Runtime
CPU, 1 thread, shared/ENVIRONMENT.md), so the initial population needs the steered sampling.

torch runs the predictor with --threads threads (default 1): the search calls it on ~75
subnets per generation, and on a shared 2-core machine a 2-thread pool waiting for busy
cores made such small calls ~30x slower here (0.5 s instead of 15 ms per call).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from nas_core.block_catalog import BlockCatalog
from nas_core.io import code_version, machine_fingerprint, utc_now, write_json
from nas_core.layout import DATA, Layout
from nas_core.search_algorithm import EvolutionConfig, search
from nas_core.search_constraints import Constraints, LatencyConstraint
from nas_core.search_space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_sampling import device_profile, standin_latency  # noqa: E402  (a sibling script)

FALLBACK_MOBILENETV2_MS = 7.6


def load_predictor(path: Path):
    from nas_core.accuracy_predictor import AccuracyPredictor, PredictorBundle

    if path.exists():
        return PredictorBundle.load(path), f"trained predictor {path}"
    return PredictorBundle(AccuracyPredictor()), "untrained AccuracyPredictor (same cost; no trained one yet)"


def load_latency(device: str, lut_dir: Path, catalog: BlockCatalog, params_file: Path = Path("params.yaml")):
    lut, fit = lut_dir / f"{device}.parquet", lut_dir / f"{device}.fit.json"
    if lut.exists() and fit.exists():
        from nas_core.efficiency_predictor import LatencyEstimator

        return LatencyEstimator.from_files(lut, fit, device_profile(device, params_file)), f"calibrated LUT {lut}"
    return standin_latency(catalog), "stand-in LUT (benchmarks/search_sampling.py)"


def default_target(device: str, baselines: Path) -> tuple[float, str]:
    if baselines.exists():
        from nas_core.search_run import reference_latency_ms

        try:
            return reference_latency_ms(baselines, device), f"MobileNetV2 on {device} ({baselines})"
        except FileNotFoundError:
            pass
    return FALLBACK_MOBILENETV2_MS, "MobileNetV2, ONNX Runtime CPU 1 thread (shared/ENVIRONMENT.md)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="ort_cpu_fp32")
    p.add_argument("--target-ms", type=float, help="latency target (default: MobileNetV2's latency)")
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the predictor")
    p.add_argument("--lut-dir", type=Path, default=DATA.lut_dir)
    p.add_argument("--predictor", type=Path, default=DATA.predictor)
    p.add_argument("--baselines", type=Path, default=None, help="default data/baselines/<device>.parquet")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="devices: overrides of the profiles")
    p.add_argument("--budget-s", type=float, default=10.0, help="required wall time per search")
    p.add_argument("--out", type=Path, default=DATA.search_root / "speed.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    space = SearchSpace()
    catalog = BlockCatalog(space, 224)
    predictor, predictor_desc = load_predictor(args.predictor)
    latency, latency_desc = load_latency(args.device, args.lut_dir, catalog, args.params)
    baselines = args.baselines or Layout(args.lut_dir.parent).baselines(args.device)
    target, target_desc = (args.target_ms, "given") if args.target_ms else default_target(args.device, baselines)
    constraints = Constraints(catalog, [LatencyConstraint(args.device, target, latency)])
    print(f"predictor: {predictor_desc}\nlatency: {latency_desc}\ntarget: {target:.3f} ms ({target_desc})")
    runs = []
    for seed in range(args.repeats):
        config = EvolutionConfig(population_size=args.population, generations=args.generations, seed=seed)
        started = time.perf_counter()
        result = search(space, predictor, constraints, config)
        seconds = time.perf_counter() - started
        history = result.history
        runs.append({"seed": seed, "seconds": seconds,
                     "initial_population_s": history[0]["seconds"],
                     "per_generation_ms": 1000 * statistics.median(r["seconds"] for r in history[1:]),
                     "best_accuracy": result.best.predicted_accuracy,
                     "best_latency_ms": result.best.latency_ms()[args.device],
                     "fresh_attempts_per_valid": result.sampling_summary()["fresh_attempts_per_valid"]})
        print(f"seed {seed}: {seconds:.2f} s (initial population {history[0]['seconds']:.2f} s, "
              f"{runs[-1]['per_generation_ms']:.1f} ms per generation), best {result.best.predicted_accuracy:.4f} "
              f"at {runs[-1]['best_latency_ms']:.3f} ms")
    median = statistics.median(r["seconds"] for r in runs)
    ok = median <= args.budget_s
    print(f"median {median:.2f} s for {args.generations} generations x population {args.population} "
          f"({'within' if ok else 'OVER'} the {args.budget_s:g} s budget; indicative on a shared machine)")
    write_json(args.out, {"median_seconds": median, "budget_seconds": args.budget_s, "within_budget": ok,
                          "runs": runs, "target_ms": target, "device": args.device, "threads": args.threads,
                          "inputs": {"predictor": predictor_desc, "latency": latency_desc, "target": target_desc},
                          "provenance": {"code_version": code_version(), "machine": machine_fingerprint(),
                                         "timestamp": utc_now()}})
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:  # e.g. an infeasible target: the message names the lowest achievable latency
        sys.exit(f"error: {err}")
