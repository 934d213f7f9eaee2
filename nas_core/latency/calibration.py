"""Calibrating a device's LUT against whole subnets (paper §5.3, Fig. 3, Suppl. S4).

Summing block latencies misestimates a subnet's latency: §5.3 finds it overestimates on
its devices (feature maps stay in cache between blocks); on this project's 1-thread CPU
runtimes the sum came out a few percent low instead (per-call and layout costs of a whole
network). §5.3 measures 10 random subnets end to end and fits ``measured ≈ a · lut_sum + b``.

What this module adds, each a named option with the paper's choice as default:

* **Where the subnets are** (``sampling``, ``nas_core.latency.subnet_sampling``): the
  paper's uniform subnets sit at 3-8x MobileNetV2's latency, where no search lands; the
  ``band`` sampling (both params profiles) calibrates and checks on subnets at 0.5-2x the
  device's MobileNetV2, the region of the 0.75-1.5x targets, plus a few outside it;
  ``frontier`` takes a share of them from quick searches on the raw LUT sum, the kind of
  subnet a search returns (the band's draws alone left searched subnets 5 % off).
* **The model** (``models``, ``nas_core.latency.latency_model``): the paper's line, or
  per-group scales and a per-block term, chosen by leave-one-out error on the calibration
  subnets; the held-out (validation) subnets only score the chosen model.
* **Passes** (``passes``): each subnet timed in several passes minutes apart, its median
  kept; on OpenVINO the later passes load the first pass's compiled models
  (``lut.compiled_model_cache``) instead of compiling them again. ``extra_passes`` more
  over the subnets whose passes disagree (``ExtraPasses``): a held-out subnet is one point
  of the bar's max, and its own measurement noise counts there undamped.
* **A second round** (``recalibrate``, ``RecalibrationSettings``; the paper has one): once the
  accuracy predictor exists, the subnets its searches pick at targets across the searches'
  range are timed and added, half to each role, and the model is chosen and fitted again.
  The first round runs beside the supernet's training, before any predictor; its quick
  searches maximise a stand-in for accuracy, and on OpenVINO the subnets the real searches
  return (stage 4 at its widest) were still 4-8 % off. Searches read the second round's fit
  (``current_fit``).
* **The figures** nn-Meter and LitePred report on the held-out subnets: MAPE, RMSPE, max
  error, Spearman, share within ±5 % and ±10 %, for the raw LUT sum, the paper's line, the
  chosen model and the zero-cost proxies of Suppl. S4 (MACs, params, each after its own line).

Subnets are timed exactly as the LUT's blocks: same ``profile_models`` machinery, same
timing configuration (read from the LUT), same clock, the LUT's reference block re-timed
among them, and on the same device access (``nas_core.latency.location``: this machine, or
a board through a worker or a bundle). That reference and the load averages say whether the
machine was quiet (``quiet_machine`` in the fit file).

Files (``LutPaths``)::

    <device>.calibration.parquet   one row per measured subnet (schema below)
    <device>.fit.json              the model, a/b of the paper's line, metrics, provenance (FIT_SCHEMA)
    <device>.calibration.png       estimated vs measured, raw and calibrated (Fig. 3)
    _work/<device>/subnet_timings.parquet   raw, resumable timings (``timing``'s schema)
    _work/<device>/subnet_timings.passN.parquet   the further passes (``passes`` > 1)
    <device>.recalibration.{parquet,json,png}    the second round's table, fit and figure (same schemas)
    _work/<device>/searched_timings[.passN].parquet   its raw timings

Calibration table
-----------------
================  =====  ===============================================================
column            type   meaning
================  =====  ===============================================================
arch_id           str    ``ArchConfig.arch_id``
role              str    calibration (fits the model) | validation (held out)
origin            str    how the subnet was chosen (subnet_sampling.ORIGINS): band, frontier, ...
median_ms         f64    measured end-to-end latency (median of the timed calls; with
                         ``passes`` > 1 the median over the passes of each pass's median)
pass_spread_pct   f64    (max - min) / median of the passes' medians, in % (0 with one pass)
passes            i64    passes the subnet was timed in (``passes``, plus ``extra_passes`` where
                         its first passes spread more than ``extra_pass_spread_pct``)
p10_ms, p90_ms    f64    10th / 90th percentile of the timed calls (first pass)
repeats           i64    timed calls
stable            bool   the median converged before the timing caps
drift_flag        bool   the reference still drifted around this measurement
load_average      f64    1-minute load average when timed
lut_sum_ms        f64    sum of the subnet's block latencies from the LUT
paper_line_ms     f64    a · lut_sum_ms + b (§5.3's line, fitted on the calibration rows)
calibrated_ms     f64    the chosen model's estimate (what the search uses)
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
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nas_core.block_catalog import HEAD_CLASSES, BlockCatalog
from nas_core.blocks import build_block
from nas_core.config import SectionConfig
from nas_core.io import (atomic_path, code_version, file_sha256, machine_fingerprint, read_json, read_parquet,
                         read_provenance, utc_now, write_json, write_parquet)
from nas_core.latency import timing
from nas_core.latency.devices import DeviceProfile
from nas_core.latency.export import export_onnx
from nas_core.latency.latency_model import (PAPER_MODEL, LatencyModel, Selection, error_metrics, parse_model_name,
                                            select_model)
from nas_core.latency.location import DeviceAccess, LocalDevice, TimingJob
from nas_core.latency.lut import (CLOCKS, LookupTable, LutError, LutPaths, block_input_shape, blocks_of,
                                  check_same_code, combine_passes, compiled_model_cache, export_blocks, export_folder,
                                  profile_clock, reference_block)
from nas_core.latency.measure import TorchSession, require_usable
from nas_core.latency.subnet_sampling import (DEFAULT_BAND, DEFAULT_OUTSIDE, ROLES, SAMPLINGS, Band, Frontier,
                                              SubnetChoice, choose_subnets)
from nas_core.latency.timing import ModelEntry, TimingConfig
from nas_core.search_space import ArchConfig, SearchSpace
from nas_core.subnet import SubnetModel

PAPER_N_CALIBRATION = 10  # §5.3: "the end-to-end latency of 10 subnets"
# The second round's targets, x MobileNetV2: the searches' 0.75-1.5x with a margin on either side.
DEFAULT_SEARCHED_BAND = (0.6, 1.8)
DEFAULT_N_VALIDATION = 30
# The accuracy this project asks of a calibrated LUT on the held-out subnets (issue "Latency
# you can trust"): what a search needs to land within [-3 %, 0] of its target without re-measuring.
TARGETS = {"mape_pct": 3.0, "max_ape_pct": 8.0, "spearman": 0.95, "within_5_pct": 0.90}
FIT_KIND = "latency_calibration"

FIT_SCHEMA = """\
<device>.fit.json
  kind            "latency_calibration"
  device          device profile name
  model           the chosen LatencyModel: {name, scales, per_block_ms, intercept_ms}
  selection       {chosen, rule, candidates: {name: {cv: METRICS, fit}}} (leave-one-out on calibration)
  a, b            §5.3's line ``measured_ms = a * lut_sum_ms + b`` (least squares, calibration subnets)
  n_calibration, n_validation, passes, extra_passes, extra_pass_spread_pct, seed, sampling,
  band ({reference_ms, low, high} or null)
  metrics         {calibration|validation: {lut_sum|paper_line|calibrated|macs|params: METRICS}}
  metrics_by_origin  {calibration|validation: {origin: METRICS of the chosen model}}: e.g. how it
                  does on the held-out subnets from quick searches (frontier) against the band's
                  METRICS = latency_model.error_metrics: n, spearman, rmse_ms, mape_pct, rmspe_pct,
                  max_abs_err_ms, max_ape_pct, within_5_pct, within_10_pct, bias_ms
                  (macs / params: after their own linear fit, ``proxy_fits``)
  proxy_fits      {macs|params: {a, b}}
  targets         TARGETS and met: the chosen model's validation figures against them
  quiet_machine   reference block drift and load average, ok + reason (see quiet_machine_check)
  lut             {path, sha256, source, measured_blocks}: the LUT the fit belongs to
  round           1 (the calibration stage) or 2 (recalibrate: first_round {path, sha256} of the fit it
                  refits, searched {n, band, targets_ms} the subnets it added)
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


@dataclasses.dataclass(frozen=True)
class CalibrationFit:
    """The chosen model (and how it was chosen), the paper's line, and every predictor's figures."""

    selection: Selection
    paper_line: LinearFit
    proxy_fits: dict[str, LinearFit]
    metrics: dict  # {role: {predictor: error_metrics}}

    @property
    def model(self) -> LatencyModel:
        return self.selection.model


def fit_calibration(frame, catalog: BlockCatalog, block_ms: np.ndarray,
                    models: Sequence[str] = (PAPER_MODEL,)) -> CalibrationFit:
    """Choose and fit the latency model on the calibration rows of ``frame`` (columns role,
    median_ms, lut_sum_ms, macs, params, arch) and score every predictor on both roles."""
    genomes = subnet_genomes(frame, catalog)
    calib = (frame["role"] == "calibration").to_numpy()
    measured = frame["median_ms"].to_numpy(dtype=np.float64)
    selection = select_model(models, catalog, block_ms, genomes[calib], measured[calib])
    line = fit_linear(frame["lut_sum_ms"][calib], measured[calib])
    proxy_fits = {name: fit_linear(frame[name][calib].astype(np.float64), measured[calib]) for name in ("macs", "params")}
    estimates = {"lut_sum": frame["lut_sum_ms"].to_numpy(dtype=np.float64),
                 "paper_line": line(frame["lut_sum_ms"]),
                 "calibrated": selection.model.predict(catalog, block_ms, genomes),
                 **{name: fit(frame[name].astype(np.float64)) for name, fit in proxy_fits.items()}}
    metrics = {}
    for role in ROLES:
        rows = (frame["role"] == role).to_numpy()
        if rows.any():
            metrics[role] = {name: error_metrics(values[rows], measured[rows]) for name, values in estimates.items()}
    return CalibrationFit(selection, line, proxy_fits, metrics)


def metrics_by_origin(frame) -> dict:
    """The chosen model's figures (``calibrated_ms`` against ``median_ms``) per role and origin:
    the held-out bar is met on the band as a whole, this says where within it (e.g. on the
    subnets from quick searches). Tables from before the origin column: {}."""
    if "origin" not in frame:
        return {}
    out: dict = {}
    for (role, origin), rows in frame.groupby(["role", "origin"], sort=True):
        out.setdefault(role, {})[origin] = error_metrics(rows["calibrated_ms"].to_numpy(np.float64),
                                                         rows["median_ms"].to_numpy(np.float64))
    return out


def subnet_genomes(frame, catalog: BlockCatalog) -> np.ndarray:
    """The genomes of a calibration table's subnets (its ``arch`` JSON column), in ``catalog``'s space."""
    return np.stack([catalog.space.encode(catalog.space.from_json(text)) for text in frame["arch"]])


def targets_met(metrics: Mapping) -> dict:
    """The chosen model's held-out figures against ``TARGETS`` (each ``ok``, and all ``met``)."""
    calibrated = metrics.get("validation", {}).get("calibrated")
    if not calibrated:
        return {**TARGETS, "met": False, "reason": "no validation subnets"}
    checks = {"mape_pct": calibrated["mape_pct"] <= TARGETS["mape_pct"],
              "max_ape_pct": calibrated["max_ape_pct"] <= TARGETS["max_ape_pct"],
              "spearman": (calibrated["spearman"] or 0.0) >= TARGETS["spearman"],
              "within_5_pct": calibrated["within_5_pct"] >= TARGETS["within_5_pct"]}
    return {**TARGETS, "met": all(checks.values()), "failed": [k for k, ok in checks.items() if not ok]}


# --------------------------------------------------------------------------- measuring subnets
def export_subnets(choices: Sequence[SubnetChoice], folder: str | os.PathLike, space: SearchSpace,
                   profile: DeviceProfile, progress: bool = True) -> dict[str, Path]:
    """ONNX file of each subnet (``<arch_id>.onnx``, 1000-class head), exporting only missing ones."""
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
                    on_measured: Callable | None = None, access: DeviceAccess | None = None,
                    expected_runtime_version: str | None = None, yardstick_ms: float | None = None,
                    out: str | os.PathLike | None = None, job_name: str = "calibration") -> list[dict]:
    """Time every subnet end to end, with the LUT's reference block as drift yardstick.

    Same machinery as the LUT (``timing.profile_models``, on ``access``: this machine by
    default): shuffled, drift-checked, checkpointed to ``paths.subnet_timings`` and
    resumable. Returns its rows (the reference's included). ``yardstick_ms``: the LUT's
    paired-timing scale (None: the LUT was not timed in pairs); an access with a network
    yardstick (``location.PairedAccess``) times the subnets against the device's MobileNetV2
    instead. ``out``: the raw table (default ``paths.subnet_timings``; a further pass has its
    own); ``job_name``: the timing job's (a board's job folder; ``LutPaths.subnet_job``). The
    caller holds any machine-wide CPU lock.
    """
    space = space or SearchSpace()
    access = access or LocalDevice(profile)
    catalog = BlockCatalog(space, profile.resolution)
    reference = reference_block(catalog, reference_id, [])
    out = Path(out or paths.subnet_timings)
    key = check_same_code(out, resume)
    entries, open_fn = _subnet_entries(choices, reference, profile, paths, space, seed, progress)
    job = TimingJob(job_name, tuple(entries), reference.block_id, config, seed, check_every, drift_tolerance,
                    max_retries, drift_pause_s, {"space": space.version, "export_key": key},
                    expected_runtime_version=expected_runtime_version, yardstick_ms=yardstick_ms, whole_networks=True)
    return access.time(job, out, resume=resume, progress=progress, open_fn=open_fn, on_measured=on_measured)


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
CALIBRATION_COLUMNS = ["arch_id", "role", "origin", "median_ms", "pass_spread_pct", "passes", "p10_ms", "p90_ms",
                       "repeats", "stable", "drift_flag", "load_average", "lut_sum_ms", "paper_line_ms", "calibrated_ms",
                       "params", "macs", "arch"]
CALIBRATION_COLUMNS += _ROW_PROVENANCE


def calibration_frame(choices: Sequence[SubnetChoice], rows: Sequence[Mapping], lut_ms: np.ndarray,
                      catalog: BlockCatalog, device: str):
    """One row per subnet: its timing, raw LUT sum, params and MACs (``calibrated_ms`` NaN
    until a fit fills it). A subnet without a timing row or with a block missing from the
    LUT raises, naming it."""
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
        records.append({"arch_id": choice.arch.arch_id, "role": choice.role, "origin": choice.origin,
                        **{k: row.get(k) for k in ("median_ms", "p10_ms", "p90_ms", "repeats", "stable", "drift_flag",
                                                   "load_average")},
                        "pass_spread_pct": float(row.get("pass_spread_pct", 0.0)),
                        "passes": len(row.get("pass_medians_ms") or [row["median_ms"]]),
                        "lut_sum_ms": float(lut_sum[index]), "paper_line_ms": math.nan, "calibrated_ms": math.nan,
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
    * with paired timing (the device option ``paired_reference``) the drift is recorded, not
      judged: every timing is a ratio to the reference taken call by call;
    * load: with the wall clock, the median 1-minute load average of either run must stay
      below the machine's core count. The reference block (well under a millisecond)
      mostly runs between two preemptions even on a busy machine, so it can look steady
      while long calls (subnets, big blocks) are stretched; the load average sees that.
      The cpu clock does not count other processes' time, so load alone does not spoil it.
    """
    lut_reference = lut.provenance.get("reference") or {}
    subnet_reference = subnet_provenance.get("reference") or {}
    # Paired timings are ratios to the reference taken call by call: its own moves cancel and
    # are kept only as a record of how much the host's speed changed.
    paired = bool(((lut.provenance.get("settings") or {}).get("options") or {}).get("paired_reference"))
    if paired and lut_reference.get("baseline_ms") and subnet_reference.get("id") != lut_reference.get("id"):
        # Subnets timed against the network yardstick (location.Yardstick): nothing to compare,
        # nothing to judge either; the subnets' own reference checks stay in their table.
        return {"reference_id": lut_reference["id"], "subnet_reference_id": subnet_reference.get("id"),
                "paired": True, "ok": True, "reason": "", "clock": lut.provenance.get("clock", "wall")}
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
    reasons = ([f"the reference block moved {worst:.1%} (tolerance {tolerance:.0%})"]
               if worst > tolerance and not paired else [])
    reasons += ([f"load average {max(v for v in loads.values() if v is not None):.1f} on {cores} cores with the "
                 "wall clock"] if busy and clock == "wall" else [])
    return {"reference_id": lut_reference["id"], "lut_reference_ms": yardstick,
            "subnet_run_reference_ms": float(np.median(subnet_times)),
            "ratio": float(np.median(subnet_times)) / yardstick,
            "lut_max_deviation": max(abs(t / yardstick - 1.0) for t in lut_times),
            "subnet_run_max_deviation": max(abs(t / yardstick - 1.0) for t in subnet_times),
            "tolerance": tolerance, **loads, "cores": cores, "clock": clock, "paired": paired,
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
        if doc.get("extra_passes") and "passes" in self.frame:
            retimed = int((self.frame["passes"] > int(doc["passes"])).sum())
            lines.append(f"  {doc['passes']} passes; {doc['extra_passes']} more over the {retimed} of "
                         f"{len(self.frame)} subnets whose passes spread more than {doc['extra_pass_spread_pct']:g} %")
        for name, m in doc["metrics"].get("validation", {}).items():
            spearman = "  -  " if m["spearman"] is None else f"{m['spearman']:.3f}"  # None: one point
            lines.append(f"  {name:<10} spearman {spearman}  MAPE {m['mape_pct']:6.2f} %  max {m['max_ape_pct']:6.2f} %"
                         f"  within 5 % {m.get('within_5_pct', float('nan')):.0%}  RMSE {m['rmse_ms']:.3f} ms")
        by_origin = (doc.get("metrics_by_origin") or {}).get("validation", {})
        if len(by_origin) > 1:  # one origin: the lines above already say it
            lines.append("  calibrated, held out by origin: " + "; ".join(
                f"{origin} ({m['n']}): MAPE {m['mape_pct']:.2f} %, max {m['max_ape_pct']:.2f} %"
                for origin, m in by_origin.items()))
        quiet, targets = doc["quiet_machine"], doc["targets"]
        lines.append(f"  model {doc['model']['name']} (chosen by leave-one-out on the calibration subnets); targets "
                     f"(MAPE <= {TARGETS['mape_pct']} %, max <= {TARGETS['max_ape_pct']} %, spearman >= "
                     f"{TARGETS['spearman']}, within 5 % >= {TARGETS['within_5_pct']:.0%}): "
                     + ("met" if targets["met"] else f"NOT met ({', '.join(targets.get('failed', []))})")
                     + "; quiet machine: " + ("yes" if quiet.get("ok") else f"no ({quiet.get('reason')})"))
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class CalibrationSettings(SectionConfig):
    """params.yaml ``calibration:``. The defaults are the paper's (10 uniform subnets, one line);
    both params profiles choose the extensions (see the module docstring)."""

    section: ClassVar[str] = "calibration"

    n_calibration: int = PAPER_N_CALIBRATION
    n_validation: int = DEFAULT_N_VALIDATION
    seed: int = 0
    sampling: str = "uniform"
    band: tuple[float, float] = DEFAULT_BAND   # x the device's MobileNetV2 latency (sampling: band)
    outside: float = DEFAULT_OUTSIDE           # share of calibration subnets outside the band
    # Share of the band's subnets (both roles) from quick searches on the raw LUT sum
    # (subnet_sampling.Frontier): where searches land. 0: the band's tilted draws alone.
    frontier: float = 0.0
    models: tuple[str, ...] = (PAPER_MODEL,)   # candidates, simplest first (latency_model.MODELS)
    # TimingConfig fields for the subnets (None: the LUT's). A subnet's median is one data point
    # of the fit and of the held-out figures, so its own noise shows up in them undamped; a
    # block's noise averages out over the ~40 blocks of a subnet's sum.
    timing: Mapping[str, Any] | None = None
    # Passes over all subnets, each in its own shuffled order; a subnet's latency is the median
    # of its passes. The paper times each subnet once (1). A machine's disturbances last seconds,
    # longer than one subnet's timing, so repeats in one pass share them while passes minutes
    # apart do not (benchmarks/yardstick_noise.py: held-out MAPE 2.1-2.9 % per pass, 2.15 % and
    # a max of 6.2 instead of 10.8 % on the median of three).
    passes: int = 1
    # Further passes over the subnets whose ``passes`` disagree by more than
    # ``extra_pass_spread_pct`` (range / median of their medians); their latency is then the
    # median of all their passes. Chosen by the measurements' own spread, never by the fit's
    # error. A held-out subnet whose passes spread 5 % missed the fit by 8.4 % in run 23 and by
    # 3.2 % when timed twice more (benchmarks/README.md, "Extra passes where passes disagree").
    extra_passes: int = 0
    extra_pass_spread_pct: float = 4.0

    def __post_init__(self):
        if int(self.passes) < 1:
            raise ValueError(f"calibration.passes must be at least 1, not {self.passes!r}")
        object.__setattr__(self, "passes", int(self.passes))
        if int(self.extra_passes) < 0:
            raise ValueError(f"calibration.extra_passes must be 0 or more, not {self.extra_passes!r}")
        object.__setattr__(self, "extra_passes", int(self.extra_passes))
        if not float(self.extra_pass_spread_pct) >= 0:
            raise ValueError(f"calibration.extra_pass_spread_pct is a spread in % (0 or more), "
                             f"not {self.extra_pass_spread_pct!r}")
        object.__setattr__(self, "extra_pass_spread_pct", float(self.extra_pass_spread_pct))
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"calibration.sampling must be one of {SAMPLINGS}, not {self.sampling!r}")
        if not 0.0 <= float(self.frontier) <= 1.0:
            raise ValueError(f"calibration.frontier is a share in [0, 1], not {self.frontier!r}")
        if self.frontier and self.sampling != "band":
            raise ValueError(f"calibration.frontier fills the band: it needs sampling: band, not {self.sampling!r}")
        object.__setattr__(self, "frontier", float(self.frontier))
        for name in self.models:
            parse_model_name(name)
        object.__setattr__(self, "band", tuple(float(v) for v in self.band))
        object.__setattr__(self, "models", tuple(self.models))


@dataclasses.dataclass(frozen=True)
class RecalibrationSettings(SectionConfig):
    """params.yaml ``recalibration:``, the second calibration round (``recalibrate``). The
    default is the paper's single round: no subnets."""

    section: ClassVar[str] = "recalibration"

    # Subnets the accuracy predictor's searches pick (on the first round's fit), at targets evenly
    # spread over ``band``; alternately calibration and held out, the first one calibration.
    subnets: int = 0
    band: tuple[float, float] = DEFAULT_SEARCHED_BAND  # x the device's MobileNetV2 latency

    def __post_init__(self):
        if int(self.subnets) < 0:
            raise ValueError(f"recalibration.subnets must be 0 or more, not {self.subnets!r}")
        object.__setattr__(self, "subnets", int(self.subnets))
        band = tuple(float(v) for v in self.band)
        if len(band) != 2 or not 0 < band[0] < band[1]:
            raise ValueError(f"recalibration.band is [low, high] with 0 < low < high, not {self.band!r}")
        object.__setattr__(self, "band", band)

    def targets_ms(self, reference_ms: float) -> list[float]:
        """The searches' targets: ``subnets`` latencies evenly spread over the band (ends included)."""
        low, high = self.band
        return [float(v) for v in np.linspace(low, high, self.subnets) * reference_ms] if self.subnets else []


def calibrate(profile: DeviceProfile, paths: LutPaths | None = None, *, space: SearchSpace | None = None,
              n_calibration: int = PAPER_N_CALIBRATION, n_validation: int = DEFAULT_N_VALIDATION, seed: int = 0,
              sampling: str = "uniform", subnets: Sequence[SubnetChoice] | None = None, resume: bool = True,
              config: TimingConfig | None = None, check_every: int = 10, drift_tolerance: float = 0.10,
              max_retries: int = 2, drift_pause_s: float = 2.0, runtime_version: str | None = None,
              progress: bool = True, figure: bool = True, settings: CalibrationSettings | None = None,
              reference_ms: float | None = None, access: DeviceAccess | None = None) -> CalibrationReport:
    """Measure subnets end to end on the device, choose and fit the LUT's calibration, write the outputs.

    Reads ``paths.lut`` (it must match ``profile``; see ``LookupTable.check_matches``),
    chooses subnets (``settings``, or the loose arguments; or takes ``subnets``), times them
    on ``access`` (default: this machine) with the LUT's timing configuration unless
    ``config`` is given, and writes ``paths.calibration``, ``paths.fit`` and (``figure``)
    ``paths.figure``. ``reference_ms`` (the device's MobileNetV2 latency) places the band
    of the ``band`` sampling. The caller holds any CPU lock.
    """
    settings = settings or CalibrationSettings(n_calibration, n_validation, seed, sampling)
    paths = paths or LutPaths.for_device(profile.name)
    space = space or SearchSpace()
    access = access or LocalDevice(profile)
    lut = LookupTable.read(paths.lut)
    lut.check_matches(profile, runtime_version)
    catalog = BlockCatalog(space, profile.resolution)
    lut_ms = lut.block_ms(catalog)
    band, given = None, subnets is not None
    if not given:
        subnets, band = _choose(settings, space, catalog, lut, reference_ms)
    lacking = _blocks_missing_from(lut_ms, catalog, [c.arch for c in subnets])
    if lacking:  # fail before minutes of measuring, not after
        raise LutError(f"{paths.lut} lacks {len(lacking)} blocks the subnets use (e.g. {', '.join(lacking[:5])}); "
                       f"complete it first (scan-edge lut build --device {profile.name} --resume)")
    config = config or TimingConfig.from_dict(settings.timing or lut.provenance.get("timing"))
    rows = time_in_passes(subnets, profile, paths, lut, access, space=space, passes=settings.passes, seed=settings.seed,
                          config=config, resume=resume, progress=progress, extra=ExtraPasses.of(settings),
                          check_every=check_every, drift_tolerance=drift_tolerance, max_retries=max_retries,
                          drift_pause_s=drift_pause_s)
    frame = calibration_frame(subnets, rows, lut_ms, catalog, profile.name)
    described = {"round": 1, "n_calibration": _count(subnets, "calibration"),
                 "n_validation": _count(subnets, "validation"), "passes": settings.passes,
                 "extra_passes": settings.extra_passes, "extra_pass_spread_pct": settings.extra_pass_spread_pct,
                 "seed": settings.seed,
                 "sampling": "given" if given else settings.sampling,
                 "frontier": None if given else settings.frontier,
                 "band": None if band is None else dataclasses.asdict(band), "models": list(settings.models)}
    return finish_calibration(frame, lut, read_provenance(paths.subnet_timings), profile, paths, described,
                              drift_tolerance, figure, settings.models, space)


def recalibrate(profile: DeviceProfile, paths: LutPaths, subnets: Sequence[SubnetChoice], *,
                space: SearchSpace | None = None, access: DeviceAccess | None = None, resume: bool = True,
                progress: bool = True, figure: bool = True, searched: Mapping | None = None,
                **measure_options) -> CalibrationReport:
    """The second calibration round: ``subnets`` (the predictor's searched ones, each with its
    role) timed as the first round timed its own (its passes, seed and timing, on ``access``),
    added to the first round's table, and the model chosen and fitted again from the first
    round's candidates. Writes ``paths.second_round()``'s table, fit and figure; the first
    round's files (``paths``) are only read. No subnets: the first round's fit, refitted on its
    own table (the same model), so that searches always have a second round to read.
    ``searched``: how the subnets were chosen, recorded in the fit file; ``measure_options``:
    ``measure_subnets``'s drift settings. The caller holds any CPU lock.
    """
    paths, second = paths.first_round(), paths.second_round()
    space = space or SearchSpace()
    access = access or LocalDevice(profile)
    first_fit = read_fit(paths.fit)
    lut = LookupTable.read(paths.lut)
    if (first_fit.get("lut") or {}).get("sha256") != file_sha256(paths.lut):
        raise LutError(f"{paths.fit} was fitted on another version of {paths.lut}: calibrate it again first "
                       f"(scan-edge stage calibration --device {profile.name})")
    first_table = read_parquet(paths.calibration)
    repeated = sorted({c.arch.arch_id for c in subnets} & set(first_table["arch_id"]))
    if repeated:
        raise ValueError(f"{len(repeated)} of the second round's subnets were measured in the first round "
                         f"(e.g. {repeated[:3]}): each subnet is one point of the fit")
    catalog = BlockCatalog(space, profile.resolution)
    lut_ms = lut.block_ms(catalog)
    frame, provenance, quiet = first_table.reindex(columns=CALIBRATION_COLUMNS), {}, first_fit.get("quiet_machine")
    if subnets:
        config = TimingConfig.from_dict(first_fit.get("timing") or lut.provenance.get("timing"))
        rows = time_in_passes(subnets, profile, second, lut, access, space=space, passes=int(first_fit["passes"]),
                              seed=int(first_fit.get("seed") or 0), config=config, resume=resume, progress=progress,
                              extra=ExtraPasses.of(first_fit), **measure_options)
        added = calibration_frame(subnets, rows, lut_ms, catalog, profile.name)
        frame = pd.concat([frame, added], ignore_index=True)
        provenance, quiet = read_provenance(second.subnet_timings), None
    described = {key: first_fit.get(key) for key in ("passes", "extra_passes", "extra_pass_spread_pct", "seed",
                                                      "sampling", "frontier", "band", "models")}
    described.update({"round": 2, "n_calibration": int((frame["role"] == "calibration").sum()),
                      "n_validation": int((frame["role"] == "validation").sum()),
                      "first_round": {"path": str(paths.fit), "sha256": file_sha256(paths.fit)},
                      "searched": {"n": len(subnets), **(searched or {})}})
    carried = {key: first_fit.get(key) for key in ("identity", "timing", "location", "executor", "machine")}
    return finish_calibration(frame, lut, {**carried, **provenance}, profile, second, described,
                              figure=figure, models=first_fit.get("models") or (PAPER_MODEL,), space=space,
                              quiet_machine=quiet)


def current_fit(paths: LutPaths) -> Path:
    """The fit a search reads: the second round's (``recalibrate``) when it refits the first
    round's fit as it is now, else the first round's. A second round left from an earlier
    first round (e.g. ``scan-edge lut calibrate`` run by hand since) is not used, with a warning."""
    first, second = paths.first_round(), paths.second_round()
    if not second.fit.exists():
        return first.fit
    made_from = (read_json(second.fit).get("first_round") or {}).get("sha256")
    if first.fit.exists() and made_from == file_sha256(first.fit):
        return second.fit
    warnings.warn(f"{second.fit} refits another version of {first.fit}; using {first.fit} (its second round: "
                  f"scan-edge stage recalibration --device {paths.device})", stacklevel=2)
    return first.fit


@dataclasses.dataclass(frozen=True)
class ExtraPasses:
    """``passes`` more passes over the subnets whose first passes spread more than ``spread_pct``
    (``CalibrationSettings.extra_passes``); ``passes`` 0: none."""

    passes: int = 0
    spread_pct: float = CalibrationSettings.extra_pass_spread_pct

    @classmethod
    def of(cls, settings) -> ExtraPasses:
        """From ``CalibrationSettings`` or a fit file's description (a fit written before the
        option existed had none)."""
        get = settings.get if isinstance(settings, Mapping) else lambda key: getattr(settings, key)
        spread = get("extra_pass_spread_pct")
        return cls(int(get("extra_passes") or 0), cls.spread_pct if spread is None else float(spread))

    def subnets_to_retime(self, subnets: Sequence[SubnetChoice], rows: Sequence[Mapping]) -> list[SubnetChoice]:
        """The subnets whose passes so far disagree by more than ``spread_pct`` (in their order)."""
        spread = {row["id"]: float(row.get("pass_spread_pct", 0.0)) for row in rows}
        return [c for c in subnets if spread.get(c.id, 0.0) > self.spread_pct] if self.passes else []


def time_in_passes(subnets: Sequence[SubnetChoice], profile: DeviceProfile, paths: LutPaths, lut: LookupTable,
                   access: DeviceAccess, *, space: SearchSpace, passes: int, seed: int, config: TimingConfig,
                   resume: bool = True, progress: bool = True, out_of_pass: Callable[[int], Path] | None = None,
                   compile_once: bool = True, extra: ExtraPasses = ExtraPasses(), **measure_options) -> list[dict]:
    """The subnets timed as the calibration times them: ``measure_subnets`` against the LUT's
    reference and yardstick on ``access``, ``passes`` passes each in its own order (seed +
    pass), then ``extra.passes`` more over the subnets whose passes disagree
    (``ExtraPasses.subnets_to_retime``); one row per subnet with the median of its passes
    (``combine_passes``) and ``passes``, how many it had. Pass ``i`` is written to
    ``out_of_pass(i)`` (default ``paths.subnet_timings_pass``), so an interrupted pass resumes;
    ``compile_once``: OpenVINO's later passes load the first pass's compiled models
    (``compiled_model_cache``)."""
    out_of_pass = out_of_pass or paths.subnet_timings_pass
    reference = lut.provenance.get("reference") or {}

    def one_pass(index: int, choices: Sequence[SubnetChoice]) -> list[dict]:
        return measure_subnets(choices, profile, paths, reference["id"], space=space, resume=resume, seed=seed + index,
                               config=config, progress=progress, access=access,
                               expected_runtime_version=None if access.location == "local"
                               else lut.identity.get("runtime_version"),
                               yardstick_ms=reference.get("yardstick_ms"), out=out_of_pass(index),
                               job_name=paths.subnet_job(index), **measure_options)

    with compiled_model_cache(profile, access, paths, enabled=compile_once and passes + extra.passes > 1):
        rows = [one_pass(index, subnets) for index in range(passes)]
        retimed = extra.subnets_to_retime(subnets, combine_passes(rows))
        if retimed:
            rows += [one_pass(passes + index, retimed) for index in range(extra.passes)]
    return combine_passes(rows)


def _choose(settings: CalibrationSettings, space: SearchSpace, catalog: BlockCatalog, lut: LookupTable,
            reference_ms: float | None) -> tuple[list[SubnetChoice], Band | None]:
    band = raw_sum = frontier = None
    if settings.sampling != "uniform":
        block_ms = lut.require_complete(catalog)
        raw_sum = lambda genomes: catalog.sum_table(block_ms, genomes)  # noqa: E731 - a local shorthand
        frontier = Frontier(catalog, block_ms, settings.frontier) if settings.frontier else None
    if settings.sampling == "band":
        if reference_ms is None:
            raise ValueError("band sampling needs the device's MobileNetV2 latency (the baselines stage); "
                             "or set calibration.sampling: uniform")
        band = Band(float(reference_ms), *settings.band)
    subnets = choose_subnets(space, settings.n_calibration, settings.n_validation, settings.seed, settings.sampling,
                             raw_sum, band, settings.outside, frontier=frontier)
    return subnets, band


def _count(subnets: Sequence[SubnetChoice], role: str) -> int:
    return sum(c.role == role for c in subnets)


def finish_calibration(frame, lut: LookupTable, subnet_provenance: Mapping, profile: DeviceProfile, paths: LutPaths,
                       settings: Mapping, drift_tolerance: float = 0.10, figure: bool = True,
                       models: Sequence[str] = (PAPER_MODEL,), space: SearchSpace | None = None,
                       quiet_machine: Mapping | None = None) -> CalibrationReport:
    """Choose, fit and score the model; write the calibration table, the fit file and the figure.
    ``space``: the one the LUT and the subnets belong to (default Table 2). ``quiet_machine``:
    the check as already made (a second round that timed nothing keeps the first round's)."""
    catalog = BlockCatalog(space or SearchSpace(), profile.resolution)
    block_ms = lut.block_ms(catalog)
    result = fit_calibration(frame, catalog, np.nan_to_num(block_ms, nan=0.0), models)
    frame["paper_line_ms"] = result.paper_line(frame["lut_sum_ms"])
    frame["calibrated_ms"] = result.model.predict(catalog, np.nan_to_num(block_ms, nan=0.0),
                                                  subnet_genomes(frame, catalog))
    document = {
        "kind": FIT_KIND, "device": profile.name, "model": result.model.to_dict(),
        "selection": result.selection.to_dict(), **result.paper_line.to_dict(), **settings, "metrics": result.metrics,
        "metrics_by_origin": metrics_by_origin(frame),
        "proxy_fits": {k: v.to_dict() for k, v in result.proxy_fits.items()},
        "targets": targets_met(result.metrics),
        "quiet_machine": dict(quiet_machine) if quiet_machine is not None
        else quiet_machine_check(lut, subnet_provenance, frame, drift_tolerance),
        "lut": {"path": str(lut.path), "sha256": file_sha256(lut.path), "source": lut.provenance.get("source"),
                "measured_blocks": lut.provenance.get("measured_blocks")},
        "identity": subnet_provenance.get("identity"), "timing": subnet_provenance.get("timing"),
        "location": subnet_provenance.get("location", "local"), "executor": subnet_provenance.get("executor"),
        "machine": subnet_provenance.get("machine") or machine_fingerprint(),
        "code_version": code_version(), "created_at": utc_now(),
    }
    document = _json_safe(document)
    write_parquet(paths.calibration, frame, document)
    write_json(paths.fit, document)
    if figure:
        plot_calibration({profile.name: frame}, paths.figure)
    return CalibrationReport(frame, document, paths)


def fitted_model(fit: Mapping) -> LatencyModel:
    """The model of a fit file (files from before the model field: the paper's line a, b)."""
    if isinstance(fit.get("model"), Mapping):
        return LatencyModel.from_dict(fit["model"])
    return LatencyModel.paper_line(fit["a"], fit["b"])


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
    fig = Figure(figsize=(4.6 * len(frames), 4.4))  # not pyplot: no global backend, nothing to close
    axes = fig.subplots(1, len(frames), squeeze=False)
    for ax, (device, frame) in zip(axes[0], frames.items()):
        _plot_device(ax, device, frame)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    return path


def _plot_device(ax, device: str, frame) -> None:
    measured = frame["median_ms"].to_numpy()
    validation = (frame["role"] == "validation").to_numpy()
    curves = [("lut_sum_ms", "LUT sum", "tab:orange", "X"), ("paper_line_ms", "paper's line", "tab:blue", "s"),
              ("calibrated_ms", "calibrated LUT", "tab:green", "o")]
    for column, label, color, marker in [c for c in curves if c[0] in frame]:
        estimate = frame[column].to_numpy()
        scored = validation if validation.any() else np.ones_like(validation)
        m = error_metrics(estimate[scored], measured[scored])
        ax.scatter(measured[validation], estimate[validation], s=22, c=color, marker=marker, linewidths=0,
                   label=f"{label}: ρ={m['spearman']:.3f}, MAPE={m['mape_pct']:.1f}%")
        ax.scatter(measured[~validation], estimate[~validation], s=44, c=color, marker=marker,
                   edgecolors="black", linewidths=0.9)
    shown = np.concatenate([measured, *(frame[c[0]].to_numpy() for c in curves if c[0] in frame)])
    limits = [shown.min() * 0.95, shown.max() * 1.05]
    ax.plot(limits, limits, "--", color="gray", linewidth=1, label="y = x")
    ax.set(xlim=limits, ylim=limits, xlabel="measured latency (ms)", ylabel="estimated latency (ms)", title=device)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", title="held-out subnets (outlined: calibration)", title_fontsize=7)
