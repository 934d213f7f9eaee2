"""What every stage shares: params sections, the pipeline's searches, resuming, messages.

Artifact paths come from :class:`nas_core.layout.Layout`: nothing in ``tasks.stages`` spells
a path of its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from nas_core.layout import Layout
from tasks import code_identity
from tasks.run_identity import file_sha256, run_identity
from tasks.run_identity import resume_or_restart as resume_stamp

OURS = "ours"  # in pipeline.transfer_models / detection_models: the first search's fine-tuned model
# The params key naming the search space (``tasks.stages.space``): a section of every stage that
# builds architectures and does not already read the whole ``search_space:`` section.
SPACE_KEY = "search_space.attention"

Paths = dict[str, Path]


def section(params: Mapping[str, Any], name: str) -> dict:
    """A params section as a dict (``{}`` when absent or null)."""
    return dict(params.get(name) or {})


def pipeline_section(params: Mapping[str, Any]) -> dict:
    """``pipeline:``, the DAG's shape, with its documented keys checked."""
    known = {"finetune_baselines", "equal_budget", "params_constrained", "transfer_models", "transfer_data", "transfer_synthetic",
             "detection_models", "detection_data", "torchrun", "overlap_latency"}
    values = section(params, "pipeline")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"params pipeline: unknown keys {unknown}; known keys: {sorted(known)}")
    return values


def search_devices(params: Mapping[str, Any]) -> list[str]:
    """The devices the pipeline profiles and searches for (``search.devices``)."""
    devices = list(section(params, "search").get("devices") or [])
    if not devices:
        raise ValueError("params search.devices is empty: name the device profiles to search for "
                         "(see `scan-edge devices`)")
    return devices


@dataclasses.dataclass(frozen=True)
class SearchRun:
    """One search of the pipeline: devices, a latency target and an optional params bound.

    ``target`` is ``"<k>x"`` (k times MobileNetV2's latency measured on each device, the
    paper's targets) or ``"<ms>ms"`` (absolute, the same for every device).
    """

    devices: tuple[str, ...]
    target: str
    params_m: float | None = None

    def __post_init__(self):
        parse_target(self.target)  # fail on a malformed target before anything runs

    @property
    def key(self) -> str:
        """``<device>[+<device>]@<target>[_<M>M]``: folder and DVC stage names."""
        suffix = "" if self.params_m is None else f"_{self.params_m}M"
        return f"{'+'.join(self.devices)}@{self.target}{suffix}"

    @property
    def model_name(self) -> str:
        """The fine-tuned model's name (``finetune/<name>/``)."""
        return f"ours_{self.key}"


def parse_target(target: str) -> tuple[str, float]:
    """``"1.0x"`` -> ``("x", 1.0)``; ``"7.6ms"`` -> ``("ms", 7.6)``."""
    text = str(target).strip()
    for unit in ("ms", "x"):
        if text.endswith(unit):
            try:
                value = float(text[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return unit, value
    raise ValueError(f"search target {target!r}: write '<k>x' (k times MobileNetV2's measured latency, "
                     "e.g. 1.0x) or '<ms>ms' (e.g. 7.6ms)")


def search_runs(params: Mapping[str, Any]) -> list[SearchRun]:
    """Every search of the pipeline, in order: each ``search.devices`` x
    ``search.targets_vs_mobilenetv2`` (latency only, Table 3 / Fig. 5), then
    ``pipeline.params_constrained`` (latency and parameters, Table 4)."""
    multiples = section(params, "search").get("targets_vs_mobilenetv2") or [1.0]
    runs = [SearchRun((device,), f"{k}x") for device in search_devices(params) for k in multiples]
    constrained = dict(pipeline_section(params).get("params_constrained") or {})
    for device in constrained.get("devices") or []:
        for k in constrained.get("targets_vs_mobilenetv2") or [1.0]:
            for params_m in constrained.get("params_m") or []:
                runs.append(SearchRun((device,), f"{k}x", params_m))
    return runs


def controlled_runs(params: Mapping[str, Any]) -> list[SearchRun]:
    """The searches that get random-architecture controls (``controls.searches``: ``first``, the
    first search, whose model is "ours" downstream; or ``all``); none when ``controls.count`` is 0."""
    controls = section(params, "controls")
    if not int(controls.get("count", 0) or 0):
        return []
    runs = search_runs(params)
    which = controls.get("searches", "first")
    if which not in ("first", "all"):
        raise ValueError(f"params controls.searches: first or all, not {which!r}")
    return runs[:1] if which == "first" else runs


def finetune_seeds(params: Mapping[str, Any]) -> list[int]:
    """``finetune.seeds``: the seeds every fine-tuned row is trained with (the first one's
    run is the model downstream stages use); default ``[finetune.seed]`` (0)."""
    return stage_seeds(params, "finetune")


def stage_seeds(params: Mapping[str, Any], name: str) -> list[int]:
    """``<name>.seeds`` (fine-tune, transfer, detection): the seeds each of the stage's models is
    trained with; default ``[<name>.seed]`` (0)."""
    values = section(params, name)
    seeds = [int(s) for s in (values.get("seeds") or [values.get("seed", 0)])]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"params {name}.seeds: repeated seeds {seeds}")
    return seeds


def finetune_baselines(params: Mapping[str, Any]) -> dict[str, str]:
    """``pipeline.finetune_baselines``: model -> init (``scratch`` | ``supernet``)."""
    baselines = {str(k): str(v) for k, v in (pipeline_section(params).get("finetune_baselines") or {}).items()}
    for name, init in baselines.items():
        if init not in ("scratch", "supernet"):
            raise ValueError(f"params pipeline.finetune_baselines.{name}: init must be scratch or supernet, not {init!r}")
    return baselines


EQUAL_BUDGET = "_equal_budget"  # <model>_equal_budget: pipeline.equal_budget's runs


def equal_budget_baselines(params: Mapping[str, Any]) -> list[str]:
    """``pipeline.equal_budget``: models trained from scratch with as many training images as
    ours has seen in all (its share of the supernet's training plus its fine-tuning), as
    ``<model>_equal_budget`` (the fine-tune stage)."""
    models = [str(m) for m in (pipeline_section(params).get("equal_budget") or [])]
    return [f"{m}{EQUAL_BUDGET}" for m in models]


def resolve_model(name: str, params: Mapping[str, Any], layout: Layout, check: bool = True) -> Path | str:
    """A model named in ``pipeline.transfer_models`` / ``detection_models``: ``ours`` (the
    fine-tuned model of the first search: first device, first target), a fine-tune name,
    or anything ``nas_core.finetune.load_classifier`` takes (a preset, ``mobilenetv2_100``)."""
    if name == OURS:
        first = (section(params, "search").get("targets_vs_mobilenetv2") or [1.0])[0]
        name = SearchRun((search_devices(params)[0],), f"{first}x").model_name
    folder = layout.finetune_dir(name)
    if folder.exists() or name.startswith("ours_") or name in finetune_baselines(params) or \
            name in equal_budget_baselines(params):
        if check:
            _require(layout.finetune_model(name), f"the fine-tune stage (scan-edge stage finetune --name {name})")
        return folder
    return name


def input_digest(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of each input file (a folder counts by its ``manifest.parquet``, else its file
    list), through the stat cache of ``tasks.run_identity`` (an unchanged file is not read again)."""
    digests = {}
    for path in paths:
        path = Path(path)
        if path.is_file():
            digests[str(path)] = file_sha256(path)
        elif (path / "manifest.parquet").is_file():
            digests[str(path)] = file_sha256(path / "manifest.parquet")
        elif path.is_dir():
            listing = sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
            digests[str(path)] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        else:
            digests[str(path)] = "missing"
    return digests


def resume_or_restart(layout: Layout, stage_id: str, identity: Mapping[str, Any]) -> bool:
    """True when the last run of ``stage_id`` was the same run (continue it, it may have been
    interrupted); otherwise record this one and return False (start over: stale partial
    work of another run must not be continued).

    ``identity`` is what the work depends on (params sections, input digests, runtime); with
    the stage's code it makes the run identity (``tasks.run_identity``) that the stamp
    ``<root>/.resume/<stage_id>.json`` records.
    """
    code = code_identity.stage_code_digest(stage_id.partition("@")[0])
    return resume_stamp(layout.resume_stamps, stage_id, run_identity(code, identity))


def _say(text: str) -> None:
    print(text, flush=True)


def _require(path: Path, what: str) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: missing; it is made by {what}")
