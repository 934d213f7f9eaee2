"""The accuracy-pairs stage (§5.2): thousands of subnet evaluations in parallel shards.

    collect_pairs(params, supernet="data/supernet/supernet.pt", data_root="data/dataset")

:func:`collect_pairs` fixes the plan (``nas_core.pairs.prepare_pairs``: subnets, splits and
shards from the seed), then runs :func:`accuracy_pairs_flow`, which maps one task per
unfinished shard (:func:`evaluate_pairs_shard`) over a Prefect task runner and assembles
the table. It is the stage's own parallel map, so it lives here beside its two tasks, where
the stage function (``tasks.stages.stage_pairs``) and ``scan-edge collect-pairs`` reach it.
The runner comes from params: ``runners:`` (``tasks/_runners.py``), overlaid by
``pairs.runner``, e.g. for a real cluster::

    pairs:
      runner: {runner: dask, dask_address: "tcp://scheduler:8786"}

Dask workers must see the same files (supernet, dataset, shards folder: a shared disk) and
a Prefect API; a real server is started for the run when none is configured
(``tasks._server.prefect_server``).

**GPUs.** The evaluator runs on ``pairs.device`` (default: CUDA when present). With several
GPUs, run one Dask worker per GPU (``runners: {runner: dask, n_workers: <GPUs>}``): worker
``i`` evaluates on ``cuda:i`` (:func:`worker_device`). A cluster whose workers each see one
GPU (``dask-cuda``'s ``CUDA_VISIBLE_DEVICES`` per worker) works the same way.

A shard task is idempotent through its output file (``evaluate_shard`` skips a shard whose
file exists), so no Prefect cache is needed for resumption: a re-run flow maps the same
shards and the finished ones return at once. Retries cover a worker lost mid-shard (the
shard is written atomically, so nothing partial is left behind).
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from distributed import get_worker
from prefect import flow, task, unmapped

from nas_core.io import read_provenance
from nas_core.layout import DATA
from nas_core.pairs import (EvaluatorFactory, PairsConfig, ShardSpec, assemble_pairs, evaluate_shard,
                            prepare_pairs)
from tasks import cpu_lock
from tasks._runners import runner_needs_server, task_runner_from_params
from tasks._server import prefect_server, require_flow_result

DEFAULT_SUPERNET, DEFAULT_DATA, DEFAULT_OUT = DATA.supernet, DATA.dataset, DATA.pairs


# --------------------------------------------------------------------------- the tasks
@task(name="evaluate-pairs-shard", retries=1, retry_delay_seconds=5,
      task_run_name="pairs-shard-{spec.shard}")
def evaluate_pairs_shard(spec: ShardSpec, evaluator_factory: EvaluatorFactory | None = None) -> str:
    """Evaluate one shard's subnets (inherited weights, BN recalibrated); return its Parquet path."""
    requested = (read_provenance(spec.plan_path).get("full_config") or {}).get("device")
    with cpu_lock("shared"):  # CPU-heavy: keep latency measurement (exclusive) off the machine meanwhile
        return str(evaluate_shard(spec, evaluator_factory, device=worker_device(requested)))


def worker_device(requested: str | None) -> str | None:
    """This worker's own GPU when several are visible and ``pairs.device`` names no index:
    ``cuda:<i mod GPUs>`` for Dask worker ``i`` (a LocalCluster names its workers 0..n-1),
    ``cuda:0`` elsewhere. None (``pairs.device`` as it is) on one GPU or none."""
    if requested not in (None, "cuda") or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    try:
        name = str(get_worker().name)
    except ValueError:  # not inside a Dask worker
        name = "0"
    index = int(name) if name.isdigit() else zlib.crc32(name.encode())
    return f"cuda:{index % torch.cuda.device_count()}"


@task(name="assemble-accuracy-pairs")
def assemble_accuracy_pairs(plan_path: str, out_path: str, shard_paths: list[str]) -> str:
    """Concatenate the finished shards into the pairs table (``shard_paths`` orders it after them)."""
    missing = [p for p in shard_paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"shard files reported but absent: {missing[:3]} (a worker on another "
                                "machine without a shared folder?)")
    assemble_pairs(plan_path, out_path)
    return out_path


# --------------------------------------------------------------------------- the shard map
def default_shards_dir(out: str | Path) -> Path:
    """``data/pairs/accuracy_pairs.parquet`` -> ``data/pairs/shards``."""
    return Path(out).parent / "shards"


@flow(name="accuracy-pairs")
def accuracy_pairs_flow(plan_path: str, shards: list[int], out_path: str,
                        evaluator_factory: EvaluatorFactory | None = None) -> str:
    """Evaluate the given shards of the plan (one task each, in parallel) and assemble the table."""
    specs = [ShardSpec(plan_path, shard) for shard in shards]
    futures = evaluate_pairs_shard.map(specs, evaluator_factory=unmapped(evaluator_factory))
    return assemble_accuracy_pairs(plan_path, out_path, futures.result())


def runner_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``runners:`` overlaid by ``pairs.runner`` (both optional).

    The thread runner gets ``max_workers = cpu_count`` unless set: each thread holds its own
    copy of the supernet and the evaluation images (evaluation mutates BN statistics, so
    threads cannot share one), and Prefect's default pool would start a thread per shard.
    """
    runner = {**(params.get("runners") or {}), **((params.get("pairs") or {}).get("runner") or {})}
    if (runner.get("runner") or "thread") == "thread" and runner.get("max_workers") is None:
        runner["max_workers"] = os.cpu_count() or 1
    return runner


def collect_pairs(params: Mapping[str, Any], *, supernet: str | Path = DEFAULT_SUPERNET,
                  data_root: str | Path = DEFAULT_DATA, out: str | Path = DEFAULT_OUT,
                  shards_dir: str | Path | None = None, num_subnets: int | None = None, resume: bool = False,
                  fresh: bool = False, evaluator_factory: EvaluatorFactory | None = None,
                  log: Callable[[str], None] = print, space=None) -> Path:
    """Collect the subnet-accuracy pairs: plan, evaluate the unfinished shards, assemble.

    ``params`` is the loaded params.yaml (its ``pairs`` and ``runners`` sections);
    ``num_subnets`` overrides ``pairs.num_subnets``. See ``prepare_pairs`` for ``resume`` /
    ``fresh``. ``space``: the search space the subnets are drawn from (the supernet's; default
    Table 2). Each shard task holds the CPU lock (shared) itself: a lock held here would
    block the shard workers behind a waiting latency measurement. Returns the path of the
    assembled table.
    """
    section = dict(params.get("pairs") or {})
    if num_subnets is not None:
        section["num_subnets"] = num_subnets
    config = PairsConfig.from_dict(section)
    if evaluator_factory is None:
        for path, what in ((supernet, "supernet checkpoint (scan-edge train-supernet)"),
                           (data_root, "dataset folder (the dataset stage)")):
            if not Path(path).exists():
                raise FileNotFoundError(f"{path}: no {what}")
    shards_dir = Path(shards_dir) if shards_dir is not None else default_shards_dir(out)
    plan = prepare_pairs(config, supernet, data_root, shards_dir, resume=resume, fresh=fresh, space=space)
    pending = [spec.shard for spec in plan.pending()]
    log(f"pairs: {plan.num_subnets} subnets in {plan.num_shards} shards of {config.shard_size}; "
        f"{len(pending)} shards to evaluate ({plan.path.parent})")
    runner = runner_params(params)
    with prefect_server(required=runner_needs_server(runner)):
        configured = accuracy_pairs_flow.with_options(task_runner=task_runner_from_params(runner))
        state = configured(str(plan.path), pending, str(out), evaluator_factory, return_state=True)
        return Path(require_flow_result(state, "accuracy-pairs flow"))


__all__ = ["collect_pairs", "accuracy_pairs_flow", "evaluate_pairs_shard", "assemble_accuracy_pairs",
           "runner_params", "default_shards_dir"]
