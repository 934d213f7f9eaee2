"""The ``reproduce`` flow: DESIGN.md's whole DAG, one cached Prefect task per stage run.

    dataset -> supernet -> pairs -> predictor
    per device: runtime -> lut -> calibration, baselines; after the predictor: recalibration
    per search (device x target [x params bound]): search -> fine-tune (measured on the device)
    baselines trained like ours (and, with pipeline.equal_budget, on ours' total images)
    random controls at the searches' measured latency, trained like ours (controls)
    -> transfer -> detection -> report

``tasks.stages.pipeline_steps`` lists the steps in dependency order; the flow runs them one
after the other, printing one progress line per step, with one exception: on a machine with
two or more CPUs the device measurements (runtime, LUT, baselines, calibration: single-thread
timing) run in the latency lane, a process pinned to a CPU of its own, while this process
trains the supernet and collects pairs on the others, and later the searches and random
controls run in the search lane while this process fine-tunes what each search found
(``tasks.lanes``); the lanes' steps are then cache hits here. A step whose cache key is unchanged (its run key: its params sections, the content
of what it reads, the code it imports, the runtimes it measures with) is not executed: a second
``reproduce`` with nothing changed runs no stage (only the runtime checks, which are never
cached and cost a fraction of a second), and changing one parameter re-runs that stage
and, through the content of its outputs, what depends on it.

:func:`reproduce` runs the flow inside a real Prefect server when a step needs one (a
Dask runner for the pairs stage) and, after a complete run, records the state in DVC
(``dvc commit``) so that ``scan-edge status`` / ``dvc status`` agree with what the flow
made. ``stage_flow`` runs a single stage the same way (``scan-edge stage NAME --prefect``).
"""
from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from prefect import flow

from flows.dvc_graph import upstream_from_dot
from tasks import stages
from tasks._runners import runner_needs_server
from tasks._server import prefect_server, require_flow_result
from tasks.lanes import lane_process, plan_lane, plan_search_lane
from tasks.pairs import runner_params
from tasks.prefect_tasks import step_arguments, step_task
from tasks.step_stamps import record_done, step_key


def select_steps(steps: Sequence[stages.Step], only: Sequence[str] | None) -> list[stages.Step]:
    """The steps named in ``only`` (a stage name such as ``lut`` or a step id such as
    ``lut@ort_cpu_fp32``), in pipeline order; all of them when ``only`` is empty."""
    if not only:
        return list(steps)
    known = {s.stage for s in steps} | {s.id for s in steps}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages: {', '.join(dict.fromkeys(s.stage for s in steps))}; "
                         f"steps: {', '.join(s.id for s in steps)}")
    return [s for s in steps if s.stage in only or s.id in only]


def run_steps(steps: Sequence[stages.Step], params: Mapping[str, Any], root: str, results: str | None,
              refresh: bool = False, finished: dict[str, dict] | None = None) -> dict[str, dict]:
    """Run the steps' cached tasks in order; stop at the first failure (its error is raised).
    ``finished``, when given, is filled as steps complete (so a caller knows what completed
    before a failure) and returned.

    On a machine with two or more CPUs the device measurements run in the latency lane, and
    later the searches and controls in the search lane (``tasks.lanes``), while this process
    trains on the other CPUs; this process then reaches the lanes' steps as cache hits, in an
    order that still respects the DAG."""
    outcome: dict[str, dict] = finished if finished is not None else {}
    search_follows = not refresh and plan_search_lane(steps, params, root) is not None
    plan = None if refresh else plan_lane(steps, params, root, train_in_lane=not search_follows)
    order = plan.order() if plan else list(steps)
    search = None if refresh else plan_search_lane(order, params, root)
    order = list(search.order) if search else order
    lane = search_lane = None
    with contextlib.ExitStack() as stack:
        for index, step in enumerate(order, 1):
            if plan is not None and index == len(plan.before) + 1:  # what the lane reads is made: start it
                lane = stack.enter_context(lane_process(plan, params, root))
            if lane is not None and index == len(plan.before) + len(plan.beside) + 1:  # the lane's steps come next
                lane.wait()
            if search is not None and index == search.start + 1:
                search_lane = stack.enter_context(lane_process(search, params, root, "search"))
            if search_lane is not None:
                if step in search.lane:
                    search_lane.wait_for(step, params)  # False: it ended without this step, which runs here
                search_lane.give_back_if_ended()
            outcome[step.id] = _run_step(step, params, root, results, refresh, f"[{index}/{len(order)}]")
    return outcome


def _run_step(step: stages.Step, params: Mapping[str, Any], root: str, results: str | None, refresh: bool,
              counter: str) -> dict:
    started, cpu_started = time.monotonic(), _cpu_seconds()
    key = step_key(step, params, root)  # what its cache key is, recorded once it completed
    task = step_task(step, params, results, root)
    if refresh:
        task = task.with_options(refresh_cache=True)
    state = task(**step_arguments(step, params, root), return_state=True)
    seconds, cpu = time.monotonic() - started, _cpu_seconds() - cpu_started
    status = "cached" if state.name == "Cached" else ("ran" if state.is_completed() else state.name.lower())
    print(f"{counter} {step.id}: {status} ({seconds:.1f} s, {cpu:.1f} s CPU)", flush=True)
    paths = state.result()  # raises the stage's error for a failed step
    record_done(step, key, root)
    return {"status": status, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "outputs": paths}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine, wall time
    says how busy the machine was, CPU time what the step cost."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@flow(name="reproduce", log_prints=True)
def reproduce_flow(params: dict, root: str = str(stages.DATA_ROOT), only: list[str] | None = None,
                   results: str | None = None) -> dict[str, dict]:
    """Every step of the pipeline (or those in ``only``), cached; returns
    ``{step id: {"status": "ran" | "cached", "seconds", "outputs": {name: path}}}``."""
    return run_steps(select_steps(stages.pipeline_steps(params, root), only), params, root, results)


@flow(name="stage", log_prints=True)
def stage_flow(stage: str, params: dict, options: dict | None = None, root: str = str(stages.DATA_ROOT),
               results: str | None = None, refresh: bool = False) -> dict[str, dict]:
    """One stage run as a flow with its cached task (the per-stage flow of ``scan-edge stage NAME --prefect``)."""
    step = stages.find_step(stage, options or {}, params, root)
    return run_steps([step], params, root, results, refresh)


def needs_server(params: Mapping[str, Any]) -> bool:
    """Whether a step's task runner runs tasks in other processes (the pairs stage on Dask)."""
    return runner_needs_server(runner_params(params))


def reproduce(params: Mapping[str, Any], *, root: str | os.PathLike = stages.DATA_ROOT,
              only: Sequence[str] | None = None, results: str | None = None,
              record_in_dvc: bool = True) -> dict[str, dict]:
    """Run :func:`reproduce_flow` (inside a real Prefect server when one is needed) and,
    after a complete run into ``data/``, record the outcome in DVC."""
    with prefect_server(required=needs_server(params)):
        state = reproduce_flow(dict(params), str(root), list(only) if only else None, results, return_state=True)
        outcome = require_flow_result(state, "reproduce flow")
    ran = [step for step, o in outcome.items() if o["status"] != "cached" and not step.startswith("runtime@")]
    # Nothing ran: dvc.lock already describes these files (a no-op stays a few seconds shorter).
    if record_in_dvc and not only and dvc_tracks(root) and (ran or not Path("dvc.lock").exists()):
        dvc_commit()
    return outcome


def dvc_tracks(root: str | os.PathLike, cwd: str | os.PathLike = ".") -> bool:
    """Whether ``root`` is the artifact folder of the DVC project in ``cwd`` (``<cwd>/data``,
    relative or absolute): only then does dvc.lock describe what a flow writes there."""
    project = Path(cwd)
    if not (project / "dvc.yaml").exists() or not (project / ".dvc").is_dir():
        return False
    return Path(root).resolve() == (project / stages.DATA_ROOT).resolve()


def dvc_commit(cwd: str | os.PathLike = ".", targets: Sequence[str] = ()) -> bool:
    """``dvc commit --force [TARGETS]``: make dvc.lock describe what the flow just made (every
    stage, or the stage ids ``targets``), so that ``dvc status`` / ``scan-edge status``
    report it up to date. Best effort: a warning, not an error, when DVC is not set up or
    disagrees (e.g. a profile that changes the DAG's shape, which dvc.yaml reads from the
    top level of params.yaml)."""
    if not (Path(cwd) / "dvc.yaml").exists() or not (Path(cwd) / ".dvc").is_dir():
        return False
    done = _dvc(["commit", "--force", "--quiet", *targets], cwd)
    if done.returncode != 0:
        print(f"warning: could not record the run in DVC (dvc commit): {done.stderr.strip()[-800:]}",
              file=sys.stderr)
        return False
    return True


def dvc_upstream(cwd: str | os.PathLike = ".") -> dict[str, set[str]]:
    """Every DVC stage's transitive upstream stages (``dvc dag --dot``): what DVC re-runs a
    stage after. Empty when DVC is not set up or cannot tell (a warning says why)."""
    if not (Path(cwd) / "dvc.yaml").exists() or not (Path(cwd) / ".dvc").is_dir():
        return {}
    done = _dvc(["dag", "--dot"], cwd)
    if done.returncode != 0:
        print(f"warning: could not read DVC's stage graph (dvc dag): {done.stderr.strip()[-800:]}", file=sys.stderr)
        return {}
    return upstream_from_dot(done.stdout)


def _dvc(argv: Sequence[str], cwd: str | os.PathLike) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *argv], cwd=cwd, env=env, capture_output=True, text=True)


__all__ = ["reproduce", "reproduce_flow", "stage_flow", "run_steps", "select_steps", "dvc_commit", "dvc_tracks",
           "dvc_upstream"]
