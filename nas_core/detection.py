"""Object-detection transfer (§7, Table 6): SSDLite with a searched backbone, and with MobileNetV2.

The paper plugs its searched subnets into SSDLite (MMDetection), trains on COCO at 320x320
and reports COCO mAP and TensorRT latency on the Jetson Nano. Here the detector is
torchvision's own SSD machinery, unchanged: ``SSDLiteHead`` (depthwise-separable
prediction blocks), ``DefaultBoxGenerator`` (SSDLite's anchors: six levels, aspect ratios
{2, 3}, scales 0.2-0.95), the SSD matcher, box coder, loss (smooth-L1 + cross-entropy with
3:1 hard-negative mining) and post-processing (per-class top-k + batched NMS), all inside
``torchvision.models.detection.ssd.SSD``. Only the feature extractor is ours:

* **searched backbone** (:class:`SubnetDetectionBackbone`): the stem and four stages of a
  :class:`~nas_core.subnet.SubnetModel`; the outputs of stage 3 (stride 16) and stage 4
  (stride 32) are the first two feature maps, followed by SSDLite's four extra blocks
  (1x1 -> depthwise 3x3 stride 2 -> 1x1, ReLU6; torchvision's ``_extra_block``) with 512,
  256, 256 and 128 channels. This is MMDetection's ``SSDNeck`` with ``use_depthwise=True``,
  which the paper used.
* **MobileNetV2 baseline** (:class:`MobileNetV2DetectionBackbone`): timm's
  ``mobilenetv2_100`` cut as MMDetection's SSDLite-MobileNetV2 (``out_indices=(4, 7)``):
  the 96-channel output of the last stride-16 stage and the 1280-channel ``conv_head``
  at stride 32, then the same extra blocks.

The searched backbone is built at the detector's input size (SubnetModel's attention
biases are tables for one feature-map size; they are resized bicubically from the
classification resolution). Images are normalised with the ImageNet mean/std the
backbones were trained with.

Outputs of :func:`run_detection` under ``data/detection/<name>/``:

``metrics.json``::

    {"name", "backbone": {"source", "kind", "arch_id"?, "init"},
     "dataset": {"root", "train_images", "test_images", "categories"},
     "resolution", "num_classes" (with background), "params", "macs" (at resolution),
     "coco": {"mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large", "detections"},
     "export": {"onnx", "input", "outputs", "nms_inside": false},
     "latency_ms": {device: {"median_ms", "p10_ms", "p90_ms", "repeats", "precision_actual",
                             "runtime", "runtime_version", "threads"} | {"skipped": reason}},
     "train": {"epochs", "seconds", "final_loss"}, "config", "provenance"}

``model.pt`` (``{"kind": "ssdlite", "backbone": ..., "num_classes", "resolution",
"config", "state_dict"}``), ``model.onnx`` (network without NMS, see
:class:`SSDLiteExport`), ``checkpoint.pt`` (resume state), ``train_log.parquet``
(schema in ``nas_core.trainer``) and ``predictions.json`` (COCO results).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision import tv_tensors
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init
from torchvision.transforms import v2

from . import finetune
from .classifiers import load_classifier, subnet_at_resolution
from .complexity import count_macs, count_params
from .config import TrainRecipe
from .data.coco import (CocoDetectionDataset, detection_collate, find_coco_folder, to_coco_results,
                        write_coco_results)
from .data.folders import BadImagesError, check_cache_file, find_unreadable_images
from .data.synthetic import generate_detection
from .distributed import init_distributed, seed_everything
from .io import code_version, machine_fingerprint, read_json, torch_save, utc_now, write_json
from .latency.export import export_onnx
from .layout import DATA
from .locks import Lock, no_lock
from .subnet import SubnetModel
from .trainer import LossStep, train_epochs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTRA_CHANNELS = (512, 256, 256, 128)  # SSDLite's extra feature maps (torchvision, MMDetection)
AUGMENT_POLICIES = ("none", "hflip", "ssdlite", "ssd")


# --------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class DetectionConfig(TrainRecipe):
    """Training and evaluation knobs (``params.yaml`` section ``detection:``): a train
    recipe (``nas_core.config``) plus the detector's.

    Defaults are torchvision's SSDLite320 reference recipe (SGD 0.15 with batch 192, i.e.
    scaled here to 24, cosine, 600 epochs, weight decay 4e-5; the paper only says that the
    learning rate was tuned per model). ``augment``: ``ssdlite`` = torchvision's reference
    (random IoU crop + horizontal flip); ``ssd`` adds photometric distortion and zoom-out
    (MMDetection's SSD pipeline); ``hflip``; ``none``. ``anchor_scales`` are SSDLite's
    (0.2-0.95 of the image, spread linearly over the six feature maps), an option for other
    data (on the generated shapes at 128x128, 0.1-0.7 halved mAP@0.5 against the default).
    """

    section: ClassVar[str] = "detection"

    epochs: int = 600
    batch_size: int = 24
    opt: str = "sgd"
    lr: float = 0.15 * 24 / 192
    weight_decay: float = 4e-5
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    resolution: int = 320
    augment: str = "ssdlite"
    extra_channels: tuple[int, ...] = EXTRA_CHANNELS
    anchor_scales: tuple[float, float] = (0.2, 0.95)  # SSDLite's smallest / largest anchor (x image size)
    score_thresh: float = 0.001
    nms_thresh: float = 0.55
    detections_per_img: int = 300
    topk_candidates: int = 300
    eval_batch_size: int = 16
    skip_bad_images: bool = False        # leave unreadable images out (listed in metrics.json) instead of failing
    devices: tuple[str, ...] = ("ort_cpu_fp32", "openvino_cpu_fp32", "openvino_cpu_lowp", "tensorrt_fp32")
    timing: dict | None = None           # nas_core.latency.timing.TimingConfig overrides
    synthetic: dict | None = None        # generate_detection() arguments of the default dataset
    seeds: tuple[int, ...] = ()          # the pipeline's seeds (tasks.stages: one detector per seed, as ``seed``)

    def __post_init__(self):
        super().__post_init__()
        if self.resolution % 32:
            raise ValueError(f"detection resolution must be a multiple of 32, got {self.resolution}")
        if self.augment not in AUGMENT_POLICIES:
            raise ValueError(f"unknown augment policy {self.augment!r}; known: {', '.join(AUGMENT_POLICIES)}")
        object.__setattr__(self, "extra_channels", tuple(int(c) for c in self.extra_channels))
        object.__setattr__(self, "anchor_scales", tuple(float(a) for a in self.anchor_scales))
        if len(self.anchor_scales) != 2 or not 0 < self.anchor_scales[0] < self.anchor_scales[1] <= 1:
            raise ValueError(f"anchor_scales must be (smallest, largest) with 0 < smallest < largest <= 1, "
                             f"got {self.anchor_scales}")
        object.__setattr__(self, "devices", tuple(self.devices))


# --------------------------------------------------------------------------- backbones
def _extra_blocks(in_channels: int, channels: Sequence[int]) -> nn.ModuleList:
    """SSDLite's extra feature blocks (torchvision's own ``_extra_block`` and init)."""
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    blocks, prev = [], in_channels
    for c in channels:
        blocks.append(_extra_block(prev, c, norm))
        prev = c
    extra = nn.ModuleList(blocks)
    _normal_init(extra)
    return extra


class SubnetDetectionBackbone(nn.Module):
    """Stage-3 and stage-4 outputs of a searched subnet, then SSDLite's extra blocks.

    Holds the subnet's stem and stages only (its classifier is dropped). ``out_channels``
    lists the channels of the returned feature maps, as ``SSD`` expects.
    """

    def __init__(self, subnet, extra_channels: Sequence[int] = EXTRA_CHANNELS):
        super().__init__()
        self.arch = subnet.arch
        self.resolution = subnet.resolution
        self.stem, self.stages = subnet.stem, subnet.stages
        widths = [s.width for s in subnet.arch.stages]
        self.extra = _extra_blocks(widths[3], extra_channels)
        self.out_channels = [widths[2], widths[3], *extra_channels]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.stem(x)
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:  # stride 16 and 32
                outputs.append(x)
        for block in self.extra:
            x = block(x)
            outputs.append(x)
        return OrderedDict((str(i), v) for i, v in enumerate(outputs))


class MobileNetV2DetectionBackbone(nn.Module):
    """timm MobileNetV2 as MMDetection's SSDLite-MobileNetV2: the last stride-16 stage
    (96 channels) and ``conv_head`` (1280 channels, stride 32), then the extra blocks."""

    def __init__(self, model: nn.Module, extra_channels: Sequence[int] = EXTRA_CHANNELS):
        super().__init__()
        for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"):
            if not hasattr(model, name):
                raise TypeError(f"{type(model).__name__} is not a timm MobileNetV2/EfficientNet (no {name!r})")
        stride16 = _last_stage_at_stride(model, 16)
        self.stem = nn.Sequential(model.conv_stem, model.bn1)
        self.low = nn.Sequential(*model.blocks[:stride16 + 1])
        self.high = nn.Sequential(*model.blocks[stride16 + 1:], model.conv_head, model.bn2)
        self.extra = _extra_blocks(model.conv_head.out_channels, extra_channels)
        c16 = model.feature_info[[f["reduction"] for f in model.feature_info].index(16)]["num_chs"]
        self.out_channels = [c16, model.conv_head.out_channels, *extra_channels]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c16 = self.low(self.stem(x))
        x = self.high(c16)
        outputs = [c16, x]
        for block in self.extra:
            x = block(x)
            outputs.append(x)
        return OrderedDict((str(i), v) for i, v in enumerate(outputs))


def _last_stage_at_stride(model: nn.Module, stride: int) -> int:
    """Index into ``model.blocks`` of the last stage whose output has ``stride``."""
    info = [f for f in model.feature_info if f["reduction"] == stride]
    if not info:
        raise ValueError(f"{type(model).__name__} has no stride-{stride} features")
    return int(info[-1]["module"].split(".")[1])


def detection_backbone(classifier: nn.Module, resolution: int,
                       extra_channels: Sequence[int] = EXTRA_CHANNELS) -> nn.Module:
    """The SSDLite feature extractor for a trained classifier (weights shared, head dropped).

    A :class:`~nas_core.subnet.SubnetModel` is first rebuilt at ``resolution`` (attention
    biases resized); a timm MobileNetV2 is cut as MMDetection does.
    """
    if isinstance(classifier, SubnetModel):
        return SubnetDetectionBackbone(subnet_at_resolution(classifier, resolution), extra_channels)
    return MobileNetV2DetectionBackbone(classifier, extra_channels)


def build_ssdlite(backbone: nn.Module, num_classes: int, resolution: int,
                  config: DetectionConfig | None = None) -> nn.Module:
    """torchvision ``SSD`` with SSDLite's head and anchors around ``backbone``.

    ``num_classes`` counts the background (``CocoDetectionDataset.num_classes``).
    """
    config = config or DetectionConfig(resolution=resolution)
    levels = len(backbone.out_channels)
    smallest, largest = config.anchor_scales
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(levels)], min_ratio=smallest, max_ratio=largest)
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    head = SSDLiteHead(list(backbone.out_channels), anchors.num_anchors_per_location(), num_classes, norm)
    return SSD(backbone, anchors, (resolution, resolution), num_classes,
               image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), head=head,
               score_thresh=config.score_thresh, nms_thresh=config.nms_thresh,
               detections_per_img=config.detections_per_img, topk_candidates=config.topk_candidates)


# --------------------------------------------------------------------------- data
class DetectionTransform:
    """``(PIL image, target) -> (float image [0, 1], target)`` with a torchvision-v2 policy.

    Boxes travel with the image through every geometric transform; boxes cropped away
    are removed with their labels (``SanitizeBoundingBoxes``). Images without boxes pass
    through the geometric transforms that need boxes (IoU crop) unchanged.
    """

    def __init__(self, policy: str = "none", hflip_prob: float = 0.5):
        if policy not in AUGMENT_POLICIES:
            raise ValueError(f"unknown augment policy {policy!r}; known: {', '.join(AUGMENT_POLICIES)}")
        self.policy = policy
        steps: list = []
        if policy == "ssd":
            steps += [v2.RandomPhotometricDistort(p=1.0), v2.RandomZoomOut(fill=[round(255 * m) for m in IMAGENET_MEAN])]
        self.iou_crop = v2.RandomIoUCrop() if policy in ("ssd", "ssdlite") else None
        self.before = v2.Compose(steps) if steps else None
        self.after = v2.Compose(
            ([v2.RandomHorizontalFlip(hflip_prob)] if policy != "none" else [])
            + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes()])

    def __call__(self, image, target: dict):
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(image.height, image.width))
        sample = {"boxes": boxes, "labels": target["labels"]}
        if self.before is not None:
            image, sample = self.before(image, sample)
        if self.iou_crop is not None and len(sample["boxes"]):
            image, sample = self.iou_crop(image, sample)
        image, sample = self.after(image, sample)
        out = dict(target)
        out["boxes"] = sample["boxes"].as_subclass(torch.Tensor).reshape(-1, 4)
        out["labels"] = sample["labels"]
        return image.as_subclass(torch.Tensor), out


def detection_datasets(root: str | os.PathLike, augment: str = "none", skip_bad_images: bool = False):
    """``(train, test, paths)`` CocoDetectionDatasets of a detection folder in the standard
    COCO layout (``annotations/instances_train2017.json`` + ``train2017/``, held out:
    ``instances_val2017.json`` + ``val2017/``) or the flat one (``images/``,
    ``instances_train.json``, ``instances_test.json``): ``nas_core.data.coco.find_coco_folder``.
    The data layer validates both files (its errors name the file, image and annotation),
    then every image is decoded once, up front (``nas_core.data.folders.checked_manifest``'s
    cached check): unreadable images are one error listing them all, or are left out with
    ``skip_bad_images`` (``paths["skipped_images"]``)."""

    folder = find_coco_folder(root)
    train = CocoDetectionDataset(folder.train_images, folder.train_json, transforms=DetectionTransform(augment))
    test = CocoDetectionDataset(folder.test_images, folder.test_json, transforms=DetectionTransform("none"))
    if train.instances.categories != test.instances.categories:
        raise ValueError(f"{folder.train_json} and {folder.test_json} list different categories: "
                         f"{train.instances.categories} vs {test.instances.categories}")
    skipped = drop_unreadable_images(folder, (train, test), skip_bad_images)
    if not any(r.boxes for r in train.records):
        raise ValueError(f"{folder.train_json}: no image has a box; nothing to learn from")
    paths = {**folder.describe(), "images": str(folder.train_images), "skipped_images": skipped}
    paths["train"], paths["test"] = folder.train_json, folder.test_json
    return train, test, paths


def drop_unreadable_images(folder, datasets, skip: bool) -> dict[str, str]:
    """Decode every image of ``datasets`` once (cached by size and mtime); raise one error
    listing the unreadable ones, or (``skip``) remove them from the datasets and return them."""
    paths = list(dict.fromkeys(str(r.path) for d in datasets for r in d.records))
    bad = find_unreadable_images(paths, cache_file=check_cache_file(folder.root))
    if bad and not skip:
        shown = "\n  ".join(list(bad.values())[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
        raise BadImagesError(f"{folder.root}: {len(bad)} unreadable image(s) of {len(paths)}:\n  {shown}\nFix or "
                             "remove them, or set detection.skip_bad_images: true to train without them.", bad)
    for dataset in datasets:
        dataset.without_images(bad)
    return bad


SYNTHETIC_DEFAULTS = {"num_train": 400, "num_test": 100, "image_size": 128, "seed": 0}


def ensure_synthetic_detection(out: str | os.PathLike, config: DetectionConfig | None = None) -> Path:
    """The generated shapes dataset (``nas_core.data.synthetic.generate_detection``) at
    ``out`` with ``config.synthetic``'s settings: made if missing, kept if it matches,
    re-made if it was made with other settings."""
    kwargs = {**SYNTHETIC_DEFAULTS, **((config.synthetic if config else None) or {})}
    generate_detection(out, overwrite=True, **kwargs)
    return Path(out)


# --------------------------------------------------------------------------- training
class DetectionStep(LossStep):
    """The trainer's step for a detector: SSD's loss on one batch, box regression plus
    classification (with hard-negative mining, inside torchvision's ``SSD``)."""

    def __call__(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        losses = model(images, targets)
        loss = losses["bbox_regression"] + losses["classification"]
        return loss, {"bbox_loss": float(losses["bbox_regression"].detach()),
                      "cls_loss": float(losses["classification"].detach())}


detection_step = DetectionStep()


def train_detector(model: nn.Module, train_set, config: DetectionConfig, out_dir: str | os.PathLike,
                   resume: bool = True, overwrite: bool = False, progress: bool = True,
                   identity: Mapping | None = None):
    """Train ``model`` on ``train_set``: the training loop of ``nas_core.trainer`` with
    :class:`DetectionStep` (checkpoint every epoch in ``out_dir/checkpoint.pt``, exact
    resume, ``torchrun``).
    Returns the training log (DataFrame; ``bbox_loss`` and ``cls_loss`` columns)."""
    return train_epochs(model, train_set, detection_step, TrainRecipe.from_config(config), out_dir,
                        resume=resume, overwrite=overwrite, collate_fn=detection_collate, ctx=init_distributed(),
                        identity=identity, progress=progress, desc="detection")


# --------------------------------------------------------------------------- evaluation
COCO_STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 16, max_images: int | None = None) -> dict[int, dict]:
    """``{COCO image id: {"boxes", "scores", "labels"}}`` (boxes in original image pixels)."""
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)
    predictions: dict[int, dict] = {}
    for images, targets in loader:
        outputs = model([im.to(device) for im in images])
        for target, output in zip(targets, outputs):
            predictions[int(target["image_id"])] = {k: v.cpu() for k, v in output.items()}
        if max_images is not None and len(predictions) >= max_images:
            break
    return predictions


def coco_ground_truth(instances_json: str | os.PathLike):
    """pycocotools ``COCO`` of an instances file; missing ``area`` (w*h) and ``iscrowd`` (0)
    are filled in, since COCOeval needs both and small datasets often omit them."""
    data = read_json(instances_json)
    for ann in data.get("annotations", []):
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    data.setdefault("info", {})
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate(predictions: Mapping[int, Mapping], label_to_category: Mapping[int, int],
                  instances_json: str | os.PathLike) -> dict[str, float]:
    """COCO box metrics (``COCO_STAT_NAMES``: mAP = AP@[.5:.95], mAP50 = AP@.5, ...) of
    ``predictions`` against ``instances_json``, restricted to the predicted images.
    No detection at all gives zeros (pycocotools cannot load an empty result list)."""
    results = to_coco_results(predictions, label_to_category)
    metrics = dict.fromkeys(COCO_STAT_NAMES, 0.0)
    metrics["detections"] = len(results)
    if not results:
        return metrics
    gt = coco_ground_truth(instances_json)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = sorted(predictions)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # pycocotools reports -1 where a size range has no ground truth at all.
    metrics.update({name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)})
    return metrics


# --------------------------------------------------------------------------- export
class SSDLiteExport(nn.Module):
    """The detector as deployed: one fixed-size image in, raw boxes and scores out, no NMS.

    Input ``[B, 3, R, R]`` float RGB in [0, 1] (already resized to R x R); normalisation,
    backbone, head, box decoding (anchors are constants for a fixed size) and softmax run
    inside. Outputs ``boxes`` ``[B, A, 4]`` (xyxy, input pixels, clipped) and ``scores``
    ``[B, A, num_classes]`` (column 0 = background). Score thresholding, per-class top-k
    and NMS are left to the application (as in most edge deployments; torchvision runs
    them in ``SSD.postprocess_detections``), so latency figures exclude them.
    """

    def __init__(self, ssd: nn.Module, resolution: int):
        super().__init__()

        self.backbone, self.head, self.box_coder = ssd.backbone, ssd.head, ssd.box_coder
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(ssd.transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(ssd.transform.image_std).view(1, 3, 1, 1))
        was_training = ssd.training
        ssd.eval()
        with torch.no_grad():
            dummy = torch.zeros(1, 3, resolution, resolution, device=self.mean.device)
            features = list(ssd.backbone(dummy).values())
            anchors = ssd.anchor_generator(ImageList(dummy, [(resolution, resolution)]), features)[0]
        ssd.train(was_training)
        self.register_buffer("anchors", anchors)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = self.head(list(self.backbone(x).values()))
        batch = x.shape[0]
        boxes = self.box_coder.decode_single(out["bbox_regression"].reshape(-1, 4), self.anchors.repeat(batch, 1))
        boxes = boxes.reshape(batch, -1, 4).clamp(0, self.resolution)
        return boxes, out["cls_logits"].softmax(-1)


# --------------------------------------------------------------------------- the stage
def run_detection(model_ref: str, data_dir: str | os.PathLike, out_root: str | os.PathLike = DATA.detection_runs,
                  name: str | None = None, config: DetectionConfig | None = None, supernet: str | None = None,
                  devices_section: Mapping | None = None, resume: bool = True, overwrite: bool = False,
                  progress: bool = True, lock: Lock = no_lock, access_of: Callable | None = None) -> dict:
    """Train and evaluate SSDLite with the backbone ``model_ref`` on the COCO folder
    ``data_dir``; export it, time it and write ``out_root/<name>/metrics.json`` (module
    docstring). ``model_ref`` is anything ``classifiers.load_classifier`` accepts: a
    fine-tune output folder or name, a preset or ``.arch.json`` (weights from
    ``supernet`` if given, else random), or ``mobilenetv2_100``. ``lock``
    (``nas_core.locks``) is held shared while training, evaluating and exporting, then
    exclusively while timing. Returns the metrics (an empty dict on ranks other than 0
    of a ``torchrun`` job)."""

    config = config or DetectionConfig()
    train_set, test_set, paths = detection_datasets(data_dir, config.augment,  # validate the data first
                                                    config.skip_bad_images)
    with lock("shared"):  # training, evaluation and export: other shared work may run beside them
        seed_everything(config.seed)  # random backbones, the head's and extra blocks' initialisation
        classifier, source = load_classifier(model_ref, supernet=supernet)
        name = name or source["name"]
        out = Path(out_root) / name
        detector = build_ssdlite(detection_backbone(classifier, config.resolution, config.extra_channels),
                                 train_set.num_classes, config.resolution, config)
        identity = {"name": name, "backbone": model_ref, "data": str(data_dir), "num_classes": train_set.num_classes,
                    "resolution": config.resolution, "augment": config.augment}
        started = time.perf_counter()
        log = train_detector(detector, train_set, config, out, resume=resume, overwrite=overwrite, progress=progress,
                             identity=identity)
        train_seconds = time.perf_counter() - started
        if not init_distributed().is_main:
            return {}

        predictions = predict(detector, test_set, config.eval_batch_size)
        coco = coco_evaluate(predictions, test_set.label_to_category, paths["test"])
        write_coco_results(out / "predictions.json", predictions, test_set.label_to_category)

        deployed = SSDLiteExport(detector, config.resolution).eval()
        shape = (1, 3, config.resolution, config.resolution)
        onnx_path = export_onnx(deployed, shape, out / "model.onnx")
    with lock("exclusive"):  # taken after the shared one is released: a holder cannot upgrade
        latency = finetune.measure_latency(deployed, shape, config.devices, devices_section, config.timing,
                                           onnx_path=onnx_path, access_of=access_of, job_name=f"detection-{name}")
    torch_save(out / "model.pt", {"kind": "ssdlite", "backbone": source, "num_classes": train_set.num_classes,
                                  "resolution": config.resolution, "config": config.to_dict(),
                                  "label_names": train_set.label_names, "state_dict": detector.state_dict()})
    metrics = {
        "name": name, "backbone": source,
        "dataset": {"root": str(data_dir), "layout": paths["layout"], "train_images": len(train_set),
                    "test_images": len(test_set), "categories": train_set.label_names[1:],
                    "skipped_images": paths["skipped_images"]},
        "resolution": config.resolution, "num_classes": train_set.num_classes,
        "params": count_params(deployed), "macs": count_macs(deployed, shape),
        "coco": coco,
        "export": {"onnx": str(onnx_path), "input": f"1x3x{config.resolution}x{config.resolution} RGB in [0,1]",
                   "outputs": "boxes [1,A,4] xyxy pixels; scores [1,A,C] softmax (col 0 background)",
                   "anchors": int(deployed.anchors.shape[0]), "nms_inside": False},
        "latency_ms": latency,
        "train": {"epochs": config.epochs, "seconds": round(train_seconds, 1),
                  "final_loss": float(log["loss"].iloc[-1]) if len(log) else math.nan},
        "config": config.to_dict(),
        "provenance": {"code_version": code_version(), "machine": machine_fingerprint(), "created": utc_now(),
                       "torch": torch.__version__},
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def compare_table(metrics: Sequence[Mapping], device: str | None = None) -> str:
    """Table 6 as Markdown: backbone (and where its weights came from), mAP, mAP@0.5,
    params, MACs and the detector's latency (no NMS) per device."""
    devices = [device] if device else sorted({d for m in metrics for d, v in m["latency_ms"].items() if "median_ms" in v})
    head = ["backbone", "backbone init", "mAP", "mAP@0.5", "params (M)", "MACs (M)"] + [f"{d} (ms)" for d in devices]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        lat = [f"{m['latency_ms'].get(d, {}).get('median_ms', float('nan')):.2f}" for d in devices]
        source = m["backbone"]
        init = f"pretrained ({source['pretrain_init']})" if source.get("pretrain_init") else source.get("init")
        lines.append(f"| {m['name']} | {init} | {100 * m['coco']['mAP']:.1f} | {100 * m['coco']['mAP50']:.1f} | "
                     f"{m['params'] / 1e6:.2f} | {m['macs'] / 1e6:.0f} | " + " | ".join(lat) + " |")
    return "\n".join(lines)
