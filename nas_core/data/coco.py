"""COCO-JSON detection datasets in torchvision's detection format.

Input: an images folder and a COCO ``instances`` JSON (the layout of
``../shared/datasets/raccoon`` and of ``synthetic.generate_detection``)::

    {"images":      [{"id": int, "file_name": str, "width": int, "height": int}, ...],
     "annotations": [{"id": int, "image_id": int, "category_id": int,
                      "bbox": [x, y, w, h], "iscrowd": 0|1, ...}, ...],
     "categories":  [{"id": int, "name": str}, ...]}

(``width``/``height`` may be omitted; they are then read from the image header.)

``CocoDetectionDataset[i]`` is ``(image, target)`` with ``image`` a float32 tensor
3xHxW in [0, 1] (or whatever the ``transforms`` hook returns) and::

    target = {"boxes":    float32 [N, 4]  xyxy pixel corners,
              "labels":   int64   [N]     contiguous labels 1..K (0 = background),
              "image_id": int}            the COCO image id

Labels: categories sorted by id get labels ``1..K``; label 0 is reserved for background,
as torchvision's detection models expect (``num_classes = K + 1``). Images without
annotations are kept as background examples (``boxes`` of shape [0, 4]). Crowd
annotations (``iscrowd=1``) are validated but left out of the targets, as torchvision's
detection models cannot train on them.

Everything is validated when the dataset is built, with errors naming the image file
and annotation id: missing image files, unknown image or category ids, zero or negative
box sizes, boxes outside the image by more than ``box_tolerance`` pixels (boxes out by
less are clipped: annotation tools often round a pixel past the border).

Predictions go back to COCO with ``write_coco_results`` (the list ``pycocotools``'
``COCO.loadRes`` reads); evaluation itself lives elsewhere.

Folder layouts (:func:`find_coco_folder`)
-----------------------------------------
* **standard COCO** (as downloaded from cocodataset.org)::

      ROOT/annotations/instances_train2017.json   ROOT/train2017/*.jpg
      ROOT/annotations/instances_val2017.json     ROOT/val2017/*.jpg

  (any year or suffix: ``instances_train<S>.json`` pairs with ``instances_val<S>.json`` and
  the image folders ``train<S>/`` and ``val<S>/``, also accepted under ``ROOT/images/``).
  COCO's test split has no public labels, so ``val<S>`` is the held-out split that is
  evaluated, as in every COCO paper;
* **flat**: ``ROOT/images/`` with ``ROOT/instances_train.json`` and
  ``ROOT/instances_test.json`` (``synthetic.generate_detection``, ``../shared/datasets/raccoon``).
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from nas_core.data.folders import ImageLoadError, open_rgb, seed_worker
from nas_core.io import read_json, write_json

BACKGROUND = "__background__"


@dataclass(frozen=True)
class ImageRecord:
    """One validated image: its file, size and (clipped, non-crowd) boxes."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]  # xyxy
    category_ids: tuple[int, ...]


@dataclass(frozen=True)
class CocoInstances:
    """A validated COCO instances file: records plus the category <-> label mapping."""

    records: tuple[ImageRecord, ...]
    categories: tuple[tuple[int, str], ...]  # (category id, name), sorted by id

    @property
    def category_to_label(self) -> dict[int, int]:
        return {cat_id: label for label, (cat_id, _) in enumerate(self.categories, start=1)}

    @property
    def label_to_category(self) -> dict[int, int]:
        return {label: cat_id for label, (cat_id, _) in enumerate(self.categories, start=1)}

    @property
    def label_names(self) -> list[str]:
        """Index ``k`` is label ``k``'s name; index 0 is the background."""
        return [BACKGROUND, *(name for _, name in self.categories)]


def load_coco_instances(images_dir: str | os.PathLike, instances_json: str | os.PathLike,
                        box_tolerance: float = 2.0) -> CocoInstances:
    """Read and validate ``instances_json`` against the files in ``images_dir``."""
    images_dir, instances_json = Path(images_dir), Path(instances_json)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: no such images folder (the COCO file_name entries of "
                                f"{instances_json.name} are resolved against it)")
    data = read_json(instances_json)
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{instances_json}: no {key!r} list; not a COCO instances file")

    categories = _categories(data["categories"], instances_json)
    images = _images(data["images"], images_dir, instances_json)
    known = ", ".join(f"{cid} ({name})" for cid, name in categories)
    boxes: dict[int, list] = {image_id: [] for image_id in images}
    for ann in data.get("annotations", []):
        ann_id = ann.get("id", "?")
        image_id = ann.get("image_id")
        if image_id not in images:
            raise ValueError(f"{instances_json}: annotation {ann_id} refers to unknown image_id {image_id}")
        path, width, height = images[image_id]
        where = f"{instances_json}: image {path.name} (id {image_id}), annotation {ann_id}"
        category_id = ann.get("category_id")
        if category_id not in dict(categories):
            raise ValueError(f"{where}: unknown category_id {category_id}; known categories: {known}")
        box = _checked_box(ann.get("bbox"), width, height, box_tolerance, where)
        if not ann.get("iscrowd", 0):
            boxes[image_id].append((box, category_id))

    records = tuple(
        ImageRecord(image_id, path, width, height,
                    tuple(b for b, _ in boxes[image_id]), tuple(c for _, c in boxes[image_id]))
        for image_id, (path, width, height) in images.items()
    )
    return CocoInstances(records, categories)


def _categories(entries: list, source: Path) -> tuple[tuple[int, str], ...]:
    ids = [c.get("id") for c in entries]
    if not entries or any(not isinstance(i, int) for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{source}: 'categories' must list unique integer ids, got {ids}")
    return tuple(sorted((c["id"], str(c.get("name", c["id"]))) for c in entries))


def _images(entries: list, images_dir: Path, source: Path) -> dict[int, tuple[Path, int, int]]:
    """``{image_id: (path, width, height)}``; raises listing every missing file."""
    images, missing = {}, []
    for entry in entries:
        image_id, file_name = entry.get("id"), entry.get("file_name")
        if image_id is None or not file_name:
            raise ValueError(f"{source}: image entry without 'id' or 'file_name': {entry}")
        if image_id in images:
            raise ValueError(f"{source}: duplicate image id {image_id} ({file_name})")
        path = images_dir / file_name
        if not path.is_file():
            missing.append(str(path))
            continue
        width, height = entry.get("width"), entry.get("height")
        if not width or not height:
            width, height = _header_size(path)
        images[image_id] = (path, int(width), int(height))
    if missing:
        shown = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{source}: {len(missing)} image file(s) listed but not found:\n  {shown}")
    return images


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as err:
        raise ImageLoadError(f"{path}: cannot read image header ({type(err).__name__}: {err})") from err


def _checked_box(bbox: Any, width: int, height: int, tolerance: float, where: str) -> tuple[float, ...]:
    """COCO ``[x, y, w, h]`` -> xyxy clipped to the image; raises for bad boxes."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
        raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: zero or negative box size, bbox {bbox} (w={w}, h={h})")
    x0, y0, x1, y1 = x, y, x + w, y + h
    if x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
        raise ValueError(f"{where}: bbox {bbox} (xyxy [{x0:g}, {y0:g}, {x1:g}, {y1:g}]) lies outside the "
                         f"{width}x{height} image by more than {tolerance:g} px")
    clipped = (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
               min(max(x1, 0.0), width), min(max(y1, 0.0), height))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f"{where}: bbox {bbox} has no area inside the {width}x{height} image")
    return clipped


LAYOUT_HELP = ("a detection dataset folder is either standard COCO (annotations/instances_train2017.json + "
               "train2017/, annotations/instances_val2017.json + val2017/) or flat (images/, instances_train.json, "
               "instances_test.json)")


@dataclass(frozen=True)
class CocoFolder:
    """Where a detection folder keeps its training and held-out annotations and images."""

    root: Path
    layout: str            # "coco" | "flat"
    train_images: Path
    train_json: Path
    test_images: Path
    test_json: Path

    def describe(self) -> dict[str, str]:
        return {"root": str(self.root), "layout": self.layout, "train": str(self.train_json),
                "test": str(self.test_json), "train_images": str(self.train_images),
                "test_images": str(self.test_images)}


def find_coco_folder(root: str | os.PathLike) -> CocoFolder:
    """The layout of the detection folder ``root`` (module docstring); a FileNotFoundError
    saying what is expected and what was found otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such detection dataset folder; {LAYOUT_HELP}")
    flat = [root / "instances_train.json", root / "instances_test.json"]
    if any(p.exists() for p in flat):
        missing = [str(p) for p in flat if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: no such file; {LAYOUT_HELP}")
        return CocoFolder(root, "flat", root / "images", flat[0], root / "images", flat[1])
    annotations = root / "annotations"
    for train_json in sorted(annotations.glob("instances_train*.json"), reverse=True):  # newest year first
        suffix = train_json.name.removeprefix("instances_train").removesuffix(".json")
        test_json = annotations / f"instances_val{suffix}.json"
        if not test_json.exists():
            raise FileNotFoundError(f"{test_json}: no such file (the held-out split paired with {train_json.name}); "
                                    f"{LAYOUT_HELP}")
        return CocoFolder(root, "coco", _image_folder(root, f"train{suffix}"), train_json,
                          _image_folder(root, f"val{suffix}"), test_json)
    found = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:12]) or "nothing"
    raise FileNotFoundError(f"{root}: not a detection dataset folder ({LAYOUT_HELP}); found: {found}")


def _image_folder(root: Path, name: str) -> Path:
    for candidate in (root / name, root / "images" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{root / name}: no such image folder (nor {root / 'images' / name}); {LAYOUT_HELP}")


class CocoDetectionDataset(Dataset):
    """``(image, target)`` pairs of a COCO instances file (formats in the module docstring).

    ``transforms(image: PIL.Image RGB, target) -> (image, target)`` replaces the default
    conversion to a float tensor in [0, 1]; use it for resizing/augmentation (and keep the
    boxes in step with the image).
    """

    def __init__(self, images_dir: str | os.PathLike, instances_json: str | os.PathLike,
                 transforms: Callable | None = None, box_tolerance: float = 2.0):
        self.instances = load_coco_instances(images_dir, instances_json, box_tolerance)
        self.transforms = transforms

    @property
    def records(self) -> tuple[ImageRecord, ...]:
        return self.instances.records

    def without_images(self, paths) -> None:
        """Leave out the records of these image files (unreadable ones, ``skip_bad_images``)."""
        dropped = {str(p) for p in paths}
        self.instances = dataclasses.replace(
            self.instances, records=tuple(r for r in self.records if str(r.path) not in dropped))

    @property
    def num_classes(self) -> int:
        """Number of categories + 1 (background), the detector's ``num_classes``."""
        return len(self.instances.categories) + 1

    @property
    def category_to_label(self) -> dict[int, int]:
        return self.instances.category_to_label

    @property
    def label_to_category(self) -> dict[int, int]:
        return self.instances.label_to_category

    @property
    def label_names(self) -> list[str]:
        return self.instances.label_names

    def __len__(self) -> int:
        return len(self.records)

    def target(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        to_label = self.category_to_label
        return {
            "boxes": torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([to_label[c] for c in record.category_ids], dtype=torch.int64),
            "image_id": record.image_id,
        }

    def load_image(self, index: int) -> Image.Image:
        """RGB PIL image; no EXIF rotation, since COCO boxes refer to the stored pixels."""
        record = self.records[index]
        image = open_rgb(record.path, exif_transpose=False)
        if image.size != (record.width, record.height):
            raise ValueError(f"{record.path}: image is {image.size[0]}x{image.size[1]} but the annotations "
                             f"say {record.width}x{record.height}; boxes would be misplaced")
        return image

    def __getitem__(self, index: int):
        image, target = self.load_image(index), self.target(index)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image_to_tensor(image), target


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor 3xHxW in [0, 1] (without importing torchvision)."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    return pixels.permute(2, 0, 1).float().div_(255.0)


def detection_collate(batch: list) -> tuple[list, list]:
    """Detection images differ in size and box count: batch as ``(images, targets)`` lists."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def build_detection_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0,
                           seed: int = 0) -> DataLoader:
    """DataLoader of ``(list of images, list of targets)``; shuffled by a seeded generator if ``train``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator,
                      collate_fn=detection_collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0, worker_init_fn=seed_worker if num_workers > 0 else None)


def to_coco_results(predictions: Mapping[int, Mapping] | Iterable[tuple[int, Mapping]],
                    label_to_category: Mapping[int, int]) -> list[dict]:
    """Detector outputs -> COCO result list ``[{image_id, category_id, bbox: [x, y, w, h], score}]``.

    ``predictions`` maps COCO image id -> torchvision output ``{"boxes": [N, 4] xyxy,
    "scores": [N], "labels": [N]}`` (a dict, or an iterable of ``(image_id, output)``).
    Labels are mapped back to category ids with ``label_to_category``.
    """
    items = predictions.items() if isinstance(predictions, Mapping) else predictions
    results = []
    for image_id, output in items:
        boxes = torch.as_tensor(output["boxes"], dtype=torch.float32).reshape(-1, 4).tolist()
        scores = torch.as_tensor(output["scores"]).reshape(-1).tolist()
        labels = torch.as_tensor(output["labels"]).reshape(-1).tolist()
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
            if label not in label_to_category:
                raise ValueError(f"image {image_id}: predicted label {label} has no category "
                                 f"(known labels: {sorted(label_to_category)}; 0 is background)")
            results.append({"image_id": int(image_id), "category_id": int(label_to_category[label]),
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(float(score), 5)})
    return results


def write_coco_results(path: str | os.PathLike, predictions, label_to_category: Mapping[int, int]) -> Path:
    """Write ``to_coco_results(...)`` atomically as JSON, ready for ``COCO.loadRes(path)``.

    (``loadRes`` rejects an empty list: with no detections at all, skip evaluation.)
    """
    return write_json(path, to_coco_results(predictions, label_to_category))
