"""DVC's stage graph as the doors read it: light (no Prefect, no DVC import), so that
``scan-edge status`` can use it without loading a flow."""
from __future__ import annotations

import re
from typing import Mapping

_DOT_EDGE = re.compile(r'^"([^"]+)" -> "([^"]+)";$', re.MULTILINE)


def upstream_from_dot(dot: str) -> dict[str, set[str]]:
    """Every stage's transitive upstream stages, from the output of ``dvc dag --dot``."""
    direct: dict[str, set[str]] = {}
    for upstream, downstream in _DOT_EDGE.findall(dot):
        direct.setdefault(downstream, set()).add(upstream)
    return {stage: _closure(stage, direct) for stage in direct}


def _closure(stage: str, direct: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(direct.get(stage, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(direct.get(name, ()))
    return seen


__all__ = ["upstream_from_dot"]
