"""The latency lane: a device's measurements on a core of their own, beside training.

Latency is measured with single-thread profiles, so while a LUT, its calibration subnets and
the baselines are timed, the rest of the machine idles; training the supernet uses every core,
but on a small CPU its second thread buys only ~1.3x. On a machine with two or more allowed
CPUs ``reproduce`` therefore runs the measurement steps (``LANE_STAGES`` of the local devices)
in a separate process pinned to the *last* allowed CPU, while this process trains the supernet
and collects the pairs on the others (:class:`LatencyLane`). Measured on the 2-core smoke run:
the measurements (~7 min) disappear behind the supernet instead of following it
(benchmarks/README.md, "Smoke budget"). After measuring, the lane trains the baselines that are
fine-tuned from scratch (they read only the dataset, which this process then makes first), so
that its CPU does not idle while the supernet finishes.

Why this keeps the numbers honest:

* the lane process is pinned (``sched_setaffinity``) to its core and this process to the
  others, so the timing thread never shares a core with training; smoke devices read the
  process's CPU time and time each call next to the LUT's reference block
  (``paired_reference``), which cancels what a busy neighbour core does to the cache and
  memory bandwidth (measured: no shift beyond the run-to-run spread);
* the lane runs the very same Prefect tasks with the same cache keys, so when this process
  reaches those steps they are cache hits; nothing is measured twice and the DAG order holds;
* the lane takes the CPU lock of its own file (``<root>/.resume/lane/cpu.lock``): the
  machine-wide lock's exclusive mode means "nothing else on the machine", which the training
  beside it would never grant.

If the lane fails, this process says so (with its log) and measures the steps itself: the
LUT resumes from the rows the lane finished. An interrupted run stops the lane with it.
``pipeline.overlap_latency: false`` turns the lane off (every step in this process, in order).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from nas_core.io import write_text
from nas_core.latency.devices import get_profile, load_profiles
from tasks import stages
from tasks.step_stamps import is_done

# The steps that measure on a device and read nothing the training makes.
LANE_STAGES = ("runtime", "lut", "baselines", "calibration")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), sorted."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def set_process_affinity(cpus: Sequence[int]) -> None:
    """Pin every thread of this process to ``cpus`` (``sched_setaffinity(0)`` moves only the
    calling thread; the threads a runtime already started would stay where they were)."""
    wanted = set(cpus)
    for entry in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):  # a thread may have ended meanwhile
            os.sched_setaffinity(int(entry.name), wanted)


@dataclass(frozen=True)
class LanePlan:
    """Which steps run first, which ones the lane takes, which ones this process runs meanwhile,
    and the CPUs."""

    before: tuple[stages.Step, ...]  # run here before the lane starts (what the lane's fine-tunes read)
    lane: tuple[stages.Step, ...]
    beside: tuple[stages.Step, ...]  # run here while the lane measures
    after: tuple[stages.Step, ...]   # the rest, once the lane is done (the lane's steps first: cache hits)
    lane_cpu: int
    main_cpus: tuple[int, ...]

    def order(self) -> list[stages.Step]:
        """Every step in the order this process runs them: a valid order of the DAG."""
        return [*self.before, *self.beside, *self.lane, *self.after]


def plan_lane(steps: Sequence[stages.Step], params: Mapping[str, Any], root: str | os.PathLike,
              cpus: Sequence[int] | None = None) -> LanePlan | None:
    """The lane for these steps, or None when it would not help: one CPU, nothing to measure,
    nothing to train meanwhile, or ``pipeline.overlap_latency`` off.

    The lane measures the local devices, then trains the baselines fine-tuned from scratch
    (they read only the dataset, which is then made first): the measurements end before the
    supernet does, and the lane's CPU would idle."""
    cpus = list(allowed_cpus() if cpus is None else cpus)
    pipeline = stages.pipeline_section(params)
    if len(cpus) < 2 or not pipeline.get("overlap_latency", True):
        return None
    measure = [s for s in steps if s.stage in LANE_STAGES and _measures_here(s, params)]
    if not measure:
        return None
    single_process = int((pipeline.get("torchrun") or {}).get("nproc_per_node") or 1) <= 1
    before = [s for s in steps if s.stage == "dataset"] if single_process else []
    ready = {p for s in [*before, *measure] for p in s.outputs}
    scratch = [s for s in steps if s.stage == "finetune" and s.inputs and set(s.inputs) <= ready]
    before = before if scratch else []
    lane = [s for s in steps if s in measure or s in scratch]
    lane_outputs = {p for s in lane for p in s.outputs}
    first_reader = next((i for i, s in enumerate(steps)
                         if s not in lane and s not in before and lane_outputs & set(s.inputs)), len(steps))
    beside = [s for s in steps[:first_reader] if s not in lane and s not in before]
    made_beside = {p for s in beside for p in s.outputs}
    if not beside or any(made_beside & set(s.inputs) for s in lane):  # a lane step would read what is made beside it
        return None
    measured = [s for s in lane if s.stage != "runtime"]  # the runtime check always runs (never cached)
    if all(is_done(s, params, root) for s in measured) or all(is_done(s, params, root) for s in beside):
        return None  # nothing to overlap: run in order, in this process
    after = [s for s in steps[first_reader:] if s not in lane and s not in before]
    return LanePlan(tuple(before), tuple(lane), tuple(beside), tuple(after), cpus[-1], tuple(cpus[:-1]))


def _measures_here(step: stages.Step, params: Mapping[str, Any]) -> bool:
    device = step.kwargs().get("device")
    return device is not None and get_profile(device, load_profiles(params.get("devices") or {})).is_local


class LatencyLane:
    """The lane's process: ``scan-edge reproduce --only <its steps>`` pinned to ``plan.lane_cpu``,
    with its own Prefect home and CPU-lock file, logging to ``<root>/.resume/lane/latency.log``."""

    def __init__(self, plan: LanePlan, params: Mapping[str, Any], root: str | os.PathLike):
        self.plan, self.root = plan, Path(root)
        self.folder = stages.Layout(root).resume_stamps / "lane"
        self.log = self.folder / "latency.log"
        self.process: subprocess.Popen | None = None
        self.started = self.finished = 0.0
        self._params = params
        self._watcher: threading.Thread | None = None

    def command(self) -> list[str]:
        name = self._params.get("profile", "smoke")
        resolved = {k: v for k, v in self._params.items() if k != "profile"}
        # The params as this process resolved them, under their profile's name (which enters cache keys).
        params_file = write_text(self.folder / "params.yaml", yaml.safe_dump(
            {**resolved, "profile": name, "profiles": {name: {}} if name != "smoke" else {}}, sort_keys=False))
        return [sys.executable, "-m", "flows.cli", "reproduce", "--params", str(params_file), "--root", str(self.root),
                "--no-dvc-commit", "--only", *[s.id for s in self.plan.lane]]

    def environment(self) -> dict[str, str]:
        home = self.folder / "prefect-home"
        return {**os.environ, "SCAN_EDGE_CPU_LOCK": str(self.folder / "cpu.lock"), "PREFECT_HOME": str(home),
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{(home / 'prefect.db').resolve()}",
                "PYTHONUNBUFFERED": "1"}

    def start(self) -> "LatencyLane":
        self.folder.mkdir(parents=True, exist_ok=True)
        cpu = self.plan.lane_cpu
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.environment(), start_new_session=True,
                                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
        self.started = time.monotonic()
        set_process_affinity(self.plan.main_cpus)
        # The lane's CPU comes back the moment the lane ends, not when the run next needs the lane
        # (the pairs that follow the supernet would otherwise collect on one CPU).
        self._watcher = threading.Thread(target=self._watch, name="latency-lane-watcher", daemon=True)
        self._watcher.start()
        print(f"latency lane: measuring {', '.join(s.id for s in self.plan.lane)} on CPU {cpu} in process "
              f"{self.process.pid} (log: {self.log}); training here on CPU "
              f"{', '.join(map(str, self.plan.main_cpus))}", flush=True)
        return self

    def _watch(self) -> None:
        assert self.process is not None
        self.process.wait()
        self.finished = time.monotonic()
        set_process_affinity(self._all_cpus())

    def _all_cpus(self) -> list[int]:
        return sorted({*self.plan.main_cpus, self.plan.lane_cpu})

    def wait(self) -> bool:
        """Wait for the lane; give this process every CPU back. True when it completed."""
        assert self.process is not None and self._watcher is not None
        self._watcher.join()
        code = self.process.returncode
        self._give_cpus_back()
        seconds = self.finished - self.started
        if code == 0:
            print(f"latency lane: done in {seconds:.0f} s", flush=True)
            return True
        tail = self.log.read_text(errors="replace").splitlines()[-25:] if self.log.exists() else []
        print(f"latency lane: failed (exit {code}) after {seconds:.0f} s; measuring its steps in this process "
              f"instead (finished measurements are kept). Last lines of {self.log}:\n  " + "\n  ".join(tail),
              file=sys.stderr, flush=True)
        return False

    def stop(self) -> None:
        """Stop the lane (this run was interrupted or failed): its finished rows stay on disk."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self._give_cpus_back()

    def _give_cpus_back(self) -> None:
        cpus = self._all_cpus()
        set_process_affinity(cpus)
        # torch fixes its default thread count when it is imported, from the affinity of that
        # moment: imported beside the lane, it would train everything after it on one thread.
        torch = sys.modules.get("torch")  # only a torch this process already loaded
        if torch is not None:
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or len(cpus)))


@contextlib.contextmanager
def latency_lane(plan: LanePlan | None, params: Mapping[str, Any], root: str | os.PathLike) -> Iterator[LatencyLane | None]:
    """The started lane of ``plan`` (None: no lane), stopped if the block raises."""
    if plan is None:
        yield None
        return
    lane = LatencyLane(plan, params, root).start()
    try:
        yield lane
    except BaseException:
        lane.stop()
        raise


__all__ = ["LANE_STAGES", "LanePlan", "LatencyLane", "allowed_cpus", "latency_lane", "plan_lane",
           "set_process_affinity"]
