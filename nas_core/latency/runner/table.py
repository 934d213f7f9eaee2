"""The runner's output: a Parquet table of timings, and the identity a resumed run must match.

Output table (one row per model; provenance in the schema metadata under ``scan_edge``)
-------------------------------------------------------------------------------------
=================  ======  =====================================================
column             type    meaning
=================  ======  =====================================================
id                 str     model / block id from the manifest
input_shape        str     e.g. ``1x3x224x224``
median_ms          f64     median latency of one call (the number a LUT uses)
p10_ms, p90_ms     f64     10th / 90th percentile (spread; noisy machine -> wide)
median_ci_low_ms   f64     95 % confidence interval of the median from the timed calls
median_ci_high_ms  f64     (distribution-free, order statistics; ``median_ci``): how far
                           this row's median may be off from its own repeats alone
mean_ms, min_ms    f64     mean and fastest call
repeats            i64     timed calls behind the statistics (warm-up excluded)
stable             bool    the median converged before the repeat / time cap
attempts           i64     1, or more when drift forced its block to be re-measured
drift_flag         bool    the reference still drifted after the last attempt
reference_ratio    f64     reference median at the check after this row / baseline
timestamp          str     UTC, ISO 8601, when the row was measured
load_average       f64     1-minute load average then (> threads: others shared the CPU)
device             str     device profile name (or --device-name)
backend            str     onnxruntime | openvino | tensorrt | torch
runtime            str     runtime package, e.g. ``onnxruntime``
runtime_version    str     its version
provider           str     execution provider / device actually used
precision          str     requested precision (``default`` = plugin's choice)
precision_actual   str     precision the runtime reports it used (fp32, bf16, ...)
threads            i64     intra-op threads
batch_size         i64     batch size of the input
resolution         i64     profile resolution (the input shape is authoritative)
machine_id         str     short hash of the machine fingerprint (CPU, cores, OS)
code_version       str     git describe of the code that made the bundle / run
raw_median_ms      f64     paired timing only: the model's own median, before the ratio
=================  ======  =====================================================

The metadata (``nas_core.io.read_provenance``) holds the full settings, the machine
fingerprint, the timing configuration (also part of ``identity``: a resumed run must
time the same way), the CPU affinity used, the reference model's baseline (with the
timings it is the median of) and every reference check.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .host import atomic_path
from .timer import TimingConfig

# The same key nas_core.io uses, so io.read_provenance reads tables written here.
PROVENANCE_KEY = b"scan_edge"

ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("input_shape", pa.string()),
    ("median_ms", pa.float64()), ("p10_ms", pa.float64()), ("p90_ms", pa.float64()),
    ("mean_ms", pa.float64()), ("min_ms", pa.float64()), ("repeats", pa.int64()), ("stable", pa.bool_()),
    ("median_ci_low_ms", pa.float64()), ("median_ci_high_ms", pa.float64()),
    ("attempts", pa.int64()), ("drift_flag", pa.bool_()), ("reference_ratio", pa.float64()),
    ("timestamp", pa.string()), ("load_average", pa.float64()), ("device", pa.string()), ("backend", pa.string()),
    ("runtime", pa.string()), ("runtime_version", pa.string()), ("provider", pa.string()),
    ("precision", pa.string()), ("precision_actual", pa.string()), ("threads", pa.int64()),
    ("batch_size", pa.int64()), ("resolution", pa.int64()), ("machine_id", pa.string()),
    ("code_version", pa.string()), ("raw_median_ms", pa.float64()),
])

# What must be equal for a resumed run to append to an existing table. ``timing`` (the
# TimingConfig) too: other warm-up / repeat / stability settings give other numbers.
IDENTITY_KEYS = ("device", "backend", "provider", "precision", "threads", "batch_size", "resolution",
                 "options", "runtime", "runtime_version", "machine_id", "timing")


def write_rows(path: str | os.PathLike, rows: Sequence[Mapping], provenance: Mapping) -> Path:
    """Write rows (ROW_SCHEMA) atomically, with provenance in the schema metadata."""
    table = pa.Table.from_pylist([{name: row.get(name) for name in ROW_SCHEMA.names} for row in rows], schema=ROW_SCHEMA)
    metadata = {PROVENANCE_KEY: json.dumps(provenance, sort_keys=True, default=str).encode()}
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_rows(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """Rows and provenance of a table written by ``write_rows``."""
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for damaged files
        raise ValueError(f"{path}: unreadable Parquet ({err}); delete it to start over") from None
    raw = (table.schema.metadata or {}).get(PROVENANCE_KEY)
    return table.to_pylist(), json.loads(raw) if raw else {}


def run_identity(settings: Mapping, runtime: tuple[str, str], fingerprint: Mapping,
                 config: TimingConfig | None = None) -> dict:
    """What the timings of a run depend on (``IDENTITY_KEYS``); ``config`` None is the default TimingConfig."""
    return {
        "device": settings["name"], "backend": settings["backend"], "provider": settings["provider"],
        "precision": settings["precision"], "threads": settings["threads"], "batch_size": settings["batch_size"],
        "resolution": settings["resolution"], "options": settings["options"],
        "runtime": runtime[0], "runtime_version": runtime[1], "machine_id": fingerprint["id"],
        "timing": (config or TimingConfig()).to_dict(),
    }


def check_same_identity(path: Path, stored: Mapping, wanted: Mapping) -> None:
    """Refuse to append to a table measured under other settings, runtime or machine."""
    stored = json.loads(json.dumps(stored, default=str))
    wanted = json.loads(json.dumps(wanted, default=str))
    differences = []
    for key in IDENTITY_KEYS:
        before, now = stored.get(key), wanted.get(key)
        if isinstance(before, dict) and isinstance(now, dict):  # name the fields that changed
            differences += [f"{key}.{field}: {before.get(field)!r} in the file, {now.get(field)!r} now"
                            for field in sorted(set(before) | set(now)) if before.get(field) != now.get(field)]
        elif before != now:
            differences.append(f"{key}: {before!r} in the file, {now!r} now")
    if differences:
        raise ValueError(f"{path} was measured with other settings ({'; '.join(differences)}); refusing to mix "
                         "timings in one table: write to another file, or start over (resume=False / --no-resume)")
