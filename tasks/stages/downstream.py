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
                                 section, stage_seeds)
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
    return with_section(params, "finetune", **changes)


def with_section(params: Mapping[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    """``params`` with keys of the section ``name`` replaced."""
    return {**params, name: {**section(params, name), **changes}}


def seed_summary(seeds: list[int], values: list[float], sources: list[str], metric: str = "top1") -> dict[str, Any]:
    """A summary's ``seeds``: each seed's ``metric`` (fine-tuned or transfer top-1, detection
    mAP), their mean and sample std (None with one seed)."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return {"seeds": list(seeds), metric: list(values), f"{metric}_mean": mean, f"{metric}_std": std,
            "sources": sources}


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
    arguments) in ``transfer/dataset``. Each model is transferred once per ``transfer.seeds``
    (the seed of its new head and data order): the first seed's run is
    ``transfer/runs/<model>.json``, the others' ``transfer/runs/seeds/seed<s>/<model>.json``.
    Writes a summary ``transfer/metrics.json``: the first seed's record and ``seeds`` (every
    seed's top-1, mean and std; Table 5).
    """
    layout = Layout(root)
    pipeline = pipeline_section(params)
    synthetic = dict(pipeline.get("transfer_synthetic") or {})
    data = _downstream_data(pipeline.get("transfer_data"), layout.transfer_dataset,
                            lambda out: generate_classification(out, overwrite=True, **synthetic))
    models = {label: resolve_model(label, params, layout) for label in pipeline.get("transfer_models") or []}
    seeds = stage_seeds(params, "transfer")
    identity = {"transfer": section(params, "transfer"), "data": input_digest([data]),
                "models": input_digest(Path(m) / "model.pt" for m in models.values())}
    resume = resume_or_restart(layout, "transfer", identity)
    summary = {}
    for label, model in models.items():
        folders = [layout.transfer_runs if index == 0 else layout.transfer_seed_runs(seed)
                   for index, seed in enumerate(seeds)]
        records = [transfer_once(with_section(params, "transfer", seed=seed), model, data, layout, out_root=folder,
                                 label=label, resume=resume) for seed, folder in zip(seeds, folders)]
        sources = [str(folder / f"{label}.json") for folder in folders]
        first = records[0]
        summary[label] = {k: first.get(k) for k in ("top1", "top5", "params", "epochs", "resolution")} | {
            "source": sources[0], "dataset": str(data),
            "seeds": seed_summary(seeds, [r["top1"] for r in records], sources)}
    write_json(layout.transfer_metrics, summary)
    return {"runs": layout.transfer_runs, "metrics": layout.transfer_metrics}


def transfer_once(params: Mapping[str, Any], model: str | os.PathLike, data: Path, layout: Layout, *,
                  out_root: Path, label: str, resume: bool) -> dict[str, Any]:
    """One transfer of ``model`` with ``params``' ``transfer:`` into ``out_root`` (under
    ``torchrun`` when ``pipeline.torchrun.nproc_per_node`` > 1); returns its record."""
    nproc = _torchrun_nproc(params)
    if nproc > 1:  # every rank runs `scan-edge transfer` (run_transfer); rank 0 writes the record
        _launch_ranks(params, nproc, ["transfer", str(model), "--data", str(data), "--out", str(out_root),
                                      "--name", label, *_restart_flag(resume)], layout)
    else:
        run_transfer(params, model, data, out_root=out_root, name=label, resume=resume, overwrite=not resume,
                     progress=sys.stderr.isatty())
    return read_json(Path(out_root) / f"{label}.json")


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
    (``detection.synthetic``) in ``detection/dataset``. Each detector is trained once per
    ``detection.seeds``: the first seed's run is ``detection/runs/<model>/``, where its latency is
    measured (:func:`run_detection`); the others' are ``detection/runs/seeds/seed<s>/<model>/``,
    not re-timed (the seed does not change the network). Writes a summary
    ``detection/metrics.json``: the first seed's mAP and latency and ``seeds`` (every seed's
    mAP, mean and std; Table 6).
    """
    layout = Layout(root)
    pipeline = pipeline_section(params)
    data = detection_dataset(params, pipeline.get("detection_data"), layout.detection_dataset)
    models = {label: resolve_model(label, params, layout) for label in pipeline.get("detection_models") or []}
    seeds = stage_seeds(params, "detection")
    identity = {"detection": section(params, "detection"), "data": _detection_digest(data),
                "models": input_digest(Path(m) / "model.pt" for m in models.values()),
                "devices": section(params, "devices")}
    resume = resume_or_restart(layout, "detection", identity)
    summary = {}
    for label, model in models.items():
        folders = [layout.detection_runs if index == 0 else layout.detection_seed_runs(seed)
                   for index, seed in enumerate(seeds)]
        runs = [detect_once(_detection_seed(params, seed, measure=index == 0), model, data, layout,
                            out_root=folder, label=label, resume=resume)
                for index, (seed, folder) in enumerate(zip(seeds, folders))]
        sources = [str(folder / label / METRICS) for folder in folders]
        first = runs[0]
        summary[label] = {"mAP": first["coco"]["mAP"], "mAP50": first["coco"]["mAP50"],
                          "params": first["params"], "resolution": first["resolution"],
                          "latency_ms": {d: v.get("median_ms") for d, v in first["latency_ms"].items()},
                          "source": sources[0],
                          "seeds": seed_summary(seeds, [m["coco"]["mAP"] for m in runs], sources, metric="mAP")}
    write_json(layout.detection_metrics, summary)
    return {"runs": layout.detection_runs, "metrics": layout.detection_metrics}


def _detection_seed(params: Mapping[str, Any], seed: int, measure: bool) -> dict[str, Any]:
    """``params`` for one detection seed; a repeat (``measure`` false) is timed on no device."""
    return with_section(params, "detection", seed=seed, **({} if measure else {"devices": []}))


def detect_once(params: Mapping[str, Any], model: str | os.PathLike, data: Path, layout: Layout, *,
                out_root: Path, label: str, resume: bool) -> dict[str, Any]:
    """One detector with the backbone ``model`` and ``params``' ``detection:`` in
    ``out_root/label`` (under ``torchrun`` when ``pipeline.torchrun.nproc_per_node`` > 1);
    returns its metrics."""
    nproc = _torchrun_nproc(params)
    if nproc > 1:  # every rank runs `scan-edge detect` (run_detection); rank 0 evaluates and measures
        _launch_ranks(params, nproc, ["detect", str(model), "--data", str(data), "--out", str(out_root),
                                      "--name", label, *_restart_flag(resume)], layout)
        return read_json(Path(out_root) / label / METRICS)
    return run_detection(params, model, data, out_root=out_root, name=label, resume=resume, overwrite=not resume,
                         progress=sys.stderr.isatty(), root=layout.root)


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
                  resume: bool = True, overwrite: bool = False, progress: bool = True,
                  root: str | os.PathLike | None = None) -> dict[str, Any]:
    """SSDLite with the backbone ``model`` on the COCO folder ``data``, with ``detection:``,
    timed on ``devices:`` profiles (``nas_core.detection.run_detection``; a board's through the
    bundles under ``root``, default the data root above ``out_root``, as ``detection/runs/``):
    the CPU lock is held shared while it trains and exclusively while it measures. Returns the
    metrics. The work of the detection stage (per model) and of ``scan-edge detect``."""
    return detection.run_detection(str(model), data, out_root=out_root, name=name,
                                   config=detection.DetectionConfig.from_params(section(params, "detection")),
                                   supernet=supernet, devices_section=section(params, "devices"), resume=resume,
                                   overwrite=overwrite, progress=progress, lock=stage_lock,
                                   access_of=_access_of(params, Path(root or Path(out_root).parent.parent)))
