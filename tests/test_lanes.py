"""The latency and search lanes (tasks/lanes.py): which steps they take, and their process, pinned and stopped for real."""
from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import pytest


from nas_core.params import load_params
from tasks import lanes, stages, step_stamps

PROJECT_ROOT = Path(__file__).resolve().parent.parent
needs_two_cpus = pytest.mark.skipif(len(lanes.allowed_cpus()) < 2, reason="the lane needs two CPUs")


@pytest.fixture()
def smoke_params() -> dict:
    return copy.deepcopy(load_params(PROJECT_ROOT / "params.yaml", "smoke"))


def _valid_order(order: list[stages.Step], every: list[stages.Step]) -> bool:
    """Every step once, each after the steps that write what it reads."""
    writer = {p: s.id for s in every for p in s.outputs}
    seen: set[str] = set()
    for step in order:
        if any(writer.get(p) not in seen for p in step.inputs if p in writer):
            return False
        seen.add(step.id)
    return sorted(seen) == sorted(s.id for s in every)


def test_plan_measures_the_local_devices_beside_the_training(smoke_params, tmp_path):
    steps = stages.pipeline_steps(smoke_params, tmp_path)
    plan = lanes.plan_lane(steps, smoke_params, tmp_path, cpus=[0, 1, 2])
    assert plan is not None and plan.lane_cpu == 2 and plan.main_cpus == (0, 1)
    devices = smoke_params["search"]["devices"]
    scratch = [f"finetune-baseline@{m}" for m, init in smoke_params["pipeline"]["finetune_baselines"].items()
               if init == "scratch"]
    assert scratch, "the smoke profile trains a baseline from scratch"
    assert {s.id for s in plan.lane} == {f"{stage}@{d}" for d in devices for stage in lanes.LANE_STAGES} | set(scratch)
    assert [s.id for s in plan.before] == ["dataset"], "what the lane's fine-tune reads is made first"
    assert [s.id for s in plan.beside] == ["supernet", "pairs", "predictor"]
    assert plan.after[0].stage == "recalibration", "the second calibration round follows the predictor"
    assert _valid_order(plan.order(), steps)
    # Fine-tuned from the supernet, a baseline cannot go in the lane; with no fine-tune there, nothing runs first.
    inherited = copy.deepcopy(smoke_params)
    inherited["pipeline"]["finetune_baselines"] = {m: "supernet" for m in inherited["pipeline"]["finetune_baselines"]}
    steps = stages.pipeline_steps(inherited, tmp_path)
    plan = lanes.plan_lane(steps, inherited, tmp_path, cpus=[0, 1])
    assert plan.before == () and [s.id for s in plan.beside] == ["dataset", "supernet", "pairs", "predictor"]
    assert all(s.stage in lanes.LANE_STAGES for s in plan.lane) and _valid_order(plan.order(), steps)


def test_no_lane_on_one_cpu_when_switched_off_or_for_a_board(smoke_params, tmp_path):
    steps = stages.pipeline_steps(smoke_params, tmp_path)
    assert lanes.plan_lane(steps, smoke_params, tmp_path, cpus=[0]) is None
    off = {**smoke_params, "pipeline": {**smoke_params["pipeline"], "overlap_latency": False}}
    assert lanes.plan_lane(steps, off, tmp_path, cpus=[0, 1]) is None
    # A device timed elsewhere (a board's bundle) has nothing to measure on this machine's cores.
    board = copy.deepcopy(smoke_params)
    board["devices"]["ort_cpu_fp32"] = {**board["devices"]["ort_cpu_fp32"], "location": "bundle"}
    plan = lanes.plan_lane(stages.pipeline_steps(board, tmp_path), board, tmp_path, cpus=[0, 1])
    assert plan is not None and not any("ort_cpu_fp32" in s.id for s in plan.lane)


def test_no_lane_when_the_measurements_are_done(smoke_params, tmp_path, monkeypatch):
    steps = stages.pipeline_steps(smoke_params, tmp_path)
    in_lane = {s.id for s in lanes.plan_lane(steps, smoke_params, tmp_path, cpus=[0, 1]).lane}
    monkeypatch.setattr(lanes, "is_done", lambda step, params, root: step.id in in_lane)
    assert lanes.plan_lane(steps, smoke_params, tmp_path, cpus=[0, 1]) is None
    monkeypatch.setattr(lanes, "is_done", lambda step, params, root: step.id not in in_lane)
    assert lanes.plan_lane(steps, smoke_params, tmp_path, cpus=[0, 1]) is None, "nothing to train beside it"


class ScriptLane(lanes.LaneProcess):
    """The real lane process machinery, running a small script instead of ``reproduce``."""

    script = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script]


def _plan(smoke_params, tmp_path) -> lanes.LanePlan:
    cpus = lanes.allowed_cpus()
    plan = lanes.plan_lane(stages.pipeline_steps(smoke_params, tmp_path), smoke_params, tmp_path, cpus=cpus)
    assert plan is not None
    return plan


@needs_two_cpus
def test_lane_process_is_pinned_and_this_process_gets_its_cpus_back(smoke_params, tmp_path):
    before = lanes.allowed_cpus()
    plan = _plan(smoke_params, tmp_path)
    out = tmp_path / "affinity.txt"
    go = tmp_path / "go"
    lane = ScriptLane(plan, smoke_params, tmp_path)
    lane.script = (f"import os, time; open({str(out)!r}, 'w').write(repr(sorted(os.sched_getaffinity(0))))\n"
                   f"while not os.path.exists({str(go)!r}): time.sleep(0.01)")
    lane.start()
    during = lanes.allowed_cpus()
    threads_during = [sorted(os.sched_getaffinity(int(t.name))) for t in Path("/proc/self/task").iterdir()]
    go.touch()  # the lane may end now
    deadline = time.monotonic() + 10
    while lane.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    lane._watcher.join(timeout=10)
    assert lanes.allowed_cpus() == before, "the CPU comes back as soon as the lane ends, before anyone waits"
    assert lane.wait() is True
    assert eval(out.read_text()) == [before[-1]], "the lane runs on the last CPU only"
    assert during == before[:-1], "this process keeps off the lane's CPU meanwhile"
    assert all(cpus == before[:-1] for cpus in threads_during), "every thread of it, not only the calling one"
    assert lanes.allowed_cpus() == before
    # Threads started before the lane are moved too, and given back after.
    assert all(sorted(os.sched_getaffinity(int(t.name))) == before for t in Path("/proc/self/task").iterdir())


@needs_two_cpus
def test_a_failed_lane_says_why(smoke_params, tmp_path, capsys):
    plan = _plan(smoke_params, tmp_path)
    failing = ScriptLane(plan, smoke_params, tmp_path)
    failing.script = "import sys; print('lut: the runtime is missing'); sys.exit(3)"
    failing.start()
    assert failing.wait() is False
    assert "exit 3" in capsys.readouterr().err and "the runtime is missing" in failing.log.read_text()



class SleepingLane(ScriptLane):
    script = "import time; time.sleep(600)"


@needs_two_cpus
def test_an_interrupted_run_stops_its_lane(smoke_params, tmp_path, monkeypatch):
    plan = _plan(smoke_params, tmp_path)
    before = lanes.allowed_cpus()
    monkeypatch.setattr(lanes, "LaneProcess", SleepingLane)
    with pytest.raises(KeyboardInterrupt):
        with lanes.lane_process(plan, smoke_params, tmp_path) as lane:
            assert lane.process.poll() is None
            raise KeyboardInterrupt
    assert lane.process.poll() is not None, "the lane must not outlive the run"
    assert lanes.allowed_cpus() == before


def test_lane_command_runs_its_steps_under_the_same_profile(smoke_params, tmp_path):
    plan = lanes.plan_lane(stages.pipeline_steps(smoke_params, tmp_path), smoke_params, tmp_path, cpus=[0, 1])
    lane = lanes.LaneProcess(plan, smoke_params, tmp_path)
    argv = lane.command()
    assert argv[1:4] == ["-m", "flows.cli", "reproduce"] and "--no-dvc-commit" in argv
    assert argv[argv.index("--only") + 1:] == [s.id for s in plan.lane]
    params_file = argv[argv.index("--params") + 1]
    assert load_params(params_file) == smoke_params, "the lane's steps must key on the same params"
    env = lane.environment()
    assert env["SCAN_EDGE_CPU_LOCK"] != os.environ.get("SCAN_EDGE_CPU_LOCK") and "lane" in env["PREFECT_HOME"]


def _search_plan(params, root, cpus=(0, 1)) -> lanes.SearchLanePlan | None:
    """Both lanes planned as ``run_steps`` plans them: the scratch baseline then trains here."""
    steps = stages.pipeline_steps(params, root)
    latency = lanes.plan_lane(steps, params, root, cpus=list(cpus), train_in_lane=False)
    return lanes.plan_search_lane(latency.order() if latency else steps, params, root, cpus=list(cpus))


def test_search_lane_searches_beside_the_fine_tunes(smoke_params, tmp_path):
    steps = stages.pipeline_steps(smoke_params, tmp_path)
    latency = lanes.plan_lane(steps, smoke_params, tmp_path, cpus=[0, 1], train_in_lane=False)
    assert latency.before == () and not any(s.stage == "finetune" for s in latency.lane)
    plan = _search_plan(smoke_params, tmp_path)
    searches = [s.id for s in steps if s.stage == "search"]
    assert len(searches) == 3
    # The searches, the controls, and the fine-tunes that only the report reads; the first search's model
    # ("ours", which transfer and detection start from) fine-tunes here.
    # Each device's second calibration round just before its first search.
    assert [s.id for s in plan.lane] == ["recalibration@ort_cpu_fp32", searches[0], "recalibration@openvino_cpu_fp32",
                                         searches[1], "finetune@openvino_cpu_fp32-1.0", searches[2],
                                         "finetune-params@ort_cpu_fp32-1.0-2.5", "controls"]
    assert plan.lane_cpu == 1 and plan.main_cpus == (0,)
    order = [s.id for s in plan.order]
    assert _valid_order(list(plan.order), steps)
    # It starts once the last calibration (what a search reads) is made, and not before.
    assert order[plan.start - 1].startswith("calibration@") and plan.start > order.index("predictor")
    # Here: first what needs no search (the scratch baseline trains while the lane searches), then ours
    # as soon as its search is done, then transfer and detection; the report waits for the whole lane.
    assert order[plan.start:plan.start + 6] == ["finetune-baseline@mobilenetv2_100", "recalibration@ort_cpu_fp32",
                                                searches[0], "finetune@ort_cpu_fp32-1.0", "transfer", "detection"]
    assert order[-2:] == ["controls", "report"]


def test_search_lane_keeps_what_reads_this_process_and_skips_boards(smoke_params, tmp_path):
    # A board's search waits for imported measurements: it stays out of the lane, and so do the controls
    # of that search (they measure on the board too).
    board = copy.deepcopy(smoke_params)
    board["devices"]["ort_cpu_fp32"] = {**board["devices"]["ort_cpu_fp32"], "location": "bundle"}
    plan = _search_plan(board, tmp_path)
    assert [s.id for s in plan.lane] == ["recalibration@openvino_cpu_fp32", "search@openvino_cpu_fp32-1.0"]
    # The lane starts only once what its steps read from this process exists: with controls reading the
    # first fine-tune, the lane starts after it, and the first search (before that point) runs here.
    steps = stages.pipeline_steps(smoke_params, tmp_path)
    finetuned = next(s for s in steps if s.id == "finetune@ort_cpu_fp32-1.0").outputs[0]
    patched = [stages.Step(s.stage, s.id, s.options, (*s.inputs, finetuned), s.outputs) if s.id == "controls" else s
               for s in steps]
    plan = lanes.plan_search_lane(patched, smoke_params, tmp_path, cpus=[0, 1])
    assert [s.id for s in plan.lane] == ["recalibration@openvino_cpu_fp32", "search@openvino_cpu_fp32-1.0",
                                         "finetune@openvino_cpu_fp32-1.0", "search-params@ort_cpu_fp32-1.0-2.5",
                                         "finetune-params@ort_cpu_fp32-1.0-2.5", "controls"]
    assert plan.order[plan.start - 1].id == "finetune@ort_cpu_fp32-1.0" and _valid_order(list(plan.order), patched)
    assert lanes.plan_search_lane(steps, smoke_params, tmp_path, cpus=[0]) is None
    off = {**smoke_params, "pipeline": {**smoke_params["pipeline"], "overlap_latency": False}}
    assert _search_plan(off, tmp_path) is None


@needs_two_cpus
def test_this_process_waits_for_one_lane_step_at_a_time(smoke_params, tmp_path):
    """The real lane process completes one step (its stamp, with the key this process computes), then
    ends without the next: the first wait returns True, the second False instead of hanging."""
    plan = _search_plan(smoke_params, tmp_path, cpus=lanes.allowed_cpus())
    first, second = plan.lane[0], plan.lane[1]
    key = step_stamps.step_key(first, smoke_params, tmp_path)
    stamp = step_stamps.stamps_folder(tmp_path) / f"{first.id}.json"
    go = tmp_path / "go"
    lane = ScriptLane(plan, smoke_params, tmp_path, "search")
    lane.script = (
        "import json, os, pathlib, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        f"for out in {[str(p) for p in first.outputs]!r}:\n"
        "    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True); pathlib.Path(out).write_text('{}')\n"
        f"pathlib.Path({str(stamp)!r}).parent.mkdir(parents=True, exist_ok=True)\n"
        f"pathlib.Path({str(stamp)!r}).write_text(json.dumps({{'key': {key!r}, 'stage': 'search'}}))\n"
        "import sys; sys.exit(4)\n")
    with lanes.lane_process(None, smoke_params, tmp_path) as nothing:
        assert nothing is None
    lane.start()
    assert "search-lane" in str(lane.log)
    go.touch()
    assert lane.wait_for(first, smoke_params, poll_s=0.02) is True
    assert lane.wait_for(second, smoke_params, poll_s=0.02) is False, "ended without it: this process runs it"
    assert lanes.allowed_cpus() == sorted({*plan.main_cpus, plan.lane_cpu}), "and trains on every CPU again"
