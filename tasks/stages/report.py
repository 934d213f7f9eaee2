"""The report stage: Tables 3-6 and Figs. 3-5 from the artifacts (``nas_core.report``)."""
from __future__ import annotations

import os
from typing import Any, Mapping

from nas_core.layout import DATA_ROOT, Layout
from nas_core.report import build_report
from tasks import stage_lock
from tasks.stages.common import Paths, _say, equal_budget_baselines, finetune_baselines, search_devices, search_runs
from tasks.stages.space import search_space


def stage_report(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Tables 3-6 and Figs. 3-5 from the artifacts under ``root`` (``nas_core.report``)."""
    layout = Layout(root)
    with stage_lock("shared"):
        paths = build_report(layout.root, layout.report, devices=search_devices(params),
                             searches=[run.key for run in search_runs(params)],
                             baselines=[*finetune_baselines(params), *equal_budget_baselines(params)],
                             params=params, space=search_space(params))
    _say(f"report: {paths['readme']}")
    return paths
