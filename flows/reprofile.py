"""The ``reprofile`` flow: when a device's runtime changes, re-profile it and report what moved.

For each searched device (``search.devices``), the runtime version installed here is
compared with the one its LUT was measured with. Where it changed:

1. the device's current artifacts are kept aside (``reprofile/<device>/<time>/before/``):
   LUT, calibration fit, and the folders and summaries of the searches that involve it;
2. the device's steps run again, whatever the caches say: runtime record, LUT (re-timed
   from scratch), calibration, MobileNetV2 baseline (the ``<k>x`` targets follow it), and
   every search for the device (with its device measurements);
3. a change report is written: ``reprofile/<device>-<time>.md`` (readable), ``.json``
   (the same facts) and ``.blocks.parquet`` (every block that moved by more than
   ``threshold``: block_id, kind, old_ms, new_ms, change), with the old vs new searched
   architectures and their measured latency.

A device whose runtime did not change is left alone; one without a LUT is skipped (run
``scan-edge reproduce`` first). ``scan-edge schedule reprofile --cron "0 3 * * 1"`` serves
it as a Prefect deployment on a cron schedule (:func:`reprofile_deployment`).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from prefect import flow

from flows.reproduce import run_steps
from tasks import stages

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00: a quiet hour for timing
DEFAULT_THRESHOLD = 0.10


def installed_runtime_version(params: Mapping[str, Any], device: str) -> str | None:
    """The version of the device's runtime installed on this machine (tests replace this lookup)."""
    return stages.runtime_identity(params, device)["runtime_version"]


def recorded_runtime_version(lut_path: Path) -> str | None:
    """The runtime version a LUT was measured with."""
    from nas_core.io import read_provenance

    return (read_provenance(lut_path).get("identity") or {}).get("runtime_version")


def device_steps(params: Mapping[str, Any], device: str, root: str) -> list[stages.Step]:
    """The steps that measure on ``device``: runtime, LUT, calibration, baselines, its searches."""
    per_device = {"runtime", "lut", "calibration", "baselines"}
    return [s for s in stages.pipeline_steps(params, root)
            if (s.stage in per_device and s.kwargs().get("device") == device)
            or (s.stage == "search" and device in s.kwargs()["devices"])]


def _device_runs(params: Mapping[str, Any], device: str) -> list[stages.SearchRun]:
    return [run for run in stages.search_runs(params) if device in run.devices]


def _summaries(layout: stages.Layout, runs: Sequence[stages.SearchRun]) -> dict[str, dict]:
    from nas_core.io import read_json

    return {run.key: read_json(layout.search_summary(run.key)) for run in runs
            if layout.search_summary(run.key).exists()}


def set_aside(layout: stages.Layout, device: str, runs: Sequence[stages.SearchRun], folder: Path) -> dict[str, Any]:
    """Copy the device's LUT and fit, and move its searches, into ``folder``; forget its resume
    stamps (so the LUT and calibration start over). Returns what was there before."""
    from nas_core.io import read_json, read_parquet

    paths = layout.lut_paths(device)
    folder.mkdir(parents=True, exist_ok=True)
    before = {"lut": read_parquet(paths.lut), "fit": read_json(paths.fit) if paths.fit.exists() else None,
              "searches": _summaries(layout, runs)}
    for path in (paths.lut, paths.fit):
        if path.exists():
            shutil.copy2(path, folder / path.name)
    (folder / "search").mkdir(exist_ok=True)
    for run in runs:  # moved, not copied: their device-measurement caches belong to the old runtime
        for path in (layout.search_dir(run.key), layout.search_summary(run.key)):
            if path.exists():
                shutil.move(str(path), str(folder / "search" / path.name))
    for stage_id in (f"lut@{device}", f"calibration@{device}"):
        (layout.resume_stamps / f"{stage_id}.json").unlink(missing_ok=True)
    return before


def reprofile_device(params: Mapping[str, Any], device: str, root: str = str(stages.DATA_ROOT),
                     threshold: float = DEFAULT_THRESHOLD, results: str | None = None) -> dict[str, Any]:
    """Re-profile one device if its runtime changed; returns what happened (and the report's paths)."""
    from nas_core.io import read_json, read_parquet, utc_now, write_json, write_parquet, write_text
    from nas_core.report import change_report_markdown, lut_changes, search_change_rows

    layout = stages.Layout(root)
    paths = layout.lut_paths(device)
    if not paths.lut.exists():
        return {"status": "skipped", "reason": f"{paths.lut} does not exist yet (run scan-edge reproduce)"}
    recorded, installed = recorded_runtime_version(paths.lut), installed_runtime_version(params, device)
    if recorded == installed:
        return {"status": "unchanged", "runtime_version": installed}
    print(f"{device}: runtime {recorded} -> {installed}: re-profiling", flush=True)
    stamp = utc_now().replace(":", "").replace("+0000", "Z")
    runs = _device_runs(params, device)
    aside = layout.root / "reprofile" / device / stamp / "before"
    before = set_aside(layout, device, runs, aside)
    run_steps(device_steps(params, device, root), params, root, results, refresh=True)

    moved = lut_changes(before["lut"], read_parquet(paths.lut), threshold)
    searches = search_change_rows(before["searches"], _summaries(layout, runs))
    after_fit = read_json(paths.fit) if paths.fit.exists() else None
    base = layout.root / "reprofile" / f"{device}-{stamp}"
    sources = {"old LUT": str(aside / paths.lut.name), "new LUT": str(paths.lut), "new fit": str(paths.fit)}
    written = {
        "blocks": write_parquet(base.with_suffix(".blocks.parquet"), moved,
                                {"device": device, "old_runtime": recorded, "new_runtime": installed,
                                 "threshold": threshold}),
        "markdown": write_text(base.with_suffix(".md"), change_report_markdown(
            device, recorded, installed, moved, len(before["lut"]), threshold,
            {"before": before["fit"], "after": after_fit}, searches, sources)),
    }
    document = {"device": device, "old_runtime_version": recorded, "new_runtime_version": installed,
                "threshold": threshold, "blocks_moved": len(moved), "blocks_compared": len(before["lut"]),
                "fit_before": _fit_summary(before["fit"]), "fit_after": _fit_summary(after_fit),
                "searches": searches, "sources": sources, "created": utc_now()}
    written["json"] = write_json(base.with_suffix(".json"), document)
    return {"status": "reprofiled", **{k: str(v) for k, v in written.items()},
            "blocks_moved": len(moved), "searches_changed": sum(row["changed"] for row in searches)}


def _fit_summary(fit: Mapping | None) -> dict | None:
    if not fit:
        return None
    return {"a": fit["a"], "b": fit["b"], "validation": fit.get("metrics", {}).get("validation", {}).get("calibrated")}


@flow(name="reprofile", log_prints=True)
def reprofile_flow(params_file: str = "params.yaml", profile: str | None = None, root: str = str(stages.DATA_ROOT),
                   devices: list[str] | None = None, threshold: float = DEFAULT_THRESHOLD,
                   results: str | None = None) -> dict[str, dict]:
    """Re-profile every searched device (or ``devices``) whose runtime changed. The params
    are read when the flow runs, so a scheduled deployment follows edits of params.yaml."""
    from nas_core.params import load_params

    params = load_params(params_file, profile)
    chosen = devices or stages.search_devices(params)
    outcome = {device: reprofile_device(params, device, root, threshold, results) for device in chosen}
    for device, result in outcome.items():
        print(f"{device}: {result['status']}" + (f" -> {result['markdown']}" if "markdown" in result else ""),
              flush=True)
    return outcome


def reprofile_deployment(cron: str = DEFAULT_CRON, *, params_file: str = "params.yaml", profile: str | None = None,
                         root: str = str(stages.DATA_ROOT), threshold: float = DEFAULT_THRESHOLD,
                         name: str = "reprofile"):
    """The flow as a deployment on a cron schedule (``flow.to_deployment``; serve it with
    ``prefect.serve``, which needs a real Prefect server)."""
    parameters = {"params_file": str(Path(params_file).resolve()), "profile": profile,
                  "root": str(Path(root).resolve()), "threshold": threshold}
    return reprofile_flow.to_deployment(name=name, cron=cron, parameters=parameters,
                                        description="Re-profile devices whose runtime version changed; write a "
                                                    "change report under data/reprofile/.")


def serve_reprofile(cron: str = DEFAULT_CRON, **kwargs: Any) -> None:
    """Serve the scheduled deployment until interrupted (a local server is started if none is configured)."""
    from prefect import serve

    from tasks._server import prefect_server

    with prefect_server(required=True):
        serve(reprofile_deployment(cron, **kwargs))


__all__ = ["reprofile_flow", "reprofile_device", "reprofile_deployment", "serve_reprofile",
           "installed_runtime_version", "recorded_runtime_version", "device_steps", "DEFAULT_CRON"]
