"""Seeds behind Tables 5 and 6 (issue 16): each downstream model is trained once per
``transfer.seeds`` / ``detection.seeds``, the summaries and tables carry every seed's value with
mean and std, and the report words ours vs MobileNetV2 only from the seed-blocked interval.

The aggregation and the wording are checked on numbers chosen so that a wrong formula gives
another answer; the stages' bookkeeping with the training replaced by recorders; and one small
real run of two seeds of each stage (tiny data, two steps: ~20 s)."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nas_core.io import read_json, write_json
from nas_core.params import load_params
from nas_core.report import build_report
from tasks import stages
from tasks.stages import downstream

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OURS, MNV2 = "ours", "mobilenetv2_100"


def _transfer_entry(top1: list[float], seeds: list[int] | None = None) -> dict:
    seeds = seeds or list(range(len(top1)))
    sources = [f"transfer/runs/{'' if i == 0 else f'seeds/seed{s}/'}x.json" for i, s in enumerate(seeds)]
    return {"top1": top1[0], "top5": 0.9, "params": 2_000_000, "epochs": 2, "resolution": 64, "dataset": "d",
            "source": sources[0], "seeds": downstream.seed_summary(seeds, top1, sources)}


def _detection_entry(maps: list[float]) -> dict:
    seeds = list(range(len(maps)))
    sources = [f"detection/runs/{'' if s == 0 else f'seeds/seed{s}/'}x/metrics.json" for s in seeds]
    return {"mAP": maps[0], "mAP50": 0.5, "params": 3_000_000, "resolution": 128,
            "latency_ms": {"dev": 7.5}, "source": sources[0],
            "seeds": downstream.seed_summary(seeds, maps, sources, metric="mAP")}


def _report(root: Path, transfer: dict, detection: dict) -> dict[str, Path]:
    write_json(stages.Layout(root).transfer_metrics, transfer)
    write_json(stages.Layout(root).detection_metrics, detection)
    return build_report(root, root / "report", devices=["dev"], searches=[], params={"profile": "smoke"})


def test_seed_summary_is_the_mean_and_the_sample_std():
    summary = downstream.seed_summary([0, 1, 2], [0.50, 0.55, 0.60], ["a", "b", "c"])
    assert summary["top1_mean"] == pytest.approx(0.55) and summary["top1_std"] == pytest.approx(0.05)  # ddof 1
    detection = downstream.seed_summary([3], [0.25], ["a"], metric="mAP")
    assert (detection["seeds"], detection["mAP"], detection["mAP_mean"], detection["mAP_std"]) == ([3], [0.25], 0.25,
                                                                                                   None)


def test_tables_5_and_6_carry_the_seeds_and_the_claims_follow_the_paired_intervals(tmp_path):
    # transfer: ours 10-11 points above MobileNetV2 at every seed, though the seeds move both by 5 points
    ours_top1, mnv2_top1 = [0.50, 0.55, 0.60], [0.40, 0.44, 0.49]
    # detection: ours ahead at two seeds and behind at one
    ours_map, mnv2_map = [0.20, 0.10, 0.30], [0.15, 0.25, 0.12]
    written = _report(tmp_path, {OURS: _transfer_entry(ours_top1), MNV2: _transfer_entry(mnv2_top1)},
                      {OURS: _detection_entry(ours_map), MNV2: _detection_entry(mnv2_map)})

    table5 = pd.read_parquet(written["table5_transfer"]).set_index("model")
    assert table5.loc[OURS, "seeds"] == "0,1,2" and table5.loc[OURS, "top1"] == 0.50  # the first seed's run
    assert table5.loc[OURS, "top1_mean"] == pytest.approx(0.55) and table5.loc[OURS, "top1_std"] == pytest.approx(0.05)
    assert list(table5.loc[MNV2, "top1_seeds"]) == mnv2_top1
    assert "seeds/seed2/" in table5.loc[OURS, "source"], "every seed's run is named"
    table6 = pd.read_parquet(written["table6_detection"]).set_index("model")
    assert table6.loc[MNV2, "mAP_mean"] == pytest.approx(np.mean(mnv2_map))
    assert table6.loc[MNV2, "mAP_std"] == pytest.approx(np.std(mnv2_map, ddof=1))
    assert table6.loc[OURS, "latency_ms.dev"] == 7.5

    transfer = pd.read_parquet(written["table5_comparisons"]).iloc[0]
    paired = stats.ttest_rel(ours_top1, mnv2_top1).confidence_interval(0.95)
    unpaired = stats.ttest_ind(ours_top1, mnv2_top1, equal_var=False).confidence_interval(0.95)
    assert unpaired.low < 0, "blind to the seeds, the gap would not be distinguishable"
    assert (transfer["model"], transfer["other"], transfer["metric"]) == (OURS, MNV2, "top1")
    assert transfer["diff"] == pytest.approx(np.mean(np.subtract(ours_top1, mnv2_top1)))
    assert (transfer["ci_low"], transfer["ci_high"]) == pytest.approx((paired.low, paired.high))
    assert transfer["claim"].startswith(f"{OURS} beats {MNV2}: +10.67 points of transfer top-1, 95 % CI [")
    detection = pd.read_parquet(written["table6_comparisons"]).iloc[0]
    assert detection["ci_low"] < 0 < detection["ci_high"] and detection["n_ours"] == 3
    assert detection["claim"].startswith(f"{OURS} and {MNV2} are not distinguishable: +2.67 points of mAP")

    text = written["readme"].read_text()
    table5_text = text.split("## Table 5")[1].split("## Table 6")[0]
    assert f"- {OURS} beats {MNV2}: +10.67 points of transfer top-1" in table5_text
    assert "top1_mean" in table5_text
    assert f"- {OURS} and {MNV2} are not distinguishable: +2.67 points of mAP" in text.split("## Table 6")[1]


def test_one_seed_is_never_a_claim(tmp_path):
    """Smoke: one seed each. Ours 10 points ahead is still "not distinguishable (n = 1)"."""
    written = _report(tmp_path, {OURS: _transfer_entry([0.50]), MNV2: _transfer_entry([0.40])},
                      {OURS: _detection_entry([0.30]), MNV2: _detection_entry([0.10])})
    transfer = pd.read_parquet(written["table5_comparisons"]).iloc[0]
    assert math.isnan(transfer["ci_low"]) and transfer["diff"] == pytest.approx(0.10)
    assert transfer["claim"] == (f"{OURS} and {MNV2} are not distinguishable (n = 1): +10.00 points of transfer "
                                 "top-1, too few runs for an interval")
    detection = pd.read_parquet(written["table6_comparisons"]).iloc[0]
    assert "not distinguishable (n = 1): +20.00 points of mAP" in detection["claim"]
    table5 = pd.read_parquet(written["table5_transfer"]).set_index("model")
    assert table5.loc[OURS, "seeds"] == "0" and math.isnan(table5.loc[OURS, "top1_std"])


def test_a_summary_written_before_seeds_reads_as_one_run_of_seed_0(tmp_path):
    old = {OURS: {"top1": 0.5, "source": "transfer/runs/ours.json"}, MNV2: {"top1": 0.4, "source": "m.json"}}
    written = _report(tmp_path, old, {})
    table5 = pd.read_parquet(written["table5_transfer"]).set_index("model")
    assert (table5.loc[OURS, "seeds"], table5.loc[OURS, "top1_mean"]) == ("0", 0.5)
    assert table5.loc[OURS, "source"] == "transfer/runs/ours.json"
    assert "not distinguishable (n = 1)" in pd.read_parquet(written["table5_comparisons"]).iloc[0]["claim"]


# --------------------------------------------------------------------------- the stages
def _params(tmp_path: Path, seeds: list[int]) -> dict:
    params = copy.deepcopy(load_params(PROJECT_ROOT / "params.yaml", "smoke"))
    params["pipeline"].update(finetune_baselines={}, equal_budget=[], transfer_models=[MNV2, "gernet_s"],
                              detection_models=[MNV2, "gernet_s"], transfer_data=str(tmp_path / "images"),
                              detection_data=None)
    params["transfer"]["seeds"] = seeds
    params["detection"]["seeds"] = seeds
    (tmp_path / "images").mkdir(exist_ok=True)
    return params


def test_the_transfer_stage_trains_every_model_once_per_seed(tmp_path, monkeypatch):
    """The first seed's run where a one-seed pipeline always wrote it; the others under
    ``runs/seeds/seed<s>/``; each with its own seed; the summary holds every seed's top-1."""
    trained = []
    top1 = {(MNV2, 0): 0.30, (MNV2, 7): 0.36, ("gernet_s", 0): 0.20, ("gernet_s", 7): 0.10}

    def transfer(params, model, data, *, out_root, name, resume, overwrite, progress):
        seed = params["transfer"]["seed"]
        trained.append((name, seed, Path(out_root)))
        write_json(Path(out_root) / f"{name}.json", {"top1": top1[(name, seed)], "top5": 1.0, "params": 1})

    monkeypatch.setattr(downstream, "run_transfer", transfer)
    root = tmp_path / "data"
    layout = stages.Layout(root)
    stages.stage_transfer(_params(tmp_path, [0, 7]), root)
    assert trained == [(MNV2, 0, layout.transfer_runs), (MNV2, 7, layout.transfer_seed_runs(7)),
                       ("gernet_s", 0, layout.transfer_runs), ("gernet_s", 7, layout.transfer_seed_runs(7))]
    summary = read_json(layout.transfer_metrics)[MNV2]
    assert summary["top1"] == 0.30 and summary["source"] == str(layout.transfer_runs / f"{MNV2}.json")
    assert summary["seeds"]["seeds"] == [0, 7] and summary["seeds"]["top1"] == [0.30, 0.36]
    assert summary["seeds"]["top1_mean"] == pytest.approx(0.33)
    assert summary["seeds"]["sources"][1] == str(layout.transfer_seed_runs(7) / f"{MNV2}.json")


def test_the_detection_stage_times_only_the_first_seeds_detector(tmp_path, monkeypatch):
    trained = []

    def detect(params, model, data, *, out_root, name, resume, overwrite, progress, root):
        seed, devices = params["detection"]["seed"], params["detection"]["devices"]
        trained.append((name, seed, Path(out_root), list(devices)))
        metrics = {"coco": {"mAP": 0.1 * (seed + 1), "mAP50": 0.5}, "params": 1, "resolution": 128,
                   "latency_ms": {d: {"median_ms": 5.0} for d in devices}}
        write_json(Path(out_root) / name / "metrics.json", metrics)
        return metrics

    monkeypatch.setattr(downstream, "run_detection", detect)
    monkeypatch.setattr(downstream, "detection_dataset", lambda params, given, generated: generated)
    monkeypatch.setattr(downstream, "_detection_digest", lambda data: {})
    root = tmp_path / "data"
    layout = stages.Layout(root)
    params = _params(tmp_path, [0, 2])
    stages.stage_detection(params, root)
    timed = list(params["detection"]["devices"])
    assert trained[:2] == [(MNV2, 0, layout.detection_runs, timed), (MNV2, 2, layout.detection_seed_runs(2), [])]
    summary = read_json(layout.detection_metrics)[MNV2]
    assert summary["mAP"] == pytest.approx(0.1) and summary["latency_ms"] == {d: 5.0 for d in timed}
    assert summary["seeds"]["mAP"] == pytest.approx([0.1, 0.3]) and summary["seeds"]["mAP_mean"] == pytest.approx(0.2)


def test_repeated_seeds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="transfer.seeds: repeated"):
        stages.stage_transfer(_params(tmp_path, [1, 1]), tmp_path / "data")


# --------------------------------------------------------------------------- a small real run
@pytest.fixture
def tiny(tmp_path, quick_timing, one_thread) -> dict:
    params = _params(tmp_path, [0, 1])
    params["pipeline"].update(transfer_models=[MNV2], detection_models=[MNV2], transfer_data=None,
                              transfer_synthetic={"seed": 1, "num_classes": 3, "train_per_class": 8,
                                                  "val_per_class": 2, "test_per_class": 2, "image_size": 32})
    params["transfer"].update(resolution=32, epochs=1, batch_size=8, steps_per_epoch=2, num_workers=0,
                              eval_batch_size=16)
    params["detection"].update(resolution=64, epochs=1, batch_size=4, steps_per_epoch=2, warmup_epochs=0,
                               devices=["ort_cpu_fp32"], timing=quick_timing,
                               synthetic={"num_train": 8, "num_test": 4, "image_size": 64, "seed": 0})
    return params


def test_two_seeds_of_real_transfer_and_detection(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SCAN_EDGE_CPU_LOCK", str(tmp_path / "cpu.lock"))
    root = tmp_path / "data"
    layout = stages.Layout(root)
    stages.stage_transfer(tiny, root)
    stages.stage_detection(tiny, root)

    records = [read_json(layout.transfer_runs / f"{MNV2}.json"), read_json(layout.transfer_seed_runs(1) / f"{MNV2}.json")]
    assert [r["config"]["seed"] for r in records] == [0, 1]
    transfer = read_json(layout.transfer_metrics)[MNV2]["seeds"]
    assert transfer["top1"] == [r["top1"] for r in records]
    assert transfer["top1_mean"] == pytest.approx(np.mean(transfer["top1"]))
    detectors = [read_json(layout.detection_runs / MNV2 / "metrics.json"),
                 read_json(layout.detection_seed_runs(1) / MNV2 / "metrics.json")]
    assert [d["config"]["seed"] for d in detectors] == [0, 1]
    assert detectors[0]["latency_ms"]["ort_cpu_fp32"]["median_ms"] > 0 and detectors[1]["latency_ms"] == {}
    assert read_json(layout.detection_metrics)[MNV2]["seeds"]["mAP"] == [d["coco"]["mAP"] for d in detectors]

    written = build_report(root, root / "report", devices=["ort_cpu_fp32"], searches=[], params=tiny)
    assert pd.read_parquet(written["table5_transfer"]).iloc[0]["seeds"] == "0,1"
    assert pd.read_parquet(written["table6_detection"]).iloc[0]["seeds"] == "0,1"
