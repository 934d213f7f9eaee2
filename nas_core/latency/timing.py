"""Latency measurement that runs anywhere: on the host, or on an edge device without torch.

This module imports only the standard library, numpy and pyarrow at module level; the
runtime (onnxruntime, openvino or tensorrt) is imported when a session is opened. It is
copied verbatim into profiling bundles as ``run_bundle.py`` and run there as a script::

    python run_bundle.py BUNDLE_DIR --out lut.parquet [--device-name jetson_nano_trt]

so it must never import torch, pandas or anything from ``nas_core`` (the few helpers it
shares with ``nas_core.io`` are mirrored below, and a test checks that they agree).

What it provides
----------------
* ``open_session(onnx_path, input_shape, settings)``: one model compiled for one runtime
  under the device profile's settings, with a random input created once.
* ``time_callable(run, config)``: warm-up, then timed calls (``perf_counter_ns`` around
  each; ``process_time_ns`` with ``options["clock"] = "cpu"``, see ``CLOCKS``) until the
  median is stable; returns median / p10 / p90 / mean / min in ms.
* ``profile_models(entries, settings, out_path, ...)``: times many models (a latency
  lookup table), with a drift-detecting reference model, atomic checkpoints and resume.
* ``main(argv)``: the bundle runner (``manifest.json`` + ONNX files -> Parquet).

Settings
--------
A plain dict (``DeviceProfile.to_settings()`` on the host, ``manifest["settings"]`` in a
bundle): ``name`` (device profile), ``backend`` (onnxruntime | openvino | tensorrt; the
host adds torch), ``provider`` (ORT execution provider, OpenVINO device, ...),
``precision`` (fp32 | fp16 | bf16 | default = the plugin's own choice), ``threads``,
``batch_size``, ``resolution``, ``options`` (runtime-specific extras, see the sessions).

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

import argparse
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
SETTINGS_KEYS = ("name", "backend", "provider", "precision", "threads", "batch_size", "resolution", "options")
ONNX_BACKENDS = ("onnxruntime", "openvino", "tensorrt")

# The same key nas_core.io uses, so io.read_provenance reads tables written here.
PROVENANCE_KEY = b"scan_edge"

# The reference model's drift baseline is the median of its first this-many timings.
BASELINE_TIMINGS = 3

# What a call's duration is read from: ``options["clock"]`` of the settings. ``wall`` (the
# default) is the latency a device's user waits. ``cpu`` is this process's CPU time: it
# leaves out the time the scheduler gave other processes, so single-thread CPU timings on
# a busy shared machine read close to a quiet machine's (cache and memory-bandwidth
# interference remain). It equals latency only for single-thread CPU work whose runtime
# does not spin other threads, hence ``settings_clock`` refuses it elsewhere.
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}
CPU_PROVIDERS = ("CPUExecutionProvider", "CPU", "cpu")


# --------------------------------------------------------------------------------------
# Helpers mirrored from nas_core.io (this file must run without nas_core installed).
# tests/test_latency_runtime.py checks that they give the same answers.
# --------------------------------------------------------------------------------------
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


def load_average() -> float | None:
    """1-minute load average (None where the OS has none): recorded so that timings taken
    while other processes competed for the CPU can be recognised later."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
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


# --------------------------------------------------------------------------------------
# Settings and model entries
# --------------------------------------------------------------------------------------
def normalise_settings(settings: Any) -> dict:
    """A settings dict with every key present; accepts a DeviceProfile (``to_settings``)."""
    if hasattr(settings, "to_settings"):
        settings = settings.to_settings()
    unknown = set(settings) - set(SETTINGS_KEYS)
    if unknown:
        raise ValueError(f"unknown settings keys {sorted(unknown)}; known: {', '.join(SETTINGS_KEYS)}")
    missing = {"backend", "provider", "precision", "threads"} - set(settings)
    if missing:
        raise ValueError(f"settings lack {sorted(missing)}")
    out = {"name": settings.get("name") or settings["backend"], "batch_size": 1, "resolution": 224, "options": {}}
    out.update(settings)
    out["threads"] = int(out["threads"])
    out["batch_size"] = int(out["batch_size"])
    out["resolution"] = int(out["resolution"])
    out["options"] = dict(out["options"] or {})
    return out


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model to time: an id, its ONNX file (None when a custom opener builds it), its input shape."""

    id: str
    path: Path | None
    input_shape: tuple[int, ...]

    @classmethod
    def from_any(cls, entry: Any, base_dir: Path | None = None) -> "ModelEntry":
        if isinstance(entry, ModelEntry):
            return entry
        path = entry.get("path") or entry.get("onnx")
        if path is not None:
            path = Path(path)
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
        return cls(id=str(entry["id"]), path=path, input_shape=tuple(int(d) for d in entry["input_shape"]))

    @property
    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.input_shape)


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """When to stop timing one model.

    Warm-up: at least ``warmup_runs`` calls and ``warmup_ms`` of them (first calls pay for
    allocation, kernel selection, cold caches). Then time calls one by one until there are
    at least ``min_repeats`` of them and ``min_total_ms`` of timed work, and the median
    moved by at most ``stability`` (relative) since the previous check (checks every
    ``check_every`` calls, or a quarter of the calls so far when that is more). Hard caps
    ``max_repeats`` and ``max_total_ms`` bound slow models; ``stable`` in the result says
    whether the median had converged when timing stopped.
    """

    warmup_runs: int = 10
    warmup_ms: float = 100.0
    min_repeats: int = 50
    min_total_ms: float = 500.0
    max_repeats: int = 2000
    max_total_ms: float = 10_000.0
    stability: float = 0.01
    check_every: int = 20

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping | None) -> "TimingConfig":
        return cls(**(values or {}))


@dataclasses.dataclass(frozen=True)
class TimingResult:
    """Statistics of the timed calls of one model, in milliseconds; ``info`` is session detail."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    total_ms: float
    stable: bool
    info: dict = dataclasses.field(default_factory=dict, compare=False)
    median_ci_low_ms: float = float("nan")  # 95 % CI of the median (``median_ci``)
    median_ci_high_ms: float = float("nan")

    def to_row(self) -> dict:
        return {k: getattr(self, k) for k in ("median_ms", "p10_ms", "p90_ms", "mean_ms", "min_ms", "repeats", "stable")}

    def dispersion_row(self) -> dict:
        """The repeat dispersion of the median (the ``median_ci_*`` columns of a table)."""
        return {"median_ci_low_ms": self.median_ci_low_ms, "median_ci_high_ms": self.median_ci_high_ms}


Clock = Callable[[], int]


def time_callable(run: Callable[[], Any], config: TimingConfig | None = None,
                  clock: Clock = time.perf_counter_ns) -> TimingResult:
    """Time ``run()`` as described in ``TimingConfig``; each call is timed on its own."""
    config = config or TimingConfig()
    _warm_up(run, config, clock)
    samples_ns: list[int] = []
    total_ns = 0
    previous_median = None
    stable = False
    next_check = config.min_repeats
    while True:
        start = clock()
        run()
        elapsed = clock() - start
        samples_ns.append(elapsed)
        total_ns += elapsed
        count = len(samples_ns)
        capped = count >= config.max_repeats or total_ns >= config.max_total_ms * 1e6
        if not capped and (count < next_check or total_ns < config.min_total_ms * 1e6):
            continue
        median = statistics.median(samples_ns)
        stable = previous_median is not None and abs(median - previous_median) <= config.stability * previous_median
        if stable or capped:
            break
        previous_median = median
        next_check = count + max(config.check_every, count // 4)
    return _summarise(samples_ns, stable)


# --------------------------------------------------------------------------------------
# Paired timing. On a shared virtual machine the host's speed moves by +-30 % within
# seconds, whatever this guest does (measured here: MobileNetV2 7.3-11 ms in successive
# half-second windows, on an idle guest). A model's median is then a sample of the host's
# mood, and a LUT summed from such medians misses subnets timed minutes later. Timing each
# call right next to a call of a fixed reference model and keeping the ratio cancels what
# both calls share (the ratio's spread over windows was 1.5 % where the raw times' was
# 5-6 %). A paired result is ``median(model / reference) * yardstick_ms``: milliseconds of
# a machine whose reference takes ``yardstick_ms``, the same scale for every job of a
# device when they share the reference and ``yardstick_ms`` (the LUT's; see
# ``nas_core.latency.lut.yardstick``).
# --------------------------------------------------------------------------------------
def paired_timing(settings: Mapping) -> bool:
    """Whether a device is timed in pairs with its reference (``options["paired_reference"]``)."""
    return bool((settings.get("options") or {}).get("paired_reference", False))


def time_paired(run: Callable[[], Any], reference_run: Callable[[], Any], yardstick_ms: float,
                config: TimingConfig | None = None, clock: Clock = time.perf_counter_ns) -> TimingResult:
    """Time ``run()`` paired with ``reference_run()``; statistics are of the per-pair ratio
    times ``yardstick_ms``. Stops as ``time_callable`` does, counting ``run``'s time only;
    ``info["raw_median_ms"]`` is the model's own median, for the record."""
    config = config or TimingConfig()
    _warm_up(run, config, clock)
    _warm_up(reference_run, dataclasses.replace(config, warmup_ms=0.0), clock)
    ratios: list[float] = []
    raw_ns: list[int] = []
    total_ns = 0
    previous_median = None
    stable = False
    next_check = config.min_repeats
    while True:
        start = clock()
        run()
        model_ns = clock() - start
        start = clock()
        reference_run()
        reference_ns = clock() - start
        raw_ns.append(model_ns)
        ratios.append(model_ns / max(reference_ns, 1))
        total_ns += model_ns
        count = len(ratios)
        capped = count >= config.max_repeats or total_ns >= config.max_total_ms * 1e6
        if not capped and (count < next_check or total_ns < config.min_total_ms * 1e6):
            continue
        median = statistics.median(ratios)
        stable = previous_median is not None and abs(median - previous_median) <= config.stability * previous_median
        if stable or capped:
            break
        previous_median = median
        next_check = count + max(config.check_every, count // 4)
    result = _summarise([r * yardstick_ms * 1e6 for r in ratios], stable)
    return dataclasses.replace(result, info={"raw_median_ms": float(statistics.median(raw_ns)) / 1e6,
                                             "yardstick_ms": float(yardstick_ms)})


def _warm_up(run: Callable[[], Any], config: TimingConfig, clock: Clock) -> None:
    start = clock()
    calls = 0
    while calls < config.warmup_runs or (clock() - start) < config.warmup_ms * 1e6:
        run()
        calls += 1
        if calls >= 100 * max(config.warmup_runs, 1):  # a zero-cost fake clock must not spin forever
            break


def _summarise(samples_ns: Sequence[int], stable: bool) -> TimingResult:
    samples_ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p10, median, p90 = np.percentile(samples_ms, [10, 50, 90])
    low, high = median_ci(samples_ms)
    return TimingResult(
        median_ms=float(median), p10_ms=float(p10), p90_ms=float(p90),
        mean_ms=float(samples_ms.mean()), min_ms=float(samples_ms.min()),
        repeats=int(samples_ms.size), total_ms=float(samples_ms.sum()), stable=bool(stable),
        median_ci_low_ms=low, median_ci_high_ms=high,
    )


def median_ci(samples: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (``z`` = 1.96: 95 %).

    The order statistics of ranks ``n/2 -+ z*sqrt(n)/2`` (1-based, rounded outwards; the
    normal approximation of the binomial count of samples below the median) bound the
    population median with that confidence for independent samples, whatever their
    distribution. Timed calls in a row are not quite independent (a busy moment spans
    several calls), so the interval is a lower bound on the median's real uncertainty.
    """
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    n = ordered.size
    if n == 0:
        return float("nan"), float("nan")
    half_width = z * np.sqrt(n) / 2.0
    low_rank = max(1, int(np.floor(n / 2.0 - half_width)))
    high_rank = min(n, int(np.ceil(n / 2.0 + 1.0 + half_width)))
    return float(ordered[low_rank - 1]), float(ordered[high_rank - 1])


def settings_clock(settings: Mapping) -> str:
    """The clock name of ``settings`` (``options["clock"]``, default ``wall``), checked."""
    name = (settings.get("options") or {}).get("clock", "wall")
    if name not in CLOCKS:
        raise ValueError(f"device {settings.get('name')!r}: clock {name!r} is not one of {', '.join(CLOCKS)}")
    if name == "cpu" and (int(settings["threads"]) != 1 or settings["provider"] not in CPU_PROVIDERS):
        raise ValueError(f"device {settings.get('name')!r}: the cpu clock reads latency only for "
                         "single-thread CPU profiles")
    return name


def time_session(session, config: TimingConfig | None = None, clock: Clock = time.perf_counter_ns) -> TimingResult:
    """Time an open session's ``run``; the result's ``info`` is the session's ``info``."""
    result = time_callable(session.run, config, clock)
    return dataclasses.replace(result, info=dict(getattr(session, "info", {})))


# --------------------------------------------------------------------------------------
# Runtime sessions: each has run() (one inference on the fixed input), outputs() (the
# last run's outputs as numpy arrays), info (precision_actual, provider) and close().
# --------------------------------------------------------------------------------------
def make_input(shape: Sequence[int], seed: int = 0, dtype=np.float32) -> np.ndarray:
    """The random input a model is timed on: made once, reused for every call."""
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(dtype)


def runtime_identity(backend: str) -> tuple[str, str]:
    """(runtime package, version) of a backend; imports the runtime."""
    if backend == "onnxruntime":
        import onnxruntime

        return "onnxruntime", onnxruntime.__version__
    if backend == "openvino":
        import openvino

        return "openvino", openvino.__version__
    if backend == "tensorrt":
        import tensorrt

        return "tensorrt", tensorrt.__version__
    if backend == "torch":  # eager torch lives on the host side (nas_core.latency.measure), never here
        raise ValueError("the torch backend is timed by nas_core.latency.measure, which passes runtime=(name, version)")
    raise ValueError(f"unknown backend {backend!r}; known: {', '.join(ONNX_BACKENDS)}")


def open_session(onnx_path: str | os.PathLike, input_shape: Sequence[int], settings: Mapping, seed: int = 0):
    """Compile ``onnx_path`` for the settings' backend; the input is random with ``seed``."""
    settings = normalise_settings(settings)
    backend = settings["backend"]
    if backend == "onnxruntime":
        return OrtSession(onnx_path, input_shape, settings, seed)
    if backend == "openvino":
        return OpenVinoSession(onnx_path, input_shape, settings, seed)
    if backend == "tensorrt":
        return TensorRtSession(onnx_path, input_shape, settings, seed)
    raise ValueError(f"backend {backend!r} does not run ONNX files; ONNX backends: {', '.join(ONNX_BACKENDS)}")


def open_entry(entry: ModelEntry, settings: Mapping, seed: int = 0):
    """Default opener for ``profile_models``: the entry's ONNX file on the settings' runtime."""
    if entry.path is None:
        raise ValueError(f"model {entry.id!r} has no ONNX path")
    return open_session(entry.path, entry.input_shape, settings, seed)


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OrtSession:
    """ONNX Runtime session: ``threads`` intra-op threads, 1 inter-op, sequential, all graph optimisations.

    ``options``: ``ort_session_config`` (session config entries), ``provider_options``
    (passed to the execution provider). GPU providers keep the CPU provider as fallback
    for unsupported nodes (ORT's default on a Jetson), but the requested provider must be
    the one ORT actually put first, otherwise this raises instead of silently timing CPU.
    """

    def __init__(self, onnx_path, input_shape, settings: Mapping, seed: int = 0):
        import onnxruntime as ort

        provider, precision = settings["provider"], settings["precision"]
        options = settings.get("options") or {}
        provider_options = dict(options.get("provider_options") or {})
        if provider == "TensorrtExecutionProvider" and precision == "fp16":
            provider_options.setdefault("trt_fp16_enable", True)
        elif precision not in ("fp32", "default"):
            raise ValueError(f"onnxruntime {provider} runs the ONNX file's own precision; "
                             f"precision {precision!r} needs a model exported in that precision")
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = int(settings["threads"])
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3
        for key, value in (options.get("ort_session_config") or {}).items():
            session_options.add_session_config_entry(str(key), str(value))
        providers = [(provider, provider_options)]
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        self.session = ort.InferenceSession(str(onnx_path), session_options, providers=providers)
        active = self.session.get_providers()[0]
        if active != provider:
            raise RuntimeError(f"onnxruntime put {active} first instead of {provider} for {onnx_path}")
        model_input = self.session.get_inputs()[0]
        dtype = _ORT_DTYPES.get(model_input.type, np.float32)
        self.feeds = {model_input.name: make_input(input_shape, seed, dtype)}
        self.output_names = [output.name for output in self.session.get_outputs()]
        self._outputs: list = []
        fp16 = provider_options.get("trt_fp16_enable") in (True, "True", "true", 1, "1")
        self.info = {"provider": active, "precision_actual": "fp16" if fp16 or dtype == np.float16 else "fp32"}

        # GPU providers: the input lives on the device and the outputs stay there, so a timed
        # call is the model alone, not host<->device copies (options io_binding: false turns it off).
        self.binding = None
        if options.get("io_binding", provider in ORT_DEVICE_PROVIDERS):
            self.binding, self._bound = _bind_on_device(ort, self.session, self.feeds, self.output_names,
                                                        ORT_DEVICE_PROVIDERS.get(provider, "cpu"),
                                                        int(provider_options.get("device_id", 0)))
        self.info["io_binding"] = self.binding is not None

    def run(self) -> None:
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)  # the CUDA EP synchronises its stream at the end of Run
            return
        self._outputs = self.session.run(self.output_names, self.feeds)

    def outputs(self) -> list[np.ndarray]:
        if self.binding is not None:
            return [np.asarray(o) for o in self.binding.copy_outputs_to_cpu()]
        return list(self._outputs)

    def close(self) -> None:
        self.binding, self._bound = None, []
        self.session = None


ORT_DEVICE_PROVIDERS = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


def _bind_on_device(ort, session, feeds: Mapping[str, np.ndarray], output_names: Sequence[str], device: str,
                    device_id: int):
    """An ORT I/O binding with ``feeds`` copied to ``device`` once and outputs allocated there;
    returns ``(binding, the bound input values)`` (kept alive as long as the binding)."""
    binding = session.io_binding()
    bound = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, device_id)
             for array in feeds.values()]
    for name, value in zip(feeds, bound):
        binding.bind_ortvalue_input(name, value)
    for name in output_names:
        binding.bind_output(name, device, device_id)
    return binding, bound


_OV_PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
_OV_TYPE_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
_OV_CORE = None


def _openvino_core():
    global _OV_CORE
    if _OV_CORE is None:
        import openvino

        _OV_CORE = openvino.Core()
    return _OV_CORE


class OpenVinoSession:
    """OpenVINO compiled model: PERFORMANCE_HINT LATENCY, INFERENCE_NUM_THREADS (CPU only).

    Precision ``fp32``/``fp16``/``bf16`` sets INFERENCE_PRECISION_HINT; ``default`` leaves
    the plugin's choice (bf16 on CPUs with AMX/AVX512-BF16, f16 on GPU / NPU). The
    precision the compiled model reports is recorded as ``precision_actual``: without
    the hint this CPU silently runs bf16. ``options["openvino_config"]`` adds properties.
    """

    def __init__(self, onnx_path, input_shape, settings: Mapping, seed: int = 0):
        import openvino

        core = _openvino_core()
        device, precision = settings["provider"], settings["precision"]
        model = core.read_model(str(onnx_path))
        if model.input(0).get_partial_shape().is_dynamic:
            model.reshape({0: openvino.PartialShape(list(input_shape))})
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if device.split(".")[0] == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(settings["threads"])
        if precision in _OV_PRECISION_HINTS:
            config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION_HINTS[precision]
        elif precision != "default":
            raise ValueError(f"precision {precision!r} is not one of fp32, fp16, bf16, default")
        config.update((settings.get("options") or {}).get("openvino_config") or {})
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        dtype = self.compiled.input(0).get_element_type().to_dtype()
        self.input_array = make_input(input_shape, seed, dtype)  # kept alive: the tensor shares its memory
        self.request.set_input_tensor(openvino.Tensor(self.input_array))
        self.info = {"provider": device, "precision_actual": self._actual_precision()}

    def _actual_precision(self) -> str:
        try:
            type_name = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        except Exception:  # devices without the property (older NCS2 plugin)
            return "unknown"
        return _OV_TYPE_NAMES.get(type_name, type_name)

    def run(self) -> None:
        self.request.infer()

    def outputs(self) -> list[np.ndarray]:
        return [self.request.get_output_tensor(i).data.copy() for i in range(len(self.compiled.outputs))]

    def close(self) -> None:
        self.request = None
        self.compiled = None


class TensorRtSession:
    """Native TensorRT (>= 8.5 tensor API): builds an engine from ONNX, times execute_async_v3 + sync.

    Written for Jetson-class devices; needs ``tensorrt`` and a CUDA GPU, and talks to
    the CUDA runtime through ctypes (libcudart) so that no torch / pycuda is needed.
    ``precision`` fp16 sets the FP16 builder flag (fp32 otherwise); ``options``:
    ``workspace_mb`` (builder workspace, default 1024). Not exercised by the CPU tests.
    """

    def __init__(self, onnx_path, input_shape, settings: Mapping, seed: int = 0):
        import tensorrt as trt

        options = settings.get("options") or {}
        self.cuda = _CudaRuntime()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:  # TensorRT 10 is explicit-batch only (the flag is deprecated)
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(Path(onnx_path).read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.get("workspace_mb", 1024)) << 20)
        if settings["precision"] == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream_create()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:  # input shapes first: output shapes are only known after them
            self.context.set_input_shape(name, tuple(input_shape))
        self.buffers: dict[str, tuple[int, np.ndarray]] = {}
        for name in names:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            is_input = name in inputs
            shape = tuple(self.context.get_tensor_shape(name))
            host = make_input(shape, seed, dtype) if is_input else np.empty(shape, dtype)
            device_ptr = self.cuda.malloc(host.nbytes)
            if is_input:
                self.cuda.copy_to_device(device_ptr, host)
            self.context.set_tensor_address(name, device_ptr)
            self.buffers[name] = (device_ptr, host)
        self.output_names = [n for n in names if n not in inputs]
        self.info = {"provider": "tensorrt", "precision_actual": "fp16" if settings["precision"] == "fp16" else "fp32"}

    def run(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.cuda.stream_synchronize(self.stream)

    def outputs(self) -> list[np.ndarray]:
        result = []
        for name in self.output_names:
            device_ptr, host = self.buffers[name]
            self.cuda.copy_to_host(host, device_ptr)
            result.append(host.copy())
        return result

    def close(self) -> None:
        for device_ptr, _ in self.buffers.values():
            self.cuda.free(device_ptr)
        self.buffers = {}
        self.cuda.stream_destroy(self.stream)
        self.context = None
        self.engine = None


class _CudaRuntime:
    """The handful of CUDA runtime calls TensorRT timing needs, through ctypes (no torch, no pycuda)."""

    _NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")

    def __init__(self):
        import ctypes
        import ctypes.util

        self.ctypes = ctypes
        candidates = [ctypes.util.find_library("cudart"), *self._NAMES]
        for entry in sys.path:  # pip's nvidia-cuda-runtime wheels
            lib_dir = Path(entry) / "nvidia" / "cuda_runtime" / "lib"
            if lib_dir.is_dir():
                candidates.extend(str(p) for p in sorted(lib_dir.glob("libcudart.so*")))
        for name in filter(None, candidates):
            try:
                self.lib = ctypes.CDLL(name)
                return
            except OSError:
                continue
        raise RuntimeError("libcudart (the CUDA runtime) not found; TensorRT timing needs it")

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"CUDA runtime call {what} failed with error {code}")

    def malloc(self, nbytes: int) -> int:
        pointer = self.ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(self.ctypes.byref(pointer), self.ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(pointer.value)

    def free(self, device_ptr: int) -> None:
        self.lib.cudaFree(self.ctypes.c_void_p(device_ptr))

    def copy_to_device(self, device_ptr: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self._check(self.lib.cudaMemcpy(self.ctypes.c_void_p(device_ptr), self.ctypes.c_void_p(host.ctypes.data),
                                        self.ctypes.c_size_t(host.nbytes), 1), "cudaMemcpy H2D")

    def copy_to_host(self, host: np.ndarray, device_ptr: int) -> None:
        self._check(self.lib.cudaMemcpy(self.ctypes.c_void_p(host.ctypes.data), self.ctypes.c_void_p(device_ptr),
                                        self.ctypes.c_size_t(host.nbytes), 2), "cudaMemcpy D2H")

    def stream_create(self) -> int:
        stream = self.ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(self.ctypes.byref(stream)), "cudaStreamCreate")
        return int(stream.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(self.ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        self.lib.cudaStreamDestroy(self.ctypes.c_void_p(stream))


# --------------------------------------------------------------------------------------
# CPU pinning
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def pinned_cpus(threads: int, enabled: bool = True) -> Iterator[list[int] | None]:
    """Restrict this process to its first ``threads`` allowed CPUs while timing; restore after.

    Why: on a shared machine the scheduler otherwise migrates the timing thread between
    cores, which shows up as bimodal timings. ``os.sched_setaffinity(0, ...)`` (Linux only;
    a no-op elsewhere) applies to the calling thread and to the threads created after it,
    i.e. the runtime thread pools of the sessions opened inside this block. Yields the CPU
    list used, or None when pinning is off or unsupported.
    """
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    chosen = sorted(before)[: max(1, int(threads))]
    os.sched_setaffinity(0, chosen)
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, before)


# --------------------------------------------------------------------------------------
# The output table
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Profiling many models
# --------------------------------------------------------------------------------------
Opener = Callable[[ModelEntry, Mapping], Any]


def profile_models(entries: Iterable, settings: Any, out_path: str | os.PathLike, reference_id: str | None = None,
                   seed: int = 0, resume: bool = True, drift_tolerance: float = 0.10, *,
                   config: TimingConfig | None = None, check_every: int = 10, max_retries: int = 2,
                   drift_pause_s: float = 2.0, open_fn: Opener | None = None, runtime: tuple[str, str] | None = None,
                   code_version: str = "unknown", clock: Clock | None = None, pin_cpus: bool = True,
                   on_measured: Callable[[str, TimingResult], None] | None = None, progress: bool = True,
                   extra_provenance: Mapping | None = None, yardstick_ms: float | None = None) -> list[dict]:
    """Time every entry under ``settings``; write (and return) one row per model to ``out_path``.

    * Order: the reference model first, then the others shuffled with ``seed`` (so slow
      drifts spread over all kinds of blocks rather than hitting one stage).
    * Drift: every ``check_every`` models the reference is re-timed (its session stays
      open). When its median is off its baseline (the median of its first
      ``BASELINE_TIMINGS`` timings, back to back at the start) by more than
      ``drift_tolerance`` (relative), the models timed since the last good check are
      re-timed, after ``drift_pause_s``, up to ``max_retries`` times; if the reference is
      still off, the rows are kept with ``drift_flag`` True.
    * Checkpoints: each block's rows are written (atomically) only after the reference
      check that vouches for them; an interrupted run loses at most the block in flight.
    * Resume: rows already in ``out_path`` with the same id and input shape are skipped;
      a file made with other settings, timing configuration (``config``), runtime
      version, resolution, machine or reference raises. Drift is judged against the
      first run's reference baseline, so a machine that changed between the runs shows
      up as re-measured / flagged rows, not silently. ``resume=False`` starts over.
    ``entries``: ``ModelEntry`` or dicts with ``id``, ``path`` and ``input_shape``.
    ``open_fn(entry, settings)`` opens a session (default: ONNX file on the runtime);
    ``runtime`` overrides (name, version) when ``open_fn`` brings its own runtime.
    ``on_measured(id, result)`` is called after each timing (tests use it to interrupt).
    ``clock`` defaults to the settings' clock (``settings_clock``); tests pass a fake one.
    * Paired timing (the device option ``paired_reference``): every model is timed call by call next to
      the reference (``time_paired``) and expressed on the scale ``yardstick_ms`` (default:
      the reference's own baseline, recorded as ``reference["yardstick_ms"]``); drift
      re-timing is then off (the pairing already cancels it) and the checks are a record.
    """
    settings = normalise_settings(settings)
    config = config or TimingConfig()
    paired = paired_timing(settings)
    clock_name = settings_clock(settings) if clock is None else "custom"
    clock = clock or CLOCKS[clock_name]
    out_path = Path(out_path)
    all_entries = _unique_entries(entries)
    reference_id = reference_id or sorted(all_entries)[0]
    if reference_id not in all_entries:
        raise KeyError(f"reference model {reference_id!r} is not among the entries")
    open_fn = open_fn or (lambda entry, s: open_entry(entry, s, seed))
    runtime = tuple(runtime or runtime_identity(settings["backend"]))
    fingerprint = machine_fingerprint()
    identity = run_identity(settings, runtime, fingerprint, config)
    state = _RunState.start(out_path, identity, resume, all_entries, reference_id)
    if state.reference is None and reference_id in state.rows:  # a table without the reference's metadata
        state.reference = {"id": reference_id, "baseline_ms": state.rows[reference_id]["median_ms"]}

    todo = [all_entries[i] for i in sorted(all_entries) if i not in state.rows and i != reference_id]
    random.Random(seed).shuffle(todo)
    row_base = {**{k: v for k, v in identity.items() if k not in ("options", "timing")}, "code_version": code_version}
    reporter = _Progress(len(todo) + (reference_id not in state.rows), settings["name"], progress)

    def measure(entry: ModelEntry, attempt: int, session=None) -> dict:
        own_session = session is None
        session = session or open_fn(entry, settings)
        try:
            if paired:
                result = time_paired(session.run, reference_session.run, state.reference["yardstick_ms"], config,
                                     clock)
                result = dataclasses.replace(result, info={**getattr(session, "info", {}), **result.info})
            else:
                result = time_session(session, config, clock)
        finally:
            if own_session:
                session.close()
        if on_measured is not None:
            on_measured(entry.id, result)
        reporter.measured(entry.id, result, attempt)
        return {**row_base, **result.to_row(), **result.dispersion_row(), "id": entry.id,
                "input_shape": entry.shape_text, "attempts": attempt,
                "drift_flag": False, "reference_ratio": 1.0, "timestamp": utc_now(), "load_average": load_average(),
                "precision_actual": result.info.get("precision_actual", "unknown"),
                "provider": result.info.get("provider", settings["provider"]),
                **({"raw_median_ms": result.info["raw_median_ms"]} if paired else {})}

    provenance = {
        "kind": "latency_table", "settings": settings, "identity": identity, "machine": fingerprint,
        "timing": config.to_dict(), "seed": seed, "drift_tolerance": drift_tolerance, "check_every": check_every,
        "code_version": code_version, "clock": clock_name, **(extra_provenance or {}),
    }
    with pinned_cpus(settings["threads"], enabled=pin_cpus and settings["options"].get("pin_cpus", True)) as cpus:
        provenance["cpu_affinity"] = cpus
        reference = all_entries[reference_id]
        reference_session = open_fn(reference, settings)
        try:
            if reference_id not in state.rows:
                if paired:
                    state.reference = _reference_baseline(reference_id, time_session(reference_session, config, clock)
                                                          .median_ms, reference_session, config, clock)
                    state.reference["yardstick_ms"] = float(yardstick_ms or state.reference["baseline_ms"])
                    first = measure(reference, 1, reference_session)
                else:
                    first = measure(reference, 1, reference_session)
                    # A drift yardstick only matters when other models follow (a one-model job: none).
                    state.reference = (_reference_baseline(reference_id, first["median_ms"], reference_session,
                                                           config, clock) if todo else
                                       {"id": reference_id, "baseline_ms": first["median_ms"],
                                        "baseline_timings_ms": [first["median_ms"]]})
                state.add_rows([first])
                state.write(provenance)
            elif paired and yardstick_ms is not None \
                    and abs(state.reference.get("yardstick_ms", yardstick_ms) - yardstick_ms) > 1e-9 * yardstick_ms:
                raise ValueError(f"{out_path}: timed on the scale of a {state.reference['yardstick_ms']} ms reference, "
                                 f"now {yardstick_ms} ms; start over (resume=False)")
            tolerance = float("inf") if paired else drift_tolerance
            for block in _chunks(todo, max(1, check_every)):
                rows = _measure_block(block, measure, reference_session, state, config, clock,
                                      tolerance, max_retries, drift_pause_s, reporter)
                state.add_rows(rows)
                state.write(provenance)
        finally:
            reference_session.close()
            reporter.close()
    return [state.rows[i] for i in state.order]


def _reference_baseline(reference_id: str, first_ms: float, session, config: TimingConfig, clock: Clock) -> dict:
    """The drift checks' yardstick: the median of the reference's first ``BASELINE_TIMINGS``
    timings, taken back to back before any other model.

    One timing alone can be spoiled by a noisy moment, and every later check would then
    look drifted (every block re-timed, then flagged). The baseline is settled before the
    first check, so that real drift during the run cannot leak into it.
    """
    timings = [first_ms] + [time_session(session, config, clock).median_ms for _ in range(BASELINE_TIMINGS - 1)]
    return {"id": reference_id, "baseline_ms": float(statistics.median(timings)), "baseline_timings_ms": timings}


def _measure_block(block, measure, reference_session, state, config, clock, tolerance, max_retries, pause_s,
                   reporter) -> list[dict]:
    """Time a block, then the reference; re-time the block while the reference drifted."""
    for attempt in range(1, max_retries + 2):
        rows = [measure(entry, attempt) for entry in block]
        reference_ms = time_session(reference_session, config, clock).median_ms
        ratio = reference_ms / state.reference["baseline_ms"]
        drifted = abs(ratio - 1.0) > tolerance
        state.checks.append({"after": len(state.rows) + len(rows), "attempt": attempt, "median_ms": reference_ms,
                             "ratio": ratio, "drifted": drifted, "timestamp": utc_now(), "load_average": load_average()})
        if not drifted:
            break
        reporter.note(f"reference {state.reference['id']} at {ratio:.3f}x its baseline "
                      f"(tolerance {tolerance:.0%}); attempt {attempt} of {max_retries + 1} for {len(block)} models")
        if attempt <= max_retries and pause_s > 0:
            time.sleep(pause_s)
    for row in rows:
        row["reference_ratio"] = ratio
        row["drift_flag"] = drifted
    return rows


def _unique_entries(entries: Iterable) -> dict[str, ModelEntry]:
    unique: dict[str, ModelEntry] = {}
    for raw in entries:
        entry = ModelEntry.from_any(raw)
        if entry.id in unique:
            raise ValueError(f"duplicate model id {entry.id!r}")
        unique[entry.id] = entry
    if not unique:
        raise ValueError("no models to profile")
    return unique


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclasses.dataclass
class _RunState:
    """Rows measured so far (from the file when resuming), the reference baseline and its checks."""

    path: Path
    identity: dict
    rows: dict[str, dict]
    order: list[str]
    reference: dict | None
    checks: list[dict]

    @classmethod
    def start(cls, path: Path, identity: dict, resume: bool, entries: Mapping[str, ModelEntry],
              reference_id: str) -> "_RunState":
        if not (resume and path.exists()):
            return cls(path, identity, {}, [], None, [])
        rows, provenance = read_rows(path)
        # Tables written before the identity held the timing settings have them beside it.
        check_same_identity(path, {"timing": provenance.get("timing"), **provenance.get("identity", {})}, identity)
        reference = provenance.get("reference")
        if reference and reference["id"] != reference_id:
            raise ValueError(f"{path}: drift was checked against reference {reference['id']!r}, "
                             f"now {reference_id!r}; keep the reference, or start over")
        for row in rows:
            entry = entries.get(row["id"])
            if entry is not None and row["input_shape"] != entry.shape_text:
                raise ValueError(f"{path}: model {row['id']!r} was timed with input {row['input_shape']}, "
                                 f"now {entry.shape_text}; refusing to mix")
        return cls(path, identity, {r["id"]: r for r in rows}, [r["id"] for r in rows],
                   provenance.get("reference"), list(provenance.get("reference_checks", [])))

    def add_rows(self, rows: Sequence[dict]) -> None:
        for row in rows:
            if row["id"] not in self.rows:
                self.order.append(row["id"])
            self.rows[row["id"]] = row

    def write(self, provenance: dict) -> None:
        provenance = {**provenance, "reference": self.reference, "reference_checks": self.checks,
                      "written_at": utc_now()}
        write_rows(self.path, [self.rows[i] for i in self.order], provenance)


class _Progress:
    """tqdm bar when tqdm is importable, else one plain line per model (stderr)."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.enabled = enabled
        self.count = 0
        self.total = total
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=label, unit="model", file=sys.stderr)
            except ImportError:
                pass

    def measured(self, model_id: str, result: TimingResult, attempt: int) -> None:
        if not self.enabled:
            return
        if attempt > 1 and self.bar is not None:
            self.bar.total += 1
        self.count += 1
        text = f"{model_id}: {result.median_ms:.3f} ms (p10 {result.p10_ms:.3f}, p90 {result.p90_ms:.3f}, n={result.repeats})"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        else:
            print(f"[{self.count}/{self.total}] {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------
# Bundle runner
# --------------------------------------------------------------------------------------
def load_manifest(bundle_dir: str | os.PathLike) -> dict:
    """Read and check ``BUNDLE_DIR/manifest.json`` (written by ``nas_core.latency.bundle``).

    Keys: ``format`` (1), ``settings`` (see module docstring), ``models`` (list of
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
    import socket

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
        progress=not args.quiet, yardstick_ms=manifest.get("yardstick_ms"), extra_provenance={"bundle": str(args.bundle_dir), "executor": {
            "python": sys.executable, "pid": os.getpid()}},
    )
    if args.runtime_report:
        _write_report(args.runtime_report, settings["backend"])
    flagged = sum(bool(r["drift_flag"]) for r in rows)
    print(f"wrote {len(rows)} rows to {args.out} ({settings['name']}, {rows[0]['runtime']} "
          f"{rows[0]['runtime_version']}, {flagged} drift-flagged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
