"""Procedurally generated image datasets: the project's default data.

No image dataset can be downloaded here, so the pipeline renders its own. Two generators:

``generate_classification(out, ...)``
    An ImageNet-layout folder, ``<out>/{train,val,test}/<class_name>/<i>.png``, plus
    ``<out>/manifest.parquet`` (schema: :data:`nas_core.data.folders.MANIFEST_COLUMNS`):

    ============  ======  =====================================================
    column        type    meaning
    ============  ======  =====================================================
    path          str     image path relative to ``out`` (POSIX separators)
    label         int64   class index, ``0..num_classes-1`` (= sorted folder order)
    class_name    str     folder name, e.g. ``"05_star_striped"``
    split         str     ``train`` | ``val`` | ``test``
    ============  ======  =====================================================

    The Parquet provenance (``nas_core.io.read_provenance``) holds the generator
    parameters and the seed. Splits: ``train`` trains the supernet; ``val`` is held out
    from supernet training and ranks inherited subnets; ``test`` is for final reporting.

``generate_detection(out, ...)``
    ``<out>/images/*.png`` with COCO JSON ``<out>/instances_train.json`` and
    ``<out>/instances_test.json`` (the layout of ``../shared/datasets/raccoon``); the
    generator parameters are in each JSON's ``info`` entry.

What a class is. Every classification image has one *main object* and 0-2 smaller
distractor objects over a textured background. The class is the main object's
``shape`` (8 outlines: disk, triangle, star, cross, ring, square, crescent, arrow) crossed
with its ``fill`` (solid colour or two-colour stripes): the default 10 classes are the
first five shapes times both fills (``"00_disk_solid"`` ... ``"09_ring_striped"``), and up
to 16 are available. Distractors are drawn from the same shapes and fills (only their size
gives them away) and sit behind the main object. Colour, position, scale, rotation and
aspect ratio are random and independent of the class, and every shape is scaled to the
same area, so neither mean colour nor the number of object pixels separates classes: a
linear model on pixels stays near chance, while a CNN has to find the largest object and
read its outline and texture, and gains from depth and width (see
``benchmarks/dataset_difficulty.py``).

Determinism. Each image is rendered from its own RNG, seeded by ``(seed, split, class,
index)``, so the files are byte-identical for the same seed whatever the number of
worker processes. A dataset is rendered into a temporary sibling folder and renamed
onto ``out`` when complete, so ``out`` is never half written.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from nas_core.data.folders import MANIFEST_COLUMNS
from nas_core.io import read_json, read_parquet, read_provenance, write_json, write_parquet

SHAPES: tuple[str, ...] = ("disk", "triangle", "star", "cross", "ring", "square", "crescent", "arrow")
FILLS: tuple[str, ...] = ("solid", "striped")
SPLITS: tuple[str, ...] = ("train", "val", "test")
MAX_CLASSES = len(SHAPES) * len(FILLS)
DEFAULT_CLASSES = 10
GENERATOR_VERSION = 1  # bump when the rendering changes, so cached datasets are rebuilt

_SUPERSAMPLE = 4  # polygons are drawn at 4x and box-filtered down: anti-aliased edges


# --------------------------------------------------------------------------- classes


def class_catalog(num_classes: int = DEFAULT_CLASSES) -> list[tuple[str, str]]:
    """The first ``num_classes`` (shape, fill) pairs, shape-major.

    Shape-major order means any even ``num_classes`` contains both fills of each shape,
    so the fill always matters for the label (a linear texture detector alone is not
    enough, nor is an outline detector alone).
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    return [(shape, fill) for shape in SHAPES for fill in FILLS][:num_classes]


def class_names(num_classes: int = DEFAULT_CLASSES) -> list[str]:
    """Folder names; the two-digit prefix makes sorted-folder order equal label order."""
    return [f"{k:02d}_{shape}_{fill}" for k, (shape, fill) in enumerate(class_catalog(num_classes))]


# --------------------------------------------------------------------------- shapes


def _regular_polygon(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular_polygon(points, 1.0, -np.pi / 2)
    inner_pts = _regular_polygon(points, inner, -np.pi / 2 + np.pi / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


@functools.lru_cache(maxsize=None)
def shape_layers(shape: str) -> tuple[tuple[np.ndarray, int], ...]:
    """Outline of ``shape`` in unit coordinates as ``(polygon, value)`` layers.

    Layers are drawn in order with fill ``value`` (255 adds, 0 cuts a hole), which is how
    the ring and crescent get their holes without polygon-with-holes support in PIL.
    """
    w = 0.36  # half-width of the cross arms and arrow shaft
    layers = {
        "disk": [(_regular_polygon(48), 255)],
        "triangle": [(_regular_polygon(3, phase=-np.pi / 2), 255)],
        "square": [(_regular_polygon(4, phase=np.pi / 4), 255)],
        "star": [(_star(), 255)],
        "cross": [(np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1],
                             [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]]), 255)],
        "ring": [(_regular_polygon(48), 255), (_regular_polygon(48, 0.55), 0)],
        "crescent": [(_regular_polygon(48), 255), (_regular_polygon(48, 0.85) + [0.5, 0.0], 0)],
        "arrow": [(np.array([[-1, -w * 0.8], [0.1, -w * 0.8], [0.1, -0.8], [1, 0],
                             [0.1, 0.8], [0.1, w * 0.8], [-1, w * 0.8]]), 255)],
    }
    if shape not in layers:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    return tuple((np.asarray(poly, dtype=np.float64), value) for poly, value in layers[shape])


@functools.lru_cache(maxsize=None)
def _unit_scale(shape: str) -> float:
    """Factor that gives ``shape`` the area of the unit disk (so area does not reveal it)."""
    res = 512
    canvas = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, value in shape_layers(shape):
        draw.polygon([tuple(p) for p in (poly * res / 2.2 + res / 2)], fill=value)
    area = np.asarray(canvas, dtype=np.float64).sum() / 255 / (res / 2.2) ** 2
    return float(np.sqrt(np.pi / area))


def render_mask(shape: str, size: int, center: Sequence[float], radius: float,
                angle: float = 0.0, aspect: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage mask (float32 HxW in [0, 1]) of one posed shape.

    ``radius`` is that of the disk with the same area; ``aspect`` stretches x by
    ``aspect`` and y by ``1/aspect`` before the rotation by ``angle`` (radians).
    """
    ss = _SUPERSAMPLE
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    scale = radius * _unit_scale(shape)
    for poly, value in shape_layers(shape):
        pts = (poly * [aspect, 1.0 / aspect]) @ rotation.T * scale + np.asarray(center)
        draw.polygon([tuple(p) for p in pts * ss], fill=value)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


# --------------------------------------------------------------------------- colours & textures


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _colour_with_contrast(rng: np.random.Generator, against: float, min_contrast: float) -> np.ndarray:
    """A random RGB colour whose luminance differs from ``against`` by >= ``min_contrast``."""
    for _ in range(32):
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        if abs(float(_luminance(colour)) - against) >= min_contrast:
            return colour
    # Rare fallback: push the last draw's brightness away from ``against``.
    return np.clip(colour + (0.5 if against < 0.5 else -0.5), 0, 1).astype(np.float32)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a ``cells`` x ``cells`` grid upsampled bicubically."""
    coarse = (rng.uniform(0, 255, (cells, cells))).astype(np.uint8)
    field = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32) / 255.0


def _grating(rng: np.random.Generator, size: int, period: float) -> np.ndarray:
    """Soft-edged stripes in [0, 1] at a random orientation and phase."""
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
    return np.clip(0.5 + 1.5 * wave, 0.0, 1.0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background (float32 HxWx3): two-colour smooth noise, maybe a faint grating
    and a few thin lines, so that stripes and edges also occur off the objects."""
    c1, c2 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    t = _smooth_field(rng, size, int(rng.integers(2, 7)))[..., None]
    img = c1 * (1 - t) + c2 * t
    if rng.random() < 0.4:
        amplitude = rng.uniform(0.04, 0.12)
        img = img + amplitude * (_grating(rng, size, rng.uniform(3.5, 10.0))[..., None] - 0.5)
    if rng.random() < 0.5:
        canvas = Image.fromarray(np.zeros((size, size), np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))],
                      fill=255, width=int(rng.integers(1, 3)))
        line = np.asarray(canvas, np.float32)[..., None] / 255.0
        img = img * (1 - line) + rng.uniform(0, 1, 3).astype(np.float32) * line
    return img.astype(np.float32)


def _fill_texture(rng: np.random.Generator, fill: str, size: int, background_lum: float) -> np.ndarray:
    """The object's paint (float32 HxWx3): one colour, or stripes of two contrasting colours."""
    colour = _colour_with_contrast(rng, background_lum, 0.25)
    if fill == "solid":
        return np.broadcast_to(colour, (size, size, 3))
    if fill == "striped":
        second = _colour_with_contrast(rng, float(_luminance(colour)), 0.3)
        t = _grating(rng, size, rng.uniform(3.5, 6.0))[..., None]
        return colour * (1 - t) + second * t
    raise ValueError(f"unknown fill {fill!r}; known fills: {', '.join(FILLS)}")


def _paint(img: np.ndarray, mask: np.ndarray, texture: np.ndarray) -> np.ndarray:
    alpha = mask[..., None]
    return img * (1 - alpha) + texture * alpha


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Add sensor-like Gaussian noise and quantise to uint8."""
    sigma = rng.uniform(0.0, 0.05)
    img = img + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- classification


def render_classification_image(rng: np.random.Generator, shape: str, fill: str, size: int = 64) -> np.ndarray:
    """One uint8 HxWx3 image whose main (largest, frontmost) object is ``shape``/``fill``."""
    img = _background(rng, size)
    bg_lum = float(_luminance(img.reshape(-1, 3).mean(0)))
    radius = rng.uniform(0.2, 0.3) * size
    for _ in range(int(rng.integers(0, 3))):  # distractors: smaller, behind the main object
        d_shape = SHAPES[rng.integers(len(SHAPES))]
        d_fill = FILLS[rng.integers(len(FILLS))]
        mask = render_mask(d_shape, size, rng.uniform(0, size, 2), radius * rng.uniform(0.2, 0.45),
                           rng.uniform(0, 2 * np.pi), float(np.exp(rng.uniform(-0.2, 0.2))))
        img = _paint(img, mask, _fill_texture(rng, d_fill, size, bg_lum))
    margin = 0.8 * radius  # the main object may be clipped a little by the border, not much
    center = rng.uniform(margin, size - margin, 2)
    mask = render_mask(shape, size, center, radius, rng.uniform(0, 2 * np.pi),
                       float(np.exp(rng.uniform(-0.25, 0.25))))
    img = _paint(img, mask, _fill_texture(rng, fill, size, bg_lum))
    return _finish(rng, img)


def _image_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _render_classification_job(job: tuple) -> None:
    seed, split_id, label, index, shape, fill, size, path = job
    rng = _image_rng(seed, split_id, label, index)
    Image.fromarray(render_classification_image(rng, shape, fill, size)).save(path, compress_level=6)


def classification_params(*, seed: int = 0, num_classes: int = DEFAULT_CLASSES, train_per_class: int = 500,
                          val_per_class: int = 100, test_per_class: int = 100, image_size: int = 64) -> dict:
    """The generator parameters as stored in the manifest provenance (what a cache check compares)."""
    return {
        "generator": "synthetic_classification", "version": GENERATOR_VERSION, "seed": int(seed),
        "num_classes": int(num_classes), "image_size": int(image_size),
        "per_class": {"train": int(train_per_class), "val": int(val_per_class), "test": int(test_per_class)},
    }


def generate_classification(out: str | os.PathLike, *, seed: int = 0, num_classes: int = DEFAULT_CLASSES,
                            train_per_class: int = 500, val_per_class: int = 100, test_per_class: int = 100,
                            image_size: int = 64, workers: int | None = None, overwrite: bool = False):
    """Render the classification dataset into ``out`` and return its manifest DataFrame.

    If ``out`` already holds a dataset made with the same parameters it is reused (its
    manifest is returned, nothing is rendered). A different dataset there raises unless
    ``overwrite`` is set. ``workers`` processes render in parallel (default: all cores);
    the output does not depend on it.
    """
    out = Path(out)
    params = classification_params(seed=seed, num_classes=num_classes, train_per_class=train_per_class,
                                   val_per_class=val_per_class, test_per_class=test_per_class,
                                   image_size=image_size)
    if _existing_matches(out / "manifest.parquet", params, overwrite):
        return read_parquet(out / "manifest.parquet")

    catalog = class_catalog(num_classes)
    names = class_names(num_classes)
    tmp = _staging_dir(out)
    try:
        rows, jobs = [], []
        for split_id, split in enumerate(SPLITS):
            for label, ((shape, fill), name) in enumerate(zip(catalog, names)):
                if params["per_class"][split]:  # no empty class folders (they are an error on reading)
                    (tmp / split / name).mkdir(parents=True)
                for index in range(params["per_class"][split]):
                    rel = f"{split}/{name}/{index:05d}.png"
                    rows.append((rel, label, name, split))
                    jobs.append((seed, split_id, label, index, shape, fill, image_size, tmp / rel))
        _run_jobs(_render_classification_job, jobs, workers)
        manifest = _manifest_frame(rows)
        write_parquet(tmp / "manifest.parquet", manifest, provenance=params)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _manifest_frame(rows: list[tuple]):
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype({"label": "int64"})


# --------------------------------------------------------------------------- detection

DETECTION_CATEGORIES: tuple[str, ...] = ("disk", "triangle", "star")


def _boxes_overlap(a: Sequence[float], b: Sequence[float], gap: float = 2.0) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _mask_box(mask: np.ndarray, threshold: float = 0.5) -> list[float] | None:
    """Tight xyxy box (pixel edges) of the pixels at least ``threshold`` covered."""
    ys, xs = np.nonzero(mask >= threshold)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def render_detection_image(rng: np.random.Generator, size: int = 128,
                           categories: Sequence[str] = DETECTION_CATEGORIES, max_objects: int = 4,
                           background_fraction: float = 0.15) -> tuple[np.ndarray, list[dict]]:
    """One uint8 HxWx3 image and its objects ``[{"category": shape, "box": xyxy, "area": px}]``.

    Labelled objects (shapes in ``categories``, any fill) do not overlap each other
    (boxes are tight around the pixels at least half covered);
    unlabelled distractors (the other shapes, smaller) sit behind them. With probability
    ``background_fraction`` the image has distractors only.
    """
    img = _background(rng, size)
    bg_lum = float(_luminance(img.reshape(-1, 3).mean(0)))
    others = [s for s in SHAPES if s not in categories]
    for _ in range(int(rng.integers(0, 4))):
        mask = render_mask(others[rng.integers(len(others))], size, rng.uniform(0, size, 2),
                           rng.uniform(0.04, 0.08) * size, rng.uniform(0, 2 * np.pi))
        img = _paint(img, mask, _fill_texture(rng, FILLS[rng.integers(len(FILLS))], size, bg_lum))
    count = 0 if rng.random() < background_fraction else int(rng.integers(1, max_objects + 1))
    objects: list[dict] = []
    for _ in range(count):
        for _attempt in range(20):  # rejection sampling: labelled boxes keep a 2 px gap
            category = categories[rng.integers(len(categories))]
            radius = rng.uniform(0.06, 0.18) * size
            mask = render_mask(category, size, rng.uniform(radius, size - radius, 2), radius,
                               rng.uniform(0, 2 * np.pi), float(np.exp(rng.uniform(-0.25, 0.25))))
            box = _mask_box(mask)
            if box is not None and not any(_boxes_overlap(box, o["box"]) for o in objects):
                img = _paint(img, mask, _fill_texture(rng, FILLS[rng.integers(len(FILLS))], size, bg_lum))
                objects.append({"category": category, "box": box, "area": float(mask.sum())})
                break
    return _finish(rng, img), objects


def _render_detection_job(job: tuple) -> list[dict]:
    seed, split_id, index, size, categories, max_objects, background_fraction, path = job
    rng = _image_rng(seed, split_id, index)
    img, objects = render_detection_image(rng, size, categories, max_objects, background_fraction)
    Image.fromarray(img).save(path, compress_level=6)
    return objects


def generate_detection(out: str | os.PathLike, *, seed: int = 0, num_train: int = 400, num_test: int = 100,
                       image_size: int = 128, categories: Sequence[str] = DETECTION_CATEGORIES,
                       max_objects: int = 4, background_fraction: float = 0.15,
                       workers: int | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Render a COCO-format detection dataset into ``out``; return the paths written.

    Layout (as ``../shared/datasets/raccoon``)::

        out/images/{train,test}_<i>.png
        out/instances_train.json, out/instances_test.json

    Each JSON is COCO ``instances``: ``images`` ``[{id, file_name, width, height}]``,
    ``annotations`` ``[{id, image_id, category_id, bbox: [x, y, w, h], area, iscrowd: 0}]``
    (``area`` = covered pixels), ``categories`` ``[{id, name}]`` with ids from 1 in the
    order of ``categories``, and ``info`` = the generator parameters. Image and annotation
    ids are unique across both files. About ``background_fraction`` of the images have no
    annotation (background only).
    """
    out = Path(out)
    unknown = [c for c in categories if c not in SHAPES]
    if unknown or not categories:
        raise ValueError(f"categories must be a non-empty subset of {SHAPES}, got {list(categories)}")
    params = {
        "generator": "synthetic_detection", "version": GENERATOR_VERSION, "seed": int(seed),
        "num_train": int(num_train), "num_test": int(num_test), "image_size": int(image_size),
        "categories": list(categories), "max_objects": int(max_objects),
        "background_fraction": float(background_fraction),
    }
    paths = {"images": out / "images", "train": out / "instances_train.json", "test": out / "instances_test.json"}
    if _existing_matches(paths["test"], params, overwrite):
        return paths

    coco_categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(categories)]
    category_id = {c["name"]: c["id"] for c in coco_categories}
    tmp = _staging_dir(out)
    try:
        (tmp / "images").mkdir()
        image_id, annotation_id = 0, 0
        for split_id, (split, count) in enumerate([("train", num_train), ("test", num_test)]):
            names = [f"{split}_{i:05d}.png" for i in range(count)]
            jobs = [(seed, split_id, i, image_size, tuple(categories), max_objects, background_fraction,
                     tmp / "images" / name) for i, name in enumerate(names)]
            images, annotations = [], []
            for name, objects in zip(names, _run_jobs(_render_detection_job, jobs, workers)):
                image_id += 1
                images.append({"id": image_id, "file_name": name, "width": image_size, "height": image_size})
                for obj in objects:
                    annotation_id += 1
                    x0, y0, x1, y1 = obj["box"]
                    annotations.append({"id": annotation_id, "image_id": image_id,
                                        "category_id": category_id[obj["category"]],
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": round(obj["area"], 2),
                                        "iscrowd": 0})
            write_json(tmp / f"instances_{split}.json", {"info": params, "images": images,
                                                         "annotations": annotations,
                                                         "categories": coco_categories})
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


# --------------------------------------------------------------------------- plumbing


def _existing_matches(marker: Path, params: dict, overwrite: bool) -> bool:
    """True if ``marker`` (the file written last) records exactly ``params``.

    Raises if ``marker``'s folder holds something else and ``overwrite`` is False, so a
    dataset is never silently replaced.
    """
    folder = marker.parent
    if not folder.exists() or not any(folder.iterdir()):
        return False
    if marker.exists():
        try:
            found = read_provenance(marker) if marker.suffix == ".parquet" else read_json(marker).get("info")
        except Exception:  # damaged marker: treat as a different dataset
            found = None
        if found == params:
            return True
    if overwrite:
        return False
    raise FileExistsError(f"{folder}: already exists and is not a dataset generated with {params}; "
                          "pass overwrite=True (or choose another folder)")


def _staging_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def _publish(tmp: Path, out: Path) -> None:
    """Swap the completed staging folder into place (old dataset removed only now)."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _run_jobs(fn, jobs: list, workers: int | None) -> list:
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) < 64:
        return [fn(job) for job in jobs]
    chunksize = max(1, min(256, len(jobs) // (8 * workers)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, jobs, chunksize=chunksize))

