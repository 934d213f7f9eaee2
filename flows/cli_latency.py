"""``scan-edge devices | lut | profile | latency``: device latency tables on the command line.

    scan-edge devices                                    profiles, usable here or why not, LUT status
    scan-edge lut build --device D [--resume]            time every block (data/lut/D.parquet)
    scan-edge lut calibrate --device D [--n-calibration 10 --n-validation 30]
    scan-edge profile bundle --device D --out DIR        blocks + subnets as ONNX for a remote device
    scan-edge profile import --device D --bundle DIR     its results -> LUT + calibration
    scan-edge latency ARCH --device D [--measure]        estimate (and measure) one architecture

Device profiles are the built-in ones overlaid with params.yaml's ``devices:``; the
``lut:`` and ``calibration:`` sections give defaults for the options below. ``lut build``
and ``lut calibrate`` do the work of the LUT and calibration stages
(``tasks.stages.run_lut`` / ``run_calibration``) on the profile and files the flags name.
Measuring commands hold the machine's CPU lock exclusively (``tasks.stage_lock``), so no
other pipeline work runs beside them; other users of the machine still disturb timings,
which the drift checks and the fit file's ``quiet_machine`` record.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from flows.cli import EPILOG, arch_argument
from nas_core.layout import DATA, Layout

# The CLI boundary: each command imports the libraries it runs inside its function, so that
# `scan-edge --help` and the other commands do not load torch.

DEFAULT_ROOT = str(DATA.lut_dir)
DEFAULT_EXPORTS = str(DATA.lut_exports)  # one ONNX cache for every --root: exports cost minutes


# --------------------------------------------------------------------------- shared helpers
def _params_if_present(args) -> dict:
    """params.yaml when present (an explicit --params must exist), else no overrides."""
    from nas_core.params import load_params

    path = Path(args.params)
    if not path.exists() and args.params == "params.yaml":
        return {}
    return load_params(path)


def _profile(args):
    """The device profile named by --device, with --resolution applied."""
    from nas_core.latency.devices import get_profile, load_profiles

    profile = get_profile(args.device, load_profiles(_params_if_present(args).get("devices")))
    if getattr(args, "resolution", None):
        profile = dataclasses.replace(profile, resolution=args.resolution)
    if getattr(args, "clock", None):
        profile = dataclasses.replace(profile, options={**profile.options, "clock": args.clock})
    return profile


def _with_flags(args, name: str, **flags) -> dict:
    """The params with the flags that were given overriding keys of section ``name``."""
    params = _params_if_present(args)
    given = {key: value for key, value in flags.items() if value is not None}
    return {**params, name: {**(params.get(name) or {}), **given}}


def _calibration_flags(args) -> dict:
    return {"n_calibration": args.n_calibration, "n_validation": args.n_validation, "seed": args.seed}


def _require_usable(profile) -> None:
    """Measuring needs the profile's runtime here: say why not, without a traceback."""
    from nas_core.latency.devices import check_usable

    usability = check_usable(profile)
    if not usability.usable:
        raise SystemExit(f"error: device {profile.name!r} cannot be measured here: {usability.reason}")


def _run_identity(params: dict, section: str, profile) -> str:
    """The run identity of ``lut build`` / ``lut calibrate``: the stage's code, its params
    section as the flags left it, the profile and the runtime it runs on."""
    from nas_core.latency.devices import check_usable
    from tasks.run_identity import run_identity
    from tasks.stages import STAGES

    return run_identity(STAGES[section].code_digest(), {section: params.get(section), "profile": profile.to_settings(),
                                                        "runtime": check_usable(profile).runtime_version})


def _stamp(what: str) -> str:
    """The run record's name in the work folder (``run-lut-build.json``)."""
    return "run-" + what.lower().replace(" ", "-")


def _resume(flag: bool | None, work: Path, raw: Path, output: Path, what: str, identity: str) -> bool:
    """--resume / --no-resume as given; without either, continue an unfinished run of the same
    run identity, and refuse to discard an unfinished run of another one.

    Each run is recorded in ``work`` when it starts and when it finishes
    (``tasks.run_identity.start_run``); raw timings without a record (an older checkout, a
    run of the stage) count as unfinished when there is no output.
    """
    from tasks.run_identity import read_stamp, start_run, unfinished_run

    if flag is None:
        unfinished = unfinished_run(work, _stamp(what))
        if unfinished is None and read_stamp(work, _stamp(what)) is None and raw.exists() and not output.exists():
            unfinished = "unknown"
        if unfinished is not None and unfinished != identity:
            raise SystemExit(f"error: {raw} holds the timings of an unfinished {what} of other settings; pass "
                             "--resume to continue it or --no-resume to start over")
        flag = unfinished == identity
        if flag:
            print(f"continuing the unfinished {what} of the same settings in {raw}", flush=True)
    start_run(work, _stamp(what), identity)
    return flag


def _add_common(parser, device_required: bool = True) -> None:
    parser.add_argument("--device", required=device_required, help="device profile name (see scan-edge devices)")
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"folder of the LUT files (default {DEFAULT_ROOT})")
    parser.add_argument("--resolution", type=int, help="override the profile's input resolution")
    parser.add_argument("--clock", choices=("wall", "cpu"),
                        help="override the profile's clock: wall (default, the paper's latency) or cpu (process "
                             "CPU time: single-thread CPU profiles on a machine others use)")
    parser.add_argument("--exports", default=DEFAULT_EXPORTS, help=f"ONNX export cache (default {DEFAULT_EXPORTS})")
    parser.add_argument("--params", default="params.yaml", help="params file (devices, lut, calibration sections)")


def _paths(args, profile):
    from nas_core.latency.lut import LutPaths

    return LutPaths.for_device(profile.name, args.root, args.exports)


# --------------------------------------------------------------------------- devices
def cmd_devices(args) -> int:
    from nas_core.latency.devices import check_usable, load_profiles

    profiles = load_profiles(_params_if_present(args).get("devices"))
    rows = []
    for name, profile in sorted(profiles.items()):
        usability = check_usable(profile)
        rows.append({"device": name, "backend": profile.backend, "provider": profile.provider,
                     "precision": profile.precision, "threads": profile.threads, "resolution": profile.resolution,
                     "usable": usability.usable, "runtime_version": usability.runtime_version,
                     "why_not": "" if usability.usable else usability.reason, **_lut_status(args.root, name)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'device':<18} {'backend':<12} {'provider':<22} {'prec':<8} {'thr':>3} {'res':>4}  {'usable':<6} "
          f"{'runtime':<10} {'LUT':<9} calibrated MAPE")
    for r in rows:
        mape = f"{r['mape_pct']:.2f} %" if r["mape_pct"] is not None else "-"
        print(f"{r['device']:<18} {r['backend']:<12} {r['provider']:<22} {r['precision']:<8} {r['threads']:>3} "
              f"{r['resolution']:>4}  {'yes' if r['usable'] else 'no':<6} {(r['runtime_version'] or '-')[:10]:<10} "
              f"{r['lut']:<9} {mape}")
    for r in rows:
        if not r["usable"]:
            print(f"  {r['device']}: {r['why_not']}")
    return 0


def _lut_status(root: str, device: str) -> dict:
    """Blocks in the device's LUT and the calibrated validation MAPE, when the files exist."""
    from nas_core.io import read_provenance
    from nas_core.latency.lut import LutPaths

    paths = LutPaths.for_device(device, root)
    lut, mape = "-", None
    if paths.lut.exists():
        provenance = read_provenance(paths.lut)
        lut = f"{provenance.get('measured_blocks')}/{provenance.get('catalog_blocks')}"
    if paths.fit.exists():
        try:
            mape = json.loads(paths.fit.read_text())["metrics"]["validation"]["calibrated"]["mape_pct"]
        except (KeyError, ValueError):
            mape = None
    return {"lut": lut, "mape_pct": mape}


# --------------------------------------------------------------------------- lut build / calibrate
def cmd_lut_build(args) -> int:
    import time

    from tasks.run_identity import finish_run
    from tasks.stages import run_lut

    profile = _profile(args)
    paths = _paths(args, profile)
    _require_usable(profile)
    params = _with_flags(args, "lut", blocks=args.blocks, limit=args.limit)
    identity = _run_identity(params, "lut", profile)
    resume = _resume(args.resume, paths.work, paths.block_timings, paths.lut, "LUT build", identity)
    started = time.monotonic()
    frame = run_lut(params, profile, paths, resume=resume, progress=not args.quiet)
    finish_run(paths.work, _stamp("LUT build"), identity)
    provenance = frame.attrs["provenance"]
    flagged = int(frame["drift_flag"].sum())
    print(f"wrote {paths.lut}: {provenance['measured_blocks']}/{provenance['catalog_blocks']} blocks, "
          f"{frame['median_ms'].sum():.2f} ms summed, {flagged} drift-flagged, {time.monotonic() - started:.0f} s")
    return 0


def cmd_lut_calibrate(args) -> int:
    from nas_core.search_run import reference_latency_ms
    from tasks.run_identity import finish_run
    from tasks.stages import device_access, run_calibration

    profile = _profile(args)
    paths = _paths(args, profile)
    _require_usable(profile)
    params = _with_flags(args, "calibration", **_calibration_flags(args), sampling=args.sampling,
                         frontier=args.frontier)
    identity = _run_identity(params, "calibration", profile)
    resume = _resume(args.resume, paths.work, paths.subnet_timings, paths.fit, "calibration", identity)
    reference_ms = args.reference_ms
    if reference_ms is None and (params.get("calibration") or {}).get("sampling") == "band":
        baselines = args.baselines or Layout(paths.root.parent).baselines(profile.name)  # the LUT's data root
        reference_ms = reference_latency_ms(Path(baselines), profile.name)
    # The pipeline's access: where the device is, and (paired profiles) every subnet timed against
    # the device's MobileNetV2, as the calibration stage times it. The LUT's data root holds both.
    access = device_access(params, profile.name, paths.root.parent)
    report = run_calibration(params, profile, paths, resume=resume, progress=not args.quiet,
                             runtime_version=args.runtime_version, reference_ms=reference_ms, access=access)
    finish_run(paths.work, _stamp("calibration"), identity)
    print(report.summary())
    print(f"wrote {paths.calibration}, {paths.fit}, {paths.figure}")
    return 0


# --------------------------------------------------------------------------- profile bundle / import
def cmd_profile_bundle(args) -> int:
    from nas_core.latency.profiling_bundle import make_profiling_bundle

    profile = _profile(args)
    calibration = _with_flags(args, "calibration", **_calibration_flags(args))["calibration"]
    bundle = make_profiling_bundle(
        profile, args.out, _paths(args, profile), block_filter=args.blocks, limit=args.limit,
        n_calibration=calibration.get("n_calibration", 10), n_validation=calibration.get("n_validation", 30),
        seed=calibration.get("seed", 0), progress=not args.quiet)
    manifest = json.loads((bundle / "manifest.json").read_text())
    print(f"wrote {bundle}: {len(manifest['models'])} models for {profile.name}. On the device:\n"
          f"    python run_bundle.py . --out lut.parquet\n"
          f"then copy lut.parquet back into {bundle} and run:\n"
          f"    scan-edge profile import --device {profile.name} --bundle {bundle}")
    return 0


def cmd_profile_import(args) -> int:
    from nas_core.latency.profiling_bundle import import_profiling_results

    profile = _profile(args)
    paths = _paths(args, profile)
    report = import_profiling_results(profile, args.bundle, args.results, paths)
    print(f"wrote {paths.lut}")
    if report is not None:
        print(report.summary())
        print(f"wrote {paths.calibration}, {paths.fit}, {paths.figure}")
    return 0


# --------------------------------------------------------------------------- latency ARCH
def cmd_latency(args) -> int:
    from nas_core.efficiency_predictor import LatencyEstimator
    from nas_core.latency.calibration import current_fit
    from nas_core.search_space import ArchError

    profile = _profile(args)
    paths = _paths(args, profile)
    arch = arch_argument(args.arch)
    fit = None if args.raw else current_fit(paths)  # the fit the searches read (its second round when current)
    estimator = LatencyEstimator.from_files(paths.lut, fit, profile, runtime_version=args.runtime_version)
    try:
        genome = estimator.space.encode(arch)[None]
    except ArchError as err:
        raise SystemExit(f"error: {arch.arch_id} is not in the space of {paths.lut} "
                         f"({estimator.space.spec.label}): {err}; an ESHA architecture needs a LUT built "
                         "with search_space.attention: [mhsa, esha]") from None
    result = {"arch_id": arch.arch_id, "device": profile.name, "resolution": profile.resolution,
              "estimated_ms": float(estimator.predict_genomes(genome)[0]),
              "lut_sum_ms": float(estimator.raw_sum_ms(genome)[0]),
              "min_latency_ms": estimator.min_latency_ms(), "params": int(estimator.count_params(genome)[0]),
              "macs": int(estimator.count_macs(genome)[0])}
    if args.measure:
        result.update(_measure(arch, profile, paths))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    kind = "raw LUT sum" if args.raw else "calibrated"
    print(f"{arch.arch_id} on {profile.name} @ {profile.resolution}: {result['estimated_ms']:.2f} ms ({kind}; "
          f"LUT sum {result['lut_sum_ms']:.2f} ms; fastest in the space {result['min_latency_ms']:.2f} ms)")
    if args.measure:
        error = (result["estimated_ms"] / result["measured_ms"] - 1) * 100
        print(f"measured: {result['measured_ms']:.2f} ms (p10 {result['measured_p10_ms']:.2f}, "
              f"p90 {result['measured_p90_ms']:.2f}); estimate off by {error:+.1f} %")
    return 0


def _measure(arch, profile, paths) -> dict:
    """Time the architecture end to end as the calibration did: the LUT's timing
    configuration, the profile's clock."""
    from nas_core.latency.calibration import measure_arch
    from nas_core.latency.lut import LookupTable
    from nas_core.latency.timing import TimingConfig
    from tasks import stage_lock

    _require_usable(profile)
    config = TimingConfig.from_dict(LookupTable.read(paths.lut).provenance.get("timing"))
    with stage_lock("exclusive"):
        timed = measure_arch(arch, profile, config)
    return {"measured_ms": timed.median_ms, "measured_p10_ms": timed.p10_ms, "measured_p90_ms": timed.p90_ms}


# --------------------------------------------------------------------------- registration
def register(sub) -> None:
    p = sub.add_parser("devices", help="device profiles: usable here or why not, runtime versions, LUT status")
    p.add_argument("--root", default=DEFAULT_ROOT, help=f"folder of the LUT files (default {DEFAULT_ROOT})")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_devices)

    lut = sub.add_parser("lut", help="build and calibrate a device's latency lookup table (§5.3)")
    lut_sub = lut.add_subparsers(dest="lut_cmd", required=True, metavar="{build,calibrate}")
    p = lut_sub.add_parser("build", help="time every block of the search space on a device")
    _add_common(p)
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue an interrupted build (--no-resume: start over)")
    p.add_argument("--blocks", help="only block ids matching this glob, e.g. 's3/mhsa/*'")
    p.add_argument("--limit", type=int, help="only the first N selected blocks (quick partial table)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_lut_build)
    p = lut_sub.add_parser("calibrate", help="measure random subnets and fit measured = a * LUT sum + b")
    _add_common(p)
    _add_subnet_options(p)
    p.add_argument("--sampling", choices=("uniform", "stratified", "band"),
                   help="calibration subnets: uniform genomes (the paper's), spread over the LUT-sum range, or in a "
                        "band around MobileNetV2's latency (params.yaml's default)")
    p.add_argument("--frontier", type=float, metavar="SHARE",
                   help="band sampling: share of the band's subnets taken from quick searches on the raw LUT sum, "
                        "where searches land (0-1; default: params.yaml's calibration.frontier)")
    p.add_argument("--reference-ms", type=float,
                   help="band sampling: MobileNetV2's latency on the device (default: from its baselines table)")
    p.add_argument("--baselines", help="band sampling: the device's baselines table (default "
                                       "<lut dir>/../baselines/<device>.parquet)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue interrupted subnet timings (--no-resume: start over)")
    p.add_argument("--runtime-version", help="runtime version the LUT must have (default: the installed one)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_lut_calibrate)

    profile = sub.add_parser("profile", help="profile a remote edge device with a torch-free bundle")
    profile_sub = profile.add_subparsers(dest="profile_cmd", required=True, metavar="{bundle,import}")
    p = profile_sub.add_parser("bundle", help="write every block and the calibration subnets as ONNX + a runner")
    _add_common(p)
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--blocks", help="only block ids matching this glob")
    p.add_argument("--limit", type=int, help="only the first N selected blocks")
    _add_subnet_options(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_profile_bundle)
    p = profile_sub.add_parser("import", help="read a bundle's results: write the LUT and its calibration")
    _add_common(p)
    p.add_argument("--bundle", required=True, help="the bundle folder (made by scan-edge profile bundle)")
    p.add_argument("--results", help="the runner's output (default BUNDLE/lut.parquet)")
    p.set_defaults(func=cmd_profile_import)

    p = sub.add_parser("latency", help="estimated (and optionally measured) latency of an architecture",
                       epilog=EPILOG)
    p.add_argument("arch", help="preset name or architecture JSON file")
    _add_common(p)
    p.add_argument("--measure", action="store_true", help="also export and time it end to end")
    p.add_argument("--raw", action="store_true", help="the raw LUT sum, without the calibration fit")
    p.add_argument("--runtime-version", help="runtime version the LUT must have (default: the installed one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_latency)


def _add_subnet_options(p) -> None:
    p.add_argument("--n-calibration", type=int, help="subnets the fit uses (paper: 10)")
    p.add_argument("--n-validation", type=int, help="held-out subnets that score it (default 30)")
    p.add_argument("--seed", type=int, help="random seed of the subnet choice (default 0)")
