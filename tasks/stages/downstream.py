"""What follows a search: fine-tuning (ours and baselines), transfer (Table 5), detection (Table 6)."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from nas_core import detection
from nas_core import finetune as finetuning
from nas_core.data.coco import find_coco_folder
from nas_core.data.synthetic import generate_classification
from nas_core.io import read_json, write_json
from nas_core.layout import DATA_ROOT, METRICS, Layout
from nas_core.transfer import TransferConfig, transfer
from tasks import stage_lock
from tasks.stages.common import (EQUAL_BUDGET, Paths, _require, equal_budget_baselines, finetune_baselines,
                                 finetune_seeds, input_digest, pipeline_section, resolve_model, resume_or_restart,
                                 section)
from tasks.stages.latency import _access_of
from tasks.stages.search import searched_arch
from tasks.stages.space import search_space
from tasks.stages.training import _launch_ranks, _restart_flag, _torchrun_nproc


def stage_finetune(params: Mapping[str, Any], name: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Fine-tune a searched model (``ours_<run>``) or train a baseline the same way
    (``pipeline.finetune_baselines``), export it and measure it on its devices (``finetune:``;
    :func:`run_finetune`).

    With several ``finetune.seeds`` the first seed's run is the model (``finetune/<name>/``,
    what transfer and detection use) and each other seed trains the same model again in
    ``finetune/<name>/seeds/seed<s>/`` (not re-timed: the architecture's latency does not
    depend on the seed); ``metrics.json`` then gains ``seeds``: every seed's top-1, mean and std.
    """
    layout = Layout(root)
    if name.startswith("ours_"):
        ref, init = str(searched_arch(layout, name.removeprefix("ours_"))), "supernet"
    elif name in equal_budget_baselines(params):
        ref, init = name.removesuffix(EQUAL_BUDGET), "scratch"
        _require(layout.supernet, "the supernet, whose training images the equal budget counts")
        params = with_finetune(params, epochs=equal_budget_epochs(params, layout))
    else:
        baselines = finetune_baselines(params)
        if name not in baselines:
            raise KeyError(f"{name!r} is neither a searched model (ours_<run>) nor in pipeline.finetune_baselines "
                           f"({', '.join(baselines) or 'none'})")
        ref, init = name, baselines[name]
    counted = init == "supernet" or name in equal_budget_baselines(params)  # the equal budget reads its log
    inputs = [layout.dataset, *([layout.supernet] if counted else []),
              *([Path(ref)] if ref.endswith(".json") else [])]
    for path in inputs:
        _require(path, "an input of the fine-tune stage")
    seeds = finetune_seeds(params)
    identity = {"finetune": section(params, "finetune"), "ref": ref, "init": init,
                "devices": section(params, "devices"), "inputs": input_digest(inputs)}
    resume = resume_or_restart(layout, f"finetune@{name}", identity)
    first = with_finetune(params, seed=seeds[0]) if seeds[0] != section(params, "finetune").get("seed", 0) else params
    finetune_once(first, ref, layout, out_root=layout.finetune_root, name=name, init=init, resume=resume)
    if len(seeds) > 1:
        repeats = [finetune_once(with_finetune(params, seed=s, measure=False, export_openvino=False,
                                               export_tensorrt=False), ref, layout,
                                 out_root=layout.finetune_seeds_root(name), name=f"seed{s}", init=init, resume=resume)
                   for s in seeds[1:]]
        metrics = read_json(layout.finetune_metrics(name))
        top1 = [metrics["finetuned"]["top1"], *[m["finetuned"]["top1"] for m in repeats]]
        metrics["seeds"] = seed_summary(seeds, top1, [str(layout.finetune_metrics(name)),
                                                      *[str(layout.finetune_seeds_root(name) / f"seed{s}" / METRICS)
                                                        for s in seeds[1:]]])
        write_json(layout.finetune_metrics(name), metrics)
    return {"finetune": layout.finetune_dir(name), "metrics": layout.finetune_metrics(name)}


def equal_budget_epochs(params: Mapping[str, Any], layout: Layout) -> int:
    """Epochs of ``finetune:`` that make a model from scratch see as many training images as
    ours in all: the supernet's (its ``train_log.parquet``: every image counted once, though each
    sandwich step trains several subnets on it) plus ours' fine-tuning."""
    finetune = finetuning.FinetuneConfig.from_params(section(params, "finetune"))
    shared = finetuning.supernet_images(layout.supernet)
    if shared is None:
        raise FileNotFoundError(f"{layout.supernet_log}: no supernet training log to count its images")
    per_epoch = finetune.batch_size * (finetune.steps_per_epoch or train_batches(layout, finetune.batch_size))
    return max(finetune.epochs, math.ceil(finetune.epochs + shared / per_epoch))


def train_batches(layout: Layout, batch_size: int) -> int:
    """Full batches per pass over the dataset's training split (the trainer drops the last one)."""
    manifest = pd.read_parquet(layout.manifest, columns=["split"])
    return max(1, int((manifest["split"] == "train").sum()) // batch_size)


def with_finetune(params: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """``params`` with ``finetune:`` keys replaced (a seed, no measurement, no exports)."""
    return {**params, "finetune": {**section(params, "finetune"), **changes}}


def seed_summary(seeds: list[int], top1: list[float], sources: list[str]) -> dict[str, Any]:
    """``metrics.json``'s ``seeds``: each seed's fine-tuned top-1, their mean and sample std."""
    mean = sum(top1) / len(top1)
    std = (sum((t - mean) ** 2 for t in top1) / (len(top1) - 1)) ** 0.5 if len(top1) > 1 else None
    return {"seeds": list(seeds), "top1": list(top1), "top1_mean": mean, "top1_std": std, "sources": sources}


def finetune_once(params: Mapping[str, Any], ref: str, layout: Layout, *, out_root: Path, name: str, init: str,
                  resume: bool) -> dict[str, Any]:
    """One fine-tune of ``ref`` into ``out_root/name`` with ``params``' ``finetune:`` (under
    ``torchrun`` when ``pipeline.torchrun.nproc_per_node`` > 1); returns its metrics. A finished
    unmeasured run of the same inputs (``resume``, ``finetune.measure`` false and its
    ``metrics.json`` there) is read back, not redone; a measured one is resumed (its training is
    done) and measured again, which is how a runtime upgrade re-times it."""
    metrics_path = Path(out_root) / name / METRICS
    if resume and metrics_path.exists() and not section(params, "finetune").get("measure", True):
        return read_json(metrics_path)
    nproc = _torchrun_nproc(params)
    if nproc > 1:  # every rank runs `scan-edge finetune` (run_finetune); rank 0 exports and measures
        _launch_ranks(params, nproc, ["finetune", ref, "--data", str(layout.dataset), "--supernet", str(layout.supernet),
                                      "--out", str(out_root), "--name", name, "--init", init,
                                      *_restart_flag(resume)], layout)
        return read_json(metrics_path) if metrics_path.exists() else {}  # rank 0 wrote it (unless stubbed)
    return run_finetune(params, ref, data=layout.dataset, supernet=layout.supernet, out_root=out_root,
                        name=name, init=init, resume=resume, overwrite=not resume, progress=sys.stderr.isatty())


def run_finetune(params: Mapping[str, Any], ref: str, *, data: str | os.PathLike, supernet: str | os.PathLike | None,
                 out_root: str | os.PathLike, name: str | None = None, init: str | None = None,
                 predicted_accuracy: float | None = None, resume: bool = True, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``ref`` with ``finetune:`` and time it on ``devices:`` profiles
    (``nas_core.finetune.finetune``): the CPU lock is held shared while it trains and
    exclusively while it measures. An architecture trained from scratch is checked against the
    space of ``search_space:`` (one inherited from the supernet, against the supernet's).
    Returns the metrics. The work of the fine-tune stage and of ``scan-edge finetune``."""
    return finetuning.finetune(ref, data_root=data, supernet=supernet, name=name, out_root=out_root,
                               config=finetuning.FinetuneConfig.from_params(section(params, "finetune")), init=init,
                               predicted_accuracy=predicted_accuracy, devices_section=section(params, "devices"),
                               resume=resume, overwrite=overwrite, progress=progress, lock=stage_lock,
                               access_of=_access_of(params, Path(out_root).parent), space=search_space(params))


def _downstream_data(given: str | os.PathLike | None, generated: Path, make: Callable[[Path], Any]) -> Path:
    """A downstream dataset: the given folder, or the generated one (made if needed)."""
    if given:
        path = Path(given)
        _require(path, "the downstream dataset named in params (or on the command line)")
        return path
    make(generated)
    return generated


def stage_transfer(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Transfer ``pipeline.transfer_models`` to a downstream classification set (``transfer:``; Table 5).

    The data: ``pipeline.transfer_data`` (an image folder, e.g. ``../shared/datasets/sign-digits``)
    or, when null, a generated set (``pipeline.transfer_synthetic``: ``generate_classification``
    arguments) in ``transfer/dataset``. Writes ``transfer/runs/<model>.json`` and a summary
    ``transfer/metrics.json``.
    """
    layout = Layout(root)
    pipeline = pipeline_section(params)
    synthetic = dict(pipeline.get("transfer_synthetic") or {})
    data = _downstream_data(pipeline.get("transfer_data"), layout.transfer_dataset,
                            lambda out: generate_classification(out, overwrite=True, **synthetic))
    models = {label: resolve_model(label, params, layout) for label in pipeline.get("transfer_models") or []}
    runs = layout.transfer_runs
    identity = {"transfer": section(params, "transfer"), "data": input_digest([data]),
                "models": input_digest(Path(m) / "model.pt" for m in models.values())}
    resume = resume_or_restart(layout, "transfer", identity)
    results = {}
    nproc = _torchrun_nproc(params)
    for label, model in models.items():
        if nproc > 1:  # every rank runs `scan-edge transfer` (run_transfer); rank 0 writes the record
            _launch_ranks(params, nproc, ["transfer", str(model), "--data", str(data), "--out", str(runs),
                                          "--name", label, *_restart_flag(resume)], layout)
        else:
            run_transfer(params, model, data, out_root=runs, name=label, resume=resume, overwrite=not resume,
                         progress=sys.stderr.isatty())
        results[label] = read_json(runs / f"{label}.json")
    summary = {label: {k: r.get(k) for k in ("top1", "top5", "params", "epochs", "resolution")}
               | {"source": str(runs / f"{label}.json"), "dataset": str(data)} for label, r in results.items()}
    write_json(layout.transfer_metrics, summary)
    return {"runs": runs, "metrics": layout.transfer_metrics}


def run_transfer(params: Mapping[str, Any], model: str | os.PathLike, data: str | os.PathLike, *,
                 out_root: str | os.PathLike, name: str | None = None, supernet: str | os.PathLike | None = None,
                 resume: bool = True, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Transfer ``model`` to the classification set ``data`` with ``transfer:``
    (``nas_core.transfer.transfer``), holding the CPU lock shared; returns its record. The
    work of the transfer stage (per model) and of ``scan-edge transfer``."""
    with stage_lock("shared"):
        return transfer(str(model), data, name=name, out_root=out_root,
                        config=TransferConfig.from_params(section(params, "transfer")), supernet=supernet,
                        resume=resume, overwrite=overwrite, progress=progress)


def stage_detection(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """SSDLite with each of ``pipeline.detection_models`` as backbone (``detection:``; Table 6).

    The data: ``pipeline.detection_data`` (a COCO folder) or the generated shapes
    (``detection.synthetic``) in ``detection/dataset``. Measures the detectors' latency
    (:func:`run_detection`). Writes ``detection/runs/<model>/`` and a summary
    ``detection/metrics.json``.
    """
    layout = Layout(root)
    pipeline = pipeline_section(params)
    data = detection_dataset(params, pipeline.get("detection_data"), layout.detection_dataset)
    models = {label: resolve_model(label, params, layout) for label in pipeline.get("detection_models") or []}
    runs = layout.detection_runs
    identity = {"detection": section(params, "detection"), "data": _detection_digest(data),
                "models": input_digest(Path(m) / "model.pt" for m in models.values()),
                "devices": section(params, "devices")}
    resume = resume_or_restart(layout, "detection", identity)
    summary = {}
    nproc = _torchrun_nproc(params)
    for label, model in models.items():
        if nproc > 1:  # every rank runs `scan-edge detect` (run_detection); rank 0 evaluates and measures
            _launch_ranks(params, nproc, ["detect", str(model), "--data", str(data), "--out", str(runs),
                                          "--name", label, *_restart_flag(resume)], layout)
            metrics = read_json(runs / label / "metrics.json")
        else:
            metrics = run_detection(params, model, data, out_root=runs, name=label, resume=resume,
                                    overwrite=not resume, progress=sys.stderr.isatty())
        summary[label] = {"mAP": metrics["coco"]["mAP"], "mAP50": metrics["coco"]["mAP50"],
                          "params": metrics["params"], "resolution": metrics["resolution"],
                          "latency_ms": {d: v.get("median_ms") for d, v in metrics["latency_ms"].items()},
                          "source": str(runs / label / "metrics.json")}
    write_json(layout.detection_metrics, summary)
    return {"runs": runs, "metrics": layout.detection_metrics}


def _detection_digest(data: Path) -> dict[str, str]:
    """What a detection run depends on in its data folder: both annotation files (either layout)."""
    folder = find_coco_folder(data)
    return input_digest([folder.train_json, folder.test_json])


def detection_dataset(params: Mapping[str, Any], given: str | os.PathLike | None, generated: Path) -> Path:
    """The COCO folder ``given``, or else the generated shapes of ``detection.synthetic`` in
    ``generated`` (made on first use)."""
    config = detection.DetectionConfig.from_params(section(params, "detection"))
    return _downstream_data(given, generated, lambda out: detection.ensure_synthetic_detection(out, config))


def run_detection(params: Mapping[str, Any], model: str | os.PathLike, data: str | os.PathLike, *,
                  out_root: str | os.PathLike, name: str | None = None, supernet: str | os.PathLike | None = None,
                  resume: bool = True, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """SSDLite with the backbone ``model`` on the COCO folder ``data``, with ``detection:``,
    timed on ``devices:`` profiles (``nas_core.detection.run_detection``): the CPU lock is
    held shared while it trains and exclusively while it measures. Returns the metrics. The
    work of the detection stage (per model) and of ``scan-edge detect``."""
    return detection.run_detection(str(model), data, out_root=out_root, name=name,
                                   config=detection.DetectionConfig.from_params(section(params, "detection")),
                                   supernet=supernet, devices_section=section(params, "devices"), resume=resume,
                                   overwrite=overwrite, progress=progress, lock=stage_lock,
                                   access_of=_access_of(params, Path(out_root).parent.parent))
