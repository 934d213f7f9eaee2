"""``scan-edge search`` and ``scan-edge search-sweep``: the hardware-aware search stage (§5.4).

    scan-edge search --device ort_cpu_fp32 --latency-ms 7.6                    # one device
    scan-edge search --device ort_cpu_fp32 --latency-ms 7.6 --params-m 5       # + params (Table 4)
    scan-edge search --device ort_cpu_fp32 --latency-ms 7.6 \\
                     --device openvino_cpu_fp32 --latency-ms 7                 # one arch, both targets
    scan-edge search ... --measure        # then meet the target on the device itself
    scan-edge search-sweep --device ort_cpu_fp32 --measure   # targets x MobileNetV2 latency (Fig. 5)

Inputs (defaults under data/, where the pipeline's stages put them: ``nas_core.layout``): the
accuracy predictor ``data/predictor/predictor.pt`` and, per device, the latency LUT
``data/lut/<device>.parquet`` with its calibration (``data/lut/<device>.recalibration.json``, the
second round, when it refits the current ``data/lut/<device>.fit.json``; else that one); the sweep also
reads MobileNetV2's measured latency from the device's baselines table
``data/baselines/<device>.parquet`` (beside the LUT folder). Outputs: ``data/search/`` (schemas in
``nas_core/search_report.py``). A search whose outputs exist and were made from the same
inputs is not run again (``--force`` runs it anyway); device measurements are cached.

The work is ``nas_core.search_run``, set up from params as the search stage sets it up
(``tasks.stages.search_setup``); the flags only override params and name the files.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from nas_core.layout import DATA, Layout

# The CLI boundary: each command imports the libraries it runs inside its function, so that
# `scan-edge --help` and the other commands do not load torch.

DEFAULT_PREDICTOR = DATA.predictor
DEFAULT_LUT_DIR = DATA.lut_dir
DEFAULT_OUT_DIR = DATA.search_root


# --------------------------------------------------------------------------- flags -> params and paths
def _setup(args, devices: list[str]):
    """The search set-up for ``devices``: the params file with the flags' overrides, the
    predictor, LUTs and output folder the flags name."""
    from nas_core.params import load_params
    from tasks.stages import search_setup

    params = _with_overrides(load_params(args.params, args.profile), args)
    return search_setup(params, devices, predictor=args.predictor, lut_dir=args.lut_dir, out_dir=args.out_dir)


def _with_overrides(params: Mapping[str, Any], args) -> dict:
    """``search.evolution`` (and the sweep's ``search.targets_vs_mobilenetv2``) as the flags set them."""
    evolution = {"generations": args.generations, "population_size": args.population, "seed": args.seed,
                 "evolve_space": False if args.no_evolve_space else None}
    search = dict(params.get("search") or {})
    search["evolution"] = {**(search.get("evolution") or {}), **{k: v for k, v in evolution.items() if v is not None}}
    if getattr(args, "multiples", None):
        search["targets_vs_mobilenetv2"] = list(args.multiples)
    return {**params, "search": search}


def _pairs(devices: list[str], latencies: list[float]) -> dict[str, float]:
    if len(devices) != len(latencies):
        raise ValueError(f"give one --latency-ms per --device (got {len(devices)} devices and "
                         f"{len(latencies)} latency targets)")
    if len(set(devices)) != len(devices):
        raise ValueError(f"each --device may appear once; got {devices}")
    return dict(zip(devices, latencies))


def _millions(value: float | None) -> float | None:
    return None if value is None else float(value) * 1e6


# --------------------------------------------------------------------------- commands
def cmd_search(args) -> int:
    from nas_core.latency.location import MeasurementsPending, import_results
    from nas_core.params import load_params
    from nas_core.search_run import run_search
    from tasks import stage_lock
    from tasks.stages import device_access

    targets = _pairs(args.device, args.latency_ms)
    root = Path(args.lut_dir).parent
    params = _with_overrides(load_params(args.params, args.profile), args)
    if args.import_measurements:
        for device in targets:
            folder = import_results(args.import_measurements, Layout(root).bundles, device, "search-")
            print(f"{device}: imported {args.import_measurements} into {folder}")
    accesses = {d: device_access(params, d, root) for d in targets} if args.measure else None
    try:
        _, ok = run_search(_setup(args, list(targets)), targets, _millions(args.params_m), _millions(args.macs_m),
                           measure=args.measure, force=args.force, lock=stage_lock, accesses=accesses)
    except MeasurementsPending as pending:
        print(f"{pending}\nThen: scan-edge search ... --measure --import-measurements {pending.job_dir}/results.parquet")
        return 3
    return 0 if ok else 1


def cmd_search_sweep(args) -> int:
    """One search per target and device; the front per device as Parquet + PNG (Fig. 5)."""
    from nas_core.search_run import run_sweep
    from tasks import stage_lock

    setup = _setup(args, list(args.device))
    all_ok = True
    for device in args.device:
        baselines = args.baselines or Layout(Path(args.lut_dir).parent).baselines(device)  # the LUT's data root
        front, path, ok = run_sweep(setup, device, args.latency_ms, baselines=baselines,
                                    max_params=_millions(args.params_m), measure=args.measure, force=args.force,
                                    lock=stage_lock)
        all_ok &= ok
        print(front.to_string(index=False))
        print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0 if all_ok else 1


# --------------------------------------------------------------------------- registration
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params-m", type=float, help="parameter-count bound in millions (Table 4's _@5M)")
    p.add_argument("--measure", action="store_true",
                   help="measure the best candidates on the device and return one within [-3%%, 0] of the target")
    p.add_argument("--params", default="params.yaml", help="params file (section search:)")
    p.add_argument("--profile", help="params profile (default: the file's)")
    p.add_argument("--predictor", default=str(DEFAULT_PREDICTOR),
                   help=f"accuracy predictor (default {DEFAULT_PREDICTOR})")
    p.add_argument("--lut-dir", default=str(DEFAULT_LUT_DIR), help=f"LUTs and calibrations (default {DEFAULT_LUT_DIR})")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help=f"outputs (default {DEFAULT_OUT_DIR})")
    p.add_argument("--generations", type=int, help="override search.evolution.generations")
    p.add_argument("--population", type=int, help="override search.evolution.population_size")
    p.add_argument("--seed", type=int, help="override search.evolution.seed")
    p.add_argument("--no-evolve-space", action="store_true",
                   help="keep the sampling space uniform (the paper's ablation, Fig. 4)")
    p.add_argument("--force", action="store_true", help="search again even if the outputs are up to date")


def register(sub) -> None:
    p = sub.add_parser("search", help="hardware-aware evolutionary search for latency (and params) targets",
                       description="Evolutionary search with search-space evolution (paper §5.4): the most "
                                   "accurate subnet (predicted) within latency targets on one or more devices.")
    p.add_argument("--device", action="append", required=True, help="device profile; repeat with --latency-ms")
    p.add_argument("--latency-ms", action="append", type=float, required=True,
                   help="latency target of the preceding --device (ms)")
    p.add_argument("--macs-m", type=float, help="MAC-count bound in millions (optional)")
    p.add_argument("--import-measurements", metavar="RESULTS",
                   help="a board's results.parquet for the candidates bundle an earlier --measure wrote (devices "
                        "with location: bundle); it completes that search")
    _add_common(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("search-sweep", help="searches over latency targets; the accuracy-latency front (Fig. 5)",
                       description="One search per target for each device; writes data/search/front_<device>.parquet "
                                   "and .png. Targets are multiples of MobileNetV2's measured latency (params.yaml "
                                   "search.targets_vs_mobilenetv2, default 0.75 1 1.5) or explicit --latency-ms.")
    p.add_argument("--device", action="append", required=True, help="device profile (repeat for several)")
    p.add_argument("--multiples", type=float, nargs="+", help="targets as multiples of MobileNetV2's latency")
    p.add_argument("--latency-ms", type=float, nargs="+", help="explicit targets (ms) instead of multiples")
    p.add_argument("--baselines", help="measured baseline latencies (default: the device's table, "
                                       "<lut dir>/../baselines/<device>.parquet)")
    _add_common(p)
    p.set_defaults(func=cmd_search_sweep)
