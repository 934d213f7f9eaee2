"""The controls stage: random architectures at the same latency, trained like ours (issue 16).

For each controlled search (``controls.searches``: the first, or all) it draws
``controls.count`` subnets from the search space's uniform distribution conditioned on the
search's constraints (``nas_core.controls``, Gibbs sampling: no uniform draw reaches the
targets): the estimated latency in the target window and the params bound,
then each draw measured on the device the way the search's on-device check measures
(``nas_core.search_run.DeviceMeasure`` through the device's access, so a board's draws are
timed on the board) and kept only when measured within ``[-tolerance, 0]`` of the target
(``search.refine.tolerance``). Each control inherits its weights from the same supernet and is
fine-tuned with the same recipe, budget and seeds as ours (``finetune:``, ``finetune.seeds``
unless ``controls.seeds``), without re-timing (its latency was measured when it was drawn).

With ``controls.window_subnets`` > 0 it also scores the accuracy predictor where the search
uses it: that many more uniform subnets of the window (estimated), the controls and ours,
evaluated with inherited weights as the pairs are (``pairs:``), against the predictor's
scores (Spearman, top-k precision; ``nas_core.controls.window_quality``).

Writes ``controls/<run>/`` (``draws.json``, ``random<i>.arch.json``, ``random<i>/seed<s>/``
fine-tunes, ``window.parquet``) and ``controls/summary.json``::

    {"seeds": [...], "config": {...}, "runs": {<run>: {
        "run", "targets_ms", "tolerance", "params_m", "sampling": {rounds, sampler, sweeps, genomes_evaluated,
        measured, accepted, requested, measured_on_device, message},
        "draws": [{arch_id, estimated_ms, measured_ms, within, round, params}],
        "controls": [{name, arch_id, compact, arch_json, predicted, estimated_ms, measured_ms,
                      params, inherited_top1, seeds, top1, top1_mean, top1_std, sources}],
        "predictor_window": {n, spearman, top_k, top_k_precision, chance, target,
                             ours_inherited_top1, ours_percentile, window_ms, source} | null,
        "seconds": {draw, finetune, window}}}}
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from nas_core.accuracy_predictor import score_to_target
from nas_core.classifiers import resolve_arch
from nas_core.controls import (ControlsConfig, draw_controls, mean_std, sample_in_window, window_constraints,
                               window_quality)
from nas_core.io import read_json, write_json, write_parquet
from nas_core.layout import DATA_ROOT, Layout
from nas_core.pairs import PairsConfig, SubnetEvaluator
from nas_core.search_algorithm import Candidate
from nas_core.search_refine import RefineConfig
from nas_core.search_run import DeviceMeasure
from tasks import stage_lock
from tasks.stages.common import (Paths, SearchRun, _require, _say, controlled_runs, finetune_seeds, input_digest,
                                 resume_or_restart, section)
from tasks.stages.downstream import finetune_once, with_finetune
from tasks.stages.latency import _measurable, device_access
from tasks.stages.search import search_setup, searched_arch


def stage_controls(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Random-architecture controls of the controlled searches (module docstring)."""
    layout = Layout(root)
    config = ControlsConfig.from_params(section(params, "controls"))
    seeds = list(config.seeds or finetune_seeds(params))
    runs = {}
    for index, run in enumerate(controlled_runs(params)):
        runs[run.key] = control_run(params, config, seeds, run, layout, index)
    write_json(layout.controls_summary, {"seeds": seeds, "config": config.to_dict(), "runs": runs})
    return {"controls": layout.controls_root, "summary": layout.controls_summary}


def control_run(params: Mapping[str, Any], config: ControlsConfig, seeds: Sequence[int], run: SearchRun,
                layout: Layout, index: int = 0) -> dict[str, Any]:
    """Draw, measure and fine-tune the controls of one search; returns its summary entry."""
    summary_path = layout.search_summary(run.key)
    _require(summary_path, f"the search {run.key} (scan-edge stage search)")
    for path in (layout.supernet, layout.manifest, layout.predictor):
        _require(path, "an input of the controls stage")
    summary = read_json(summary_path)
    targets = {d: float(ms) for d, ms in summary["targets_ms"].items()}
    tolerance = RefineConfig.from_dict(section(params, "search").get("refine")).tolerance
    out = layout.controls_dir(run.key)
    fits = {d: layout.lut_paths(d).search_fit for d in run.devices}
    identity = {"controls": config.to_dict(), "seeds": list(seeds), "finetune": section(params, "finetune"),
                "pairs": section(params, "pairs"), "devices": section(params, "devices"), "tolerance": tolerance,
                "inputs": input_digest([summary_path, layout.supernet, layout.manifest, layout.predictor,
                                        *[p for d in run.devices for p in (layout.lut_paths(d).lut,
                                                                           fits[d])]])}
    resume = resume_or_restart(layout, f"controls@{run.key}", identity)
    if not resume and out.exists():
        shutil.rmtree(out)  # another run's draws and fine-tunes: never mixed with these
    out.mkdir(parents=True, exist_ok=True)
    setup = search_setup(params, list(run.devices), predictor=layout.predictor, lut_dir=layout.lut_dir, out_dir=out,
                         fits=fits)
    max_params = None if run.params_m is None else float(run.params_m) * 1e6
    draws_path = out / "draws.json"
    started = time.perf_counter()
    if resume and draws_path.exists():
        drawn = read_json(draws_path)
    else:
        drawn = _draw(params, config, setup, run, targets, tolerance, max_params, summary, layout, index)
        write_json(draws_path, drawn)
    _say(f"controls {run.key}: {drawn['sampling']['message']}")
    seconds = {"draw": round(time.perf_counter() - started, 1)}
    started = time.perf_counter()
    accepted = [d for d in drawn["draws"] if d["within"]]
    genomes = np.array([d["genome"] for d in accepted], dtype=np.int64).reshape(len(accepted), len(setup.space.genes))
    predicted = setup.predictor.predict_genomes(genomes) if len(accepted) else np.empty(0)
    controls = []
    for i, (draw, score) in enumerate(zip(accepted, predicted)):
        arch = setup.space.decode(np.asarray(draw["genome"]))
        name = f"random{i}"
        arch_json = out / f"{name}.arch.json"
        write_json(arch_json, {"name": f"{name}_{run.key}", "arch": arch.to_dict(), "arch_id": arch.arch_id,
                               "compact": arch.compact(), "predicted_accuracy": float(score),
                               "estimated_ms": draw["estimated_ms"], "measured_ms": draw["measured_ms"],
                               "control_of": run.key})
        runs = [finetune_once(with_finetune(params, seed=s, measure=False, export_openvino=False,
                                            export_tensorrt=False), str(arch_json), layout,
                              out_root=out / name, name=f"seed{s}", init="supernet", resume=resume) for s in seeds]
        top1 = [r["finetuned"]["top1"] for r in runs]
        mean, std = mean_std(top1)
        controls.append({"name": f"{name}_{run.key}", "arch_id": arch.arch_id, "compact": arch.compact(),
                         "arch_json": str(arch_json), "predicted": float(score), "estimated_ms": draw["estimated_ms"],
                         "measured_ms": draw["measured_ms"], "params": runs[0]["params"], "macs": runs[0]["macs"],
                         "inherited_top1": (runs[0].get("inherited") or {}).get("top1"), "seeds": list(seeds),
                         "top1": top1, "top1_mean": mean, "top1_std": std,
                         "train_images": (runs[0].get("train") or {}).get("images"),
                         "supernet_images": (runs[0].get("supernet") or {}).get("images"),
                         "sources": [str(out / name / f"seed{s}" / "metrics.json") for s in seeds]})
    seconds["finetune"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    window = _predictor_window(params, config, setup, run, targets, tolerance, max_params, drawn, layout, out, index)
    seconds["window"] = round(time.perf_counter() - started, 1)
    return {"run": run.key, "targets_ms": targets, "tolerance": tolerance, "params_m": run.params_m,
            "sampling": drawn["sampling"], "draws": drawn["draws"], "controls": controls,
            "predictor_window": window, "seconds": seconds}


def _draw(params, config: ControlsConfig, setup, run: SearchRun, targets, tolerance, max_params, summary,
          layout: Layout, index: int) -> dict[str, Any]:
    """The draws of one search (``nas_core.controls.draw_controls``), measured where the device runs."""
    measure_fn = None
    if all(_measurable(params, d) is not None for d in run.devices):
        measurer = DeviceMeasure(setup, {d: device_access(params, d, layout.root) for d in run.devices},
                                 f"controls-{index}", stage_lock)
        measure_fn = lambda genome: measurer(Candidate(tuple(int(g) for g in genome), 0.0, {}))  # noqa: E731
    estimated, measured = summary.get("latency_ms") or {}, summary.get("measured_ms") or {}
    ratio = {d: measured[d] / estimated[d] for d in targets if measured.get(d) and estimated.get(d)}
    rng = np.random.default_rng([config.sample_seed, index])
    draws, sampling = draw_controls(setup.space, setup.catalog, setup.estimators, targets, config.count, measure_fn,
                                    rng, tolerance=tolerance, max_params=max_params, initial_ratio=ratio,
                                    max_measured=config.measurement_budget, method=config.sampler,
                                    sweeps=config.sweeps, batch=config.batch,
                                    max_draws=config.max_draws, num_classes=setup.num_classes, log=_say)
    records = [{**dataclasses.asdict(d), "arch_id": setup.space.decode(np.asarray(d.genome)).arch_id}
               for d in draws]
    return {"draws": records, "sampling": sampling, "initial_ratio": ratio}


def _predictor_window(params, config: ControlsConfig, setup, run: SearchRun, targets, tolerance, max_params,
                      drawn, layout: Layout, out: Path, index: int) -> dict[str, Any] | None:
    """The predictor on ``window_subnets`` uniform subnets of the window (estimated, through the
    measured / estimated ratio of the draws), the controls and ours, against their inherited
    scores (``window.parquet``)."""
    if not config.window_subnets:
        return None
    measured = [d for d in drawn["draws"] if d["measured_ms"]]
    ratios = {dev: float(np.median([d["measured_ms"][dev] / d["estimated_ms"][dev] for d in measured]))
              if measured else float(drawn.get("initial_ratio", {}).get(dev) or 1.0) for dev in targets}
    window = {d: (t * (1 - tolerance) / ratios[d], t / ratios[d]) for d, t in targets.items()}  # the whole window
    constraints = window_constraints(setup.catalog, setup.estimators, window, max_params, setup.num_classes)
    taken = {np.ascontiguousarray(d["genome"], dtype=np.int8).tobytes() for d in drawn["draws"]}
    rng = np.random.default_rng([config.sample_seed, index, 1])
    genomes, _ = sample_in_window(setup.space, constraints, config.window_subnets, rng, method=config.sampler,
                                  sweeps=config.sweeps, batch=config.batch, max_draws=config.max_draws, exclude=taken)
    kinds = ["random"] * len(genomes)
    controls = [d["genome"] for d in drawn["draws"] if d["within"]]
    ours = setup.space.encode(resolve_arch(str(searched_arch(layout, run.key)), setup.space)[0])
    genomes = np.concatenate([genomes, np.array(controls, dtype=np.int64).reshape(len(controls), genomes.shape[1]),
                              ours[None]])
    kinds += ["control"] * len(controls) + ["ours"]
    pairs = PairsConfig.from_dict(section(params, "pairs"))
    with stage_lock("shared"):
        evaluator = SubnetEvaluator.from_files(layout.supernet, layout.dataset, pairs)
        results = [evaluator(setup.space.decode(g)) for g in genomes]
        predicted = setup.predictor.predict_genomes(genomes)
    target = setup.predictor.target
    frame = pd.DataFrame({"kind": kinds, "arch_id": [setup.space.decode(g).arch_id for g in genomes],
                          "predicted": predicted, "predicted_target": score_to_target(predicted, target),
                          "top1": [r["top1"] for r in results], "loss": [r["loss"] for r in results]})
    write_parquet(out / "window.parquet", frame, {"run": run.key, "window_ms": window, "target": target})
    score = -frame["loss"] if target == "loss" else frame["top1"]
    uniform = frame["kind"] != "ours"
    quality = window_quality(frame.loc[uniform, "predicted"], score[uniform])
    ours_score = float(score[~uniform].iloc[0])
    beaten = float((score[uniform] < ours_score).mean()) if uniform.any() else float("nan")
    quality_top1 = window_quality(frame.loc[uniform, "predicted"], frame.loc[uniform, "top1"])
    return {**quality, "target": target, "spearman_vs_top1": quality_top1["spearman"],
            "window_ms": {d: list(w) for d, w in window.items()}, "ours_inherited_top1": float(frame["top1"].iloc[-1]),
            "ours_percentile": beaten, "source": str(out / "window.parquet")}
