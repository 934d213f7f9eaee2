"""Fine-tuning searched subnets (§6.2, Suppl. S6), training the baselines the same way, and deployment.

The paper inherits a searched subnet's weights from the supernet and fine-tunes it for
150 more epochs (AdamW, cosine decay, hard distillation from RegNetY-16GF), then compiles
it for the device it was searched for and measures its latency. :func:`finetune` is that
stage; its parts live where other stages can use them alone:

* ``nas_core.trainer`` - the one training loop (checkpoint every epoch, exact resume,
  ``torchrun``), shared with the supernet, transfer and detection;
* ``nas_core.classification`` - :func:`~nas_core.classification.train_classifier`: that loop
  with a classification step (label smoothing, mixup, optional DeiT-style hard
  distillation: ``head_dist`` learns the teacher's argmax) and per-epoch validation. The
  same function fine-tunes ours, trains the baselines from scratch and does downstream
  transfer (``nas_core.transfer``);
* ``nas_core.classifiers`` - building, saving and loading the models;
* ``nas_core.deploy`` - ONNX / OpenVINO / TensorRT exports;
* here: :func:`measure_latency` on each device profile, the stage, and the comparison table.

:func:`finetune` builds the model (a searched/preset subnet with weights inherited from
the supernet, a subnet from scratch, or timm's ``mobilenetv2_100``), measures the inherited
accuracy after BN recalibration, trains, evaluates, exports (ONNX, OpenVINO IR, a TensorRT
engine where possible) and times on each device.

Baselines, trained with the same recipe, data and budget as ours (no pretrained weights
are available offline): ``mobilenetv2_100`` (timm, random init); ``efficientformerv2_s0``
from scratch (``init="scratch"``) or inherited from our supernet (``init="supernet"``,
the default for every member of the space, S0 included). ``metrics.json`` says which
(``init``); :func:`comparison_table` shows both when both were run. Without a configured
``resolution`` every model trains at the supernet's resolution, baselines included.
Latencies written by separate runs on a shared machine do not compare; ``scan-edge
finetune-table --remeasure`` (:func:`remeasure_latency`) times all models side by side.

Outputs of :func:`finetune` under ``data/finetune/<name>/``:

``metrics.json``::

    {"name", "kind": "subnet" | "timm", "init": "supernet" | "scratch",
     "arch_id"?, "arch"? (dict), "compact"?, "timm_name"?,
     "predicted_accuracy": float | null   (the search's, from the .arch.json),
     "inherited": {"top1", "top5", "loss", "images", "split"} | null
                  (supernet weights, BN recalibrated, before fine-tuning),
     "finetuned": {"top1", "top5", "loss", "images", "split"},
     "params", "macs" (at deploy_resolution, num_classes of the dataset),
     "train_resolution", "deploy_resolution", "num_classes",
     "latency_ms": {device: {"median_ms", "p10_ms", "p90_ms", "repeats", "stable",
                             "threads", "precision", "precision_actual", "runtime",
                             "runtime_version", "input_shape"} | {"skipped": reason}},
     "searched_for": [device, ...]  (the .arch.json's devices; timed first),
     "estimated_latency_ms": {device: ms} | null  (the search's LUT estimate),
     "exports": {"onnx", "input_shape", "openvino" | {"skipped"}, "tensorrt" | {"skipped"},
                 "tensorrt_check"?: {"max_abs_diff", "outputs"} (the engine's outputs against torch)},
     "train": {"epochs", "seconds", "final_loss", "distillation"},
     "supernet": {"path", "sha256"} | null, "dataset", "config", "provenance"}

``model.pt`` (:func:`save_classifier`; read back with :func:`load_classifier`),
``model.onnx`` (+ ``model.xml``/``.bin``, ``model.engine``) at ``deploy_resolution``,
``checkpoint.pt`` (resume state) and ``train_log.parquet``:
``checkpoint.pt`` (resume state) and ``train_log.parquet`` (schema in ``nas_core.trainer``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from .classification import classification_data, distillation_enabled, train_classifier
from .classifiers import (DEFAULT_FINETUNE_ROOT, MODEL_NAME, TIMM_BASELINES, build_timm_classifier, resolve_arch,
                          save_classifier, subnet_at_resolution, with_drop_path)
from .complexity import count_macs, count_params
from .config import ClassificationRecipe
from .deploy import export_all
from .distributed import init_distributed, seed_everything
from .evaluate import evaluate, recalibrate_bn
from .io import code_version, file_sha256, machine_fingerprint, read_json, utc_now, write_json
from .latency.devices import check_usable, get_profile, load_profiles
from .latency.export import export_onnx
from .latency.location import MeasurementsPending, TimingJob
from .latency.measure import measure_module, measure_onnx
from .latency.timing import ModelEntry, TimingConfig
from .layout import DATA
from .locks import Lock, no_lock
from .search_space import SearchSpace
from .subnet import SubnetModel
from .train import load_supernet

METRICS_NAME = "metrics.json"
DEFAULT_OUT = DEFAULT_FINETUNE_ROOT  # where load_classifier looks for a fine-tuned model by name
DEFAULT_DATA = DATA.dataset
DEFAULT_SUPERNET = DATA.supernet


# --------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class FinetuneConfig(ClassificationRecipe):
    """params.yaml ``finetune:``: a classification recipe (``nas_core.config``) plus the
    resolutions, the latency devices and the exports.

    Defaults are the paper's ImageNet fine-tuning (§6.1): 150 epochs, AdamW, cosine,
    hard distillation from RegNetY-16GF (``teacher: regnety_160.deit_in1k`` in the imagenet
    profile). The extracted paper text lost the batch size and learning rate; these are
    EfficientFormerV2's recipe [22] (batch 1024, lr 1e-3, weight decay 0.025, 5 warm-up
    epochs, label smoothing 0.1), which the paper follows.
    """

    section: ClassVar[str] = "finetune"

    epochs: int = 150
    batch_size: int = 1024
    warmup_epochs: float = 5.0
    resolution: int | None = None        # train/eval resolution (None: the supernet's)
    deploy_resolution: int = 224         # export + latency resolution (the device profiles')
    drop_path: float = 0.0
    eval_split: str = "test"             # split of the reported (inherited / fine-tuned) accuracy
    devices: tuple[str, ...] = ("ort_cpu_fp32", "openvino_cpu_fp32", "openvino_cpu_lowp", "tensorrt_fp32")
    timing: dict | None = None           # nas_core.latency.timing.TimingConfig overrides
    export_openvino: bool = True
    export_tensorrt: bool = True         # only where TensorRT and a GPU are present
    seeds: tuple[int, ...] = ()          # the pipeline's seeds (tasks.stages: the first is ``seed``'s run)
    measure: bool = True                 # time the model on its devices (False: a repeat of a measured
                                         # model with another seed, or a control measured when drawn)


# --------------------------------------------------------------------------- latency
def measure_latency(module: nn.Module, input_shape: Sequence[int], device_names: Sequence[str],
                    devices_section: Mapping | None = None, timing: Mapping | None = None,
                    onnx_path: str | os.PathLike | None = None,
                    workdir: str | os.PathLike | None = None, access_of: Callable | None = None,
                    job_name: str = "model") -> dict[str, dict]:
    """Latency of ``module`` on each named device profile usable here; the others get
    ``{"skipped": reason}`` (e.g. TensorRT without a GPU), as does a runtime that fails on
    the model. ONNX backends time ``onnx_path`` when given (the very file shipped) and
    otherwise export to ``workdir``; the torch backend times the eager module.

    ``access_of(profile)`` (``nas_core.latency.location``) is where an ONNX model is timed:
    the pipeline passes it, so a board's model is timed on the board (job ``job_name``),
    never here. Without it, only profiles this machine runs are timed."""
    profiles = load_profiles(devices_section)
    config = TimingConfig.from_dict(dict(timing or {}))
    results: dict[str, dict] = {}
    for name in dict.fromkeys(device_names):
        profile = get_profile(name, profiles)
        if access_of is not None and profile.backend != "torch":
            results[name] = _time_through_access(access_of(profile), module, input_shape, config, onnx_path, workdir,
                                                 job_name)
            continue
        usability = check_usable(profile)
        if not usability.usable:
            results[name] = {"skipped": usability.reason}
            continue
        try:
            if onnx_path is not None and profile.backend != "torch":
                result = measure_onnx(onnx_path, input_shape, profile, config)
            else:
                result = measure_module(module, input_shape, profile, workdir=workdir, config=config)
        except Exception as err:  # a runtime that cannot compile this model: record why, go on
            results[name] = {"skipped": f"failed on {name}: {type(err).__name__}: {err}"}
            continue
        results[name] = {
            "median_ms": result.median_ms, "p10_ms": result.p10_ms, "p90_ms": result.p90_ms,
            "repeats": result.repeats, "stable": result.stable, "threads": profile.threads,
            "precision": profile.precision, "precision_actual": result.info.get("precision_actual"),
            "runtime": result.info.get("runtime"), "runtime_version": result.info.get("runtime_version"),
            "input_shape": list(input_shape),
        }
    return results


def _time_through_access(access, module: nn.Module, input_shape: Sequence[int], config, onnx_path, workdir,
                         job_name: str) -> dict:
    """One model timed on a device through its access; ``{"skipped": reason}`` when it cannot be."""
    profile = access.profile
    with tempfile.TemporaryDirectory(prefix="scan-edge-model-") as tmp:
        folder = Path(workdir or tmp)
        path = Path(onnx_path) if onnx_path is not None else export_onnx(module, input_shape, folder / "model.onnx")
        job = TimingJob(job_name, (ModelEntry(job_name, path, tuple(input_shape)),), job_name, config,
                        whole_networks=True)
        try:
            row = access.time(job, folder / f"{profile.name}.timing.parquet", resume=False, progress=False)[0]
        except MeasurementsPending:
            raise
        except Exception as err:  # a runtime that cannot compile this model: record why, go on
            return {"skipped": f"failed on {profile.name}: {type(err).__name__}: {err}"}
    return {"median_ms": row["median_ms"], "p10_ms": row["p10_ms"], "p90_ms": row["p90_ms"],
            "repeats": row["repeats"], "stable": row["stable"], "threads": profile.threads,
            "precision": profile.precision, "precision_actual": row.get("precision_actual"),
            "runtime": row.get("runtime"), "runtime_version": row.get("runtime_version"),
            "input_shape": list(input_shape), "location": access.location}



# --------------------------------------------------------------------------- the stage
def _check_ref(ref: str) -> None:
    """Fail early, before loading anything heavy, on a model reference that names nothing."""
    if ref in TIMM_BASELINES:
        return
    path = Path(ref)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such architecture file")
        return
    names = SearchSpace().preset_names()
    if ref not in names:
        raise KeyError(f"unknown architecture {ref!r}: not a preset ({', '.join(names)}), an architecture "
                       f".json or a baseline ({', '.join(TIMM_BASELINES)})")


def _supernet_for(ref: str, init: str, supernet_path: Path | None):
    """The trained supernet to inherit from (None when training from scratch)."""
    _check_ref(ref)
    if init not in ("supernet", "scratch"):
        raise ValueError(f"init must be 'supernet' or 'scratch', got {init!r}")
    if ref in TIMM_BASELINES and init != "scratch":
        raise ValueError(f"{ref} is not in the search space and has no pretrained weights offline: "
                         "it can only be trained from scratch (init 'scratch')")
    if init == "scratch":
        return None
    if supernet_path is None or not supernet_path.exists():
        raise FileNotFoundError(f"{supernet_path}: no supernet to inherit from. Train it with "
                                "`scan-edge train-supernet`, give --supernet PATH, or use --init scratch")
    return load_supernet(supernet_path)[0]


def _supernet_resolution(supernet, supernet_path: Path | None) -> int:
    """The resolution the supernet was trained at: baselines trained from scratch use it
    too when none is configured (same data, same budget); 224 without a supernet."""
    if supernet is not None:
        return supernet.resolution
    if supernet_path is not None and supernet_path.exists():
        meta = torch.load(supernet_path, map_location="cpu", mmap=True, weights_only=False)  # no weight copy
        return int(meta["resolution"])
    return 224


def _initial_model(ref: str, supernet, num_classes: int, resolution: int,
                   drop_path: float = 0.0, space: SearchSpace | None = None) -> tuple[nn.Module, dict, dict]:
    """``(model, description, search record)``: timm baseline, subnet from scratch, or the
    subnet extracted from ``supernet`` at ``resolution``."""
    if ref in TIMM_BASELINES:
        model = build_timm_classifier(ref, num_classes, drop_path)
        return model, {"name": ref, "kind": "timm", "timm_name": ref}, {}
    arch, record = resolve_arch(ref, supernet.space if supernet is not None else space)
    description = {"name": record["name"], "kind": "subnet", "arch_id": arch.arch_id, "arch": arch.to_dict(),
                   "compact": arch.compact()}
    if supernet is None:
        return SubnetModel(arch, num_classes, resolution), description, record
    if supernet.num_classes != num_classes:
        raise ValueError(f"the supernet has {supernet.num_classes} classes, the dataset {num_classes}: fine-tune "
                         "on the supernet's dataset (`scan-edge transfer` moves a model to another one)")
    return supernet.extract(arch, resolution=resolution).eval(), description, record


def finetune(ref: str, *, data_root: str | os.PathLike = DEFAULT_DATA,
             supernet: str | os.PathLike | None = DEFAULT_SUPERNET, name: str | None = None,
             out_root: str | os.PathLike = DEFAULT_OUT, config: FinetuneConfig | None = None,
             init: str | None = None, predicted_accuracy: float | None = None,
             devices_section: Mapping | None = None, resume: bool = True, overwrite: bool = False,
             progress: bool = True, lock: Lock = no_lock, access_of: Callable | None = None,
             space: SearchSpace | None = None) -> dict[str, Any]:
    """Fine-tune (or train a baseline) and write ``out_root/<name>/`` (module docstring).

    ``space``: the search space ``ref`` belongs to when it is trained from scratch (default
    Table 2); a subnet inherited from the supernet belongs to the supernet's.

    ``access_of(profile)``: where each device's latency is measured (``measure_latency``).

    ``ref``: a search's ``.arch.json``, a preset name, or ``mobilenetv2_100``. ``init``:
    ``supernet`` (inherit; the default for members of the space) or ``scratch`` (the
    default for timm baselines). The inherited accuracy is measured after BN
    recalibration on training images, on ``config.eval_split``. ``lock`` (``nas_core.locks``)
    is held shared while training, evaluating and exporting, then exclusively while
    measuring latency. Returns the metrics (an empty dict on ranks other than 0 of a
    distributed run).
    """
    config = config or FinetuneConfig()
    init = init or ("scratch" if ref in TIMM_BASELINES else "supernet")
    supernet_path = Path(supernet) if supernet is not None else None
    with lock("shared"):  # training, evaluation and export: other shared work may run beside them
        net = _supernet_for(ref, init, supernet_path)
        resolution = config.resolution or _supernet_resolution(net, supernet_path)
        data = classification_data(data_root, resolution, config)
        seed_everything(config.seed)  # a model from scratch starts from the same weights every run
        space = net.space if net is not None else space
        model, described, record = _initial_model(ref, net, data.num_classes, resolution, config.drop_path, space)
        name = name or (described["name"] + ("_scratch" if init == "scratch" and described["kind"] == "subnet" else ""))
        out = Path(out_root) / name

        inherited = None
        if net is not None:
            recalibrate_bn(model, None, data.calib_batches, len(data.calib_batches))
            inherited = {**evaluate(model, data.eval_loader), "split": data.eval_split}
            if progress:
                print(f"{name}: inherited top-1 {inherited['top1']:.4f} on {data.eval_split} (BN recalibrated)",
                      flush=True)
            del net
        model = with_drop_path(model, config.drop_path)

        identity = {"name": name, "ref": ref, "init": init, "resolution": resolution, "classes": data.num_classes}
        started = time.perf_counter()
        log = train_classifier(model, data.train, config, out, val_loader=data.val_loader, num_classes=data.num_classes,
                               resume=resume, overwrite=overwrite, progress=progress, identity=identity)
        seconds = time.perf_counter() - started
        if not init_distributed().is_main:
            return {}
        finetuned = {**evaluate(model, data.eval_loader), "split": data.eval_split}

        save_classifier(out / MODEL_NAME, model, {"name": name, "init": init, "resolution": resolution,
                                                  **{k: v for k, v in described.items() if k != "arch"}}, space)
        deployed = subnet_at_resolution(model, config.deploy_resolution) if described["kind"] == "subnet" else model
        deployed = deployed.eval().cpu()
        shape = (1, 3, config.deploy_resolution, config.deploy_resolution)
        exports = export_all(deployed, shape, out, config.export_openvino, config.export_tensorrt)
    searched_for = list((record.get("latency_ms") or {}).keys())
    latency = {}
    if config.measure:
        with lock("exclusive"):  # taken after the shared one is released: a holder cannot upgrade
            latency = measure_latency(deployed, shape, [*searched_for, *config.devices], devices_section,
                                      config.timing, onnx_path=exports["onnx"], access_of=access_of,
                                      job_name=f"finetune-{name}")
    if predicted_accuracy is None:
        predicted_accuracy = record.get("predicted_accuracy")
    metrics = {
        **described, "init": init, "predicted_accuracy": predicted_accuracy,
        "inherited": inherited, "finetuned": finetuned,
        "params": count_params(deployed), "macs": count_macs(deployed, shape),
        "train_resolution": resolution, "deploy_resolution": config.deploy_resolution,
        "num_classes": data.num_classes, "latency_ms": latency, "searched_for": searched_for,
        "estimated_latency_ms": record.get("latency_ms"), "exports": exports,
        "train": {"epochs": config.epochs, "seconds": round(seconds, 1), "seed": config.seed,
                  "images": images_seen(log),
                  "final_loss": float(log["loss"].iloc[-1]) if len(log) else math.nan,
                  "distillation": distillation_enabled(config, model)},
        "supernet": {"path": str(supernet_path), "sha256": file_sha256(supernet_path),
                     "images": supernet_images(supernet_path)} if inherited else None,
        "dataset": data.describe(), "config": config.to_dict(),
        "provenance": {"code_version": code_version(), "machine": machine_fingerprint(), "created": utc_now(),
                       "torch": torch.__version__},
    }
    write_json(out / METRICS_NAME, metrics)
    return metrics


def images_seen(log) -> int | None:
    """Training images a run has seen, from its train log (``nas_core.trainer``: images/s x
    seconds per epoch = steps x batch); None without a log."""
    if log is None or not len(log) or "images_per_s" not in log:
        return None
    return int(round(float((log["images_per_s"] * log["epoch_seconds"]).sum())))


def supernet_images(supernet_path: Path | None) -> int | None:
    """Images the supernet saw in training (its ``train_log.parquet`` beside ``supernet.pt``;
    each sandwich step trains several subnets on the same batch: the images are counted once)."""
    log_path = Path(supernet_path).parent / "train_log.parquet" if supernet_path is not None else None
    if log_path is None or not log_path.exists():
        return None
    return images_seen(pd.read_parquet(log_path))


# --------------------------------------------------------------------------- the comparison table
def load_metrics(out_root: str | os.PathLike = DEFAULT_OUT) -> list[dict[str, Any]]:
    """Every ``<out_root>/*/metrics.json``, sorted by name."""
    return [read_json(p) for p in sorted(Path(out_root).glob(f"*/{METRICS_NAME}"))]


def remeasure_latency(metrics: Sequence[Mapping[str, Any]], device_names: Sequence[str], rounds: int = 3,
                      devices_section: Mapping | None = None, timing: Mapping | None = None) -> dict[str, dict]:
    """Time every model's ``model.onnx`` again, interleaved: ``rounds`` passes over all the
    models per device, median per model. Latencies written when each model was trained
    were taken at different times; on a shared machine only figures taken side by side
    compare. Returns ``{name: {device: median_ms}}`` (unusable devices are left out)."""
    profiles = load_profiles(devices_section)
    config = TimingConfig.from_dict(dict(timing or {}))
    samples: dict[tuple[str, str], list[float]] = {}
    for device in device_names:
        profile = get_profile(device, profiles)
        if not check_usable(profile).usable:
            continue
        for _ in range(rounds):
            for m in metrics:
                shape = m["exports"]["input_shape"]
                ms = measure_onnx(m["exports"]["onnx"], shape, profile, config).median_ms
                samples.setdefault((m["name"], device), []).append(ms)
    out: dict[str, dict] = {}
    for (name, device), values in samples.items():
        out.setdefault(name, {})[device] = statistics.median(values)
    return out


def comparison_table(metrics: Sequence[Mapping[str, Any]], device: str | None = None,
                     latency: Mapping[str, Mapping[str, float]] | None = None):
    """Table 3 measured: one row per model with init, predicted / inherited / fine-tuned
    top-1, params, MACs and latency per device (``device`` only, if given), plus
    ``<device>_vs_mobilenetv2`` when ``mobilenetv2_100`` is among them. Latency comes from
    ``latency`` (e.g. :func:`remeasure_latency`) when given, else from each metrics.json.
    A DataFrame."""
    rows = []
    for m in metrics:
        row = {"name": m["name"], "init": m["init"], "predicted": m.get("predicted_accuracy"),
               "inherited": (m.get("inherited") or {}).get("top1"), "finetuned": m["finetuned"]["top1"],
               "params_M": m["params"] / 1e6, "macs_M": m["macs"] / 1e6}
        measured = latency[m["name"]] if latency is not None else {
            dev: lat["median_ms"] for dev, lat in m["latency_ms"].items() if "median_ms" in lat}
        for dev, ms in measured.items():
            if device is None or dev == device:
                row[f"{dev}_ms"] = ms
        rows.append(row)
    frame = pd.DataFrame(rows)
    reference = frame[frame["name"] == TIMM_BASELINES[0]]
    if not reference.empty:
        for column in [c for c in frame.columns if c.endswith("_ms")]:
            frame[column.replace("_ms", "_vs_mobilenetv2")] = frame[column] / float(reference[column].iloc[0])
    return frame
