"""Atomic artifact writing and provenance.

Every artifact under ``data/`` is written to a temporary file in the same folder and
renamed into place, so a reader (or a resumed job) never sees half a file: after a crash
the old artifact or no artifact is there, never a truncated one.

Parquet tables carry their provenance in the schema metadata (key ``scan_edge``): the
code version, the params that made the table, and whatever the writer adds (device,
runtime version, ...). ``read_provenance`` returns it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"scan_edge"
_REPO_ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (has the stage that writes it run?)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); the file is corrupt, delete it and re-run its stage") from None


def write_parquet(path: str | os.PathLike, frame, provenance: dict | None = None) -> Path:
    """Write a pandas DataFrame as Parquet atomically, with provenance in the schema metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(provenance or {}, sort_keys=True, default=_json_default).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_parquet(path: str | os.PathLike):
    """Read a Parquet table, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such table (has the stage that writes it run?)")
    try:
        return pq.read_table(path).to_pandas()
    except Exception as err:  # pyarrow raises several types for damaged files
        raise ValueError(f"{path}: unreadable Parquet ({err}); the file is corrupt, delete it and re-run its stage") from None


def read_provenance(path: str | os.PathLike) -> dict:
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch  # on first use: nas_core.latency and nas_core.io import without torch (hosts driving boards)

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def torch_load(path: str | os.PathLike, map_location="cpu") -> Any:
    import torch  # on first use: nas_core.latency and nas_core.io import without torch (hosts driving boards)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"{path}: unreadable checkpoint ({err}); delete it and re-run its stage") from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """``git describe`` of the checkout (with ``-dirty``), or the package version outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass

    try:
        return f"scan-edge {version('scan-edge')}"
    except PackageNotFoundError:
        return "unknown"


def machine_fingerprint() -> dict:
    """What a latency number depends on besides the runtime: CPU model, core count, OS."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    info["id"] = hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:12]
    return info


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _json_default(obj: Any):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_json_dict"):
        return obj.to_json_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
