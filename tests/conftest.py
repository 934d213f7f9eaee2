"""Fixtures shared by the whole test suite.

Prefect fixtures are opt-in (request them by name), because a test Prefect server costs
seconds to start and most tests call ``task.fn(...)`` / ``flow.fn(...)``, which needs no API.
So is ``one_thread``; ``quick_timing`` and ``shared_dataset`` serve the training and
transfer tests (fine-tuning, detection).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

# On a busy 2-core machine Prefect's temporary server can take longer than its 20 s default to start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server (SQLite in a temp dir) for the whole session.

    Starting it costs ~9-12 s once; each flow run after that ~1 s. Heartbeats are off, or
    every flow run spends ~1 s joining the heartbeat thread. Once requested, its settings
    (``PREFECT_API_URL`` pointing at it) stay current until the session ends, also for
    later tests that did not request it; use ``prefect_api_unset`` to opt out.
    """
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    started = time.monotonic()
    # Analytics off: with no internet its telemetry job only logs errors (and SQLite
    # "database is locked" tracebacks). The server subprocess inherits current settings.
    with temporary_settings(updates={PREFECT_SERVER_ANALYTICS_ENABLED: False}), prefect_test_harness(
        server_startup_timeout=120
    ):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            print(f"\n[prefect_harness] test server ready in {time.monotonic() - started:.1f} s")
            yield


@pytest.fixture
def prefect_services_drained():
    """Prefect's events and API-log workers (left running by earlier flow tests) stopped.

    For tests whose result depends on nobody else drawing from Python's global ``random``:
    the events client's websocket keepalive ping calls ``random.getrandbits`` in a
    background thread every 20 s. Later flow runs start the workers again on demand."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=30, at_exit=False)
    yield


@pytest.fixture
def prefect_api_unset(monkeypatch):
    """No Prefect API configured (env var and settings), even after ``prefect_harness``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


@pytest.fixture(scope="session", autouse=True)
def image_check_cache(tmp_path_factory):
    """The up-front image checks cache their verdicts in a session folder, not in ~/.cache
    (``nas_core.data.folders.image_check_cache_dir``; subprocesses inherit the variable)."""
    import os

    from nas_core.data.folders import CACHE_DIR_ENV

    previous = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(tmp_path_factory.mktemp("scan-edge-cache"))
    yield Path(os.environ[CACHE_DIR_ENV])
    if previous is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = previous


@pytest.fixture(scope="session", autouse=True)
def session_cpu_lock(tmp_path_factory):
    """The machine-wide CPU lock (``tasks.cpu_lock``) on a file of this test session: a pipeline
    or benchmark measuring latency on the same machine neither waits for the tests nor makes
    them wait (tests of the lock itself point it at their own file)."""
    previous = os.environ.get("SCAN_EDGE_CPU_LOCK")
    os.environ["SCAN_EDGE_CPU_LOCK"] = str(tmp_path_factory.mktemp("cpu-lock") / "cpu.lock")
    yield
    if previous is None:
        os.environ.pop("SCAN_EDGE_CPU_LOCK", None)
    else:
        os.environ["SCAN_EDGE_CPU_LOCK"] = previous


# --------------------------------------------------------------------------- training and transfer tests
SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole module (opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): on a shared 2-core machine,
    OpenMP threads fighting other processes made training steps 10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def quick_timing() -> dict:
    """``TimingConfig`` overrides for latencies a test needs to exist, not to be accurate."""
    return {"warmup_runs": 2, "warmup_ms": 5, "min_repeats": 5, "min_total_ms": 20, "max_total_ms": 300}


@pytest.fixture(scope="session")
def shared_dataset():
    """``shared_dataset(name)``: the real dataset ``../shared/datasets/<name>``, or a skip
    when that folder is absent (it lives beside the project, not in it)."""

    def find(name: str) -> Path:
        root = SHARED_DATASETS / name
        if not root.is_dir():
            pytest.skip(f"{root} is absent (the shared real datasets live beside the project)")
        return root

    return find
