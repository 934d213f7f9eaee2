"""The data layer: generator determinism, manifests, loaders, bad-data errors, COCO detection."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from nas_core.data import coco, folders, synthetic
from nas_core.data.coco import CocoDetectionDataset, detection_collate, to_coco_results, write_coco_results
from nas_core.data.folders import ImageLoadError, build_loader, build_manifest, load_manifest, verify_images
from nas_core.io import file_sha256, read_json, read_provenance

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

SMALL = dict(num_classes=4, train_per_class=6, val_per_class=2, test_per_class=2, image_size=32, workers=1)


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every image under ``root`` (the manifest's metadata holds a code version)."""
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synthetic") / "ds"
    return root, synthetic.generate_classification(root, seed=0, **SMALL)


def save_rgb(path: Path, size=(24, 24), value: int = 128, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = np.full((size[1], size[0], channels), value, np.uint8).squeeze()
    Image.fromarray(arr, mode).save(path)
    return path


def make_class_folders(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        for i in range(count):
            save_rgb(root / name / f"{i:03d}.png", value=10 * i % 255)
    return root


# --------------------------------------------------------------------------- generator


def test_generator_same_seed_identical_different_seed_differs(tmp_path):
    a = synthetic.generate_classification(tmp_path / "a", seed=3, **{**SMALL, "workers": 1})
    b = synthetic.generate_classification(tmp_path / "b", seed=3, **{**SMALL, "workers": 2})
    c = synthetic.generate_classification(tmp_path / "c", seed=4, **SMALL)
    hashes_a, hashes_b, hashes_c = (tree_hashes(tmp_path / n) for n in "abc")
    assert len(hashes_a) == 4 * (6 + 2 + 2)
    assert hashes_a == hashes_b  # byte-identical, whatever the worker count
    assert a.equals(b)
    assert hashes_a.keys() == hashes_c.keys()
    assert sum(hashes_a[k] != hashes_c[k] for k in hashes_a) == len(hashes_a)


def test_manifest_schema_and_split_sizes(small_dataset):
    root, manifest = small_dataset
    assert list(manifest.columns) == list(folders.MANIFEST_COLUMNS)
    assert manifest["label"].dtype == np.int64
    assert manifest.groupby("split").size().to_dict() == {"train": 24, "val": 8, "test": 8}
    per_class = manifest.groupby(["split", "label"]).size().unstack()
    assert per_class.loc["train"].tolist() == [6] * 4 and per_class.loc["val"].tolist() == [2] * 4
    assert folders.class_names(manifest) == synthetic.class_names(4) == sorted(synthetic.class_names(4))
    assert all((root / p).is_file() for p in manifest["path"])
    stored = pd.read_parquet(root / "manifest.parquet")
    assert stored.equals(manifest)
    provenance = read_provenance(root / "manifest.parquet")
    assert provenance == synthetic.classification_params(seed=0, **{k: v for k, v in SMALL.items() if k != "workers"})
    with Image.open(root / manifest["path"][0]) as img:
        assert img.size == (32, 32) and img.mode == "RGB"


def test_generator_reuses_matching_dataset_and_refuses_to_clobber(tmp_path):
    root = tmp_path / "ds"
    synthetic.generate_classification(root, seed=0, **SMALL)
    stamp = (root / "manifest.parquet").stat().st_mtime_ns
    synthetic.generate_classification(root, seed=0, **SMALL)  # same params: reused, not rendered
    assert (root / "manifest.parquet").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="overwrite=True"):
        synthetic.generate_classification(root, seed=1, **SMALL)
    synthetic.generate_classification(root, seed=1, overwrite=True, **SMALL)
    assert read_provenance(root / "manifest.parquet")["seed"] == 1
    assert not list(tmp_path.glob(".ds.*"))  # no staging folder left behind


def test_classes_are_not_separable_by_mean_colour(tmp_path):
    """Mean image colour per class is about the same (the class is in the shapes)."""
    manifest = synthetic.generate_classification(tmp_path / "ds", seed=0, num_classes=4, train_per_class=40,
                                                 val_per_class=1, test_per_class=1, image_size=32)
    train = manifest[manifest["split"] == "train"]
    means = np.stack([np.asarray(Image.open(tmp_path / "ds" / p), np.float32).mean((0, 1)) for p in train["path"]])
    class_means = pd.DataFrame(means).groupby(train["label"].to_numpy()).mean().to_numpy()
    spread_between = class_means.std(0).mean()
    spread_within = means.std(0).mean()
    assert spread_between < 0.25 * spread_within


def test_build_manifest_reads_the_generated_imagenet_layout(small_dataset):
    root, manifest = small_dataset
    assert folders.detect_layout(root) == "imagenet"
    rebuilt = build_manifest(root)
    key = ["split", "path"]
    assert rebuilt.sort_values(key).reset_index(drop=True).equals(manifest.sort_values(key).reset_index(drop=True))
    assert load_manifest(root).equals(manifest)  # shipped manifest.parquet preferred


def test_generator_without_test_split_leaves_no_empty_folders(tmp_path):
    manifest = synthetic.generate_classification(tmp_path / "ds", **{**SMALL, "test_per_class": 0})
    assert set(manifest["split"]) == {"train", "val"} and not (tmp_path / "ds" / "test").exists()
    assert len(build_manifest(tmp_path / "ds")) == len(manifest)


def test_generate_detection_writes_valid_coco(tmp_path):
    paths = synthetic.generate_detection(tmp_path / "det", seed=0, num_train=16, num_test=4, image_size=64,
                                         background_fraction=0.3, workers=1)
    again = synthetic.generate_detection(tmp_path / "det2", seed=0, num_train=16, num_test=4, image_size=64,
                                         background_fraction=0.3, workers=1)
    assert read_json(paths["train"]) == read_json(again["train"])
    assert tree_hashes(paths["images"]) == tree_hashes(again["images"])
    train = read_json(paths["train"])
    assert [c["id"] for c in train["categories"]] == [1, 2, 3]
    assert len(train["images"]) == 16 and train["info"]["seed"] == 0
    dataset = CocoDetectionDataset(paths["images"], paths["train"])
    counts = [len(r.boxes) for r in dataset.records]
    assert 0 in counts and max(counts) >= 2  # background images and multi-object images
    image, target = dataset[counts.index(max(counts))]
    assert image.shape == (3, 64, 64)
    assert ((target["boxes"][:, 2:] > target["boxes"][:, :2]).all() and (target["boxes"] >= 0).all()
            and (target["boxes"] <= 64).all())
    test_ids = {img["id"] for img in read_json(paths["test"])["images"]}
    assert not test_ids & {img["id"] for img in train["images"]}


# --------------------------------------------------------------------------- folders and loaders


def test_loaders_yield_normalised_batches_of_the_right_shape(small_dataset):
    root, manifest = small_dataset
    train = build_loader(manifest, root, "train", resolution=48, batch_size=5, train=True, seed=0)
    images, labels = next(iter(train))
    assert images.shape == (5, 3, 48, 48) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= set(range(4))
    assert len(train) == 24 // 5  # drop_last for training
    evaluation = build_loader(manifest, root, "val", resolution=32, batch_size=3, train=False)
    batches = list(evaluation)
    assert sum(len(b[1]) for b in batches) == 8
    expected = manifest[manifest["split"] == "val"]["label"].tolist()
    assert torch.cat([b[1] for b in batches]).tolist() == expected  # manifest order
    assert images.mean().abs() < 1.5  # ImageNet-normalised, not raw 0..255


def test_train_loader_order_is_seeded(small_dataset):
    root, manifest = small_dataset

    def batch_order(seed: int) -> list[list[int]]:
        loader = build_loader(manifest, root, "train", 32, batch_size=4, train=True, seed=seed)
        return [list(batch) for batch in loader.batch_sampler]

    assert batch_order(0) == batch_order(0)
    assert batch_order(0) != batch_order(1)
    cached = build_loader(manifest, root, "train", 32, batch_size=4, train=True, seed=0, cache=True)
    labels_a = [labels.tolist() for _, labels in cached]
    labels_b = [labels.tolist() for _, labels in build_loader(manifest, root, "train", 32, 4, True, seed=0)]
    assert labels_a == labels_b and len(cached.dataset.cache) == 24


def test_workers_forked_from_a_prefect_process_exit_cleanly(prefect_harness):
    """After a flow ran in this process, Prefect's services have thread-exit hooks that
    fail in a forked child: ``seed_worker`` drops them, so workers exit with code 0."""
    from prefect import flow
    from torch.utils.data import DataLoader, TensorDataset

    @flow
    def noop() -> int:
        return 1

    assert noop() == 1  # starts Prefect's log and events services here
    loader = DataLoader(TensorDataset(torch.arange(32.0)), batch_size=4, num_workers=1,
                        worker_init_fn=folders.seed_worker)
    batches = iter(loader)
    first, = next(batches)
    workers = list(batches._workers)
    batches._shutdown_workers()  # what an epoch's early `break` leads to
    assert first.tolist() == [0.0, 1.0, 2.0, 3.0] and [w.exitcode for w in workers] == [0]


def test_class_folder_split_is_stratified_and_seeded(tmp_path):
    root = make_class_folders(tmp_path / "flat", {"cat": 20, "dog": 20, "emu": 10})
    (root / "LICENSE").write_text("files beside the class folders are ignored")
    manifest = build_manifest(root, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert folders.detect_layout(root) == "class_folders"
    sizes = manifest.groupby(["class_name", "split"]).size().unstack()
    assert sizes.loc["cat"].to_dict() == {"test": 2, "train": 14, "val": 4}
    assert sizes.loc["emu"].to_dict() == {"test": 1, "train": 7, "val": 2}
    assert manifest["path"].is_unique and len(manifest) == 50
    assert build_manifest(root, val_fraction=0.2, test_fraction=0.1, seed=0).equals(manifest)
    other = build_manifest(root, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert not other["split"].equals(manifest["split"])
    assert manifest.attrs["provenance"]["layout"] == "class_folders"
    with pytest.raises(ValueError, match="too few"):
        build_manifest(make_class_folders(tmp_path / "tiny", {"a": 2}), val_fraction=0.3, test_fraction=0.3)


def test_imagenet_layout_without_val_holds_out_part_of_train(tmp_path):
    make_class_folders(tmp_path / "inet" / "train", {"a": 10, "b": 10})
    manifest = build_manifest(tmp_path / "inet", val_fraction=0.3)
    assert manifest.groupby("split").size().to_dict() == {"train": 14, "val": 6}


def test_write_manifest_round_trips_with_provenance(tmp_path):
    root = make_class_folders(tmp_path / "flat", {"a": 5, "b": 5})
    manifest = build_manifest(root, val_fraction=0.2, test_fraction=0.2, seed=7)
    folders.write_manifest(tmp_path / "m.parquet", manifest)
    assert pd.read_parquet(tmp_path / "m.parquet").equals(manifest)
    assert read_provenance(tmp_path / "m.parquet")["seed"] == 7


# --------------------------------------------------------------------------- bad classification data


def test_corrupt_image_error_names_the_file_when_loaded(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"a": 4, "b": 4})
    corrupt = root / "b" / "002.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    manifest = build_manifest(root, val_fraction=0.0, test_fraction=0.0)  # manifest time: fine
    loader = build_loader(manifest, root, "train", 16, batch_size=9, train=False)
    with pytest.raises(ImageLoadError, match=r"b/002\.jpg"):
        next(iter(loader))
    with pytest.raises(ImageLoadError, match=r"(?s)1 unreadable image.*b/002\.jpg"):
        verify_images(manifest, root)


def test_missing_image_error_names_the_file(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"a": 3, "b": 3})
    manifest = build_manifest(root, val_fraction=0.0, test_fraction=0.0)
    (root / "a" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"a/001\.png"):
        list(build_loader(manifest, root, "train", 16, 6, train=False))


def test_empty_class_folder_is_named_at_manifest_time(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"a": 3})
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"ds/b: empty class folder"):
        build_manifest(root)
    make_class_folders(tmp_path / "inet" / "train", {"a": 3})
    (tmp_path / "inet" / "val" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"val/a: empty class folder"):
        build_manifest(tmp_path / "inet")


def test_wrong_root_says_which_layout_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such dataset folder.*expected.*ImageNet layout"):
        build_manifest(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="expected"):
        build_manifest(tmp_path / "file.txt")


def test_folder_without_class_subfolders_is_rejected(tmp_path):
    save_rgb(tmp_path / "loose" / "img.png")
    with pytest.raises(ValueError, match=r"loose: no class subfolders.*one folder per class"):
        build_manifest(tmp_path / "loose")


def test_val_class_unknown_to_train_is_rejected(tmp_path):
    make_class_folders(tmp_path / "inet" / "train", {"a": 2})
    make_class_folders(tmp_path / "inet" / "val", {"a": 1, "zebra": 1})
    with pytest.raises(ValueError, match=r"val/zebra: class 'zebra' is not among the training classes"):
        build_manifest(tmp_path / "inet")


def test_grayscale_and_rgba_images_come_out_as_three_channels(tmp_path):
    root = tmp_path / "ds"
    save_rgb(root / "gray" / "g.png", mode="L", size=(20, 30))
    save_rgb(root / "gray" / "g2.jpg", mode="L")
    save_rgb(root / "rgba" / "r.png", mode="RGBA")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").convert("P").save(root / "rgba" / "p.png")
    manifest = build_manifest(root, val_fraction=0.0, test_fraction=0.0)
    for train in (True, False):
        images, _ = next(iter(build_loader(manifest, root, "train", 16, 4, train=train, drop_last=False)))
        assert images.shape == (4, 3, 16, 16)


def test_manifest_schema_is_checked(small_dataset):
    root, manifest = small_dataset
    with pytest.raises(ValueError, match="missing columns"):
        build_loader(manifest.drop(columns="class_name"), root, "train", 32, 4, True)
    with pytest.raises(ValueError, match="no rows for split 'holdout'"):
        build_loader(manifest, root, "holdout", 32, 4, True)
    swapped = manifest.copy()
    swapped.loc[0, "label"] = 3
    with pytest.raises(ValueError, match="one-to-one"):
        folders.validate_manifest(swapped)


# --------------------------------------------------------------------------- COCO detection


def write_coco(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None,
               categories: list[dict] | None = None) -> tuple[Path, Path]:
    images_dir = tmp_path / "images"
    save_rgb(images_dir / "a.jpg", size=(100, 80))
    save_rgb(images_dir / "gray.png", size=(50, 40), mode="L")
    images = images if images is not None else [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "gray.png", "width": 50, "height": 40},
    ]
    categories = categories if categories is not None else [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return images_dir, path


def ann(ann_id: int, image_id: int, bbox: list[float], category_id: int = 3, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": 0, **extra}


def test_coco_targets_labels_and_background_images(tmp_path):
    images_dir, path = write_coco(tmp_path, [
        ann(10, 1, [10, 5, 30, 20], 7),
        ann(11, 1, [-1.5, 60, 20, 21.5], 3),  # 1.5 px outside on two sides: clipped
        ann(12, 1, [40, 40, 10, 10], 3, iscrowd=1),  # crowd: validated, not a target
    ])
    dataset = CocoDetectionDataset(images_dir, path)
    assert dataset.num_classes == 3 and dataset.category_to_label == {3: 1, 7: 2}
    assert dataset.label_names == ["__background__", "cat", "dog"]
    image, target = dataset[0]
    assert image.shape == (3, 80, 100) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["image_id"] == 1
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[10, 5, 40, 25], [0, 60, 18.5, 80]]
    gray, background = dataset[1]  # grayscale, no annotations: background example
    assert gray.shape == (3, 40, 50)
    assert background["boxes"].shape == (0, 4) and background["labels"].shape == (0,)
    images, targets = detection_collate([dataset[0], dataset[1]])
    assert len(images) == 2 and targets[1]["image_id"] == 2
    loader = coco.build_detection_loader(dataset, batch_size=2, train=True, seed=0)
    assert [t["image_id"] for t in next(iter(loader))[1]] in ([1, 2], [2, 1])


def test_coco_box_outside_image_names_file_and_annotation(tmp_path):
    images_dir, path = write_coco(tmp_path, [ann(10, 1, [10, 5, 30, 20]), ann(42, 2, [30, 10, 25, 10])])
    with pytest.raises(ValueError, match=r"image gray\.png \(id 2\), annotation 42: bbox .* outside the 50x40"):
        CocoDetectionDataset(images_dir, path)


def test_coco_zero_size_box_is_rejected(tmp_path):
    images_dir, path = write_coco(tmp_path, [ann(5, 1, [10, 5, 0, 20])])
    with pytest.raises(ValueError, match=r"a\.jpg .*annotation 5: zero or negative box size"):
        CocoDetectionDataset(images_dir, path)


def test_coco_unknown_category_lists_the_known_ones(tmp_path):
    images_dir, path = write_coco(tmp_path, [ann(8, 1, [1, 1, 5, 5], category_id=99)])
    with pytest.raises(ValueError, match=r"annotation 8: unknown category_id 99; known categories: 3 \(cat\), 7 \(dog\)"):
        CocoDetectionDataset(images_dir, path)


def test_coco_missing_image_file_is_named(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
              {"id": 5, "file_name": "gone.jpg", "width": 10, "height": 10}]
    images_dir, path = write_coco(tmp_path, [], images=images)
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) listed but not found:\n.*gone\.jpg"):
        CocoDetectionDataset(images_dir, path)


def test_coco_size_mismatch_and_unknown_image_are_reported(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 90, "height": 80}]
    images_dir, path = write_coco(tmp_path, [], images=images)
    with pytest.raises(ValueError, match=r"a\.jpg: image is 100x80 but the annotations say 90x80"):
        CocoDetectionDataset(images_dir, path)[0]
    images_dir, path = write_coco(tmp_path, [ann(3, 9, [1, 1, 2, 2])])
    with pytest.raises(ValueError, match="annotation 3 refers to unknown image_id 9"):
        CocoDetectionDataset(images_dir, path)


def test_coco_results_round_trip_through_pycocotools(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images_dir, path = write_coco(tmp_path, [ann(1, 1, [10, 5, 30, 20], 7), ann(2, 1, [50, 40, 20, 30], 3),
                                             ann(3, 2, [5, 5, 20, 20], 3)], )
    dataset = CocoDetectionDataset(images_dir, path)
    # Perfect predictions: the ground truth itself, with scores.
    predictions = {}
    for i in range(len(dataset)):
        target = dataset.target(i)
        predictions[target["image_id"]] = {**target, "scores": torch.ones(len(target["labels"]))}
    results = to_coco_results(predictions, dataset.label_to_category)
    assert results[0] == {"image_id": 1, "category_id": 7, "bbox": [10.0, 5.0, 30.0, 20.0], "score": 1.0}
    with pytest.raises(ValueError, match="label 0 has no category"):
        to_coco_results({1: {"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [0]}}, dataset.label_to_category)
    out = write_coco_results(tmp_path / "results.json", predictions, dataset.label_to_category)
    gt = COCO(str(path))
    evaluator = COCOeval(gt, gt.loadRes(str(out)), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


# --------------------------------------------------------------------------- real data (opt-in by presence)


def require_shared(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real dataset {path} is absent (it lives beside the project in ../shared/datasets)")
    return path


@pytest.mark.realdata
def test_sign_digits_manifest_and_loader():
    root = require_shared("sign-digits")
    manifest = build_manifest(root, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert len(manifest) == 2062 and folders.class_names(manifest) == [str(d) for d in range(10)]
    shares = manifest.groupby("class_name")["split"].value_counts(normalize=True).unstack()
    assert shares["val"].between(0.13, 0.17).all() and shares["test"].between(0.13, 0.17).all()
    # A handful of images including the 3024x3024 ones, through both transforms.
    large = manifest["path"].str.contains("IMG_5874|IMG_5978|IMG_5935")
    subset = pd.concat([manifest[large], manifest[~large].iloc[::500]]).assign(split="train")
    for train in (True, False):
        images, labels = next(iter(build_loader(subset, root, "train", 64, batch_size=len(subset),
                                                train=train, drop_last=False)))
        assert images.shape == (len(subset), 3, 64, 64) and labels.max() <= 9


@pytest.mark.realdata
def test_raccoon_coco_dataset():
    root = require_shared("raccoon")
    train = CocoDetectionDataset(root / "images", root / "instances_train.json")
    test = CocoDetectionDataset(root / "images", root / "instances_test.json")
    assert (len(train), len(test)) == (160, 40)
    assert sum(len(r.boxes) for r in train.records) == 173 and sum(len(r.boxes) for r in test.records) == 44
    assert train.label_names == ["__background__", "raccoon"]
    gray = [i for i, r in enumerate(train.records + test.records) if r.path.name in
            {"raccoon-150.jpg", "raccoon-152.jpg", "raccoon-161.jpg"}]
    both = list(train.records) + list(test.records)
    for index in gray:
        dataset, local = (train, index) if index < len(train) else (test, index - len(train))
        image, target = dataset[local]
        assert image.shape[0] == 3 and image.shape[1:] == (both[index].height, both[index].width)
        assert (target["boxes"][:, 2] <= both[index].width).all()
