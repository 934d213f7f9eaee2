"""Classification images on disk: manifests, and DataLoaders built from them.

A *manifest* is the one description of a classification dataset that the rest of the
pipeline sees: a DataFrame (stored as Parquet) with one row per image.

============  ======  ============================================================
column        type    meaning
============  ======  ============================================================
path          str     image path relative to the dataset root (POSIX separators)
label         int64   class index ``0..C-1``; classes are numbered in sorted
                      class-folder order (as ``torchvision.datasets.ImageFolder``)
class_name    str     the class folder's name
split         str     ``train`` | ``val`` | ``test``
============  ======  ============================================================

``build_manifest(root)`` makes one from either folder layout:

* ImageNet layout ``root/train/<class>/*`` with ``root/val/<class>/*`` and optionally
  ``root/test/<class>/*``. Without a ``val`` folder, ``val_fraction`` of each training
  class is held out as ``val`` (seeded, stratified).
* One folder per class, ``root/<class>/*`` (no split given, e.g.
  ``../shared/datasets/sign-digits``): each class is split by a seeded permutation into
  ``val_fraction`` / ``test_fraction`` / the rest for ``train``, so the split is
  stratified and does not depend on the other classes.

``build_loader(manifest, root, split, ...)`` returns a ``torch.utils.data.DataLoader``
of ``(float tensor 3xRxR normalised with the ImageNet mean/std, int64 label)`` using
timm's transforms. Images are decoded with PIL, EXIF-rotated and converted to RGB
(grayscale, palette and RGBA images all become 3-channel). A file that cannot be decoded
raises :class:`ImageLoadError` naming it when it is first loaded; ``verify_images``
checks a whole manifest up front.

Checking once, up front
-----------------------
One truncated JPEG among a million would otherwise crash training mid-epoch (in a
DataLoader worker, and again after a resume). :func:`checked_manifest` (and
:func:`load_checked_manifest`) decode every image of a manifest once before anything
trains, with a process pool, and either raise one :class:`ImageLoadError` listing every
unreadable file or, with ``skip_bad_images``, drop them and record them in
``manifest.attrs["skipped_images"]``. Results are cached per file by ``(size, mtime)``
in ``$SCAN_EDGE_CACHE_DIR/image-checks/`` (default ``~/.cache/scan-edge``), so a second
run only ``stat``s the files. The cache lives outside the dataset, which may be
read-only and whose file listing other stages hash.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset

from nas_core.io import read_parquet, write_parquet

MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "class_name", "split")
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

EXPECTED_LAYOUTS = (
    "expected either an ImageNet layout (ROOT/train/<class>/<image>, ROOT/val/<class>/<image>, "
    "optional ROOT/test/<class>/<image>) or one folder per class (ROOT/<class>/<image>)"
)

# Train-time augmentation for small images. timm's ImageNet default crops down to 8% of
# the image, which at 32-128 px often cuts the object away: keep at least half of it.
DEFAULT_TRAIN_AUGMENT: dict[str, Any] = {
    "scale": (0.5, 1.0),
    "ratio": (3 / 4, 4 / 3),
    "hflip": 0.5,
    "color_jitter": 0.3,
    "interpolation": "bilinear",
}


class ImageLoadError(ValueError):
    """An image file listed in a manifest could not be decoded."""


# --------------------------------------------------------------------------- manifests


def build_manifest(root: str | os.PathLike, *, val_fraction: float = 0.15, test_fraction: float = 0.15,
                   seed: int = 0, layout: str = "auto"):
    """Manifest DataFrame (schema in the module docstring) for the dataset at ``root``.

    ``layout`` is ``"imagenet"``, ``"class_folders"`` or ``"auto"`` (ImageNet layout if
    there is a ``root/train`` folder). ``test_fraction`` applies to ``class_folders``
    only; ``val_fraction`` to ``class_folders`` and to an ImageNet layout without ``val``.
    The parameters that made the manifest are in ``manifest.attrs["provenance"]``.
    """
    root = _check_root(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "imagenet":
        frame = _imagenet_manifest(root, val_fraction, seed)
    elif layout == "class_folders":
        frame = _class_folders_manifest(root, val_fraction, test_fraction, seed)
    else:
        raise ValueError(f"unknown layout {layout!r}; use 'auto', 'imagenet' or 'class_folders'")
    frame.attrs["provenance"] = {"source": str(root), "layout": layout, "seed": int(seed),
                                 "val_fraction": float(val_fraction), "test_fraction": float(test_fraction)}
    return frame


def load_manifest(root: str | os.PathLike, **build_kwargs):
    """``root/manifest.parquet`` if the dataset ships one (the generated ones do), else
    ``build_manifest(root, **build_kwargs)``."""
    stored = Path(root) / "manifest.parquet"
    if stored.exists():
        manifest = read_parquet(stored)
        validate_manifest(manifest, source=stored)
        return manifest
    return build_manifest(root, **build_kwargs)


def write_manifest(path: str | os.PathLike, manifest, provenance: dict | None = None) -> Path:
    """Write a manifest atomically as Parquet; provenance defaults to ``manifest.attrs``."""
    validate_manifest(manifest)
    prov = provenance if provenance is not None else manifest.attrs.get("provenance", {})
    return write_parquet(path, manifest[list(MANIFEST_COLUMNS)], provenance=prov)


def detect_layout(root: str | os.PathLike) -> str:
    """``"imagenet"`` if there is a ``root/train`` folder, else ``"class_folders"``."""
    return "imagenet" if (_check_root(root) / "train").is_dir() else "class_folders"


def validate_manifest(manifest, source: Any = "manifest") -> None:
    """Raise ValueError if ``manifest`` breaks the schema: missing columns, nulls, an
    unknown split, or a label that does not map one-to-one to a class name."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; a manifest has {list(MANIFEST_COLUMNS)}")
    if manifest[list(MANIFEST_COLUMNS)].isna().any().any():
        raise ValueError(f"{source}: null values in {list(MANIFEST_COLUMNS)}")
    bad_splits = sorted(set(manifest["split"]) - set(SPLITS))
    if bad_splits:
        raise ValueError(f"{source}: unknown splits {bad_splits}; allowed: {list(SPLITS)}")
    pairs = manifest[["label", "class_name"]].drop_duplicates()
    if pairs["label"].duplicated().any() or pairs["class_name"].duplicated().any():
        raise ValueError(f"{source}: labels and class names are not one-to-one: {pairs.values.tolist()}")


def class_names(manifest) -> list[str]:
    """Class names ordered by label (index ``k`` is the name of label ``k``)."""
    pairs = manifest[["label", "class_name"]].drop_duplicates().sort_values("label")
    return pairs["class_name"].tolist()


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such dataset folder; {EXPECTED_LAYOUTS}")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: is a file, not a dataset folder; {EXPECTED_LAYOUTS}")
    return root


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_images(class_dir: Path) -> list[Path]:
    """The image files under one class folder, sorted; raises if there are none."""
    images = sorted(p for p in class_dir.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not images:
        raise ValueError(f"{class_dir}: empty class folder (no image files with extensions "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def _class_folders(folder: Path) -> list[Path]:
    classes = _subfolders(folder)
    if not classes:
        raise ValueError(f"{folder}: no class subfolders; {EXPECTED_LAYOUTS}")
    return classes


def _rows(root: Path, split_dir: Path, split: str, label_of: dict[str, int]) -> list[tuple]:
    rows = []
    for class_dir in _class_folders(split_dir):
        if class_dir.name not in label_of:
            raise ValueError(f"{class_dir}: class {class_dir.name!r} is not among the training classes "
                             f"({', '.join(label_of)})")
        for image in _class_images(class_dir):
            rows.append((image.relative_to(root).as_posix(), label_of[class_dir.name], class_dir.name, split))
    return rows


def _imagenet_manifest(root: Path, val_fraction: float, seed: int):
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{root}: no 'train' folder; {EXPECTED_LAYOUTS}")
    label_of = {d.name: k for k, d in enumerate(_class_folders(train_dir))}
    frame = _frame(_rows(root, train_dir, "train", label_of))
    if not (root / "val").is_dir():  # no given validation split: hold part of train out, stratified
        frame["split"] = _stratified_split(frame, val_fraction, 0.0, seed)
    extra = [row for split in ("val", "test") if (root / split).is_dir()
             for row in _rows(root, root / split, split, label_of)]
    return _frame(list(frame.itertuples(index=False, name=None)) + extra)


def _class_folders_manifest(root: Path, val_fraction: float, test_fraction: float, seed: int):
    classes = _class_folders(root)
    rows = []
    for label, class_dir in enumerate(classes):
        for image in _class_images(class_dir):
            rows.append((image.relative_to(root).as_posix(), label, class_dir.name, "train"))
    frame = _frame(rows)
    frame["split"] = _stratified_split(frame, val_fraction, test_fraction, seed)
    return frame


def _stratified_split(frame, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Per-class seeded split labels for ``frame``'s rows (in row order).

    Each class is permuted by its own RNG, seeded by ``(seed, crc32(class_name))``, so a
    class's split does not change when other classes are added or removed.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                         "and sum to less than 1")
    splits = np.full(len(frame), "train", dtype=object)
    for name, positions in frame.groupby("class_name", sort=True).indices.items():
        n = len(positions)
        n_val, n_test = _split_counts(n, val_fraction), _split_counts(n, test_fraction)
        if n_val + n_test >= n:
            raise ValueError(f"class {name!r} has only {n} images: too few to hold out "
                             f"{n_val} val + {n_test} test and keep any for training")
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        order = positions[rng.permutation(n)]
        splits[order[:n_val]] = "val"
        splits[order[n_val:n_val + n_test]] = "test"
    return splits.tolist()


def _split_counts(n: int, fraction: float) -> int:
    """Rounded share of ``n``, at least one image whenever the fraction is positive."""
    return 0 if fraction <= 0 else max(1, int(round(n * fraction)))


def _frame(rows: list[tuple]):
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype({"label": "int64"})


# --------------------------------------------------------------------------- images


def open_rgb(path: str | os.PathLike, draft_size: int | None = None, exif_transpose: bool = True) -> Image.Image:
    """Decode ``path`` as an RGB PIL image (grayscale, palette, RGBA, CMYK all become RGB).

    ``exif_transpose`` applies the EXIF orientation (phone photos), as a viewer shows
    the image; detection data keeps the stored pixels, which its boxes refer to.
    ``draft_size`` lets the JPEG decoder skip detail beyond roughly that size (much
    faster for large photos). Raises :class:`ImageLoadError` naming the file if it
    cannot be decoded, FileNotFoundError if it is gone.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if draft_size:
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            if img.mode == "P":  # palette images may carry transparency; go through RGBA
                img = img.convert("RGBA")
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found (listed in the manifest)") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err


def verify_images(manifest, root: str | os.PathLike) -> None:
    """Decode every image in ``manifest`` once; raise ImageLoadError listing the bad files."""
    checked_manifest(manifest, root, skip_bad_images=False, cache=False)


CACHE_DIR_ENV = "SCAN_EDGE_CACHE_DIR"
CHECK_DRAFT_SIZE = 64      # decode at reduced size: a truncated file still fails, 10x faster for photos
SHOWN_BAD_IMAGES = 50      # files listed in the error (all of them are in the exception's ``bad``)


class BadImagesError(ImageLoadError):
    """Some images of a dataset cannot be decoded; ``bad`` maps each path to why."""

    def __init__(self, message: str, bad: dict[str, str]):
        super().__init__(message)
        self.bad = bad


def image_check_cache_dir() -> Path:
    """Where up-front image checks are cached (``$SCAN_EDGE_CACHE_DIR/image-checks``)."""
    base = os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "scan-edge"
    return Path(base) / "image-checks"


def image_error(path: str | os.PathLike) -> str:
    """Why ``path`` cannot be used as an image ("" when it decodes)."""
    try:
        open_rgb(path, draft_size=CHECK_DRAFT_SIZE)
    except (ImageLoadError, FileNotFoundError) as err:
        return str(err)
    return ""


def find_unreadable_images(paths: list[str], workers: int | None = None,
                           cache_file: str | os.PathLike | None = None) -> dict[str, str]:
    """``{path: reason}`` for every file of ``paths`` that does not decode as an image.

    Each file is decoded once; with ``cache_file`` the verdicts are kept by ``(path, size,
    mtime)``, so only new or changed files are decoded again. ``workers`` processes decode
    (default: all cores; 0 or 1: in this process).
    """
    stats = {p: _size_and_mtime(p) for p in paths}
    known = _read_check_cache(cache_file)
    verdicts: dict[str, str] = {}
    todo = []
    for path, stat in stats.items():
        cached = known.get(path)
        if stat is None:
            verdicts[path] = f"{path}: image file not found (listed in the manifest)"
        elif cached is not None and cached[:2] == stat:
            verdicts[path] = cached[2]
        else:
            todo.append(path)
    workers = os.cpu_count() or 1 if workers is None else workers
    if workers > 1 and len(todo) > 64:
        with ProcessPoolExecutor(workers) as pool:
            verdicts.update(zip(todo, pool.map(image_error, todo, chunksize=256)))
    else:
        verdicts.update((path, image_error(path)) for path in todo)
    if cache_file is not None and todo:
        rows = [(p, *stats[p], verdicts[p]) for p in paths if stats[p] is not None]
        frame = pd.DataFrame(rows, columns=["path", "size", "mtime_ns", "error"])
        write_parquet(cache_file, frame.astype({"size": "int64", "mtime_ns": "int64"}))
    return {path: verdicts[path] for path in paths if verdicts[path]}


def _size_and_mtime(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _read_check_cache(cache_file: str | os.PathLike | None) -> dict[str, tuple[int, int, str]]:
    if cache_file is None or not Path(cache_file).exists():
        return {}
    try:
        frame = read_parquet(cache_file)
    except Exception:  # an unreadable cache is only a cache: check again
        return {}
    return {p: (int(s), int(m), e) for p, s, m, e in zip(frame["path"], frame["size"], frame["mtime_ns"],
                                                         frame["error"])}


def check_cache_file(root: str | os.PathLike) -> Path:
    """The cache file of the dataset at ``root`` (one per dataset folder)."""
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return image_check_cache_dir() / f"{Path(root).resolve().name}-{key}.parquet"


def checked_manifest(manifest, root: str | os.PathLike, skip_bad_images: bool = False,
                     workers: int | None = None, cache: bool = True):
    """``manifest`` after decoding every image it lists once (see "Checking once, up front").

    Unreadable files (truncated, not an image, missing) raise one :class:`BadImagesError`
    naming them all, before any training starts; with ``skip_bad_images`` they are left
    out instead, listed in ``attrs["skipped_images"]`` (``{relative path: reason}``) and
    reported on stderr.
    """
    root = Path(root)
    paths = [str(root / rel) for rel in manifest["path"]]
    bad = find_unreadable_images(paths, workers, check_cache_file(root) if cache else None)
    if not bad:
        return manifest
    relative = {rel: bad[str(root / rel)] for rel in manifest["path"] if str(root / rel) in bad}
    if not skip_bad_images:
        shown = "\n  ".join(list(bad.values())[:SHOWN_BAD_IMAGES])
        more = f"\n  ... and {len(bad) - SHOWN_BAD_IMAGES} more" if len(bad) > SHOWN_BAD_IMAGES else ""
        raise BadImagesError(f"{root}: {len(bad)} unreadable image(s) of {len(paths)}:\n  {shown}{more}\n"
                             "Fix or remove them, or set skip_bad_images: true to train without them "
                             "(they are then listed in the run's outputs).", relative)
    kept = manifest[~manifest["path"].isin(list(relative))].copy()
    kept.attrs = {**manifest.attrs, "skipped_images": relative}
    print(f"warning: {root}: skipping {len(relative)} unreadable image(s): "
          + ", ".join(list(relative)[:10]) + (" ..." if len(relative) > 10 else ""), file=sys.stderr)
    return kept


def load_checked_manifest(root: str | os.PathLike, skip_bad_images: bool = False, **build_kwargs):
    """:func:`load_manifest` then :func:`checked_manifest`: what every training entry point reads."""
    return checked_manifest(load_manifest(root, **build_kwargs), root, skip_bad_images)


# --------------------------------------------------------------------------- datasets & loaders


class ManifestDataset(Dataset):
    """``(transform(image), label)`` for the rows of one split of a manifest.

    ``decode_side`` lets JPEGs much larger than that (shorter side) decode at reduced size
    (PIL draft mode, a power-of-two reduction that keeps at least ``decode_side``): a
    3024x3024 photo bound for 64x64 need not be decoded in full. With ``cache=True``
    decoded images are kept in memory, shrunk to a shorter side of ``decode_side``: later
    epochs skip disk and decoding. Each DataLoader worker keeps its own cache, so it suits
    small datasets and ``num_workers=0`` (or persistent workers) best.
    """

    def __init__(self, manifest, root: str | os.PathLike, split: str, transform: Callable | None = None,
                 cache: bool = False, decode_side: int | None = None):
        validate_manifest(manifest)
        rows = manifest[manifest["split"] == split]
        if rows.empty:
            present = sorted(set(manifest["split"]))
            raise ValueError(f"manifest has no rows for split {split!r} (splits present: {present})")
        self.root = Path(root)
        self.split = split
        self.paths = rows["path"].tolist()
        self.labels = rows["label"].astype("int64").tolist()
        self.classes = class_names(manifest)
        self.transform = transform
        self.cache = {} if cache else None
        self.decode_side = decode_side

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> Image.Image:
        if self.cache is None:
            return open_rgb(self.root / self.paths[index], draft_size=self.decode_side)
        if index not in self.cache:
            img = open_rgb(self.root / self.paths[index], draft_size=self.decode_side)
            if self.decode_side and min(img.size) > self.decode_side:
                scale = self.decode_side / min(img.size)
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.Resampling.BILINEAR, reducing_gap=2.0)
            self.cache[index] = img
        return self.cache[index]

    def __getitem__(self, index: int):
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[index]


DEFAULT_EVAL_TRANSFORM: dict[str, Any] = {"crop_pct": 1.0, "interpolation": "bilinear"}


def build_transform(resolution: int, train: bool, augment: dict | None = None):
    """timm transform: train = random-resized crop, flip, colour jitter (see
    ``DEFAULT_TRAIN_AUGMENT``, overridable per key via ``augment``, any
    ``timm.data.create_transform`` keyword: RandAugment ``auto_augment``, random erasing
    ``re_prob``, ...); eval = resize the shorter side to ``resolution / crop_pct`` and
    centre-crop ``resolution`` (``DEFAULT_EVAL_TRANSFORM``: the whole image; ``augment``
    overrides it for eval, e.g. ``{"crop_pct": 0.95, "interpolation": "bicubic"}``)."""
    if train:
        return create_transform(resolution, is_training=True, **{**DEFAULT_TRAIN_AUGMENT, **(augment or {})})
    return create_transform(resolution, is_training=False, **{**DEFAULT_EVAL_TRANSFORM, **(augment or {})})


def build_loader(manifest, root: str | os.PathLike, split: str, resolution: int, batch_size: int, train: bool,
                 num_workers: int = 0, seed: int = 0, drop_last: bool | None = None, cache: bool = False,
                 augment: dict | None = None, eval_transform: dict | None = None) -> DataLoader:
    """DataLoader over ``split`` of ``manifest`` (images under ``root``).

    ``train=True``: augmented, shuffled by a ``torch.Generator`` seeded with ``seed``
    (same seed, same batch order, epoch by epoch), ``drop_last`` defaults to True.
    ``train=False``: eval transform (``eval_transform`` overrides, e.g. ``crop_pct``), manifest
    order, every image.
    Batches are ``(float32 [B,3,R,R], int64 [B])``.
    """
    transform = build_transform(resolution, train, augment if train else eval_transform)
    dataset = ManifestDataset(manifest, root, split, transform,
                              cache=cache, decode_side=2 * resolution)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, generator=generator,
        drop_last=train if drop_last is None else drop_last,
        num_workers=num_workers, persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker if num_workers > 0 else None,
    )


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: torch seeds each worker's torch and ``random`` from the
    loader's generator; this seeds numpy from it too.

    Augmenting in workers is also what makes a resumed run bit-identical inside a Prefect
    flow: timm's transforms draw from Python's global ``random``, which in the main process
    other threads share (the websockets keepalive of Prefect's events client calls
    ``random.getrandbits`` every 20 s). A worker process has no such threads."""
    np.random.seed(torch.initial_seed() % 2**32)
    _forget_inherited_prefect_exit_hooks()


def _forget_inherited_prefect_exit_hooks() -> None:
    """A worker forked from a process running Prefect inherits the thread-exit hooks of
    Prefect's log and events services. At the worker's exit they try to drain services
    whose threads exist only in the parent, fail an assertion, and the worker exits with
    code 1: "DataLoader worker exited unexpectedly" at every epoch's end. The hooks are
    the parent's business, so the worker drops them."""
    hooks = getattr(threading, "_threading_atexits", None)  # CPython's list behind threading._register_atexit
    if hooks:
        hooks[:] = [hook for hook in hooks
                    if not getattr(getattr(hook, "func", hook), "__module__", "").startswith("prefect.")]
