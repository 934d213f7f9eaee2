"""Loading ``params.yaml``: every knob grouped by stage, with named profiles.

The top-level sections (``dataset``, ``supernet``, ...) hold the default profile's values
(``smoke``: this CPU, minutes). ``profiles.<name>`` overlays a partial copy of the same
sections; ``load_params(profile=...)`` deep-merges it over the defaults. The active
profile is the ``profile`` key unless the caller names one.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS_PATH = Path("params.yaml")


def deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(path: str | Path = DEFAULT_PARAMS_PATH, profile: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no params file (run from the project root, or pass --params)")
    raw = yaml.safe_load(path.read_text()) or {}
    profiles = raw.pop("profiles", {}) or {}
    name = profile or raw.get("profile", "smoke")
    if name != "smoke" and name not in profiles:
        known = ", ".join(["smoke", *sorted(profiles)])
        raise KeyError(f"unknown profile {name!r} in {path}; known profiles: {known}")
    params = deep_merge(raw, profiles.get(name, {}))
    params["profile"] = name
    return params


def section(params: dict, name: str) -> dict:
    try:
        return params[name]
    except KeyError:
        raise KeyError(f"params.yaml has no section {name!r}") from None
