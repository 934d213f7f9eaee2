"""A real Prefect API server for the runs that need one, and a guard for silent failures.

With ``PREFECT_API_URL`` unset, Prefect starts a temporary in-process server per process.
That serves single-process flows (thread runner), but not schedules, ``serve``, or
process/Dask task runners: Dask workers cannot reach it, and the flow can then return
``None`` without raising. ``prefect_server(required=True)`` starts a real
``prefect server start`` (project-local home and SQLite DB) for the duration of a block;
``require_flow_result`` turns a ``None`` from a multi-process run into a clear error.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from prefect.events.worker import EventsWorker
from prefect.exceptions import MissingResult
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.states import State
from prefect.utilities.asyncutils import run_coro_as_sync

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER_HOME = PROJECT_ROOT / ".prefect" / "server"
_LOG_TAIL_CHARS = 4000


class PrefectServerError(RuntimeError):
    """The local Prefect server did not start (the message carries its log tail)."""


def configured_api_url() -> str | None:
    """The API URL this process would use: env var, Prefect profile or settings context."""
    return os.environ.get("PREFECT_API_URL") or get_current_settings().api.url


def _free_port() -> int:
    # Bind-and-release: a small race with other processes, reported clearly if it is lost.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log_path: Path) -> str:
    try:
        return log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
    except OSError:
        return "(no server log)"


def _server_env(home: Path) -> dict[str, str]:
    """The child's environment: its own home and SQLite DB, never another server's URL."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",  # the UI costs start-up time; run `prefect server start` for it
    )
    return env


def _server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def _is_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_healthy(process: subprocess.Popen, api_url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectServerError(
                f"`prefect server start` exited with code {process.returncode} before answering "
                f"{api_url}/health. Server log ({log_path}):\n{_log_tail(log_path)}"
            )
        if _is_healthy(api_url):
            return
        time.sleep(0.25)
    raise PrefectServerError(
        f"Prefect server did not answer {api_url}/health within {timeout:.0f} s. "
        f"Server log ({log_path}):\n{_log_tail(log_path)}"
    )


def _stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after a grace period."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def start_local_server(home: str | os.PathLike | None = None, startup_timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``prefect server start`` on a free 127.0.0.1 port; yield (API URL, process).

    The server runs in its own process group (so its workers go with it) and is stopped
    on exit from the block, including on exceptions and KeyboardInterrupt.
    """
    home = Path(home) if home is not None else DEFAULT_SERVER_HOME
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log_path = home / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            _server_command(port), env=_server_env(home), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        _wait_until_healthy(process, api_url, log_path, startup_timeout)
        yield api_url, process
    finally:
        _stop(process)


def _drain_log_and_event_workers() -> None:
    """Send buffered logs and events to the current API and retire their workers.

    Needed whenever the API URL changes: Prefect's events worker is one per process
    whatever the URL, so a worker started for an earlier server would keep sending this
    run's events there (and fail to find this run). Also done before a server stops, as
    Prefect's test harness does, or the flush at exit prints "Error logging to API".
    """
    async def drain() -> None:
        for worker in (APILogWorker, EventsWorker):
            pending = worker.drain_all()
            if inspect.isawaitable(pending):
                await pending

    try:
        run_coro_as_sync(drain())
    except Exception as err:  # best effort: never mask the block's own outcome
        print(f"prefect_server: could not flush logs/events: {err!r}", file=sys.stderr)


@contextlib.contextmanager
def using_api_url(api_url: str) -> Iterator[None]:
    """Point this process and the processes it starts (Dask workers) at ``api_url``."""
    previous = os.environ.get("PREFECT_API_URL")
    _drain_log_and_event_workers()  # they were bound to the previous API
    os.environ["PREFECT_API_URL"] = api_url  # inherited by child processes
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):  # read by this process
            try:
                yield
            finally:
                _drain_log_and_event_workers()  # while api_url still answers
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@contextlib.contextmanager
def prefect_server(required: bool, *, home: str | os.PathLike | None = None, startup_timeout: float = 120.0) -> Iterator[str | None]:
    """Make a real Prefect API available for the block when ``required``; yield its URL.

    * not required: do nothing, yield ``None`` (the in-process ephemeral server serves
      single-process flows);
    * ``PREFECT_API_URL`` already set (env or profile): use it, start nothing (a server
      you run yourself, e.g. with the UI, or Prefect Cloud);
    * otherwise: start ``prefect server start`` with a project-local home
      (``.prefect/server``) and SQLite DB, and stop it when the block exits.
    """
    if not required:
        yield None
        return
    existing = configured_api_url()
    if existing:
        with using_api_url(existing):  # exported too, so Dask workers see it
            yield existing
        return
    with start_local_server(home, startup_timeout) as (api_url, _process):
        with using_api_url(api_url):
            yield api_url


def require_flow_result(state_or_result: Any, what: str = "flow") -> Any:
    """Return a flow's result, raising a clear error where a multi-process run lost it.

    Accepts a ``State`` (from ``flow(..., return_state=True)``) or a plain result. A
    failed state re-raises its exception; a ``None`` result is an error, because the
    pipeline's flows always return something (paths, metrics) and ``None`` is the known
    symptom of Dask workers that could not reach the Prefect API.
    """
    result = state_or_result
    if isinstance(state_or_result, State):
        if not state_or_result.is_completed():
            state_or_result.result(raise_on_failure=True)  # raises the underlying error
            raise RuntimeError(f"{what} ended in state {state_or_result.type.value}: {state_or_result.message}")
        try:
            result = state_or_result.result()
        except MissingResult:  # a completed state whose data never arrived: the same failure
            result = None
    if result is None:
        raise RuntimeError(
            f"{what} returned None. With a Dask or process task runner this usually means the "
            "workers could not reach a Prefect API: run the flow inside "
            "`tasks._server.prefect_server(required=True)` or set PREFECT_API_URL to a running server."
        )
    return result
