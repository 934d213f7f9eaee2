"""The ``run-bundle`` flow: time a profiling bundle on the machine a Prefect worker runs on.

A board that cannot run this project (no torch) is profiled from a bundle
(``scan-edge profile bundle``: ONNX models + a torch-free runner, ``nas_core.latency.bundle``).
Copying it over and running it by hand works (README, "Profiling a real edge device"); this flow
makes the same step schedulable: deploy it to a work pool whose worker runs *on the board*,
and every run of the deployment times the bundle there::

    prefect work-pool create edge-boards --type process      # once
    prefect worker start --pool edge-boards                  # on the board
    run_bundle_flow.from_source(".", "flows/device_profiling.py:run_bundle_flow").deploy(
        "jetson", work_pool_name="edge-boards")              # here

The flow itself needs only Prefect and the bundle's own requirements on the board: it runs the
bundle's ``run_bundle.py`` in a subprocess with the worker's Python, so nothing from torch or
``nas_core`` is imported there. The runner resumes a partial table, so a retried run loses
nothing. The result is read back here with ``scan-edge profile import``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger

RUNNER_NAME = "run_bundle.py"  # nas_core.latency.bundle.RUNNER_NAME (not imported: no torch on the board)


def runner_command(bundle_dir: str | Path | None, out: str | Path | None, device_name: str | None = None,
                   threads: int | None = None, python: str = sys.executable,
                   runtime_report: str | Path | None = None, backend: str | None = None,
                   runner: str | Path | None = None) -> list[str]:
    """The command that times ``bundle_dir`` into ``out`` (checks the bundle first), or with no
    bundle only writes ``runtime_report`` (what the board runs) with the given ``runner``."""
    if bundle_dir is None:
        if runtime_report is None or runner is None:
            raise ValueError("runner_command: without a bundle, give runtime_report and the runner's path")
        return [python, str(runner), "--runtime-report", str(runtime_report), "--backend", backend or "onnxruntime"]
    bundle_dir = Path(bundle_dir)
    for needed in (RUNNER_NAME, "manifest.json"):
        if not (bundle_dir / needed).is_file():
            raise FileNotFoundError(f"{bundle_dir} is not a profiling bundle: {needed} is missing "
                                    "(make one with `scan-edge profile bundle`)")
    command = [python, str(bundle_dir / RUNNER_NAME), str(bundle_dir), "--out", str(out), "--quiet"]
    if device_name:
        command += ["--device-name", device_name]
    if threads:
        command += ["--threads", str(threads)]
    if runtime_report:
        command += ["--runtime-report", str(runtime_report)]
    return command


@flow(name="run-bundle", log_prints=True, retries=1)
def run_bundle_flow(bundle_dir: str | None = None, out: str | None = None, device_name: str | None = None,
                    threads: int | None = None, runtime_report: str | None = None, backend: str | None = None,
                    runner: str | None = None) -> str:
    """Time every model of the bundle at ``bundle_dir`` on this machine; returns the table's path
    (default ``<bundle_dir>/lut.parquet``, the file ``scan-edge profile import`` reads).

    ``runtime_report``: also write what this machine runs there (JSON). Without a bundle,
    only that, with the runner script at ``runner`` (the pipeline's runtime check of a board).
    """
    if bundle_dir is not None:
        out = out or str(Path(bundle_dir) / "lut.parquet")
    command = runner_command(bundle_dir, out, device_name, threads, runtime_report=runtime_report,
                             backend=backend, runner=runner)
    done = subprocess.run(command, capture_output=True, text=True)
    logger = get_run_logger()
    if done.stdout.strip():
        logger.info(done.stdout.strip())
    if done.returncode != 0:
        raise RuntimeError(f"the bundle runner failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return out or str(runtime_report)
