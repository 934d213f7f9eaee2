"""``scan-edge search`` and ``scan-edge search-sweep``: the hardware-aware search stage (§5.4).

    scan-edge search --device ort_cpu_fp32 --latency-ms 7.6                    # one device
    scan-edge search --device ort_cpu_fp32 --latency-ms 7.6 --params-m 5       # + params (Table 4)
    scan-edge search --device ort_cpu_fp32 --latency-ms 7.6 \\
                     --device openvino_cpu_fp32 --latency-ms 7                 # one arch, both targets
    scan-edge search ... --measure        # then meet the target on the device itself
    scan-edge search-sweep --device ort_cpu_fp32 --measure   # targets x MobileNetV2 latency (Fig. 5)

Inputs (defaults under data/, each with the command that makes it): the accuracy predictor
``data/predictor/predictor.pt`` and, per device, the latency LUT ``data/lut/<device>.parquet``
with its calibration ``data/lut/<device>.fit.json``; the sweep also reads MobileNetV2's measured
latency from ``data/baselines/latency.parquet``. Outputs: ``data/search/`` (schemas in
``nas_core/search_report.py``). A search whose outputs exist and were made from the same
inputs is not run again (``--force`` runs it anyway); device measurements are cached.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

DEFAULT_PREDICTOR = Path("data/predictor/predictor.pt")
DEFAULT_LUT_DIR = Path("data/lut")
DEFAULT_OUT_DIR = Path("data/search")
DEFAULT_BASELINES = Path("data/baselines/latency.parquet")
REFERENCE_MODEL = "mobilenetv2_100"
SECTION_KEYS = {"evolution", "refine", "devices", "targets_vs_mobilenetv2", "num_classes"}
DEFAULT_MULTIPLES = (0.75, 1.0, 1.5)


# --------------------------------------------------------------------------- loading the inputs
class MissingArtifact(FileNotFoundError):
    """An input of the search stage that has not been made yet (the message says how)."""


def load_accuracy_predictor(path: Path):
    """The accuracy predictor bundle (``nas_core.accuracy_predictor``) at ``path``."""
    if not path.exists():
        raise MissingArtifact(f"{path}: no accuracy predictor. Make it with `scan-edge collect-pairs` and then "
                              f"`scan-edge fit-predictor` (they need data/supernet/supernet.pt from "
                              f"`scan-edge train-supernet`)")
    module = _import("nas_core.accuracy_predictor", "the accuracy predictor")
    return module.PredictorBundle.load(path)


def load_latency_estimator(device: str, lut_dir: Path, profile):
    """The calibrated LUT estimator of ``device`` (``nas_core.efficiency_predictor``)."""
    lut, fit = lut_dir / f"{device}.parquet", lut_dir / f"{device}.fit.json"
    if not lut.exists():
        raise MissingArtifact(f"{lut}: no latency lookup table for device {device!r}. Make it with "
                              f"`scan-edge lut build --device {device}`")
    if not fit.exists():
        raise MissingArtifact(f"{fit}: the LUT of {device!r} is not calibrated. Make it with "
                              f"`scan-edge lut calibrate --device {device}`")
    module = _import("nas_core.efficiency_predictor", "the latency estimator")
    return module.LatencyEstimator.from_files(lut, fit, profile)


def reference_latency_ms(path: Path, device: str, model: str = REFERENCE_MODEL) -> float:
    """MobileNetV2's measured latency on ``device`` (the paper's target), from the baselines table."""
    from nas_core.io import read_parquet

    hint = f"`python benchmarks/baseline_latency.py --devices {device} --models {model}`"
    if not path.exists():
        raise MissingArtifact(f"{path}: no baseline latencies, needed for targets relative to {model}. "
                              f"Make it with {hint}, or give --latency-ms")
    frame = read_parquet(path)
    rows = frame[(frame["model"] == model) & (frame["device"] == device)]
    if "error" in rows:
        rows = rows[rows["error"].fillna("") == ""]
    if rows.empty or rows["median_ms"].isna().all():
        raise MissingArtifact(f"{path}: no measured {model} latency on {device!r}. Make it with {hint}")
    return float(rows["median_ms"].dropna().iloc[-1])


def _import(name: str, what: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise MissingArtifact(f"{name.replace('.', '/')}.py ({what}) is not in this checkout yet") from None


# --------------------------------------------------------------------------- the search set-up
@dataclass
class SearchSetup:
    """Everything a search needs, loaded once (the sweep reuses it for every target)."""

    space: Any
    catalog: Any
    predictor: Any
    estimators: dict
    profiles: dict
    config: Any  # EvolutionConfig
    refine: Any  # RefineConfig
    num_classes: int
    out_dir: Path
    digests: dict = field(default_factory=dict)
    section: dict = field(default_factory=dict)


def search_section(params: Mapping) -> dict:
    section = dict(params.get("search") or {})
    unknown = set(section) - SECTION_KEYS
    if unknown:
        raise ValueError(f"params.yaml search: unknown keys {sorted(unknown)}; "
                         f"known: {', '.join(sorted(SECTION_KEYS))}")
    return section


def load_setup(args, devices: list[str]) -> SearchSetup:
    from nas_core.block_catalog import BlockCatalog
    from nas_core.io import file_sha256
    from nas_core.latency.devices import get_profile, load_profiles
    from nas_core.params import load_params
    from nas_core.search_algorithm import EvolutionConfig, RefineConfig
    from nas_core.search_space import SearchSpace

    params = load_params(args.params, args.profile)
    section = search_section(params)
    overrides = {k: v for k, v in {"generations": args.generations, "population_size": args.population,
                                   "seed": args.seed, "evolve_space": False if args.no_evolve_space else None}.items()
                 if v is not None}
    config = EvolutionConfig.from_dict({**(section.get("evolution") or {}), **overrides})
    resolution = int((params.get("search_space") or {}).get("resolution", 224))
    profiles_all = load_profiles(params.get("devices") or {})
    profiles = {d: get_profile(d, profiles_all) for d in devices}
    for device, profile in profiles.items():
        if profile.resolution != resolution:
            raise ValueError(f"device {device!r} is profiled at {profile.resolution}x{profile.resolution}; the search "
                             f"runs at search_space.resolution = {resolution}")
    predictor_path = Path(args.predictor)
    predictor = load_accuracy_predictor(predictor_path)
    estimators = {d: load_latency_estimator(d, Path(args.lut_dir), profiles[d]) for d in devices}
    digests = {"predictor": file_sha256(predictor_path)}
    for d in devices:
        for suffix in (".parquet", ".fit.json"):
            digests[f"lut/{d}{suffix}"] = file_sha256(Path(args.lut_dir) / f"{d}{suffix}")
    space = SearchSpace()
    return SearchSetup(space=space, catalog=BlockCatalog(space, resolution), predictor=predictor,
                       estimators=estimators, profiles=profiles, config=config,
                       refine=RefineConfig.from_dict(section.get("refine")),
                       num_classes=int(section.get("num_classes", 1000)), out_dir=Path(args.out_dir),
                       digests=digests, section=section)


# --------------------------------------------------------------------------- one search
def run_search(setup: SearchSetup, targets: Mapping[str, float], max_params: float | None = None,
               max_macs: float | None = None, measure: bool = False, force: bool = False,
               say: Callable[[str], None] = print, measure_fn=None) -> tuple[dict, bool]:
    """Search (or reuse an up-to-date result), optionally meet the target on the device, write
    the outputs. Returns (the ``.arch.json`` record, whether it meets every requirement)."""
    from nas_core.io import code_version, machine_fingerprint, utc_now
    from nas_core.search_algorithm import Constraints, LatencyConstraint, run_name
    from nas_core.search_report import (MeasurementCache, inputs_key, is_up_to_date, output_paths,
                                        read_best, write_search)
    from nas_core.search_space import SPACE_VERSION

    constraints = Constraints(setup.catalog, [LatencyConstraint(d, float(t), setup.estimators[d])
                                              for d, t in targets.items()],
                              max_params, max_macs, setup.num_classes)
    constraints.check_feasible()  # an infeasible target fails before anything else, naming the lowest value
    run = run_name(targets, max_params, max_macs)
    key = inputs_key({"space": SPACE_VERSION, "config": setup.config.to_dict(), "constraints": constraints.describe(),
                      "digests": setup.digests, "refine": setup.refine.to_dict() if measure else None})
    if not force and is_up_to_date(setup.out_dir, run, key, need_refine=measure):
        record = read_best(setup.out_dir, run)
        say(f"{run}: up to date ({setup.out_dir / run}.arch.json); --force to search again")
        return record, (not measure) or bool(record["refine"]["within"])
    provenance = {"inputs_key": key, "code_version": code_version(), "machine": machine_fingerprint(),
                  "started": utc_now(), "digests": setup.digests, "config": setup.config.to_dict(),
                  "constraints": constraints.describe()}
    say(f"{run}: searching ({setup.config.generations} generations, population {setup.config.population_size}, "
        f"evolve_space={setup.config.evolve_space})")
    results, rounds_targets = [_search(setup, constraints, say)], [dict(targets)]
    refine, measured = None, None
    if measure:
        cache = MeasurementCache(output_paths(setup.out_dir, run)["measured"],
                                 measure_fn or _locked_device_measure(setup, say), setup.space, provenance)
        refine = _meet_target_on_device(setup, constraints, results, rounds_targets, cache, say)
        measured = cache.lookup()
        say(refine.message)
    paths = write_search(setup.out_dir, run, setup.space, results, rounds_targets, refine, measured, provenance)
    record = read_best(setup.out_dir, run)
    say(_summary(record, paths["arch"]))
    return record, refine is None or refine.within


@contextlib.contextmanager
def _cpu_lock(mode: str, say: Callable[[str], None]):
    """The machine's CPU lock (``tasks.cpu_lock``), saying so when it has to wait for it."""
    from tasks import cpu_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(cpu_lock(mode, timeout=0.5))
        except TimeoutError:
            say(f"waiting for the machine's CPU lock ({mode}): "
                + ("another job is using the CPU" if mode == "exclusive" else "a latency measurement is running"))
            stack.enter_context(cpu_lock(mode))
        yield


def _search(setup: SearchSetup, constraints, say: Callable[[str], None]):
    """One search, holding the machine's CPU lock shared (it never overlaps a latency measurement)."""
    from nas_core.search_algorithm import search

    with _cpu_lock("shared", say):
        return search(setup.space, setup.predictor, constraints, setup.config,
                      on_generation=_progress(say, setup.config))


def _meet_target_on_device(setup: SearchSetup, constraints, results: list, rounds_targets: list, measure_fn,
                           say: Callable[[str], None]):
    """``refine_on_device`` on the first search's top-k; re-targeted searches are appended to
    ``results`` / ``rounds_targets`` (they go into the history table)."""
    from nas_core.search_algorithm import refine_on_device

    def research(search_targets: Mapping[str, float]):
        results.append(_search(setup, constraints.with_latency_targets(search_targets), say))
        rounds_targets.append(dict(search_targets))
        return results[-1].top

    other_limits = {k: v for k, v in constraints.limits().items() if not k.startswith("latency_ms.")}
    return refine_on_device(results[0].top, measure_fn, dict(rounds_targets[0]), **setup.refine.to_dict(),
                            research=research, arch_id=lambda c: c.arch(setup.space).arch_id,
                            other_limits=other_limits, log=say)


def _locked_device_measure(setup: SearchSetup, say: Callable[[str], None] = print):
    """Device measurement under the machine's exclusive CPU lock (latency runs alone)."""
    from nas_core.latency.devices import check_usable
    from nas_core.search_algorithm import device_measure_fn

    for name, profile in setup.profiles.items():
        usability = check_usable(profile)
        if not usability.usable:
            raise ValueError(f"--measure: device {name!r} is not usable here: {usability.reason}")
    inner = device_measure_fn(setup.space, setup.profiles, num_classes=setup.num_classes,
                              resolution=setup.catalog.resolution)

    def measure(candidate):
        with _cpu_lock("exclusive", say):
            return inner(candidate)

    return measure


def _progress(say: Callable[[str], None], config) -> Callable[[dict], None]:
    every = max(1, config.generations // 10)

    def report(row: dict) -> None:
        if row["generation"] % every == 0 or row["generation"] == config.generations:
            say(f"  gen {row['generation']:>4}  best {row['best_accuracy']:.4f}  Q {row['quality']:.4f}  "
                f"valid {row['valid_rate']:.2f}  fresh-draw valid {row['space_valid_rate']:.2f}  "
                f"entropy {row['space_entropy']:.2f}")

    return report


def _summary(record: dict, path: Path) -> str:
    latency = ", ".join(f"{d} {ms:.3f} ms" for d, ms in record["latency_ms"].items())
    measured = record.get("measured_ms")
    measured_text = (", measured " + ", ".join(f"{d} {ms:.3f} ms" for d, ms in measured.items())) if measured else ""
    return (f"{record['name']}: predicted accuracy {record['predicted_accuracy']:.4f}, estimated {latency}"
            f"{measured_text}, {record['params'] / 1e6:.2f} M params, {record['macs'] / 1e6:.0f} M MACs\n"
            f"  {record['compact']}\n  wrote {path}")


# --------------------------------------------------------------------------- commands
def _pairs(devices: list[str], latencies: list[float]) -> dict[str, float]:
    if len(devices) != len(latencies):
        raise ValueError(f"give one --latency-ms per --device (got {len(devices)} devices and "
                         f"{len(latencies)} latency targets)")
    if len(set(devices)) != len(devices):
        raise ValueError(f"each --device may appear once; got {devices}")
    return dict(zip(devices, latencies))


def cmd_search(args) -> int:
    targets = _pairs(args.device, args.latency_ms)
    setup = load_setup(args, list(targets))
    _, ok = run_search(setup, targets, _millions(args.params_m), _millions(args.macs_m), args.measure, args.force)
    return 0 if ok else 1


def cmd_search_sweep(args) -> int:
    """One search per target and device; the front per device as Parquet + PNG (Fig. 5)."""
    import pandas as pd

    from nas_core.io import read_parquet, write_parquet
    from nas_core.search_report import output_paths, plot_front

    setup = load_setup(args, list(args.device))
    multiples = args.multiples or setup.section.get("targets_vs_mobilenetv2") or DEFAULT_MULTIPLES
    all_ok = True
    for device in args.device:
        reference = None if args.latency_ms else reference_latency_ms(Path(args.baselines), device)
        targets = args.latency_ms or [round(m * reference, 3) for m in multiples]
        rows, clouds = [], []
        for i, target in enumerate(targets):
            record, ok = run_search(setup, {device: target}, _millions(args.params_m), None, args.measure, args.force)
            all_ok &= ok
            rows.append({"device": device, "target_ms": target,
                         "vs_mobilenetv2": target / reference if reference else None, "name": record["name"],
                         "arch_id": record["arch_id"], "predicted_accuracy": record["predicted_accuracy"],
                         "latency_ms": record["latency_ms"][device],
                         "measured_ms": (record.get("measured_ms") or {}).get(device),
                         "params": record["params"], "macs": record["macs"]})
            run = record["name"].removeprefix("ours_")
            clouds.append(read_parquet(output_paths(setup.out_dir, run)["top"]))
        front = pd.DataFrame(rows)
        base = setup.out_dir / f"front_{device}"
        write_parquet(base.with_suffix(".parquet"), front, {"reference_ms": reference, "targets_ms": targets})
        plot_front(front, base.with_suffix(".png"), device, reference, clouds)
        print(front.to_string(index=False))
        print(f"wrote {base}.parquet and {base}.png")
    return 0 if all_ok else 1


def _millions(value: float | None) -> float | None:
    return None if value is None else float(value) * 1e6


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
    _add_common(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("search-sweep", help="searches over latency targets; the accuracy-latency front (Fig. 5)",
                       description="One search per target for each device; writes data/search/front_<device>.parquet "
                                   "and .png. Targets are multiples of MobileNetV2's measured latency (params.yaml "
                                   "search.targets_vs_mobilenetv2, default 0.75 1 1.5) or explicit --latency-ms.")
    p.add_argument("--device", action="append", required=True, help="device profile (repeat for several)")
    p.add_argument("--multiples", type=float, nargs="+", help="targets as multiples of MobileNetV2's latency")
    p.add_argument("--latency-ms", type=float, nargs="+", help="explicit targets (ms) instead of multiples")
    p.add_argument("--baselines", default=str(DEFAULT_BASELINES), help="measured baseline latencies")
    _add_common(p)
    p.set_defaults(func=cmd_search_sweep)
