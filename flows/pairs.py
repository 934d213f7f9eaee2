"""The accuracy-pairs flow (§5.2): evaluate thousands of subnets in parallel shards.

    collect_pairs(params, supernet="data/supernet/supernet.pt", data_root="data/dataset")

:func:`collect_pairs` fixes the plan (``nas_core.pairs.prepare_pairs``: subnets, splits and
shards from the seed), then runs :func:`accuracy_pairs_flow`, which maps one task per
unfinished shard over the task runner and assembles the table. The runner comes from
params: ``runners:`` (see ``flows/_runners.py``), overlaid by ``pairs.runner``, e.g. for a
real cluster::

    pairs:
      runner: {runner: dask, dask_address: "tcp://scheduler:8786"}

Dask workers must see the same files (supernet, dataset, shards folder: a shared disk) and
a Prefect API; a real server is started for the run when none is configured
(``flows._server.prefect_server``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from prefect import flow, unmapped

from flows._runners import runner_needs_server, task_runner_from_params
from flows._server import prefect_server, require_flow_result
from nas_core.pairs import EvaluatorFactory, PairsConfig, ShardSpec, prepare_pairs
from tasks.pairs import assemble_accuracy_pairs, evaluate_pairs_shard

DEFAULT_SUPERNET = Path("data/supernet/supernet.pt")
DEFAULT_DATA = Path("data/dataset")
DEFAULT_OUT = Path("data/pairs/accuracy_pairs.parquet")


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
                  log: Callable[[str], None] = print) -> Path:
    """Collect the subnet-accuracy pairs: plan, evaluate the unfinished shards, assemble.

    ``params`` is the loaded params.yaml (its ``pairs`` and ``runners`` sections);
    ``num_subnets`` overrides ``pairs.num_subnets``. See ``prepare_pairs`` for ``resume`` /
    ``fresh``. Returns the path of the assembled table.
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
    plan = prepare_pairs(config, supernet, data_root, shards_dir, resume=resume, fresh=fresh)
    pending = [spec.shard for spec in plan.pending()]
    log(f"pairs: {plan.num_subnets} subnets in {plan.num_shards} shards of {config.shard_size}; "
        f"{len(pending)} shards to evaluate ({plan.path.parent})")
    runner = runner_params(params)
    with prefect_server(required=runner_needs_server(runner)):
        configured = accuracy_pairs_flow.with_options(task_runner=task_runner_from_params(runner))
        state = configured(str(plan.path), pending, str(out), evaluator_factory, return_state=True)
        return Path(require_flow_result(state, "accuracy-pairs flow"))
