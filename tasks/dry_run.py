"""A dry run of a (GPU-cluster) profile on this machine: every stage, a few steps, tiny data.

    scan-edge reproduce --profile imagenet --dry-run --data DIR --root OUT

:func:`dry_run_params` keeps everything that can break a day into a cluster run — the
training recipe (RandAugment, random erasing, mixup/cutmix, drop path, eval crop, AdamW +
AGC clipping, cosine), the distillation wiring, the predictor's target and encoding, the
evolution's population and generations, the devices' settings, the model lists — and
shrinks only what costs time: resolutions, steps, epochs, batch sizes, subnet and pair
counts, timing repeats. What it changes, and why, is returned with the params (and
printed by ``reproduce``):

* data: ``DIR`` (ImageNet layout) for the dataset and the transfer stage, generated
  shapes for detection (a COCO folder named in the profile is kept when it exists);
* the teacher: the profile's (``regnety_160.deit_in1k``) when it can be loaded, else a
  tiny stand-in (``test_resnet``, random weights) with a warning: the distillation head,
  loss and teacher forward still run;
* devices this machine cannot run (TensorRT without a GPU) are left out of every list;
* searches: on the first usable device of ``search.devices``, at the first latency target
  (a device's LUT is 572 block exports, ~2 min here; the targets only scale one number).
  The other devices are still measured where the fine-tuned and detection models are;
* baselines: MobileNetV2 (the targets' reference) is timed; the other names are checked to
  exist (in timm, or MicroViT), not timed (~7 s each at 224-256 px);
* processes: one (``torchrun`` ranks and Dask workers are what a cluster adds; the
  distributed paths have their own tests), the thread runner for pairs.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping


from nas_core.latency.baselines import is_known_model
from nas_core.latency.devices import check_usable, get_profile, load_profiles
from nas_core.params import deep_merge
from nas_core.search_run import REFERENCE_MODEL

STAND_IN_TEACHER = "test_resnet"  # timm's 0.4 M-parameter test network
TINY_TIMING = {"warmup_runs": 1, "warmup_ms": 0.0, "min_repeats": 2, "min_total_ms": 0.0, "max_repeats": 3,
               "max_total_ms": 20.0, "stability": 1.0, "check_every": 10}
TRAIN_STEPS = {"epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0.5, "num_workers": 1, "eval_every": 1}

# Everything here only shrinks; recipes, model lists and search sizes stay the profile's.
DRY_RUN_OVERRIDES: dict[str, Any] = {
    "search_space": {"resolution": 64},
    "runners": {"runner": "thread", "max_workers": 2},
    "supernet": {"resolution": 32, "batch_size": 8, "eval_batch_size": 40, "bn_calib_batches": 1,
                 "bn_calib_batch_size": 8, "teacher_stand_in": STAND_IN_TEACHER, "threads": None, **TRAIN_STEPS},
    "pairs": {"num_subnets": 14, "shard_size": 7, "eval_batch_size": 40, "bn_calib_batches": 1,
              "bn_calib_batch_size": 8, "num_workers": 0, "threads": 1},
    "predictor": {"epochs": 3, "batch_size": 8},
    "lut": {"timing": TINY_TIMING, "check_every": 1000},
    "calibration": {"n_calibration": 6, "n_validation": 2},  # the simplest fit (a line) needs 4 or more
    "baselines": {"timing": TINY_TIMING},
    "recalibration": {"subnets": 2},
    "search": {"refine": {"measure_top": 1, "max_rounds": 1}},
    "finetune": {"resolution": 32, "deploy_resolution": 64, "batch_size": 8, "eval_batch_size": 40,
                 "bn_calib_batches": 1, "bn_calib_batch_size": 8, "teacher_stand_in": STAND_IN_TEACHER,
                 "timing": TINY_TIMING, **TRAIN_STEPS},
    "controls": {"count": 1, "searches": "first", "max_measured": 3, "window_subnets": 2},
    "transfer": {"resolution": 32, "batch_size": 8, "eval_batch_size": 40, "epochs": 1, "steps_per_epoch": 2,
                 "warmup_epochs": 0.5, "num_workers": 0},
    "detection": {"resolution": 64, "batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0.5,
                  "eval_batch_size": 4, "timing": TINY_TIMING,
                  "synthetic": {"num_train": 8, "num_test": 4, "image_size": 64, "seed": 0}},
}
DEVICE_LISTS = (("search", "devices"), ("finetune", "devices"), ("detection", "devices"),
                ("pipeline", "params_constrained", "devices"))


def dry_run_params(params: Mapping[str, Any], data: str | Path) -> tuple[dict[str, Any], list[str]]:
    """``(params, notes)``: ``params`` shrunk for a dry run on the ImageNet-layout folder
    ``data`` (module docstring); ``notes`` says what changed beyond sizes."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such folder; --dry-run needs --data DIR, a small ImageNet-layout "
                                "folder (DIR/train/<class>/*, DIR/val/<class>/*)")
    out = deep_merge(copy.deepcopy(dict(params)), DRY_RUN_OVERRIDES)
    out["profile"] = f"{params.get('profile')}-dry-run"
    notes = [f"dry run of profile {params.get('profile')!r}: every stage for a few steps on {data}"]
    out["dataset"] = {**out.get("dataset", {}), "path": str(data)}
    pipeline = out.setdefault("pipeline", {})
    pipeline["torchrun"] = {"nproc_per_node": 1}
    pipeline["transfer_data"] = str(data)
    notes.append(f"one process (profile: {params.get('pipeline', {}).get('torchrun')}), thread runner for pairs "
                 f"(profile: {params.get('runners', {}).get('runner')}); transfer to {data}")
    if pipeline.get("detection_data") and not Path(pipeline["detection_data"]).is_dir():
        notes.append(f"detection on generated shapes ({pipeline['detection_data']} is not here)")
        pipeline["detection_data"] = None
    dropped = _keep_usable_devices(out)
    if dropped:
        notes.append(f"devices left out (not usable here): {'; '.join(dropped)}")
    searched = out["search"]["devices"]
    out["search"]["devices"] = searched[:1]
    # The largest target: at the dry run's 64 px and few timing repeats MobileNetV2 times below the smallest
    # subnet measured, so 0.75x of it is feasible only by the calibration's extrapolation (a noisy one).
    targets = sorted(out["search"].get("targets_vs_mobilenetv2") or [1.0])[::-1]
    out["search"]["targets_vs_mobilenetv2"] = targets[:1]
    constrained = pipeline.get("params_constrained") or {}
    if constrained.get("targets_vs_mobilenetv2"):
        constrained["targets_vs_mobilenetv2"] = constrained["targets_vs_mobilenetv2"][:1]
    if constrained.get("devices"):
        constrained["devices"] = [d for d in constrained["devices"] if d in searched[:1]]
    notes.append(f"searches on {searched[:1]} (of {searched}) at {targets[:1]} (of {targets}) x MobileNetV2; "
                 "population and generations unchanged")
    seeds = list(out["finetune"].get("seeds") or [])
    if len(seeds) > 2:
        out["finetune"]["seeds"] = seeds[:2]
        notes.append(f"fine-tune seeds {seeds[:2]} (of {seeds}); one random control of the first search")
    notes.append(_check_baselines(out))
    for name in ("supernet", "finetune"):
        if out[name].get("teacher"):
            notes.append(f"{name}: teacher {out[name]['teacher']!r}, or the stand-in {STAND_IN_TEACHER!r} "
                         "(random weights) when it cannot be loaded")
    return out, notes


def _check_baselines(params: dict[str, Any]) -> str:
    """Time only the reference baseline; the other names must still be models we can build."""
    models = list((params.get("baselines") or {}).get("models") or [])
    unknown = [m for m in models if not is_known_model(m)]
    if unknown:
        raise ValueError(f"params baselines.models: {unknown} are neither timm models nor MicroViTs")
    params.setdefault("baselines", {})["models"] = [REFERENCE_MODEL]
    return f"baselines: {REFERENCE_MODEL} timed; {len(models)} names checked ({', '.join(models)})"


def _keep_usable_devices(params: dict[str, Any]) -> list[str]:
    """Drop the devices this machine cannot run from every device list; returns why, per device."""
    profiles = load_profiles(params.get("devices") or {})
    named = {d for path in DEVICE_LISTS for d in (_get(params, path) or [])}
    unusable = {}
    for device in sorted(named):
        usability = check_usable(get_profile(device, profiles))
        if not usability.usable:
            unusable[device] = usability.reason
    for path in DEVICE_LISTS:
        devices = _get(params, path)
        if devices:
            _get(params, path[:-1])[path[-1]] = [d for d in devices if d not in unusable]
    if not params["search"]["devices"]:
        raise ValueError(f"no device of search.devices can run here ({unusable}); a dry run needs one")
    return [f"{d} ({why})" for d, why in unusable.items()]


def _get(params: Mapping[str, Any], path: tuple[str, ...]):
    node: Any = params
    for key in path:
        node = (node or {}).get(key)
    return node


__all__ = ["dry_run_params", "DRY_RUN_OVERRIDES", "STAND_IN_TEACHER"]
