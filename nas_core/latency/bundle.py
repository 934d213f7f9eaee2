"""Profiling bundles: a folder that times models on a device where only the runtime is installed.

Layout::

    BUNDLE_DIR/
      manifest.json    settings (device profile), models (id, path, input_shape), seed, ...
      run_bundle.py    the runner's launcher (``write_runner``)
      scan_edge_runner/  verbatim copies of nas_core/latency/runner/*.py (the device runner)
      models/*.onnx
      README.txt       how to run it

On the device (numpy, pyarrow and the runtime installed; no torch, no nas_core)::

    python run_bundle.py BUNDLE_DIR --out lut.parquet [--device-name jetson_nano_trt]

The output is the runner's latency table (``nas_core.latency.runner.table``); copy it back and read it with
``nas_core.io.read_parquet`` / ``read_provenance``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from nas_core.io import code_version, write_json, write_text
from nas_core.latency import runner
from nas_core.latency.devices import DeviceProfile
from nas_core.latency.export import export_onnx
from nas_core.latency.measure import safe_file_stem
from nas_core.latency.timing import MANIFEST_FORMAT, MANIFEST_NAME, ModelEntry, TimingConfig

RUNNER_NAME = "run_bundle.py"
RUNNER_PACKAGE = "scan_edge_runner"  # the runner package's folder name in a bundle (a name no board has installed)
RUNNER_SOURCE = Path(runner.__file__).parent

# The bundle's entry point: puts the bundle's folder on the path (`python run_bundle.py` does, but
# `runpy.run_path` does not) and runs the copied runner package.
_LAUNCHER = f'''"""Times this bundle's models on this device: scan-edge's device runner (nas_core.latency.runner).

    python {RUNNER_NAME} BUNDLE_DIR --out lut.parquet [--device-name NAME]
"""
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # leave the bundle as it was shipped (no __pycache__)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from {RUNNER_PACKAGE}.cli import main  # noqa: E402  (after the bundle's folder is on the path)

sys.exit(main())
'''


def write_runner(folder: str | os.PathLike) -> Path:
    """The device runner in ``folder``: ``run_bundle.py`` and ``scan_edge_runner/`` (verbatim
    copies of the modules of ``nas_core.latency.runner``). Returns the launcher's path."""
    folder = Path(folder)
    for source in sorted(RUNNER_SOURCE.glob("*.py")):
        write_text(folder / RUNNER_PACKAGE / source.name, source.read_text())
    return write_text(folder / RUNNER_NAME, _LAUNCHER)


def make_bundle(models: Iterable, profile: DeviceProfile, bundle_dir: str | os.PathLike, *,
                reference_id: str | None = None, seed: int = 0, config: TimingConfig | None = None,
                drift_tolerance: float = 0.10, check_every: int = 10, yardstick_ms: float | None = None) -> Path:
    """Write a bundle timing ``models`` (ModelEntry or dicts with id, path, input_shape).

    The ONNX files are copied into ``models/``; the manifest records the profile's
    settings, the timing configuration, the paired-timing scale ``yardstick_ms`` (None: the
    reference's own baseline) and the code version that made the bundle.
    """
    bundle_dir = Path(bundle_dir)
    (bundle_dir / "models").mkdir(parents=True, exist_ok=True)
    listed = []
    for raw in models:
        entry = ModelEntry.from_any(raw)
        relative = Path("models") / f"{safe_file_stem(entry.id)}.onnx"
        shutil.copyfile(entry.path, bundle_dir / relative)
        listed.append({"id": entry.id, "path": relative.as_posix(), "input_shape": list(entry.input_shape)})
    return _finish(bundle_dir, listed, profile, reference_id, seed, config, drift_tolerance, check_every,
                   yardstick_ms)


def export_bundle(named_modules: Mapping[str, object], profile: DeviceProfile, bundle_dir: str | os.PathLike, *,
                  input_shapes: Mapping[str, Sequence[int]] | None = None, reference_id: str | None = None,
                  seed: int = 0, config: TimingConfig | None = None, drift_tolerance: float = 0.10,
                  check_every: int = 10) -> Path:
    """Export torch modules straight into a bundle (shapes default to the profile's input)."""
    bundle_dir = Path(bundle_dir)
    listed = []
    for name, module in named_modules.items():
        shape = tuple(input_shapes[name]) if input_shapes and name in input_shapes else profile.input_shape()
        relative = Path("models") / f"{safe_file_stem(name)}.onnx"
        export_onnx(module, shape, bundle_dir / relative)
        listed.append({"id": name, "path": relative.as_posix(), "input_shape": list(shape)})
    return _finish(bundle_dir, listed, profile, reference_id, seed, config, drift_tolerance, check_every)


def _finish(bundle_dir: Path, listed: list[dict], profile: DeviceProfile, reference_id, seed, config,
            drift_tolerance, check_every, yardstick_ms: float | None = None) -> Path:
    manifest = {
        "format": MANIFEST_FORMAT, "settings": profile.to_settings(), "models": listed,
        "reference_id": reference_id, "seed": seed, "drift_tolerance": drift_tolerance,
        "check_every": check_every, "timing": (config or TimingConfig()).to_dict(), "code_version": code_version(),
        "yardstick_ms": yardstick_ms,
    }
    write_json(bundle_dir / MANIFEST_NAME, manifest)
    write_runner(bundle_dir)
    write_text(bundle_dir / "README.txt", _readme(profile, len(listed)))
    return bundle_dir


def _readme(profile: DeviceProfile, count: int) -> str:
    return (
        f"Latency profiling bundle: {count} ONNX models for device profile {profile.name!r} "
        f"({profile.backend}, {profile.provider}, {profile.precision}, {profile.threads} thread(s)).\n\n"
        "Needs python3 with numpy, pyarrow and the runtime (onnxruntime / openvino / tensorrt); not torch.\n"
        "Run from anywhere:\n\n"
        f"    python {RUNNER_NAME} . --out lut.parquet [--device-name NAME]\n\n"
        "Interrupted? Run the same command again: finished models are kept.\n"
        f"Options: python {RUNNER_NAME} --help\n"
    )
