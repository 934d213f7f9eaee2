"""Cache keys that follow artifacts by content, and where cached results live.

Prefect's built-in policies do not fit a pipeline of file artifacts: ``INPUTS`` hashes a
``Path`` as its string, so a task re-reading a changed file still hits the cache, and the
default policy includes the run id, so nothing is reused across runs. ``ArtifactCache``
builds a key from:

* the task's inputs, with every ``pathlib.Path`` (and every ``str`` in a declared path
  parameter) replaced by its path string + the digest of its **content**
  (file: sha256; directory: sorted (relative path, size, sha256) of every file;
  missing path: ``"missing"``);
* the task's own source (Prefect's ``TASK_SOURCE``);
* the source files of the ``nas_core`` modules it depends on (a package means every
  ``.py`` file under it);
* optional extra values computed at run time on the machine running the task, such as
  the runtime name + version and a device fingerprint (see ``runtime_fingerprint``).

Output locations must NOT be hashed by content (their content changes when the task
runs, so the next run would always miss): name them in ``output_params`` and they are
hashed as strings. If a declared output is missing when the task is called again, its
cached result is discarded and the task runs again to re-create it.

Results are persisted under ``RESULTS_DIR`` (``<project>/.prefect/results``, gitignored),
so a cache hit works in a later run, another process or a Dask worker on this machine.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from prefect.cache_policies import CachePolicy, TaskSource
from prefect.context import TaskRunContext
from prefect.logging import get_logger
from prefect.utilities.hashing import hash_objects

logger = get_logger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# SCAN_EDGE_RESULTS_DIR moves the store (e.g. to a shared disk for a multi-machine cluster).
RESULTS_DIR = Path(os.environ.get("SCAN_EDGE_RESULTS_DIR", PROJECT_ROOT / ".prefect" / "results")).resolve()

MISSING = "missing"
_CHUNK = 1 << 20
# A file modified less than this long before it was hashed may still change without its
# (size, mtime) changing (coarse filesystem clocks), so its digest is not memoised.
# The same "racy timestamp" rule git uses for its index.
_RACY_WINDOW_NS = 2_000_000_000

Extra = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None


# ---------------------------------------------------------------------------------------
# Content digests
# ---------------------------------------------------------------------------------------

_digest_memo: dict[tuple, str] = {}
_digest_memo_lock = threading.Lock()


def _sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks so big checkpoints never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path, stat: os.stat_result | None = None) -> str:
    """sha256 of a file, memoised in this process by (path, device, inode, size, mtime).

    The inode is part of the key because artifacts are replaced by atomic rename, which
    gives a new inode even when size and mtime happen to match.
    """
    stat = stat or path.stat()
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _digest_memo_lock:
        cached = _digest_memo.get(key)
    if cached is not None:
        return cached
    digest = _sha256_file(path)
    if time.time_ns() - stat.st_mtime_ns > _RACY_WINDOW_NS:
        with _digest_memo_lock:
            _digest_memo[key] = digest
    return digest


def _directory_digest(root: Path) -> str:
    """Digest of a directory: sorted (relative path, size, sha256) of every file in it."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # deterministic walk; the final list is sorted anyway
        for name in filenames:
            file = Path(dirpath, name)
            try:
                stat = file.stat()
            except FileNotFoundError:  # dangling symlink
                continue
            entries.append((file.relative_to(root).as_posix(), stat.st_size, file_digest(file, stat)))
    entries.sort()
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def path_digest(path: str | os.PathLike) -> str:
    """Content digest of a file or a directory; ``"missing"`` when nothing is there."""
    path = Path(path).resolve()
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        return "dir:" + _directory_digest(path)
    return MISSING


def clear_digest_memo() -> None:
    """Forget memoised file digests (tests, or after editing files in place)."""
    with _digest_memo_lock:
        _digest_memo.clear()


# ---------------------------------------------------------------------------------------
# Code modules
# ---------------------------------------------------------------------------------------


def module_files(module_name: str) -> list[Path]:
    """The source files of a module; for a package, every ``.py`` file under it.

    Uses ``find_spec``, so the module itself is not imported (its parent packages are).
    """
    spec = importlib.util.find_spec(module_name)
    if spec is None:
        raise ModuleNotFoundError(f"code module {module_name!r} for a cache key: no such module")
    if spec.submodule_search_locations:  # a package (regular or namespace)
        files = [p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.py")]
        return sorted(p.resolve() for p in files if "__pycache__" not in p.parts)
    if spec.origin and Path(spec.origin).is_file():
        return [Path(spec.origin).resolve()]
    raise ModuleNotFoundError(f"code module {module_name!r} has no source file to hash (origin {spec.origin!r})")


def modules_digest(module_names: Iterable[str]) -> dict[str, str]:
    """{module name: digest of its source files}, read fresh each call (files may change)."""
    digests = {}
    for name in module_names:
        files = module_files(name)
        # Relative names, so the key does not depend on where the checkout lives.
        base = os.path.commonpath([f.parent for f in files])
        listing = [(os.path.relpath(f, base), file_digest(f)) for f in files]
        digests[name] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return digests


# ---------------------------------------------------------------------------------------
# The cache policy
# ---------------------------------------------------------------------------------------


def _stable_input(value: Any, as_path: bool) -> Any:
    """An input value with every path replaced by (path string, content digest).

    Paths nested in lists, tuples and dicts count too; a ``str`` counts as a path only
    when its parameter was declared a path parameter (``as_path``).
    """
    if isinstance(value, Path) or (as_path and isinstance(value, str)):
        return {"path": str(value), "content": path_digest(value)}
    if isinstance(value, (list, tuple)):
        return [_stable_input(v, as_path) for v in value]
    if isinstance(value, dict):
        return {k: _stable_input(v, as_path) for k, v in value.items()}
    return value


def _paths_as_strings(value: Any) -> Any:
    """An output location's value with paths as plain strings (its content is not an input)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_paths_as_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _paths_as_strings(v) for k, v in value.items()}
    return value


def _iter_path_values(value: Any) -> Iterable[str | Path]:
    """Every path (``Path`` or ``str``) in an output parameter's value."""
    if isinstance(value, (str, Path)):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _iter_path_values(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _iter_path_values(v)


def _record_folder(task: Any, policy: CachePolicy) -> Optional[Path]:
    """The folder holding the task's cache records, when it is a local folder."""
    storage = policy.key_storage or task.result_storage
    if storage is None:
        from prefect.settings import get_current_settings

        return Path(get_current_settings().results.local_storage_path)
    if isinstance(storage, Path):
        return storage
    basepath = getattr(storage, "basepath", None)  # a saved LocalFileSystem block
    return Path(basepath) if basepath and "://" not in str(basepath) else None


def _discard_cached_record(task: Any, policy: CachePolicy, key: str) -> None:
    folder = _record_folder(task, policy)
    if folder is None:
        logger.warning("cache: outputs of %s are missing but its result store is not a local folder; "
                       "a cached result may point at missing files", getattr(task, "name", task))
        return
    record = folder / key
    if record.exists():
        logger.info("cache: outputs of %s are missing; discarding its cached result %s",
                    getattr(task, "name", task), record)
        record.unlink(missing_ok=True)


def _resolve_extra(extra: Extra) -> Mapping[str, Any]:
    if extra is None:
        return {}
    return extra() if callable(extra) else extra


@dataclass
class ArtifactCache(CachePolicy):
    """Cache key = inputs (paths by content) + task source + code modules + extras.

    Attributes:
        path_params: parameters whose ``str`` values name paths to hash by content
            (``Path`` values are hashed by content in any parameter).
        output_params: parameters naming where the task writes; hashed as strings. When
            one of these paths is missing, the cached result is discarded and the task
            runs again (it would otherwise return paths to files that are gone).
        exclude: parameters left out of the key (progress callbacks, loggers, ...).
        code_modules: importable module names whose source files join the key.
        extra: a mapping, or a callable returning one, evaluated when the key is computed
            (so on the worker that runs the task), e.g. ``runtime_fingerprint``.
    """

    path_params: tuple[str, ...] = ()
    output_params: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    code_modules: tuple[str, ...] = ()
    extra: Extra = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Fail at import time on a typo; a key that raises later would silently disable caching.
        for name in self.code_modules:
            module_files(name)
        clash = set(self.path_params) & set(self.output_params)
        if clash:
            raise ValueError(f"parameters both input and output paths: {sorted(clash)}")

    def key_parts(self, task_ctx: Optional[TaskRunContext], inputs: Mapping[str, Any]) -> dict[str, Any]:
        """What the key is made of, readable; useful when debugging a surprising miss."""
        stable = {}
        for name, value in (inputs or {}).items():
            if name in self.exclude:
                continue
            elif name in self.output_params:
                stable[name] = _paths_as_strings(value)
            else:
                stable[name] = _stable_input(value, as_path=name in self.path_params)
        return {
            "inputs": stable,
            "task_source": TaskSource().compute_key(task_ctx, inputs, {}) if task_ctx else None,
            "code_modules": modules_digest(self.code_modules),
            "extra": dict(_resolve_extra(self.extra)),
        }

    def missing_outputs(self, inputs: Mapping[str, Any]) -> list[str]:
        """Declared output paths that do not exist (deleted by hand, by ``dvc checkout``, ...)."""
        paths = [p for name in self.output_params for p in _iter_path_values(inputs.get(name))]
        return [str(p) for p in paths if not Path(p).exists()]

    def compute_key(
        self,
        task_ctx: Optional[TaskRunContext],
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> Optional[str]:
        key = hash_objects(self.key_parts(task_ctx, inputs), raise_on_failure=True)
        # A cached result would point at files that are gone: drop it, so the task runs
        # once and re-creates them (a new key instead would cost two runs to settle).
        if task_ctx is not None and self.missing_outputs(inputs):
            _discard_cached_record(task_ctx.task, self, key)
        return key


def artifact_cache(
    path_params: Iterable[str] = (),
    *,
    output_params: Iterable[str] = (),
    exclude: Iterable[str] = (),
    code_modules: Iterable[str] = (),
    extra: Extra = None,
) -> ArtifactCache:
    """Build an ``ArtifactCache`` policy, e.g.::

        @task(**cached_task_options(artifact_cache(
            path_params=("manifest",), output_params=("out_dir",),
            code_modules=("nas_core.supernet",))))
        def train_supernet(manifest: str, out_dir: Path, epochs: int) -> Path: ...
    """
    return ArtifactCache(
        path_params=tuple(path_params),
        output_params=tuple(output_params),
        exclude=tuple(exclude),
        code_modules=tuple(code_modules),
        extra=extra,
    )


def result_storage(root: str | os.PathLike | None = None) -> Path:
    """The folder where cached task results are persisted (created if needed).

    A ``Path`` is what Prefect accepts without a saved storage block.
    """
    path = Path(root).resolve() if root is not None else RESULTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_task_options(policy: CachePolicy, storage: str | os.PathLike | None = None) -> dict[str, Any]:
    """``@task(...)`` keyword arguments for a cached, persisted task: ``@task(**cached_task_options(p))``."""
    return {"cache_policy": policy, "persist_result": True, "result_storage": result_storage(storage)}


# ---------------------------------------------------------------------------------------
# Runtime fingerprints for latency tasks
# ---------------------------------------------------------------------------------------


def runtime_fingerprint(runtime: str, device: str = "CPU") -> dict[str, Any]:
    """What a latency measurement depends on: runtime name + version, device, machine id.

    ``runtime`` is ``"onnxruntime"`` or ``"openvino"``; ``device`` is the OpenVINO device
    name (ignored for onnxruntime, whose available providers are recorded instead).
    Pass ``extra=lambda: runtime_fingerprint("openvino")`` so it is computed on the worker.
    Memoised per process (importing a runtime costs up to seconds; versions do not change).
    """
    return dict(_runtime_fingerprint(runtime, device))


@functools.lru_cache(maxsize=None)
def _runtime_fingerprint(runtime: str, device: str) -> tuple[tuple[str, Any], ...]:
    from nas_core.io import machine_fingerprint

    info: dict[str, Any] = {"runtime": runtime, "machine": machine_fingerprint()["id"]}
    if runtime == "onnxruntime":
        import onnxruntime

        info["version"] = onnxruntime.__version__
        info["providers"] = onnxruntime.get_available_providers()
    elif runtime == "openvino":
        import openvino

        info["version"] = openvino.get_version()
        info["device"] = device
        info["device_name"] = openvino.Core().get_property(device, "FULL_DEVICE_NAME")
    else:
        raise ValueError(f"runtime_fingerprint: unknown runtime {runtime!r} (expected 'onnxruntime' or 'openvino')")
    info = {k: tuple(v) if isinstance(v, list) else v for k, v in info.items()}  # hashable for the memo
    return tuple(sorted(info.items()))
