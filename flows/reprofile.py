"""The ``reprofile`` flow: when a device's runtime changes, re-profile it, bring the pipeline up to
date and report what moved.

For each searched device (``search.devices``), the runtime version installed here
(:func:`installed_runtime_version`) is compared with the one its LUT was measured with.
Where it changed (or with ``force``: a re-measurement with no version change, the noise
baseline of the change report):

1. the device's current artifacts are kept aside (``reprofile/<device>/<time>/before/``):
   LUT, calibration fit, the folders and summaries of the searches that involve it, and a
   ``bundle`` device's job folders (the old runtime's results, which a stage would otherwise
   read back as the new runtime's);
2. the device's steps run again through the cached stage tasks of ``scan-edge reproduce``
   (``flows.reproduce.run_steps``), whatever the caches say: runtime record, LUT (re-timed
   from scratch), calibration, baselines (the ``<k>x`` targets follow MobileNetV2), and
   every search for the device (with its device measurements);
3. the architecture each search had chosen before (*deployed*) is measured on the new
   runtime where the device runs (:func:`measure_arch`: through the device's access, never
   here for a board), and a change report is written (``nas_core.reprofile_report``):
   ``reprofile/<device>-<time>.md`` (readable), ``.json`` (the same facts) and
   ``.blocks.parquet`` (every block's move with its uncertainty, ``flagged`` beyond it:
   ``nas_core.latency.lut_change``);
4. the steps that depend on what ran (:func:`dependent_steps`: fine-tunes, transfer,
   detection, report; whatever reads a re-made artifact or measures on the device, in
   Prefect's cache keys or DVC's graph) run through the same cached tasks, unless
   ``searches_only``;
5. every step that ran is recorded in ``dvc.lock`` (``dvc commit`` of those stages) when
   the root is the DVC project's ``data/``.

So afterwards every door agrees: ``scan-edge status`` / ``dvc status`` show nothing stale,
``reproduce`` runs no stage and ``reproduce --dvc`` only the runtime probes (``always_changed``:
README, "Why dvc repro always runs the runtime probe"), which change nothing; with
``searches_only`` they agree that the steps downstream of the re-made searches (fine-tunes,
transfer, detection, report) are stale, and nothing else.

A re-profile may span several runs: a ``bundle`` device's stages stop until the board's
results are copied back (``MeasurementsPending``), and a run may be interrupted. A started
re-profile is recorded (``reprofile/<device>/in_progress.json``: :class:`InProgress`) and the
next ``reprofile`` continues it, whatever the versions say by then (the new LUT already
records the new runtime): the before state is set aside once and kept until the change
report is written and the dependent steps are up to date.

A device whose runtime did not change is left alone; one without a LUT is skipped (run
``scan-edge reproduce`` first). ``scan-edge schedule reprofile --cron "0 3 * * 1"`` serves
it as a Prefect deployment on a cron schedule (:func:`reprofile_deployment`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from prefect import flow, serve

from flows.reproduce import dvc_commit, dvc_tracks, dvc_upstream, run_steps
from nas_core.efficiency_predictor import LatencyEstimator
from nas_core.io import read_json, read_parquet, read_provenance, utc_now, write_json, write_parquet, write_text
from nas_core.latency.export import export_onnx
from nas_core.latency.location import MeasurementsPending, TimingJob, host_lock_mode
from nas_core.latency.lut import LutError
from nas_core.latency.lut_change import ChangeRule, LutComparison, compare_luts
from nas_core.latency.timing import ModelEntry
from nas_core.params import load_params
from nas_core.reprofile_report import change_report_markdown, searched_model_row
from nas_core.finetune import measure_latency
from nas_core.search_space import ArchConfig, SearchSpace
from nas_core.subnet import SubnetModel
from tasks import stage_lock, stages
from tasks._server import prefect_server
from tasks.prefect_tasks import measured_devices

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00: a quiet hour for timing


# --------------------------------------------------------------------------- what changed
def installed_runtime_version(params: Mapping[str, Any], device: str,
                              root: str | Path = stages.DATA_ROOT) -> str | None:
    """The version of the device's runtime: installed on this machine for a local device, the
    one its board reports for a ``worker`` / ``bundle`` device (its bundles under ``root``)
    (tests replace this lookup)."""
    return stages.device_runtime_version(params, device, root)


def recorded_runtime_version(lut_path: Path) -> str | None:
    """The runtime version a LUT was measured with."""
    return (read_provenance(lut_path).get("identity") or {}).get("runtime_version")


def change_rule(params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> ChangeRule:
    """The change report's rule: params ``reprofile:`` (z, min_change, session_floor), then ``overrides``."""
    values = {**stages.section(params, "reprofile"), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return ChangeRule.from_dict(values)


# --------------------------------------------------------------------------- which steps
def device_steps(params: Mapping[str, Any], device: str, root: str) -> list[stages.Step]:
    """The steps that measure on ``device``: runtime, LUT, calibration, baselines, the second
    calibration round, its searches."""
    per_device = {"runtime", "lut", "calibration", "baselines", "recalibration"}
    return [s for s in stages.pipeline_steps(params, root)
            if (s.stage in per_device and s.kwargs().get("device") == device)
            or (s.stage == "search" and device in s.kwargs()["devices"])]


def dependent_steps(plan: Sequence[stages.Step], done: Iterable[str], devices: Iterable[str],
                    params: Mapping[str, Any], upstream: Mapping[str, set[str]] | None = None) -> list[stages.Step]:
    """The steps of ``plan`` (in its order) that must run again after the steps ``done``
    re-made their outputs on re-profiled ``devices``: a step that reads an output of a
    selected step, measures on one of ``devices`` (its Prefect cache key holds their
    runtimes) or, in DVC's graph (``upstream``: stage -> its upstream stages), follows a
    selected stage."""
    selected, devices, upstream = set(done), set(devices), upstream or {}
    made = {path for step in plan if step.id in selected for path in step.outputs}
    chosen = []
    for step in plan:
        if step.id in selected:
            continue
        if (made.intersection(step.inputs) or devices.intersection(measured_devices(step.stage, params, step.kwargs()))
                or selected.intersection(upstream.get(step.id, ()))):
            selected.add(step.id)
            made.update(step.outputs)
            chosen.append(step)
    return chosen


def _device_runs(params: Mapping[str, Any], device: str) -> list[stages.SearchRun]:
    return [run for run in stages.search_runs(params) if device in run.devices]


# --------------------------------------------------------------------------- before
@dataclasses.dataclass
class Before:
    """A device's artifacts as they were before re-profiling (copies kept in ``folder``)."""

    folder: Path
    lut: Path
    fit: Path | None
    summaries: dict[str, dict]

    @classmethod
    def load(cls, folder: Path, paths, runs: Sequence[stages.SearchRun]) -> Before:
        """What :func:`set_aside` kept in ``folder`` (``paths``: the device's ``LutPaths``)."""
        fit = folder / paths.fit.name
        return cls(folder, folder / paths.lut.name, fit if fit.exists() else None,
                   _summaries(stages.Layout(folder), runs))

    def arch_json(self, run: str) -> Path | None:
        summary = self.summaries.get(run)
        if not summary or not summary.get("arch_json"):
            return None
        path = stages.Layout(self.folder).search_dir(run) / Path(summary["arch_json"]).name
        return path if path.exists() else None


def _summaries(layout: stages.Layout, runs: Sequence[stages.SearchRun]) -> dict[str, dict]:
    return {run.key: read_json(layout.search_summary(run.key)) for run in runs
            if layout.search_summary(run.key).exists()}


def forget_resume_stamps(layout: stages.Layout, device: str) -> None:
    """Forget the LUT's and calibrations' resume stamps, so they start over instead of resuming."""
    for stage_id in (f"lut@{device}", f"calibration@{device}", f"recalibration@{device}"):
        layout.resume_stamp(stage_id).unlink(missing_ok=True)


def bundle_jobs(params: Mapping[str, Any], device: str, root: str | Path) -> Path | None:
    """A ``bundle`` device's job folders (None for any other location). Their results were
    timed on the old runtime; a job of the same name (``lut``, ``calibration``, ...) would read
    them back as the new runtime's, since a bundle is never re-sent while its results exist."""
    if stages.device_profile(params, device).location != "bundle":
        return None
    return stages.device_access(params, device, root, paired=False).jobs_folder


def set_aside(layout: stages.Layout, device: str, runs: Sequence[stages.SearchRun], folder: Path,
              jobs: Path | None = None) -> Before:
    """Copy the device's LUT and fits (both rounds), and move its searches and its bundle ``jobs`` folder,
    into ``folder``; forget its resume stamps (so the LUT and calibration start over).

    Safe to repeat after an interruption (nothing is copied or moved over what ``folder``
    already holds): it runs before any of the device's steps, so what it finds in place is
    still the old state."""
    paths = layout.lut_paths(device)
    folder.mkdir(parents=True, exist_ok=True)
    for path in (paths.lut, paths.fit, paths.second_round().fit):
        if path.exists() and not (folder / path.name).exists():
            shutil.copy2(path, folder / path.name)
    searches = stages.Layout(folder).search_root  # the searches keep their layout inside the folder
    searches.mkdir(exist_ok=True)
    moved = [path for run in runs for path in (layout.search_dir(run.key), layout.search_summary(run.key))]
    for path in moved:  # moved, not copied: their device-measurement caches belong to the old runtime
        _move_once(path, searches / path.name)
    if jobs is not None:
        _move_once(jobs, stages.Layout(folder).bundles / jobs.name)
    forget_resume_stamps(layout, device)
    return Before.load(folder, paths, runs)


def _move_once(path: Path, dest: Path) -> None:
    if path.exists() and not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(dest))


# --------------------------------------------------------------------------- a re-profile across runs
@dataclasses.dataclass
class InProgress:
    """A device's re-profile that started and has not finished
    (``reprofile/<device>/in_progress.json``): the versions it compares, where its before
    state is, whether that is complete, and, once the change report is written, the device's
    outcome (what is left then: the dependent steps)."""

    stamp: str
    old_version: str | None
    new_version: str | None
    forced: bool
    set_aside: bool = False
    outcome: dict | None = None

    @classmethod
    def read(cls, layout: stages.Layout, device: str) -> InProgress | None:
        path = layout.reprofile_in_progress(device)
        return cls(**read_json(path)) if path.exists() else None

    def write(self, layout: stages.Layout, device: str) -> InProgress:
        write_json(layout.reprofile_in_progress(device), dataclasses.asdict(self))
        return self


def finish_reprofile(layout: stages.Layout, device: str) -> None:
    """The device's re-profile is complete: the next ``reprofile`` compares versions again."""
    layout.reprofile_in_progress(device).unlink(missing_ok=True)


# --------------------------------------------------------------------------- the searched models
def estimator_or_none(params: Mapping[str, Any], device: str, lut: Path, fit: Path | None,
                      runtime_version: str | None) -> LatencyEstimator | None:
    """The calibrated estimator of a LUT + fit; None (with the reason printed) when they
    cannot estimate (a partial LUT, no fit)."""
    if fit is None or not Path(fit).exists():
        print(f"{device}: no calibration fit next to {lut}: no calibrated estimates from it", flush=True)
        return None
    try:
        return LatencyEstimator.from_files(lut, fit, stages.device_profile(params, device),
                                           runtime_version=runtime_version, space=stages.search_space(params))
    except LutError as err:
        print(f"{device}: no calibrated estimates from {lut}: {err}", flush=True)
        return None


def read_arch(path: Path | None, space: SearchSpace | None = None) -> ArchConfig | None:
    """A search's ``*.arch.json`` (the architecture under ``arch``, with the search's record
    around it), or a bare architecture JSON; a member of ``space`` (default Table 2)."""
    if path is None:
        return None
    data = read_json(path)
    return (space or SearchSpace()).from_dict(data["arch"] if "arch" in data else data)


def measure_arch(params: Mapping[str, Any], device: str, arch: ArchConfig, root: Path,
                 runtime_version: str | None = None) -> float | None:
    """``arch`` as a standalone subnet (random weights: weights do not change latency), timed
    where ``device`` runs, as the search's on-device check times its candidates
    (``nas_core.search_run.DeviceMeasure``): through the device's access
    (``tasks.stages.device_access``: this machine under the exclusive CPU lock, or its board's
    worker or bundles; paired with the device's network yardstick when it has one) as one
    whole-network job. A ``worker`` or ``bundle`` device is never timed here.

    ``runtime_version`` is the runtime the new LUT was measured with: it names the job (a
    board's job folder of an earlier re-profile, timed on another runtime, is never read as
    this one's) and a board's results must have been timed with it. None when the device
    cannot time the model (the reason is printed); a bundle device stops with
    ``MeasurementsPending`` until the board's results are copied back."""
    profile = stages.device_profile(params, device)
    num_classes = int(stages.section(params, "search").get("num_classes", 1000))
    model = SubnetModel(arch, num_classes=num_classes, resolution=profile.resolution).eval()
    shape = profile.input_shape(profile.resolution)
    if profile.backend == "torch":  # an eager model has no access: a torch device is only ever this machine
        with _host_lock(profile):
            result = measure_latency(model, shape, [device], stages.section(params, "devices"))[device]
        return _median_or_none(device, arch, result)
    access = stages.device_access(params, device, root)
    name = f"reprofile-{runtime_version or 'unknown'}-{arch.arch_id}"
    with tempfile.TemporaryDirectory(prefix="scan-edge-reprofile-") as tmp:
        with stage_lock("shared"):  # exporting is CPU work, like the search's candidates
            onnx = export_onnx(model, shape, Path(tmp) / f"{arch.arch_id}.onnx")
        entry = ModelEntry(arch.arch_id, onnx, tuple(shape))
        job = TimingJob(name, (entry,), entry.id, whole_networks=True,
                        expected_runtime_version=None if access.location == "local" else runtime_version)
        try:
            with _host_lock(profile):  # this machine's CPU when the device is here; nothing for a board
                rows = access.time(job, Path(tmp) / "timing.parquet", resume=True, progress=False)
        except MeasurementsPending:
            raise
        except Exception as err:  # a runtime that cannot compile this model: say why, go on
            return _median_or_none(device, arch, {"skipped": f"{type(err).__name__}: {err}"})
    row = next((r for r in rows if r["id"] == entry.id), None)
    return _median_or_none(device, arch, {"skipped": "no timing came back"} if row is None else row)


def _host_lock(profile):
    """The machine's CPU lock around a measurement on ``profile`` (``location.host_lock_mode``)."""
    mode = host_lock_mode(profile)
    return stage_lock(mode) if mode else contextlib.nullcontext()


def _median_or_none(device: str, arch: ArchConfig, result: Mapping[str, Any]) -> float | None:
    if result.get("median_ms") is None:
        print(f"{device}: cannot measure {arch.arch_id} ({result.get('skipped')})", flush=True)
        return None
    return float(result["median_ms"])


def _estimate(estimator: LatencyEstimator | None, arch: ArchConfig | None) -> float | None:
    return None if estimator is None or arch is None else float(estimator.predict(arch)[0])


def _device_value(values: Mapping[str, float] | None, device: str) -> float | None:
    value = (values or {}).get(device)
    return None if value is None else float(value)


def searched_models(params: Mapping[str, Any], device: str, layout: stages.Layout, before: Before,
                    runs: Sequence[stages.SearchRun], estimators: Mapping[str, LatencyEstimator | None],
                    runtime_version: str | None = None) -> list[dict]:
    """The deployed (before) and new architecture of each search: target, calibrated and
    measured latency, old vs new (``nas_core.reprofile_report`` rows). The deployed one is
    measured on the new runtime (``runtime_version``) where the device runs
    (:func:`measure_arch`), unless the new search chose it and measured it."""
    after = _summaries(layout, runs)
    rows = []
    for run in runs:
        old, new = before.summaries.get(run.key), after.get(run.key)
        old_arch = read_arch(before.arch_json(run.key), stages.search_space(params))
        new_arch = read_arch(stages.searched_arch(layout, run.key), stages.search_space(params)) if new else None
        targets = {"target_old_ms": _device_value((old or {}).get("targets_ms"), device),
                   "target_new_ms": _device_value((new or {}).get("targets_ms"), device)}
        new_measured = _device_value((new or {}).get("measured_ms"), device)
        if new_arch is not None and new_measured is None:
            new_measured = measure_arch(params, device, new_arch, layout.root, runtime_version)
        if old_arch is not None and new_arch is not None and old_arch.arch_id == new_arch.arch_id:
            deployed_now = new_measured
        else:
            deployed_now = (measure_arch(params, device, old_arch, layout.root, runtime_version)
                            if old_arch is not None else None)
        rows.append(searched_model_row(
            run.key, device, "deployed", old, **targets,
            calibrated={"old": _estimate(estimators["old"], old_arch), "new": _estimate(estimators["new"], old_arch)},
            measured={"old": _device_value((old or {}).get("measured_ms"), device), "new": deployed_now}))
        rows.append(searched_model_row(
            run.key, device, "new", new, **targets,
            calibrated={"old": _estimate(estimators["old"], new_arch), "new": _estimate(estimators["new"], new_arch)},
            measured={"old": None, "new": new_measured}))
    return rows


# --------------------------------------------------------------------------- one device
def reprofile_device(params: Mapping[str, Any], device: str, root: str = str(stages.DATA_ROOT),
                     rule: ChangeRule | None = None, results: str | None = None, force: bool = False,
                     finished: dict[str, dict] | None = None) -> dict[str, Any]:
    """Re-profile one device if its runtime changed (or ``force``), or continue its re-profile
    in progress (:class:`InProgress`): set its artifacts aside (once), re-run its steps,
    measure the deployed models and write the change report. Returns what happened:
    ``status``, the report's paths, ``steps`` ({step id: status} of what ran). ``finished``
    collects the steps as they complete (see ``run_steps``). The record stays until the
    flow has brought the dependent steps up to date (:func:`finish_reprofile`)."""
    layout = stages.Layout(root)
    state = InProgress.read(layout, device)
    if state is None:
        started = start_reprofile(params, device, layout, force)
        if isinstance(started, dict):
            return started
        state = started
    else:
        print(f"{device}: continuing the re-profile started at {state.stamp} "
              f"(runtime {state.old_version} -> {state.new_version})", flush=True)
    if state.outcome is not None:  # its report is written; the dependent steps are what is left
        return state.outcome
    outcome = remeasure_and_report(params, device, layout, state, rule or change_rule(params), results,
                                   finished if finished is not None else {})
    dataclasses.replace(state, outcome=outcome).write(layout, device)
    return outcome


def start_reprofile(params: Mapping[str, Any], device: str, layout: stages.Layout,
                    force: bool) -> InProgress | dict[str, Any]:
    """A new re-profile of ``device``, recorded before anything moves; or, when there is none
    to do, the outcome that says why (``skipped``: no LUT; ``unchanged``: same runtime)."""
    paths = layout.lut_paths(device)
    if not paths.lut.exists():
        return {"status": "skipped", "reason": f"{paths.lut} does not exist yet (run scan-edge reproduce)"}
    recorded = recorded_runtime_version(paths.lut)
    installed = installed_runtime_version(params, device, str(layout.root))
    if recorded == installed and not force:
        return {"status": "unchanged", "runtime_version": installed}
    why = f"runtime {recorded} -> {installed}" if recorded != installed else f"runtime {installed}, --force"
    print(f"{device}: {why}: re-profiling", flush=True)
    stamp = utc_now().replace(":", "").replace("+0000", "Z")
    return InProgress(stamp, recorded, installed, forced=force).write(layout, device)


def remeasure_and_report(params: Mapping[str, Any], device: str, layout: stages.Layout, state: InProgress,
                         rule: ChangeRule, results: str | None, finished: dict[str, dict]) -> dict[str, Any]:
    """Set the device's artifacts aside (unless done), re-run its steps, measure the searched
    models and write the change report; returns the device's outcome."""
    root, paths, runs = str(layout.root), layout.lut_paths(device), _device_runs(params, device)
    folder = layout.reprofile_before(device, state.stamp)
    if state.set_aside:
        before = Before.load(folder, paths, runs)
    else:
        before = set_aside(layout, device, runs, folder, bundle_jobs(params, device, root))
        dataclasses.replace(state, set_aside=True).write(layout, device)
    planned = device_steps(params, device, root)
    run_steps(planned, params, root, results, refresh=True, finished=finished)

    # A board reached through bundles may not have said its version when the re-profile
    # started (nothing came back yet); the new LUT records what it was measured with.
    recorded, installed = state.old_version, state.new_version or recorded_runtime_version(paths.lut)
    estimators = {"old": estimator_or_none(params, device, before.lut, before.fit, recorded),
                  "new": estimator_or_none(params, device, paths.lut, paths.fit, installed)}
    models = searched_models(params, device, layout, before, runs, estimators, installed)
    comparison = compare_luts(read_parquet(before.lut), read_parquet(paths.lut), rule,
                              read_provenance(before.lut), read_provenance(paths.lut))
    report = write_change_report(layout.reprofile_report(device, state.stamp), device, recorded, installed,
                                 state.forced, comparison, models, before, paths)
    flagged = comparison.summary()
    return {"status": "reprofiled", **report, "blocks_flagged": flagged["blocks_flagged"],
            "blocks_compared": flagged["blocks_compared"],
            "searches_changed": sum(row["model"] == "new" and row["arch_id"] != _deployed_id(models, row["run"])
                                    for row in models),
            "steps": {step.id: finished[step.id]["status"] for step in planned}}


def _deployed_id(models: Sequence[Mapping], run: str) -> str | None:
    return next((row["arch_id"] for row in models if row["run"] == run and row["model"] == "deployed"), None)


def write_change_report(base: Path, device: str, recorded: str | None, installed: str | None, forced: bool,
                        comparison: LutComparison, models: list[dict], before: Before, paths) -> dict[str, str]:
    """``<base>.md``, ``.json`` and ``.blocks.parquet``; returns their paths."""
    after_fit = read_json(paths.fit) if paths.fit.exists() else None
    before_fit = read_json(before.fit) if before.fit else None
    sources = {"old LUT": str(before.lut), "new LUT": str(paths.lut), "new fit": str(paths.fit)}
    written_at = utc_now()
    header = {"device": device, "old_runtime_version": recorded, "new_runtime_version": installed, "forced": forced}
    blocks = write_parquet(_beside(base, ".blocks.parquet"), comparison.frame,
                           {**header, "rule": comparison.rule.to_dict()})
    markdown = write_text(_beside(base, ".md"), change_report_markdown(
        device, recorded, installed, forced=forced, comparison=comparison,
        fits={"before": before_fit, "after": after_fit}, models=models, sources=sources, written=written_at))
    document = {**header, "blocks": comparison.summary(), "models": models,
                "fit_before": _fit_summary(before_fit), "fit_after": _fit_summary(after_fit),
                "sources": sources, "created": written_at}
    return {"markdown": str(markdown), "json": str(write_json(_beside(base, ".json"), document)),
            "blocks": str(blocks)}


def _beside(base: Path, suffix: str) -> Path:
    return base.parent / f"{base.name}{suffix}"  # not with_suffix: a device name may hold a dot


def _fit_summary(fit: Mapping | None) -> dict | None:
    if not fit:
        return None
    return {"a": fit.get("a"), "b": fit.get("b"), "model": fit.get("model"),
            "validation": ((fit.get("metrics") or {}).get("validation") or {}).get("calibrated")}


# --------------------------------------------------------------------------- the flow
def bring_up_to_date(params: Mapping[str, Any], root: str, results: str | None, done: Iterable[str],
                     devices: Iterable[str], finished: dict[str, dict] | None = None) -> dict[str, dict]:
    """Run the steps that depend on ``done`` (:func:`dependent_steps`) through their cached
    tasks; returns their outcome (``finished`` collects them as they complete)."""
    plan = stages.pipeline_steps(params, root)
    upstream = dvc_upstream() if dvc_tracks(root) else {}
    steps = dependent_steps(plan, done, devices, params, upstream)
    finished = finished if finished is not None else {}
    run_steps(steps, params, root, results, finished=finished)
    return {step.id: finished[step.id] for step in steps}


def record_in_dvc(root: str, steps: Sequence[str]) -> list[str]:
    """``dvc commit`` the stages ``steps`` when ``root`` is the DVC project's ``data/``;
    returns the ones recorded (none when DVC does not track ``root`` or the commit failed)."""
    if not steps or not dvc_tracks(root):
        return []
    return list(steps) if dvc_commit(".", list(steps)) else []


@flow(name="reprofile", log_prints=True)
def reprofile_flow(params_file: str = "params.yaml", profile: str | None = None, root: str = str(stages.DATA_ROOT),
                   devices: list[str] | None = None, results: str | None = None, force: bool = False,
                   searches_only: bool = False, rule: dict | None = None) -> dict[str, Any]:
    """Re-profile every searched device (or ``devices``) whose runtime changed (every one
    with ``force``), then bring what depends on them up to date (unless ``searches_only``)
    and record what ran in dvc.lock. ``rule`` overrides params ``reprofile:`` (z,
    min_change, session_floor). The params are read when the flow runs, so a scheduled
    deployment follows edits of params.yaml. Returns ``{"devices": {device: outcome},
    "downstream": {step id: status}, "recorded_in_dvc": [step ids]}``."""
    params = load_params(params_file, profile)
    chosen = devices or stages.search_devices(params)
    checked = change_rule(params, rule)
    finished: dict[str, dict] = {}  # every step that completed, recorded in dvc.lock even if a later one fails
    try:
        outcome = {device: reprofile_device(params, device, root, checked, results, force, finished)
                   for device in chosen}
        for device, result in outcome.items():
            print(f"{device}: {result['status']}" + (f" -> {result['markdown']}" if "markdown" in result else ""),
                  flush=True)
        reprofiled = [device for device, result in outcome.items() if result["status"] == "reprofiled"]
        downstream: dict[str, dict] = {}
        if reprofiled and not searches_only:
            # the device steps of this run, and of earlier runs of a re-profile that spanned several
            done = {*finished, *(step for device in reprofiled for step in outcome[device]["steps"])}
            downstream = bring_up_to_date(params, root, results, done, reprofiled, finished)
        elif reprofiled:
            print("searches_only: the fine-tunes and what follows them are stale now (scan-edge status lists "
                  "them; scan-edge reproduce brings them up to date)", flush=True)
        for device in reprofiled:
            finish_reprofile(stages.Layout(root), device)
    finally:
        recorded = record_in_dvc(root, list(finished))
    return {"devices": outcome, "downstream": {step: o["status"] for step, o in downstream.items()},
            "recorded_in_dvc": recorded}


def reprofile_deployment(cron: str = DEFAULT_CRON, *, params_file: str = "params.yaml", profile: str | None = None,
                         root: str = str(stages.DATA_ROOT), searches_only: bool = False,
                         rule: dict | None = None, name: str = "reprofile"):
    """The flow as a deployment on a cron schedule (``flow.to_deployment``; serve it with
    ``prefect.serve``, which needs a real Prefect server)."""
    parameters = {"params_file": str(Path(params_file).resolve()), "profile": profile,
                  "root": str(Path(root).resolve()), "searches_only": searches_only, "rule": rule}
    return reprofile_flow.to_deployment(name=name, cron=cron, parameters=parameters,
                                        description="Re-profile devices whose runtime version changed, bring the "
                                                    "pipeline up to date; write a change report under "
                                                    f"{stages.Layout(root).reprofile}/.")


def serve_reprofile(cron: str = DEFAULT_CRON, **kwargs: Any) -> None:
    """Serve the scheduled deployment until interrupted (a local server is started if none is configured)."""
    with prefect_server(required=True):
        serve(reprofile_deployment(cron, **kwargs))


__all__ = ["reprofile_flow", "reprofile_device", "InProgress", "finish_reprofile", "reprofile_deployment",
           "serve_reprofile", "dependent_steps", "installed_runtime_version", "recorded_runtime_version",
           "device_steps", "forget_resume_stamps", "change_rule", "DEFAULT_CRON"]
