"""Is the calibrated LUT as good on searched networks as on its held-out subnets? (issue 14)

The calibration's held-out subnets fill 0.5-2x MobileNetV2 with per-gene tilts toward cheap
choices (``nas_core.latency.subnet_sampling``); a search returns the most accurate network under
its target, another kind of subnet (wide where accuracy pays, cheap elsewhere). From a finished
pipeline (``scan-edge reproduce``), for one device:

1. the search stage's own evolution (its predictor, LUT and calibration) at each of
   ``--multiples`` x the device's MobileNetV2, without measuring: one "frontier" subnet each;
2. those subnets timed end to end exactly as the calibration timed its own (``measure_subnets``:
   paired with the device's yardstick, ``--passes`` passes in their own orders, median), shuffled
   together with the calibration's held-out subnets, timed again: this host's speed moves between
   sessions in ways the pairing does not fully cancel for big networks, so the searched subnets are
   compared with held-out subnets of the *same* session (``session``: how far the re-timed held-out
   subnets moved from the calibration's own timings);
3. the fitted model scored on the searched subnets and on the held-out subnets, both as the
   calibration measured them and as re-timed here: mean signed error (estimate / measured - 1),
   MAPE, max, share within ±5 %; ``frontier_vs_heldout_same_session_pct``: the searched subnets'
   mean signed error minus the re-timed held-out subnets' (what is the searches' own, not the session's);
4. two folds: the calibration refitted (same candidate models, same choice rule) with half of the
   frontier subnets added to its calibration set, scored on the other half and on the held-out
   subnets: does calibrating on search-like subnets remove what the band leaves?

The fit scored is the one the searches read (``calibration.current_fit``: the second round's,
``recalibration``, when there is one); its calibration subnets may include some of the searched
subnets found here, so ``frontier_not_calibrated`` scores only the others.

Everything it writes goes under ``--work``; the pipeline's ``data/`` is only read.

    python benchmarks/frontier_fidelity.py --root data --device openvino_cpu_fp32 \\
        --out benchmarks/results/frontier_fidelity_openvino_cpu_fp32.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas_core.block_catalog import BlockCatalog  # noqa: E402
from nas_core.io import code_version, machine_fingerprint, read_parquet, utc_now, write_json  # noqa: E402
from nas_core.latency.calibration import (CalibrationSettings, ExtraPasses, SubnetChoice,  # noqa: E402
                                          calibration_frame, current_fit, fit_calibration, fitted_model, read_fit,
                                          subnet_genomes, time_in_passes)
from nas_core.latency.latency_model import error_metrics  # noqa: E402
from nas_core.latency.lut import LookupTable  # noqa: E402
from nas_core.latency.timing import TimingConfig  # noqa: E402
from nas_core.layout import Layout  # noqa: E402
from nas_core.params import load_params, section  # noqa: E402
from nas_core.search_run import run_search  # noqa: E402
from tasks.stages import SearchRun, device_access, device_profile, search_setup, target_latencies  # noqa: E402

FIGURES = ("n", "mean_signed_pct", "mape_pct", "max_ape_pct", "within_5_pct", "spearman")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="data root of a finished pipeline")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--device", default="openvino_cpu_fp32")
    parser.add_argument("--multiples", type=float, nargs="+",
                        default=[0.6, 0.7, 0.75, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8],
                        help="search targets, x the device's MobileNetV2")
    parser.add_argument("--passes", type=int, default=3, help="timing passes per subnet (the calibration's)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/frontier_fidelity.json"))
    return parser.parse_args(argv)


def frontier_subnets(params, device: str, layout: Layout, multiples, work: Path) -> tuple:
    """One searched architecture per target (distinct ones only), as the search stage finds it."""
    setup = search_setup(params, [device], predictor=layout.predictor, lut_dir=layout.lut_dir, out_dir=work)
    archs = {}
    for multiple in multiples:
        targets = target_latencies(SearchRun((device,), f"{multiple}x", None), layout)
        record, _ = run_search(setup, targets, measure=False, force=True, say=lambda _: None)
        arch = setup.space.from_dict(record["arch"])
        archs.setdefault(arch.arch_id, arch)
        estimated = record["latency_ms"][device]
        print(f"{multiple:.2f}x ({targets[device]:.3f} ms): {arch.arch_id} estimated {estimated:.3f} ms", flush=True)
    return setup.space, list(archs.values())


def calibration_in_use(layout: Layout, device: str):
    """The ``LutPaths`` of the calibration round the searches read (``current_fit``: the second
    round's when it refits the first as it is)."""
    paths = layout.lut_paths(device)
    return paths.second_round() if current_fit(paths) == paths.second_round().fit else paths


def time_like_the_calibration(params, device: str, layout: Layout, space, archs, passes: int, work: Path) -> tuple:
    """The searched subnets and the calibration's held-out ones as validation choices (searched
    first), and their rows (median of the passes) from ``time_in_passes``: the calibration's
    machinery and settings, one shuffled session for both. Everything it writes goes to ``work``
    (so no OpenVINO compile cache: that lives in the pipeline's work folder)."""
    profile = device_profile(params, device)
    paths = calibration_in_use(layout, device)
    lut = LookupTable.read(paths.lut)
    settings = section(params, "calibration")
    config = TimingConfig.from_dict(settings.get("timing") or lut.provenance.get("timing"))
    heldout = read_parquet(paths.calibration).query("role == 'validation'")
    searched_ids = {arch.arch_id for arch in archs}
    choices = [SubnetChoice(arch, "validation") for arch in archs]
    choices += [SubnetChoice(space.from_json(text), "validation")
                for text, arch_id in zip(heldout["arch"], heldout["arch_id"]) if arch_id not in searched_ids]
    access = device_access(params, device, layout.root)  # as the calibration stage: against MobileNetV2
    extra = ExtraPasses.of(CalibrationSettings.from_dict(settings))
    rows = time_in_passes(choices, profile, paths, lut, access, space=space, passes=passes, seed=0, config=config,
                          resume=False, progress=False, compile_once=False, extra=extra,
                          out_of_pass=lambda index: work / f"frontier.pass{index}.parquet")
    return choices, rows


def scores(estimated: np.ndarray, measured: np.ndarray) -> dict:
    figures = error_metrics(estimated, measured)
    figures["mean_signed_pct"] = float(100 * np.mean(estimated / measured - 1))
    return {k: figures.get(k) for k in FIGURES}


def refit_with_frontier(base, frontier, catalog, block_ms, models) -> dict:
    """Two folds: half of the frontier subnets join the calibration set, the other half is scored."""
    halves = [frontier.iloc[0::2], frontier.iloc[1::2]]
    folds = []
    for added, scored in (halves, halves[::-1]):
        frame = pd.concat([base, added.assign(role="calibration")], ignore_index=True)
        fit = fit_calibration(frame, catalog, block_ms, models)
        predict = lambda rows: fit.selection.model.predict(catalog, block_ms, subnet_genomes(rows, catalog))  # noqa: E731
        held = base[base["role"] == "validation"]
        folds.append({"model": fit.selection.model.name,
                      "frontier": scores(predict(scored), scored["median_ms"].to_numpy(float)),
                      "heldout": scores(predict(held), held["median_ms"].to_numpy(float))})
    return {"folds": folds}


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    params = load_params(args.params, args.profile)
    layout = Layout(args.root)
    with tempfile.TemporaryDirectory(prefix="frontier-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        space, archs = frontier_subnets(params, args.device, layout, args.multiples, work / "search")
        choices, rows = time_like_the_calibration(params, args.device, layout, space, archs, args.passes, work)
        paths = calibration_in_use(layout, args.device)
        lut = LookupTable.read(paths.lut)
        catalog = BlockCatalog(space, device_profile(params, args.device).resolution)
        block_ms = np.nan_to_num(lut.block_ms(catalog), nan=0.0)
        session = calibration_frame(choices, rows, lut.block_ms(catalog), catalog, args.device)
        fit = read_fit(paths.fit)
        model = fitted_model(fit)
        session["calibrated_ms"] = model.predict(catalog, block_ms, subnet_genomes(session, catalog))
        frontier, retimed = session.iloc[:len(archs)].reset_index(drop=True), session.iloc[len(archs):]
        base = read_parquet(paths.calibration)
        held = base[base["role"] == "validation"]
        frontier_scores = scores(frontier["calibrated_ms"].to_numpy(float), frontier["median_ms"].to_numpy(float))
        fitted_on = set(base.loc[base["role"] == "calibration", "arch_id"])
        unseen = frontier[~frontier["arch_id"].isin(fitted_on)]
        retimed_scores = scores(retimed["calibrated_ms"].to_numpy(float), retimed["median_ms"].to_numpy(float))
        then = held.set_index("arch_id")["median_ms"].reindex(retimed["arch_id"]).to_numpy(float)
        moved = float(100 * np.median(retimed["median_ms"].to_numpy(float) / then - 1))
        result = {
            "device": args.device, "root": str(args.root), "multiples": args.multiples, "passes": args.passes,
            "model": model.name, "calibration_round": fit.get("round", 1), "fit": str(paths.fit),
            "frontier": frontier_scores,
            "frontier_not_calibrated": scores(unseen["calibrated_ms"].to_numpy(float),
                                              unseen["median_ms"].to_numpy(float)) if len(unseen) else None,
            "heldout": scores(held["calibrated_ms"].to_numpy(float), held["median_ms"].to_numpy(float)),
            "heldout_same_session": retimed_scores,
            "session": {"n": int(len(retimed)), "heldout_moved_median_pct": moved},
            "frontier_vs_heldout_same_session_pct": frontier_scores["mean_signed_pct"]
            - retimed_scores["mean_signed_pct"],
            "refit_with_frontier": refit_with_frontier(base, frontier, catalog, block_ms,
                                                       fit.get("models") or section(params, "calibration")["models"]),
            "subnets": [{"arch_id": r.arch_id, "measured_ms": r.median_ms, "estimated_ms": r.calibrated_ms,
                         "error_pct": 100 * (r.calibrated_ms / r.median_ms - 1), "pass_spread_pct": r.pass_spread_pct}
                        for r in frontier.itertuples()],
            "seconds": round(time.time() - started, 1), "created": utc_now(), "code_version": code_version(),
            "machine": machine_fingerprint(),
        }
    write_json(args.out, result)
    print(f"frontier ({len(frontier)} searched subnets): {result['frontier']}")
    print(f"  of which not among the fit's calibration subnets: {result['frontier_not_calibrated']}")
    print(f"held-out ({len(held)} band subnets):      {result['heldout']}")
    print(f"held-out, re-timed with them:     {result['heldout_same_session']}; moved "
          f"{result['session']['heldout_moved_median_pct']:+.2f} % (median) since the calibration")
    print(f"searched minus held-out, same session: {result['frontier_vs_heldout_same_session_pct']:+.2f} % mean signed")
    for index, fold in enumerate(result["refit_with_frontier"]["folds"]):
        print(f"refit, fold {index} ({fold['model']}): frontier {fold['frontier']}; held-out {fold['heldout']}")
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
