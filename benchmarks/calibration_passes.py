"""How much do calibration passes buy? Refit a device's calibrated LUT on every subset of the
passes its calibration stage timed, and score each on the held-out subnets.

    python benchmarks/calibration_passes.py --root data          every device with passes on disk

Reads ``data/lut/<device>.calibration.parquet`` (the subnets and their roles), the LUT and the
raw tables of each pass (``_work/<device>/subnet_timings[.passN].parquet``, written when
``calibration.passes`` > 1), and for each non-empty subset of the passes combines them as the
stage does (median of the passes), chooses the model by leave-one-out among the params' candidates
and reports the held-out MAPE, max error, Spearman and share within ±5 % against the bar
(``calibration.targets_met``). Writes ``benchmarks/results/calibration_passes.json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from nas_core.block_catalog import BlockCatalog  # noqa: E402
from nas_core.io import read_parquet  # noqa: E402
from nas_core.latency import calibration, timing  # noqa: E402
from nas_core.latency.lut import LookupTable, LutPaths  # noqa: E402
from nas_core.params import load_params  # noqa: E402
from nas_core.search_space import SearchSpace  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "calibration_passes.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT / "data", help="a finished pipeline's data/")
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def device_passes(paths: LutPaths) -> list[list[dict]]:
    """The raw rows of each pass on disk, in pass order."""
    passes, index = [], 0
    while paths.subnet_timings_pass(index).is_file():
        passes.append(timing.read_rows(paths.subnet_timings_pass(index))[0])
        index += 1
    return passes


def score_subsets(device: str, root: Path, models) -> list[dict]:
    space = SearchSpace()
    paths = LutPaths.for_device(device, root / "lut")
    table = read_parquet(paths.calibration)
    lut = LookupTable.read(paths.lut)
    catalog = BlockCatalog(space, int(table["resolution"].iloc[0]))
    block_ms = np.nan_to_num(lut.block_ms(catalog), nan=0.0)
    choices = [calibration.SubnetChoice(space.from_json(arch), role) for arch, role in zip(table["arch"], table["role"])]
    passes = device_passes(paths)
    results = []
    for size in range(1, len(passes) + 1):
        for subset in itertools.combinations(range(len(passes)), size):
            rows = calibration.combine_passes([passes[i] for i in subset])
            frame = calibration.calibration_frame(choices, rows, block_ms, catalog, device)
            fit = calibration.fit_calibration(frame, catalog, block_ms, models)
            heldout = fit.metrics["validation"]["calibrated"]
            results.append({"device": device, "passes": list(subset), "model": fit.model.to_dict()["name"],
                            "heldout": heldout, "met": calibration.targets_met(fit.metrics)["met"]})
            print(f"{device:18s} passes {','.join(str(i + 1) for i in subset):6s} {results[-1]['model']:17s} "
                  f"MAPE {heldout['mape_pct']:5.2f} %  max {heldout['max_ape_pct']:5.2f} %  "
                  f"Spearman {heldout['spearman']:.3f}  within ±5 % {heldout['within_5_pct']:.0%}  "
                  f"{'met' if results[-1]['met'] else 'not met'}")
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    models = calibration.CalibrationSettings.from_dict(load_params(args.params).get("calibration") or {}).models
    devices = sorted(p.name.removesuffix(".calibration.parquet") for p in (args.root / "lut").glob("*.calibration.parquet"))
    if not devices:
        sys.exit(f"no calibration tables under {args.root / 'lut'}: run the calibration stage first")
    results = [row for device in devices for row in score_subsets(device, args.root, models)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"root": str(args.root), "results": results}, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
