"""Classifiers and their files: searched subnets (from the supernet or from scratch) and
timm baselines, saved by the fine-tune stage and loaded back by transfer and detection.

* :func:`subnet_at_resolution` / :func:`with_drop_path` - the same subnet rebuilt for another
  input size or with stochastic depth (weights kept);
* :func:`save_classifier` / :func:`load_classifier_file` - ``model.pt`` and back;
* :func:`load_classifier` - whatever a user names: a fine-tune output, a preset or
  ``.arch.json`` (inheriting the supernet's weights when one is given), a timm baseline.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Mapping

import timm
from torch import nn

from .io import read_json, torch_load, torch_save
from .layout import DATA
from .search_space import SearchSpace
from .subnet import SubnetModel
from .supernet import resize_attention_bias_table
from .train import load_supernet, space_from_spec

CLASSIFIER_FORMAT = "scan-edge/classifier/v1"
MODEL_NAME = "model.pt"
TIMM_BASELINES = ("mobilenetv2_100",)  # classifiers built with timm rather than from the search space
DEFAULT_FINETUNE_ROOT = DATA.finetune_root


def subnet_at_resolution(model, resolution: int):
    """The same :class:`~nas_core.subnet.SubnetModel` built for another input size.

    Everything but the attention-bias tables is resolution-free; those are resized
    bicubically (as ``Supernet.extract`` does). Returns ``model`` itself when the size matches.
    """
    if model.resolution == resolution:
        return model
    rebuilt = SubnetModel(model.arch, model.num_classes, resolution, distillation=model.head_dist is not None)
    own = rebuilt.state_dict()
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("attention_biases") and value.shape != own[key].shape:
            value = resize_attention_bias_table(value, int(round(math.sqrt(own[key].shape[1]))))
        state[key] = value
    rebuilt.load_state_dict(state)
    return rebuilt.train(model.training).to(next(model.parameters()).device)


def with_drop_path(model, drop_path: float):
    """A SubnetModel rebuilt with stochastic depth ``drop_path`` (same weights); other models as they are."""
    if drop_path <= 0 or not isinstance(model, SubnetModel):
        return model
    rebuilt = SubnetModel(model.arch, model.num_classes, model.resolution, model.head_dist is not None, drop_path)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def build_timm_classifier(name: str, num_classes: int, drop_path: float = 0.0) -> nn.Module:
    if name not in TIMM_BASELINES:
        raise ValueError(f"unknown baseline {name!r}; timm baselines: {', '.join(TIMM_BASELINES)}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path)


def save_classifier(path: str | os.PathLike, model: nn.Module, info: Mapping[str, Any], space=None) -> Path:
    """``model.pt``: ``{"format", "kind": "subnet"|"timm", "arch"?, "space_spec"?,
    "timm_name"?, "num_classes", "resolution", "distillation", "info", "state_dict"}``.
    ``space`` (the supernet's search space) is stored so that an architecture of a
    non-default space validates when loaded."""
    record: dict[str, Any] = {"format": CLASSIFIER_FORMAT, "info": dict(info), "state_dict": model.state_dict()}
    if isinstance(model, SubnetModel):
        record.update(kind="subnet", arch=model.arch.to_dict(), num_classes=model.num_classes,
                      resolution=model.resolution, distillation=model.head_dist is not None,
                      space_spec=dataclasses.asdict(space.spec) if space is not None else None)
    else:
        record.update(kind="timm", timm_name=info["timm_name"], num_classes=model.num_classes,
                      resolution=info.get("resolution"))
    return torch_save(path, record)


def load_classifier_file(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the classifier stored by :func:`save_classifier`; returns ``(model, info)``."""
    record = torch_load(path)
    if not isinstance(record, dict) or record.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path}: not a classifier saved by scan-edge finetune "
                         f"(format {record.get('format') if isinstance(record, dict) else type(record).__name__!r})")
    if record["kind"] == "subnet":
        space = space_from_spec(record.get("space_spec"))
        arch = space.from_dict(record["arch"])
        model = SubnetModel(arch, record["num_classes"], record["resolution"], record["distillation"],
                            spec=space.spec)
    else:
        model = build_timm_classifier(record["timm_name"], record["num_classes"])
    model.load_state_dict(record["state_dict"])
    return model.eval(), dict(record["info"])


def resolve_arch(ref: str, space=None) -> tuple[Any, dict[str, Any]]:
    """``(ArchConfig, record)`` for a preset name or an architecture JSON (a search's
    ``.arch.json``, whose record carries ``name``, ``predicted_accuracy``, ``latency_ms``),
    validated against ``space`` (default: the paper's)."""
    space = space or SearchSpace()
    path = Path(ref)
    if path.suffix == ".json" or path.is_file():
        data = read_json(path)
        record = data if "arch" in data else {"arch": data}
        record.setdefault("name", path.name.removesuffix(".json").removesuffix(".arch"))
        return space.from_dict(record["arch"]), record
    try:
        return space.preset(ref), {"name": ref}
    except KeyError as err:
        raise KeyError(f"{err.args[0]}; or give an architecture .json, a fine-tune output folder or "
                       f"{', '.join(TIMM_BASELINES)}") from None


def load_classifier(ref: str, supernet: str | os.PathLike | None = None, num_classes: int = 1000,
                    finetune_root: str | os.PathLike = DEFAULT_FINETUNE_ROOT) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier named by ``ref``, for transfer and detection; returns ``(model, source)``.

    ``ref`` is, in this order: a fine-tune output folder (or its ``model.pt``), a name
    under ``finetune_root``, a timm baseline (``mobilenetv2_100``, random init), or a
    preset / architecture JSON (weights inherited from ``supernet`` if given, else random).
    ``source`` says what was loaded: ``name``, ``kind``, ``init``, ``path``, ``arch_id``.
    """
    path = Path(ref)
    candidates = [path / MODEL_NAME, path, Path(finetune_root) / ref / MODEL_NAME]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".pt":
            model, info = load_classifier_file(candidate)
            source = {"name": info.get("name", candidate.parent.name), "kind": info.get("kind"),
                      "init": "pretrained", "path": str(candidate), "pretrain_init": info.get("init")}
            if "arch_id" in info:
                source["arch_id"] = info["arch_id"]
            return model, source
    if ref in TIMM_BASELINES:
        return build_timm_classifier(ref, num_classes), {"name": ref, "kind": "timm", "init": "random"}
    if supernet is not None:
        net, _ = load_supernet(supernet)
        arch, record = resolve_arch(ref, net.space)
        model = net.extract(arch)
        init = f"inherited from {supernet} (BN not recalibrated)"
    else:
        arch, record = resolve_arch(ref)
        model, init = SubnetModel(arch, num_classes, resolution=224), "random"
    return model, {"name": record["name"], "kind": "subnet", "init": init, "arch_id": arch.arch_id}
