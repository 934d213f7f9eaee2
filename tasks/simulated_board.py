"""A simulated edge board on this machine: its own environment, its own core, a real Prefect worker.

Tests and ``benchmarks/remote_board.py`` need a board that is *not* the host, without owning
one. This one is as separate as one machine allows:

* its own virtualenv (``uv venv``) with numpy, pyarrow, Prefect and an onnxruntime version
  other than the host's, and **no torch and no scan-edge**: it can only run what a bundle
  carries (the torch-free runner and ONNX files);
* pinned to one core (``taskset -c CORE``), like a small board's single big core;
* reached only through a Prefect work pool: ``prefect worker start --pool POOL`` runs in
  that environment, and the host starts the ``run-bundle`` deployment on it
  (``flows/device_profiling.py``), as it would for a real board.

A runtime upgrade on the board is :meth:`SimulatedBoard.install_runtime` with another version.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BOARD_RUNTIME = "1.30.0"  # onnxruntime on the board: not the host's 1.31.1
# Prefect on the board, with the pins it needs here (ENVIRONMENT.md / pyproject.toml).
BOARD_PACKAGES = ("numpy<3", "pyarrow", "prefect==3.8.8", "fastapi<0.155", "sqlalchemy<2.1")


class BoardError(RuntimeError):
    """The simulated board could not be set up or started (the message carries the log tail)."""


@dataclasses.dataclass
class SimulatedBoard:
    """A board's environment under ``root``: ``venv/``, ``jobs/`` (the shared folder), ``worker.log``."""

    root: Path
    pool: str = "simulated-boards"
    core: int = 1
    runtime_version: str = DEFAULT_BOARD_RUNTIME
    worker: subprocess.Popen | None = None

    def __post_init__(self):
        self.root = Path(self.root)

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    # ---- the environment
    def create(self) -> "SimulatedBoard":
        """Make the venv (no torch) with the board's onnxruntime; idempotent."""
        self.jobs.mkdir(parents=True, exist_ok=True)
        if not self.python.exists():
            _run([_uv(), "venv", "-q", "--python", sys.executable, str(self.root / "venv")], "create the board's venv")
        self.install_runtime(self.runtime_version, extra=BOARD_PACKAGES)
        return self

    def install_runtime(self, version: str, extra: tuple[str, ...] = ()) -> None:
        """Install (or upgrade to) ``onnxruntime==version`` on the board: a compiler update."""
        _run([_uv(), "pip", "install", "-q", "--python", str(self.python), f"onnxruntime=={version}", *extra],
             f"install onnxruntime {version} on the board")
        self.runtime_version = version

    def installed(self, module: str) -> str | None:
        """``module.__version__`` in the board's environment (None when it is not installed)."""
        done = subprocess.run([str(self.python), "-c", f"import {module}; print({module}.__version__)"],
                              capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    # ---- the worker
    def profile(self, name: str = "board_ort", **overrides: Any) -> dict:
        """The ``devices:`` entry of this board (params.yaml form)."""
        entry = {"backend": "onnxruntime", "provider": "CPUExecutionProvider", "precision": "fp32", "threads": 1,
                 "options": {"clock": "cpu"}, "location": "worker",
                 "location_options": {"work_pool": self.pool, "deployment": name, "shared_dir": str(self.jobs),
                                      "shares_host_cpu": True, "timeout_s": 1800},
                 "description": f"simulated board: onnxruntime {self.runtime_version} on core {self.core}"}
        entry.update(overrides)
        return entry

    def deploy(self, device: str, api_url: str) -> None:
        """Create the work pool and the ``run-bundle/<device>`` deployment, as ``scan-edge board
        deploy`` does (run as a command: ``tasks`` does not import ``flows``)."""
        env = {**os.environ, "PREFECT_API_URL": api_url}
        code = f"from flows.cli_board import deploy_run_bundle; deploy_run_bundle({device!r}, {self.pool!r})"
        _run([sys.executable, "-c", code], f"deploy run-bundle/{device}", env=env, cwd=PROJECT_ROOT)

    def start_worker(self, api_url: str, startup_s: float = 60.0) -> None:
        """``prefect worker start`` in the board's environment, pinned to its core."""
        if self.worker is not None and self.worker.poll() is None:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VIRTUAL_ENV"))}
        env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(self.root / "prefect-home"),
                   PATH=f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}")
        command = [str(self.python.parent / "prefect"), "worker", "start", "--pool", self.pool, "--type", "process"]
        if shutil.which("taskset"):
            command = ["taskset", "-c", str(self.core), *command]
        log = open(self.root / "worker.log", "ab")
        self.worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise BoardError(f"the board's worker exited ({self.worker.returncode}): {self.log_tail()}")
            if b"started" in (self.root / "worker.log").read_bytes().lower():
                return
            time.sleep(0.5)
        raise BoardError(f"the board's worker did not start within {startup_s:.0f} s: {self.log_tail()}")

    def stop_worker(self) -> None:
        """Stop the worker as a board that goes away stops: the flow runs it had started die at
        once (killed by process: a flow run may run in a session of its own, and one left running
        finished its job after the worker was stopped), then the worker itself, which reports
        them crashed to the server on its way out (SIGKILL if it takes over 20 s)."""
        if self.worker is None:
            return
        if self.worker.poll() is None:
            for pid in _descendants(self.worker.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.worker.pid, signal.SIGTERM)
            try:
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait()
        self.worker = None

    def log_tail(self, chars: int = 3000) -> str:
        path = self.root / "worker.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _uv() -> str:
    local = Path(sys.executable).parent / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    if not found:
        raise BoardError("uv is needed to build the simulated board's environment (pip install uv)")
    return found


def _run(command: list[str], what: str, env: dict | None = None, cwd: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise BoardError(f"could not {what}: {(done.stderr or done.stdout).strip()[-2000:]}")
