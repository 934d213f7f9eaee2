"""The pipeline's orchestration: the plan, Prefect caching across runs, locks, resuming, the CLI, the report.

Expensive stages are replaced by fakes that write their declared outputs from their inputs
(so content flows through the DAG as it does for real); one real stage (dataset, tiny)
goes through the same Prefect task to show the wiring holds.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

import tasks
from nas_core.io import write_json, write_parquet
from nas_core.params import load_params
from tasks import stages
from tasks.stages import SearchRun, STAGES, StageInfo, pipeline_steps

PROJECT_ROOT = Path(__file__).resolve().parent.parent

SMOKE_STEPS = [
    "dataset", "supernet", "pairs", "predictor",
    "runtime@ort_cpu_fp32", "lut@ort_cpu_fp32", "baselines@ort_cpu_fp32", "calibration@ort_cpu_fp32",
    "runtime@openvino_cpu_fp32", "lut@openvino_cpu_fp32", "baselines@openvino_cpu_fp32",
    "calibration@openvino_cpu_fp32",
    "recalibration@ort_cpu_fp32", "search@ort_cpu_fp32-1.0", "finetune@ort_cpu_fp32-1.0",
    "recalibration@openvino_cpu_fp32", "search@openvino_cpu_fp32-1.0", "finetune@openvino_cpu_fp32-1.0",
    "search-params@ort_cpu_fp32-1.0-2.5", "finetune-params@ort_cpu_fp32-1.0-2.5",
    "finetune-baseline@mobilenetv2_100", "controls", "transfer", "detection", "report",
]


@pytest.fixture(scope="module")
def smoke_params() -> dict:
    return load_params(PROJECT_ROOT / "params.yaml", "smoke")


# --------------------------------------------------------------------------- the plan
def test_plan_lists_every_stage_in_dependency_order(smoke_params, tmp_path):
    steps = pipeline_steps(smoke_params, tmp_path)
    assert [s.id for s in steps] == SMOKE_STEPS
    made: set[Path] = set()
    for step in steps:
        missing = [p for p in step.inputs if p not in made]
        assert not missing, f"{step.id} reads {missing} before any earlier step writes them"
        made.update(step.outputs)
    search = next(s for s in steps if s.id == "search-params@ort_cpu_fp32-1.0-2.5")
    assert search.kwargs() == {"devices": ("ort_cpu_fp32",), "target": "1.0x", "params_m": 2.5}
    assert search.outputs == (tmp_path / "search" / "ort_cpu_fp32@1.0x_2.5M.json",)
    finetune = next(s for s in steps if s.id == "finetune-params@ort_cpu_fp32-1.0-2.5")
    assert finetune.kwargs() == {"name": "ours_ort_cpu_fp32@1.0x_2.5M"}
    assert stages.find_step("search", {"devices": ["ort_cpu_fp32"], "target": "1.0x", "params_m": 2.5},
                            smoke_params, tmp_path) == search


def test_the_stage_names_the_command_line_offers_are_the_registry_s():
    """`scan-edge stage` takes its choices from the planner so that parsing loads no stage module."""
    assert stages.STAGE_NAMES == tuple(STAGES)


def test_search_runs_and_targets(smoke_params, tmp_path):
    assert [r.key for r in stages.search_runs(smoke_params)] == [
        "ort_cpu_fp32@1.0x", "openvino_cpu_fp32@1.0x", "ort_cpu_fp32@1.0x_2.5M"]
    assert SearchRun(("a", "b"), "7.6ms").key == "a+b@7.6ms"
    assert stages.parse_target("0.75x") == ("x", 0.75) and stages.parse_target("7.6ms") == ("ms", 7.6)
    for bad in ("1.0", "fastx", "-1x", "3 s"):
        with pytest.raises(ValueError, match="<k>x"):
            stages.parse_target(bad)
    layout = stages.Layout(tmp_path)
    write_parquet(layout.baselines("dev"), pd.DataFrame(
        {"model": ["mobilenetv2_100", "efficientformerv2_s0"], "device": ["dev", "dev"],
         "median_ms": [8.0, 13.0], "error": ["", ""]}))
    assert stages.target_latencies(SearchRun(("dev",), "0.75x"), layout) == {"dev": 6.0}
    assert stages.target_latencies(SearchRun(("dev",), "7.5ms"), layout) == {"dev": 7.5}


def test_each_stage_keys_on_its_own_params_only(smoke_params):
    edited = json.loads(json.dumps(smoke_params))
    edited["pipeline"]["transfer_models"] = ["mobilenetv2_100"]
    for stage in ("supernet", "finetune", "search", "detection", "report"):
        assert stages.params_for(stage, edited) == stages.params_for(stage, smoke_params), stage
    assert stages.params_for("transfer", edited) != stages.params_for("transfer", smoke_params)

    edited["devices"]["openvino_cpu_fp32"] = {"threads": 2}  # only that device's stages (and fine-tuning) see it
    ort, openvino = {"device": "ort_cpu_fp32"}, {"device": "openvino_cpu_fp32"}
    assert stages.params_for("lut", edited, ort) == stages.params_for("lut", smoke_params, ort)
    assert stages.params_for("lut", edited, openvino)["devices"] == {"openvino_cpu_fp32": {"threads": 2}}
    assert stages.params_for("finetune", edited) != stages.params_for("finetune", smoke_params)
    assert stages.params_for("supernet", smoke_params) == {
        "profile": "smoke", "supernet": smoke_params["supernet"],
        "pipeline": {"torchrun": smoke_params["pipeline"]["torchrun"]}, "search_space": {"attention": ["mhsa"]}}


def test_resume_only_an_interrupted_run_of_the_same_inputs(tmp_path):
    layout = stages.Layout(tmp_path)
    assert stages.resume_or_restart(layout, "lut@dev", {"lut": {"seed": 0}}) is False
    assert stages.resume_or_restart(layout, "lut@dev", {"lut": {"seed": 0}}) is True
    assert stages.resume_or_restart(layout, "lut@dev", {"lut": {"seed": 1}}) is False
    assert stages.resume_or_restart(layout, "lut@dev", {"lut": {"seed": 1}}) is True
    assert stages.resume_or_restart(layout, "supernet", {"lut": {"seed": 1}}) is False


def test_unknown_pipeline_keys_and_bad_baselines_are_refused(smoke_params):
    with pytest.raises(ValueError, match="unknown keys \\['transfer_model'\\]"):
        stages.pipeline_section({"pipeline": {"transfer_model": []}})
    with pytest.raises(ValueError, match="init must be scratch or supernet"):
        stages.finetune_baselines({"pipeline": {"finetune_baselines": {"mobilenetv2_100": "pretrained"}}})
    with pytest.raises(ValueError, match="search.devices is empty"):
        stages.search_devices({"search": {}})


# --------------------------------------------------------------------------- locks
def _held() -> dict:
    return dict(tasks._held_modes())


def test_stages_hold_the_cpu_lock_in_the_right_mode(smoke_params, tmp_path, monkeypatch):
    """Latency measurement runs with the machine's lock held exclusively, training shared."""
    monkeypatch.setenv("SCAN_EDGE_CPU_LOCK", str(tmp_path / "cpu.lock"))
    seen = {}

    def fake_measure(access, models, out_path, **kwargs):
        seen["baselines"] = _held()
        frame = pd.DataFrame({"model": list(models), "device": "ort_cpu_fp32", "median_ms": 5.0, "error": ""})
        write_parquet(out_path, frame)
        return frame

    def fake_fit(pairs, out_dir, config, params=None, log=print, space=None):
        seen["predictor"] = _held()
        return {"predictor": Path(out_dir) / "predictor.pt"}, {}

    monkeypatch.setattr("nas_core.latency.baselines.measure_device_baselines", fake_measure)
    monkeypatch.setattr("nas_core.predictor_training.fit_and_write", fake_fit)
    layout = stages.Layout(tmp_path / "data")
    layout.pairs.parent.mkdir(parents=True)
    layout.pairs.write_text("pairs")
    stages.stage_baselines(smoke_params, "ort_cpu_fp32", layout.root)
    stages.stage_predictor(smoke_params, layout.root)
    # The second calibration round times its subnets with the lock exclusive.
    paths = layout.lut_paths("ort_cpu_fp32")
    for path in (paths.lut, paths.fit, paths.calibration, layout.predictor):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("stand-in")
    monkeypatch.setattr("tasks.stages.recalibration.searched_subnets", lambda *args: (["a subnet"], [5.0]))
    monkeypatch.setattr("tasks.stages.recalibration.recalibrate",
                        lambda profile, paths, subnets, **kwargs: seen.setdefault("recalibration", _held())
                        and type("Report", (), {"summary": lambda self: ""})())
    stages.stage_recalibration(smoke_params, "ort_cpu_fp32", layout.root)
    lock = str((tmp_path / "cpu.lock").resolve())
    assert seen == {"baselines": {lock: "exclusive"}, "predictor": {lock: "shared"},
                    "recalibration": {lock: "exclusive"}}
    assert _held() == {}
    assert {name for name, info in STAGES.items() if info.measures_latency} == {
        "runtime", "lut", "calibration", "baselines", "recalibration", "search", "finetune", "controls", "detection"}


def test_torchrun_command_runs_the_stage_cli_under_torch_distributed(tmp_path):
    argv = stages.torchrun_command(4, ["train-supernet", "--resume"], tmp_path / "p.yaml")
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert argv[6:] == ["flows.cli", "train-supernet", "--resume", "--params", str(tmp_path / "p.yaml")]


# --------------------------------------------------------------------------- Prefect: cache hits and re-runs
class FakeStages:
    """Stage functions that write each step's declared outputs from what the step may depend
    on: the params it is given (its cache-key sections) and the content of its inputs."""

    def __init__(self, params: dict, root: Path):
        self.params, self.root, self.calls = params, root, []

    def install(self, monkeypatch) -> None:
        for name, info in STAGES.items():
            monkeypatch.setitem(STAGES, name, StageInfo(self._fake(name), info.sections, info.code,
                                                         info.measures_latency))

    def _fake(self, stage: str):
        def run(params, root, **options):
            step = stages.find_step(stage, options, self.params, root)
            digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
            for path in step.inputs:
                digest.update(Path(path).read_bytes())
            for path in step.outputs:
                write_json(path, {"step": step.id, "digest": digest.hexdigest()})
            self.calls.append(step.id)
            return {Path(p).name: Path(p) for p in step.outputs}
        return run


def _run(fakes: FakeStages, params: dict, results: Path) -> dict:
    from flows.reproduce import reproduce_flow

    # The fakes live in this process: no latency lane (its process would run the real stages).
    params = {**params, "pipeline": {**params["pipeline"], "overlap_latency": False}}
    fakes.params, fakes.calls[:] = params, []
    return reproduce_flow(params, str(fakes.root), None, str(results))


def test_flow_reuses_cached_stages_and_reruns_only_what_depends_on_a_changed_param(
        prefect_harness, smoke_params, tmp_path, monkeypatch):
    root, results = tmp_path / "data", tmp_path / "results"
    fakes = FakeStages(smoke_params, root)
    fakes.install(monkeypatch)

    first = _run(fakes, smoke_params, results)
    assert list(first) == SMOKE_STEPS and fakes.calls == SMOKE_STEPS
    assert {o["status"] for o in first.values()} == {"ran"}

    second = _run(fakes, smoke_params, results)
    runtime_steps = [s for s in SMOKE_STEPS if s.startswith("runtime@")]
    assert fakes.calls == runtime_steps, "only the (never cached) runtime check should run again"
    assert {s for s, o in second.items() if o["status"] == "cached"} == set(SMOKE_STEPS) - set(runtime_steps)

    edited = json.loads(json.dumps(smoke_params))
    edited["search"]["evolution"]["generations"] += 1
    _run(fakes, edited, results)
    assert set(fakes.calls) - set(runtime_steps) == {  # the second calibration round runs the search's evolution
        "recalibration@ort_cpu_fp32", "recalibration@openvino_cpu_fp32",
        "search@ort_cpu_fp32-1.0", "search@openvino_cpu_fp32-1.0", "search-params@ort_cpu_fp32-1.0-2.5",
        "finetune@ort_cpu_fp32-1.0", "finetune@openvino_cpu_fp32-1.0", "finetune-params@ort_cpu_fp32-1.0-2.5",
        "controls", "transfer", "detection", "report"}

    (root / "predictor" / "metrics.json").unlink()  # a lost output: its stage runs again
    _run(fakes, edited, results)
    assert set(fakes.calls) - set(runtime_steps) == {"predictor"}, "same content, so nothing downstream re-runs"


def test_real_dataset_stage_through_its_cached_task(prefect_harness, tmp_path, monkeypatch):
    from flows.reproduce import stage_flow

    monkeypatch.setenv("SCAN_EDGE_CPU_LOCK", str(tmp_path / "cpu.lock"))
    params = {"profile": "smoke", "dataset": {"seed": 0, "num_classes": 2, "train_per_class": 3, "val_per_class": 1,
                                              "test_per_class": 1, "image_size": 32, "workers": 1},
              "search": {"devices": ["ort_cpu_fp32"]}}
    root, results = str(tmp_path / "data"), str(tmp_path / "results")
    first = stage_flow("dataset", params, {}, root, results)
    manifest = Path(first["dataset"]["outputs"]["manifest"])
    before = manifest.read_bytes()
    assert first["dataset"]["status"] == "ran" and len(pd.read_parquet(manifest)) == 10
    assert stage_flow("dataset", params, {}, root, results)["dataset"]["status"] == "cached"
    params["dataset"]["seed"] = 1
    assert stage_flow("dataset", params, {}, root, results)["dataset"]["status"] == "ran"
    assert manifest.read_bytes() != before


# --------------------------------------------------------------------------- CLI
def test_stage_command_checks_its_options(capsys):
    from flows.cli import main

    assert main(["stage", "lut", "--params", str(PROJECT_ROOT / "params.yaml")]) == 2
    assert "needs exactly one --device" in capsys.readouterr().err
    assert main(["stage", "search", "--device", "ort_cpu_fp32", "--params", str(PROJECT_ROOT / "params.yaml")]) == 2
    assert "--target" in capsys.readouterr().err
    assert main(["stage", "finetune", "--params", str(PROJECT_ROOT / "params.yaml")]) == 2
    assert "needs --name" in capsys.readouterr().err


def test_status_explains_dvc_status():
    from flows.cli_pipeline import explain_dvc_status

    status = {
        "search@ort_cpu_fp32-1.0": [{"changed deps": {"params.yaml": {"search.evolution": "modified"}}}],
        "runtime@ort_cpu_fp32": ["always changed"],
        "predictor": [{"changed outs": {"data/predictor/predictor.pt": "deleted"}}],
        "report": [{"changed deps": {"params.yaml": "new", "nas_core/report.py": "modified"}}],
    }
    rows = {r["stage"]: r for r in explain_dvc_status(status, ["dataset", "runtime@ort_cpu_fp32", "predictor",
                                                               "search@ort_cpu_fp32-1.0", "report"])}
    assert rows["report"] == {"stage": "report", "state": "never run", "why": ""}
    assert rows["dataset"] == {"stage": "dataset", "state": "up to date", "why": ""}
    assert rows["runtime@ort_cpu_fp32"]["state"] == "always runs"
    assert rows["predictor"] == {"stage": "predictor", "state": "stale",
                                 "why": "outs data/predictor/predictor.pt: deleted"}
    assert rows["search@ort_cpu_fp32-1.0"]["why"] == "deps params.yaml: search.evolution modified"

    # With DVC's graph, what follows a stale stage is stale too (dvc status names only the first):
    # the rows list what reproduce will run. The runtime check, which always runs, makes nothing stale.
    search, runtime = "search@ort_cpu_fp32-1.0", "runtime@ort_cpu_fp32"
    upstream = {"lut@ort_cpu_fp32": {runtime}, search: {runtime, "lut@ort_cpu_fp32"},
                "finetune@ort_cpu_fp32-1.0": {search, runtime, "lut@ort_cpu_fp32"},
                "transfer": {"finetune@ort_cpu_fp32-1.0", search, runtime, "lut@ort_cpu_fp32"}}
    order = ["dataset", runtime, "lut@ort_cpu_fp32", search, "finetune@ort_cpu_fp32-1.0", "transfer"]
    rows = {r["stage"]: r for r in explain_dvc_status({search: status[search], runtime: status[runtime]}, order,
                                                      upstream)}
    assert {stage: row["state"] for stage, row in rows.items()} == {
        "dataset": "up to date", runtime: "always runs", "lut@ort_cpu_fp32": "up to date", search: "stale",
        "finetune@ort_cpu_fp32-1.0": "stale", "transfer": "stale"}
    assert rows["transfer"]["why"] == f"after {search} (upstream, to be run)"
    assert rows[search]["why"] == "deps params.yaml: search.evolution modified"


# --------------------------------------------------------------------------- the report
def _finetune_metrics(name: str, top1: float, params: int, latency: dict) -> dict:
    return {"name": name, "init": "supernet" if name.startswith("ours") else "scratch", "predicted_accuracy": 0.5,
            "inherited": {"top1": 0.4}, "finetuned": {"top1": top1}, "params": params, "macs": 3 * params,
            "latency_ms": {d: {"median_ms": ms} for d, ms in latency.items()}}


def test_report_builds_tables_with_sources_and_lists_missing_artifacts(tmp_path):
    from nas_core.report import build_report

    root = tmp_path / "data"
    write_json(root / "finetune" / "ours_dev@1.0x" / "metrics.json",
               _finetune_metrics("ours_dev@1.0x", 0.72, 4_000_000, {"dev": 10.0}))
    write_json(root / "finetune" / "mobilenetv2_100" / "metrics.json",
               _finetune_metrics("mobilenetv2_100", 0.70, 3_500_000, {"dev": 8.0}))
    write_json(root / "search" / "dev@1.0x.json",
               {"run": "dev@1.0x", "name": "ours_dev@8ms", "targets_ms": {"dev": 8.0}, "params_m": None,
                "predicted_accuracy": 0.61, "latency_ms": {"dev": 7.9}, "measured_ms": {"dev": 7.8},
                "within": True, "measured": True, "params": 4_000_000, "macs": 12_000_000,
                "arch_json": "x/ours_dev@8ms.arch.json"})
    written = build_report(root, root / "report", devices=["dev"], searches=["dev@1.0x"],
                           baselines=["mobilenetv2_100"], params={"profile": "smoke"})

    table3 = pd.read_parquet(written["table3_models"]).set_index("model")
    assert table3.loc["ours_dev@1.0x", "vs_mobilenetv2.dev"] == pytest.approx(1.25)
    assert table3.loc["ours_dev@1.0x", "type"] == "hybrid (searched)" and table3.loc["mobilenetv2_100", "type"] == "CNN"
    table4 = pd.read_parquet(written["table4_searches"]).iloc[0]
    assert table4["finetuned_top1"] == 0.72 and table4["measured_ms.dev"] == 7.8 and bool(table4["within"])
    text = written["readme"].read_text()
    assert "| ours_dev@1.0x | hybrid (searched) | supernet | 0.5 | 0.4 | 0.72 | 0 | 0.72 | — | — | 4 | 12 | 10 | 1.25 |" \
        in text
    assert str(root / "finetune" / "ours_dev@1.0x" / "metrics.json") in text
    assert "## Missing artifacts" in text and str(root / "lut" / "dev.fit.json") in text
