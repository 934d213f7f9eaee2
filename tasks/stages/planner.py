"""The plan: every step of the pipeline for a params file, in an order that respects the DAG."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from nas_core.layout import DATA_ROOT, METRICS, Layout
from tasks.stages.common import (controlled_runs, equal_budget_baselines, finetune_baselines, pipeline_section,
                                 resolve_model, search_devices, search_runs)

# Every stage, in the registry's order (tasks.stages.registry.STAGES; a test keeps the two equal):
# what `scan-edge stage` offers without importing the stage modules' libraries.
STAGE_NAMES = ("dataset", "supernet", "pairs", "predictor", "runtime", "lut", "calibration", "baselines",
               "recalibration", "search", "finetune", "controls", "transfer", "detection", "report")


@dataclasses.dataclass(frozen=True)
class Step:
    """One stage run of the pipeline: ``STAGES[stage].function(params, **options, root=...)``.

    ``inputs`` are the artifacts it reads (their content is part of its Prefect cache key),
    ``outputs`` the ones it writes (a missing one forces a re-run). ``id`` is the DVC stage
    name (``lut@ort_cpu_fp32``, ``search@ort_cpu_fp32-1.0``, ...).
    """

    stage: str
    id: str
    options: tuple[tuple[str, Any], ...] = ()
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()

    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


def pipeline_steps(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> list[Step]:
    """Every step of the pipeline for these params, in an order that respects the DAG."""
    L = Layout(root)
    devices = search_devices(params)
    runs = search_runs(params)
    lut = {d: L.lut_paths(d) for d in devices}
    steps = [
        Step("dataset", "dataset", outputs=(L.manifest,)),
        Step("supernet", "supernet", inputs=(L.manifest,), outputs=(L.supernet,)),
        Step("pairs", "pairs", inputs=(L.supernet, L.manifest), outputs=(L.pairs,)),
        Step("predictor", "predictor", inputs=(L.pairs,),
             outputs=(L.predictor, L.predictor_metrics, L.predictor_figure)),
    ]
    for d in devices:
        options = (("device", d),)
        steps += [
            Step("runtime", f"runtime@{d}", options, outputs=(L.runtime(d),)),
            Step("lut", f"lut@{d}", options, inputs=(L.runtime(d),), outputs=(lut[d].lut,)),
            Step("baselines", f"baselines@{d}", options, inputs=(L.runtime(d),), outputs=(L.baselines(d),)),
            Step("calibration", f"calibration@{d}", options, inputs=(lut[d].lut, L.baselines(d)),
                 outputs=(lut[d].fit, lut[d].calibration)),
        ]
    # The second calibration round (on the predictor's searched subnets): what the searches read.
    # Each device's comes just before its first search, so that search (and the fine-tune of what
    # it finds) need not wait for every device's round.
    refit = {d: lut[d].second_round() for d in devices}

    def recalibrations(wanted) -> list[Step]:
        fresh = [d for d in wanted if not any(s.id == f"recalibration@{d}" for s in steps)]
        return [Step("recalibration", f"recalibration@{d}", (("device", d),),
                     (lut[d].lut, lut[d].fit, lut[d].calibration, L.baselines(d), L.predictor),
                     (refit[d].fit, refit[d].calibration)) for d in fresh]

    for run in runs:
        steps += recalibrations(run.devices)
        # DVC's matrix names: search@<device>-<k>, search-params@<device>-<k>-<M>
        matrix = f"{run.devices[0]}-{run.target.removesuffix('x')}"
        dvc_id = f"search@{matrix}" if run.params_m is None else f"search-params@{matrix}-{run.params_m}"
        reads = (L.predictor, *[p for dev in run.devices
                                for p in (lut[dev].lut, lut[dev].search_fit, L.baselines(dev))])
        steps.append(Step("search", dvc_id, (("devices", run.devices), ("target", run.target),
                                             ("params_m", run.params_m)), reads,
                          (L.search_summary(run.key),)))
        steps.append(Step("finetune", dvc_id.replace("search", "finetune", 1), (("name", run.model_name),),
                          (L.search_summary(run.key), L.supernet, L.manifest),
                          (L.finetune_metrics(run.model_name),)))
    steps += recalibrations(devices)  # a device no search runs on (none in the params profiles)
    for name, init in finetune_baselines(params).items():
        reads = (L.manifest,) + ((L.supernet,) if init == "supernet" else ())
        steps.append(Step("finetune", f"finetune-baseline@{name}", (("name", name),), reads,
                          (L.finetune_metrics(name),)))
    for name in equal_budget_baselines(params):  # from scratch, as many images as ours (the supernet's log says)
        steps.append(Step("finetune", f"finetune-equal-budget@{name.removesuffix('_equal_budget')}", (("name", name),),
                          (L.manifest, L.supernet), (L.finetune_metrics(name),)))
    # Random-architecture controls (always a step, so dvc.yaml's is always planned; with
    # controls.count 0 it writes an empty summary).
    controlled = controlled_runs(params)
    reads = [L.supernet, L.manifest, L.predictor, *[L.search_summary(r.key) for r in controlled],
             *[p for r in controlled for dev in r.devices for p in (lut[dev].lut, lut[dev].search_fit,
                                                                   L.baselines(dev))]]
    steps.append(Step("controls", "controls", inputs=tuple(dict.fromkeys(reads)), outputs=(L.controls_summary,)))
    pipeline = pipeline_section(params)
    for stage, key, metrics in (("transfer", "transfer_models", L.transfer_metrics),
                                ("detection", "detection_models", L.detection_metrics)):
        models = [resolve_model(m, params, L, check=False) for m in pipeline.get(key) or []]
        reads = tuple(Path(m) / METRICS for m in models if isinstance(m, Path))
        steps.append(Step(stage, stage, inputs=reads, outputs=(metrics,)))
    reported = ("predictor", "calibration", "baselines", "recalibration", "search", "finetune", "controls", "transfer",
                "detection")
    read = tuple(p for step in steps if step.stage in reported for p in step.outputs if p.suffix != ".pt")
    steps.append(Step("report", "report", inputs=read, outputs=(L.report_readme,)))
    return steps


def find_step(stage: str, options: Mapping[str, Any], params: Mapping[str, Any],
              root: str | os.PathLike = DATA_ROOT) -> Step:
    """The planned step of ``stage`` with these options (what ``scan-edge stage`` runs), or an
    ad-hoc one (e.g. a search the params do not list) with no declared inputs or outputs."""
    wanted = {k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()}
    for step in pipeline_steps(params, root):
        if step.stage == stage and all(step.kwargs().get(k) == v for k, v in wanted.items()):
            return step
    return Step(stage, stage, tuple(wanted.items()))
