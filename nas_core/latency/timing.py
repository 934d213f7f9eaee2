"""Latency measurement that runs anywhere: the host's door to the device runner.

The runner itself is the package :mod:`nas_core.latency.runner` (standard library, numpy and
pyarrow only; copied verbatim into profiling bundles and run on boards without torch). This module
gathers its public names in one place for the host side, so that ``from nas_core.latency.timing
import TimingConfig`` and ``timing.profile_models(...)`` read as before.
"""
from __future__ import annotations

from .runner.cli import build_parser, load_manifest, main, runtime_report
from .runner.host import atomic_path, load_average, machine_fingerprint, pinned_cpus, utc_now
from .runner.profiling import BASELINE_TIMINGS, Opener, profile_models
from .runner.sessions import (ORT_DEVICE_PROVIDERS, OpenVinoSession, OrtSession, TensorRtSession, make_input,
                              open_entry, open_session, openvino_model_cache, runtime_identity)
from .runner.settings import (MANIFEST_FORMAT, MANIFEST_NAME, ONNX_BACKENDS, SETTINGS_KEYS, ModelEntry,
                              normalise_settings)
from .runner.table import (IDENTITY_KEYS, PROVENANCE_KEY, ROW_SCHEMA, check_same_identity, read_rows, run_identity,
                           write_rows)
from .runner.timer import (CLOCKS, CPU_PROVIDERS, Clock, TimingConfig, TimingResult, median_ci, paired_timing,
                           settings_clock, time_callable, time_paired, time_session)

__all__ = [
    "BASELINE_TIMINGS",
    "CLOCKS",
    "CPU_PROVIDERS",
    "Clock",
    "IDENTITY_KEYS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "ModelEntry",
    "ONNX_BACKENDS",
    "ORT_DEVICE_PROVIDERS",
    "OpenVinoSession",
    "Opener",
    "OrtSession",
    "PROVENANCE_KEY",
    "ROW_SCHEMA",
    "SETTINGS_KEYS",
    "TensorRtSession",
    "TimingConfig",
    "TimingResult",
    "atomic_path",
    "build_parser",
    "check_same_identity",
    "load_average",
    "load_manifest",
    "machine_fingerprint",
    "main",
    "make_input",
    "median_ci",
    "paired_timing",
    "normalise_settings",
    "open_entry",
    "open_session",
    "openvino_model_cache",
    "pinned_cpus",
    "profile_models",
    "read_rows",
    "run_identity",
    "runtime_identity",
    "runtime_report",
    "settings_clock",
    "time_callable",
    "time_paired",
    "time_session",
    "utc_now",
    "write_rows",
]
