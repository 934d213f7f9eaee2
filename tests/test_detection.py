"""SSDLite detection transfer: backbones, a real SSD forward/backward, COCO evaluation, export.

Small: generated 64x64 shape images, a one-choice-per-stage subnet, one torch thread
(OpenMP threads fighting other processes on a shared 2-core machine are 10x slower).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_core.data.coco import CocoDetectionDataset, detection_collate
from nas_core.detection import (DetectionConfig, DetectionTransform, MobileNetV2DetectionBackbone, SSDLiteExport,
                                SubnetDetectionBackbone, build_ssdlite, coco_evaluate, detection_backbone,
                                detection_datasets, detection_step, predict, run_detection)
from nas_core.io import read_json
from nas_core.search_space import SearchSpace
from nas_core.subnet import SubnetModel

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from nas_core.data.synthetic import generate_detection

    root = tmp_path_factory.mktemp("det") / "shapes"
    generate_detection(root, seed=1, num_train=16, num_test=6, image_size=64, workers=1)
    return root


@pytest.fixture(scope="module")
def subnet() -> SubnetModel:
    torch.manual_seed(0)
    return SubnetModel(SearchSpace().smallest(), num_classes=10, resolution=32)


def _detector(backbone_source, num_classes: int = 4, resolution: int = 64):
    torch.manual_seed(0)
    return build_ssdlite(detection_backbone(backbone_source, resolution), num_classes, resolution,
                         DetectionConfig(resolution=resolution))


# --------------------------------------------------------------------------- backbones
def test_subnet_backbone_uses_stage_3_and_4_then_extra_blocks(subnet):
    backbone = detection_backbone(subnet, 128)
    assert isinstance(backbone, SubnetDetectionBackbone) and backbone.resolution == 128
    widths = [s.width for s in subnet.arch.stages]
    assert backbone.out_channels == [widths[2], widths[3], 512, 256, 256, 128]
    features = list(backbone.eval()(torch.randn(1, 3, 128, 128)).values())
    assert [f.shape[1] for f in features] == backbone.out_channels
    assert [f.shape[-1] for f in features] == [8, 4, 2, 1, 1, 1]  # strides 16, 32, then extra blocks
    from nas_core.classifiers import subnet_at_resolution

    reference = subnet_at_resolution(subnet, 128).eval()  # same weights, attention biases resized alike
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        stages = reference.forward_stages(x)
        got = list(backbone.eval()(x).values())
    torch.testing.assert_close(got[0], stages[2])
    torch.testing.assert_close(got[1], stages[3])
    assert not any(k.startswith(("head", "norm")) for k, _ in backbone.named_parameters())  # no classifier


def test_mobilenetv2_backbone_matches_mmdetection_cut():
    from nas_core.classifiers import build_timm_classifier

    model = build_timm_classifier("mobilenetv2_100", 10)
    backbone = detection_backbone(model, 128)
    assert isinstance(backbone, MobileNetV2DetectionBackbone)
    assert backbone.out_channels == [96, 1280, 512, 256, 256, 128]
    features = list(backbone.eval()(torch.randn(1, 3, 128, 128)).values())
    assert [f.shape[-1] for f in features] == [8, 4, 2, 1, 1, 1]
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():  # the stride-32 map is timm's forward_features (conv_head + bn2 included)
        torch.testing.assert_close(list(backbone(x).values())[1], model.eval().forward_features(x))
    with pytest.raises(TypeError, match="not a timm MobileNetV2"):
        MobileNetV2DetectionBackbone(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------- training and evaluation
def test_ssd_forward_backward_on_generated_images(shapes, subnet):
    train, test, _ = detection_datasets(shapes, augment="ssdlite")
    assert train.num_classes == 4 and len(train) == 16
    assert any(not r.boxes for r in train.records + test.records)  # background-only images are kept
    detector = _detector(subnet, train.num_classes)
    detector.train()
    batch = detection_collate([train[i] for i in range(len(train))])
    loss, parts = detection_step(detector, batch, torch.device("cpu"))
    assert torch.isfinite(loss) and parts["bbox_loss"] > 0 and parts["cls_loss"] > 0
    loss.backward()
    stem_grad = detector.backbone.stem.conv1.conv.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0  # gradients reach the searched backbone
    predictions = predict(detector, test, batch_size=4)
    assert sorted(predictions) == sorted(r.image_id for r in test.records)
    metrics = coco_evaluate(predictions, test.label_to_category, shapes / "instances_test.json")
    assert 0.0 <= metrics["mAP50"] <= 1.0 and metrics["detections"] > 0


def test_coco_evaluate_scores_perfect_and_wrong_predictions(shapes):
    test = CocoDetectionDataset(shapes / "images", shapes / "instances_test.json")
    truth = {r.image_id: test.target(i) for i, r in enumerate(test.records)}
    perfect = {i: {"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
               for i, t in truth.items()}
    metrics = coco_evaluate(perfect, test.label_to_category, shapes / "instances_test.json")
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAP50"] == pytest.approx(1.0)
    shifted = {i: {**p, "boxes": p["boxes"] + 20.0} for i, p in perfect.items()}  # IoU < 0.5 for every box
    assert coco_evaluate(shifted, test.label_to_category, shapes / "instances_test.json")["mAP50"] == 0.0
    empty = {i: {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
             for i in truth}
    assert coco_evaluate(empty, test.label_to_category, shapes / "instances_test.json")["detections"] == 0


def test_horizontal_flip_moves_the_boxes():
    from PIL import Image

    image = Image.new("RGB", (40, 20))
    target = {"boxes": torch.tensor([[2.0, 3.0, 10.0, 8.0]]), "labels": torch.tensor([2]), "image_id": 7}
    out_image, out = DetectionTransform("hflip", hflip_prob=1.0)(image, target)
    assert out_image.shape == (3, 20, 40) and out_image.dtype == torch.float32
    assert out["boxes"].tolist() == [[30.0, 3.0, 38.0, 8.0]] and out["labels"].tolist() == [2]
    assert out["image_id"] == 7
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 1}
    _, kept = DetectionTransform("ssd")(image, empty)  # no boxes: the IoU crop is skipped, not an error
    assert kept["boxes"].shape == (0, 4)


# --------------------------------------------------------------------------- export
def test_export_equals_the_detectors_own_decoding(subnet, tmp_path):
    import onnxruntime as ort

    from nas_core.latency.export import export_onnx

    detector = _detector(subnet).eval()
    image = torch.rand(3, 64, 64)
    with torch.no_grad():
        detections = detector([image])[0]
        deployed = SSDLiteExport(detector, 64).eval()
        boxes, scores = deployed(image[None])
    assert scores.shape[-1] == 4 and torch.allclose(scores.sum(-1), torch.ones(1))
    # The detector's best detection is one of the exported (anchor, class) pairs.
    label = int(detections["labels"][0])
    anchor = int(scores[0, :, label].argmax())
    assert float(scores[0, anchor, label]) == pytest.approx(float(detections["scores"][0]), rel=1e-5)
    torch.testing.assert_close(boxes[0, anchor], detections["boxes"][0], rtol=1e-4, atol=1e-3)
    path = export_onnx(deployed, (1, 3, 64, 64), tmp_path / "det.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_boxes, onnx_scores = session.run(None, {"input": image[None].numpy()})
    np.testing.assert_allclose(onnx_boxes, boxes.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(onnx_scores, scores.numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the stage
def test_run_detection_writes_metrics_and_resumes(shapes, tmp_path, quick_timing, monkeypatch):
    # A bare name is also looked up under ./data/finetune: a checkout where the pipeline has run
    # holds a fine-tuned mobilenetv2_100 there, and this test is about the random-init timm model.
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    config = DetectionConfig(resolution=64, epochs=1, batch_size=8, opt="adamw", lr=1e-3, warmup_epochs=0,
                             augment="hflip", devices=("ort_cpu_fp32", "tensorrt_fp32"), timing=quick_timing)
    metrics = run_detection("mobilenetv2_100", shapes, out_root=tmp_path, config=config, progress=False)
    out = tmp_path / "mobilenetv2_100"
    assert read_json(out / "metrics.json")["coco"] == metrics["coco"]
    assert set(metrics["coco"]) >= {"mAP", "mAP50", "mAP75", "detections"}
    assert metrics["export"]["nms_inside"] is False and (out / "model.onnx").exists()
    assert metrics["latency_ms"]["ort_cpu_fp32"]["median_ms"] > 0
    assert "skipped" in metrics["latency_ms"]["tensorrt_fp32"]
    assert metrics["backbone"]["init"] == "random" and metrics["num_classes"] == 4
    assert metrics["params"] > 2e6 and metrics["dataset"]["test_images"] == 6
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    again = run_detection("mobilenetv2_100", shapes, out_root=tmp_path, config=config, progress=False)
    assert (out / "checkpoint.pt").stat().st_mtime_ns == before  # finished run: nothing retrained
    assert again["coco"] == metrics["coco"]


def test_default_dataset_is_generated_once(tmp_path):
    from nas_core.detection import ensure_synthetic_detection

    config = DetectionConfig(synthetic={"num_train": 4, "num_test": 2, "image_size": 32})
    root = ensure_synthetic_detection(tmp_path / "shapes", config)
    stamp = (root / "instances_test.json").stat().st_mtime_ns
    assert len(read_json(root / "instances_train.json")["images"]) == 4
    assert ensure_synthetic_detection(tmp_path / "shapes", config) == root
    assert (root / "instances_test.json").stat().st_mtime_ns == stamp  # same settings: kept, not re-rendered


def _bad_copy(shapes: Path, tmp_path: Path, edit) -> Path:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "images").symlink_to(shapes / "images")
    (root / "instances_test.json").write_text((shapes / "instances_test.json").read_text())
    data = json.loads((shapes / "instances_train.json").read_text())
    edit(data)
    (root / "instances_train.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("problem, edit, message", [
    ("box outside", lambda d: d["annotations"][0].update(bbox=[50, 50, 40, 40]), "lies outside the 64x64 image"),
    ("unknown category", lambda d: d["annotations"][0].update(category_id=99), "unknown category_id 99"),
    ("no boxes at all", lambda d: d.update(annotations=[]), "no image has a box"),
])
def test_bad_datasets_reach_the_cli_user_without_traceback(shapes, tmp_path, capsys, problem, edit, message):
    from flows.cli import main

    root = _bad_copy(shapes, tmp_path, edit)
    rc = main(["detect", "mobilenetv2_100", "--data", str(root), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, problem
    assert message in err and "Traceback" not in err and err.startswith("error: ")


@pytest.mark.realdata
def test_raccoon_trains_and_evaluates(tmp_path, shared_dataset):
    root = shared_dataset("raccoon")
    from nas_core.classifiers import build_timm_classifier

    train, test, paths = detection_datasets(root, augment="ssdlite")
    assert (len(train), len(test), train.num_classes) == (160, 40, 2)
    detector = _detector(build_timm_classifier("mobilenetv2_100", 10), train.num_classes, resolution=128)
    detector.train()
    images, targets = detection_collate([train[i] for i in range(4)])
    assert all(im.shape[0] == 3 for im in images)  # grayscale photos come out RGB
    loss, _ = detection_step(detector, (images, targets), torch.device("cpu"))
    loss.backward()
    subset = torch.utils.data.Subset(test, range(4))
    predictions = predict(detector, subset, batch_size=4)
    assert len(predictions) == 4
    metrics = coco_evaluate(predictions, test.label_to_category, paths["test"])
    assert 0.0 <= metrics["mAP50"] <= 1.0
