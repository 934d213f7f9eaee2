"""Measuring latency on real runtimes: the foundation of the per-device latency lookup tables.

Modules (import them directly; this package imports nothing heavy):

* ``devices``   -- ``DeviceProfile``, the default profiles, ``load_profiles``, ``get_profile``,
  ``check_usable`` (is the runtime / provider / GPU there, and if not, why).
* ``runner``    -- the torch-free device runner (a package copied into bundles): sessions
  (onnxruntime, OpenVINO, TensorRT), the timing loop, ``profile_models`` (drift checks,
  checkpoints, resume) and the bundle runner ``main``; ``timing`` re-exports its names.
* ``export``    -- ``export_onnx`` (classic exporter, opset 17), ``export_openvino``.
* ``measure``   -- ``measure_module``, ``measure_onnx``, ``measure_many`` for torch modules.
* ``bundle``    -- ``make_bundle`` / ``export_bundle``: folders that time models on edge devices.
* ``baselines`` -- the models the paper compares against (timm's, and MicroViT), measured end to end.

The names below are also reachable as ``nas_core.latency.<name>``, imported on first use.
"""
from __future__ import annotations

import importlib

_LAZY_EXPORTS = {
    "DEFAULT_DEVICES": "devices", "DeviceProfile": "devices", "Usability": "devices",
    "load_profiles": "devices", "get_profile": "devices", "check_usable": "devices",
    "TimingConfig": "timing", "TimingResult": "timing", "ModelEntry": "timing",
    "time_callable": "timing", "open_session": "timing", "profile_models": "timing",
    "export_onnx": "export", "export_openvino": "export",
    "measure_onnx": "measure", "measure_module": "measure", "measure_many": "measure",
    "make_bundle": "bundle", "export_bundle": "bundle",
    "BASELINE_MODELS": "baselines", "measure_baselines": "baselines",
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name: str):
    if name not in _LAZY_EXPORTS:
        raise AttributeError(f"module 'nas_core.latency' has no attribute {name!r}")
    module = importlib.import_module(f"nas_core.latency.{_LAZY_EXPORTS[name]}")
    return getattr(module, name)
