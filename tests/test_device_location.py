"""Where a device runs (nas_core.latency.location, tasks.board_worker): local, bundle and worker
devices, the one interface every device-side measurement goes through, and its bad inputs.

The worker tests stand up a simulated board (tasks.simulated_board): its own venv with another
onnxruntime and no torch, one core, a real ``prefect worker`` on a work pool.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nas_core.io import read_json
from nas_core.latency import timing
from nas_core.latency.devices import check_usable, load_profiles
from nas_core.latency.location import (RESULTS_NAME, RUNTIME_REPORT, LocalDevice, MeasurementsPending,
                                       TimingJob, device_access, host_lock_mode, import_results)
from nas_core.latency.timing import ModelEntry, TimingConfig
from tasks.simulated_board import SimulatedBoard
from tests._bundles import run_without_torch

FAST = TimingConfig(warmup_runs=2, warmup_ms=0, min_repeats=5, min_total_ms=2, max_repeats=100, max_total_ms=100,
                    check_every=5)
HOST_ORT = __import__("onnxruntime").__version__


def _profiles(**locations):
    section = {name: {"backend": "onnxruntime", "provider": "CPUExecutionProvider", "precision": "fp32",
                      "threads": 1, **values} for name, values in locations.items()}
    return load_profiles(section)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[ModelEntry, ...]:
    """Four tiny conv nets exported to ONNX."""
    import torch
    from torch import nn

    from nas_core.latency.export import export_onnx

    folder = tmp_path_factory.mktemp("location_models")
    entries = []
    for index, width in enumerate((4, 8, 16, 24)):
        torch.manual_seed(index)
        module = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
        entries.append(ModelEntry(f"m{index}", export_onnx(module, (1, 3, 16, 16), folder / f"m{index}.onnx"),
                                  (1, 3, 16, 16)))
    return tuple(entries)


def _job(models, name="lut", **kwargs) -> TimingJob:
    return TimingJob(name, models, models[0].id, FAST, drift_tolerance=10.0, **kwargs)


# ----------------------------------------------------------------------------- profiles and local
def test_a_board_is_never_usable_here_and_never_timed_here(models, tmp_path):
    profiles = _profiles(board={"location": "bundle", "location_options": {"bundles_dir": str(tmp_path)}},
                         here={})
    assert not check_usable(profiles["board"]).usable
    assert "never here" in check_usable(profiles["board"]).reason
    with pytest.raises(ValueError, match="never timed on this machine"):
        LocalDevice(profiles["board"])
    with pytest.raises(ValueError, match="unknown location 'moon'"):
        _profiles(x={"location": "moon"})
    assert host_lock_mode(profiles["here"]) == "exclusive" and host_lock_mode(profiles["board"]) is None
    shared = dataclasses.replace(profiles["board"], location_options={"shares_host_cpu": True})
    assert host_lock_mode(shared) == "exclusive"
    with pytest.raises(ValueError, match="needs location_options.bundles_dir"):
        device_access(dataclasses.replace(profiles["board"], location_options={}))
    with pytest.raises(ValueError, match="through the pipeline's stages"):
        device_access(dataclasses.replace(profiles["board"], location="worker"))


def test_local_device_records_where_it_timed(models, tmp_path):
    access = device_access(_profiles(here={})["here"])
    rows = access.time(_job(models), tmp_path / "t.parquet", progress=False)
    assert sorted(r["id"] for r in rows) == ["m0", "m1", "m2", "m3"]
    provenance = timing.read_rows(tmp_path / "t.parquet")[1]
    assert provenance["location"] == "local" and provenance["executor"]["python"].endswith("python")
    assert access.runtime_version() == HOST_ORT


# ----------------------------------------------------------------------------- bundle (offline)
def _run_on_board(folder: Path, *extra: str) -> None:
    done = run_without_torch(folder / "run_bundle.py", str(folder), "--out", str(folder / RESULTS_NAME), "--quiet",
                             "--runtime-report", str(folder / RUNTIME_REPORT), *extra, cwd=folder, timeout=300)
    assert done.returncode == 0, done.stderr


def test_bundle_device_goes_out_comes_back_and_resumes(models, tmp_path):
    profile = _profiles(board={"location": "bundle", "location_options": {"bundles_dir": str(tmp_path / "b")}})["board"]
    access = device_access(profile)
    assert access.runtime_version() is None  # nothing reported yet
    with pytest.raises(MeasurementsPending) as pending:
        access.time(_job(models), tmp_path / "lut.parquet")
    folder = pending.value.job_dir
    assert folder == tmp_path / "b" / "board" / "lut" and "run_bundle.py" in str(pending.value)
    assert read_json(folder / "job.json")["ids"] == ["m0", "m1", "m2", "m3"]
    # Interrupted on the board after two models, then resumed: nothing is measured twice.
    partial = timing.profile_models(models[:2], {**profile.to_settings()}, folder / RESULTS_NAME,
                                    reference_id="m0", config=FAST, progress=False, drift_tolerance=10.0)
    assert len(partial) == 2
    with pytest.raises(ValueError, match="no timing for 2 of 4 models"):
        access.time(_job(models), tmp_path / "lut.parquet")
    (folder / RESULTS_NAME).unlink()
    _run_on_board(folder)
    rows = access.time(_job(models), tmp_path / "lut.parquet")
    assert len(rows) == 4 and access.runtime_version() == HOST_ORT  # the board's report (same venv here)
    assert timing.read_rows(tmp_path / "lut.parquet")[1]["location"] == "bundle"


def test_bundle_results_of_another_runtime_or_a_cut_copy_are_refused(models, tmp_path):
    profile = _profiles(board={"location": "bundle", "location_options": {"bundles_dir": str(tmp_path)}})["board"]
    access = device_access(profile)
    with pytest.raises(MeasurementsPending) as pending:
        access.time(_job(models, "calibration"), tmp_path / "c.parquet")
    folder = pending.value.job_dir
    _run_on_board(folder)
    with pytest.raises(ValueError, match="re-profile it"):
        access.time(_job(models, "calibration", expected_runtime_version="0.9.0"), tmp_path / "c.parquet")
    good = (folder / RESULTS_NAME).read_bytes()
    (folder / RESULTS_NAME).write_bytes(good[: len(good) // 2])  # a copy cut short
    with pytest.raises(ValueError, match="Copy the file from the device again"):
        access.time(_job(models, "calibration"), tmp_path / "c.parquet")
    (folder / RESULTS_NAME).write_bytes(good)
    assert len(access.time(_job(models, "calibration"), tmp_path / "c.parquet")) == 4
    other_space = _job(models, "calibration", extra_provenance={"space": "scan-edge/v2-esha"})
    with pytest.raises(ValueError, match="made for search space None"):
        access.time(other_space, tmp_path / "c.parquet")


def test_import_results_finds_the_pending_job_they_answer(models, tmp_path):
    profile = _profiles(board={"location": "bundle", "location_options": {"bundles_dir": str(tmp_path / "b")}})["board"]
    access = device_access(profile)
    with pytest.raises(MeasurementsPending) as pending:
        access.time(_job(models[:2], "search-run-aaa"), tmp_path / "s.parquet")
    elsewhere = tmp_path / "copied"
    elsewhere.mkdir()
    board = pending.value.job_dir
    done = run_without_torch(board / "run_bundle.py", str(board), "--out", str(elsewhere / "r.parquet"), "--quiet",
                             cwd=elsewhere, timeout=300)
    assert done.returncode == 0, done.stderr
    with pytest.raises(ValueError, match="no pending job"):
        import_results(elsewhere / "r.parquet", tmp_path / "b", "board", "calibration")
    assert import_results(elsewhere / "r.parquet", tmp_path / "b", "board", "search-") == board
    assert len(access.time(_job(models[:2], "search-run-aaa"), tmp_path / "s.parquet")) == 2


# ----------------------------------------------------------------------------- worker (a stand-in pool)
class _FakeRun:
    def __init__(self, completed: bool, message: str = ""):
        self.state = type("State", (), {"is_completed": lambda self: completed, "message": message,
                                        "name": "Completed" if completed else "Crashed"})()


def test_worker_device_runs_the_board_flow_and_keeps_partial_work(models, tmp_path):
    from flows.device_profiling import runner_command
    from tasks.board_worker import BoardJobError, WorkerDevice

    profile = _profiles(board={"location": "worker", "location_options": {"shared_dir": str(tmp_path)}})["board"]
    calls = []

    def board_runs(name, parameters, timeout):
        calls.append((name, parameters))
        command = runner_command(parameters.get("bundle_dir"), parameters.get("out"),
                                 runtime_report=parameters.get("runtime_report"), runner=parameters.get("runner"),
                                 backend=parameters.get("backend"))
        done = run_without_torch(Path(command[1]), *command[2:], cwd=tmp_path, timeout=300)
        return _FakeRun(done.returncode == 0, done.stderr[-300:])

    access = WorkerDevice(profile, run_deployment=board_runs)
    assert access.runtime_version() == HOST_ORT
    rows = access.time(_job(models), tmp_path / "lut.parquet")
    assert len(rows) == 4 and calls[-1][0] == "run-bundle/board"
    assert calls[-1][1]["out"].endswith("board/lut/results.parquet")
    runs = len(calls)
    assert len(access.time(_job(models), tmp_path / "lut.parquet")) == 4 and len(calls) == runs  # finished: reused

    def board_disappears(name, parameters, timeout):
        return _FakeRun(False, "worker lost")

    gone = WorkerDevice(profile, run_deployment=board_disappears)
    with pytest.raises(BoardJobError, match="Measurements already made are kept"):
        gone.time(_job(models, "calibration"), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="needs location_options.shared_dir"):
        WorkerDevice(dataclasses.replace(profile, location_options={}))


# ----------------------------------------------------------------------------- a real board and worker
@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A simulated board with onnxruntime 1.30.0 (the host has 1.31.1), a real Prefect server and worker."""
    import os

    from tasks._server import prefect_server
    from tasks.simulated_board import SimulatedBoard

    root = tmp_path_factory.mktemp("board")
    simulated = SimulatedBoard(root).create()
    with prefect_server(required=True, home=root / "server") as url:
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        simulated.deploy("board_ort", url)
        simulated.start_worker(url)
        try:
            yield simulated, url
        finally:
            simulated.stop_worker()
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous


def test_a_real_worker_on_another_runtime_times_jobs_and_resumes_after_it_disappears(board, models, tmp_path):
    from tasks.board_worker import BoardJobError, WorkerDevice

    simulated, url = board
    assert simulated.installed("torch") is None and simulated.installed("onnxruntime") == "1.30.0" != HOST_ORT
    profile = load_profiles({"board_ort": simulated.profile()})["board_ort"]
    access = WorkerDevice(profile)
    assert access.runtime_version() == "1.30.0"
    rows = access.time(_job(models), tmp_path / "lut.parquet")
    assert {r["runtime_version"] for r in rows} == {"1.30.0"}
    provenance = timing.read_rows(tmp_path / "lut.parquet")[1]
    assert provenance["location"] == "worker" and provenance["executor"]["python"] == str(simulated.python)

    # The worker goes away mid-job: a clear error, the finished models kept, the job resumes.
    many = tuple(ModelEntry(f"{e.id}-{k}", e.path, e.input_shape) for k in range(30) for e in models)
    # Slow enough (~50 s of timing) that the job cannot finish between the tenth row and the stop (the
    # flow run is killed at once; it used to survive the worker in its own session and finish the job).
    slow = dataclasses.replace(FAST, min_total_ms=400, min_repeats=20, max_repeats=1_000_000, max_total_ms=1000)
    job = TimingJob("calibration", many, many[0].id, slow, drift_tolerance=10.0)
    results = simulated.jobs / "board_ort" / "calibration" / RESULTS_NAME
    stopper = threading.Thread(target=_stop_when_started, args=(simulated, results))
    stopper.start()
    with pytest.raises(BoardJobError, match="kept"):
        WorkerDevice(dataclasses.replace(profile, location_options={**profile.location_options,
                                                                    "timeout_s": 120})).time(job, tmp_path / "c.pq")
    stopper.join()
    kept = len(timing.read_rows(results)[0])
    assert 0 < kept < len(many)
    simulated.start_worker(url)
    assert len(access.time(job, tmp_path / "c.parquet")) == len(many)


def _stop_when_started(simulated, results: Path, timeout: float = 600.0) -> None:
    # Long: a worker on a busy machine (the whole suite) may take minutes to pick the flow run up;
    # it returns as soon as the board has kept ten rows.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if results.exists() and len(timing.read_rows(results)[0]) >= 10:
            simulated.stop_worker()
            return
        time.sleep(0.2)


# ----------------------------------------------------------------------------- through the pipeline's stages
def test_baselines_stage_of_a_bundle_device_stops_with_the_bundle_then_imports_it(tmp_path):
    from nas_core.io import read_parquet, read_provenance
    from nas_core.params import load_params
    from tasks import stages

    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    params["devices"] = {**params["devices"], "board": {
        "backend": "onnxruntime", "provider": "CPUExecutionProvider", "precision": "fp32", "threads": 1,
        "location": "bundle", "resolution": 64}}
    params["baselines"] = {"models": [], "timing": {"warmup_runs": 1, "warmup_ms": 0, "min_repeats": 3,
                                                    "min_total_ms": 1, "max_total_ms": 50}}
    with pytest.raises(MeasurementsPending) as pending:
        stages.stage_baselines(params, "board", root=tmp_path)
    folder = pending.value.job_dir
    assert folder == tmp_path / "bundles" / "board" / "baselines"
    assert not (tmp_path / "baselines" / "board.parquet").exists()  # nothing timed here
    _run_on_board(folder)
    stages.stage_baselines(params, "board", root=tmp_path)
    table = read_parquet(tmp_path / "baselines" / "board.parquet")
    assert list(table["model"]) == ["mobilenetv2_100"] and table["median_ms"].iloc[0] > 0
    assert read_provenance(tmp_path / "baselines" / "board.parquet")["location"] == "bundle"
    assert stages.device_runtime_version(params, "board", tmp_path) == HOST_ORT  # the board's own report


def test_a_stopped_board_takes_its_flow_runs_with_it(tmp_path):
    """The worker's flow run may live in a session of its own: stopping the board kills it too (it used
    to finish its job after the worker was gone)."""
    pid_file = tmp_path / "flow_run.pid"
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
              f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
              "time.sleep(600)\n")
    board = SimulatedBoard(tmp_path)
    board.worker = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    flow_run = int(pid_file.read_text())
    worker = board.worker
    board.stop_worker()
    assert worker.poll() is not None and board.worker is None
    deadline = time.monotonic() + 10
    while Path(f"/proc/{flow_run}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    state = Path(f"/proc/{flow_run}/stat").read_text().split()[2] if Path(f"/proc/{flow_run}").exists() else "gone"
    assert state in ("gone", "Z"), f"the flow run outlived its board (state {state})"
