"""Fig. 4 of the paper: sampling attempts per valid subnet as the latency target tightens,
with and without search-space evolution.

    python benchmarks/search_sampling.py                       # stand-ins unless data/ has the real inputs
    python benchmarks/search_sampling.py --device ort_cpu_fp32 --out data/search/sampling.json

For each latency target (from the median uniform subnet down to just above the fastest
subnet of the space):

* uniform space (evolution off, Fig. 4a blue): draw uniform subnets (up to --uniform-budget)
  and count attempts per valid subnet (a lower bound, marked, when none is valid);
* evolved space: run the search with evolution on, then draw --probe fresh subnets from the
  final P and count attempts per valid subnet; also the attempts per valid subnet of all fresh
  draws of the whole search (its initial population, where P is steered towards feasibility).

The ratio uniform / evolved at the tightest target where uniform sampling still finds valid
subnets is the headline (required: >= 10x). Writes a PNG like Fig. 4a, a PNG of Q, the
valid rate of fresh draws and P's entropy per generation (evolution on / off, Fig. 4b-like) and
a JSON with every number.

Inputs: the calibrated LUT of --device (data/lut/<device>.parquet + .fit.json) and the accuracy
predictor (data/predictor/predictor.pt) when they exist; otherwise stand-ins (``standin_latency``,
``StandInAccuracy`` below), which the output says.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from nas_core.block_catalog import BlockCatalog, block_macs
from nas_core.io import code_version, machine_fingerprint, utc_now, write_json
from nas_core.layout import DATA
from nas_core.search_algorithm import EvolutionConfig, SamplingDistribution, search
from nas_core.search_constraints import BlockTableEstimator, Constraints, LatencyConstraint, SamplingBudgetError
from nas_core.search_space import SearchSpace

STANDIN_S0_MS = 12.5  # efficientformerv2_s0 on ONNX Runtime CPU, 1 thread, here (shared/ENVIRONMENT.md)


# --------------------------------------------------------------------------- stand-ins
def standin_latency(catalog: BlockCatalog, s0_ms: float = STANDIN_S0_MS) -> BlockTableEstimator:
    """A LUT-like CPU latency model: MACs at dense-conv speed, depthwise convs and GELU slower per
    operation, a fixed cost per block and per MHSA (softmax, reshapes), scaled so that
    EfficientFormerV2-S0 takes ``s0_ms``; with an affine calibration like §5.3's."""
    table = []
    for b in catalog.blocks:
        ms = block_macs(b, catalog.space) / 2.5e7 + 0.015
        if b.kind == "ffn":
            hidden = b.in_width * b.expansion * b.in_resolution ** 2
            ms += hidden * b.kernel ** 2 / 1.5e9 if b.ffn_type == "unified" else 0.0
            ms += hidden * 4e-9 if b.act == "gelu" else 0.0
        ms += {"mhsa": 0.25, "embed_attn": 0.3}.get(b.kind, 0.0)
        ms += 0.1 if b.kind in ("mhsa", "stem") and b.act == "gelu" else 0.0
        table.append(ms)
    raw = BlockTableEstimator(catalog, np.array(table), scale=0.85, offset=0.3)
    s0 = raw.predict_genomes(catalog.space.encode(catalog.space.preset("efficientformerv2_s0"))[None])[0]
    return BlockTableEstimator(catalog, np.array(table), scale=0.85 * s0_ms / s0, offset=0.3 * s0_ms / s0,
                               name="standin")


class StandInAccuracy:
    """Saturating in log-MACs, a fixed random per-block term, a reward for a few MHSAs."""

    def __init__(self, catalog: BlockCatalog, seed: int = 0):
        rng = np.random.default_rng(seed)
        macs = catalog.macs_table().astype(float)
        self.catalog = catalog
        self.table = np.log1p(macs / 1e6) + rng.normal(0, 0.5, len(macs))
        self.mhsa = np.array([b.kind == "mhsa" for b in catalog.blocks], dtype=float)

    def predict_genomes(self, genomes):
        x = self.catalog.sum_table(self.table, genomes)
        return 80 * np.tanh(x / 150) - 0.3 * (self.catalog.sum_table(self.mhsa, genomes) - 4) ** 2


def device_profile(device: str, params_file: Path):
    """The device's profile as the pipeline sees it (params.yaml's ``devices:`` overrides, e.g. the clock)."""
    from nas_core.params import load_params
    from tasks.stages import device_profile as pipeline_profile

    return pipeline_profile(load_params(params_file) if params_file.exists() else {}, device)


def load_inputs(device: str, space: SearchSpace, resolution: int, lut_dir: Path, predictor: Path,
                params_file: Path = Path("params.yaml")):
    """(latency estimator, accuracy predictor, description): the real ones where they exist."""
    catalog = BlockCatalog(space, resolution)
    lut, fit = lut_dir / f"{device}.parquet", lut_dir / f"{device}.fit.json"
    if lut.exists() and fit.exists():
        from nas_core.efficiency_predictor import LatencyEstimator

        profile = device_profile(device, params_file)
        latency, lat_desc = LatencyEstimator.from_files(lut, fit, profile), f"calibrated LUT {lut}"
    else:
        latency, lat_desc = standin_latency(catalog), f"stand-in (no {lut} + {fit.name})"
    if predictor.exists():
        from nas_core.accuracy_predictor import PredictorBundle

        accuracy, acc_desc = PredictorBundle.load(predictor), f"predictor {predictor}"
    else:
        accuracy, acc_desc = StandInAccuracy(catalog), f"stand-in (no {predictor})"
    return catalog, latency, accuracy, {"latency": lat_desc, "accuracy": acc_desc}


# --------------------------------------------------------------------------- measurements
def uniform_attempts_per_valid(space, estimator, target: float, budget: int, want: int, seed: int,
                               chunk: int = 20_000) -> tuple[float, bool, int]:
    """Attempts per valid subnet of uniform sampling; (value, is_lower_bound, draws)."""
    uniform = SamplingDistribution.uniform(space)
    rng = np.random.default_rng(seed)
    drawn = valid = 0
    while drawn < budget and valid < want:
        batch = uniform.sample(min(chunk, budget - drawn), rng)
        valid += int((estimator.predict_genomes(batch) <= target).sum())
        drawn += len(batch)
    return (drawn / valid, False, drawn) if valid else (float(drawn), True, drawn)


def evolved_run(space, catalog, accuracy, estimator, target: float, config: EvolutionConfig, probe: int) -> dict:
    cons = Constraints(catalog, [LatencyConstraint("device", target, estimator)])
    started = time.perf_counter()
    result = search(space, accuracy, cons, config)
    final = result.distribution.sample(probe, np.random.default_rng([config.seed, 99]))
    rate = float(np.mean(estimator.predict_genomes(final) <= target))
    summary = result.sampling_summary()
    return {"evolved_attempts_per_valid": 1 / rate if rate else float(probe), "evolved_lower_bound": rate == 0,
            "search_attempts_per_valid": summary["fresh_attempts_per_valid"],
            "best_accuracy_evolved": result.best.predicted_accuracy,
            "best_latency_ms": result.best.latency_ms()["device"], "search_seconds": time.perf_counter() - started,
            "history": result.history}


def uniform_search(space, catalog, accuracy, estimator, target: float, config: EvolutionConfig) -> dict | None:
    """The same search with evolution off, where the uniform space can still be sampled."""
    cons = Constraints(catalog, [LatencyConstraint("device", target, estimator)])
    try:
        result = search(space, accuracy, cons, EvolutionConfig(**{**config.to_dict(), "evolve_space": False}))
    except SamplingBudgetError:
        return None
    return {"best_accuracy_uniform": result.best.predicted_accuracy, "history": result.history}


def _table_row(row: dict) -> str:
    bound = ">" if row["uniform_lower_bound"] else ""
    uniform_acc = row["best_accuracy_uniform"]
    return (f"{row['target_ms']:9.3f} {bound + format(row['uniform_attempts_per_valid'], '.4g'):>18} "
            f"{row['evolved_attempts_per_valid']:18.3g} {row['search_attempts_per_valid']:17.3g} "
            f"{bound + format(row['ratio_uniform_over_evolved'], '.3g'):>8} {row['best_accuracy_evolved']:11.3f} "
            f"{uniform_acc if uniform_acc is not None else math.nan:11.3f} {row['search_seconds']:8.2f}")


# --------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="ort_cpu_fp32")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--lut-dir", type=Path, default=DATA.lut_dir)
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="devices: overrides of the profiles")
    p.add_argument("--predictor", type=Path, default=DATA.predictor)
    p.add_argument("--targets", type=int, default=8, help="number of latency targets (geometric spacing)")
    p.add_argument("--tightest", type=float, default=1.08, help="tightest target = this x the fastest subnet")
    p.add_argument("--uniform-budget", type=int, default=2_000_000, help="max uniform draws per target")
    p.add_argument("--probe", type=int, default=20_000, help="fresh draws from the final evolved P")
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--alpha", type=float, default=EvolutionConfig.alpha)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DATA.search_root / "sampling.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from nas_core.search_report import plot_history, plot_sampling

    args = parse_args(argv)
    space = SearchSpace()
    catalog, estimator, accuracy, inputs = load_inputs(args.device, space, args.resolution, args.lut_dir,
                                                       args.predictor, args.params)
    config = EvolutionConfig(population_size=args.population, generations=args.generations, alpha=args.alpha,
                             seed=args.seed, max_sampling_attempts=args.uniform_budget)
    lowest = float(estimator.min_latency_ms())
    median = float(np.median(estimator.predict_genomes(space.sample_genomes(20_000, args.seed))))
    targets = np.geomspace(median, lowest * args.tightest, args.targets)
    print(f"latency: {inputs['latency']}\naccuracy: {inputs['accuracy']}\n"
          f"fastest subnet {lowest:.3f} ms, median uniform subnet {median:.3f} ms")
    print(f"{'target ms':>9} {'uniform att/valid':>18} {'evolved att/valid':>18} {'search att/valid':>17} "
          f"{'ratio':>8} {'acc evolved':>11} {'acc uniform':>11} {'search s':>8}")
    rows, histories = [], {}
    for target in targets:
        uniform, bound, drawn = uniform_attempts_per_valid(space, estimator, target, args.uniform_budget,
                                                           want=200, seed=args.seed)
        evolved = evolved_run(space, catalog, accuracy, estimator, target, config, args.probe)
        plain = uniform_search(space, catalog, accuracy, estimator, target, config) if not bound else None
        row = {"target_ms": float(target), "uniform_attempts_per_valid": uniform, "uniform_lower_bound": bound,
               "uniform_draws": drawn, **{k: v for k, v in evolved.items() if k != "history"},
               "best_accuracy_uniform": plain["best_accuracy_uniform"] if plain else None}
        row["ratio_uniform_over_evolved"] = uniform / row["evolved_attempts_per_valid"]
        rows.append(row)
        histories[float(target)] = (evolved["history"], plain["history"] if plain else None)
        print(_table_row(row))
    found = [r for r in rows if not r["uniform_lower_bound"]]
    headline = min(found, key=lambda r: r["target_ms"]) if found else None
    if headline:
        print(f"\ntightest target where uniform sampling finds valid subnets: {headline['target_ms']:.3f} ms -> "
              f"uniform needs {headline['uniform_attempts_per_valid']:.4g} attempts per valid subnet, the evolved "
              f"space {headline['evolved_attempts_per_valid']:.3g}: "
              f"{headline['ratio_uniform_over_evolved']:.1f}x fewer "
              f"({'meets' if headline['ratio_uniform_over_evolved'] >= 10 else 'MISSES'} the >= 10x requirement)")
    import pandas as pd

    out = Path(args.out)
    figure = plot_sampling(pd.DataFrame(rows), out.with_suffix(".png"),
                           title=f"Sampling attempts per valid subnet ({args.device})")
    # Fig. 4b-like history at the tightest target where the search with evolution off still ran.
    pair_target = min((t for t, (_on, off) in histories.items() if off is not None), default=float(targets[0]))
    on, off = histories[pair_target]
    curves = {"evolution on": pd.DataFrame(on)}
    if off is not None:
        curves["evolution off"] = pd.DataFrame(off)
    history_fig = plot_history(curves, out.with_name(out.stem + "_history.png"))
    write_json(out, {"rows": rows, "headline": headline, "inputs": inputs, "device": args.device,
                     "lowest_ms": lowest, "median_uniform_ms": median, "config": config.to_dict(),
                     "history_target_ms": pair_target,
                     "provenance": {"code_version": code_version(), "machine": machine_fingerprint(),
                                    "timestamp": utc_now()}})
    print(f"wrote {out}, {figure} and {history_fig}")
    return 0 if headline and headline["ratio_uniform_over_evolved"] >= 10 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:  # e.g. an infeasible target: the message names the lowest achievable latency
        sys.exit(f"error: {err}")
