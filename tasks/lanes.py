"""The latency lane: a device's measurements on a core of their own, beside training.

Latency is measured with single-thread profiles, so while a LUT, its calibration subnets and
the baselines are timed, the rest of the machine idles; training the supernet uses every core,
but on a small CPU its second thread buys only ~1.3x. On a machine with two or more allowed
CPUs ``reproduce`` therefore runs the measurement steps (``LANE_STAGES`` of the local devices)
in a separate process pinned to the *last* allowed CPU, while this process trains the supernet
and collects the pairs on the others (:class:`LaneProcess`). Measured on the 2-core smoke run:
the measurements (~7 min) disappear behind the supernet instead of following it
(benchmarks/README.md, "Smoke budget"). Without a search lane to follow, the lane then trains
the baselines that are fine-tuned from scratch (they read only the dataset, which this process
then makes first), so that its CPU does not idle if the supernet is still training.

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

**The search lane** (:func:`plan_search_lane`) does the same for the second half of the run. A
search is one thread (the evolution, then its candidates timed on the device) and the fine-tunes
that follow use two threads at ~1.7x of one: run one after the other, a core idles through every
search. So once the predictor and the calibrations exist, the searches, the random controls (which
measure on the device too, then fine-tune one model) and the fine-tunes of the searched models
that only the report reads run in a lane process on the last CPU, after each device's second
calibration round (``recalibration``: it needs the predictor, and the searches read it). Meanwhile this process trains
the scratch baselines, fine-tunes "ours" as soon as its search is done (it waits for that one
step, not for the whole lane), then transfers and detects: the two CPUs carry about the same
load. Measured on the 2-core smoke run: benchmarks/README.md, "Smoke budget".

``pipeline.overlap_latency: false`` turns both lanes off (every step in this process, in order).
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
from tasks.step_stamps import completed_with, is_done, measured_devices, step_key

# The steps that measure on a device and read nothing the training makes.
LANE_STAGES = ("runtime", "lut", "baselines", "calibration")
# The steps that search (one thread, timing candidates on the device), the second calibration round
# before them (quick searches, then subnets timed), and the controls that mirror them.
SEARCH_LANE_STAGES = ("recalibration", "search", "controls")


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
              cpus: Sequence[int] | None = None, train_in_lane: bool = True) -> LanePlan | None:
    """The lane for these steps, or None when it would not help: one CPU, nothing to measure,
    nothing to train meanwhile, or ``pipeline.overlap_latency`` off.

    The lane measures the local devices, then (``train_in_lane``) trains the baselines
    fine-tuned from scratch (they read only the dataset, which is then made first), so that
    its CPU does not idle if the measurements end before the supernet. With a search lane to
    follow, ``run_steps`` leaves them to this process instead: the latency lane ends later
    than the supernet on 2 CPUs, and this process would otherwise wait idle for the first
    search."""
    cpus = list(allowed_cpus() if cpus is None else cpus)
    pipeline = stages.pipeline_section(params)
    if len(cpus) < 2 or not pipeline.get("overlap_latency", True):
        return None
    measure = [s for s in steps if s.stage in LANE_STAGES and _all_local(s, params)]
    if not measure:
        return None
    single_process = int((pipeline.get("torchrun") or {}).get("nproc_per_node") or 1) <= 1
    before = [s for s in steps if s.stage == "dataset"] if single_process else []
    ready = {p for s in [*before, *measure] for p in s.outputs}
    scratch = [s for s in steps if train_in_lane and s.stage == "finetune" and s.inputs and set(s.inputs) <= ready]
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


@dataclass(frozen=True)
class SearchLanePlan:
    """The search lane: this process runs ``order``; the lane process starts before ``order[start]``
    and runs ``lane``, which this process reaches one by one as cache hits once each is done."""

    order: tuple[stages.Step, ...]
    start: int
    lane: tuple[stages.Step, ...]
    lane_cpu: int
    main_cpus: tuple[int, ...]


def plan_search_lane(order: Sequence[stages.Step], params: Mapping[str, Any], root: str | os.PathLike,
                     cpus: Sequence[int] | None = None) -> SearchLanePlan | None:
    """The search lane over ``order`` (this process's order, the latency lane's steps included), or
    None when it would not help: one CPU, the lanes switched off, no search measured on this
    machine, nothing to train meanwhile, or everything on one side done.

    The lane starts once everything its steps read from this process exists (a search step
    placed before that point runs here). It also fine-tunes the searched models that nothing
    but the report reads (this process fine-tunes the ones transfer and detection start from):
    the two CPUs then carry about the same load. This process's order keeps its own steps
    and moves each lane step to just before its first reader, so that it waits as late as it can."""
    cpus = list(allowed_cpus() if cpus is None else cpus)
    if len(cpus) < 2 or not stages.pipeline_section(params).get("overlap_latency", True):
        return None
    order = list(order)
    candidates = [s for s in order if s.stage in SEARCH_LANE_STAGES and _all_local(s, params)]
    if not candidates:
        return None
    writer = {p: i for i, s in enumerate(order) for p in s.outputs}
    ids = {s.id for s in candidates}
    start = 1 + max((writer[p] for s in candidates for p in s.inputs
                     if p in writer and order[writer[p]].id not in ids), default=-1)
    lane = [s for s in candidates if order.index(s) >= start]
    lane += [s for s in _report_only_finetunes(order[start:], lane) if _all_local(s, params)]
    lane = [s for s in order if s in lane]  # the pipeline's order, which the lane's process keeps
    beside = [s for s in order[start:] if s not in lane]
    if not lane or not beside:
        return None
    if all(is_done(s, params, root) for s in lane) or all(is_done(s, params, root) for s in beside):
        return None
    tail = _lane_steps_late(order[start:], lane)
    return SearchLanePlan(tuple(order[:start] + tail), start, tuple(lane), cpus[-1], tuple(cpus[:-1]))


def _all_local(step: stages.Step, params: Mapping[str, Any]) -> bool:
    """Whether every device the step measures latency on is timed on this machine (a board's
    search waits for imported measurements: not a lane's job)."""
    devices = measured_devices(step.stage, params, step.kwargs())
    profiles = load_profiles(params.get("devices") or {})
    return bool(devices) and all(get_profile(d, profiles).is_local for d in devices)


def _report_only_finetunes(tail: Sequence[stages.Step], lane: Sequence[stages.Step]) -> list[stages.Step]:
    """Fine-tunes in ``tail`` of what the lane searches, whose outputs only the report reads."""
    lane_outputs = {p for s in lane for p in s.outputs}
    chosen = []
    for step in tail:
        if step.stage != "finetune" or step in lane or not lane_outputs & set(step.inputs):
            continue
        readers = [s for s in tail if set(step.outputs) & set(s.inputs)]
        made_here = {p for s in tail if s not in lane for p in s.outputs}
        if all(r.stage == "report" for r in readers) and not made_here & set(step.inputs):
            chosen.append(step)
    return chosen


def _lane_steps_late(tail: Sequence[stages.Step], lane: Sequence[stages.Step]) -> list[stages.Step]:
    """``tail`` for this process: first its steps that need nothing from the lane (they run while
    the lane searches), then the others, each lane step moved to just before the first step that
    reads it (lane steps keep their own order, so one that reads another still follows it)."""
    waits = {p for s in lane for p in s.outputs}
    for step in tail:  # what depends on the lane, directly or through this process's own steps
        if step not in lane and waits & set(step.inputs):
            waits |= set(step.outputs)
    own = [s for s in tail if s not in lane]
    own = [s for s in own if not waits & set(s.inputs)] + [s for s in own if waits & set(s.inputs)]
    pending = [s for s in tail if s in lane]
    ordered: list[stages.Step] = []
    for step in own:
        needed = [i for i, s in enumerate(pending) if set(s.outputs) & set(step.inputs)]
        if needed:
            ordered += pending[:needed[-1] + 1]
            pending = pending[needed[-1] + 1:]
        ordered.append(step)
    return ordered + pending


class LaneProcess:
    """A lane's process: ``scan-edge reproduce --only <its steps>`` pinned to ``plan.lane_cpu``,
    with its own Prefect home and CPU-lock file, logging to ``<root>/.resume/lane/latency.log``
    (the latency lane) or ``<root>/.resume/search-lane/search.log``."""

    def __init__(self, plan: LanePlan | SearchLanePlan, params: Mapping[str, Any], root: str | os.PathLike,
                 kind: str = "latency"):
        self.plan, self.root, self.kind = plan, Path(root), kind
        self.folder = stages.Layout(root).resume_stamps / ("lane" if kind == "latency" else f"{kind}-lane")
        self.log = self.folder / f"{kind}.log"
        self.process: subprocess.Popen | None = None
        self.started = self.finished = 0.0
        self._params = params
        self._watcher: threading.Thread | None = None
        self._outcome: bool | None = None  # what wait() found, once it has

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

    def start(self) -> "LaneProcess":
        self.folder.mkdir(parents=True, exist_ok=True)
        cpu = self.plan.lane_cpu
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.environment(), start_new_session=True,
                                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
        self.started = time.monotonic()
        set_process_affinity(self.plan.main_cpus)
        _set_torch_threads(len(self.plan.main_cpus))  # a torch loaded before would keep its threads on fewer CPUs
        # The lane's CPU comes back the moment the lane ends, not when the run next needs the lane
        # (the pairs that follow the supernet would otherwise collect on one CPU).
        self._watcher = threading.Thread(target=self._watch, name="latency-lane-watcher", daemon=True)
        self._watcher.start()
        print(f"{self.kind} lane: running {', '.join(s.id for s in self.plan.lane)} on CPU {cpu} in process "
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
        """Wait for the lane; give this process every CPU back. True when it completed (said once)."""
        assert self.process is not None and self._watcher is not None
        self._watcher.join()
        if self._outcome is not None:
            return self._outcome
        code = self.process.returncode
        self._give_cpus_back()
        seconds = self.finished - self.started
        self._outcome = code == 0
        if code == 0:
            print(f"{self.kind} lane: done in {seconds:.0f} s", flush=True)
            return True
        tail = self.log.read_text(errors="replace").splitlines()[-25:] if self.log.exists() else []
        print(f"{self.kind} lane: failed (exit {code}) after {seconds:.0f} s; running its steps in this process "
              f"instead (finished measurements are kept). Last lines of {self.log}:\n  " + "\n  ".join(tail),
              file=sys.stderr, flush=True)
        return False

    def wait_for(self, step: stages.Step, params: Mapping[str, Any], poll_s: float = 0.5) -> bool:
        """Wait until the lane has completed ``step`` (True) or has ended without it (False: this
        process then runs it itself). Reads the step's completion stamp, whichever Prefect server
        the lane reports to."""
        key = step_key(step, params, self.root)
        while True:
            ended = self.process is not None and self.process.poll() is not None
            if completed_with(step, key, self.root):
                return True
            if ended:
                self.wait()
                return False
            time.sleep(poll_s)

    def give_back_if_ended(self) -> None:
        """Between two steps: once the lane has ended, this process trains on every CPU again."""
        if self.process is not None and self.process.poll() is not None and self._outcome is None:
            self.wait()

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
        _set_torch_threads(int(os.environ.get("OMP_NUM_THREADS") or len(cpus)))


def _set_torch_threads(threads: int) -> None:
    torch = sys.modules.get("torch")  # only a torch this process already loaded
    if torch is not None:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def lane_process(plan: LanePlan | SearchLanePlan | None, params: Mapping[str, Any], root: str | os.PathLike,
                 kind: str = "latency") -> Iterator[LaneProcess | None]:
    """The started lane of ``plan`` (None: no lane), stopped if the block raises."""
    if plan is None:
        yield None
        return
    lane = LaneProcess(plan, params, root, kind).start()
    try:
        yield lane
    except BaseException:
        lane.stop()
        raise


__all__ = ["LANE_STAGES", "SEARCH_LANE_STAGES", "LanePlan", "LaneProcess", "SearchLanePlan", "allowed_cpus",
           "lane_process", "plan_lane", "plan_search_lane", "set_process_affinity"]
