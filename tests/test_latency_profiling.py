"""profile_models (checkpoints, resume, drift re-measuring), bundles run without torch, baselines."""
from __future__ import annotations

import dataclasses
import json

import pytest

from nas_core import io
from nas_core.latency import timing
from nas_core.latency.devices import get_profile
from nas_core.latency.timing import ModelEntry, TimingConfig, profile_models
from tests._bundles import run_without_torch

FAST = TimingConfig(warmup_runs=2, warmup_ms=0, min_repeats=5, min_total_ms=2, max_repeats=100,
                    max_total_ms=100, check_every=5)
ORT = get_profile("ort_cpu_fp32")


# ----------------------------------------------------------------------------- real tiny models
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> list[ModelEntry]:
    """Six tiny conv nets of different widths, exported to ONNX."""
    import torch
    from torch import nn

    from nas_core.latency.export import export_onnx

    folder = tmp_path_factory.mktemp("tiny_models")
    entries = []
    for index, width in enumerate((4, 8, 12, 16, 24, 32)):
        torch.manual_seed(index)
        module = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
        shape = (1, 3, 16, 16)
        entries.append(ModelEntry(f"block_{index}_w{width}", export_onnx(module, shape, folder / f"m{index}.onnx"), shape))
    return entries


class _CountingOpener:
    """Opens real ORT sessions and counts how often each model was opened."""

    def __init__(self):
        self.opened: list[str] = []

    def __call__(self, entry, settings):
        self.opened.append(entry.id)
        return timing.open_entry(entry, settings)


def _profile(entries, out, **kwargs):
    defaults = dict(reference_id=entries[0].id, seed=3, config=FAST, check_every=2, progress=False, drift_tolerance=10.0)
    return profile_models(entries, kwargs.pop("settings", ORT), out, **{**defaults, **kwargs})


def test_profile_models_writes_every_row_with_provenance(tiny_models, tmp_path):
    out = tmp_path / "lut.parquet"
    rows = _profile(tiny_models, out, code_version="test-version")
    frame = io.read_parquet(out)
    assert sorted(frame["id"]) == sorted(e.id for e in tiny_models) and len(rows) == 6
    assert frame["id"].iloc[0] == tiny_models[0].id  # the reference is timed first
    assert (frame["median_ms"] > 0).all() and (frame["p10_ms"] <= frame["median_ms"]).all()
    assert (frame["median_ms"] <= frame["p90_ms"]).all() and (frame["repeats"] >= FAST.min_repeats).all()
    assert set(frame["device"]) == {"ort_cpu_fp32"} and set(frame["runtime"]) == {"onnxruntime"}
    assert set(frame["precision"]) == {"fp32"} and set(frame["precision_actual"]) == {"fp32"}
    assert set(frame["threads"]) == {1} and set(frame["input_shape"]) == {"1x3x16x16"}
    assert set(frame["code_version"]) == {"test-version"} and not frame["drift_flag"].any()
    assert set(frame["machine_id"]) == {io.machine_fingerprint()["id"]}
    provenance = io.read_provenance(out)
    assert provenance["settings"]["provider"] == "CPUExecutionProvider"
    assert provenance["machine"] == io.machine_fingerprint()
    assert provenance["reference"]["id"] == tiny_models[0].id
    assert len(provenance["reference_checks"]) == 3  # 5 models in blocks of 2 -> 3 checks


def test_interrupted_run_resumes_without_remeasuring(tiny_models, tmp_path):
    out = tmp_path / "lut.parquet"
    measured = []

    def interrupt_after_five(model_id, result):
        measured.append(model_id)
        if len(measured) == 5:  # reference, block [a, b] (written), c, d -> crash in the second block
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _profile(tiny_models, out, on_measured=interrupt_after_five)
    saved = io.read_parquet(out)
    assert list(saved["id"]) == measured[:3]  # only checked blocks are on disk

    opener = _CountingOpener()
    rows = _profile(tiny_models, out, open_fn=opener)
    frame = io.read_parquet(out)
    assert len(rows) == len(frame) == 6 and frame["id"].is_unique
    assert sorted(frame["id"]) == sorted(e.id for e in tiny_models)
    remaining = {e.id for e in tiny_models} - set(measured[:3])
    # The reference session is reopened (for drift checks); finished models are not.
    assert sorted(opener.opened) == sorted([tiny_models[0].id, *remaining])
    assert frame.set_index("id").loc[measured[1], "timestamp"] == saved.set_index("id").loc[measured[1], "timestamp"]


def test_resume_refuses_a_file_made_with_other_settings(tiny_models, tmp_path):
    out = tmp_path / "lut.parquet"
    _profile(tiny_models[:3], out)
    other_threads = {**ORT.to_settings(), "threads": 2}
    with pytest.raises(ValueError, match=r"other settings \(threads: 1 in the file, 2 now\)"):
        _profile(tiny_models[:3], out, settings=other_threads)
    other_resolution = {**ORT.to_settings(), "resolution": 256}
    with pytest.raises(ValueError, match="resolution"):
        _profile(tiny_models[:3], out, settings=other_resolution)
    with pytest.raises(ValueError, match="runtime_version"):
        _profile(tiny_models[:3], out, runtime=("onnxruntime", "0.0.1"))
    rows = _profile(tiny_models[:3], out, settings=other_threads, resume=False)  # explicit start-over
    assert {r["threads"] for r in rows} == {2}


# ----------------------------------------------------------------------------- drift (deterministic)
class _FakeClock:
    def __init__(self):
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


class _FakeSession:
    def __init__(self, clock, latency_ms):
        self.clock, self.latency_ms = clock, latency_ms
        self.info = {"precision_actual": "fp32", "provider": "fake"}

    def run(self):
        self.clock.now_ns += int(self.latency_ms() * 1e6)

    def close(self):
        pass


class _FakeMachine:
    """Models take 1 ms; the reference takes ``reference_ms`` ms, which a test changes mid-run."""

    def __init__(self):
        self.clock = _FakeClock()
        self.reference_ms = 1.0
        self.opened: list[str] = []

    def open(self, entry, settings):
        self.opened.append(entry.id)
        if entry.id == "ref":
            return _FakeSession(self.clock, lambda: self.reference_ms)
        return _FakeSession(self.clock, lambda: 1.0)


FAKE_TIMING = TimingConfig(warmup_runs=1, warmup_ms=0, min_repeats=3, min_total_ms=0, check_every=1)


def _fake_run(machine, out, on_measured, max_retries=2, config=FAKE_TIMING, resume=True):
    entries = [ModelEntry("ref", None, (1, 3, 8, 8))] + [ModelEntry(f"m{i}", None, (1, 3, 8, 8)) for i in range(6)]
    return profile_models(entries, ORT, out, reference_id="ref", seed=0, drift_tolerance=0.2, config=config,
                          check_every=3, max_retries=max_retries, drift_pause_s=0, open_fn=machine.open,
                          runtime=("fake", "1"), clock=machine.clock, pin_cpus=False, progress=False,
                          on_measured=on_measured, resume=resume)


def test_drift_of_the_reference_remeasures_its_block(tmp_path):
    machine = _FakeMachine()
    count = []

    def drift_once(model_id, result):  # the machine is slow at the end of the first block only
        count.append(model_id)
        if len(count) == 4:  # reference + 3 models: the check after this block sees 2x
            machine.reference_ms = 2.0
        elif len(count) == 7:  # the block has been re-measured: back to normal
            machine.reference_ms = 1.0

    rows = {r["id"]: r for r in _fake_run(machine, tmp_path / "lut.parquet", drift_once)}
    first_block, second_block = count[1:4], count[7:]
    assert count[4:7] == first_block  # re-measured after the failed check
    assert all(rows[i]["attempts"] == 2 and not rows[i]["drift_flag"] for i in first_block)
    assert all(rows[i]["attempts"] == 1 and rows[i]["reference_ratio"] == pytest.approx(1.0) for i in second_block)
    checks = io.read_provenance(tmp_path / "lut.parquet")["reference_checks"]
    assert [c["drifted"] for c in checks] == [True, False, False]
    assert checks[0]["ratio"] == pytest.approx(2.0)


def test_persistent_drift_is_flagged_after_bounded_retries(tmp_path):
    machine = _FakeMachine()

    def drift_forever(model_id, result):  # from the first model on (the baseline is taken before it)
        if model_id != "ref":
            machine.reference_ms = 1.5

    rows = _fake_run(machine, tmp_path / "lut.parquet", drift_forever, max_retries=1)
    others = [r for r in rows if r["id"] != "ref"]
    assert len(rows) == 7 and all(r["drift_flag"] and r["attempts"] == 2 for r in others)
    assert all(r["reference_ratio"] == pytest.approx(1.5) for r in others)
    assert machine.opened.count("m0") == 2  # each model timed at most max_retries + 1 times


def test_a_spoiled_first_timing_of_the_reference_does_not_flag_the_run(tmp_path):
    """The baseline is the median of the reference's first timings, not its first alone."""
    machine = _FakeMachine()
    machine.reference_ms = 1.5  # a noisy moment at the very start

    def settle(model_id, result):
        if model_id == "ref":
            machine.reference_ms = 1.0

    rows = _fake_run(machine, tmp_path / "lut.parquet", settle)
    assert not any(r["drift_flag"] for r in rows) and all(r["attempts"] == 1 for r in rows)
    assert {r["id"]: r["median_ms"] for r in rows}["ref"] == pytest.approx(1.5)  # the row keeps its own timing
    provenance = io.read_provenance(tmp_path / "lut.parquet")
    assert provenance["reference"]["baseline_timings_ms"] == pytest.approx([1.5, 1.0, 1.0])
    assert provenance["reference"]["baseline_ms"] == pytest.approx(1.0)
    assert [c["drifted"] for c in provenance["reference_checks"]] == [False, False]


def test_resume_refuses_a_file_timed_with_other_timing_settings(tmp_path):
    out = tmp_path / "lut.parquet"
    _fake_run(_FakeMachine(), out, None)
    longer = dataclasses.replace(FAKE_TIMING, min_repeats=7)
    with pytest.raises(ValueError, match=r"other settings \(timing\.min_repeats: 3 in the file, 7 now\)"):
        _fake_run(_FakeMachine(), out, None, config=longer)
    # Tables written before the identity held the timing settings: their provenance's ``timing`` stands in.
    rows, provenance = timing.read_rows(out)
    del provenance["identity"]["timing"]
    timing.write_rows(out, rows, provenance)
    same = _FakeMachine()
    assert len(_fake_run(same, out, None)) == 7 and same.opened == ["ref"]  # resumed: nothing left to time
    with pytest.raises(ValueError, match=r"timing\.min_repeats: 3 in the file, 7 now"):
        _fake_run(_FakeMachine(), out, None, config=longer)
    restarted = _fake_run(_FakeMachine(), out, None, config=longer, resume=False)
    assert len(restarted) == 7 and all(r["repeats"] >= 7 for r in restarted)
    assert io.read_provenance(out)["identity"]["timing"]["min_repeats"] == 7


# ----------------------------------------------------------------------------- bundles without torch
def test_bundle_runs_where_torch_cannot_be_imported(tiny_models, tmp_path):
    from nas_core.latency.bundle import RUNNER_NAME, RUNNER_PACKAGE, RUNNER_SOURCE, make_bundle

    bundle = make_bundle(tiny_models[:3], ORT, tmp_path / "bundle", reference_id=tiny_models[0].id, config=FAST,
                         check_every=2)
    runner = bundle / RUNNER_NAME
    copied = {path.name: path.read_text() for path in (bundle / RUNNER_PACKAGE).glob("*.py")}
    assert "cli.py" in copied and copied == {path.name: path.read_text() for path in RUNNER_SOURCE.glob("*.py")}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["settings"]["name"] == "ort_cpu_fp32" and len(manifest["models"]) == 3

    usage = run_without_torch(runner, "--help", cwd=tmp_path)
    assert usage.returncode == 0 and "--device-name" in usage.stdout, usage.stderr

    out = tmp_path / "edge_lut.parquet"
    done = run_without_torch(runner, str(bundle), "--out", str(out), "--device-name", "edge_cpu", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 rows" in done.stdout
    frame = io.read_parquet(out)
    assert sorted(frame["id"]) == sorted(e.id for e in tiny_models[:3])
    assert set(frame["device"]) == {"edge_cpu"} and set(frame["runtime"]) == {"onnxruntime"}
    assert (frame["median_ms"] > 0).all()
    assert set(frame["code_version"]) == {manifest["code_version"]}
    assert io.read_provenance(out)["bundle"] == str(bundle)

    again = run_without_torch(runner, str(bundle), "--out", str(out), "--device-name", "edge_cpu", "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and len(io.read_parquet(out)) == 3  # resumed: nothing left, no duplicates
    other = run_without_torch(runner, str(bundle), "--out", str(out), "--threads", "2", "--quiet", cwd=tmp_path)
    assert other.returncode != 0 and "other settings" in other.stderr


# ----------------------------------------------------------------------------- baselines (error rows)
def test_baselines_turn_failures_into_rows(monkeypatch, tmp_path):
    from torch import nn

    from nas_core.latency import baselines

    def fake_build(name):
        if name == "broken_model":
            raise RuntimeError("Unknown model (broken_model)")
        width = {"mobilenetv2_100": 4, "other_net": 8}[name]
        return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()

    real_measure_onnx = baselines.measure_onnx

    def flaky_measure_onnx(path, shape, profile, config=None):
        if profile.backend == "openvino" and "other_net" in str(path):
            raise RuntimeError("unsupported operator on this plugin")
        return real_measure_onnx(path, shape, profile, config=config)

    monkeypatch.setattr(baselines, "build_model", fake_build)
    monkeypatch.setattr(baselines, "measure_onnx", flaky_measure_onnx)
    profiles = [get_profile("ort_cpu_fp32"), get_profile("openvino_cpu_fp32"), get_profile("torch_cuda")]
    out = tmp_path / "baselines.parquet"
    frame = baselines.measure_baselines(profiles, {"mobilenetv2_100": 32, "other_net": 32, "broken_model": 32},
                                        out_path=out, config=FAST, progress=False)
    table = frame.set_index(["model", "device"])
    assert table.loc[("mobilenetv2_100", "ort_cpu_fp32"), "vs_mobilenetv2"] == pytest.approx(1.0)
    assert table.loc[("other_net", "ort_cpu_fp32"), "median_ms"] > 0
    assert "unsupported operator" in table.loc[("other_net", "openvino_cpu_fp32"), "error"]
    assert table.loc[("broken_model", "ort_cpu_fp32"), "error"].startswith("build failed")
    assert table.loc[("other_net", "ort_cpu_fp32"), "params"] == 8 * 3 * 9 + 8 + 8 * 10 + 10
    provenance = io.read_provenance(out)
    if "torch_cuda" in provenance["skipped_devices"]:
        assert "torch.cuda.is_available() is False" in provenance["skipped_devices"]["torch_cuda"]
    assert len(io.read_parquet(out)) == 6


# ----------------------------------------------------------------------------- measure_many
@pytest.mark.parametrize("device", ["ort_cpu_fp32", "openvino_cpu_fp32", "torch_cpu"])
def test_measure_many_times_torch_modules_through_profile_models(device, tmp_path):
    from torch import nn

    from nas_core.latency.measure import measure_many

    modules = {f"conv_{w}": nn.Sequential(nn.Conv2d(3, w, 3), nn.ReLU()) for w in (4, 8, 16)}
    frame = measure_many(modules, get_profile(device), tmp_path / "lut.parquet", workdir=tmp_path / "onnx",
                         input_shapes={name: (1, 3, 16, 16) for name in modules}, config=FAST, progress=False)
    assert sorted(frame["id"]) == sorted(modules) and (frame["median_ms"] > 0).all()
    assert set(frame["device"]) == {device} and set(frame["precision_actual"]) == {"fp32"}
    expected_runtime = {"ort_cpu_fp32": "onnxruntime", "openvino_cpu_fp32": "openvino", "torch_cpu": "torch"}[device]
    assert set(frame["runtime"]) == {expected_runtime}
    exported = sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == (0 if device == "torch_cpu" else 3)


def test_cpu_clock_is_honoured_and_refused_where_it_is_not_latency(tiny_models, tmp_path):
    cpu_clock = {**ORT.to_settings(), "options": {"clock": "cpu"}}
    rows = _profile(tiny_models[:2], tmp_path / "cpu.parquet", settings=cpu_clock)
    assert all(r["median_ms"] > 0 for r in rows)
    assert io.read_provenance(tmp_path / "cpu.parquet")["clock"] == "cpu"
    with pytest.raises(ValueError, match="differ|other settings"):  # a wall-clock run must not resume it
        _profile(tiny_models[:2], tmp_path / "cpu.parquet")
    with pytest.raises(ValueError, match="single-thread CPU"):
        _profile(tiny_models[:2], tmp_path / "x.parquet", settings={**cpu_clock, "threads": 2})


# ----------------------------------------------------------------------------- the run-bundle flow (work pools)
def test_run_bundle_flow_times_a_bundle_and_refuses_a_folder_that_is_not_one(tiny_models, tmp_path):
    """The flow a Prefect worker on an edge board runs: it calls the bundle's own runner."""
    from flows.device_profiling import run_bundle_flow, runner_command
    from nas_core.latency.bundle import RUNNER_NAME, make_bundle

    assert RUNNER_NAME == "run_bundle.py"  # the flow names it without importing nas_core
    bundle = make_bundle(tiny_models[:2], ORT, tmp_path / "bundle", reference_id=tiny_models[0].id, config=FAST)
    out = run_bundle_flow(str(bundle), device_name="board_cpu")
    frame = io.read_parquet(out)
    assert out == str(bundle / "lut.parquet") and sorted(frame["id"]) == sorted(e.id for e in tiny_models[:2])
    assert set(frame["device"]) == {"board_cpu"} and (frame["median_ms"] > 0).all()
    with pytest.raises(FileNotFoundError, match="not a profiling bundle"):
        runner_command(tmp_path, tmp_path / "x.parquet")


# ----------------------------------------------------------------------------- paired timing
class _MoodyHost:
    """A shared host whose speed flips between 1.0x and 1.5x every 7 ms of (fake) time, as
    this VM's does every second or so: a call costs its own work times the speed now."""

    def __init__(self):
        self.clock = _FakeClock()

    def speed(self) -> float:
        return 1.5 if (self.clock.now_ns // 7_000_000) % 2 else 1.0

    def open(self, entry, settings):
        work_ms = 0.2 if entry.id == "ref" else 0.1 * int(entry.id[1:])
        return _FakeSession(self.clock, lambda: work_ms * self.speed())


def _moody_run(out, paired: bool, yardstick_ms=None):
    host = _MoodyHost()
    entries = [ModelEntry("ref", None, (1, 3, 8, 8))] + [ModelEntry(f"m{i}", None, (1, 3, 8, 8)) for i in range(1, 9)]
    settings = {**ORT.to_settings(), "options": {"paired_reference": paired}}
    config = TimingConfig(warmup_runs=1, warmup_ms=0, min_repeats=15, min_total_ms=0, max_repeats=15, check_every=15)
    rows = profile_models(entries, settings, out, reference_id="ref", seed=0, config=config, check_every=3,
                          drift_pause_s=0, open_fn=host.open, runtime=("fake", "1"), clock=host.clock,
                          pin_cpus=False, progress=False, yardstick_ms=yardstick_ms)
    return {r["id"]: r for r in rows}


def test_paired_timing_cancels_the_host_speed_and_sets_the_scale(tmp_path):
    plain = _moody_run(tmp_path / "plain.parquet", paired=False)
    paired = _moody_run(tmp_path / "paired.parquet", paired=True, yardstick_ms=0.4)
    true_ms = {f"m{i}": 0.1 * i * 0.4 / 0.2 for i in range(1, 9)}  # work ratio to ref x the 0.4 ms scale
    paired_error = max(abs(paired[i]["median_ms"] / true_ms[i] - 1) for i in true_ms)
    plain_ratio = [plain[i]["median_ms"] / (0.1 * int(i[1:])) for i in true_ms]  # 1.0 or 1.5: the host's mood
    assert paired_error < 0.02, paired_error
    assert max(plain_ratio) / min(plain_ratio) > 1.3  # unpaired medians inherit the speed of their moment
    assert paired["ref"]["median_ms"] == pytest.approx(0.4, rel=0.02)
    assert paired["m4"]["raw_median_ms"] == pytest.approx(0.4, rel=0.6)  # the model's own time, kept for the record
    assert io.read_provenance(tmp_path / "paired.parquet")["reference"]["yardstick_ms"] == 0.4
    with pytest.raises(ValueError, match="scale"):  # a resume on another scale would mix two units
        _moody_run(tmp_path / "paired.parquet", paired=True, yardstick_ms=0.5)


def test_paired_access_times_every_job_against_the_yardstick_and_hides_its_row(tmp_path):
    from nas_core.latency.location import PairedAccess, TimingJob, Yardstick, with_yardstick

    yardstick = Yardstick(ModelEntry("ref", None, (1, 3, 8, 8)), 0.4)
    job = TimingJob("finetune-x", (ModelEntry("x", None, (1, 3, 8, 8)),), "x")
    paired, added = with_yardstick(job, yardstick)
    assert added == "ref" and paired.reference_id == "ref" and paired.yardstick_ms == 0.4
    assert paired.ids() == ["ref", "x"]
    own_scale = dataclasses.replace(job, yardstick_ms=1.0)
    assert with_yardstick(own_scale, yardstick) == (own_scale, None)

    class Recorder:
        profile, location = ORT, "local"

        def time(self, job, out_path, **kwargs):
            self.job = job
            return [{"id": i, "median_ms": 1.0} for i in job.ids()]

    inner = Recorder()
    rows = PairedAccess(inner, yardstick).time(job, tmp_path / "t.parquet")
    assert [r["id"] for r in rows] == ["x"] and inner.job.yardstick_ms == 0.4


def test_whole_networks_are_timed_against_the_network_yardstick(tmp_path):
    from nas_core.latency.location import PairedAccess, TimingJob, Yardstick

    blocks = Yardstick(ModelEntry("ref", None, (1, 3, 8, 8)), 0.4)
    networks = Yardstick(ModelEntry("mobilenetv2_100", None, (1, 3, 224, 224)), 6.0)

    class Recorder:
        profile, location = ORT, "local"

        def time(self, job, out_path, **kwargs):
            self.job = job
            return [{"id": i, "median_ms": 1.0} for i in job.ids()]

    inner = Recorder()
    access = PairedAccess(inner, blocks, lambda: networks)
    subnet = TimingJob("calibration", (ModelEntry("ref", None, (1, 3, 8, 8)), ModelEntry("s", None, (1, 3, 224, 224))),
                       "ref", yardstick_ms=0.4, whole_networks=True)
    rows = access.time(subnet, tmp_path / "t.parquet")
    assert inner.job.reference_id == "mobilenetv2_100" and inner.job.yardstick_ms == 6.0, "the job's block scale yields"
    assert [r["id"] for r in rows] == ["ref", "s"], "the yardstick's own row is hidden, the job's rows kept"
    access.time(TimingJob("baselines", (ModelEntry("x", None, (1, 3, 8, 8)),), "x"), tmp_path / "b.parquet")
    assert inner.job.reference_id == "ref" and inner.job.yardstick_ms == 0.4, "anything else: the block's scale"
    before_baselines = PairedAccess(inner, blocks, lambda: None)
    before_baselines.time(subnet, tmp_path / "c.parquet")
    assert inner.job.reference_id == "ref" and inner.job.yardstick_ms == 0.4


class _ContendedHost(_MoodyHost):
    """Memory contention from other tenants, on for 50 ms, off for 50 ms: it slows what streams
    weights from memory (networks) by 1.4x and leaves what fits in the caches (a small block) alone."""

    def contended(self) -> bool:
        return bool((self.clock.now_ns // 50_000_000) % 2)

    def open(self, entry, settings):
        network = entry.id != "ref"
        work_ms = 0.2 if entry.id == "ref" else (5.0 if entry.id == "mnv2" else 0.5 * int(entry.id[1:]))
        return _FakeSession(self.clock, lambda: work_ms * (1.4 if network and self.contended() else 1.0))


def test_a_network_yardstick_cancels_what_a_block_yardstick_cannot(tmp_path):
    def run(reference):
        host = _ContendedHost()
        entries = [ModelEntry(reference, None, (1, 3, 8, 8))] + [ModelEntry(f"m{i}", None, (1, 3, 8, 8))
                                                                 for i in range(8, 16)]
        settings = {**ORT.to_settings(), "options": {"paired_reference": True}}
        config = TimingConfig(warmup_runs=1, warmup_ms=0, min_repeats=5, min_total_ms=0, max_repeats=5, check_every=5)
        rows = profile_models(entries, settings, tmp_path / f"{reference}.parquet", reference_id=reference, config=config,
                              open_fn=host.open, runtime=("fake", "1"), clock=host.clock, pin_cpus=False,
                              progress=False, yardstick_ms=1.0)
        ratio = {r["id"]: r["median_ms"] / (0.5 * int(r["id"][1:])) for r in rows if r["id"] != reference}
        return max(ratio.values()) / min(ratio.values())  # 1.0: every network on one scale

    assert run("mnv2") < 1.02
    assert run("ref") > 1.2, "a cache-resident block does not see the contention the networks feel"


def test_network_yardstick_is_the_device_s_mobilenetv2_on_the_baselines_scale(tmp_path):
    import pandas as pd

    from nas_core.latency.baselines import REFERENCE_MODEL, network_yardstick

    table = tmp_path / "ort_cpu_fp32.parquet"
    assert network_yardstick(ORT, table, tmp_path) is None, "no baselines yet: networks keep the block's scale"
    row = {"model": REFERENCE_MODEL, "device": ORT.name, "resolution": 224, "median_ms": 6.5}
    io.write_parquet(table, pd.DataFrame([row, {**row, "device": "openvino_cpu_fp32", "median_ms": 4.0}]))
    (tmp_path / f"{REFERENCE_MODEL}_224.onnx").write_bytes(b"an export that exists is reused")
    stick = network_yardstick(ORT, table, tmp_path)
    assert stick.ms == 6.5 and stick.entry.id == REFERENCE_MODEL and tuple(stick.entry.input_shape) == (1, 3, 224, 224)
    io.write_parquet(table, pd.DataFrame([{**row, "median_ms": float("nan")}]))  # MobileNetV2 failed to time
    assert network_yardstick(ORT, table, tmp_path) is None
