"""Stand-ins for the pipeline's expensive stages, for end-to-end tests of the doors in other processes.

``python -c "import _fake_stages; ..."`` or the ``scan-edge`` wrapper written by
:func:`write_wrapper` replaces, in ``tasks.stages.STAGES``, every stage but those named in
``FAKE_STAGES_REAL`` (comma-separated, e.g. ``runtime,lut``) with a fake that writes the
step's DVC outputs (``FAKE_STAGES_SPEC``: a JSON file {step id: [outs]}) from a digest of
what the step reads: its params sections, the content of its inputs and, for a device
step, the device's runtime record. So a change upstream propagates as it would, every
output DVC tracks exists, and each run is logged (one step id per line, ``FAKE_STAGES_LOG``).

The search fake writes a real search summary: an architecture sampled from the digest
(``<run>/best.arch.json``), the calibration fake a fit with ``a`` and ``b``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from nas_core.io import file_sha256
from nas_core.search_space import SearchSpace
from tasks import stages

SUFFIXES = {".json", ".parquet", ".pt", ".onnx", ".png", ".md"}


def _digest(step: stages.Step, params: Mapping[str, Any], root: Path) -> str:
    digest = hashlib.sha256(json.dumps(stages.params_for(step.stage, params, step.kwargs()), sort_keys=True,
                                       default=str).encode())
    reads = list(step.inputs)
    for device in stages._step_devices(step.kwargs()):
        reads.append(stages.Layout(root).runtime(device))
    for path in reads:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file).encode() + (file.read_bytes() if file.exists() else b"missing"))
    return digest.hexdigest()


def _write_outputs(step: stages.Step, outs: list[str], digest: str, root: Path) -> None:
    inside = [Path(p) for s in stages.pipeline_steps(_params(), root) for p in (*s.inputs, *s.outputs)]
    for out in map(Path, outs):
        targets = [out] if out.suffix in SUFFIXES else [p for p in inside if out in p.parents] or [out / "out.json"]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps({"step": step.id, "digest": digest}))


def _search_summary(step: stages.Step, digest: str, root: Path) -> None:
    options = step.kwargs()
    run = stages.SearchRun(tuple(options["devices"]), options["target"], options.get("params_m"))
    layout = stages.Layout(root)
    arch = SearchSpace().sample(int(digest[:8], 16))
    arch_json = layout.search_dir(run.key) / "best.arch.json"
    arch_json.write_text(arch.to_json())
    target = 1.0 + int(digest[8:10], 16) / 255
    layout.search_summary(run.key).write_text(json.dumps({
        "run": run.key, "arch_json": str(arch_json), "arch_id": arch.arch_id, "compact": arch.compact(),
        "targets_ms": {d: target for d in run.devices}, "latency_ms": {d: 0.97 * target for d in run.devices},
        "measured_ms": {d: 0.98 * target for d in run.devices}, "within": True}))


def _fit(step: stages.Step, digest: str, root: Path) -> None:
    paths = stages.Layout(root).lut_paths(step.kwargs()["device"])
    paths.fit.write_text(json.dumps({"device": step.kwargs()["device"], "a": 1.0 + int(digest[:2], 16) / 2550,
                                     "b": 0.1, "metrics": {}}))


def _refit(step: stages.Step, root: Path) -> None:
    """The second round: the first round's fit again, naming the fit it refits (as ``recalibrate`` does)."""
    paths = stages.Layout(root).lut_paths(step.kwargs()["device"])
    document = {**json.loads(paths.fit.read_text()), "round": 2,
                "first_round": {"path": str(paths.fit), "sha256": file_sha256(paths.fit)}}
    paths.second_round().fit.write_text(json.dumps(document))


def _params() -> dict:
    from nas_core.params import load_params

    return load_params("params.yaml")


def fake(stage: str):
    def run(params: Mapping[str, Any], root: str | os.PathLike = stages.DATA_ROOT, **options) -> dict[str, Path]:
        root = Path(root)
        step = stages.find_step(stage, options, _params(), root)  # params: only the stage's sections
        outs = json.loads(Path(os.environ["FAKE_STAGES_SPEC"]).read_text())[step.id]
        digest = _digest(step, params, root)
        _write_outputs(step, outs, digest, root)
        if stage == "search":
            _search_summary(step, digest, root)
        elif stage == "calibration":
            _fit(step, digest, root)
        elif stage == "recalibration":
            _refit(step, root)
        with open(os.environ["FAKE_STAGES_LOG"], "a") as log:
            log.write(step.id + "\n")
        return {Path(o).name: Path(o) for o in outs}
    return run


def install() -> None:
    real = set(filter(None, os.environ.get("FAKE_STAGES_REAL", "").split(",")))
    for name, info in list(stages.STAGES.items()):
        if name not in real:
            stages.STAGES[name] = stages.StageInfo(fake(name), info.sections, info.code, info.measures_latency)


WRAPPER = """#!{python}
import sys
sys.path[:0] = [{project!r}, {tests!r}]
import _fake_stages
_fake_stages.install()
from flows.cli import main
sys.exit(main())
"""


def write_wrapper(bin_dir: Path, python: str | os.PathLike, project: Path) -> Path:
    """A ``scan-edge`` executable in ``bin_dir`` that runs the project in ``project`` with ``python`` and the fakes."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "scan-edge"
    path.write_text(WRAPPER.format(python=str(python), project=str(project), tests=str(Path(__file__).parent)))
    path.chmod(0o755)
    return path
