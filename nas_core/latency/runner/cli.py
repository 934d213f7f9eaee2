"""The bundle runner: ``manifest.json`` + ONNX files -> the latency table (``main``)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Sequence

from .host import atomic_path, machine_fingerprint, utc_now
from .profiling import profile_models
from .sessions import runtime_identity
from .settings import MANIFEST_FORMAT, MANIFEST_NAME, ModelEntry, normalise_settings
from .timer import TimingConfig


def load_manifest(bundle_dir: str | os.PathLike) -> dict:
    """Read and check ``BUNDLE_DIR/manifest.json`` (written by ``nas_core.latency.bundle``).

    Keys: ``format`` (1), ``settings`` (see ``settings``), ``models`` (list of
    ``{"id", "path" (relative to the bundle), "input_shape"}``), and optionally
    ``reference_id``, ``seed``, ``drift_tolerance``, ``check_every``, ``timing``
    (TimingConfig fields), ``code_version``.
    """
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest; is {bundle_dir} a profiling bundle?") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: manifest format {manifest.get('format')!r}, this runner reads {MANIFEST_FORMAT}")
    for key in ("settings", "models"):
        if key not in manifest:
            raise ValueError(f"{path}: manifest has no {key!r}")
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_bundle.py",
        description="Time every ONNX model of a profiling bundle on this device and write a latency table "
                    "(Parquet). Needs numpy, pyarrow and the bundle's runtime (onnxruntime / openvino / "
                    "tensorrt); not torch. Re-running resumes where an interrupted run stopped.")
    parser.add_argument("bundle_dir", type=Path, nargs="?",
                        help="folder holding manifest.json and the ONNX files (omit with --runtime-report alone)")
    parser.add_argument("--out", type=Path, help="output Parquet file (resumed when it exists); needs bundle_dir")
    parser.add_argument("--runtime-report", type=Path, metavar="JSON",
                        help="also write what this device runs (runtime and version, Python, host) to JSON; with no "
                             "bundle_dir, only that (what `scan-edge reprofile` compares for a board)")
    parser.add_argument("--backend", default=None,
                        help="with --runtime-report and no bundle: the runtime to report (default onnxruntime)")
    parser.add_argument("--device-name", help="device name recorded in the table (default: the manifest's profile name)")
    parser.add_argument("--threads", type=int, help="override the profile's thread count")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out exists")
    parser.add_argument("--check-every", type=int, help="models between reference re-timings")
    parser.add_argument("--drift-tolerance", type=float, help="allowed relative change of the reference")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to the first THREADS cores")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def runtime_report(backend: str) -> dict:
    """What this device runs, as the host records it for a board (``--runtime-report``)."""
    name, version = runtime_identity(backend)
    return {"runtime": name, "runtime_version": version, "backend": backend, "python": sys.executable,
            "python_version": platform.python_version(), "host": socket.gethostname(),
            "machine": machine_fingerprint(), "reported_at": utc_now()}


def _write_report(path: Path, backend: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(runtime_report(backend), indent=2, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bundle_dir is None:
        if not args.runtime_report:
            parser.error("give a bundle folder (and --out), or --runtime-report alone")
        _write_report(args.runtime_report, args.backend or "onnxruntime")
        return 0
    if args.out is None:
        parser.error("--out is required with a bundle folder")
    manifest = load_manifest(args.bundle_dir)
    settings = normalise_settings(manifest["settings"])
    if args.device_name:
        settings["name"] = args.device_name
    if args.threads:
        settings["threads"] = args.threads
    entries = [ModelEntry.from_any(m, base_dir=args.bundle_dir) for m in manifest["models"]]
    seed = int(manifest.get("seed", 0))
    rows = profile_models(
        entries, settings, args.out, reference_id=manifest.get("reference_id"), seed=seed,
        resume=not args.no_resume,
        drift_tolerance=args.drift_tolerance or float(manifest.get("drift_tolerance", 0.10)),
        config=TimingConfig.from_dict(manifest.get("timing")),
        check_every=args.check_every or int(manifest.get("check_every", 10)),
        code_version=str(manifest.get("code_version", "unknown")), pin_cpus=not args.no_pin,
        progress=not args.quiet, yardstick_ms=manifest.get("yardstick_ms"),
        extra_provenance={"bundle": str(args.bundle_dir), "executor": {
            "python": sys.executable, "pid": os.getpid()}},
    )
    if args.runtime_report:
        _write_report(args.runtime_report, settings["backend"])
    flagged = sum(bool(r["drift_flag"]) for r in rows)
    print(f"wrote {len(rows)} rows to {args.out} ({settings['name']}, {rows[0]['runtime']} "
          f"{rows[0]['runtime_version']}, {flagged} drift-flagged)")
    return 0

