"""One hardware-aware search (§5.4) from its inputs to its outputs.

    from nas_core.search_run import load_setup, run_search

    layout = Layout("data")  # nas_core.layout: where the pipeline keeps its artifacts
    setup = load_setup(params, profiles, predictor=layout.predictor, lut_dir=layout.lut_dir,
                       out_dir=layout.search_root)
    record, within = run_search(setup, {"ort_cpu_fp32": 7.6}, measure=True)

:func:`load_setup` loads what every search of a set-up shares: the accuracy predictor, the
calibrated LUT estimator of each device and the ``search:`` params. :func:`run_search` runs
one search for latency targets (and optional parameter / MAC bounds): it re-uses a result
made from the same inputs (``search_report.inputs_key``), otherwise searches
(``search_algorithm.search``), optionally meets the target on the device itself
(``search_refine.refine_on_device``; measurements are cached across runs) and writes the
outputs (``search_report.write_search``). :func:`run_sweep` searches one target after the
other and writes the accuracy-latency front (Fig. 5).

Its callers are the search stage (``tasks.stages.stage_search``) and ``scan-edge search`` /
``search-sweep``. They pass the machine's CPU lock as ``lock`` (``nas_core.locks``): it is
held shared around each search and exclusively around each device measurement.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from . import search_algorithm, search_constraints, search_refine
from .accuracy_predictor import PredictorBundle
from .block_catalog import BlockCatalog
from .efficiency_predictor import LatencyEstimator
from .io import code_version, file_sha256, machine_fingerprint, read_parquet, utc_now, write_parquet
from .latency.calibration import current_fit
from .latency.devices import check_usable
from .latency.export import export_onnx
from .latency.location import LocalDevice, TimingJob, host_lock_mode
from .latency.timing import ModelEntry
from .layout import LutPaths
from .locks import Lock, no_lock
from .search_algorithm import EvolutionConfig, run_name, search
from .search_constraints import Constraints, LatencyConstraint
from .search_refine import RefineConfig, refine_on_device
from .search_report import (MeasurementCache, inputs_key, is_up_to_date, output_paths, plot_front, read_best,
                            write_search)
from .search_space import SPACE_VERSION, SearchSpace, space_identity
from .subnet import SubnetModel

REFERENCE_MODEL = "mobilenetv2_100"  # the paper's latency target (Table 3)
SECTION_KEYS = frozenset({"evolution", "refine", "devices", "targets_vs_mobilenetv2", "num_classes"})
DEFAULT_MULTIPLES = (0.75, 1.0, 1.5)  # sweep targets x MobileNetV2's latency, without search.targets_vs_mobilenetv2

Say = Callable[[str], None]


# --------------------------------------------------------------------------- loading the inputs
class MissingArtifact(FileNotFoundError):
    """An input of the search that has not been made yet (the message says how)."""


def load_accuracy_predictor(path: str | os.PathLike, space: SearchSpace | None = None):
    """The accuracy predictor bundle (``nas_core.accuracy_predictor``) at ``path``, trained on
    ``space`` (checked; None: whichever it was trained on)."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifact(f"{path}: no accuracy predictor. Make it with `scan-edge collect-pairs` and then "
                              f"`scan-edge fit-predictor` (they need data/supernet/supernet.pt from "
                              f"`scan-edge train-supernet`)")
    return PredictorBundle.load(path, space)


def load_latency_estimator(device: str, lut_dir: str | os.PathLike, profile, space: SearchSpace | None = None,
                           fit: str | os.PathLike | None = None):
    """The calibrated LUT estimator of ``device`` (``nas_core.efficiency_predictor``) over ``space``,
    with ``fit`` (default: the LUT folder's ``calibration.current_fit``, its second round when current)."""
    paths = LutPaths.for_device(device, lut_dir)
    lut = paths.lut
    fit = Path(fit) if fit is not None else current_fit(paths)
    if not lut.exists():
        raise MissingArtifact(f"{lut}: no latency lookup table for device {device!r}. Make it with "
                              f"`scan-edge lut build --device {device}`")
    if not fit.exists():
        raise MissingArtifact(f"{fit}: the LUT of {device!r} is not calibrated. Make it with "
                              f"`scan-edge lut calibrate --device {device}`")
    return LatencyEstimator.from_files(lut, fit, profile, space=space)


def reference_latency_ms(path: str | os.PathLike, device: str, model: str = REFERENCE_MODEL) -> float:
    """MobileNetV2's measured latency on ``device`` (the paper's target), from a baselines table."""
    path = Path(path)
    hint = f"`python benchmarks/baseline_latency.py --devices {device} --models {model}`"
    if not path.exists():
        raise MissingArtifact(f"{path}: no baseline latencies, needed for targets relative to {model}. "
                              f"Make it with {hint}, or give the targets in ms")
    frame = read_parquet(path)
    rows = frame[(frame["model"] == model) & (frame["device"] == device)]
    if "error" in rows:
        rows = rows[rows["error"].fillna("") == ""]
    if rows.empty or rows["median_ms"].isna().all():
        raise MissingArtifact(f"{path}: no measured {model} latency on {device!r}. Make it with {hint}")
    return float(rows["median_ms"].dropna().iloc[-1])


# --------------------------------------------------------------------------- the set-up
def search_section(params: Mapping[str, Any]) -> dict:
    """params ``search:`` as a dict, its keys checked."""
    section = dict(params.get("search") or {})
    unknown = set(section) - SECTION_KEYS
    if unknown:
        raise ValueError(f"params.yaml search: unknown keys {sorted(unknown)}; "
                         f"known: {', '.join(sorted(SECTION_KEYS))}")
    return section


@dataclass
class SearchSetup:
    """Everything a search needs, loaded once (a sweep reuses it for every target)."""

    space: Any  # SearchSpace
    catalog: Any  # BlockCatalog at the search's resolution
    predictor: Any  # PredictorBundle
    estimators: dict  # device -> LatencyEstimator
    profiles: dict  # device -> DeviceProfile
    config: Any  # EvolutionConfig
    refine: Any  # RefineConfig
    num_classes: int
    out_dir: Path
    digests: dict = field(default_factory=dict)  # input file name -> sha256 (part of the inputs key)
    section: dict = field(default_factory=dict)  # params search:


def load_setup(params: Mapping[str, Any], profiles: Mapping[str, Any], *, predictor: str | os.PathLike,
               lut_dir: str | os.PathLike, out_dir: str | os.PathLike,
               space: SearchSpace | None = None, fits: Mapping[str, str | os.PathLike] | None = None) -> SearchSetup:
    """The set-up of searches in ``space`` (default Table 2) for the devices of ``profiles``
    (device -> ``DeviceProfile``, all at the search's resolution), configured by ``params``
    (its ``search:`` section), reading the predictor at ``predictor`` (trained on ``space``)
    and each device's LUT in ``lut_dir`` (holding its blocks) with its fit (``fits``, device ->
    path; default ``calibration.current_fit``), writing under ``out_dir``."""
    section = search_section(params)
    resolutions = {device: profile.resolution for device, profile in profiles.items()}
    if len(set(resolutions.values())) != 1:
        raise ValueError(f"the devices of one search must share its input resolution; got {resolutions} "
                         "(set search_space.resolution)")
    space = space or SearchSpace()
    accuracy = load_accuracy_predictor(predictor, space)
    fits = {device: Path((fits or {}).get(device) or current_fit(LutPaths.for_device(device, lut_dir)))
            for device in profiles}
    estimators = {device: load_latency_estimator(device, lut_dir, profile, space, fits[device])
                  for device, profile in profiles.items()}
    inputs = [Path(predictor), *[p for device in profiles for p in (LutPaths.for_device(device, lut_dir).lut,
                                                                    fits[device])]]
    return SearchSetup(space=space, catalog=BlockCatalog(space, next(iter(resolutions.values()))),
                       predictor=accuracy, estimators=estimators, profiles=dict(profiles),
                       config=EvolutionConfig.from_dict(section.get("evolution")),
                       refine=RefineConfig.from_dict(section.get("refine")),
                       num_classes=int(section.get("num_classes", 1000)), out_dir=Path(out_dir),
                       digests={path.name: file_sha256(path) for path in inputs}, section=section)


# --------------------------------------------------------------------------- one search
def run_search(setup: SearchSetup, targets: Mapping[str, float], max_params: float | None = None,
               max_macs: float | None = None, *, measure: bool = False, force: bool = False, say: Say = print,
               measure_fn: Callable | None = None, lock: Lock = no_lock,
               accesses: Mapping[str, Any] | None = None) -> tuple[dict, bool]:
    """Search for ``targets`` (device -> ms) or reuse an up-to-date result, optionally meet
    the targets on the devices (``measure``: through ``accesses``, device -> ``DeviceAccess``,
    default this machine; ``measure_fn`` replaces the real measurement), write the outputs.
    Returns (the ``.arch.json`` record, whether it meets every requirement).
    """
    constraints = Constraints(setup.catalog, [LatencyConstraint(d, float(t), setup.estimators[d])
                                              for d, t in targets.items()],
                              max_params, max_macs, setup.num_classes)
    constraints.check_feasible()  # an infeasible target fails before anything else, naming the lowest value
    run = run_name(targets, max_params, max_macs)
    key = inputs_key({"space": SPACE_VERSION, **space_identity(setup.space.spec), "config": setup.config.to_dict(),
                      "constraints": constraints.describe(),
                      "digests": setup.digests, "refine": setup.refine.to_dict() if measure else None,
                      "code": _search_code_digest()})
    if not force and is_up_to_date(setup.out_dir, run, key, need_refine=measure):
        record = read_best(setup.out_dir, run)
        say(f"{run}: up to date ({setup.out_dir / run}.arch.json); --force to search again")
        return record, (not measure) or bool(record["refine"]["within"])
    provenance = {"inputs_key": key, "code_version": code_version(), "machine": machine_fingerprint(),
                  "started": utc_now(), "digests": setup.digests, "config": setup.config.to_dict(),
                  "constraints": constraints.describe()}
    say(f"{run}: searching ({setup.config.generations} generations, population {setup.config.population_size}, "
        f"evolve_space={setup.config.evolve_space})")
    results, rounds_targets = [_search(setup, constraints, say, lock)], [dict(targets)]
    refine, measured = None, None
    if measure:
        measurer = device_measure(setup, accesses, run, lock) if measure_fn is None else measure_fn
        if not isinstance(measurer, DeviceMeasure):  # a plain function: each call alone on the machine
            measurer = _exclusively(measurer, lock)
        cache = MeasurementCache(output_paths(setup.out_dir, run)["measured"], measurer, setup.space, provenance)
        prefetch = None
        if isinstance(measurer, DeviceMeasure):
            measurer.results.update({a: dict(d) for a, d in cache.lookup().items()})
            prefetch = measurer.prefetch
        refine = _meet_target_on_device(setup, constraints, results, rounds_targets, cache, say, lock, prefetch)
        measured = cache.lookup()
        say(refine.message)
    paths = write_search(setup.out_dir, run, setup.space, results, rounds_targets, refine, measured, provenance)
    record = read_best(setup.out_dir, run)
    say(_summary(record, paths["arch"]))
    return record, refine is None or refine.within


def _search_code_digest() -> str:
    """Hash of the search's code (this module, ``search_algorithm``, ``search_constraints`` and
    ``search_refine``): a result found by other search or refinement code is not up to date, even
    when every input is the same."""
    digest = hashlib.sha256()
    for module_file in (__file__, search_algorithm.__file__, search_constraints.__file__, search_refine.__file__):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()[:16]


def _search(setup: SearchSetup, constraints, say: Say, lock: Lock):
    """One search, holding the lock shared (it never overlaps a latency measurement)."""
    with lock("shared"):
        return search(setup.space, setup.predictor, constraints, setup.config,
                      on_generation=_progress(say, setup.config))


def _meet_target_on_device(setup: SearchSetup, constraints, results: list, rounds_targets: list, measure_fn,
                           say: Say, lock: Lock, prefetch: Callable | None = None):
    """``refine_on_device`` on the first search's top-k; re-targeted searches are appended to
    ``results`` / ``rounds_targets`` (they go into the history table)."""
    def research(search_targets: Mapping[str, float], floors: Mapping[str, float]):
        results.append(_search(setup, constraints.with_latency_targets(search_targets, floors), say, lock))
        rounds_targets.append(dict(search_targets))
        return results[-1].top

    other_limits = {k: v for k, v in constraints.limits().items() if not k.startswith("latency_ms.")}
    return refine_on_device(results[0].top, measure_fn, dict(rounds_targets[0]), **setup.refine.to_dict(),
                            research=research, arch_id=lambda c: c.arch(setup.space).arch_id,
                            other_limits=other_limits, log=say, prefetch=prefetch)


class DeviceMeasure:
    """The search's on-device measurement (``measure_fn`` and ``prefetch`` of
    ``search_refine.refine_on_device``) through each device's access
    (``nas_core.latency.location``): a candidate is exported to ONNX once (a standalone
    ``SubnetModel``; weights do not change latency) and timed where its device runs. On this
    machine one candidate at a time (a round stops at the first one within the window); on
    a board a whole round's candidates go out as one job (``search-<run>-<digest>``).

    Each measurement holds the machine's CPU lock as ``location.host_lock_mode`` says.
    """

    def __init__(self, setup: SearchSetup, accesses: Mapping[str, Any], run: str, lock: Lock = no_lock,
                 config=None):
        self.setup, self.accesses, self.run, self.lock, self.config = setup, dict(accesses), run, lock, config
        self.work = Path(setup.out_dir) / "_measure" / run
        self.results: dict[str, dict[str, float]] = {}

    def __call__(self, candidate) -> dict[str, float]:
        arch_id = candidate.arch(self.setup.space).arch_id
        for device in self.accesses:
            if device not in self.results.get(arch_id, {}):
                self._time(device, [candidate])
        return dict(self.results[arch_id])

    def prefetch(self, candidates) -> None:
        for device, access in self.accesses.items():
            if access.location != "local" and candidates:
                self._time(device, candidates)

    def _time(self, device: str, candidates) -> None:
        access = self.accesses[device]
        todo = {c.arch(self.setup.space).arch_id: c for c in candidates}
        todo = {a: c for a, c in todo.items() if device not in self.results.get(a, {})}
        if not todo:
            return
        ids = sorted(todo)
        shape = access.profile.input_shape(self.setup.catalog.resolution)
        entries = tuple(ModelEntry(a, self._onnx(todo[a], shape), shape) for a in ids)
        digest = hashlib.sha1(",".join(ids).encode()).hexdigest()[:10]
        lut_version = (self.setup.estimators[device].provenance.get("lut_identity") or {}).get("runtime_version")
        job = TimingJob(f"search-{self.run}-{digest}", entries, ids[0], self.config,
                        expected_runtime_version=None if access.location == "local" else lut_version,
                        whole_networks=True)
        mode = host_lock_mode(access.profile)
        with (self.lock(mode) if mode else contextlib.nullcontext()):
            rows = access.time(job, self.work / f"{device}-{digest}.parquet", resume=True, progress=False)
        for row in rows:
            self.results.setdefault(row["id"], {})[device] = float(row["median_ms"])

    def _onnx(self, candidate, shape) -> Path:
        path = self.work / "onnx" / f"{candidate.arch(self.setup.space).arch_id}.onnx"
        if not path.exists():
            model = SubnetModel(candidate.arch(self.setup.space), num_classes=self.setup.num_classes,
                                resolution=self.setup.catalog.resolution).eval()
            with self.lock("shared"):
                export_onnx(model, shape, path)
        return path


def device_measure(setup: SearchSetup, accesses: Mapping[str, Any] | None = None, run: str = "search",
                   lock: Lock = no_lock) -> DeviceMeasure:
    """The search's measurement on each device of the set-up: through ``accesses`` (device ->
    ``DeviceAccess``; default this machine's runtimes, which must be usable here)."""
    if accesses is None:
        for name, profile in setup.profiles.items():
            usability = check_usable(profile)
            if not usability.usable:
                raise ValueError(f"cannot measure on device {name!r} here: {usability.reason}")
        accesses = {name: LocalDevice(profile) for name, profile in setup.profiles.items()}
    return DeviceMeasure(setup, accesses, run, lock)


def _exclusively(measure_fn: Callable, lock: Lock) -> Callable:
    """``measure_fn`` holding the lock exclusively: each measurement runs alone on the machine."""
    def measure(candidate):
        with lock("exclusive"):
            return measure_fn(candidate)

    return measure


def _progress(say: Say, config) -> Callable[[dict], None]:
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


# --------------------------------------------------------------------------- the front (Fig. 5)
def run_sweep(setup: SearchSetup, device: str, targets_ms: list[float] | None = None, *,
              baselines: str | os.PathLike | None = None, max_params: float | None = None, measure: bool = False,
              force: bool = False, say: Say = print, lock: Lock = no_lock):
    """One search per latency target on ``device``; the front as ``<out_dir>/front_<device>.parquet``
    (one row per target) and ``.png``.

    The targets are ``targets_ms``, or else ``search.targets_vs_mobilenetv2`` (default 0.75,
    1, 1.5) times MobileNetV2's latency on the device from the ``baselines`` table.
    Returns (the front, its Parquet path, whether every search met its requirements).
    """
    if not targets_ms and baselines is None:
        raise ValueError("run_sweep: give targets_ms, or the baselines table their multiples refer to")
    reference = None if targets_ms else reference_latency_ms(baselines, device)
    multiples = setup.section.get("targets_vs_mobilenetv2") or DEFAULT_MULTIPLES
    targets = list(targets_ms or [round(m * reference, 3) for m in multiples])
    rows, clouds, all_ok = [], [], True
    for target in targets:
        record, ok = run_search(setup, {device: target}, max_params, measure=measure, force=force, say=say, lock=lock)
        all_ok &= ok
        rows.append({"device": device, "target_ms": target,
                     "vs_mobilenetv2": target / reference if reference else None, "name": record["name"],
                     "arch_id": record["arch_id"], "predicted_accuracy": record["predicted_accuracy"],
                     "latency_ms": record["latency_ms"][device],
                     "measured_ms": (record.get("measured_ms") or {}).get(device),
                     "params": record["params"], "macs": record["macs"]})
        clouds.append(read_parquet(output_paths(setup.out_dir, record["name"].removeprefix("ours_"))["top"]))
    front = pd.DataFrame(rows)
    path = setup.out_dir / f"front_{device}.parquet"
    write_parquet(path, front, {"reference_ms": reference, "targets_ms": targets})
    plot_front(front, path.with_suffix(".png"), device, reference, clouds)
    return front, path, all_ok


__all__ = ["MissingArtifact", "SearchSetup", "load_setup", "run_search", "run_sweep", "device_measure", "DeviceMeasure",
           "load_accuracy_predictor", "load_latency_estimator", "reference_latency_ms", "search_section",
           "REFERENCE_MODEL"]
