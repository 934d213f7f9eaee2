"""Device profiles: which runtime, provider, precision and threads a latency number means.

A profile names one way of running a model, standing in for one of the paper's targets
(§6.2): ONNX Runtime's default CPU provider in FP32 (ARM Cortex-A57), CUDA / TensorRT
in FP32 (Jetson Nano), OpenVINO in the plugin's low precision (Intel NCS2, FP16). The
defaults are data (``DEFAULT_DEVICES``), mirrored in params.yaml under ``devices:``;
``load_profiles`` overlays that section on the defaults.

This module imports only the standard library; ``check_usable`` imports the runtime.
"""
from __future__ import annotations

import ctypes
import dataclasses
from typing import Any, Mapping

BACKENDS = ("onnxruntime", "openvino", "torch", "tensorrt")
# "default" = whatever the plugin picks by itself (OpenVINO: bf16 on this CPU, f16 on GPU/NPU).
PRECISIONS = ("fp32", "fp16", "bf16", "default")
ORT_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
GPU_ORT_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# Where a profile's runtime is (``nas_core.latency.location``): this machine, a board with a
# Prefect worker, or a board reached by copying bundles by hand.
LOCATIONS = ("local", "worker", "bundle")

DEFAULT_DEVICES: dict[str, dict[str, Any]] = {
    # 1 thread: single-thread timings are far steadier on shared machines (2-thread runs
    # were 2-3x slower in about a third of runs here), and the ranking of blocks is what a LUT needs.
    "ort_cpu_fp32": {
        "backend": "onnxruntime", "provider": "CPUExecutionProvider", "precision": "fp32", "threads": 1,
        "description": "paper's ARM Cortex-A57 role: ONNX Runtime default (CPU) provider, FP32",
    },
    "openvino_cpu_fp32": {
        "backend": "openvino", "provider": "CPU", "precision": "fp32", "threads": 1,
        "description": "OpenVINO CPU plugin forced to FP32 (INFERENCE_PRECISION_HINT f32)",
    },
    "openvino_cpu_lowp": {
        "backend": "openvino", "provider": "CPU", "precision": "default", "threads": 1,
        "description": "paper's NCS2 role (FP16 there): OpenVINO plugin's default low precision "
                       "(bf16 on this CPU; the table records what it used)",
    },
    "torch_cpu": {
        "backend": "torch", "provider": "cpu", "precision": "fp32", "threads": 1,
        "description": "eager PyTorch on CPU, FP32 (reference point, not a paper target)",
    },
    "ort_cuda_fp32": {
        "backend": "onnxruntime", "provider": "CUDAExecutionProvider", "precision": "fp32", "threads": 1,
        "description": "paper's Jetson Nano CUDA role: ONNX Runtime CUDA provider, FP32",
    },
    "tensorrt_fp32": {
        "backend": "tensorrt", "provider": "cuda", "precision": "fp32", "threads": 1,
        "description": "paper's Jetson Nano TRT role: native TensorRT engine built from ONNX, FP32",
    },
    "torch_cuda": {
        "backend": "torch", "provider": "cuda", "precision": "fp32", "threads": 1,
        "description": "eager PyTorch on a CUDA GPU, FP32 (reference point)",
    },
}


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """One way of running a model. ``provider`` depends on the backend:

    * onnxruntime: an execution provider (``CPUExecutionProvider``, ``CUDAExecutionProvider``,
      ``TensorrtExecutionProvider``);
    * openvino: an OpenVINO device (``CPU``, ``GPU``, ``NPU``);
    * torch: a torch device (``cpu``, ``cuda``, ``cuda:1``);
    * tensorrt: ``cuda``.

    ``options`` are runtime extras passed through to the session (see
    ``nas_core.latency.timing``): ``provider_options``, ``ort_session_config``,
    ``openvino_config``, ``workspace_mb``, ``pin_cpus`` (default True), ``clock`` (``wall``
    by default; ``cpu`` = process CPU time, for single-thread CPU profiles timed on a
    machine others use, see ``timing.CLOCKS``), ``paired_reference`` (default False: time
    every call next to a call of the job's reference and keep the ratio, on one scale for
    every job of the device: ``timing.time_paired``, ``location.Yardstick``).

    ``location`` (``LOCATIONS``) says where the runtime is; ``location_options`` how to
    reach it: ``work_pool``, ``deployment``, ``shared_dir``, ``timeout_s`` for a ``worker``;
    ``bundles_dir`` for a ``bundle`` device (``nas_core.latency.location``). Neither is a
    timing setting: the same board measures the same numbers however it is reached.
    """

    name: str
    backend: str
    provider: str
    precision: str
    threads: int
    batch_size: int = 1
    resolution: int = 224
    options: dict = dataclasses.field(default_factory=dict, hash=False)
    description: str = ""
    location: str = "local"
    location_options: dict = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"device {self.name!r}: unknown backend {self.backend!r}; known: {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"device {self.name!r}: unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.backend == "onnxruntime" and self.provider not in ORT_PROVIDERS:
            raise ValueError(f"device {self.name!r}: onnxruntime provider {self.provider!r} is not one of {', '.join(ORT_PROVIDERS)}")
        if self.backend == "torch" and self.provider.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device {self.name!r}: torch device {self.provider!r} is not cpu or cuda[:N]")
        for field in ("threads", "batch_size", "resolution"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"device {self.name!r}: {field} must be >= 1")
        if not isinstance(self.options, Mapping):
            raise ValueError(f"device {self.name!r}: options must be a mapping")
        if self.location not in LOCATIONS:
            raise ValueError(f"device {self.name!r}: unknown location {self.location!r}; known: {', '.join(LOCATIONS)}")
        if not isinstance(self.location_options, Mapping):
            raise ValueError(f"device {self.name!r}: location_options must be a mapping")

    @property
    def is_local(self) -> bool:
        return self.location == "local"

    @property
    def uses_gpu(self) -> bool:
        return (self.provider in GPU_ORT_PROVIDERS or self.backend == "tensorrt"
                or (self.backend == "torch" and self.provider.startswith("cuda"))
                or (self.backend == "openvino" and self.provider.split(".")[0] in ("GPU", "NPU")))

    def to_settings(self) -> dict:
        """The plain dict the torch-free timing module (and a bundle manifest) reads."""
        return {"name": self.name, "backend": self.backend, "provider": self.provider, "precision": self.precision,
                "threads": int(self.threads), "batch_size": int(self.batch_size),
                "resolution": int(self.resolution), "options": dict(self.options)}

    def input_shape(self, resolution: int | None = None) -> tuple[int, int, int, int]:
        size = int(resolution or self.resolution)
        return (int(self.batch_size), 3, size, size)


def load_profiles(devices_section: Mapping | None = None) -> dict[str, DeviceProfile]:
    """Profiles from params.yaml's ``devices:`` section laid over ``DEFAULT_DEVICES``.

    An entry whose name is a default overrides just the keys it gives; a new name must
    give backend, provider, precision and threads.
    """
    merged = {name: dict(values) for name, values in DEFAULT_DEVICES.items()}
    for name, values in (devices_section or {}).items():
        merged[name] = {**merged.get(name, {}), **dict(values or {})}
    allowed = {f.name for f in dataclasses.fields(DeviceProfile)} - {"name"}
    profiles = {}
    for name, values in merged.items():
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"device {name!r}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
        try:
            profiles[name] = DeviceProfile(name=name, **values)
        except TypeError as err:
            raise ValueError(f"device {name!r}: {err} (a new device needs backend, provider, precision, threads)") from None
    return profiles


def get_profile(name: str, profiles: Mapping[str, DeviceProfile] | None = None) -> DeviceProfile:
    """The profile called ``name``; a KeyError that lists the known names otherwise."""
    profiles = load_profiles() if profiles is None else profiles
    try:
        return profiles[name]
    except KeyError:
        raise KeyError(f"unknown device {name!r}; known devices: {', '.join(sorted(profiles))}") from None


@dataclasses.dataclass(frozen=True)
class Usability:
    """Whether a profile can run here, and why not (``reason``) or what with (when usable)."""

    usable: bool
    reason: str
    runtime_name: str
    runtime_version: str | None


def check_usable(profile: DeviceProfile) -> Usability:
    """Can this machine run ``profile``? Checks the runtime, the provider / device and the GPU.

    A profile located elsewhere (a board) is never run here, whatever is installed.
    """
    if not profile.is_local:
        return Usability(False, f"device {profile.name!r} runs on a board ({profile.location}); it is measured "
                                "there, never here", _RUNTIME_OF.get(profile.backend, profile.backend), None)
    checks = {"onnxruntime": _check_onnxruntime, "openvino": _check_openvino,
              "torch": _check_torch, "tensorrt": _check_tensorrt}
    return checks[profile.backend](profile)


_RUNTIME_OF = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch", "tensorrt": "tensorrt"}


def _check_onnxruntime(profile: DeviceProfile) -> Usability:
    try:
        import onnxruntime
    except ImportError:
        return Usability(False, "onnxruntime is not installed (pip install onnxruntime)", "onnxruntime", None)
    version = onnxruntime.__version__
    available = onnxruntime.get_available_providers()
    if profile.provider not in available:
        hint = {"CUDAExecutionProvider": "install onnxruntime-gpu",
                "TensorrtExecutionProvider": "install onnxruntime-gpu and the TensorRT libraries"}.get(profile.provider, "")
        return Usability(False, f"onnxruntime {version} has no {profile.provider} ({hint}); "
                                f"available: {', '.join(available)}", "onnxruntime", version)
    if profile.uses_gpu:
        gpus, detail = cuda_gpu_count()
        if gpus == 0:
            return Usability(False, f"no CUDA GPU: {detail}", "onnxruntime", version)
    return Usability(True, f"onnxruntime {version} with {profile.provider}", "onnxruntime", version)


def _check_openvino(profile: DeviceProfile) -> Usability:
    try:
        import openvino
    except ImportError:
        return Usability(False, "openvino is not installed (pip install openvino)", "openvino", None)
    version = openvino.__version__
    available = openvino.Core().available_devices
    wanted = profile.provider.split(".")[0]
    if not any(device.split(".")[0] == wanted for device in available):
        hint = " (the NCS2 MYRIAD plugin was removed in OpenVINO 2023.0; use openvino<=2022.3)" if wanted == "MYRIAD" else ""
        return Usability(False, f"OpenVINO {version} has no {profile.provider} device{hint}; "
                                f"available: {', '.join(available)}", "openvino", version)
    return Usability(True, f"OpenVINO {version} on {profile.provider}", "openvino", version)


def _check_torch(profile: DeviceProfile) -> Usability:
    try:
        import torch
    except ImportError:
        return Usability(False, "torch is not installed", "torch", None)
    version = torch.__version__
    if profile.provider.startswith("cuda") and not torch.cuda.is_available():
        return Usability(False, "no CUDA GPU: torch.cuda.is_available() is False", "torch", version)
    return Usability(True, f"torch {version} on {profile.provider}", "torch", version)


def _check_tensorrt(profile: DeviceProfile) -> Usability:
    problems = []
    version = None
    try:
        import tensorrt

        version = tensorrt.__version__
    except ImportError:
        problems.append("tensorrt is not installed (the TensorRT Python package; it needs an NVIDIA GPU)")
    gpus, detail = cuda_gpu_count()
    if gpus == 0:
        problems.append(f"no CUDA GPU: {detail}")
    if problems:
        return Usability(False, "; ".join(problems), "tensorrt", version)
    return Usability(True, f"TensorRT {version} on {gpus} CUDA GPU(s)", "tensorrt", version)


def cuda_gpu_count() -> tuple[int, str]:
    """Number of CUDA GPUs and how that was found, asking the driver (libcuda) without torch."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 cannot be loaded)"
    status = driver.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver failed to initialise (cuInit returned {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return 0, f"the NVIDIA driver reports no GPU (cuDeviceGetCount: status {status}, count {count.value})"
    return count.value, f"{count.value} GPU(s) reported by the NVIDIA driver"
