"""End-to-end latency of the models the paper compares against (Table 3), on every usable profile.

Each model is built with timm (``pretrained=False``: weights do not change latency), or,
for MicroViT, which timm does not have, from ``nas_core.microvit``; it is exported to ONNX
once at its resolution (224, or 256 for MobileViT and EdgeNeXt as in their original
implementations, as the paper does, and for GENet-L, timm's and GENet's own), then timed on each ONNX profile;
the torch profiles time the eager module. A model that fails to build, export or compile
on a runtime gets a row with the error text (the paper notes that several of these
fail on the NCS2) instead of stopping the run.

Table (written to ``out_path``; the pipeline's baselines stage keeps one per device,
``baselines/<device>.parquet``: ``nas_core.layout``), one row per (model, device):

================  =====  ======================================================
column            type   meaning
================  =====  ======================================================
model             str    timm model name
device            str    device profile name
resolution        int    input height = width
median_ms         f64    median latency (NaN when ``error`` is set)
p10_ms, p90_ms    f64    10th / 90th percentile
mean_ms, min_ms   f64    mean and fastest call (min is the least disturbed by other processes)
repeats           int    timed calls
stable            bool   the median converged before the timing caps
params            int    parameter count
macs              int    multiply-accumulates of one image at ``resolution`` (``nas_core.complexity``)
vs_mobilenetv2    f64    median_ms / mobilenetv2_100's median_ms on the same device
error             str    why there is no timing ("" when there is one)
backend, runtime, runtime_version, provider, precision, precision_actual,
threads, batch_size, clock, machine_id, code_version, timestamp   provenance per row
load_average      f64    1-minute load average when timed (above the core count: contended)
================  =====  ======================================================

Table-level provenance (``nas_core.io.read_provenance``): the profiles' settings, the
profiles skipped with the reason, the timing configuration, the machine fingerprint and
the code version.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd
import timm

from nas_core.complexity import module_complexity
from nas_core.io import code_version, machine_fingerprint, read_parquet, utc_now, write_parquet
from nas_core.latency.devices import DeviceProfile, check_usable
from nas_core.latency.export import export_onnx
from nas_core.latency.location import DeviceAccess, MeasurementsPending, TimingJob, Yardstick
from nas_core.latency.measure import measure_module, measure_onnx
from nas_core.latency.timing import ModelEntry, TimingConfig, load_average
from nas_core.microvit import MICROVIT_CONFIGS, create_microvit, is_microvit

# Model name (timm's, or nas_core.microvit's) -> input resolution: MobileViT and EdgeNeXt at
# 256, as the paper; GENet-L at 256, its preferred resolution (GENet Table 2) and timm's.
BASELINE_MODELS: dict[str, int] = {
    "mobilenetv2_100": 224,
    "mobilenetv3_large_100": 224,
    "efficientformerv2_s0": 224,
    "efficientformerv2_s1": 224,
    "mobilevit_xxs": 256,
    "edgenext_xx_small": 256,
    "gernet_s": 224,
    "gernet_m": 224,
    "gernet_l": 256,
    "shvit_s1": 224,
    "efficientvit_m4": 224,
    **{name: 224 for name in MICROVIT_CONFIGS},
}
REFERENCE_MODEL = "mobilenetv2_100"  # the paper's latency target


def split_usable(profiles: Iterable[DeviceProfile]) -> tuple[list[DeviceProfile], dict[str, str]]:
    """The profiles this machine can run, and the others with the reason."""
    usable, skipped = [], {}
    for profile in profiles:
        usability = check_usable(profile)
        if usability.usable:
            usable.append(profile)
        else:
            skipped[profile.name] = usability.reason
    return usable, skipped


def is_known_model(name: str) -> bool:
    return is_microvit(name) or timm.is_model(name)


def build_model(name: str):
    if is_microvit(name):
        return create_microvit(name).eval()
    return timm.create_model(name, pretrained=False).eval()


def model_size(module, resolution: int) -> tuple[int, int | None]:
    """(params, MACs at ``resolution``) of a built model; MACs None where counting fails
    (the latency row is still worth having)."""
    try:
        counts = module_complexity(module, resolution)
    except Exception:  # noqa: BLE001 - an op the FLOP counter cannot trace
        return sum(p.numel() for p in module.parameters()), None
    return counts["params"], counts["macs"]


def measure_baselines(profiles: Iterable[DeviceProfile], models: Mapping[str, int] | None = None,
                      out_path: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None,
                      config: TimingConfig | None = None, progress: bool = True):
    """Time ``models`` (name -> resolution; default ``BASELINE_MODELS``) on every usable profile.

    Returns the table described in the module docstring (provenance in
    ``frame.attrs["provenance"]``) and writes it to ``out_path`` unless that is None.
    """
    models = dict(BASELINE_MODELS if models is None else models)
    config = config or TimingConfig()
    usable, skipped = split_usable(profiles)
    for name, reason in skipped.items():
        _say(progress, f"skipping device {name}: {reason}")
    fingerprint, version = machine_fingerprint(), code_version()
    rows = []
    with tempfile.TemporaryDirectory(prefix="scan-edge-baselines-") as tmp:
        folder = Path(workdir or tmp)
        for model_name, resolution in models.items():
            for row in _measure_one_model(model_name, resolution, usable, folder, config, progress):
                rows.append({**row, "machine_id": fingerprint["id"], "code_version": version})
    frame = _add_ratio_to_reference(pd.DataFrame(rows, columns=_COLUMNS))
    _nullable_sizes(frame)
    provenance = {
        "kind": "baseline_latency", "profiles": {p.name: p.to_settings() for p in usable}, "skipped_devices": skipped,
        "models": models, "timing": config.to_dict(), "machine": fingerprint, "code_version": version,
        "created_at": utc_now(),
    }
    frame.attrs["provenance"] = provenance
    if out_path is not None:
        write_parquet(out_path, frame, provenance)
    return frame


_COLUMNS = ["model", "device", "resolution", "median_ms", "p10_ms", "p90_ms", "mean_ms", "min_ms", "repeats", "stable",
            "params", "macs", "vs_mobilenetv2", "error", "backend", "runtime", "runtime_version", "provider", "precision",
            "precision_actual", "threads", "batch_size", "clock", "machine_id", "code_version", "timestamp", "load_average"]


def _measure_one_model(model_name: str, resolution: int, profiles: list[DeviceProfile], folder: Path,
                       config: TimingConfig, progress: bool) -> list[dict]:
    """Rows for one model on every profile; build / export errors become rows too."""
    try:
        module = build_model(model_name)
    except Exception as err:  # an unknown or broken timm model must not stop the others
        return [_error_row(model_name, resolution, p, None, f"build failed: {_describe(err)}") for p in profiles]
    size = model_size(module, resolution)
    onnx_path, export_error = None, None
    if any(p.backend != "torch" for p in profiles):
        try:
            onnx_path = export_onnx(module, (1, 3, resolution, resolution), folder / f"{model_name}_{resolution}.onnx")
        except Exception as err:
            export_error = f"ONNX export failed: {_describe(err)}"
    rows = []
    for profile in profiles:
        shape = profile.input_shape(resolution)
        if profile.backend != "torch" and export_error:
            rows.append(_error_row(model_name, resolution, profile, size, export_error))
            continue
        try:
            if profile.backend == "torch":
                result = measure_module(module, shape, profile, config=config)
            else:
                result = measure_onnx(onnx_path, shape, profile, config=config)
        except Exception as err:  # e.g. an operator the runtime cannot compile
            rows.append(_error_row(model_name, resolution, profile, size, f"timing failed: {_describe(err)}"))
            _say(progress, f"{model_name:24s} {profile.name:18s} FAILED {_describe(err)[:120]}")
            continue
        rows.append({**_base_row(model_name, resolution, profile, size), **result.to_row(), "error": "",
                     "timestamp": utc_now(), "load_average": load_average(),
                     "runtime": result.info.get("runtime"), "runtime_version": result.info.get("runtime_version"),
                     "provider": result.info.get("provider", profile.provider),
                     "precision_actual": result.info.get("precision_actual", "unknown")})
        _say(progress, f"{model_name:24s} {profile.name:18s} {result.median_ms:8.2f} ms "
                       f"(p10 {result.p10_ms:.2f}, p90 {result.p90_ms:.2f}, n={result.repeats}, "
                       f"{result.info.get('precision_actual')})")
    return rows


def measure_device_baselines(access: DeviceAccess, models: Mapping[str, int] | None = None, *,
                             out_path: str | os.PathLike, workdir: str | os.PathLike, config: TimingConfig | None = None,
                             progress: bool = True):
    """Time ``models`` on one device through its access (``nas_core.latency.location``): this
    machine, or a board (the ONNX files travel in one job, ``baselines``; the board's
    runtime builds and times them). Same table as :func:`measure_baselines`.

    A model that fails to build or export gets an error row here. On this machine a job that
    fails (e.g. an operator the runtime cannot compile) is retried model by model, so only the
    failing model gets an error row; on a board the job's error is raised, with the folder.
    """
    profile, models = access.profile, dict(BASELINE_MODELS if models is None else models)
    if profile.backend == "torch":
        raise ValueError(f"device {profile.name!r} runs eager torch: use measure_baselines")
    folder = Path(workdir)
    exported, rows = {}, []
    for name, resolution in models.items():
        path, size, error = _export_baseline(name, resolution, folder)
        if error:
            rows.append(_error_row(name, resolution, profile, size, error))
        else:
            exported[name] = (path, resolution, size)
    entries = {name: ModelEntry(name, path, profile.input_shape(res)) for name, (path, res, _) in exported.items()}
    timed = _time_baselines(access, entries, folder, config, progress)
    for name, (_path, resolution, size) in exported.items():
        row = timed.get(name)
        if isinstance(row, str):
            rows.append(_error_row(name, resolution, profile, size, row))
            continue
        rows.append({**_base_row(name, resolution, profile, size),
                     **{k: row.get(k) for k in _COLUMNS if k in row and k not in ("model", "device", "params", "macs")},
                     "error": ""})
        _say(progress, f"{name:24s} {profile.name:18s} {row['median_ms']:8.2f} ms ({access.location})")
    frame = _add_ratio_to_reference(pd.DataFrame(rows, columns=_COLUMNS))
    _nullable_sizes(frame)
    provenance = {"kind": "baseline_latency", "profiles": {profile.name: profile.to_settings()}, "models": models,
                  "timing": (config or TimingConfig()).to_dict(), "location": access.location,
                  "code_version": code_version(), "created_at": utc_now()}
    frame.attrs["provenance"] = provenance
    write_parquet(out_path, frame, provenance)
    return frame


def network_yardstick(profile: DeviceProfile, table: str | os.PathLike, workdir: str | os.PathLike) -> Yardstick | None:
    """The device's network yardstick (``location.Yardstick``): its MobileNetV2 at the latency the
    baselines table ``table`` holds for it. None when the table or its MobileNetV2 row is missing
    (whole networks are then timed against the block yardstick). The ONNX file is exported
    again when it has gone from ``workdir``."""
    table = Path(table)
    if not table.exists():
        return None
    frame = read_parquet(table)
    row = frame[(frame["model"] == REFERENCE_MODEL) & (frame["device"] == profile.name)]
    if row.empty or not math.isfinite(float(row["median_ms"].iloc[0])):
        return None
    resolution = int(row["resolution"].iloc[0])
    onnx, _, error = _export_baseline(REFERENCE_MODEL, resolution, Path(workdir))
    if onnx is None:
        raise RuntimeError(f"the network yardstick of {profile.name}: {error}")
    entry = ModelEntry(REFERENCE_MODEL, onnx, (profile.batch_size, 3, resolution, resolution))
    return Yardstick(entry, float(row["median_ms"].iloc[0]))


def _export_baseline(name: str, resolution: int, folder: Path) -> tuple[Path | None, tuple | None, str]:
    """(ONNX path, (params, MACs), error text)."""
    try:
        module = build_model(name)
    except Exception as err:  # an unknown or broken timm model must not stop the others
        return None, None, f"build failed: {_describe(err)}"
    size = model_size(module, resolution)
    path = folder / f"{name}_{resolution}.onnx"
    if path.exists():
        return path, size, ""
    try:
        return export_onnx(module, (1, 3, resolution, resolution), path), size, ""
    except Exception as err:
        return None, size, f"ONNX export failed: {_describe(err)}"


def _time_baselines(access: DeviceAccess, entries: Mapping[str, ModelEntry], folder: Path,
                    config: TimingConfig | None, progress: bool) -> dict[str, dict | str]:
    """model -> its timing row, or the error text."""
    if not entries:
        return {}
    reference = REFERENCE_MODEL if REFERENCE_MODEL in entries else None
    job = TimingJob("baselines", tuple(entries.values()), reference, config)
    try:
        rows = access.time(job, folder / f"{access.profile.name}.timings.parquet", resume=False, progress=False)
        return {row["id"]: row for row in rows}
    except MeasurementsPending:
        raise
    except Exception as err:  # noqa: BLE001 - isolate the failing model where that is possible
        if access.location != "local":
            raise
        _say(progress, f"baselines on {access.profile.name}: {_describe(err)[:160]}; timing each model alone")
    out: dict[str, dict | str] = {}
    for name, entry in entries.items():
        try:
            alone = TimingJob(f"baselines-{name}", (entry,), name, config)
            out[name] = access.time(alone, folder / f"{access.profile.name}.{name}.parquet", resume=False,
                                    progress=False)[0]
        except Exception as err:  # noqa: BLE001 - e.g. an operator the runtime cannot compile
            out[name] = f"timing failed: {_describe(err)}"
    return out


def _base_row(model_name: str, resolution: int, profile: DeviceProfile, size: tuple | None) -> dict:
    params, macs = size or (None, None)
    return {"model": model_name, "device": profile.name, "resolution": resolution, "params": params, "macs": macs,
            "backend": profile.backend, "provider": profile.provider, "precision": profile.precision,
            "threads": profile.threads, "batch_size": profile.batch_size,
            "clock": profile.options.get("clock", "wall")}


def _error_row(model_name: str, resolution: int, profile: DeviceProfile, size: tuple | None, error: str) -> dict:
    usability = check_usable(profile)
    return {**_base_row(model_name, resolution, profile, size), "median_ms": math.nan, "p10_ms": math.nan,
            "p90_ms": math.nan, "mean_ms": math.nan, "min_ms": math.nan, "repeats": 0, "stable": False, "error": error,
            "runtime": usability.runtime_name, "runtime_version": usability.runtime_version, "precision_actual": "",
            "timestamp": utc_now(), "load_average": load_average()}


def _nullable_sizes(frame) -> None:
    """A model that failed to build has no params or MACs: nullable integer columns."""
    for column in ("params", "macs"):
        frame[column] = frame[column].astype("Int64")


def _add_ratio_to_reference(frame):
    """``vs_mobilenetv2``: ratios within one run compare better than absolute ms on a shared machine."""
    reference = frame[frame["model"] == REFERENCE_MODEL].set_index("device")["median_ms"]
    frame["vs_mobilenetv2"] = frame["median_ms"] / frame["device"].map(reference)
    return frame


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) <= 1000 else text[:1000] + " ..."


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, flush=True)
