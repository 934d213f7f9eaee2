"""The dataset stage: the classification set (generated, or a manifest of a given folder)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from nas_core.data.folders import build_manifest, write_manifest
from nas_core.data.synthetic import generate_classification
from nas_core.layout import DATA_ROOT, Layout
from tasks import stage_lock
from tasks.stages.common import Paths, _require, _say, section

DATASET_PATH_KEYS = ("path", "val_fraction", "test_fraction", "seed")


def stage_dataset(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """The classification dataset in ``dataset/`` (its ``manifest.parquet`` is what later stages read).

    ``dataset:`` holds ``generate_classification`` arguments (the generated default data);
    a dataset already there with the same arguments is kept as it is, so its content hash
    and everything downstream stay valid. With ``dataset.path`` (e.g. ImageNet, in ImageNet
    or class-folder layout) only a manifest of that folder is written, with absolute image
    paths (``val_fraction``, ``test_fraction``, ``seed`` split a folder without splits).
    """
    layout = Layout(root)
    dataset = section(params, "dataset")
    with stage_lock("shared"):
        if dataset.get("path"):
            manifest = _manifest_of(Path(dataset["path"]), layout, {k: dataset[k] for k in DATASET_PATH_KEYS[1:]
                                                                    if k in dataset})
        else:
            manifest = generate_classification(layout.dataset, overwrite=True, **{k: v for k, v in dataset.items()
                                                                                   if k != "path"})
    _say(f"dataset: {len(manifest)} images, manifest {layout.manifest}")
    return {"dataset": layout.dataset, "manifest": layout.manifest}


def _manifest_of(source: Path, layout: Layout, split: Mapping[str, Any]):
    """Write ``dataset/manifest.parquet`` for an existing image folder (absolute image paths)."""
    _require(source, "the image folder named by dataset.path")
    manifest = build_manifest(source, **split)
    manifest["path"] = [str((source / rel).resolve()) for rel in manifest["path"]]
    write_manifest(layout.manifest, manifest, {**manifest.attrs.get("provenance", {}), "absolute_paths": True})
    return manifest
