"""Calibrating a device's LUT against whole subnets (paper §5.3, Fig. 3, Suppl. S4).

Summing block latencies misestimates a subnet's latency: §5.3 finds it overestimates on
its devices (feature maps stay in cache between blocks); on this project's 1-thread CPU
runtimes the sum came out a few percent low instead (per-call and layout costs of a whole
network). Either way §5.3 measures 10 random subnets end to end on the device and fits
``measured ≈ a · lut_sum + b`` by least squares. Here the fit
is checked on other random subnets (30 by default): Spearman's rank correlation, RMSE,
MAPE and the largest error for the raw LUT sum, for the calibrated estimate, and for the
zero-cost proxies of Suppl. S4 (MACs, parameters; each after its own linear fit on the
same calibration subnets).

Subnets are timed exactly as the LUT's blocks: same ``profile_models`` machinery, same
timing configuration (read from the LUT), same clock (``lut.CLOCKS``), the LUT's reference
block re-timed among them. That reference and the load averages of both runs say whether
the machine was quiet (``quiet_machine`` in the fit file, ``quiet_machine_check``).

Subnet choice (``choose_subnets``): ``uniform`` (the paper's "random subnets": uniform
genomes, which already span most of the latency range) or ``stratified`` (an extension:
calibration subnets at evenly spaced quantiles of the raw LUT sum over 20 000 uniform
genomes, the fastest and slowest of them included, so the fit never extrapolates).
Validation subnets are always uniform, from their own random stream, and never repeat a
calibration subnet.

Files (``LutPaths``)::

    <device>.calibration.parquet   one row per measured subnet (schema below)
    <device>.fit.json              a, b, metrics, quiet-machine check, provenance (FIT_SCHEMA)
    <device>.calibration.png       estimated vs measured, raw and calibrated (Fig. 3)
    _work/<device>/subnet_timings.parquet   raw, resumable timings (``timing``'s schema)

Calibration table
-----------------
================  =====  ===============================================================
column            type   meaning
================  =====  ===============================================================
arch_id           str    ``ArchConfig.arch_id``
role              str    calibration (fits a, b) | validation (held out)
median_ms         f64    measured end-to-end latency (median of the timed calls)
p10_ms, p90_ms    f64    10th / 90th percentile of the timed calls
repeats           i64    timed calls
stable            bool   the median converged before the timing caps
drift_flag        bool   the reference still drifted around this measurement
load_average      f64    1-minute load average when timed
lut_sum_ms        f64    sum of the subnet's block latencies from the LUT
calibrated_ms     f64    a · lut_sum_ms + b
params, macs      i64    parameters and multiply-accumulates (1000-class head)
arch              str    the architecture as JSON (``ArchConfig.to_json``)
device, runtime, runtime_version, precision, precision_actual, threads, batch_size,
resolution, machine_id, timestamp   provenance per row
================  =====  ===============================================================
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from nas_core.block_catalog import HEAD_CLASSES, BlockCatalog
from nas_core.io import (atomic_path, code_version, file_sha256, machine_fingerprint, read_json, read_provenance,
                         utc_now, write_json, write_parquet)
from nas_core.latency import timing
from nas_core.latency.devices import DeviceProfile
from nas_core.latency.lut import (CLOCKS, PROFILE_KEYS, BlockFilter, LookupTable, LutError, LutPaths,
                                  assemble_lut, block_input_shape, blocks_of, check_same_code, export_blocks,
                                  export_folder, profile_clock, reference_block, select_blocks)
from nas_core.latency.measure import require_usable
from nas_core.latency.timing import ModelEntry, TimingConfig
from nas_core.search_space import ArchConfig, SearchSpace

PAPER_N_CALIBRATION = 10  # §5.3: "the end-to-end latency of 10 subnets"
DEFAULT_N_VALIDATION = 30
SAMPLINGS = ("uniform", "stratified")
ROLES = ("calibration", "validation")
# The accuracy this project asks of a calibrated LUT on the held-out subnets.
TARGETS = {"mape_pct": 3.0, "spearman": 0.95}
FIT_KIND = "latency_calibration"
BUNDLE_SIDECAR = "scan_edge_lut.json"
BUNDLE_FORMAT = 1

FIT_SCHEMA = """\
<device>.fit.json
  kind            "latency_calibration"
  device          device profile name
  model           "measured_ms = a * lut_sum_ms + b"
  a, b            the fit (least squares on the calibration subnets)
  n_calibration, n_validation, seed, sampling
  metrics         {calibration|validation: {lut_sum|calibrated|macs|params: METRICS}}
                  METRICS = {n, spearman, rmse_ms, mape_pct, max_abs_err_ms, max_ape_pct, bias_ms}
                  (macs / params: after their own linear fit, ``proxy_fits``)
  proxy_fits      {macs|params: {a, b}}
  targets         {mape_pct, spearman, met}: calibrated validation MAPE / Spearman vs TARGETS
  quiet_machine   reference block drift and load average, ok + reason (see quiet_machine_check)
  lut             {path, sha256, source, measured_blocks}: the LUT the fit belongs to
  identity        settings + runtime + machine of the subnet timings
  timing          TimingConfig of the subnet timings
  machine, code_version, created_at
"""


# --------------------------------------------------------------------------- the fit and its metrics
@dataclasses.dataclass(frozen=True)
class LinearFit:
    """``y ≈ a · x + b``."""

    a: float
    b: float

    def __call__(self, x) -> np.ndarray:
        return self.a * np.asarray(x, dtype=np.float64) + self.b

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b}


def fit_linear(x, y) -> LinearFit:
    """Ordinary least squares of ``y`` on ``x`` (§5.3's linear regression)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"fit_linear: x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if len(np.unique(x)) < 2:
        raise ValueError(f"fit_linear: needs at least 2 distinct x values, got {len(np.unique(x))}")
    (a, b), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)
    return LinearFit(float(a), float(b))


def error_metrics(estimated, measured) -> dict:
    """How well ``estimated`` predicts ``measured`` (ms): rank and absolute errors.

    ``spearman`` is NaN for fewer than 2 points; percentages are relative to ``measured``.
    """
    from scipy.stats import spearmanr

    est, meas = np.asarray(estimated, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    err = est - meas
    ape = np.abs(err) / meas * 100.0
    spearman = float(spearmanr(est, meas).statistic) if len(est) >= 2 else math.nan
    return {"n": int(len(est)), "spearman": spearman, "rmse_ms": float(np.sqrt(np.mean(err ** 2))),
            "mape_pct": float(np.mean(ape)), "max_abs_err_ms": float(np.max(np.abs(err))),
            "max_ape_pct": float(np.max(ape)), "bias_ms": float(np.mean(err))}


@dataclasses.dataclass(frozen=True)
class CalibrationFit:
    fit: LinearFit
    proxy_fits: dict[str, LinearFit]
    metrics: dict  # {role: {predictor: error_metrics}}


def fit_calibration(frame) -> CalibrationFit:
    """Fit a, b on the calibration rows of ``frame`` (columns role, median_ms, lut_sum_ms,
    macs, params) and score every predictor on both roles."""
    calib = frame[frame["role"] == "calibration"]
    fit = fit_linear(calib["lut_sum_ms"], calib["median_ms"])
    proxy_fits = {name: fit_linear(calib[name].astype(np.float64), calib["median_ms"]) for name in ("macs", "params")}
    metrics = {}
    for role in ROLES:
        part = frame[frame["role"] == role]
        if part.empty:
            continue
        measured = part["median_ms"]
        metrics[role] = {"lut_sum": error_metrics(part["lut_sum_ms"], measured),
                         "calibrated": error_metrics(fit(part["lut_sum_ms"]), measured),
                         **{name: error_metrics(proxy_fits[name](part[name].astype(np.float64)), measured)
                            for name in proxy_fits}}
    return CalibrationFit(fit, proxy_fits, metrics)


def targets_met(metrics: Mapping) -> dict:
    """The project's accuracy targets on the held-out subnets (``TARGETS``)."""
    calibrated = metrics.get("validation", {}).get("calibrated")
    met = bool(calibrated and calibrated["mape_pct"] <= TARGETS["mape_pct"]
               and calibrated["spearman"] >= TARGETS["spearman"])
    return {**TARGETS, "met": met}


# --------------------------------------------------------------------------- choosing subnets
@dataclasses.dataclass(frozen=True)
class SubnetChoice:
    """A subnet to measure end to end, and what it is for (``calibration`` or ``validation``)."""

    arch: ArchConfig
    role: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")

    @property
    def id(self) -> str:
        """Its model id in timing tables (never a block id: those have no ``subnet/`` prefix)."""
        return f"subnet/{self.arch.arch_id}"


def choose_subnets(space: SearchSpace, n_calibration: int = PAPER_N_CALIBRATION,
                   n_validation: int = DEFAULT_N_VALIDATION, seed: int = 0, sampling: str = "uniform",
                   raw_sum_ms: Callable[[np.ndarray], np.ndarray] | None = None,
                   pool_size: int = 20_000) -> list[SubnetChoice]:
    """Calibration and validation subnets (see the module docstring); distinct architectures.

    ``stratified`` needs ``raw_sum_ms`` (genomes -> raw LUT sum), i.e. a complete LUT.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")
    if n_calibration < 2 or n_validation < 0:
        raise ValueError(f"need n_calibration >= 2 (a line needs two points) and n_validation >= 0, "
                         f"got {n_calibration} and {n_validation}")
    if sampling == "uniform":
        calibration = _distinct_uniform(space, n_calibration, np.random.default_rng([seed, 0]), exclude=set())
    else:
        if raw_sum_ms is None:
            raise ValueError("stratified sampling needs the raw LUT sum (a complete LUT)")
        pool = space.sample_genomes(pool_size, np.random.default_rng([seed, 0]))
        order = np.argsort(raw_sum_ms(pool), kind="stable")
        picks = order[np.unique(np.linspace(0, pool_size - 1, n_calibration).round().astype(int))]
        calibration = _distinct(pool[picks], set())[:n_calibration]
    taken = {g.tobytes() for g in calibration}
    validation = _distinct_uniform(space, n_validation, np.random.default_rng([seed, 1]), exclude=taken)
    return ([SubnetChoice(space.decode(g), "calibration") for g in calibration]
            + [SubnetChoice(space.decode(g), "validation") for g in validation])


def _distinct_uniform(space: SearchSpace, n: int, rng: np.random.Generator, exclude: set) -> list[np.ndarray]:
    chosen: list[np.ndarray] = []
    while len(chosen) < n:
        chosen += _distinct(space.sample_genomes(n - len(chosen), rng), exclude)
    return chosen


def _distinct(genomes: np.ndarray, exclude: set) -> list[np.ndarray]:
    """Genomes not seen before (``exclude`` is updated)."""
    out = []
    for genome in genomes:
        key = genome.tobytes()
        if key not in exclude:
            exclude.add(key)
            out.append(genome)
    return out


# --------------------------------------------------------------------------- measuring subnets
def export_subnets(choices: Sequence[SubnetChoice], folder: str | os.PathLike, space: SearchSpace,
                   profile: DeviceProfile, progress: bool = True) -> dict[str, Path]:
    """ONNX file of each subnet (``<arch_id>.onnx``, 1000-class head), exporting only missing ones."""
    from nas_core.latency.export import export_onnx
    from nas_core.subnet import SubnetModel

    folder = Path(folder)
    paths = {c.id: folder / f"{c.arch.arch_id}.onnx" for c in choices}
    missing = [c for c in choices if not paths[c.id].exists()]
    for count, choice in enumerate(missing, start=1):
        model = SubnetModel(choice.arch, HEAD_CLASSES, profile.resolution, spec=space.spec)
        export_onnx(model, profile.input_shape(), paths[choice.id])
        if progress and (count % 10 == 0 or count == len(missing)):
            print(f"exported {count}/{len(missing)} subnets to {folder}", file=sys.stderr, flush=True)
    return paths


def measure_subnets(choices: Sequence[SubnetChoice], profile: DeviceProfile, paths: LutPaths, reference_id: str, *,
                    space: SearchSpace | None = None, resume: bool = True, seed: int = 0,
                    config: TimingConfig | None = None, check_every: int = 10, drift_tolerance: float = 0.10,
                    max_retries: int = 2, drift_pause_s: float = 2.0, progress: bool = True,
                    on_measured: Callable | None = None) -> list[dict]:
    """Time every subnet end to end, with the LUT's reference block as drift yardstick.

    Same machinery as the LUT (``timing.profile_models``): shuffled, drift-checked,
    checkpointed to ``paths.subnet_timings`` and resumable. Returns its rows (the
    reference's included). The caller holds any machine-wide CPU lock.
    """
    space = space or SearchSpace()
    usability = require_usable(profile)
    catalog = BlockCatalog(space, profile.resolution)
    reference = reference_block(catalog, reference_id, [])
    key = check_same_code(paths.subnet_timings, resume)
    clock = profile_clock(profile)
    entries, open_fn = _subnet_entries(choices, reference, profile, paths, space, seed, progress)
    return timing.profile_models(
        entries, profile.to_settings(), paths.subnet_timings, reference_id=reference.block_id, seed=seed,
        resume=resume, drift_tolerance=drift_tolerance, config=config, check_every=check_every,
        max_retries=max_retries, drift_pause_s=drift_pause_s, open_fn=open_fn,
        runtime=(usability.runtime_name, usability.runtime_version), code_version=code_version(),
        progress=progress, on_measured=on_measured, clock=CLOCKS[clock],
        extra_provenance={"space": space.version, "export_key": key, "clock": clock},
    )


def _subnet_entries(choices, reference, profile, paths, space, seed, progress):
    reference_shape = block_input_shape(reference, profile.batch_size)
    if profile.backend == "torch":
        entries = [ModelEntry(reference.block_id, None, reference_shape)]
        entries += [ModelEntry(c.id, None, profile.input_shape()) for c in choices]
        return entries, _torch_subnet_opener(choices, reference, profile, space, seed)
    folder = export_folder(paths.exports, profile.resolution, profile.batch_size)
    reference_onnx = export_blocks([reference], folder / "blocks", space, profile.batch_size, progress=False)
    subnet_onnx = export_subnets(choices, folder / "subnets", space, profile, progress)
    entries = [ModelEntry(reference.block_id, reference_onnx[reference.block_id], reference_shape)]
    entries += [ModelEntry(c.id, subnet_onnx[c.id], profile.input_shape()) for c in choices]
    return entries, None


def _torch_subnet_opener(choices, reference, profile, space, seed):
    from nas_core.blocks import build_block
    from nas_core.latency.measure import TorchSession
    from nas_core.subnet import SubnetModel

    archs = {c.id: c.arch for c in choices}

    def open_model(entry: ModelEntry, settings: Mapping):
        if reference is not None and entry.id == reference.block_id:
            module = build_block(reference, space.spec)
        else:
            module = SubnetModel(archs[entry.id], HEAD_CLASSES, profile.resolution, spec=space.spec)
        return TorchSession(module, entry.input_shape, settings, seed)
    return open_model


def measure_arch(arch: ArchConfig, profile: DeviceProfile, config: TimingConfig | None = None,
                 space: SearchSpace | None = None, seed: int = 0) -> timing.TimingResult:
    """One architecture timed end to end as the calibration times its subnets (the profile's
    settings and clock, CPU-pinned); ONNX backends export it to a temporary folder first."""
    import tempfile

    space = space or SearchSpace()
    require_usable(profile)
    clock = CLOCKS[profile_clock(profile)]
    choice = SubnetChoice(arch, "validation")
    settings = profile.to_settings()
    with tempfile.TemporaryDirectory(prefix="scan-edge-arch-") as tmp:
        onnx = None if profile.backend == "torch" else export_subnets([choice], tmp, space, profile, False)[choice.id]
        with timing.pinned_cpus(profile.threads, enabled=profile.options.get("pin_cpus", True)):
            if onnx is None:
                open_model = _torch_subnet_opener([choice], None, profile, space, seed)
                session = open_model(ModelEntry(choice.id, None, profile.input_shape()), settings)
            else:
                session = timing.open_session(onnx, profile.input_shape(), settings, seed)
            try:
                return timing.time_session(session, config, clock)
            finally:
                session.close()


# --------------------------------------------------------------------------- the calibration table
_ROW_PROVENANCE = ["device", "runtime", "runtime_version", "precision", "precision_actual", "threads", "batch_size",
                   "resolution", "machine_id", "timestamp"]
CALIBRATION_COLUMNS = ["arch_id", "role", "median_ms", "p10_ms", "p90_ms", "repeats", "stable", "drift_flag",
                       "load_average", "lut_sum_ms", "calibrated_ms", "params", "macs", "arch"] + _ROW_PROVENANCE


def calibration_frame(choices: Sequence[SubnetChoice], rows: Sequence[Mapping], lut_ms: np.ndarray,
                      catalog: BlockCatalog, device: str):
    """One row per subnet: its timing, raw LUT sum, params and MACs (``calibrated_ms`` NaN
    until a fit fills it). A subnet without a timing row or with a block missing from the
    LUT raises, naming it."""
    import pandas as pd

    by_id = {row["id"]: row for row in rows}
    unmeasured = [c.id for c in choices if c.id not in by_id]
    if unmeasured:
        raise LutError(f"{len(unmeasured)} of {len(choices)} subnets have no timing, e.g. {unmeasured[:3]}")
    genomes = np.stack([catalog.space.encode(c.arch) for c in choices])
    lut_sum = catalog.sum_table(lut_ms, genomes)
    if not np.isfinite(lut_sum).all():
        lacking = _blocks_missing_from(lut_ms, catalog, [c.arch for c in choices])
        raise LutError(f"the LUT lacks {len(lacking)} blocks the subnets use (e.g. {', '.join(lacking[:5])}); "
                       "build the LUT for them first")
    params, macs = catalog.count_params(genomes), catalog.count_macs(genomes)
    records = []
    for index, choice in enumerate(choices):
        row = by_id[choice.id]
        records.append({"arch_id": choice.arch.arch_id, "role": choice.role,
                        **{k: row.get(k) for k in ("median_ms", "p10_ms", "p90_ms", "repeats", "stable", "drift_flag",
                                                   "load_average")},
                        "lut_sum_ms": float(lut_sum[index]), "calibrated_ms": math.nan,
                        "params": int(params[index]), "macs": int(macs[index]), "arch": choice.arch.to_json(),
                        **{k: row.get(k) for k in _ROW_PROVENANCE}, "device": device})
    return pd.DataFrame.from_records(records, columns=CALIBRATION_COLUMNS)


def _blocks_missing_from(lut_ms: np.ndarray, catalog: BlockCatalog, archs) -> list[str]:
    return [i for i in blocks_of(catalog, archs) if not np.isfinite(lut_ms[catalog.index[i]])]


def quiet_machine_check(lut: LookupTable, subnet_provenance: Mapping, subnet_frame=None,
                        tolerance: float = 0.10) -> dict:
    """Were the timings made on a quiet machine, the same for blocks and subnets?

    Two signs, both needed for ``ok``:

    * drift: both runs re-timed the same reference block; every timing of either run must
      be within ``tolerance`` of the median of its timings in the LUT run (steadier than
      its first timing, which one noisy moment can spoil);
    * load: with the wall clock, the median 1-minute load average of either run must stay
      below the machine's core count. The reference block (well under a millisecond)
      mostly runs between two preemptions even on a busy machine, so it can look steady
      while long calls (subnets, big blocks) are stretched; the load average sees that.
      The cpu clock does not count other processes' time, so load alone does not spoil it.
    """
    lut_reference = lut.provenance.get("reference") or {}
    subnet_reference = subnet_provenance.get("reference") or {}
    if not lut_reference.get("baseline_ms") or subnet_reference.get("id") != lut_reference.get("id"):
        return {"ok": False, "reason": "the LUT and the subnet timings have no common reference block"}
    lut_times = [lut_reference["baseline_ms"]] + [c["median_ms"] for c in lut.provenance.get("reference_checks", [])]
    subnet_times = [subnet_reference["baseline_ms"]] + [c["median_ms"] for c in
                                                        subnet_provenance.get("reference_checks", [])]
    yardstick = float(np.median(lut_times))
    worst = max(abs(t / yardstick - 1.0) for t in lut_times + subnet_times)
    loads = {"lut_load_average": _median_load(lut.frame), "subnet_run_load_average": _median_load(subnet_frame)}
    cores = (lut.provenance.get("machine") or {}).get("cores") or os.cpu_count()
    clock = lut.provenance.get("clock", "wall")
    busy = any(load is not None and load >= cores for load in loads.values())
    reasons = ([f"the reference block moved {worst:.1%} (tolerance {tolerance:.0%})"] if worst > tolerance else [])
    reasons += ([f"load average {max(v for v in loads.values() if v is not None):.1f} on {cores} cores with the "
                 "wall clock"] if busy and clock == "wall" else [])
    return {"reference_id": lut_reference["id"], "lut_reference_ms": yardstick,
            "subnet_run_reference_ms": float(np.median(subnet_times)),
            "ratio": float(np.median(subnet_times)) / yardstick,
            "lut_max_deviation": max(abs(t / yardstick - 1.0) for t in lut_times),
            "subnet_run_max_deviation": max(abs(t / yardstick - 1.0) for t in subnet_times),
            "tolerance": tolerance, **loads, "cores": cores, "clock": clock,
            "ok": not reasons, "reason": "; ".join(reasons)}


def _median_load(frame) -> float | None:
    if frame is None or "load_average" not in frame or frame["load_average"].isna().all():
        return None
    return float(frame["load_average"].median())


# --------------------------------------------------------------------------- calibrating on this host
@dataclasses.dataclass
class CalibrationReport:
    """What a calibration wrote: the table (``frame``) and the fit file's content (``document``)."""

    frame: object
    document: dict
    paths: LutPaths

    @property
    def a(self) -> float:
        return self.document["a"]

    @property
    def b(self) -> float:
        return self.document["b"]

    def summary(self) -> str:
        doc = self.document
        lines = [f"{doc['device']}: measured ≈ {doc['a']:.4f} · lut_sum + {doc['b']:.3f} ms "
                 f"({doc['n_calibration']} calibration, {doc['n_validation']} validation subnets)"]
        for name, m in doc["metrics"].get("validation", {}).items():
            spearman = "  -  " if m["spearman"] is None else f"{m['spearman']:.3f}"  # None: one point
            lines.append(f"  {name:<10} spearman {spearman}  MAPE {m['mape_pct']:6.2f} %  "
                         f"RMSE {m['rmse_ms']:.3f} ms  max err {m['max_abs_err_ms']:.3f} ms")
        quiet = doc["quiet_machine"]
        lines.append(f"  targets (MAPE <= {TARGETS['mape_pct']} %, spearman >= {TARGETS['spearman']}): "
                     f"{'met' if doc['targets']['met'] else 'NOT met'}; quiet machine: "
                     + ("yes" if quiet.get("ok") else f"no ({quiet.get('reason')})"))
        return "\n".join(lines)


def calibrate(profile: DeviceProfile, paths: LutPaths | None = None, *, space: SearchSpace | None = None,
              n_calibration: int = PAPER_N_CALIBRATION, n_validation: int = DEFAULT_N_VALIDATION, seed: int = 0,
              sampling: str = "uniform", subnets: Sequence[SubnetChoice] | None = None, resume: bool = True,
              config: TimingConfig | None = None, check_every: int = 10, drift_tolerance: float = 0.10,
              max_retries: int = 2, drift_pause_s: float = 2.0, runtime_version: str | None = None,
              progress: bool = True, figure: bool = True) -> CalibrationReport:
    """Measure subnets end to end on this host, fit the LUT's calibration, write the outputs.

    Reads ``paths.lut`` (it must match ``profile``; see ``LookupTable.check_matches``),
    chooses subnets (or takes ``subnets``), times them with the LUT's timing
    configuration unless ``config`` is given, and writes ``paths.calibration``,
    ``paths.fit`` and (``figure``) ``paths.figure``. The caller holds any CPU lock.
    """
    paths = paths or LutPaths.for_device(profile.name)
    space = space or SearchSpace()
    lut = LookupTable.read(paths.lut)
    lut.check_matches(profile, runtime_version)
    catalog = BlockCatalog(space, profile.resolution)
    lut_ms = lut.block_ms(catalog)
    sampling_used = sampling if subnets is None else "given"
    if subnets is None:
        raw_sum = (lambda g: catalog.sum_table(lut.require_complete(catalog), g)) if sampling == "stratified" else None
        subnets = choose_subnets(space, n_calibration, n_validation, seed, sampling, raw_sum)
    lacking = _blocks_missing_from(lut_ms, catalog, [c.arch for c in subnets])
    if lacking:  # fail before minutes of measuring, not after
        raise LutError(f"{paths.lut} lacks {len(lacking)} blocks the subnets use (e.g. {', '.join(lacking[:5])}); "
                       f"complete it first (scan-edge lut build --device {profile.name} --resume)")
    config = config or TimingConfig.from_dict(lut.provenance.get("timing"))
    rows = measure_subnets(subnets, profile, paths, lut.provenance["reference"]["id"], space=space, resume=resume,
                           seed=seed, config=config, check_every=check_every, drift_tolerance=drift_tolerance,
                           max_retries=max_retries, drift_pause_s=drift_pause_s, progress=progress)
    frame = calibration_frame(subnets, rows, lut_ms, catalog, profile.name)
    settings = {"n_calibration": _count(subnets, "calibration"), "n_validation": _count(subnets, "validation"),
                "seed": seed, "sampling": sampling_used}
    return finish_calibration(frame, lut, read_provenance(paths.subnet_timings), profile, paths, settings,
                              drift_tolerance, figure)


def _count(subnets: Sequence[SubnetChoice], role: str) -> int:
    return sum(c.role == role for c in subnets)


def finish_calibration(frame, lut: LookupTable, subnet_provenance: Mapping, profile: DeviceProfile, paths: LutPaths,
                       settings: Mapping, drift_tolerance: float = 0.10, figure: bool = True) -> CalibrationReport:
    """Fit, score, and write the calibration table, the fit file and the figure."""
    result = fit_calibration(frame)
    frame["calibrated_ms"] = result.fit(frame["lut_sum_ms"])
    document = {
        "kind": FIT_KIND, "device": profile.name, "model": "measured_ms = a * lut_sum_ms + b",
        **result.fit.to_dict(), **settings, "metrics": result.metrics,
        "proxy_fits": {k: v.to_dict() for k, v in result.proxy_fits.items()},
        "targets": targets_met(result.metrics),
        "quiet_machine": quiet_machine_check(lut, subnet_provenance, frame, drift_tolerance),
        "lut": {"path": str(lut.path), "sha256": file_sha256(lut.path), "source": lut.provenance.get("source"),
                "measured_blocks": lut.provenance.get("measured_blocks")},
        "identity": subnet_provenance.get("identity"), "timing": subnet_provenance.get("timing"),
        "machine": subnet_provenance.get("machine") or machine_fingerprint(),
        "code_version": code_version(), "created_at": utc_now(),
    }
    document = _json_safe(document)
    write_parquet(paths.calibration, frame, document)
    write_json(paths.fit, document)
    if figure:
        plot_calibration({profile.name: frame}, paths.figure)
    return CalibrationReport(frame, document, paths)


def _json_safe(obj):
    """NaN (e.g. Spearman of one point) -> null: JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def read_fit(path: str | os.PathLike) -> dict:
    document = read_json(path)
    if document.get("kind") != FIT_KIND or "a" not in document or "b" not in document:
        raise LutError(f"{path} is not a latency calibration file (written by scan-edge lut calibrate)")
    return document


# --------------------------------------------------------------------------- Fig. 3
def plot_calibration(frames: Mapping[str, object], path: str | os.PathLike) -> Path:
    """Estimated vs measured latency, one panel per device (Fig. 3): the raw LUT sum and the
    calibrated estimate, calibration subnets outlined, and the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(frames), figsize=(4.6 * len(frames), 4.4), squeeze=False)
    for ax, (device, frame) in zip(axes[0], frames.items()):
        _plot_device(ax, device, frame)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
    return path


def _plot_device(ax, device: str, frame) -> None:
    measured = frame["median_ms"].to_numpy()
    validation = (frame["role"] == "validation").to_numpy()
    for column, label, color, marker in (("lut_sum_ms", "LUT sum", "tab:orange", "X"),
                                         ("calibrated_ms", "calibrated LUT", "tab:green", "o")):
        estimate = frame[column].to_numpy()
        scored = validation if validation.any() else np.ones_like(validation)
        m = error_metrics(estimate[scored], measured[scored])
        ax.scatter(measured[validation], estimate[validation], s=22, c=color, marker=marker, linewidths=0,
                   label=f"{label}: ρ={m['spearman']:.3f}, MAPE={m['mape_pct']:.1f}%")
        ax.scatter(measured[~validation], estimate[~validation], s=44, c=color, marker=marker,
                   edgecolors="black", linewidths=0.9)
    shown = np.concatenate([measured, frame["lut_sum_ms"].to_numpy(), frame["calibrated_ms"].to_numpy()])
    limits = [shown.min() * 0.95, shown.max() * 1.05]
    ax.plot(limits, limits, "--", color="gray", linewidth=1, label="y = x")
    ax.set(xlim=limits, ylim=limits, xlabel="measured latency (ms)", ylabel="estimated latency (ms)", title=device)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", title="held-out subnets (outlined: calibration)", title_fontsize=7)


# --------------------------------------------------------------------------- remote devices (bundles)
def make_profiling_bundle(profile: DeviceProfile, bundle_dir: str | os.PathLike, paths: LutPaths | None = None, *,
                          space: SearchSpace | None = None, block_filter: BlockFilter = None,
                          limit: int | None = None, reference_id: str | None = None,
                          n_calibration: int = PAPER_N_CALIBRATION, n_validation: int = DEFAULT_N_VALIDATION,
                          seed: int = 0, subnets: Sequence[SubnetChoice] | None = None,
                          config: TimingConfig | None = None, check_every: int = 10,
                          drift_tolerance: float = 0.10, progress: bool = True) -> Path:
    """A bundle (``nas_core.latency.bundle``) that measures a LUT and its calibration subnets
    on a device with only the runtime installed, in one run of its torch-free runner.

    Holds every chosen block and subnet as ONNX (exports come from ``paths.exports``'
    cache), the runner, and ``scan_edge_lut.json``: the blocks, the subnets with their
    roles and architectures, and the settings ``import_profiling_results`` checks.
    ``n_calibration=0`` (and no ``subnets``) makes a LUT-only bundle.
    """
    from nas_core.latency.bundle import make_bundle

    paths = paths or LutPaths.for_device(profile.name)
    space = space or SearchSpace()
    if profile.backend == "torch":
        raise LutError(f"device {profile.name!r} runs eager torch; a bundle carries ONNX models for "
                       "onnxruntime / openvino / tensorrt devices")
    if profile_clock(profile) != "wall":
        raise LutError(f"device {profile.name!r} asks for the {profile_clock(profile)} clock; a bundle's runner "
                       "times wall-clock latency on the device (remove options.clock)")
    catalog = BlockCatalog(space, profile.resolution)
    blocks = select_blocks(catalog, block_filter, limit)
    reference = reference_block(catalog, reference_id, blocks)
    if reference not in blocks:
        blocks = [reference, *blocks]
    sampling = "uniform" if subnets is None else "given"
    if subnets is None:
        subnets = choose_subnets(space, n_calibration, n_validation, seed) if n_calibration else []
    folder = export_folder(paths.exports, profile.resolution, profile.batch_size)
    block_onnx = export_blocks(blocks, folder / "blocks", space, profile.batch_size, progress)
    subnet_onnx = export_subnets(subnets, folder / "subnets", space, profile, progress)
    entries = [ModelEntry(b.block_id, block_onnx[b.block_id], block_input_shape(b, profile.batch_size))
               for b in blocks]
    entries += [ModelEntry(c.id, subnet_onnx[c.id], profile.input_shape()) for c in subnets]
    bundle_dir = make_bundle(entries, profile, bundle_dir, reference_id=reference.block_id, seed=seed,
                             config=config, drift_tolerance=drift_tolerance, check_every=check_every)
    write_json(Path(bundle_dir) / BUNDLE_SIDECAR, {
        "format": BUNDLE_FORMAT, "device": profile.name, "settings": profile.to_settings(),
        "space": space.version, "resolution": profile.resolution, "reference_id": reference.block_id,
        "blocks": [b.block_id for b in blocks], "seed": seed, "sampling": sampling, "drift_tolerance": drift_tolerance,
        "subnets": [{"id": c.id, "arch_id": c.arch.arch_id, "role": c.role, "arch": c.arch.to_dict()}
                    for c in subnets],
        "code_version": code_version(), "created_at": utc_now(),
    })
    return Path(bundle_dir)


def import_profiling_results(profile: DeviceProfile, bundle_dir: str | os.PathLike,
                             results: str | os.PathLike | None = None, paths: LutPaths | None = None, *,
                             space: SearchSpace | None = None, figure: bool = True) -> CalibrationReport | None:
    """Turn a bundle's results (default ``BUNDLE_DIR/lut.parquet``) into the device's LUT and,
    when the bundle had subnets, its calibration. Returns the report (None: LUT only).

    Refuses results measured with other settings than ``profile`` (threads overridden on
    the device, another resolution, ...) and results the runner did not finish.
    """
    paths = paths or LutPaths.for_device(profile.name)
    space = space or SearchSpace()
    bundle_dir = Path(bundle_dir)
    sidecar = _read_sidecar(bundle_dir, profile, space)
    results = Path(results) if results is not None else bundle_dir / "lut.parquet"
    if not results.exists():
        raise FileNotFoundError(f"{results}: no results; run the bundle on the device "
                                f"(python run_bundle.py . --out lut.parquet) and copy the file back")
    rows, provenance = timing.read_rows(results)
    _check_results(results, rows, provenance, sidecar, profile)
    catalog = BlockCatalog(space, profile.resolution)
    frame, lut_provenance = assemble_lut(rows, provenance, catalog, profile, source="bundle")
    lut_provenance["bundle"] = {"path": str(bundle_dir), "results": str(results),
                                "created_at": sidecar.get("created_at"), "results_sha256": file_sha256(results)}
    write_parquet(paths.lut, frame, lut_provenance)
    subnets = [SubnetChoice(space.from_dict(s["arch"]), s["role"]) for s in sidecar["subnets"]]
    if not subnets:
        return None
    lut = LookupTable.read(paths.lut)
    table = calibration_frame(subnets, rows, lut.block_ms(catalog), catalog, profile.name)
    settings = {"n_calibration": _count(subnets, "calibration"), "n_validation": _count(subnets, "validation"),
                "seed": sidecar.get("seed"), "sampling": sidecar.get("sampling"), "bundle": str(bundle_dir)}
    return finish_calibration(table, lut, provenance, profile, paths, settings,
                              float(sidecar.get("drift_tolerance", 0.10)), figure)


def _read_sidecar(bundle_dir: Path, profile: DeviceProfile, space: SearchSpace) -> dict:
    path = bundle_dir / BUNDLE_SIDECAR
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a LUT profiling bundle (made by scan-edge profile bundle)")
    sidecar = read_json(path)
    if sidecar.get("format") != BUNDLE_FORMAT:
        raise LutError(f"{path}: bundle format {sidecar.get('format')!r}, this code reads {BUNDLE_FORMAT}")
    if sidecar.get("space") != space.version:
        raise LutError(f"{path}: bundle made for search space {sidecar.get('space')!r}, not {space.version!r}")
    differences = [f"{k}: {sidecar['settings'].get(k)!r} in the bundle, {getattr(profile, k)!r} in the profile"
                   for k in ("name", *PROFILE_KEYS) if str(sidecar["settings"].get(k)) != str(getattr(profile, k))]
    if differences:
        raise LutError(f"{path} was made for other settings than device {profile.name!r}: {'; '.join(differences)}")
    return sidecar


def _check_results(results: Path, rows, provenance: Mapping, sidecar: Mapping, profile: DeviceProfile) -> None:
    identity = provenance.get("identity", {})
    differences = [f"{k}: {identity.get(k)!r} on the device, {getattr(profile, k)!r} in the profile"
                   for k in PROFILE_KEYS if str(identity.get(k)) != str(getattr(profile, k))]
    if differences:
        raise LutError(f"{results} was measured with other settings than device {profile.name!r} "
                       f"({'; '.join(differences)}); re-run the bundle without overriding them")
    expected = [*sidecar["blocks"], *(s["id"] for s in sidecar["subnets"])]
    measured = {row["id"] for row in rows}
    missing = [i for i in expected if i not in measured]
    if missing:
        raise LutError(f"{results} has no timing for {len(missing)} of {len(expected)} models (e.g. "
                       f"{', '.join(missing[:3])}); the run did not finish: run the bundle again, it resumes")

