"""Task runners from params: threads here, or Dask worker processes (the pairs stage's shards).

``params.yaml`` names the runner::

    runners:
      runner: thread        # thread | dask
      max_workers: null     # thread: pool size (null: Prefect's default)
      dask_address: null    # dask: tcp://host:8786 of an existing cluster; null: a LocalCluster
      n_workers: 2          # dask LocalCluster: worker processes
      threads_per_worker: 1 # dask LocalCluster: 1, so a task's torch threads own their core

A Dask runner needs a real Prefect API: run its flow inside
``tasks._server.prefect_server(required=runner_needs_server(params))``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

RUNNERS = ("thread", "dask")
_KNOWN_KEYS = {"runner", "max_workers", "dask_address", "n_workers", "threads_per_worker"}


def _runner_name(params: Mapping[str, Any] | None) -> str:
    params = params or {}
    unknown = set(params) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"runner params: unknown keys {sorted(unknown)} (known: {sorted(_KNOWN_KEYS)})")
    name = params.get("runner") or "thread"
    if name not in RUNNERS:
        raise ValueError(f"runner params: runner must be one of {RUNNERS}, not {name!r}")
    return name


def runner_needs_server(params: Mapping[str, Any] | None) -> bool:
    """True when the runner's tasks run in other processes, which need a real Prefect API."""
    return _runner_name(params) == "dask"


def _positive_int(params: Mapping[str, Any], key: str, default: int) -> int:
    value = params.get(key)
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"runner params: {key} must be a positive integer, not {value!r}")
    return value


def dask_task_runner(params: Mapping[str, Any]):
    """A DaskTaskRunner on an existing cluster (``dask_address``) or a new LocalCluster.

    The LocalCluster uses worker processes with one thread each: tasks here are
    CPU-bound Python/torch, so threads would fight over the GIL and the cores.
    """
    address = params.get("dask_address")
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": _positive_int(params, "n_workers", 2),
            "threads_per_worker": _positive_int(params, "threads_per_worker", 1),
            "processes": True,
            "dashboard_address": None,  # no fixed port 8787 to collide on, no bokeh import
        },
    )


def task_runner_from_params(params: Mapping[str, Any] | None = None):
    """The task runner a flow should use: ``ThreadPoolTaskRunner`` (default) or Dask.

    Use with ``my_flow.with_options(task_runner=task_runner_from_params(p))``.
    """
    params = params or {}
    if _runner_name(params) == "dask":
        return dask_task_runner(params)
    max_workers = params.get("max_workers")
    if max_workers is None:
        return ThreadPoolTaskRunner()
    return ThreadPoolTaskRunner(max_workers=_positive_int(params, "max_workers", 1))


__all__ = ["task_runner_from_params", "dask_task_runner", "runner_needs_server", "RUNNERS"]
