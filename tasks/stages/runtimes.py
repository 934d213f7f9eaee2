"""A device's profile and what a latency on it depends on besides the model: the runtime, its
version (the board's, for a board) and the machine.

Light on purpose: a no-op ``reproduce`` computes the runtime identity of every measuring step
(``tasks.step_stamps``) and must not import torch or timm for it (``tasks.stages.latency`` does,
through the baselines). A board's version is asked through its access, which the lazy
``tasks.stages`` facade loads only for a board.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping

from nas_core.io import machine_fingerprint
from nas_core.latency.devices import check_usable, get_profile, load_profiles
from nas_core.layout import DATA_ROOT
from tasks import stages
from tasks.stages.common import section


def device_profile(params: Mapping[str, Any], device: str):
    """The device profile ``device`` (``devices:`` over the built-in ones) at ``search_space.resolution``."""
    profile = get_profile(device, load_profiles(section(params, "devices")))
    resolution = section(params, "search_space").get("resolution")
    if resolution and int(resolution) != profile.resolution:
        profile = dataclasses.replace(profile, resolution=int(resolution))
    return profile


_BOARD_VERSIONS: dict[tuple, tuple[float, str | None]] = {}
BOARD_VERSION_TTL_S = 300.0  # a board's version is asked at most every 5 minutes per process


def device_runtime_version(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> str | None:
    """The runtime version ``device`` runs: installed here for a local device, reported by the
    board for a ``worker`` / ``bundle`` device (the version ``reprofile`` compares)."""
    profile = device_profile(params, device)
    if profile.is_local:
        return check_usable(profile).runtime_version
    key = (device, json.dumps(profile.location_options, sort_keys=True, default=str), str(root))
    cached = _BOARD_VERSIONS.get(key)
    # An unknown version (a bundle board that has sent nothing back yet) is asked again each time.
    if cached is None or cached[1] is None or time.monotonic() - cached[0] > BOARD_VERSION_TTL_S:
        cached = (time.monotonic(), stages.device_access(params, device, root, paired=False).runtime_version())
        _BOARD_VERSIONS[key] = cached
    return cached[1]


def runtime_identity(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> dict[str, Any]:
    """What a latency on ``device`` depends on besides the model: the profile's settings, the
    runtime's name and version (the board's, for a board), and the machine (this one for a
    local device; the location for a board). (Prefect cache keys and the ``runtime`` stage's
    file, on which DVC's device stages depend.)"""
    profile = device_profile(params, device)
    if not profile.is_local:
        return {"device": device, "settings": profile.to_settings(), "runtime": profile.backend,
                "runtime_version": device_runtime_version(params, device, root), "usable": True,
                "location": profile.location, "machine": {"location": profile.location,
                                                          **{k: str(v) for k, v in profile.location_options.items()}}}
    usability = check_usable(profile)
    machine = machine_fingerprint()
    return {"device": device, "settings": profile.to_settings(), "runtime": usability.runtime_name,
            "runtime_version": usability.runtime_version, "usable": usability.usable,
            "machine": {k: machine[k] for k in ("id", "cpu", "cores", "machine", "system")}}
