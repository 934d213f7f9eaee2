"""Subnet-accuracy pairs (§5.2): the accuracy predictor's training data.

The paper samples 6k subnets, evaluates each with the weights inherited from the supernet
(no fine-tuning) on a validation set the supernet did not train on, and splits the pairs
5k for training / 1k for validating the predictor. Here, additionally, a *test* split is
carved out, used neither for training nor for model selection, on which the predictor's
quality is reported (default: 7k subnets = 5k train + 1k val + 1k test).

Per subnet: inherit the supernet's weights, recalibrate the BatchNorm statistics on a fixed
set of training images (``nas_core.evaluate.recalibrate_bn``: inherited statistics are a
mixture over all subnets and wrong for any one), then measure top-1 / top-5 / loss on the
dataset's ``val`` split (``nas_core.evaluate.evaluate``).

Work plan, resumption and parallelism
-------------------------------------
:func:`prepare_pairs` fixes the subnet list up front from the seed (the smallest and largest
subnets in every FFN-type / activation variant, then distinct uniform samples), assigns
each subnet its predictor split (seeded) and cuts the list into shards. The plan is written
to ``<shards_dir>/plan.parquet``. :func:`evaluate_shard` evaluates one shard and writes
``<shards_dir>/shard-00012.parquet`` atomically; a shard whose file exists is skipped. So
killing the job loses at most the shards in flight, a restart never evaluates a subnet
twice, and shards are independent units for any task runner (the Prefect flow in
``tasks/pairs.py`` maps them over Dask). :func:`assemble_pairs` concatenates the shards
into the final table (checking the plan and that every arch_id appears exactly once).

The plan has a key (hash of the config, the supernet checkpoint's sha256 and the dataset
manifest's sha256); a shard or plan from another key is never mixed in.

Table schema (``data/pairs/accuracy_pairs.parquet``; each shard has the same columns)
-------------------------------------------------------------------------------------

==============  ==============  ==========================================================
column          type            meaning
==============  ==============  ==========================================================
index           int64           position in the plan (0 .. num_subnets-1)
arch_id         str             ``ArchConfig.arch_id`` (unique in the table)
arch_json       str             ``ArchConfig.to_json()``
genome          list<int64>     canonical genome (``SearchSpace.encode``)
encoding        list<uint8>     the predictor input, 44*24 bits row-major: equals
                                ``ArchEncoder().encode_genomes(genome).reshape(-1)``
                                (derived from ``genome``, stored for readers without code)
split           str             ``train`` | ``val`` | ``test`` (the predictor's split)
shard           int64           shard that evaluated it
top1, top5      float64         accuracy as a fraction in [0, 1] (as ``nas_core.evaluate``)
loss            float64         mean cross-entropy over the evaluated images
images          int64           images evaluated
params          int64           parameters (classifier of the supernet's class count)
macs            int64           multiply-accumulates at the supernet's resolution
bn_seconds      float64         wall time of the BN recalibration
eval_seconds    float64         wall time of recalibration + evaluation
supernet_sha256 str             sha256 of the supernet checkpoint file
==============  ==============  ==========================================================

Provenance (``nas_core.io.read_provenance``): plan key, config, supernet path and sha256,
dataset root and manifest sha256, resolution, code version, machine, time.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from .block_catalog import BlockCatalog
from .data.folders import ManifestDataset, build_transform, load_checked_manifest, seed_worker
from .encoding import ArchEncoder
from .evaluate import calibration_batches, evaluate, recalibrate_bn
from .io import code_version, file_sha256, machine_fingerprint, read_parquet, read_provenance, utc_now, write_parquet
from .search_space import SPACE_VERSION, SearchSpace, SpaceSpec, space_identity
from .threads import torch_threads
from .train import load_supernet

PLAN_NAME = "plan.parquet"
SHARD_PATTERN = "shard-{:05d}.parquet"
SHARD_GLOB = "shard-*.parquet"
SPLITS = ("train", "val", "test")
MODES = ("supernet", "extract")
PAIRS_COLUMNS = ("index", "arch_id", "arch_json", "genome", "encoding", "split", "shard", "top1", "top5", "loss",
                 "images", "params", "macs", "bn_seconds", "eval_seconds", "supernet_sha256")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class PairsConfig:
    """The ``pairs:`` params section (its ``runner`` key is the flow's, not read here)."""

    num_subnets: int = 7000          # paper: 6k (5k train + 1k val), + 1k test pairs here
    val_fraction: float = 1 / 7      # -> 1000 of 7000
    test_fraction: float = 1 / 7     # -> 1000 of 7000
    seed: int = 0
    shard_size: int = 50
    include_extremes: bool = True    # smallest/largest in each FFN type x activation (8 subnets)
    eval_split: str = "val"          # dataset split to measure on (the supernet never trained on it)
    eval_images: int | None = None   # seeded subset of the split (None: all of it)
    eval_batch_size: int = 256
    bn_calib_batches: int = 10       # training images (eval transform) for BN recalibration
    bn_calib_batch_size: int = 64
    mode: str = "supernet"           # "supernet": forward(x, arch); "extract": a standalone copy
    cache_images: bool = True        # keep the decoded evaluation images as tensors, if within cache_budget_mb
    cache_budget_mb: float = 1024.0  # memory the cached evaluation tensors may take per worker; beyond: stream
    num_workers: int = 2             # DataLoader worker processes decoding the streamed evaluation images
    device: str | None = None        # cpu | cuda | cuda:N; None: cuda when present (one GPU per worker)
    skip_bad_images: bool = False    # leave unreadable images out (else: one error listing them)
    eval_transform: dict | None = None  # overrides of nas_core.data.folders.DEFAULT_EVAL_TRANSFORM (crop_pct)
    threads: int | None = 1          # torch threads per worker (None: torch's default)

    def __post_init__(self):
        if self.num_subnets < 3:
            raise ValueError(f"pairs.num_subnets must be >= 3 (one per split), got {self.num_subnets}")
        if self.shard_size < 1:
            raise ValueError(f"pairs.shard_size must be >= 1, got {self.shard_size}")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"pairs.val_fraction ({self.val_fraction}) and test_fraction ({self.test_fraction}) "
                             "must be in (0, 1) and sum to less than 1")
        if self.mode not in MODES:
            raise ValueError(f"pairs.mode must be one of {MODES}, got {self.mode!r}")
        if self.eval_images is not None and self.eval_images < 1:
            raise ValueError(f"pairs.eval_images must be >= 1 or null, got {self.eval_images}")
        for name in ("eval_batch_size", "bn_calib_batches", "bn_calib_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"pairs.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "PairsConfig":
        data = {k: v for k, v in (data or {}).items() if k != "runner"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"params pairs: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def split_counts(self) -> dict[str, int]:
        val, test = round(self.num_subnets * self.val_fraction), round(self.num_subnets * self.test_fraction)
        val, test = max(1, val), max(1, test)
        return {"train": self.num_subnets - val - test, "val": val, "test": test}


# Changing these does not change any row, so a run may resume under new values.
RESUME_FREE_KEYS = frozenset({"threads", "cache_images", "cache_budget_mb", "num_workers", "device",
                              "eval_batch_size"})


# --------------------------------------------------------------------------- sampling
def extreme_genomes(space: SearchSpace) -> np.ndarray:
    """The sandwich rule's extremes (§4) in both FFN types and both activations: 8 genomes."""
    archs = [getattr(space, end)(ffn_type, act) for end in ("smallest", "largest")
             for ffn_type in space.spec.ffn_types for act in space.spec.activations]
    return np.stack([space.encode(a) for a in archs])


def sample_plan_genomes(space: SearchSpace, num_subnets: int, seed: int, include_extremes: bool = True) -> np.ndarray:
    """``num_subnets`` distinct canonical genomes: the extremes first (if asked), then uniform
    samples in the order drawn (duplicates skipped), all from ``seed``."""
    chosen = list(extreme_genomes(space)) if include_extremes else []
    seen = {g.tobytes() for g in chosen}
    chosen = chosen[:num_subnets]
    rng = np.random.default_rng(seed)
    while len(chosen) < num_subnets:
        for genome in space.sample_genomes(max(64, num_subnets - len(chosen)), rng):
            if len(chosen) == num_subnets:
                break
            if genome.tobytes() not in seen:
                seen.add(genome.tobytes())
                chosen.append(genome)
    return np.stack(chosen).astype(np.int64)


def assign_splits(num_subnets: int, counts: Mapping[str, int], seed: int) -> np.ndarray:
    """A seeded random assignment of ``counts[split]`` subnets to each split."""
    labels = np.array([s for s in SPLITS for _ in range(counts[s])], dtype=object)
    if len(labels) != num_subnets:
        raise ValueError(f"split counts {dict(counts)} do not add up to {num_subnets}")
    # A stream of its own (seed, 1), so the splits do not depend on how many genomes were drawn.
    return labels[np.random.default_rng([seed, 1]).permutation(num_subnets)]


def make_plan(config: PairsConfig, space: SearchSpace | None = None):
    """The plan as a DataFrame: ``index, arch_id, genome, split, shard`` (one row per subnet)."""
    space = space or SearchSpace()
    genomes = sample_plan_genomes(space, config.num_subnets, config.seed, config.include_extremes)
    return pd.DataFrame({
        "index": np.arange(len(genomes), dtype=np.int64),
        "arch_id": [space.decode(g).arch_id for g in genomes],
        "genome": list(genomes),
        "split": assign_splits(len(genomes), config.split_counts(), config.seed),
        "shard": np.arange(len(genomes), dtype=np.int64) // config.shard_size,
    })


# --------------------------------------------------------------------------- the plan on disk
@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: shard ``shard`` of the plan at ``plan_path`` (small, picklable)."""

    plan_path: str
    shard: int

    @property
    def out_path(self) -> Path:
        return Path(self.plan_path).parent / SHARD_PATTERN.format(self.shard)


@dataclass(frozen=True)
class PairsPlan:
    """A written plan: where it is, its key and what it holds."""

    path: Path
    key: str
    num_subnets: int
    num_shards: int

    def shard_specs(self) -> list[ShardSpec]:
        return [ShardSpec(str(self.path), s) for s in range(self.num_shards)]

    def pending(self) -> list[ShardSpec]:
        """Shards without a finished file."""
        return [s for s in self.shard_specs() if not s.out_path.exists()]


def plan_identity(config: PairsConfig, supernet_path: str | os.PathLike, data_root: str | os.PathLike,
                  space: SearchSpace | None = None) -> dict:
    """What the rows depend on: the config (minus resume-free keys), the supernet checkpoint's
    and the dataset manifest's content, and the search space (its version; the spec of one
    other than Table 2, ``space_identity``); ``key`` hashes it."""
    identity = {
        "config": {k: v for k, v in config.to_dict().items() if k not in RESUME_FREE_KEYS},
        "supernet_sha256": file_sha256(supernet_path),
        "manifest_sha256": _manifest_sha256(data_root),
        "space_version": SPACE_VERSION,
        **space_identity((space or SearchSpace()).spec),
    }
    identity["key"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return identity


def _manifest_sha256(data_root: str | os.PathLike) -> str:
    manifest = Path(data_root) / "manifest.parquet"
    return file_sha256(manifest) if manifest.exists() else "no-manifest"


def prepare_pairs(config: PairsConfig, supernet_path: str | os.PathLike, data_root: str | os.PathLike,
                  shards_dir: str | os.PathLike, resume: bool = False, fresh: bool = False,
                  space: SearchSpace | None = None) -> PairsPlan:
    """Write (or reuse) the plan of subnets of ``space`` (default Table 2; the supernet's) in
    ``shards_dir``; return it.

    * nothing there: write the plan;
    * a plan with the same key: reuse it with ``resume`` (finished shards are kept);
      without ``resume`` (or ``fresh``) it is an error, so finished work is never dropped
      silently;
    * a plan with another key: an error naming what changed, unless ``fresh``;
    * ``fresh``: delete the plan and shard files there, then write the plan.
    """
    shards_dir = Path(shards_dir)
    plan_path = shards_dir / PLAN_NAME
    space = space or SearchSpace()
    identity = plan_identity(config, supernet_path, data_root, space)
    if fresh:
        remove_shards(shards_dir)
    elif plan_path.exists():
        previous = read_provenance(plan_path)
        done = len(list(shards_dir.glob(SHARD_GLOB)))
        if previous.get("key") != identity["key"]:
            raise ValueError(f"{shards_dir} holds a collection with another plan ({done} shards done; changed: "
                             f"{', '.join(_identity_diff(previous, identity, space)) or 'unknown'}); pass --fresh "
                             "(fresh=True) to discard it, or restore the previous settings")
        if not resume:
            raise ValueError(f"{shards_dir} holds a collection with this plan ({done} shards done); pass "
                             "--resume (resume=True) to continue it or --fresh (fresh=True) to start over")
        frame = read_parquet(plan_path)
        return PairsPlan(plan_path, identity["key"], len(frame), int(frame["shard"].max()) + 1)
    frame = make_plan(config, space)
    provenance = {**identity, "full_config": config.to_dict(), "space_spec": space.spec.to_dict(),
                  "supernet": str(supernet_path), "data_root": str(data_root), "code_version": code_version(), "created": utc_now()}
    write_parquet(plan_path, frame, provenance=provenance)
    return PairsPlan(plan_path, identity["key"], len(frame), int(frame["shard"].max()) + 1)


def _identity_diff(old: Mapping[str, Any], new: Mapping[str, Any], space: SearchSpace) -> list[str]:
    """What differs between a stored plan's provenance and a new identity (in ``space``)."""
    # The provenance keeps the spec as JSON (lists); Table 2's identity holds no spec at all.
    new = {**new, "space_spec": json.loads(json.dumps(space.spec.to_dict()))}
    changed = [f"config.{k}" for k in sorted(set(old.get("config", {})) | set(new["config"]))
               if old.get("config", {}).get(k) != new["config"].get(k)]
    return changed + [k for k in ("supernet_sha256", "manifest_sha256", "space_version", "space_spec")
                      if old.get(k) != new.get(k)]


def remove_shards(shards_dir: str | os.PathLike) -> int:
    """Delete the plan and shard files of ``shards_dir``, and temporary files a killed writer
    left (nothing else); returns how many."""
    shards_dir = Path(shards_dir)
    files = [shards_dir / PLAN_NAME, *shards_dir.glob(SHARD_GLOB), *shards_dir.glob(f".{SHARD_GLOB}.*.tmp"),
             *shards_dir.glob(f".{PLAN_NAME}.*.tmp")]
    removed = 0
    for path in files:
        if path.exists():
            path.unlink()
            removed += 1
    return removed


# --------------------------------------------------------------------------- evaluating subnets
class SubnetEvaluator:
    """Inherited-weight accuracy of subnets of one supernet on one dataset split.

    Holds the supernet on its device (``config.device``; default: CUDA when present), the
    fixed BN-calibration batches on that device (recalibration runs there too) and the
    evaluation images: cached as tensors when ``cache_images`` and they fit
    ``cache_budget_mb`` (ImageNet's 50,000 validation images at 224 px are 30 GB as float32:
    they never do), streamed otherwise through a DataLoader whose ``num_workers`` persistent
    worker processes decode while the device computes.
    """

    def __init__(self, supernet, calib_batches: list, eval_batches: Iterable, config: PairsConfig):
        self.supernet, self.calib_batches, self.eval_batches = supernet.eval(), calib_batches, eval_batches
        self.config = config
        self.catalog = BlockCatalog(supernet.space, supernet.resolution)

    @classmethod
    def from_files(cls, supernet_path: str | os.PathLike, data_root: str | os.PathLike,
                   config: PairsConfig) -> "SubnetEvaluator":
        device = evaluation_device(config.device)
        supernet, _meta = load_supernet(supernet_path, device)
        manifest = load_checked_manifest(data_root, config.skip_bad_images)
        transform = build_transform(supernet.resolution, train=False, augment=config.eval_transform)
        calib = calibration_batches(ManifestDataset(manifest, data_root, "train", transform),
                                    config.bn_calib_batches, config.bn_calib_batch_size, config.seed)
        calib = [batch.to(device) for batch in calib]
        evaluation = ManifestDataset(manifest, data_root, config.eval_split, transform)
        return cls(supernet, calib, eval_batches(evaluation, config, device, supernet.resolution), config)

    @property
    def device(self):
        return next(self.supernet.parameters()).device

    def __call__(self, arch) -> dict[str, float]:
        """``{top1, top5, loss, images, bn_seconds, eval_seconds}`` of ``arch``."""
        started = time.perf_counter()
        if self.config.mode == "extract":
            model, arch_arg = self.supernet.extract(arch).eval(), None
        else:
            model, arch_arg = self.supernet, arch
        recalibrate_bn(model, arch_arg, self.calib_batches, self.config.bn_calib_batches)
        bn_seconds = time.perf_counter() - started
        result = evaluate(model, self.eval_batches, arch_arg)
        return {**result, "bn_seconds": bn_seconds, "eval_seconds": time.perf_counter() - started}


def evaluation_device(requested: str | None = None):
    """``requested`` as a torch device; None: the first CUDA device when there is one, else the CPU."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"pairs.device is {requested!r} but torch sees no CUDA device here")
    return device


def cached_tensor_bytes(num_images: int, resolution: int) -> int:
    """Memory the decoded evaluation images take as float32 ``3 x R x R`` tensors."""
    return num_images * 3 * resolution * resolution * 4


def eval_batches(dataset, config: PairsConfig, device=None, resolution: int | None = None) -> Iterable:
    """The evaluation images: a seeded subset of ``eval_images`` (or all), as a list of
    ``(images, labels)`` tensors on ``device`` when ``cache_images`` and they fit
    ``cache_budget_mb``, else a DataLoader streaming them (``num_workers`` persistent
    workers; pinned memory for a GPU)."""
    device = torch.device(device or "cpu")
    indices = list(range(len(dataset)))
    if config.eval_images is not None and config.eval_images < len(dataset):
        generator = torch.Generator().manual_seed(config.seed)
        indices = sorted(torch.randperm(len(dataset), generator=generator)[:config.eval_images].tolist())
    fits = resolution is None or cached_tensor_bytes(len(indices), resolution) <= config.cache_budget_mb * 2**20
    if config.cache_images and fits:
        loader = DataLoader(Subset(dataset, indices), batch_size=config.eval_batch_size, shuffle=False)
        return [(x.to(device), y.to(device)) for x, y in loader]
    return DataLoader(Subset(dataset, indices), batch_size=config.eval_batch_size, shuffle=False,
                      num_workers=config.num_workers, persistent_workers=config.num_workers > 0,
                      pin_memory=device.type == "cuda", worker_init_fn=_evaluation_worker_init)


def _evaluation_worker_init(worker_id: int) -> None:
    """A streaming worker decodes only: one torch thread (the evaluation owns the cores)."""
    torch.set_num_threads(1)
    seed_worker(worker_id)


# One evaluator per (thread, inputs): loading the supernet and decoding images is paid once
# per worker, not per shard. Per thread, because evaluation mutates the supernet's BN
# statistics, so two threads must never share one.
_local = threading.local()


def cached_evaluator(supernet_path: str, data_root: str, config: PairsConfig) -> SubnetEvaluator:
    key = (str(supernet_path), os.stat(supernet_path).st_mtime_ns, str(data_root),
           json.dumps(config.to_dict(), sort_keys=True))
    if getattr(_local, "key", None) != key:
        _local.evaluator, _local.key = None, None  # free the previous one first
        _local.evaluator, _local.key = SubnetEvaluator.from_files(supernet_path, data_root, config), key
    return _local.evaluator


EvaluatorFactory = Callable[[Mapping[str, Any], PairsConfig], Callable]


def default_evaluator(plan_provenance: Mapping[str, Any], config: PairsConfig) -> SubnetEvaluator:
    """The real evaluator of a plan: its supernet checkpoint on its dataset (checked against the
    plan's sha256, so a checkpoint replaced mid-collection is refused)."""
    supernet = plan_provenance["supernet"]
    if _file_sha256_memo(supernet) != plan_provenance["supernet_sha256"]:
        raise ValueError(f"{supernet} changed since the pairs plan was made (sha256 differs); start a fresh "
                         "collection (--fresh) for the new supernet")
    return cached_evaluator(supernet, plan_provenance["data_root"], config)


_sha_memo: dict[tuple, str] = {}


def _file_sha256_memo(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised by (path, inode, size, mtime): checkpoints are replaced by
    atomic rename (new inode), so a replacement is always re-hashed."""
    stat = os.stat(path)
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _sha_memo:
        _sha_memo[key] = file_sha256(path)
    return _sha_memo[key]


def evaluate_shard(spec: ShardSpec, evaluator_factory: EvaluatorFactory | None = None,
                   log: Callable[[str], None] | None = None, device: str | None = None) -> Path:
    """Evaluate every subnet of one shard and write its Parquet file atomically; return its path.

    A shard whose file already exists (with this plan's key) is not evaluated again.
    ``evaluator_factory(plan_provenance, config)`` returns ``evaluate(arch) -> {top1, top5,
    loss, images, bn_seconds, eval_seconds}`` (default: :func:`default_evaluator`; tests
    inject fakes). Parameters and MACs are counted with the evaluator's ``catalog`` and its
    supernet's class count when it has them (else at 224 px with 1000 classes). ``device``
    overrides ``pairs.device`` (a worker's own GPU); it does not change any row.
    """
    out_path = spec.out_path
    provenance = read_provenance(spec.plan_path)
    if out_path.exists():
        if read_provenance(out_path).get("key") != provenance["key"]:
            raise ValueError(f"{out_path} was written for another plan; delete it or start fresh (--fresh)")
        return out_path
    plan = read_parquet(spec.plan_path)
    rows = plan[plan["shard"] == spec.shard]
    if rows.empty:
        raise ValueError(f"shard {spec.shard} is not in the plan {spec.plan_path} "
                         f"(shards 0..{int(plan['shard'].max())})")
    config = PairsConfig.from_dict(provenance["full_config"])
    if device is not None:
        config = replace(config, device=device)
    space = SearchSpace(SpaceSpec.from_dict(provenance.get("space_spec")))  # the plan's (Table 2 before)

    with torch_threads(config.threads):
        evaluator = (evaluator_factory or default_evaluator)(provenance, config)
        records = []
        for row in rows.itertuples(index=False):
            arch = space.decode(np.asarray(row.genome))
            records.append({**evaluator(arch), "index": row.index, "arch_id": arch.arch_id})
            if log:
                r = records[-1]
                log(f"shard {spec.shard}: {arch.arch_id} top1 {r['top1']:.4f} ({r['eval_seconds']:.1f} s)")
    frame = _shard_frame(rows, pd.DataFrame(records), space, evaluator, provenance)
    write_parquet(out_path, frame, provenance={**provenance, "shard": spec.shard, "code_version": code_version(),
                                               "machine": machine_fingerprint(), "finished": utc_now()})
    return out_path


def _shard_frame(plan_rows, results, space: SearchSpace, evaluator, provenance: Mapping[str, Any]):
    if list(results["arch_id"]) != list(plan_rows["arch_id"]):
        raise AssertionError("evaluated subnets differ from the plan's (genome decoding changed?)")
    genomes = np.stack(plan_rows["genome"].to_numpy()).astype(np.int64)
    catalog = getattr(evaluator, "catalog", None) or BlockCatalog(space, 224)
    num_classes = getattr(getattr(evaluator, "supernet", None), "num_classes", 1000)
    encoding = ArchEncoder(space).encode_genomes(genomes).astype(np.uint8).reshape(len(genomes), -1)
    frame = plan_rows[["index", "arch_id"]].reset_index(drop=True).copy()
    frame["arch_json"] = [space.decode(g).to_json() for g in genomes]
    frame["genome"] = list(genomes)
    frame["encoding"] = list(encoding)
    frame["split"] = plan_rows["split"].to_numpy()
    frame["shard"] = plan_rows["shard"].to_numpy()
    for column, dtype in (("top1", "float64"), ("top5", "float64"), ("loss", "float64"), ("images", "int64"),
                          ("bn_seconds", "float64"), ("eval_seconds", "float64")):
        frame[column] = results[column].to_numpy().astype(dtype)
    frame["params"] = catalog.count_params(genomes, num_classes).astype(np.int64)
    frame["macs"] = catalog.count_macs(genomes, num_classes).astype(np.int64)
    frame["supernet_sha256"] = provenance["supernet_sha256"]
    return frame[list(PAIRS_COLUMNS)]


# --------------------------------------------------------------------------- assembling
def assemble_pairs(plan_path: str | os.PathLike, out_path: str | os.PathLike):
    """Concatenate every shard of the plan into ``out_path`` (atomic); return the frame.

    Raises if a shard is missing, belongs to another plan, or an arch_id repeats.
    """
    plan_path = Path(plan_path)
    provenance = read_provenance(plan_path)
    plan = read_parquet(plan_path)
    shards, missing = [], []
    for shard in range(int(plan["shard"].max()) + 1):
        path = plan_path.parent / SHARD_PATTERN.format(shard)
        if not path.exists():
            missing.append(shard)
            continue
        if read_provenance(path).get("key") != provenance["key"]:
            raise ValueError(f"{path} was written for another plan; start fresh (--fresh)")
        shards.append(read_parquet(path))
    if missing:
        raise ValueError(f"{len(missing)} of {int(plan['shard'].max()) + 1} shards are not evaluated yet "
                         f"(e.g. {missing[:5]}); run the collection again with --resume")
    frame = pd.concat(shards, ignore_index=True).sort_values("index", ignore_index=True)
    duplicated = frame["arch_id"][frame["arch_id"].duplicated()]
    if len(duplicated):
        raise AssertionError(f"arch_id repeated in the pairs: {sorted(set(duplicated))[:5]}")
    if list(frame["arch_id"]) != list(plan["arch_id"]):
        raise AssertionError("the shards' subnets differ from the plan's")
    write_parquet(out_path, frame, provenance={
        **{k: v for k, v in provenance.items() if k != "created"}, "plan": str(plan_path),
        "shards": int(plan["shard"].max()) + 1, "eval_seconds_total": float(frame["eval_seconds"].sum()),
        "assembled_code_version": code_version(), "machine": machine_fingerprint(), "created": utc_now()})
    return frame


def load_pairs(path: str | os.PathLike):
    """Read a pairs table and check it has the documented columns."""
    frame = read_parquet(path)
    missing = [c for c in PAIRS_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a pairs table (missing columns {missing}); it is written by "
                         "`scan-edge collect-pairs`")
    return frame


# --------------------------------------------------------------------------- synthetic pairs
def synthetic_accuracy(space: SearchSpace, genomes: np.ndarray, noise: float = 0.005, seed: int = 0) -> np.ndarray:
    """A known, nonlinear "accuracy" of genomes, for tests and demos without a supernet.

    Saturating in log-MACs and log-params (capacity), plus architecture effects that
    capacity does not explain: a diminishing bonus for MHSAs, GELU better in attention,
    fused FFNs better in the high-resolution stages, 5x5 kernels better in stage 3, and the
    stage-4 width interacting with stage-3 depth. Returns fractions in (0, 1), with
    Gaussian ``noise`` (standard deviation, in accuracy units).
    """
    genomes = np.atleast_2d(np.asarray(genomes, dtype=np.int64))
    catalog = BlockCatalog(space, 224)
    macs = catalog.count_macs(genomes) / 1e6
    params = catalog.count_params(genomes) / 1e6
    active = space.active_mask(genomes)
    gi = space.gene_index

    def count(predicate) -> np.ndarray:
        total = np.zeros(len(genomes))
        for name, index in gi.items():
            hit = predicate(name)
            if hit is not None:
                total += active[:, index] & (genomes[:, index] == hit)
        return total

    mhsa = count(lambda n: 1 if n.endswith(".mhsa") else None)
    gelu_attn = count(lambda n: 0 if n.endswith(".mhsa.act") else None)
    fused_early = count(lambda n: 1 if n.startswith(("s1.", "s2.")) and n.endswith("ffn.type") else None)
    k5_stage3 = count(lambda n: 1 if n.startswith("s3.") and n.endswith("ffn.kernel") else None)
    depth3 = np.asarray(space.spec.stages[2].depths)[genomes[:, gi["s3.depth"]]]
    width4 = genomes[:, gi["s4.width"]] / 3.0
    accuracy = (0.80 - 0.15 * np.exp(-macs / 800.0) - 0.08 * np.exp(-params / 6.0)
                + 0.01 * np.sqrt(mhsa) + 0.003 * gelu_attn + 0.003 * fused_early + 0.002 * k5_stage3
                + 0.006 * width4 * (depth3 - 7.5) / 1.5)
    return np.clip(accuracy + np.random.default_rng(seed).normal(0.0, noise, len(genomes)), 0.0, 1.0)


def synthetic_pairs(num_subnets: int, seed: int = 0, noise: float = 0.005, val_fraction: float = 1 / 7,
                    test_fraction: float = 1 / 7, space: SearchSpace | None = None):
    """A complete pairs table (the schema above) whose top-1 is :func:`synthetic_accuracy`:
    for the predictor's and the search's tests and demos. Columns that only a real
    evaluation has are placeholders: ``top5 = min(1, top1 + 0.15)``, ``loss = -log(top1)``,
    ``images = 0``, zero seconds, ``supernet_sha256 = "synthetic"``, one shard."""
    space = space or SearchSpace()
    config = PairsConfig(num_subnets=num_subnets, seed=seed, val_fraction=val_fraction,
                         test_fraction=test_fraction, shard_size=num_subnets)
    plan = make_plan(config, space)
    top1 = synthetic_accuracy(space, np.stack(plan["genome"].to_numpy()), noise, seed)
    results = pd.DataFrame({"arch_id": plan["arch_id"], "top1": top1, "top5": np.minimum(1.0, top1 + 0.15),
                            "loss": -np.log(np.maximum(top1, 1e-6)), "images": 0, "bn_seconds": 0.0,
                            "eval_seconds": 0.0})
    return _shard_frame(plan, results, space, None, {"supernet_sha256": "synthetic"})
