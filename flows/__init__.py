"""Prefect flows: compose tasks into the pipeline's DAG, choose task runners and schedules.

Shared plumbing: ``flows._server`` (a real Prefect API when a run needs one, and
``require_flow_result``) and ``flows._runners`` (task runners from params, ``cpu_lock``).
"""
