"""Orchestration plumbing: content-addressed caching, the local server, runners, cpu_lock."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prefect import flow, task, unmapped
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import _cache, _server, cpu_lock
from tasks._cache import (
    MISSING,
    artifact_cache,
    cached_task_options,
    path_digest,
    runtime_fingerprint,
)
from tasks._runners import runner_needs_server, task_runner_from_params
from tasks._server import PrefectServerError, prefect_server, require_flow_result

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _make_old(path: Path) -> None:
    """Back-date a file so its digest may be memoised (fresh files never are)."""
    past = time.time() - 60
    os.utime(path, (past, past))


# ---------------------------------------------------------------------------------------
# Content digests
# ---------------------------------------------------------------------------------------


def test_path_digest_follows_file_and_directory_content(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha")
    (data / "sub").mkdir()
    (data / "sub" / "b.txt").write_text("beta")

    first = path_digest(data)
    assert path_digest(data) == first
    (data / "sub" / "b.txt").write_text("BETA")
    changed = path_digest(data)
    assert changed != first
    (data / "sub" / "b.txt").rename(data / "sub" / "c.txt")  # same bytes, new name
    assert path_digest(data) != changed
    assert path_digest(tmp_path / "nothing-here") == MISSING
    assert path_digest(data / "a.txt") == path_digest(str(data / "a.txt"))


def test_file_digests_are_memoised_by_stat(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        (data / f"{i}.bin").write_bytes(os.urandom(1000))
        _make_old(data / f"{i}.bin")
    fresh = data / "fresh.bin"
    fresh.write_bytes(b"just written")
    _cache.clear_digest_memo()
    calls = []
    real = _cache._sha256_file
    monkeypatch.setattr(_cache, "_sha256_file", lambda p: calls.append(p) or real(p))

    first = path_digest(data)
    assert len(calls) == 6
    assert path_digest(data) == first
    # Only the just-written file is read again: its mtime is too recent to trust.
    assert calls[6:] == [fresh.resolve()]


# ---------------------------------------------------------------------------------------
# The cache policy, without a Prefect API
# ---------------------------------------------------------------------------------------


def test_key_uses_content_for_paths_and_declared_str_params(tmp_path):
    src = tmp_path / "manifest.csv"
    src.write_text("v1")
    policy = artifact_cache(path_params=("manifest",), output_params=("out",))
    key = lambda **inputs: policy.compute_key(None, inputs, {})  # noqa: E731

    before_path, before_str = key(manifest=src), key(manifest=str(src))
    undeclared = artifact_cache().compute_key(None, {"manifest": str(src)}, {})
    out_before = key(manifest=src, out=tmp_path / "out")
    src.write_text("v2")
    (tmp_path / "out").mkdir()  # the task's output appearing must not change its key

    assert key(manifest=src) != before_path
    assert key(manifest=str(src)) != before_str
    assert artifact_cache().compute_key(None, {"manifest": str(src)}, {}) == undeclared
    src.write_text("v1")
    assert key(manifest=src, out=tmp_path / "out") == out_before


def test_key_changes_when_a_code_module_changes(tmp_path, monkeypatch):
    module = tmp_path / "scan_tmp_dep.py"
    module.write_text("def f():\n    return 1\n")
    package = tmp_path / "scan_tmp_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "inner.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = artifact_cache(code_modules=("scan_tmp_dep", "scan_tmp_pkg"))
    key = lambda: policy.compute_key(None, {"x": 1}, {})  # noqa: E731

    original = key()
    module.write_text("def f():\n    return 2\n")
    edited_module = key()
    (package / "inner.py").write_text("X = 2\n")
    edited_package = key()

    assert len({original, edited_module, edited_package}) == 3
    module.write_text("def f():\n    return 1\n")
    (package / "inner.py").write_text("X = 1\n")
    assert key() == original


def test_unknown_code_module_fails_when_the_policy_is_built():
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        artifact_cache(code_modules=("no_such_module_xyz",))


def test_extra_values_join_the_key():
    state = {"version": "1.0"}
    policy = artifact_cache(extra=lambda: dict(state))
    before = policy.compute_key(None, {"x": 1}, {})
    state["version"] = "1.1"
    assert policy.compute_key(None, {"x": 1}, {}) != before


def test_runtime_fingerprint():
    onnxruntime = pytest.importorskip("onnxruntime")
    info = runtime_fingerprint("onnxruntime")
    assert info["version"] == onnxruntime.__version__ and info["machine"]
    with pytest.raises(ValueError, match="unknown runtime"):
        runtime_fingerprint("tensorflow-lite")


# ---------------------------------------------------------------------------------------
# (a) cache hits across flow runs, through Prefect
# ---------------------------------------------------------------------------------------


@task(cache_policy=artifact_cache(output_params=("ran_log",)), persist_result=True)
def read_source(source: Path, ran_log: Path) -> str:
    """Return the file's text; append a line to ``ran_log`` each time the body runs."""
    with ran_log.open("a") as fh:
        fh.write("ran\n")
    return source.read_text()


def test_flow_task_is_cached_by_file_content(prefect_harness, tmp_path):
    source, unrelated, ran_log = tmp_path / "source.txt", tmp_path / "unrelated.txt", tmp_path / "ran.log"
    source.write_text("v1")
    unrelated.write_text("x")
    cached_read = read_source.with_options(result_storage=tmp_path / "results")

    @flow
    def read_flow(path: Path) -> str:
        return cached_read(path, ran_log)

    assert read_flow(source) == "v1"
    assert read_flow(source) == "v1"
    assert _lines(ran_log) == 1, "second run should be a cache hit"

    source.write_text("version 2")
    assert read_flow(source) == "version 2"
    assert _lines(ran_log) == 2, "changed content should miss the cache"

    unrelated.write_text("changed")
    assert read_flow(source) == "version 2"
    assert _lines(ran_log) == 2, "an unrelated file must not invalidate the cache"

    ran_log.unlink()  # a declared output disappears: the cached result must not be trusted
    assert read_flow(source) == "version 2"
    assert _lines(ran_log) == 1, "a missing output should force one run"
    assert read_flow(source) == "version 2"
    assert _lines(ran_log) == 1, "then the cache hits again"


def test_cached_task_options_persist_under_a_path(tmp_path):
    options = cached_task_options(artifact_cache(), storage=tmp_path / "store")
    assert options["persist_result"] is True
    assert options["result_storage"] == (tmp_path / "store").resolve() and options["result_storage"].is_dir()
    configured = task(**options)(lambda: 1)
    assert configured.result_storage == (tmp_path / "store").resolve()


# ---------------------------------------------------------------------------------------
# (c) a real server for a Dask run; cache hits across processes
# ---------------------------------------------------------------------------------------


def _server_pids(port: str) -> list[int]:
    """Processes whose command line is `prefect server start ... --port <port>`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in argv and b"start" in argv and port.encode() in argv:
            pids.append(int(entry.name))
    return pids


@task(cache_policy=artifact_cache(output_params=("ran_log",)), persist_result=True)
def square(x: int, ran_log: Path) -> int:
    with ran_log.open("a") as fh:
        fh.write(f"{os.getpid()}\n")
    return x * x


@flow
def squares(n: int, ran_log: Path, results: Path) -> list[int]:
    futures = square.with_options(result_storage=results).map(range(n), ran_log=unmapped(ran_log))
    return [f.result() for f in futures]


def test_dask_flow_runs_against_a_started_server(prefect_api_unset, tmp_path):
    ran_log, results = tmp_path / "ran.log", tmp_path / "results"
    runner_params = {"runner": "dask", "n_workers": 2}
    started = time.monotonic()
    with prefect_server(required=runner_needs_server(runner_params), home=tmp_path / "server") as api_url:
        print(f"\n[prefect_server] ready in {time.monotonic() - started:.1f} s at {api_url}")
        port = api_url.rsplit(":", 1)[1].split("/")[0]
        assert _server_pids(port), "the server process should be running"
        assert os.environ["PREFECT_API_URL"] == api_url

        dask_flow = squares.with_options(task_runner=task_runner_from_params(runner_params))
        state = dask_flow(4, ran_log, results, return_state=True)
        assert require_flow_result(state, "squares") == [0, 1, 4, 9]
        worker_pids = set(ran_log.read_text().split())
        assert str(os.getpid()) not in worker_pids, "tasks should have run in Dask worker processes"

        # Same tasks in this process: hits on results the workers persisted.
        thread_flow = squares.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
        assert thread_flow(4, ran_log, results) == [0, 1, 4, 9]
        assert _lines(ran_log) == 4, "cache should hit across processes"

    assert "PREFECT_API_URL" not in os.environ
    deadline = time.monotonic() + 10
    while _server_pids(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _server_pids(port), "the server process should be gone"


def test_prefect_server_not_required_or_already_configured_starts_nothing(monkeypatch):
    def no_popen(*args, **kwargs):
        raise AssertionError("no server should be started")

    monkeypatch.setattr(_server.subprocess, "Popen", no_popen)
    with prefect_server(required=False) as url:
        assert url is None
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with prefect_server(required=True) as url:
        assert url == "http://127.0.0.1:9/api"


def test_prefect_server_start_failure_shows_the_log(prefect_api_unset, tmp_path, monkeypatch):
    crash = [sys.executable, "-c", "import sys; print('boom: port in use'); sys.exit(3)"]
    monkeypatch.setattr(_server, "_server_command", lambda port: crash)
    with pytest.raises(PrefectServerError, match=r"(?s)exited with code 3.*boom: port in use"):
        with prefect_server(required=True, home=tmp_path, startup_timeout=20):
            pass


def test_require_flow_result_turns_none_into_an_error():
    assert require_flow_result(Completed(data=[1])) == [1]
    with pytest.raises(RuntimeError, match="could not reach a Prefect API"):
        require_flow_result(Completed(data=None), "squares")
    with pytest.raises(ValueError, match="bad input"):
        require_flow_result(Failed(data=ValueError("bad input")))


# ---------------------------------------------------------------------------------------
# Runners and (d) deployments
# ---------------------------------------------------------------------------------------


def test_task_runner_from_params():
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner_from_params(None), ThreadPoolTaskRunner)
    assert task_runner_from_params({"runner": "thread", "max_workers": 3})._max_workers == 3
    local = task_runner_from_params({"runner": "dask", "n_workers": 3})
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["threads_per_worker"] == 1
    remote = task_runner_from_params({"runner": "dask", "dask_address": "tcp://10.0.0.5:8786"})
    assert remote.address == "tcp://10.0.0.5:8786"
    assert runner_needs_server({"runner": "dask"}) and not runner_needs_server({"runner": "thread"})
    for bad in ({"runner": "ray"}, {"runer": "dask"}, {"runner": "dask", "n_workers": 0}):
        with pytest.raises(ValueError):
            task_runner_from_params(bad)


@flow
def weekly_flow() -> int:
    return 1


def test_deployment_has_cron_schedule():
    deployment = weekly_flow.to_deployment(name="weekly", cron="0 3 * * 1")
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]


# ---------------------------------------------------------------------------------------
# (e) cpu_lock across processes and threads
# ---------------------------------------------------------------------------------------

_LOCK_CHILD = textwrap.dedent(
    """
    import sys
    from tasks import cpu_lock
    mode, path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    try:
        with cpu_lock(mode, path=path, timeout=None if timeout < 0 else timeout):
            print("acquired", flush=True)
            sys.stdin.readline()  # hold until the test says so
    except TimeoutError:
        print("timeout", flush=True)
    """
)


class LockChild:
    """A process that takes cpu_lock and holds it until ``release()``."""

    def __init__(self, mode: str, path: Path, timeout: float = -1):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LOCK_CHILD, mode, str(path), str(timeout)],
            cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def outcome(self) -> str:
        return self.process.stdout.readline().strip()

    def release(self) -> None:
        self.process.communicate("\n", timeout=10)


def _wait_until_gate_taken(lock_path: Path, timeout: float = 10) -> None:
    """Wait until a waiting exclusive acquirer holds the gate lock."""
    gate = os.open(f"{lock_path}.gate", os.O_RDWR | os.O_CREAT)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(gate, fcntl.LOCK_UN)
                time.sleep(0.02)
            except BlockingIOError:
                return
        raise AssertionError("the exclusive acquirer never took the gate")
    finally:
        os.close(gate)


def test_exclusive_holder_blocks_shared_in_another_process(tmp_path):
    lock = tmp_path / "cpu.lock"
    child = LockChild("exclusive", lock)
    assert child.outcome() == "acquired"
    with pytest.raises(TimeoutError):
        with cpu_lock("shared", path=lock, timeout=0.3):
            pass
    child.release()
    with cpu_lock("shared", path=lock, timeout=5):
        pass


def test_shared_holder_blocks_exclusive_in_another_process(tmp_path):
    lock = tmp_path / "cpu.lock"
    with cpu_lock("shared", path=lock):
        other_shared = LockChild("shared", lock, timeout=5)
        assert other_shared.outcome() == "acquired", "shared holders coexist"
        other_shared.release()
        blocked = LockChild("exclusive", lock, timeout=0.3)
        assert blocked.outcome() == "timeout"
        blocked.release()
    after = LockChild("exclusive", lock, timeout=5)
    assert after.outcome() == "acquired"
    after.release()


def test_waiting_exclusive_acquirer_is_not_starved_by_new_shared(tmp_path):
    lock = tmp_path / "cpu.lock"
    with cpu_lock("shared", path=lock):
        writer = LockChild("exclusive", lock)  # waits for us, holding the gate
        _wait_until_gate_taken(lock)
        late_reader = LockChild("shared", lock, timeout=0.3)
        assert late_reader.outcome() == "timeout", "new shared must queue behind the writer"
        late_reader.release()
    assert writer.outcome() == "acquired"
    writer.release()


def test_cpu_lock_between_threads_and_nesting(tmp_path):
    lock = tmp_path / "cpu.lock"
    outcome = []

    def try_shared():
        try:
            with cpu_lock("shared", path=lock, timeout=0.3):
                outcome.append("acquired")
        except TimeoutError:
            outcome.append("timeout")

    with cpu_lock("exclusive", path=lock):
        with cpu_lock("shared", path=lock):  # nested in the same thread: covered already
            thread = threading.Thread(target=try_shared)
            thread.start()
            thread.join()
    assert outcome == ["timeout"]

    with cpu_lock("shared", path=lock):
        with pytest.raises(RuntimeError, match="deadlock"):
            with cpu_lock("exclusive", path=lock):
                pass
    with pytest.raises(ValueError):
        with cpu_lock("both", path=lock):  # type: ignore[arg-type]
            pass
