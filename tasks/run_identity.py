"""Is this the same run? One answer for every door: the run identity, and the file digests it reads.

A stage run is the same run as an earlier one when its **run identity** is: the digest of

* its code (``tasks.code_identity``: the project files its entry point imports),
* the params it reads (its sections, narrowed to its devices) and its options,
* the content of the artifacts it reads,
* for a stage that measures latency, the runtimes it measures with.

:func:`run_identity` computes it. The Prefect cache key of a stage task is this digest
(``tasks.prefect_tasks``), a resume stamp records it (:func:`resume_or_restart`: continue
an interrupted run only when it is the same run), and ``scan-edge reproduce`` compares
each step's against the one its last completed run recorded (``tasks.step_stamps``), so
it can say "nothing changed" without starting Prefect. Checkpoints a stage writes can
carry it too, so a checkpoint is only continued by the run that wrote it.

File content is read through a **stat cache** (:class:`StatCache`): ``(size, mtime_ns,
inode) -> sha256`` per path, kept in ``$SCAN_EDGE_CACHE_DIR/file-digests.json`` (default
``~/.cache/scan-edge``) so a later process does not hash an unchanged checkpoint again.
Like git's index it distrusts racy entries: a digest is only recorded for a file whose
mtime is clearly older than the moment it was hashed (a file written in the same clock
tick could change again without its stat changing), so such a file is hashed again next
time. The inode is part of the entry because artifacts are replaced by atomic rename.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MISSING = "missing"
CACHE_DIR_ENV = "SCAN_EDGE_CACHE_DIR"
# A file modified less than this long before it was hashed is not recorded (racy timestamp:
# coarse filesystem clocks could hide a later write within the same tick).
RACY_WINDOW_NS = 2_000_000_000
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- file digests
def sha256_of_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (big checkpoints never sit in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_file() -> Path:
    base = os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "scan-edge"
    return Path(base) / "file-digests.json"


class StatCache:
    """``path -> (size, mtime_ns, inode, sha256)``, persisted; a stat match skips the hashing.

    Thread-safe; written back (merged with what other processes wrote meanwhile) by
    :meth:`save`, which runs at exit for the process-wide cache.
    """

    def __init__(self, file: Path):
        self.file = Path(file)
        self._entries: dict[str, list] | None = None
        self._new: dict[str, list] = {}
        self._lock = threading.Lock()

    def _load(self) -> dict[str, list]:
        try:
            return dict(json.loads(self.file.read_text()).get("entries") or {})
        except (OSError, ValueError, AttributeError):
            return {}

    def digest(self, path: Path, stat: os.stat_result | None = None) -> str:
        """sha256 of the file at ``path``, from the cache when its stat is unchanged."""
        path = Path(path).resolve()
        stat = stat or path.stat()
        key, signature = str(path), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        with self._lock:
            if self._entries is None:
                self._entries = self._load()
            entry = self._entries.get(key)
        if entry is not None and entry[:3] == signature:
            return entry[3]
        hashed_at = time.time_ns()
        digest = sha256_of_file(path)
        if hashed_at - stat.st_mtime_ns > RACY_WINDOW_NS:
            with self._lock:
                self._entries[key] = self._new[key] = [*signature, digest]
        return digest

    def save(self) -> None:
        """Write new entries back (atomically; entries of files that no longer exist are dropped)."""
        with self._lock:
            if not self._new:
                return
            merged = {**self._load(), **self._new}
            self._new = {}
        merged = {k: v for k, v in merged.items() if os.path.exists(k)}
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".file-digests.")
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": 1, "entries": merged}, fh)
        os.replace(tmp, self.file)


_caches: dict[Path, StatCache] = {}


def stat_cache() -> StatCache:
    """The process-wide cache for the current ``$SCAN_EDGE_CACHE_DIR`` (saved at exit)."""
    file = default_cache_file()
    if file not in _caches:
        _caches[file] = StatCache(file)
    return _caches[file]


@atexit.register
def save_stat_caches() -> None:
    for cache in list(_caches.values()):
        try:
            cache.save()
        except OSError:  # a read-only home: the digests are simply computed again next time
            pass


def file_sha256(path: str | os.PathLike, stat: os.stat_result | None = None) -> str:
    """sha256 of a file's content, through the stat cache."""
    return stat_cache().digest(Path(path), stat)


def path_digest(path: str | os.PathLike) -> str:
    """Content digest of a file or a directory (sorted (relative path, size, sha256) of every
    file under it); ``"missing"`` when nothing is there."""
    path = Path(path).resolve()
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return MISSING
    entries = []
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            file = Path(dirpath, name)
            try:
                stat = file.stat()
            except FileNotFoundError:  # a dangling symlink
                continue
            entries.append((file.relative_to(path).as_posix(), stat.st_size, file_sha256(file, stat)))
    return "dir:" + digest_of(sorted(entries))


# --------------------------------------------------------------------------- the run identity
def digest_of(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys; paths and the like as strings)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def run_identity(code: str, params: Mapping[str, Any], options: Mapping[str, Any] | None = None,
                 inputs: Iterable[str | os.PathLike] = (), runtimes: Mapping[str, Any] | None = None) -> str:
    """The identity of a stage run: ``code`` (the stage's code digest), the ``params`` it reads,
    its ``options``, the content of its ``inputs`` and the ``runtimes`` it measures with."""
    return digest_of({"code": code, "params": params, "options": dict(options or {}),
                      "inputs": {str(p): path_digest(p) for p in inputs}, "runtimes": dict(runtimes or {})})


# --------------------------------------------------------------------------- stamps
def stamp_path(folder: str | os.PathLike, name: str) -> Path:
    return Path(folder) / f"{name.replace('/', '_')}.json"


def read_stamp(folder: str | os.PathLike, name: str) -> dict | None:
    try:
        return json.loads(stamp_path(folder, name).read_text())
    except (OSError, ValueError):
        return None


def write_stamp(folder: str | os.PathLike, name: str, record: Mapping[str, Any]) -> Path:
    """Write a stamp atomically (a crash leaves the old one or the new one, never half)."""
    path = stamp_path(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, sort_keys=True, indent=1, default=str)
    os.replace(tmp, path)
    return path


def resume_or_restart(folder: str | os.PathLike, stage_id: str, identity: str) -> bool:
    """True when the last run of ``stage_id`` had this run identity (continue it: it may have
    been interrupted); otherwise record it and return False (start over: partial work of
    another run must not be continued)."""
    same = (read_stamp(folder, stage_id) or {}).get("identity") == identity
    if not same:
        write_stamp(folder, stage_id, {"identity": identity})
    return same


def unfinished_run(folder: str | os.PathLike, name: str) -> str | None:
    """The run identity of a run of ``name`` that started and did not finish, or None."""
    record = read_stamp(folder, name) or {}
    return record.get("identity") if record.get("finished") is False else None


def start_run(folder: str | os.PathLike, name: str, identity: str) -> None:
    write_stamp(folder, name, {"identity": identity, "finished": False})


def finish_run(folder: str | os.PathLike, name: str, identity: str) -> None:
    write_stamp(folder, name, {"identity": identity, "finished": True})


__all__ = ["MISSING", "StatCache", "digest_of", "file_sha256", "path_digest", "read_stamp", "resume_or_restart",
           "run_identity", "sha256_of_file", "stat_cache", "write_stamp", "unfinished_run", "start_run", "finish_run"]
