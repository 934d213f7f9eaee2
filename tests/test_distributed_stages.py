"""Fine-tuning, transfer and detection under ``torchrun`` when ``pipeline.torchrun.nproc_per_node > 1``.

The stage functions launch ``scan-edge finetune | transfer | detect`` on two CPU ranks
(gloo), exactly as the supernet stage launches ``train-supernet``; each rank trains on
its half of every batch, gradients are averaged over ranks (``nas_core.train``), rank 0
writes the outputs. Tiny data and one or two steps: the cost is starting the processes.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from nas_core.io import read_json, read_parquet
from nas_core.params import load_params
from tasks import stages

WORLD = 2


@pytest.fixture(scope="module")
def distributed_params(quick_timing) -> dict:
    params = copy.deepcopy(load_params("params.yaml", "smoke"))
    quick = {"devices": ["ort_cpu_fp32"], "timing": quick_timing}
    params["pipeline"].update(
        finetune_baselines={"mobilenetv2_100": "scratch"}, transfer_models=["mobilenetv2_100"], transfer_data=None,
        transfer_synthetic={"seed": 1, "num_classes": 3, "train_per_class": 8, "val_per_class": 2,
                            "test_per_class": 2, "image_size": 32},
        detection_models=["mobilenetv2_100"], detection_data=None, torchrun={"nproc_per_node": WORLD})
    params["finetune"].update(resolution=32, deploy_resolution=64, epochs=1, batch_size=8, steps_per_epoch=2,
                              num_workers=0, eval_batch_size=16, bn_calib_batches=1, bn_calib_batch_size=8,
                              export_openvino=False, export_tensorrt=False, **quick)
    params["transfer"].update(resolution=32, epochs=1, batch_size=8, steps_per_epoch=2, num_workers=0,
                              eval_batch_size=16)
    params["detection"].update(resolution=64, epochs=1, batch_size=4, steps_per_epoch=2, warmup_epochs=0,
                               synthetic={"num_train": 8, "num_test": 4, "image_size": 64, "seed": 0}, **quick)
    return params


@pytest.fixture(scope="module")
def root(tmp_path_factory, distributed_params) -> Path:
    from nas_core.data.synthetic import generate_classification

    root = tmp_path_factory.mktemp("distributed") / "data"
    generate_classification(stages.Layout(root).dataset, num_classes=4, train_per_class=8, val_per_class=2,
                            test_per_class=2, image_size=32, workers=1)
    return root


def _assert_trained_on_two_ranks(run_dir: Path, steps: int) -> None:
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert checkpoint["world_size"] == WORLD and len(checkpoint["rng"]) == WORLD  # one RNG state per rank
    assert checkpoint["step"] == steps
    log = read_parquet(run_dir / "train_log.parquet")
    assert log["world_size"].tolist() == [WORLD]


@pytest.fixture(scope="module")
def finetuned(root, distributed_params) -> Path:
    stages.stage_finetune(distributed_params, "mobilenetv2_100", root)
    return stages.Layout(root).finetune_dir("mobilenetv2_100")


@pytest.mark.slow  # three torchrun launches of two processes each: ~1 min idle, 6 min on a loaded 2-core machine
def test_finetune_runs_on_two_gloo_ranks(finetuned):
    metrics = read_json(finetuned / "metrics.json")
    assert metrics["name"] == "mobilenetv2_100" and metrics["init"] == "scratch"
    assert metrics["latency_ms"]["ort_cpu_fp32"]["median_ms"] > 0  # rank 0 exported and measured
    assert (finetuned / "model.onnx").exists()
    _assert_trained_on_two_ranks(finetuned, steps=2)


@pytest.mark.slow
def test_transfer_runs_on_two_gloo_ranks(root, finetuned, distributed_params):
    stages.stage_transfer(distributed_params, root)
    runs = stages.Layout(root).transfer / "runs"
    record = read_json(runs / "mobilenetv2_100.json")
    assert record["dataset"]["classes"] == 3 and record["model"]["init"] == "pretrained"
    assert read_json(stages.Layout(root).transfer / "metrics.json")["mobilenetv2_100"]["top1"] == record["top1"]
    _assert_trained_on_two_ranks(runs / "mobilenetv2_100", steps=2)


@pytest.mark.slow
def test_detection_runs_on_two_gloo_ranks(root, finetuned, distributed_params):
    stages.stage_detection(distributed_params, root)
    runs = stages.Layout(root).detection / "runs"
    metrics = read_json(runs / "mobilenetv2_100" / "metrics.json")
    assert metrics["dataset"]["test_images"] == 4 and metrics["latency_ms"]["ort_cpu_fp32"]["median_ms"] > 0
    summary = read_json(stages.Layout(root).detection / "metrics.json")
    assert summary["mobilenetv2_100"]["mAP"] == metrics["coco"]["mAP"]
    _assert_trained_on_two_ranks(runs / "mobilenetv2_100", steps=2)


def test_launch_commands_restart_runs_of_other_inputs(tmp_path, distributed_params, monkeypatch):
    """What each stage hands to torchrun: the stage's command, its paths, and --overwrite
    unless the last run had the same inputs (which it then resumes)."""
    launched = []
    monkeypatch.setattr(stages.training, "_torchrun", lambda nproc, command, sections, layout: launched.append(
        (nproc, list(command), sections)))
    from nas_core.data.synthetic import generate_classification

    generate_classification(stages.Layout(tmp_path).dataset, num_classes=2, train_per_class=4, val_per_class=1,
                            test_per_class=1, image_size=32, workers=1)
    stages.stage_finetune(distributed_params, "mobilenetv2_100", tmp_path)
    stages.stage_finetune(distributed_params, "mobilenetv2_100", tmp_path)
    (nproc, first, sections), (_, second, _) = launched
    assert nproc == WORLD and first[:2] == ["finetune", "mobilenetv2_100"]
    assert first[first.index("--init") + 1] == "scratch" and first[first.index("--out") + 1] == str(tmp_path / "finetune")
    assert first[-1] == "--overwrite" and "--overwrite" not in second  # the same inputs again: resumed
    assert "profile" not in sections and sections["finetune"] == distributed_params["finetune"]
