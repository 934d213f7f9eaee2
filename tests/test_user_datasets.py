"""Datasets as users keep them: the standard COCO layout, and image folders with bad files.

A truncated JPEG or a non-image file among the training images is found before anything
trains (one error naming every such file), or left out and recorded with
``skip_bad_images``; the check is cached by file size and mtime.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from nas_core.data import folders
from nas_core.data.coco import find_coco_folder
from nas_core.data.folders import BadImagesError, find_unreadable_images, load_checked_manifest
from nas_core.detection import detection_datasets
from nas_core.io import read_json

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _save_jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), (value, 255 - value, 64)).save(path, quality=90)


@pytest.fixture
def folder_with_bad_files(tmp_path) -> Path:
    """Two classes of 8 JPEGs; ``b/003.jpg`` cut in half, ``a/notes.jpg`` a text file."""
    root = tmp_path / "photos"
    for name in ("a", "b"):
        for i in range(8):
            _save_jpeg(root / name / f"{i:03d}.jpg", 20 * i)
    truncated = root / "b" / "003.jpg"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / "a" / "notes.jpg").write_text("shopping list, not a photo")
    return root


def test_bad_files_are_named_in_one_error_before_training(folder_with_bad_files):
    with pytest.raises(BadImagesError) as caught:
        load_checked_manifest(folder_with_bad_files)
    message = str(caught.value)
    assert "2 unreadable image(s) of 17" in message
    assert "b/003.jpg" in message and "truncated" in message.lower()
    assert "a/notes.jpg" in message and "skip_bad_images" in message
    assert sorted(caught.value.bad) == ["a/notes.jpg", "b/003.jpg"]


def test_transfer_command_refuses_the_folder_before_training(folder_with_bad_files, tmp_path, capsys):
    from flows.cli import main

    rc = main(["transfer", "mobilenetv2_100", "--data", str(folder_with_bad_files), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "b/003.jpg" in err and "a/notes.jpg" in err
    assert not (tmp_path / "out").exists()  # nothing trained, no checkpoint to resume into the same crash


def test_skip_bad_images_trains_without_them_and_records_them(folder_with_bad_files):
    manifest = load_checked_manifest(folder_with_bad_files, skip_bad_images=True)
    assert len(manifest) == 15
    assert not manifest["path"].isin(["b/003.jpg", "a/notes.jpg"]).any()
    assert set(manifest.attrs["skipped_images"]) == {"b/003.jpg", "a/notes.jpg"}
    assert "truncated" in manifest.attrs["skipped_images"]["b/003.jpg"].lower()


def test_the_check_is_cached_by_size_and_mtime(folder_with_bad_files, tmp_path, monkeypatch):
    paths = sorted(str(p) for p in folder_with_bad_files.rglob("*.jpg"))
    decoded: list[str] = []
    real = folders.image_error
    monkeypatch.setattr(folders, "image_error", lambda p: decoded.append(p) or real(p))
    cache = tmp_path / "check.parquet"
    first = find_unreadable_images(paths, workers=0, cache_file=cache)
    assert len(decoded) == 17 and len(first) == 2
    decoded.clear()
    assert find_unreadable_images(paths, workers=0, cache_file=cache) == first
    assert decoded == []  # nothing decoded again
    fixed = folder_with_bad_files / "b" / "003.jpg"
    _save_jpeg(fixed, 7)
    os.utime(fixed, ns=(fixed.stat().st_atime_ns, fixed.stat().st_mtime_ns + 10**9))
    again = find_unreadable_images(paths, workers=0, cache_file=cache)
    assert decoded == [str(fixed)] and list(again) == [str(folder_with_bad_files / "a" / "notes.jpg")]


def test_parallel_check_finds_the_same_files(folder_with_bad_files):
    many = sorted(str(p) for p in folder_with_bad_files.rglob("*.jpg")) * 5  # > 64 paths: the process pool
    bad = find_unreadable_images(many, workers=2)
    assert sorted(Path(p).name for p in bad) == ["003.jpg", "notes.jpg"]


# --------------------------------------------------------------------------- COCO layouts
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from nas_core.data.synthetic import generate_detection

    root = tmp_path_factory.mktemp("det") / "shapes"
    generate_detection(root, seed=1, num_train=16, num_test=6, image_size=64, workers=1)
    return root


def as_standard_coco(flat: Path, root: Path, year: str = "2017") -> Path:
    """The flat shapes dataset rearranged as COCO is downloaded: annotations/ + train<Y>/ + val<Y>/."""
    (root / "annotations").mkdir(parents=True)
    for split, coco_split in (("train", "train"), ("test", "val")):
        data = read_json(flat / f"instances_{split}.json")
        (root / f"{coco_split}{year}").mkdir()
        for image in data["images"]:
            name = Path(image["file_name"]).name
            shutil.copy(flat / "images" / image["file_name"], root / f"{coco_split}{year}" / name)
            image["file_name"] = name
        (root / "annotations" / f"instances_{coco_split}{year}.json").write_text(json.dumps(data))
    return root


def test_standard_coco_layout_is_found(shapes, tmp_path):
    root = as_standard_coco(shapes, tmp_path / "coco")
    folder = find_coco_folder(root)
    assert folder.layout == "coco"
    assert (folder.train_json.name, folder.test_json.name) == ("instances_train2017.json", "instances_val2017.json")
    assert (folder.train_images, folder.test_images) == (root / "train2017", root / "val2017")
    train, test, _ = detection_datasets(root)
    assert (len(train), len(test), train.num_classes) == (16, 6, 4)
    assert find_coco_folder(shapes).layout == "flat"


def test_a_folder_of_neither_layout_says_what_is_expected(shapes, tmp_path):
    root = as_standard_coco(shapes, tmp_path / "coco")
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances_val2017.json: no such file"):
        find_coco_folder(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"standard COCO \(annotations/instances_train2017.json"):
        find_coco_folder(tmp_path / "empty")


def test_unreadable_detection_images_are_listed_or_skipped(shapes, tmp_path):
    root = as_standard_coco(shapes, tmp_path / "coco")
    broken = sorted((root / "train2017").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(BadImagesError, match=broken.name):
        detection_datasets(root)
    train, test, paths = detection_datasets(root, skip_bad_images=True)
    assert len(train) == 15 and len(test) == 6 and list(paths["skipped_images"]) == [str(broken)]


def test_detect_command_trains_on_a_standard_coco_folder(shapes, tmp_path, capsys, quick_timing, monkeypatch):
    root = as_standard_coco(shapes, tmp_path / "coco")
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["detection"].update(resolution=64, epochs=1, batch_size=8, devices=["ort_cpu_fp32"], timing=quick_timing)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    from flows.cli import main

    out = tmp_path / "out"
    assert main(["detect", "mobilenetv2_100", "--data", str(root), "--out", str(out), "--params", str(params_file),
                 "--name", "mnv2"]) == 0
    printed = capsys.readouterr().out
    assert "mnv2: mAP " in printed and "6 test images" in printed
    metrics = read_json(out / "mnv2" / "metrics.json")
    assert metrics["dataset"]["layout"] == "coco" and metrics["dataset"]["test_images"] == 6
    assert 0.0 <= metrics["coco"]["mAP"] <= 1.0 and metrics["coco"]["detections"] > 0
