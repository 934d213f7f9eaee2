"""Runtime sessions: each has ``run()`` (one inference on the fixed input), ``outputs()`` (the
last run's outputs as numpy arrays), ``info`` (precision_actual, provider) and ``close()``.

The runtime (onnxruntime, openvino, tensorrt + CUDA) is imported when a session is opened:
a board has only its own runtime installed.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .settings import ONNX_BACKENDS, ModelEntry, normalise_settings


def make_input(shape: Sequence[int], seed: int = 0, dtype=np.float32) -> np.ndarray:
    """The random input a model is timed on: made once, reused for every call."""
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(dtype)


def runtime_identity(backend: str) -> tuple[str, str]:
    """(runtime package, version) of a backend; imports the runtime."""
    # Each runtime is imported where it is needed, here and in the sessions: a board has one installed.
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


@contextlib.contextmanager
def openvino_model_cache(folder: str | os.PathLike) -> Iterator[None]:
    """Compiled OpenVINO models are cached in ``folder`` inside the block (``CACHE_DIR`` of
    this process's core): a model timed again in a later pass loads its compiled blob instead
    of compiling anew (a subnet: ~0.1 s instead of ~0.35 s here). The blob is the compiled
    model itself, so the timings are those of a fresh compile."""
    core = _openvino_core()
    core.set_property({"CACHE_DIR": str(folder)})
    try:
        yield
    finally:
        core.set_property({"CACHE_DIR": ""})


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
