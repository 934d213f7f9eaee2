"""A whole LUT profile of a board in one offline round trip: ``scan-edge profile bundle`` / ``import``.

The older, manual door to a board: every block (and optionally uniform calibration subnets)
in one bundle, run by hand on the board, imported as the device's LUT and calibration. The
pipeline reaches boards through ``nas_core.latency.location`` instead (``bundle`` and
``worker`` locations, one job per measurement, in-band calibration); this module stays for a
one-off profile of a board outside the pipeline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from nas_core.block_catalog import BlockCatalog
from nas_core.io import code_version, file_sha256, read_json, utc_now, write_json, write_parquet
from nas_core.latency import timing
from nas_core.latency.calibration import (DEFAULT_N_VALIDATION, PAPER_N_CALIBRATION, CalibrationReport,
                                          calibration_frame, export_subnets, finish_calibration)
from nas_core.latency.devices import DeviceProfile
from nas_core.latency.lut import (PROFILE_KEYS, BlockFilter, LookupTable, LutError, LutPaths, assemble_lut,
                                  block_input_shape, export_blocks, export_folder, profile_clock, reference_block,
                                  select_blocks)
from nas_core.latency.subnet_sampling import SubnetChoice, choose_subnets
from nas_core.latency.bundle import make_bundle
from nas_core.latency.timing import ModelEntry, TimingConfig
from nas_core.search_space import SearchSpace

BUNDLE_SIDECAR = "scan_edge_lut.json"
BUNDLE_FORMAT = 1

def make_profiling_bundle(profile: DeviceProfile, bundle_dir: str | Path, paths: LutPaths | None = None, *,
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
        "subnets": [{"id": c.id, "arch_id": c.arch.arch_id, "role": c.role, "origin": c.origin,
                     "arch": c.arch.to_dict()}
                    for c in subnets],
        "code_version": code_version(), "created_at": utc_now(),
    })
    return Path(bundle_dir)


def import_profiling_results(profile: DeviceProfile, bundle_dir: str | Path,
                             results: str | Path | None = None, paths: LutPaths | None = None, *,
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
    subnets = [SubnetChoice(space.from_dict(s["arch"]), s["role"], s.get("origin", "given"))
               for s in sidecar["subnets"]]
    if not subnets:
        return None
    lut = LookupTable.read(paths.lut)
    table = calibration_frame(subnets, rows, lut.block_ms(catalog), catalog, profile.name)
    settings = {"n_calibration": sum(c.role == "calibration" for c in subnets),
                "n_validation": sum(c.role == "validation" for c in subnets),
                "seed": sidecar.get("seed"), "sampling": sidecar.get("sampling"), "bundle": str(bundle_dir)}
    return finish_calibration(table, lut, provenance, profile, paths, settings,
                              float(sidecar.get("drift_tolerance", 0.10)), figure, space=space)


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

