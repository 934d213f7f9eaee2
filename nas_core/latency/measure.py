"""Host-side measuring: torch modules in, latency out, on any usable device profile.

ONNX backends (onnxruntime, openvino, tensorrt) export the module with
``export.export_onnx`` and time the file through ``timing``; the torch backend times the
eager module (``torch.inference_mode``, ``torch.set_num_threads(threads)``). Either way
the timing loop is ``timing.time_callable``, so numbers from all backends mean the same.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pandas as pd

from nas_core.io import code_version
from nas_core.latency import timing
from nas_core.latency.devices import DeviceProfile, Usability, check_usable
from nas_core.latency.export import export_onnx
from nas_core.latency.timing import ModelEntry, TimingConfig, TimingResult


def require_usable(profile: DeviceProfile) -> Usability:
    usability = check_usable(profile)
    if not usability.usable:
        raise RuntimeError(f"device {profile.name!r} is not usable here: {usability.reason}")
    return usability


def measure_onnx(onnx_path: str | os.PathLike, input_shape: Sequence[int], profile: DeviceProfile,
                 config: TimingConfig | None = None, seed: int = 0, pin_cpus: bool = True) -> TimingResult:
    """Time one ONNX file on ``profile``'s runtime (CPU-pinned as in ``timing.pinned_cpus``)."""
    usability = require_usable(profile)
    settings = profile.to_settings()
    with timing.pinned_cpus(profile.threads, enabled=pin_cpus and profile.options.get("pin_cpus", True)):
        session = timing.open_session(onnx_path, input_shape, settings, seed)
        try:
            result = timing.time_session(session, config, _clock(profile))
        finally:
            session.close()
    return _with_runtime(result, profile, usability)


def measure_module(module, input_shape: Sequence[int], profile: DeviceProfile, workdir: str | os.PathLike | None = None,
                   config: TimingConfig | None = None, seed: int = 0, pin_cpus: bool = True) -> TimingResult:
    """Latency of ``module`` on ``profile``: exported to ONNX in ``workdir`` (a temporary
    folder when None) for ONNX backends, eager for the torch backend."""
    if profile.backend != "torch":
        with _folder(workdir) as folder:
            onnx_path = export_onnx(module, input_shape, folder / "model.onnx")
            return measure_onnx(onnx_path, input_shape, profile, config, seed, pin_cpus)
    usability = require_usable(profile)
    with timing.pinned_cpus(profile.threads, enabled=pin_cpus and profile.options.get("pin_cpus", True)):
        session = TorchSession(module, input_shape, profile.to_settings(), seed)
        try:
            result = timing.time_session(session, config, _clock(profile))
        finally:
            session.close()
    return _with_runtime(result, profile, usability)


def measure_many(named_modules: Mapping[str, object], profile: DeviceProfile, out_path: str | os.PathLike | None = None, *,
                 input_shapes: Mapping[str, Sequence[int]] | None = None, workdir: str | os.PathLike | None = None,
                 reference_id: str | None = None, seed: int = 0, resume: bool = True, drift_tolerance: float = 0.10,
                 config: TimingConfig | None = None, check_every: int = 10, max_retries: int = 2,
                 drift_pause_s: float = 2.0, progress: bool = True):
    """Time many modules with ``timing.profile_models`` (drift checks, checkpoints, resume).

    Modules are exported lazily, just before they are timed, to ``workdir`` (so a resumed
    run does not re-export finished ones). Input shapes default to the profile's
    (batch, 3, resolution, resolution). Writes ``out_path`` (default
    ``workdir/latency.parquet``; the schema is in ``nas_core.latency.runner.table``'s docstring) and returns it
    as a pandas DataFrame.
    """
    usability = require_usable(profile)
    shapes = {name: tuple(input_shapes[name]) if input_shapes and name in input_shapes else profile.input_shape()
              for name in named_modules}
    entries = [ModelEntry(id=name, path=None, input_shape=shapes[name]) for name in named_modules]
    with _folder(workdir) as folder:
        out_path = Path(out_path) if out_path is not None else folder / "latency.parquet"
        open_fn = _module_opener(named_modules, profile, folder, seed)
        rows = timing.profile_models(
            entries, profile.to_settings(), out_path, reference_id=reference_id, seed=seed, resume=resume,
            drift_tolerance=drift_tolerance, config=config, check_every=check_every, max_retries=max_retries,
            drift_pause_s=drift_pause_s, open_fn=open_fn, runtime=(usability.runtime_name, usability.runtime_version),
            code_version=code_version(), progress=progress,
        )
        return pd.DataFrame(rows)


class TorchSession:
    """Eager PyTorch with the session protocol of ``timing`` (run / outputs / info / close).

    The module is copied (so moving it to a GPU or to fp16 leaves the caller's alone) and
    called under ``torch.inference_mode``; CUDA calls are synchronised so that a call's
    time is its GPU time. ``torch.set_num_threads(threads)`` is restored on ``close``.
    """

    _DTYPES = {"fp32": "float32", "default": "float32", "fp16": "float16", "bf16": "bfloat16"}

    def __init__(self, module, input_shape: Sequence[int], settings: Mapping, seed: int = 0):
        import torch  # on first use: nas_core.latency and nas_core.io import without torch (hosts driving boards)

        self.torch = torch
        device = torch.device(settings["provider"])
        dtype = getattr(torch, self._DTYPES[settings["precision"]])
        self.previous_threads = torch.get_num_threads()
        torch.set_num_threads(int(settings["threads"]))
        self.module = copy.deepcopy(module).eval().to(device=device, dtype=dtype)
        self.input = torch.from_numpy(timing.make_input(input_shape, seed)).to(device=device, dtype=dtype)
        self.synchronize = torch.cuda.synchronize if device.type == "cuda" else None
        self._output = None
        self.info = {"provider": str(device), "precision_actual": "fp32" if dtype == torch.float32 else settings["precision"]}

    def run(self) -> None:
        with self.torch.inference_mode():
            self._output = self.module(self.input)
        if self.synchronize is not None:
            self.synchronize()

    def outputs(self) -> list:
        outputs = self._output if isinstance(self._output, (tuple, list)) else [self._output]
        return [o.float().cpu().numpy() for o in outputs]

    def close(self) -> None:
        self.torch.set_num_threads(self.previous_threads)
        self.module = None


def _module_opener(named_modules: Mapping[str, object], profile: DeviceProfile, folder: Path, seed: int):
    """An ``open_fn`` for ``profile_models`` that builds sessions from torch modules."""
    def open_module(entry: ModelEntry, settings: Mapping):
        module = named_modules[entry.id]
        if profile.backend == "torch":
            return TorchSession(module, entry.input_shape, settings, seed)
        onnx_path = export_onnx(module, entry.input_shape, folder / f"{safe_file_stem(entry.id)}.onnx")
        return timing.open_session(onnx_path, entry.input_shape, settings, seed)
    return open_module


def safe_file_stem(model_id: str) -> str:
    """A file name for a model id: readable, and unique even when ids differ only in odd characters."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)[:80]
    return f"{readable}-{hashlib.sha1(model_id.encode()).hexdigest()[:8]}"


def _clock(profile: DeviceProfile):
    """The profile's clock (``options["clock"]``: wall by default, see ``timing.CLOCKS``)."""
    return timing.CLOCKS[timing.settings_clock(profile.to_settings())]


def _with_runtime(result: TimingResult, profile: DeviceProfile, usability: Usability) -> TimingResult:
    info = {**result.info, "device": profile.name, "clock": timing.settings_clock(profile.to_settings()),
            "runtime": usability.runtime_name,
            "runtime_version": usability.runtime_version}
    return dataclasses.replace(result, info=info)


@contextlib.contextmanager
def _folder(workdir: str | os.PathLike | None) -> Iterator[Path]:
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        yield Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="scan-edge-latency-") as tmp:
        yield Path(tmp)
