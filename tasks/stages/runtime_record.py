"""The runtime stage, light: record which runtime each device runs.

It is DVC's probe of a runtime upgrade (``always_changed`` in ``dvc.yaml``, so it runs on every
``dvc repro``) and a step of every ``reproduce``; it needs only the runtime's identity
(``tasks.stages.runtimes``), not the libraries that measure (``tasks.stages.latency`` imports
torch and timm through the baselines: about 17 s of imports on the 2-core machine, for a
probe whose own work takes well under a second).

``tasks.stages.latency.stage_runtime`` is the same function, kept there unchanged because
every device stage's code identity includes that module (editing it would re-run every
LUT): the registry runs this one.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from nas_core.io import write_json
from nas_core.layout import DATA_ROOT, Layout
from tasks.stages.common import Paths
from tasks.stages.runtimes import runtime_identity


def stage_runtime(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Record :func:`runtime_identity` in ``runtime/<device>.json`` (rewritten only when it
    changed, so a runtime upgrade, and nothing else, re-runs the device's LUT under DVC)."""
    path = Layout(root).runtime(device)
    identity = runtime_identity(params, device, root)
    try:
        unchanged = json.loads(path.read_text()) == json.loads(json.dumps(identity))
    except (OSError, ValueError):
        unchanged = False
    if not unchanged:
        write_json(path, identity)
    return {"runtime": path}


__all__ = ["stage_runtime"]
