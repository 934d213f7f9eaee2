"""Per-device latency lookup tables (paper §5.3): every block of the search space, timed alone.

§5.3 profiles "all possible blocks in every stage" on the target device: the 568 blocks and
4 classifier heads of :class:`~nas_core.block_catalog.BlockCatalog`, each with its real input
shape at the device profile's resolution. Each block is built alone
(:func:`nas_core.blocks.build_block`), exported to ONNX once into a cache shared by all
devices, and timed with the runtime layer's ``timing.profile_models``: shuffled order, a
reference block re-timed every ``check_every`` blocks (drift re-measuring), atomic
checkpoints and resume. A call's duration is read from the profile's clock (``CLOCKS``:
wall time by default; process CPU time for single-thread profiles on a shared machine).
Summing a subnet's block latencies estimates its latency; the calibration
(``nas_core.latency.calibration``) corrects that sum with a linear fit.

Files (``nas_core.layout.LutPaths``; default root ``data/lut``)::

    <device>.parquet                 the LUT (schema below)
    _work/<device>/timings.parquet   raw, resumable timing table (``timing``'s schema)
    _work/<device>/timings.passN.parquet   revisit passes over the slowest blocks (``passes`` > 1)
    _work/onnx/r<res>_b<batch>_<key>/blocks/*.onnx   exported blocks, shared by devices
    _work/onnx/r<res>_b<batch>_<key>/subnets/*.onnx  exported calibration subnets; <key>
                                     hashes the code that builds them (``export_key``), so
                                     an edited block never reuses a stale export

LUT table (one row per measured block, catalog order)
-----------------------------------------------------
===================  =====  =================================================================
column               type   meaning
===================  =====  =================================================================
block_id             str    catalog id, e.g. ``s3/ffn/w108/unified/k5/e3/gelu``
kind                 str    stem | ffn | embed | mhsa | embed_attn | head
stage                i64    stage of the block's output (stem 1, embed k -> k+1, head 4)
in_width, out_width  i64    channels in / out (head: out = 1000 classes)
in_resolution        i64    input height = width
input_shape          str    the timed input, e.g. ``1x108x14x14``
ffn_type             str    unified | fused ("" for other kinds)
kernel, expansion    i64    FFN kernel and expansion (0 for other kinds)
value_ratio          i64    MHSA value ratio (0 for other kinds)
act                  str    gelu | relu ("" for embed and head)
median_ms            f64    median latency of one call: the number the estimator sums
p10_ms, p90_ms       f64    10th / 90th percentile
median_ci_low_ms,    f64    95 % confidence interval of the median from its own timed calls
median_ci_high_ms           (``timing.median_ci``; NaN in tables timed before it was recorded)
mean_ms, min_ms      f64    mean and fastest call
repeats              i64    timed calls behind the statistics
stable               bool   the median converged before the timing caps
attempts             i64    > 1 when reference drift forced a re-measurement
drift_flag           bool   the reference still drifted after the last attempt
reference_ratio      f64    reference median at the check after this row / its baseline
load_average         f64    1-minute load average when timed (> threads: others shared the CPU)
params, macs         i64    the block's parameters and multiply-accumulates
device ... timestamp        provenance per row: device, backend, runtime, runtime_version,
                            provider, precision, precision_actual, threads, batch_size,
                            resolution, machine_id, code_version, timestamp (as ``timing``)
===================  =====  =================================================================

Parquet metadata (``nas_core.io.read_provenance``): ``kind`` = ``latency_lut``, ``space``,
``source`` (``host``, or ``bundle`` when measured on a remote device), ``device``,
``identity`` (the settings + runtime + machine the timings were made under), ``clock``
(``wall`` or ``cpu``, see ``CLOCKS``), ``settings``,
``machine`` (fingerprint), ``timing`` (TimingConfig), ``reference`` (id, baseline_ms),
``reference_checks``, ``catalog_blocks``, ``measured_blocks``, ``complete``,
``code_version``, ``created_at``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from nas_core.block_catalog import BlockCatalog, BlockSpec
from nas_core.blocks import build_block
from nas_core.io import code_version, read_parquet, read_provenance, utc_now, write_parquet
from nas_core.latency.devices import DeviceProfile, check_usable
from nas_core.latency.export import ONNX_OPSET, export_onnx
from nas_core.latency.location import DeviceAccess, LocalDevice, TimingJob, Yardstick
from nas_core.latency.measure import TorchSession, safe_file_stem
from nas_core.latency.timing import ModelEntry, TimingConfig, openvino_model_cache
from nas_core.layout import DATA, LutPaths
from nas_core.search_space import SearchSpace

LUT_KIND = "latency_lut"
DEFAULT_ROOT = DATA.lut_dir
# A mid-sized stage-2 FFN (~0.5-1 ms on a CPU core): long enough for a steady median, short
# enough that re-timing it every ten blocks costs little. Any catalog block works.
DEFAULT_REFERENCE_BLOCK = "s2/ffn/w48/unified/k3/e3/relu"
# What must agree between a LUT and the profile that reads it (besides the runtime).
PROFILE_KEYS = ("backend", "provider", "precision", "threads", "batch_size", "resolution")
# What a timed call's duration is read from (``options["clock"]`` of a profile). ``wall``
# (the default, the paper's latency) is what a device's user waits. ``cpu`` (the process's
# CPU time) leaves out the time the scheduler gave other processes, so a single-thread CPU
# profile measured on a busy shared machine reads as on a quiet one: there a long call
# (a subnet, a big block) is preempted many times while a short one often is not, which
# bends wall-clock LUT sums away from measured subnets. CPU time is latency only for
# single-thread CPU work whose runtime does not spin other threads.
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}
# The code that decides what an exported block or subnet is: its hash keys the export cache.
_EXPORT_SOURCES = ("blocks.py", "subnet.py", "search_space.py", "latency/export.py")

BlockFilter = Callable[[BlockSpec], bool] | str | Iterable[str] | None


class LutError(ValueError):
    """A LUT, calibration or profiling result that cannot be used for the requested device."""


def export_key() -> str:
    """Hash of what decides an exported model: the code that builds blocks and subnets, the
    exporter, the torch version and the ONNX opset."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha1(f"torch {torch.__version__} opset {ONNX_OPSET}".encode())
    for name in _EXPORT_SOURCES:
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:10]


def export_folder(exports_root: str | os.PathLike, resolution: int, batch_size: int) -> Path:
    """The export cache for one input size, keyed by ``export_key`` so that edited code never
    reuses stale files."""
    return Path(exports_root) / f"r{resolution}_b{batch_size}_{export_key()}"


def check_same_code(raw_path: Path, resume: bool) -> str:
    """Refuse to resume timings of models that the current code would build differently."""
    key = export_key()
    if resume and raw_path.exists():
        before = read_provenance(raw_path).get("export_key")
        if before is not None and before != key:
            raise LutError(f"{raw_path} holds timings of models built by other code (export key {before}, now "
                           f"{key}: blocks.py, subnet.py or the exporter changed); start over (resume=False / "
                           "--no-resume)")
    return key


def profile_clock(profile: DeviceProfile) -> str:
    """The clock ``profile`` is timed with (``options["clock"]``, default ``wall``)."""
    name = profile.options.get("clock", "wall")
    if name not in CLOCKS:
        raise LutError(f"device {profile.name!r}: clock {name!r} is not one of {', '.join(CLOCKS)}")
    if name == "cpu" and (profile.threads != 1 or profile.uses_gpu or profile.backend == "tensorrt"):
        raise LutError(f"device {profile.name!r}: the cpu clock reads latency only for single-thread CPU profiles")
    return name


# --------------------------------------------------------------------------- choosing blocks
def select_blocks(catalog: BlockCatalog, block_filter: BlockFilter = None, limit: int | None = None) -> list[BlockSpec]:
    """The catalog blocks to time, in catalog order.

    ``block_filter``: None (all), a glob on block ids (``"s3/mhsa/*"``), an iterable of
    exact block ids (unknown ids raise, naming them), or a predicate on ``BlockSpec``.
    ``limit`` keeps the first ``limit`` of the selection (quick partial tables).
    """
    if block_filter is None:
        chosen = list(catalog.blocks)
    elif isinstance(block_filter, str):
        chosen = [b for b in catalog.blocks if fnmatch.fnmatchcase(b.block_id, block_filter)]
    elif callable(block_filter):
        chosen = [b for b in catalog.blocks if block_filter(b)]
    else:
        wanted = set(block_filter)
        unknown = sorted(wanted - set(catalog.index))
        if unknown:
            raise LutError(f"{len(unknown)} block ids are not in the catalog, e.g. {unknown[:3]}")
        chosen = [b for b in catalog.blocks if b.block_id in wanted]
    if limit is not None:
        chosen = chosen[: max(0, int(limit))]
    if not chosen:
        raise LutError(f"no catalog block matches the filter {block_filter!r}")
    return chosen


def blocks_of(catalog: BlockCatalog, archs: Iterable) -> list[str]:
    """Ids of the distinct blocks the architectures use (e.g. a LUT just big enough for them)."""
    ids: set[str] = set()
    for arch in archs:
        ids.update(catalog.block_ids(arch))
    return sorted(ids, key=catalog.index.__getitem__)


def reference_block(catalog: BlockCatalog, reference_id: str | None, chosen: Sequence[BlockSpec]) -> BlockSpec:
    """The drift reference: ``reference_id``, else the default block, else the first chosen."""
    if reference_id is not None:
        if reference_id not in catalog.index:
            raise LutError(f"reference block {reference_id!r} is not in the catalog")
        return catalog.blocks[catalog.index[reference_id]]
    if DEFAULT_REFERENCE_BLOCK in catalog.index:
        return catalog.blocks[catalog.index[DEFAULT_REFERENCE_BLOCK]]
    return chosen[0]  # a custom search space without the default block


def block_input_shape(block: BlockSpec, batch_size: int) -> tuple[int, ...]:
    return (int(batch_size), *block.input_shape[1:])


# --------------------------------------------------------------------------- exporting
def export_blocks(blocks: Sequence[BlockSpec], folder: str | os.PathLike, space: SearchSpace, batch_size: int = 1,
                  progress: bool = True) -> dict[str, Path]:
    """ONNX file of each block in ``folder`` (``<safe id>.onnx``), exporting only missing ones.

    Exports are atomic, so a file that exists is complete: an interrupted export resumes
    where it stopped, and a second device at the same resolution re-uses every file.
    """
    folder = Path(folder)
    paths = {b.block_id: folder / f"{safe_file_stem(b.block_id)}.onnx" for b in blocks}
    missing = [b for b in blocks if not paths[b.block_id].exists()]
    for count, block in enumerate(missing, start=1):
        export_onnx(build_block(block, space.spec), block_input_shape(block, batch_size), paths[block.block_id])
        if progress and (count % 50 == 0 or count == len(missing)):
            print(f"exported {count}/{len(missing)} blocks to {folder}", file=sys.stderr, flush=True)
    return paths


def _torch_block_opener(catalog: BlockCatalog, seed: int):
    """``open_fn`` for the eager torch backend: the block module itself, no ONNX."""
    def open_block(entry: ModelEntry, settings: Mapping):
        block = catalog.blocks[catalog.index[entry.id]]
        return TorchSession(build_block(block, catalog.space.spec), entry.input_shape, settings, seed)
    return open_block


# --------------------------------------------------------------------------- building a LUT
# Revisit passes. A block is timed in one window of a fraction of a second, and this host's
# speed moves over seconds; pairing each call with the small reference block cancels much of it
# for small blocks but not for the slow ones, whose time is memory-bound where the reference's
# is not (two LUT builds, OpenVINO: median |move| 3.5 % over all blocks, 10.9 % over the slowest
# quarter). The slow blocks carry most of a subnet's sum, so they are the ones worth timing again
# in later windows: the median of three passes over them costs a fraction of a whole second pass.
DEFAULT_REVISIT_SHARE = 0.3


def build_lut(profile: DeviceProfile, paths: LutPaths | None = None, *, space: SearchSpace | None = None,
              block_filter: BlockFilter = None, limit: int | None = None, reference_id: str | None = None,
              resume: bool = True, seed: int = 0, config: TimingConfig | None = None, check_every: int = 10,
              drift_tolerance: float = 0.10, max_retries: int = 2, drift_pause_s: float = 2.0,
              progress: bool = True, on_measured: Callable | None = None, access: DeviceAccess | None = None,
              passes: int = 1, revisit_share: float = DEFAULT_REVISIT_SHARE):
    """Time the chosen blocks on ``profile`` and write the LUT to ``paths.lut``; returns it.

    ``access`` is where the blocks are timed (``nas_core.latency.location``; default: this
    machine). A board's blocks go out as one job (``lut``) and its table comes back; the
    LUT then records ``source`` = the device's location.

    The reference block is always timed (it is the drift yardstick and the calibration's
    link to this run). ``resume`` continues from ``paths.block_timings`` (a table made
    with other settings, runtime version or machine raises instead of mixing); rows of
    blocks outside this call's selection that an earlier run measured are kept.
    ``on_measured(id, TimingResult)`` is passed to ``profile_models`` (tests interrupt
    with it). ``passes`` > 1 re-times the slowest ``revisit_share`` of the blocks in that
    many passes in all (``_revisit_slowest``). The caller holds any machine-wide CPU lock.
    """
    paths = paths or LutPaths.for_device(profile.name)
    space = space or SearchSpace()
    access = access or LocalDevice(profile)
    catalog = BlockCatalog(space, profile.resolution)
    chosen = select_blocks(catalog, block_filter, limit)
    reference = reference_block(catalog, reference_id, chosen)
    if reference not in chosen:
        chosen = [reference, *chosen]
    key = check_same_code(paths.block_timings, resume)
    entries, open_fn = _block_entries(chosen, profile, paths, space, catalog, seed, progress)
    job = TimingJob("lut", tuple(entries), reference.block_id, config, seed, check_every, drift_tolerance,
                    max_retries, drift_pause_s, {"space": space.version, "export_key": key})
    with compiled_model_cache(profile, access, paths, enabled=passes > 1):
        rows = access.time(job, paths.block_timings, resume=resume, progress=progress, open_fn=open_fn,
                           on_measured=on_measured)
        if passes > 1:
            rows = _revisit_slowest(rows, job, paths, access, passes, revisit_share, resume, progress, open_fn)
    source = "host" if access.location == "local" else access.location
    frame, provenance = assemble_lut(rows, read_provenance(paths.block_timings), catalog, profile, source=source)
    provenance["passes"] = {"passes": passes, "revisit_share": revisit_share if passes > 1 else None}
    write_parquet(paths.lut, frame, provenance)
    frame.attrs["provenance"] = provenance
    return frame


def slowest_block_ids(rows: Sequence[Mapping], share: float, keep_out: Iterable[str] = ()) -> list[str]:
    """The ids of the slowest ``share`` of ``rows`` by median (at least one when any), ``keep_out`` excepted."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"lut.revisit_share must be in (0, 1], not {share!r}")
    keep_out = set(keep_out)
    candidates = sorted((r for r in rows if r["id"] not in keep_out), key=lambda r: -float(r["median_ms"]))
    return [r["id"] for r in candidates[:max(1, round(share * len(candidates)))]] if candidates else []


def _revisit_slowest(rows, job: TimingJob, paths: LutPaths, access: DeviceAccess, passes: int, share: float,
                     resume: bool, progress: bool, open_fn) -> list[dict]:
    """Passes 2..``passes`` over the slowest blocks of the first, each in its own order and on
    the first pass's scale; a revisited block's median is the median of its passes."""
    slow = set(slowest_block_ids(rows, share, keep_out=[job.reference_id]))
    scale = (read_provenance(paths.block_timings).get("reference") or {}).get("yardstick_ms")
    entries = tuple(e for e in job.entries if e.id in slow or e.id == job.reference_id)
    revisit = dataclasses.replace(job, entries=entries, yardstick_ms=scale)
    later = [access.time(dataclasses.replace(revisit, name=f"lut-pass{index + 1}", seed=job.seed + index),
                         paths.block_timings_pass(index), resume=resume, progress=progress, open_fn=open_fn)
             for index in range(1, passes)]
    return combine_passes([rows, *later])


@contextlib.contextmanager
def compiled_model_cache(profile: DeviceProfile, access: DeviceAccess, paths: LutPaths,
                         enabled: bool = True) -> Iterator[None]:
    """Models timed in several passes on this machine's OpenVINO are compiled once: the
    compiled blobs wait in ``paths.work/openvino_cache`` for the later passes and are removed
    at the end (``timing.openvino_model_cache``). Other runtimes and boards: nothing to do."""
    if not enabled or profile.backend != "openvino" or access.location != "local":
        yield
        return
    folder = paths.work / "openvino_cache"
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted run's blobs: stale or not, recompiled
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with openvino_model_cache(folder):
            yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def combine_passes(passes: Sequence[Sequence[Mapping]]) -> list[dict]:
    """One row per model from several passes' rows: the first pass's row with ``median_ms``
    the median of the passes' medians and ``pass_spread_pct`` their range (% of it). A model
    missing from a pass keeps the passes that have it."""
    medians: dict[str, list[float]] = {}
    first: dict[str, dict] = {}
    for rows in passes:
        for row in rows:
            first.setdefault(row["id"], dict(row))
            medians.setdefault(row["id"], []).append(float(row["median_ms"]))
    combined = []
    for model_id, row in first.items():
        values = medians[model_id]
        median = float(np.median(values))
        combined.append({**row, "median_ms": median, "pass_medians_ms": values,
                         "pass_spread_pct": 100.0 * (max(values) - min(values)) / median if median > 0 else 0.0})
    return combined


def yardstick(profile: DeviceProfile, paths: LutPaths, space: SearchSpace | None = None) -> Yardstick | None:
    """The scale of ``profile``'s paired timings: its LUT's reference block and the ms it
    stood for (None: no LUT, a LUT timed without pairs, or a torch profile, which has no
    ONNX file to pair with). The block's ONNX file is exported again if it is missing."""
    if profile.backend == "torch" or not paths.lut.exists():
        return None
    reference = read_provenance(paths.lut).get("reference") or {}
    if reference.get("yardstick_ms") is None:
        return None
    space = space or SearchSpace()
    block = reference_block(BlockCatalog(space, profile.resolution), reference["id"], [])
    folder = export_folder(paths.exports, profile.resolution, profile.batch_size) / "blocks"
    onnx = export_blocks([block], folder, space, profile.batch_size, progress=False)
    entry = ModelEntry(block.block_id, onnx[block.block_id], block_input_shape(block, profile.batch_size))
    return Yardstick(entry, float(reference["yardstick_ms"]))


def _block_entries(blocks, profile, paths, space, catalog, seed, progress):
    """Model entries for ``profile_models`` and the opener that goes with them."""
    if profile.backend == "torch":
        entries = [ModelEntry(b.block_id, None, block_input_shape(b, profile.batch_size)) for b in blocks]
        return entries, _torch_block_opener(catalog, seed)
    folder = export_folder(paths.exports, profile.resolution, profile.batch_size) / "blocks"
    onnx = export_blocks(blocks, folder, space, profile.batch_size, progress)
    entries = [ModelEntry(b.block_id, onnx[b.block_id], block_input_shape(b, profile.batch_size)) for b in blocks]
    return entries, None  # None: profile_models opens the ONNX file on the profile's runtime


_BLOCK_COLUMNS = ["block_id", "kind", "stage", "in_width", "out_width", "in_resolution", "input_shape", "ffn_type",
                  "kernel", "expansion", "value_ratio", "act"]
_TIMING_COLUMNS = ["median_ms", "p10_ms", "p90_ms", "median_ci_low_ms", "median_ci_high_ms", "mean_ms", "min_ms",
                   "repeats", "stable", "attempts", "drift_flag", "reference_ratio", "load_average"]
_PROVENANCE_COLUMNS = ["device", "backend", "runtime", "runtime_version", "provider", "precision",
                       "precision_actual", "threads", "batch_size", "resolution", "machine_id", "code_version",
                       "timestamp"]
LUT_COLUMNS = _BLOCK_COLUMNS + _TIMING_COLUMNS + ["params", "macs"] + _PROVENANCE_COLUMNS


def assemble_lut(rows: Sequence[Mapping], timing_provenance: Mapping, catalog: BlockCatalog,
                 profile: DeviceProfile, source: str = "host"):
    """The LUT table and its provenance from ``timing`` rows (host run or a bundle's results).

    Rows whose id is not a catalog block (a bundle's subnets) are ignored; a block timed
    with another input shape than the catalog's at this resolution raises.
    """
    by_id = {row["id"]: row for row in rows if row["id"] in catalog.index}
    params, macs = catalog.params_table(), catalog.macs_table()
    records = []
    for index, block in enumerate(catalog.blocks):
        row = by_id.get(block.block_id)
        if row is None:
            continue
        shape = "x".join(str(d) for d in block_input_shape(block, profile.batch_size))
        if row["input_shape"] != shape:
            raise LutError(f"block {block.block_id} was timed with input {row['input_shape']}, but at resolution "
                           f"{catalog.resolution} and batch {profile.batch_size} its input is {shape}")
        records.append({**_block_columns(block), "input_shape": shape,
                        **{k: row.get(k) for k in _TIMING_COLUMNS + _PROVENANCE_COLUMNS},
                        "device": profile.name, "params": int(params[index]), "macs": int(macs[index])})
    frame = pd.DataFrame.from_records(records, columns=LUT_COLUMNS)
    identity = dict(timing_provenance.get("identity", {}))
    provenance = {
        "kind": LUT_KIND, "space": catalog.space.version, "source": source, "device": profile.name,
        "measured_as": identity.get("device"), "identity": {**identity, "device": profile.name},
        "settings": timing_provenance.get("settings"), "machine": timing_provenance.get("machine"),
        "timing": timing_provenance.get("timing"), "reference": timing_provenance.get("reference"),
        "reference_checks": timing_provenance.get("reference_checks", []),
        "drift_tolerance": timing_provenance.get("drift_tolerance"), "export_key": timing_provenance.get("export_key"),
        "clock": timing_provenance.get("clock", "wall"),
        # Who timed the rows (the board's runner for a worker or bundle device), not who assembled them.
        "executor": timing_provenance.get("executor"), "location": timing_provenance.get("location"),
        "catalog_blocks": len(catalog.blocks), "measured_blocks": len(frame),
        "complete": len(frame) == len(catalog.blocks), "code_version": code_version(), "created_at": utc_now(),
    }
    return frame, provenance


def _block_columns(block: BlockSpec) -> dict[str, Any]:
    return {"block_id": block.block_id, "kind": block.kind, "stage": block.stage, "in_width": block.in_width,
            "out_width": block.out_width, "in_resolution": block.in_resolution, "ffn_type": block.ffn_type,
            "kernel": block.kernel, "expansion": block.expansion, "value_ratio": block.value_ratio, "act": block.act}


# --------------------------------------------------------------------------- reading a LUT
@dataclasses.dataclass
class LookupTable:
    """A LUT read back: the table, its provenance and the checks that make its numbers safe."""

    frame: Any  # pandas DataFrame (LUT_COLUMNS)
    provenance: dict
    path: Path | None = None

    @classmethod
    def read(cls, path: str | os.PathLike) -> "LookupTable":
        path = Path(path)
        frame = read_parquet(path)
        provenance = read_provenance(path)
        if provenance.get("kind") != LUT_KIND:
            raise LutError(f"{path} is not a latency LUT (its provenance kind is {provenance.get('kind')!r})")
        missing_columns = [c for c in ("block_id", "median_ms") if c not in frame.columns]
        if missing_columns:
            raise LutError(f"{path}: LUT lacks the columns {missing_columns}")
        return cls(frame, provenance, path)

    @property
    def identity(self) -> dict:
        return dict(self.provenance.get("identity", {}))

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "the LUT"

    def block_ms(self, catalog: BlockCatalog, column: str = "median_ms") -> np.ndarray:
        """Latency per catalog row (NaN where the LUT has no row for the block)."""
        if self.provenance.get("space") != catalog.space.version:
            raise LutError(f"{self.where} was made for search space {self.provenance.get('space')!r}, "
                           f"not {catalog.space.version!r}")
        if int(self.identity.get("resolution", -1)) != catalog.resolution:
            raise LutError(f"{self.where} was measured at resolution {self.identity.get('resolution')}, "
                           f"the catalog is at {catalog.resolution}")
        unknown = sorted(set(self.frame["block_id"]) - set(catalog.index))
        if unknown:
            raise LutError(f"{self.where} has {len(unknown)} blocks that are not in the catalog, e.g. {unknown[:3]}")
        table = np.full(len(catalog.blocks), np.nan)
        table[[catalog.index[i] for i in self.frame["block_id"]]] = self.frame[column].to_numpy(dtype=np.float64)
        return table

    def missing_blocks(self, catalog: BlockCatalog) -> list[str]:
        present = set(self.frame["block_id"])
        return [b.block_id for b in catalog.blocks if b.block_id not in present]

    def require_complete(self, catalog: BlockCatalog, hint: str = "") -> np.ndarray:
        """``block_ms`` when every catalog block has a finite latency; a LutError naming the missing ones otherwise."""
        table = self.block_ms(catalog)
        missing = [catalog.blocks[i].block_id for i in np.flatnonzero(~np.isfinite(table))]
        if missing:
            raise LutError(f"{self.where} lacks {len(missing)} of {len(table)} blocks (e.g. {', '.join(missing[:5])})"
                           + (f"; {hint}" if hint else ""))
        return table

    def check_matches(self, profile: DeviceProfile, runtime_version: str | None = None) -> None:
        """Raise ``LutError`` unless this LUT was measured the way ``profile`` asks.

        Compared: the device name, ``PROFILE_KEYS`` (backend, provider, precision, threads,
        batch size, resolution), the clock, and the runtime version, which is ``runtime_version`` when
        given, else the profile's ``options["runtime_version"]``, else (for a LUT measured
        on this host) the version installed here; a LUT measured on a remote device
        (``source`` bundle) with no expected version given is taken at its word.
        """
        identity = {**self.identity, "clock": self.provenance.get("clock", "wall")}
        wanted = {"device": profile.name, **{k: getattr(profile, k) for k in PROFILE_KEYS},
                  "clock": profile_clock(profile)}
        expected = expected_runtime_version(profile, self.provenance.get("source", "host"), runtime_version)
        if expected is not None:
            wanted["runtime_version"] = expected
        differences = [f"{key}: {identity.get(key)!r} in the LUT, {value!r} wanted"
                       for key, value in wanted.items() if str(identity.get(key)) != str(value)]
        if differences:
            raise LutError(f"{self.where} does not match device profile {profile.name!r} ({'; '.join(differences)}); "
                           f"rebuild it (scan-edge lut build --device {profile.name}) or use the matching profile")


def expected_runtime_version(profile: DeviceProfile, source: str, runtime_version: str | None = None) -> str | None:
    """The runtime version a LUT for ``profile`` must have been measured with (see ``check_matches``)."""
    if runtime_version is not None:
        return str(runtime_version)
    if profile.options.get("runtime_version"):
        return str(profile.options["runtime_version"])
    if source != "host":  # measured on a board: its version is the board's, not what is installed here
        return None
    usability = check_usable(profile)
    if not usability.usable:
        raise LutError(f"cannot check the LUT of device {profile.name!r} against the installed runtime: "
                       f"{usability.reason} (for a LUT measured elsewhere, give the runtime version it must have)")
    return usability.runtime_version
