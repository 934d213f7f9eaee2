"""Prefect tasks of the accuracy-pairs stage: one task per shard, one to assemble.

Thin adapters over :mod:`nas_core.pairs`. A shard task is idempotent through its output
file (``evaluate_shard`` skips a shard whose file exists), so no Prefect cache is needed
for resumption: a re-run flow maps the same shards and the finished ones return at once.
Retries cover a worker lost mid-shard (the shard is written atomically, so nothing
partial is left behind).
"""
from __future__ import annotations

from pathlib import Path

from prefect import task

from nas_core.pairs import EvaluatorFactory, ShardSpec, assemble_pairs, evaluate_shard
from tasks import cpu_lock


@task(name="evaluate-pairs-shard", retries=1, retry_delay_seconds=5,
      task_run_name="pairs-shard-{spec.shard}")
def evaluate_pairs_shard(spec: ShardSpec, evaluator_factory: EvaluatorFactory | None = None) -> str:
    """Evaluate one shard's subnets (inherited weights, BN recalibrated); return its Parquet path."""
    with cpu_lock("shared"):  # CPU-heavy: keep latency measurement (exclusive) off the machine meanwhile
        return str(evaluate_shard(spec, evaluator_factory))


@task(name="assemble-accuracy-pairs")
def assemble_accuracy_pairs(plan_path: str, out_path: str, shard_paths: list[str]) -> str:
    """Concatenate the finished shards into the pairs table (``shard_paths`` orders it after them)."""
    missing = [p for p in shard_paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"shard files reported but absent: {missing[:3]} (a worker on another "
                                "machine without a shared folder?)")
    assemble_pairs(plan_path, out_path)
    return out_path
