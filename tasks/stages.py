"""The pipeline's stages as plain functions: the one entry point every door calls.

DESIGN.md's DAG, one function per stage. ``scan-edge stage NAME`` (what ``dvc.yaml``
runs), the Prefect tasks of ``tasks/prefect_tasks.py`` (what ``scan-edge reproduce`` and
the ``reprofile`` flow run) and tests all call these, so a stage does the same thing
whichever door it came through. No Prefect here (it is imported by the tasks that wrap
these functions), only ``nas_core`` and the machine's CPU lock.

Each stage function

* reads only its own params sections (``STAGES[name].sections``: the Prefect cache key and
  the ``params:`` of its DVC stage are made of exactly these),
* reads its upstream artifacts at fixed places under ``root`` (:class:`Layout`),
* holds the machine's CPU lock (:func:`tasks.stage_lock`): ``"shared"`` around CPU-heavy
  work, ``"exclusive"`` around latency measurement (so a measurement never runs beside
  other pipeline work, in any process). Stages that only compute or only measure hold it
  for their whole work; the others take it per unit of work: pairs per shard,
  distributed training per rank, and search, fine-tuning and detection shared while they
  compute and exclusively for each measurement (the ``lock`` hook of their ``nas_core``
  job, ``nas_core.locks``),
* continues an interrupted run of the *same* inputs and starts afresh otherwise
  (:func:`resume_or_restart`), and
* returns the paths it wrote (``{name: Path}``).

The work of a stage on explicit paths, with an explicit resume choice, is a ``run_<stage>``
function (:func:`run_supernet`, :func:`run_predictor`, :func:`run_lut`,
:func:`run_calibration`, :func:`run_finetune`, :func:`run_transfer`,
:func:`run_detection`; the pairs' is ``tasks.pairs.collect_pairs``, the search's
:func:`search_setup` + ``nas_core.search_run``). The stage functions and the
``scan-edge`` subcommands of each stage (``train-supernet``, ``fit-predictor``,
``lut build``, ...) call the same ones: params sections, configs and locks are handled
here once, and a command only turns its flags into params overrides and paths.

Artifacts (``root`` = ``data/``)::

    dataset/                               generated classification set + manifest.parquet
    supernet/{supernet.pt,train_log.parquet}
    pairs/accuracy_pairs.parquet           (+ pairs/shards/: resumable work)
    predictor/{predictor.pt,metrics.json,predicted_vs_measured.png,predictions.parquet}
    runtime/<device>.json                  runtime name + version + machine the device runs on
    lut/<device>.parquet                   (+ lut/_work/: exports, raw timings)
    lut/<device>.{calibration.parquet,fit.json,calibration.png}
    baselines/<device>.parquet             timm baselines timed on the device (Table 3)
    search/<run>/                          one search: history, top-k, .arch.json, measurements
    search/<run>.json                      its summary (a DVC metric)
    finetune/<name>/                       metrics.json, model.pt, model.onnx, train_log.parquet
    transfer/{dataset/,runs/,metrics.json} downstream classification (Table 5)
    detection/{dataset/,runs/,metrics.json}  SSDLite (Table 6)
    report/                                README.md, tables (Parquet), figures (PNG)

``<run>`` names a search: ``<device>[+<device>]@<target>[_<M>M]`` where ``<target>`` is
``<k>x`` (k times MobileNetV2's latency measured on the device: the paper's targets) or
``<ms>ms``; the fine-tuned model of a search is ``finetune/ours_<run>/``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from nas_core.search_run import REFERENCE_MODEL
from tasks import stage_lock

DATA_ROOT = Path("data")
OURS = "ours"  # in pipeline.transfer_models / detection_models: the first search's fine-tuned model

Paths = dict[str, Path]


# --------------------------------------------------------------------------- where things are
@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every artifact lives under ``root`` (the module docstring's tree)."""

    root: Path = DATA_ROOT

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def manifest(self) -> Path:
        return self.dataset / "manifest.parquet"

    @property
    def supernet_dir(self) -> Path:
        return self.root / "supernet"

    @property
    def supernet(self) -> Path:
        return self.supernet_dir / "supernet.pt"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs" / "accuracy_pairs.parquet"

    @property
    def predictor_dir(self) -> Path:
        return self.root / "predictor"

    @property
    def predictor(self) -> Path:
        return self.predictor_dir / "predictor.pt"

    def runtime(self, device: str) -> Path:
        return self.root / "runtime" / f"{device}.json"

    def lut_paths(self, device: str):
        from nas_core.latency.lut import LutPaths

        return LutPaths.for_device(device, self.root / "lut")

    def baselines(self, device: str) -> Path:
        return self.root / "baselines" / f"{device}.parquet"

    def search_dir(self, run: str) -> Path:
        return self.root / "search" / run

    def search_summary(self, run: str) -> Path:
        return self.root / "search" / f"{run}.json"

    def finetune_dir(self, name: str) -> Path:
        return self.root / "finetune" / name

    @property
    def transfer(self) -> Path:
        return self.root / "transfer"

    @property
    def detection(self) -> Path:
        return self.root / "detection"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def resume_stamps(self) -> Path:
        return self.root / ".resume"


# --------------------------------------------------------------------------- params
def section(params: Mapping[str, Any], name: str) -> dict:
    """A params section as a dict (``{}`` when absent or null)."""
    return dict(params.get(name) or {})


def pipeline_section(params: Mapping[str, Any]) -> dict:
    """``pipeline:``, the DAG's shape, with its documented keys checked."""
    known = {"finetune_baselines", "params_constrained", "transfer_models", "transfer_data", "transfer_synthetic",
             "detection_models", "detection_data", "torchrun"}
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


# --------------------------------------------------------------------------- search runs
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


def finetune_baselines(params: Mapping[str, Any]) -> dict[str, str]:
    """``pipeline.finetune_baselines``: model -> init (``scratch`` | ``supernet``)."""
    baselines = {str(k): str(v) for k, v in (pipeline_section(params).get("finetune_baselines") or {}).items()}
    for name, init in baselines.items():
        if init not in ("scratch", "supernet"):
            raise ValueError(f"params pipeline.finetune_baselines.{name}: init must be scratch or supernet, not {init!r}")
    return baselines


def resolve_model(name: str, params: Mapping[str, Any], layout: Layout, check: bool = True) -> Path | str:
    """A model named in ``pipeline.transfer_models`` / ``detection_models``: ``ours`` (the
    fine-tuned model of the first search: first device, first target), a fine-tune name,
    or anything ``nas_core.finetune.load_classifier`` takes (a preset, ``mobilenetv2_100``)."""
    if name == OURS:
        first = (section(params, "search").get("targets_vs_mobilenetv2") or [1.0])[0]
        name = SearchRun((search_devices(params)[0],), f"{first}x").model_name
    folder = layout.finetune_dir(name)
    if folder.exists() or name.startswith("ours_") or name in finetune_baselines(params):
        if check:
            _require(folder / "model.pt", f"the fine-tune stage (scan-edge stage finetune --name {name})")
        return folder
    return name


# --------------------------------------------------------------------------- resuming
def input_digest(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of each input file (a folder counts by its ``manifest.parquet``, else its file list)."""
    from nas_core.io import file_sha256

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
    """True when the last run of ``stage_id`` had these inputs (continue it, it may have been
    interrupted); otherwise record them and return False (start over: stale partial work
    of other inputs must not be continued).

    ``identity`` is what the work depends on (params sections, input digests, runtime);
    the stamp is ``<root>/.resume/<stage_id>.json``.
    """
    from nas_core.io import write_json

    stamp = layout.resume_stamps / f"{stage_id.replace('/', '_')}.json"
    wanted = json.loads(json.dumps(identity, sort_keys=True, default=str))
    try:
        same = json.loads(stamp.read_text()) == wanted
    except (OSError, ValueError):
        same = False
    if not same:
        write_json(stamp, wanted)
    return same


def _say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- dataset
DATASET_PATH_KEYS = ("path", "val_fraction", "test_fraction", "seed")


def stage_dataset(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """The classification dataset in ``dataset/`` (its ``manifest.parquet`` is what later stages read).

    ``dataset:`` holds ``generate_classification`` arguments (the generated default data);
    a dataset already there with the same arguments is kept as it is, so its content hash
    and everything downstream stay valid. With ``dataset.path`` (e.g. ImageNet, in ImageNet
    or class-folder layout) only a manifest of that folder is written, with absolute image
    paths (``val_fraction``, ``test_fraction``, ``seed`` split a folder without splits).
    """
    layout = Layout(root)
    dataset = section(params, "dataset")
    with stage_lock("shared"):
        if dataset.get("path"):
            manifest = _manifest_of(Path(dataset["path"]), layout, {k: dataset[k] for k in DATASET_PATH_KEYS[1:]
                                                                    if k in dataset})
        else:
            from nas_core.data.synthetic import generate_classification

            manifest = generate_classification(layout.dataset, overwrite=True, **{k: v for k, v in dataset.items()
                                                                                   if k != "path"})
    _say(f"dataset: {len(manifest)} images, manifest {layout.manifest}")
    return {"dataset": layout.dataset, "manifest": layout.manifest}


def _manifest_of(source: Path, layout: Layout, split: Mapping[str, Any]):
    """Write ``dataset/manifest.parquet`` for an existing image folder (absolute image paths)."""
    from nas_core.data.folders import build_manifest, write_manifest

    _require(source, "the image folder named by dataset.path")
    manifest = build_manifest(source, **split)
    manifest["path"] = [str((source / rel).resolve()) for rel in manifest["path"]]
    write_manifest(layout.manifest, manifest, {**manifest.attrs.get("provenance", {}), "absolute_paths": True})
    return manifest


# --------------------------------------------------------------------------- supernet
def stage_supernet(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT, device: str | None = None) -> Paths:
    """Train the supernet (``supernet:``) on the dataset; resumes an interrupted run of the same inputs.

    With ``pipeline.torchrun.nproc_per_node`` > 1 the training runs under ``torchrun``
    (``scan-edge train-supernet``, one process per rank, each running :func:`run_supernet`
    and so holding the CPU lock itself); this process does not.
    """
    from nas_core.train import SupernetTrainConfig

    layout = Layout(root)
    supernet = section(params, "supernet")
    _require(layout.manifest, "the dataset (scan-edge stage dataset)")
    identity = {"supernet": SupernetTrainConfig.from_params(supernet).to_dict(),
                "inputs": input_digest([layout.dataset])}
    resume = resume_or_restart(layout, "supernet", identity)
    nproc = _torchrun_nproc(params)
    if nproc > 1:
        _torchrun(nproc, ["train-supernet", "--data", str(layout.dataset), "--out", str(layout.supernet_dir),
                          "--resume" if resume else "--overwrite", "--no-progress"], {"supernet": supernet}, layout)
    else:
        run_supernet(params, layout.dataset, layout.supernet_dir, resume=resume, overwrite=not resume, device=device,
                     progress=sys.stderr.isatty())
    return {"supernet": layout.supernet, "train_log": layout.supernet_dir / "train_log.parquet"}


def run_supernet(params: Mapping[str, Any], data: str | os.PathLike, out: str | os.PathLike, *,
                 resume: bool = False, overwrite: bool = False, device: str | None = None,
                 progress: bool = True) -> Path:
    """Train the supernet of ``supernet:`` on the dataset folder ``data`` into ``out``, holding
    the CPU lock shared; returns ``supernet.pt``'s path (``nas_core.train.train_supernet``:
    ``resume`` continues ``out``'s checkpoint, ``overwrite`` discards it, neither refuses to
    touch it). The work of the supernet stage and of ``scan-edge train-supernet``."""
    from nas_core.train import SupernetTrainConfig, train_supernet

    supernet = section(params, "supernet")
    with stage_lock("shared"):
        return train_supernet(SupernetTrainConfig.from_params(supernet), data, out, resume=resume, overwrite=overwrite,
                              params={"supernet": supernet}, progress=progress, device=device)


def _torchrun_nproc(params: Mapping[str, Any]) -> int:
    return int((pipeline_section(params).get("torchrun") or {}).get("nproc_per_node") or 1)


def _torchrun(nproc: int, command: Sequence[str], sections: Mapping[str, Any], layout: Layout) -> None:
    """Run ``scan-edge <command>`` under ``torchrun --standalone`` with these params sections."""
    from nas_core.io import write_text
    import yaml

    # The sections are already resolved for the active profile: the file holds them as its
    # top level, which is the default ("smoke") profile of a params file.
    params_file = write_text(layout.resume_stamps / f"torchrun-{command[0]}.params.yaml",
                             yaml.safe_dump({"profile": "smoke", **dict(sections)}, sort_keys=False))
    argv = torchrun_command(nproc, command, params_file)
    _say("launching: " + " ".join(argv[2:]))
    subprocess.run(argv, check=True)


def _launch_ranks(params: Mapping[str, Any], nproc: int, command: Sequence[str], layout: Layout) -> None:
    """``scan-edge <command>`` on ``nproc`` ranks (:func:`_torchrun`) with every params section of
    the active profile: the ranks resolve devices, data and configs exactly as this process."""
    _torchrun(nproc, command, {k: v for k, v in params.items() if k != "profile"}, layout)


def _restart_flag(resume: bool) -> list[str]:
    """The commands resume an interrupted run by default; a run of other inputs starts over."""
    return [] if resume else ["--overwrite"]


def torchrun_command(nproc: int, command: Sequence[str], params_file: str | os.PathLike) -> list[str]:
    """The command line :func:`_torchrun` runs (shown in the README; tested)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "flows.cli", *command, "--params", str(params_file)]


# --------------------------------------------------------------------------- accuracy pairs + predictor
def stage_pairs(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Evaluate ``pairs.num_subnets`` subnets with inherited weights (``pairs:``, runner: ``runners:``).

    ``tasks.pairs.collect_pairs`` maps the shards over a Prefect task runner (threads, or
    Dask with a real Prefect server started on demand), and each shard task holds the CPU
    lock (shared) — not this function, whose lock would block the shard workers behind a
    waiting latency measurement. Finished shards of the same plan are kept; a plan of other
    inputs is discarded.
    """
    from nas_core.io import read_provenance
    from nas_core.pairs import PairsConfig, plan_identity
    from tasks.pairs import collect_pairs, default_shards_dir

    layout = Layout(root)
    _require(layout.supernet, "the supernet (scan-edge stage supernet)")
    shards = default_shards_dir(layout.pairs)
    plan = shards / "plan.parquet"
    key = plan_identity(PairsConfig.from_dict(section(params, "pairs")), layout.supernet, layout.dataset)["key"]
    same_plan = plan.exists() and read_provenance(plan).get("key") == key
    out = collect_pairs({"pairs": section(params, "pairs"), "runners": section(params, "runners")},
                        supernet=layout.supernet, data_root=layout.dataset, out=layout.pairs, shards_dir=shards,
                        resume=same_plan, fresh=not same_plan, log=_say)
    return {"pairs": Path(out)}


def stage_predictor(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Fit the accuracy predictor on the pairs (``predictor:``); metrics on held-out test pairs."""
    layout = Layout(root)
    return run_predictor(params, layout.pairs, layout.predictor_dir)


def run_predictor(params: Mapping[str, Any], pairs: str | os.PathLike, out_dir: str | os.PathLike) -> Paths:
    """Fit the predictor of ``predictor:`` on the pairs table ``pairs``, holding the CPU lock
    shared; writes ``out_dir/`` (``nas_core.predictor_training.fit_and_write``) and returns
    its paths. The work of the predictor stage and of ``scan-edge fit-predictor``."""
    from nas_core.accuracy_predictor import PredictorConfig
    from nas_core.predictor_training import fit_and_write

    _require(Path(pairs), "the accuracy pairs (scan-edge stage pairs, or scan-edge collect-pairs)")
    predictor = section(params, "predictor")
    with stage_lock("shared"):
        paths, _ = fit_and_write(pairs, out_dir, PredictorConfig.from_dict(predictor),
                                 params={"predictor": predictor}, log=_say)
    return {name: Path(path) for name, path in paths.items()}


# --------------------------------------------------------------------------- devices
def device_profile(params: Mapping[str, Any], device: str):
    """The device profile ``device`` (``devices:`` over the built-in ones) at ``search_space.resolution``."""
    from nas_core.latency.devices import get_profile, load_profiles

    profile = get_profile(device, load_profiles(section(params, "devices")))
    resolution = section(params, "search_space").get("resolution")
    if resolution and int(resolution) != profile.resolution:
        profile = dataclasses.replace(profile, resolution=int(resolution))
    return profile


def device_access(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT):
    """How the pipeline reaches ``device`` (``nas_core.latency.location``): this machine, a
    board's Prefect worker (``tasks.board_worker``), or bundles under ``<root>/bundles/``."""
    from nas_core.latency.location import device_access as access_of
    from tasks.board_worker import worker_factory

    return access_of(device_profile(params, device), bundles_dir=Layout(root).root / "bundles",
                     worker_factory=worker_factory)


def _access_of(params: Mapping[str, Any], root: Path) -> Callable:
    """``profile -> DeviceAccess`` for library code that measures models (fine-tune, detection)."""
    return lambda profile: device_access(params, profile.name, root)


def _locked(profile):
    """The CPU lock around a measurement on ``profile`` (``location.host_lock_mode``)."""
    from nas_core.latency.location import host_lock_mode

    mode = host_lock_mode(profile)
    return stage_lock(mode) if mode else contextlib.nullcontext()


_BOARD_VERSIONS: dict[tuple, tuple[float, str | None]] = {}
BOARD_VERSION_TTL_S = 300.0  # a board's version is asked at most every 5 minutes per process


def device_runtime_version(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> str | None:
    """The runtime version ``device`` runs: installed here for a local device, reported by the
    board for a ``worker`` / ``bundle`` device (the version ``reprofile`` compares)."""
    import time

    profile = device_profile(params, device)
    if profile.is_local:
        from nas_core.latency.devices import check_usable

        return check_usable(profile).runtime_version
    key = (device, json.dumps(profile.location_options, sort_keys=True, default=str), str(root))
    cached = _BOARD_VERSIONS.get(key)
    if cached is None or time.monotonic() - cached[0] > BOARD_VERSION_TTL_S:
        cached = (time.monotonic(), device_access(params, device, root).runtime_version())
        _BOARD_VERSIONS[key] = cached
    return cached[1]


def runtime_identity(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> dict[str, Any]:
    """What a latency on ``device`` depends on besides the model: the profile's settings, the
    runtime's name and version (the board's, for a board), and the machine (this one for a
    local device; the location for a board). (Prefect cache keys and the ``runtime`` stage's
    file, on which DVC's device stages depend.)"""
    from nas_core.io import machine_fingerprint
    from nas_core.latency.devices import check_usable

    profile = device_profile(params, device)
    if not profile.is_local:
        return {"device": device, "settings": profile.to_settings(), "runtime": profile.backend,
                "runtime_version": device_runtime_version(params, device, root), "usable": True,
                "location": profile.location, "machine": {"location": profile.location,
                                                          **{k: str(v) for k, v in profile.location_options.items()}}}
    usability = check_usable(profile)
    machine = machine_fingerprint()
    return {"device": device, "settings": profile.to_settings(), "runtime": usability.runtime_name,
            "runtime_version": usability.runtime_version, "usable": usability.usable,
            "machine": {k: machine[k] for k in ("id", "cpu", "cores", "machine", "system")}}


def stage_runtime(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Record :func:`runtime_identity` in ``runtime/<device>.json`` (rewritten only when it
    changed, so a runtime upgrade, and nothing else, re-runs the device's LUT under DVC)."""
    from nas_core.io import write_json

    path = Layout(root).runtime(device)
    identity = runtime_identity(params, device, root)
    try:
        unchanged = json.loads(path.read_text()) == json.loads(json.dumps(identity))
    except (OSError, ValueError):
        unchanged = False
    if not unchanged:
        write_json(path, identity)
    return {"runtime": path}


def _measurable(params: Mapping[str, Any], device: str):
    """The profile when the pipeline can measure it (here, or on its board); None (with the
    reason printed) when not."""
    from nas_core.latency.devices import check_usable

    profile = device_profile(params, device)
    if not profile.is_local:
        return profile
    usability = check_usable(profile)
    if not usability.usable:
        _say(f"{device}: not measurable here ({usability.reason})")
        return None
    return profile


def _imported_elsewhere(path: Path) -> bool:
    """A LUT measured on a remote device through a profiling bundle (``scan-edge profile import``)."""
    from nas_core.io import read_provenance

    return path.exists() and read_provenance(path).get("source") == "bundle"


def _timing(values: Mapping[str, Any]):
    """A section's ``timing:`` as a ``TimingConfig`` (None: the default timing)."""
    from nas_core.latency.timing import TimingConfig

    return TimingConfig.from_dict(values["timing"]) if values.get("timing") else None


def stage_lut(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Time every block of the search space on ``device`` (``lut:``), where it runs: here
    (exclusive CPU lock), or on its board (``location``: a work pool's worker, or bundles).

    Continues an interrupted build of the same settings and runtime; otherwise re-times
    everything. A LUT imported by hand (``scan-edge profile import``) for a device the
    pipeline cannot reach is kept as it is.
    """
    layout = Layout(root)
    paths = layout.lut_paths(device)
    profile = _measurable(params, device)
    if profile is None:
        if _imported_elsewhere(paths.lut):
            _say(f"lut {device}: keeping the LUT imported from a profiling bundle ({paths.lut})")
            return {"lut": paths.lut}
        raise ValueError(f"device {device!r} cannot be measured on this machine and has no imported LUT: give it "
                         f"a location (devices.{device}.location: worker | bundle), or run `scan-edge profile bundle "
                         f"--device {device} --out DIR`, the bundle's runner on the device, then `scan-edge profile "
                         f"import --device {device} --bundle DIR`")
    identity = {"lut": section(params, "lut"), "runtime": runtime_identity(params, device, root)}
    resume = resume_or_restart(layout, f"lut@{device}", identity)
    frame = run_lut(params, profile, paths, resume=resume, progress=sys.stderr.isatty(),
                    access=device_access(params, device, root))
    _say(f"lut {device}: {len(frame)} blocks, {int(frame['drift_flag'].sum())} drift-flagged -> {paths.lut}")
    return {"lut": paths.lut}


def run_lut(params: Mapping[str, Any], profile, paths, *, resume: bool = False, progress: bool = True, access=None):
    """Time the blocks of the search space (``lut:``; ``blocks`` / ``limit`` select a part) on
    ``profile`` (through ``access``; default this machine) into ``paths`` (``LutPaths``),
    holding the CPU lock as ``location.host_lock_mode`` says; returns the table
    (``nas_core.latency.lut.build_lut``). The work of the LUT stage and of ``scan-edge lut build``."""
    from nas_core.latency.lut import build_lut

    lut = section(params, "lut")
    with _locked(profile):
        return build_lut(profile, paths, block_filter=lut.get("blocks"), limit=lut.get("limit"), resume=resume,
                         reference_id=lut.get("reference_block"), seed=lut.get("seed", 0), config=_timing(lut),
                         check_every=lut.get("check_every", 10), drift_tolerance=lut.get("drift_tolerance", 0.10),
                         progress=progress, access=access)


def stage_calibration(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Measure subnets end to end on ``device`` (in the band around its MobileNetV2 latency,
    by default) and fit the LUT's latency model (``calibration:``)."""
    layout = Layout(root)
    paths = layout.lut_paths(device)
    _require(paths.lut, f"the LUT of {device} (scan-edge stage lut --device {device})")
    outputs = {"calibration": paths.calibration, "fit": paths.fit, "figure": paths.figure}
    profile = _measurable(params, device)
    if profile is None:
        if _imported_elsewhere(paths.lut) and paths.fit.exists():
            return outputs
        raise ValueError(f"device {device!r} cannot be measured here; its calibration comes with "
                         f"`scan-edge profile import --device {device}`")
    reference_ms = _reference_ms_if_needed(params, layout, device)
    identity = {"calibration": section(params, "calibration"), "lut": input_digest([paths.lut]),
                "reference_ms": reference_ms, "runtime": runtime_identity(params, device, root)}
    resume = resume_or_restart(layout, f"calibration@{device}", identity)
    access = device_access(params, device, root)
    report = run_calibration(params, profile, paths, resume=resume, progress=sys.stderr.isatty(),
                             reference_ms=reference_ms, access=access,
                             runtime_version=None if profile.is_local else access.runtime_version())
    _say(report.summary())
    return outputs


def _reference_ms_if_needed(params: Mapping[str, Any], layout: Layout, device: str) -> float | None:
    """MobileNetV2's latency on ``device`` (from its baselines) when the calibration samples a band around it."""
    from nas_core.latency.calibration import CalibrationSettings
    from nas_core.search_run import reference_latency_ms

    if CalibrationSettings.from_dict(section(params, "calibration")).sampling != "band":
        return None
    return reference_latency_ms(layout.baselines(device), device, REFERENCE_MODEL)


def run_calibration(params: Mapping[str, Any], profile, paths, *, resume: bool = False, progress: bool = True,
                    runtime_version: str | None = None, reference_ms: float | None = None, access=None):
    """Time the calibration subnets of ``calibration:`` on ``profile`` (through ``access``;
    default this machine) and fit the latency model of the LUT in ``paths``, holding the CPU
    lock as ``location.host_lock_mode`` says; returns the report
    (``nas_core.latency.calibration.calibrate``). ``reference_ms``: MobileNetV2's latency
    (the ``band`` sampling). The work of the calibration stage and of ``scan-edge lut calibrate``."""
    from nas_core.latency.calibration import CalibrationSettings, calibrate

    settings = CalibrationSettings.from_dict(section(params, "calibration"))
    with _locked(profile):
        return calibrate(profile, paths, settings=settings, resume=resume, runtime_version=runtime_version,
                         progress=progress, reference_ms=reference_ms, access=access)


def stage_baselines(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Time the comparison models (``baselines.models``, MobileNetV2 always) on ``device`` (Table 3),
    where it runs (a board's runtime times them on the board).

    MobileNetV2's latency here is what the ``<k>x`` search targets multiply, and what the
    calibration's band is centred on.
    """
    from nas_core.latency.baselines import BASELINE_MODELS, measure_baselines, measure_device_baselines

    layout = Layout(root)
    profile = _measurable(params, device)
    if profile is None:
        raise ValueError(f"device {device!r} cannot be measured here: give absolute search targets ('<ms>ms') "
                         "for it, or give it a location (devices.<name>.location: worker | bundle)")
    baselines = section(params, "baselines")
    names = list(dict.fromkeys([REFERENCE_MODEL, *(baselines.get("models") or [])]))
    models = {name: BASELINE_MODELS.get(name, profile.resolution) for name in names}
    out, workdir = layout.baselines(device), layout.root / "baselines" / "_work"
    workdir.mkdir(parents=True, exist_ok=True)
    with _locked(profile):
        if profile.backend == "torch":
            frame = measure_baselines([profile], models, out_path=out, workdir=workdir, config=_timing(baselines),
                                      progress=True)
        else:
            frame = measure_device_baselines(device_access(params, device, root), models, out_path=out,
                                             workdir=workdir, config=_timing(baselines), progress=True)
    failed = frame[frame["error"] != ""]
    if REFERENCE_MODEL in set(failed["model"]):
        raise RuntimeError(f"{REFERENCE_MODEL} could not be timed on {device}: "
                           f"{failed[failed['model'] == REFERENCE_MODEL]['error'].iloc[0]}")
    return {"baselines": out}


# --------------------------------------------------------------------------- search
def target_latencies(run: SearchRun, layout: Layout) -> dict[str, float]:
    """Each device's latency target in ms (``<k>x``: k times MobileNetV2 measured there)."""
    from nas_core.search_run import reference_latency_ms

    unit, value = parse_target(run.target)
    if unit == "ms":
        return {device: value for device in run.devices}
    return {device: round(value * reference_latency_ms(layout.baselines(device), device, REFERENCE_MODEL), 3)
            for device in run.devices}


def search_setup(params: Mapping[str, Any], devices: Sequence[str], *, predictor: str | os.PathLike,
                 lut_dir: str | os.PathLike, out_dir: str | os.PathLike):
    """``nas_core.search_run.load_setup`` for ``devices`` profiled as every stage profiles them
    (:func:`device_profile`). Shared by the search stage and ``scan-edge search``."""
    from nas_core.search_run import load_setup

    return load_setup(params, {device: device_profile(params, device) for device in devices},
                      predictor=predictor, lut_dir=lut_dir, out_dir=out_dir)


def stage_search(params: Mapping[str, Any], devices: str | Sequence[str], target: str | float,
                 params_m: float | None = None, root: str | os.PathLike = DATA_ROOT, measure: bool = True) -> Paths:
    """Evolutionary search (``search:``) for one run; then meet the target on the device.

    ``target``: ``"<k>x"`` or ``"<ms>ms"`` (a bare number means ms). With ``measure`` (and
    every device usable here) the best candidates are measured on the device and the most
    accurate within [-3 %, 0] of the target is returned (``search.refine``). Each search
    round holds the CPU lock shared, each measurement exclusively
    (``nas_core.search_run.run_search``). Writes ``search/<run>/`` and its summary
    ``search/<run>.json``; a target that is not met is reported there (``within: false``),
    not raised.
    """
    from nas_core.io import write_json
    from nas_core.search_algorithm import run_name
    from nas_core.search_report import first_round_fidelity, measured_latency
    from nas_core.search_run import run_search

    devices = [devices] if isinstance(devices, str) else list(devices)
    target = f"{target}ms" if isinstance(target, (int, float)) else str(target)
    run = SearchRun(tuple(devices), target, params_m)
    layout = Layout(root)
    for device in devices:
        _require(layout.lut_paths(device).fit, f"the calibrated LUT of {device} (scan-edge stage calibration "
                                                f"--device {device})")
    _require(layout.predictor, "the accuracy predictor (scan-edge stage predictor)")
    out_dir = layout.search_dir(run.key)
    targets = target_latencies(run, layout)
    setup = search_setup(params, devices, predictor=layout.predictor, lut_dir=layout.root / "lut", out_dir=out_dir)
    measure = measure and all(_measurable(params, d) is not None for d in devices)
    max_params = None if params_m is None else float(params_m) * 1e6
    accesses = {d: device_access(params, d, root) for d in devices} if measure else None
    record, within = run_search(setup, targets, max_params, measure=measure, say=_say, lock=stage_lock,
                                accesses=accesses)
    name = run_name(targets, max_params)
    _remove_other_runs(out_dir, name)
    summary = {"run": run.key, "target": run.target, "targets_ms": targets, "params_m": params_m,
               "arch_json": str(out_dir / f"{name}.arch.json"), "within": bool(within), "measured": measure,
               **{k: record.get(k) for k in ("name", "arch_id", "compact", "predicted_accuracy", "latency_ms",
                                             "params", "macs")},
               "measured_ms": measured_latency(out_dir, name, record["arch_id"]),
               **first_round_fidelity(record)}
    write_json(layout.search_summary(run.key), summary)
    return {"search": out_dir, "arch": out_dir / f"{name}.arch.json", "summary": layout.search_summary(run.key)}


def _remove_other_runs(out_dir: Path, keep: str) -> None:
    """A run folder holds one search: files of an earlier target (other ms) are removed."""
    for path in out_dir.iterdir():
        if path.is_file() and not path.name.startswith(f"{keep}."):
            path.unlink()


def searched_arch(layout: Layout, run_key: str) -> Path:
    """The ``.arch.json`` a search run chose (from its summary)."""
    from nas_core.io import read_json

    summary = layout.search_summary(run_key)
    _require(summary, f"the search {run_key} (scan-edge stage search)")
    return layout.search_dir(run_key) / Path(read_json(summary)["arch_json"]).name  # wherever the root moved


# --------------------------------------------------------------------------- fine-tune, transfer, detection
def stage_finetune(params: Mapping[str, Any], name: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Fine-tune a searched model (``ours_<run>``) or train a baseline the same way
    (``pipeline.finetune_baselines``), export it and measure it on its devices (``finetune:``;
    :func:`run_finetune`).
    """
    layout = Layout(root)
    if name.startswith("ours_"):
        ref, init = str(searched_arch(layout, name.removeprefix("ours_"))), "supernet"
    else:
        baselines = finetune_baselines(params)
        if name not in baselines:
            raise KeyError(f"{name!r} is neither a searched model (ours_<run>) nor in pipeline.finetune_baselines "
                           f"({', '.join(baselines) or 'none'})")
        ref, init = name, baselines[name]
    inputs = [layout.dataset, *([layout.supernet] if init == "supernet" else []),
              *([Path(ref)] if ref.endswith(".json") else [])]
    for path in inputs:
        _require(path, "an input of the fine-tune stage")
    identity = {"finetune": section(params, "finetune"), "ref": ref, "init": init,
                "devices": section(params, "devices"), "inputs": input_digest(inputs)}
    resume = resume_or_restart(layout, f"finetune@{name}", identity)
    nproc = _torchrun_nproc(params)
    if nproc > 1:  # every rank runs `scan-edge finetune` (run_finetune); rank 0 exports and measures
        _launch_ranks(params, nproc, ["finetune", ref, "--data", str(layout.dataset), "--supernet", str(layout.supernet),
                                      "--out", str(layout.root / "finetune"), "--name", name, "--init", init,
                                      *_restart_flag(resume)], layout)
    else:
        run_finetune(params, ref, data=layout.dataset, supernet=layout.supernet, out_root=layout.root / "finetune",
                     name=name, init=init, resume=resume, overwrite=not resume, progress=sys.stderr.isatty())
    return {"finetune": layout.finetune_dir(name), "metrics": layout.finetune_dir(name) / "metrics.json"}


def run_finetune(params: Mapping[str, Any], ref: str, *, data: str | os.PathLike, supernet: str | os.PathLike | None,
                 out_root: str | os.PathLike, name: str | None = None, init: str | None = None,
                 predicted_accuracy: float | None = None, resume: bool = True, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``ref`` with ``finetune:`` and time it on ``devices:`` profiles
    (``nas_core.finetune.finetune``): the CPU lock is held shared while it trains and
    exclusively while it measures. Returns the metrics. The work of the fine-tune stage and
    of ``scan-edge finetune``."""
    from nas_core.finetune import FinetuneConfig, finetune

    return finetune(ref, data_root=data, supernet=supernet, name=name, out_root=out_root,
                    config=FinetuneConfig.from_params(section(params, "finetune")), init=init,
                    predicted_accuracy=predicted_accuracy, devices_section=section(params, "devices"),
                    resume=resume, overwrite=overwrite, progress=progress, lock=stage_lock,
                    access_of=_access_of(params, Path(out_root).parent))


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
    from nas_core.data.synthetic import generate_classification
    from nas_core.io import read_json, write_json

    layout = Layout(root)
    pipeline = pipeline_section(params)
    synthetic = dict(pipeline.get("transfer_synthetic") or {})
    data = _downstream_data(pipeline.get("transfer_data"), layout.transfer / "dataset",
                            lambda out: generate_classification(out, overwrite=True, **synthetic))
    models = {label: resolve_model(label, params, layout) for label in pipeline.get("transfer_models") or []}
    runs = layout.transfer / "runs"
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
    write_json(layout.transfer / "metrics.json", summary)
    return {"runs": runs, "metrics": layout.transfer / "metrics.json"}


def run_transfer(params: Mapping[str, Any], model: str | os.PathLike, data: str | os.PathLike, *,
                 out_root: str | os.PathLike, name: str | None = None, supernet: str | os.PathLike | None = None,
                 resume: bool = True, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Transfer ``model`` to the classification set ``data`` with ``transfer:``
    (``nas_core.transfer.transfer``), holding the CPU lock shared; returns its record. The
    work of the transfer stage (per model) and of ``scan-edge transfer``."""
    from nas_core.transfer import TransferConfig, transfer

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
    from nas_core.io import read_json, write_json

    layout = Layout(root)
    pipeline = pipeline_section(params)
    data = detection_dataset(params, pipeline.get("detection_data"), layout.detection / "dataset")
    models = {label: resolve_model(label, params, layout) for label in pipeline.get("detection_models") or []}
    runs = layout.detection / "runs"
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
    write_json(layout.detection / "metrics.json", summary)
    return {"runs": runs, "metrics": layout.detection / "metrics.json"}


def _detection_digest(data: Path) -> dict[str, str]:
    """What a detection run depends on in its data folder: both annotation files (either layout)."""
    from nas_core.data.coco import find_coco_folder

    folder = find_coco_folder(data)
    return input_digest([folder.train_json, folder.test_json])


def detection_dataset(params: Mapping[str, Any], given: str | os.PathLike | None, generated: Path) -> Path:
    """The COCO folder ``given``, or else the generated shapes of ``detection.synthetic`` in
    ``generated`` (made on first use)."""
    from nas_core.detection import DetectionConfig, ensure_synthetic_detection

    config = DetectionConfig.from_params(section(params, "detection"))
    return _downstream_data(given, generated, lambda out: ensure_synthetic_detection(out, config))


def run_detection(params: Mapping[str, Any], model: str | os.PathLike, data: str | os.PathLike, *,
                  out_root: str | os.PathLike, name: str | None = None, supernet: str | os.PathLike | None = None,
                  resume: bool = True, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """SSDLite with the backbone ``model`` on the COCO folder ``data``, with ``detection:``,
    timed on ``devices:`` profiles (``nas_core.detection.run_detection``): the CPU lock is
    held shared while it trains and exclusively while it measures. Returns the metrics. The
    work of the detection stage (per model) and of ``scan-edge detect``."""
    from nas_core import detection

    return detection.run_detection(str(model), data, out_root=out_root, name=name,
                                   config=detection.DetectionConfig.from_params(section(params, "detection")),
                                   supernet=supernet, devices_section=section(params, "devices"), resume=resume,
                                   overwrite=overwrite, progress=progress, lock=stage_lock,
                                   access_of=_access_of(params, Path(out_root).parent.parent))


# --------------------------------------------------------------------------- report
def stage_report(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Tables 3-6 and Figs. 3-5 from the artifacts under ``root`` (``nas_core.report``)."""
    from nas_core.report import build_report

    layout = Layout(root)
    with stage_lock("shared"):
        paths = build_report(layout.root, layout.report, devices=search_devices(params),
                             searches=[run.key for run in search_runs(params)],
                             baselines=list(finetune_baselines(params)), params=params)
    _say(f"report: {paths['readme']}")
    return paths


def _require(path: Path, what: str) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: missing; it is made by {what}")


# --------------------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class StageInfo:
    """A stage: its function, the params sections it reads, the code modules its result
    depends on (Prefect cache keys; DVC deps), and whether it measures latency."""

    function: Callable[..., Paths]
    sections: tuple[str, ...]
    code: tuple[str, ...]
    measures_latency: bool = False


_LATENCY_CODE = ("nas_core.latency.devices", "nas_core.latency.timing", "nas_core.latency.runner",
                 "nas_core.latency.measure",
                 "nas_core.latency.export", "nas_core.latency.location", "nas_core.latency.bundle",
                 "tasks.board_worker")
_LATENCY_MODEL_CODE = ("nas_core.latency.calibration", "nas_core.latency.latency_model",
                       "nas_core.latency.subnet_sampling")
_BLOCK_CODE = ("nas_core.search_space", "nas_core.subnet", "nas_core.blocks", "nas_core.block_catalog")
_TRAIN_CODE = ("nas_core.search_space", "nas_core.supernet", "nas_core.subnet", "nas_core.train", "nas_core.recipe",
               "nas_core.evaluate", "nas_core.data")

# What `ours` and baseline names in transfer / detection resolve to (resolve_model).
_MODEL_CHOICE = ("pipeline.finetune_baselines", "search.devices", "search.targets_vs_mobilenetv2")

# Code lists are what the stage's result depends on, deliberately no more: a LUT is only
# re-timed when the code that builds, exports or times its blocks changes. The glue in this
# file only routes params and paths, and nas_core.io only writes files: neither is listed.
STAGES: dict[str, StageInfo] = {
    "dataset": StageInfo(stage_dataset, ("dataset",), ("nas_core.data",)),
    "supernet": StageInfo(stage_supernet, ("supernet", "pipeline.torchrun"), _TRAIN_CODE),
    "pairs": StageInfo(stage_pairs, ("pairs", "runners"), ("nas_core.pairs", "nas_core.threads", "tasks.pairs",
                                                          *_TRAIN_CODE)),
    "predictor": StageInfo(stage_predictor, ("predictor",),
                           ("nas_core.accuracy_predictor", "nas_core.predictor_training", "nas_core.threads",
                            "nas_core.encoding", "nas_core.pairs", "nas_core.search_space", "nas_core.block_catalog")),
    "runtime": StageInfo(stage_runtime, ("devices", "search_space"),
                         ("nas_core.latency.devices", "nas_core.latency.location", "tasks.board_worker"), True),
    "lut": StageInfo(stage_lut, ("devices", "search_space", "lut"),
                     ("nas_core.latency.lut", *_BLOCK_CODE, *_LATENCY_CODE), True),
    "calibration": StageInfo(stage_calibration, ("devices", "search_space", "calibration"),
                             (*_LATENCY_MODEL_CODE, "nas_core.latency.lut", *_BLOCK_CODE, *_LATENCY_CODE), True),
    "baselines": StageInfo(stage_baselines, ("devices", "search_space", "baselines"),
                           ("nas_core.latency.baselines", *_LATENCY_CODE), True),
    "search": StageInfo(stage_search, ("devices", "search_space", "search.evolution", "search.refine",
                                       "search.num_classes"),
                        ("nas_core.search_run", "nas_core.search_algorithm", "nas_core.search_constraints",
                         "nas_core.search_refine", "nas_core.search_report", "nas_core.efficiency_predictor",
                         "nas_core.accuracy_predictor", "nas_core.threads", "nas_core.encoding",
                         *_LATENCY_MODEL_CODE, "nas_core.latency.lut", *_BLOCK_CODE, *_LATENCY_CODE), True),
    "finetune": StageInfo(stage_finetune, ("devices", "finetune", "pipeline.finetune_baselines"),
                          ("nas_core.finetune", "nas_core.complexity", *_TRAIN_CODE, "nas_core.blocks",
                           *_LATENCY_CODE), True),
    "transfer": StageInfo(stage_transfer, ("transfer", "pipeline.transfer_models", "pipeline.transfer_data",
                                           "pipeline.transfer_synthetic", *_MODEL_CHOICE),
                          ("nas_core.transfer", "nas_core.finetune", "nas_core.complexity", *_TRAIN_CODE)),
    "detection": StageInfo(stage_detection, ("detection", "devices", "pipeline.detection_models",
                                             "pipeline.detection_data", *_MODEL_CHOICE),
                           ("nas_core.detection", "nas_core.finetune", "nas_core.complexity", *_TRAIN_CODE,
                            *_LATENCY_CODE), True),
    "report": StageInfo(stage_report, ("search.devices", "search.targets_vs_mobilenetv2",
                                       "pipeline.params_constrained", "pipeline.finetune_baselines"),
                        ("nas_core.report", "nas_core.search_report", *_LATENCY_MODEL_CODE)),
}


def params_for(stage: str, params: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The part of ``params`` a stage reads, its cache key: its sections (a dotted name is one
    key of a section) and the profile name; ``devices`` narrowed to the step's own device(s)."""
    chosen: dict[str, Any] = {"profile": params.get("profile")}
    for name in STAGES[stage].sections:
        head, _, key = name.partition(".")
        if key:
            chosen.setdefault(head, {})[key] = (params.get(head) or {}).get(key)
        else:
            chosen[head] = params.get(head)
    devices = _step_devices(options or {})
    if devices and "devices" in chosen:
        chosen["devices"] = {d: v for d, v in (chosen["devices"] or {}).items() if d in devices}
    return chosen


def _step_devices(options: Mapping[str, Any]) -> list[str]:
    if "device" in options:
        return [options["device"]]
    return list(options.get("devices") or [])


# --------------------------------------------------------------------------- the plan
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
             outputs=(L.predictor, L.predictor_dir / "metrics.json", L.predictor_dir / "predicted_vs_measured.png")),
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
    for run in runs:
        # DVC's matrix names: search@<device>-<k>, search-params@<device>-<k>-<M>
        matrix = f"{run.devices[0]}-{run.target.removesuffix('x')}"
        dvc_id = f"search@{matrix}" if run.params_m is None else f"search-params@{matrix}-{run.params_m}"
        reads = (L.predictor, *[p for dev in run.devices for p in (lut[dev].lut, lut[dev].fit, L.baselines(dev))])
        steps.append(Step("search", dvc_id, (("devices", run.devices), ("target", run.target),
                                             ("params_m", run.params_m)), reads,
                          (L.search_summary(run.key),)))
        steps.append(Step("finetune", dvc_id.replace("search", "finetune", 1), (("name", run.model_name),),
                          (L.search_summary(run.key), L.supernet, L.manifest),
                          (L.finetune_dir(run.model_name) / "metrics.json",)))
    for name, init in finetune_baselines(params).items():
        reads = (L.manifest,) + ((L.supernet,) if init == "supernet" else ())
        steps.append(Step("finetune", f"finetune-baseline@{name}", (("name", name),), reads,
                          (L.finetune_dir(name) / "metrics.json",)))
    pipeline = pipeline_section(params)
    for stage, key in (("transfer", "transfer_models"), ("detection", "detection_models")):
        models = [resolve_model(m, params, L, check=False) for m in pipeline.get(key) or []]
        reads = tuple(Path(m) / "metrics.json" for m in models if isinstance(m, Path))
        steps.append(Step(stage, stage, inputs=reads, outputs=(L.root / stage / "metrics.json",)))
    reported = ("predictor", "calibration", "baselines", "search", "finetune", "transfer", "detection")
    read = tuple(p for step in steps if step.stage in reported for p in step.outputs if p.suffix != ".pt")
    steps.append(Step("report", "report", inputs=read, outputs=(L.report / "README.md",)))
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
