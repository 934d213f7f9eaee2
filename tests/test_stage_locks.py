"""The machine's CPU lock around the jobs that compute and then measure latency.

Search, fine-tuning and detection hold the lock shared while they compute and exclusively
for each latency measurement, one after the other, never nested: with the real lock
(``tasks.stage_lock`` over ``tasks.cpu_lock``, pointed at a temporary file) a shared ->
exclusive upgrade in one thread raises (across descriptors it would wait for itself), so
these runs also show that no path deadlocks. Tiny models and data: seconds each.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tasks
from nas_core.params import load_params
from tasks import stage_lock, stages

PROJECT_ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def lock_file(tmp_path, monkeypatch) -> str:
    """The CPU lock on a file of this test's own (not the machine's); its key in the held modes."""
    monkeypatch.setenv("SCAN_EDGE_CPU_LOCK", str(tmp_path / "cpu.lock"))
    return str((tmp_path / "cpu.lock").resolve())


def _record_calls(monkeypatch, module, name: str, seen: list, label: str) -> None:
    """Wrap ``module.name``: each call records (label, the lock modes this thread holds), then runs."""
    original = getattr(module, name)

    def recorded(*args, **kwargs):
        seen.append((label, dict(tasks._held_modes())))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)


# --------------------------------------------------------------------------- the nas_core jobs
def test_finetune_trains_sharing_the_lock_and_measures_alone(lock_file, tmp_path, monkeypatch, quick_timing):
    import nas_core.finetune as ft
    from nas_core.data.synthetic import generate_classification

    data = tmp_path / "data"
    generate_classification(data, num_classes=4, train_per_class=4, val_per_class=2, test_per_class=2, image_size=32,
                            workers=1)
    seen: list = []
    for name, label in (("train_classifier", "train"), ("export_all", "export"), ("measure_latency", "measure")):
        _record_calls(monkeypatch, ft, name, seen, label)
    config = ft.FinetuneConfig(resolution=32, deploy_resolution=32, epochs=1, batch_size=8, steps_per_epoch=1,
                               warmup_epochs=0, eval_batch_size=16, bn_calib_batches=1, bn_calib_batch_size=8,
                               devices=("ort_cpu_fp32",), timing=quick_timing, export_openvino=False,
                               export_tensorrt=False)
    metrics = ft.finetune("mobilenetv2_100", data_root=data, supernet=None, out_root=tmp_path / "out", config=config,
                          progress=False, lock=stage_lock)
    assert seen == [("train", {lock_file: "shared"}), ("export", {lock_file: "shared"}),
                    ("measure", {lock_file: "exclusive"})]
    assert metrics["latency_ms"]["ort_cpu_fp32"]["median_ms"] > 0
    assert tasks._held_modes() == {}


def test_detection_trains_sharing_the_lock_and_measures_alone(lock_file, tmp_path, monkeypatch, quick_timing):
    import nas_core.detection as det
    from nas_core.data.synthetic import generate_detection

    shapes = tmp_path / "shapes"
    generate_detection(shapes, seed=1, num_train=8, num_test=2, image_size=64, workers=1)
    seen: list = []
    _record_calls(monkeypatch, det, "train_detector", seen, "train")
    _record_calls(monkeypatch, det.finetune, "measure_latency", seen, "measure")  # run_detection calls finetune's
    config = det.DetectionConfig(resolution=64, epochs=1, batch_size=4, steps_per_epoch=1, opt="adamw", lr=1e-3,
                                 warmup_epochs=0, augment="none", eval_batch_size=2, devices=("ort_cpu_fp32",),
                                 timing=quick_timing)
    metrics = det.run_detection("mobilenetv2_100", shapes, out_root=tmp_path / "out", config=config, progress=False,
                                lock=stage_lock)
    assert seen == [("train", {lock_file: "shared"}), ("measure", {lock_file: "exclusive"})]
    assert metrics["latency_ms"]["ort_cpu_fp32"]["median_ms"] > 0
    assert tasks._held_modes() == {}


class _MacsAccuracy:
    """Stand-in predictor: more multiply-adds, more accurate."""

    def __init__(self, catalog):
        self.catalog, self.table = catalog, np.log1p(catalog.macs_table().astype(float) / 1e6)

    def predict_genomes(self, genomes):
        return self.catalog.sum_table(self.table, genomes)


class _MacsLatency(_MacsAccuracy):
    """Stand-in calibrated LUT: block times proportional to their multiply-adds."""

    def __init__(self, catalog):
        self.catalog, self.table = catalog, catalog.macs_table().astype(float) / 4e7 + 0.03

    def min_latency_ms(self) -> float:
        return 0.0  # a lower bound is all the feasibility check needs


def test_search_shares_the_lock_and_measures_alone(lock_file, tmp_path, monkeypatch):
    from nas_core import search_run
    from nas_core.block_catalog import BlockCatalog
    from nas_core.search_algorithm import EvolutionConfig
    from nas_core.search_refine import RefineConfig
    from nas_core.search_run import SearchSetup, run_search
    from nas_core.search_space import SearchSpace

    space = SearchSpace()
    catalog = BlockCatalog(space, 224)
    latency = _MacsLatency(catalog)
    target = float(np.percentile(latency.predict_genomes(space.sample_genomes(2000, np.random.default_rng(0))), 30))
    setup = SearchSetup(space=space, catalog=catalog, predictor=_MacsAccuracy(catalog), estimators={"dev": latency},
                        profiles={}, config=EvolutionConfig(population_size=16, generations=2, sample_batch=256,
                                                            probe_samples=64),
                        refine=RefineConfig(measure_top=2, max_rounds=2), num_classes=1000, out_dir=tmp_path)
    seen: list = []
    _record_calls(monkeypatch, search_run, "search", seen, "search")  # search_run calls it by this name

    def measure(candidate):
        seen.append(("measure", dict(tasks._held_modes())))
        return {"dev": 1.2 * candidate.latency_ms()["dev"]}  # too slow: a second round searches again

    run_search(setup, {"dev": target}, measure=True, measure_fn=measure, say=lambda _: None, lock=stage_lock)
    assert {label for label, _ in seen} == {"search", "measure"} and [s[0] for s in seen].count("search") == 2
    assert all(held == {lock_file: "shared" if label == "search" else "exclusive"} for label, held in seen), seen
    assert tasks._held_modes() == {}


# --------------------------------------------------------------------------- the stages hand the lock on
@pytest.fixture
def smoke_params() -> dict:
    return load_params(PROJECT_ROOT / "params.yaml", "smoke")


def _lock_phases(seen: list):
    """A fake nas_core job that records the held modes in each phase of its ``lock`` hook."""
    def job(*args, lock, **kwargs):
        with lock("shared"):
            seen.append(("train", dict(tasks._held_modes())))
        with lock("exclusive"):
            seen.append(("measure", dict(tasks._held_modes())))
        return {"coco": {"mAP": 0.1, "mAP50": 0.2}, "params": 1, "resolution": 64, "latency_ms": {}}

    return job


def test_finetune_and_detection_stages_hold_no_lock_around_their_job(lock_file, smoke_params, tmp_path,
                                                                       monkeypatch):
    """Before, these stages held the lock exclusively for their whole run, training included,
    which kept every other stage waiting for minutes."""
    layout = stages.Layout(tmp_path / "data")
    layout.dataset.mkdir(parents=True)
    (tmp_path / "coco" / "images").mkdir(parents=True)
    for split in ("train", "test"):  # the flat layout (the stage hashes both annotation files)
        (tmp_path / "coco" / f"instances_{split}.json").write_text("{}")
    params = {**smoke_params, "pipeline": {**smoke_params["pipeline"], "detection_models": ["mobilenetv2_100"],
                                           "detection_data": str(tmp_path / "coco")}}
    seen: list = []
    monkeypatch.setattr("nas_core.finetune.finetune", _lock_phases(seen))
    monkeypatch.setattr("nas_core.detection.run_detection", _lock_phases(seen))
    stages.stage_finetune(params, "mobilenetv2_100", layout.root)
    layout.finetune_dir("mobilenetv2_100").mkdir(parents=True)
    (layout.finetune_dir("mobilenetv2_100") / "model.pt").write_bytes(b"what the fake fine-tune made")
    stages.stage_detection(params, layout.root)
    phases = [("train", {lock_file: "shared"}), ("measure", {lock_file: "exclusive"})]
    assert seen == phases * 2
    assert tasks._held_modes() == {}
