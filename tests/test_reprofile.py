"""The reprofile flow and its schedule: a runtime upgrade re-profiles the device and reports what moved.

The runtime-version lookup is replaced to simulate an upgrade; the LUT is re-timed for real
on a handful of blocks at 64x64 (seconds); calibration, baselines and search are fakes
(their own tests cover them) that record that they ran and write what the report reads.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows import reprofile
from nas_core.io import read_parquet, read_provenance, write_json, write_parquet
from nas_core.params import load_params
from tasks import stages
from tasks.stages import STAGES, StageInfo

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEVICE = "ort_cpu_fp32"
BLOCKS = "s1/ffn/w32/unified/k3/*/relu"  # 3 blocks, + the drift reference block
QUICK = {"warmup_runs": 2, "warmup_ms": 1.0, "min_repeats": 5, "min_total_ms": 2.0, "max_repeats": 50,
         "max_total_ms": 100.0, "stability": 0.2, "check_every": 5}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    params = load_params(PROJECT_ROOT / "params.yaml", "smoke")
    params["search"]["devices"] = [DEVICE]
    params["search_space"]["resolution"] = 64
    params["lut"].update(blocks=BLOCKS, timing=QUICK, check_every=5)
    params["pipeline"]["params_constrained"] = {}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({k: v for k, v in params.items() if k != "profile"}))
    monkeypatch.setenv("SCAN_EDGE_CPU_LOCK", str(tmp_path / "cpu.lock"))
    root = tmp_path / "data"
    return params, params_file, root


def _install_fakes(monkeypatch, root: Path, calls: list) -> None:
    layout = stages.Layout(root)

    def calibration(params, device, root):
        calls.append(f"calibration@{device}")
        write_json(layout.lut_paths(device).fit, {"a": 0.9, "b": 1.0, "metrics": {}})
        return {"fit": layout.lut_paths(device).fit}

    def baselines(params, device, root):
        calls.append(f"baselines@{device}")
        write_parquet(layout.baselines(device), pd.DataFrame({"model": ["mobilenetv2_100"], "device": [device],
                                                              "median_ms": [2.0], "error": [""]}))
        return {"baselines": layout.baselines(device)}

    def search(params, devices, target, params_m=None, root=None):
        run = stages.SearchRun(tuple(devices), target, params_m)
        calls.append(f"search@{run.key}")
        layout.search_dir(run.key).mkdir(parents=True, exist_ok=True)
        write_json(layout.search_summary(run.key), {"arch_id": "new-arch", "targets_ms": {DEVICE: 2.0},
                                                    "measured_ms": {DEVICE: 1.97}, "compact": "new"})
        return {"summary": layout.search_summary(run.key)}

    for name, fake in (("calibration", calibration), ("baselines", baselines), ("search", search)):
        info = STAGES[name]
        monkeypatch.setitem(STAGES, name, StageInfo(fake, info.sections, info.code, info.measures_latency))


def test_a_runtime_upgrade_reprofiles_the_device_and_reports_what_moved(prefect_harness, setup, tmp_path,
                                                                        monkeypatch):
    params, params_file, root = setup
    layout = stages.Layout(root)
    lut = layout.lut_paths(DEVICE).lut
    stages.stage_lut(params, DEVICE, root)  # the LUT as measured with the old runtime
    old = read_parquet(lut)
    measured_first = old.set_index("block_id")["median_ms"].copy()
    slowed = list(old["block_id"][:2])
    old.loc[old["block_id"].isin(slowed), "median_ms"] *= 50  # the old runtime was much slower on these
    write_parquet(lut, old, read_provenance(lut))
    write_json(layout.search_summary(f"{DEVICE}@1.0x"), {"arch_id": "old-arch", "targets_ms": {DEVICE: 2.1},
                                                          "measured_ms": {DEVICE: 2.3}, "compact": "old"})
    calls: list[str] = []
    _install_fakes(monkeypatch, root, calls)
    installed = read_provenance(lut)["identity"]["runtime_version"]

    monkeypatch.setattr(reprofile, "installed_runtime_version", lambda params, device: installed)
    unchanged = reprofile.reprofile_flow(str(params_file), None, str(root), None, 0.5, str(tmp_path / "results"))
    assert unchanged == {DEVICE: {"status": "unchanged", "runtime_version": installed}} and calls == []

    monkeypatch.setattr(reprofile, "installed_runtime_version", lambda params, device: "99.0-simulated")
    outcome = reprofile.reprofile_flow(str(params_file), None, str(root), None, 0.5,
                                       str(tmp_path / "results"))[DEVICE]
    assert outcome["status"] == "reprofiled"
    assert calls == [f"calibration@{DEVICE}", f"baselines@{DEVICE}", f"search@{DEVICE}@1.0x"]

    new = read_parquet(lut).set_index("block_id")["median_ms"]
    assert set(new.index) == set(measured_first.index)
    assert (new != measured_first[new.index]).all(), "every block should have been timed again, not resumed"
    moved = read_parquet(outcome["blocks"])
    assert set(moved.loc[moved["change"] < -0.9, "block_id"]) == set(slowed)
    document = json.loads(Path(outcome["json"]).read_text())
    assert document["old_runtime_version"] == installed and document["new_runtime_version"] == "99.0-simulated"
    assert document["searches"][0]["old_arch_id"] == "old-arch" and document["searches"][0]["new_arch_id"] == "new-arch"
    assert document["searches"][0]["new_measured_ms"] == {DEVICE: 1.97}
    text = Path(outcome["markdown"]).read_text()
    assert "99.0-simulated" in text and slowed[0] in text and "**changed**" in text
    before = Path(document["sources"]["old LUT"])
    assert read_parquet(before)["median_ms"].max() == pytest.approx(old["median_ms"].max())
    assert (before.parent / "search" / f"{DEVICE}@1.0x.json").exists(), "the old search is kept aside"


def test_a_device_without_a_lut_is_skipped(setup, monkeypatch):
    params, _, root = setup
    assert reprofile.reprofile_device(params, DEVICE, str(root))["status"] == "skipped"


def test_the_schedule_is_a_cron_deployment(setup, capsys):
    _, params_file, root = setup
    deployment = reprofile.reprofile_deployment("15 4 * * 2", params_file=str(params_file), root=str(root))
    assert [s.schedule.cron for s in deployment.schedules] == ["15 4 * * 2"]
    assert deployment.parameters["params_file"] == str(params_file.resolve())
    assert deployment.parameters["root"] == str(root.resolve())

    from flows.cli import main

    assert main(["schedule", "reprofile", "--cron", "*/30 * * * *", "--params", str(params_file), "--print-only"]) == 0
    assert "deployment reprofile/reprofile: cron '*/30 * * * *'" in capsys.readouterr().out
