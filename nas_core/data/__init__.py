"""The data layer: generated default datasets, image-folder manifests and loaders, COCO detection.

* ``synthetic``: ``generate_classification`` (the default dataset, ImageNet layout +
  ``manifest.parquet``) and ``generate_detection`` (COCO JSON), deterministic from a seed.
* ``folders``: ``build_manifest`` / ``load_manifest`` for any classification folder,
  ``build_loader`` (timm transforms) over one split of a manifest.
* ``coco``: ``CocoDetectionDataset`` (validated COCO instances -> torchvision detection
  targets), ``detection_collate``, ``write_coco_results``.
"""
from nas_core.data.coco import (
    CocoDetectionDataset,
    CocoFolder,
    find_coco_folder,
    build_detection_loader,
    detection_collate,
    load_coco_instances,
    to_coco_results,
    write_coco_results,
)
from nas_core.data.folders import (
    MANIFEST_COLUMNS,
    BadImagesError,
    ImageLoadError,
    checked_manifest,
    find_unreadable_images,
    load_checked_manifest,
    ManifestDataset,
    build_loader,
    build_manifest,
    build_transform,
    class_names,
    load_manifest,
    open_rgb,
    validate_manifest,
    verify_images,
    write_manifest,
)
from nas_core.data.synthetic import generate_classification, generate_detection

__all__ = [
    "MANIFEST_COLUMNS", "BadImagesError", "CocoDetectionDataset", "CocoFolder", "ImageLoadError",
    "checked_manifest", "find_coco_folder", "find_unreadable_images", "load_checked_manifest", "ManifestDataset",
    "build_detection_loader", "build_loader", "build_manifest", "build_transform", "class_names",
    "detection_collate", "generate_classification", "generate_detection", "load_coco_instances",
    "load_manifest", "open_rgb", "to_coco_results", "validate_manifest", "verify_images",
    "write_coco_results", "write_manifest",
]
