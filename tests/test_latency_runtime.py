"""Device profiles, usability checks, ONNX export and timing on the real CPU runtimes.

Everything here runs on CPU in well under a minute; GPU profiles are only checked for
saying clearly why they cannot run (the tests adapt when a GPU is present).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nas_core import io
from nas_core.latency import timing
from nas_core.latency.devices import (
    DEFAULT_DEVICES, DeviceProfile, check_usable, cuda_gpu_count, get_profile, load_profiles,
)
from nas_core.latency.timing import TimingConfig, time_callable

FAST = TimingConfig(warmup_runs=2, warmup_ms=0, min_repeats=5, min_total_ms=5, max_repeats=200,
                    max_total_ms=300, check_every=5)
SHAPE = (1, 3, 32, 32)
HAS_GPU = cuda_gpu_count()[0] > 0


# ----------------------------------------------------------------------------- profiles
def test_default_profiles_load_with_the_paper_roles():
    profiles = load_profiles({})
    assert set(profiles) == set(DEFAULT_DEVICES) == {
        "ort_cpu_fp32", "openvino_cpu_fp32", "openvino_cpu_lowp", "torch_cpu",
        "ort_cuda_fp32", "tensorrt_fp32", "torch_cuda"}
    cortex = profiles["ort_cpu_fp32"]
    assert (cortex.backend, cortex.provider, cortex.precision, cortex.threads) == ("onnxruntime", "CPUExecutionProvider", "fp32", 1)
    assert cortex.input_shape() == (1, 3, 224, 224)
    assert profiles["openvino_cpu_lowp"].precision == "default"
    assert hash(cortex) == hash(get_profile("ort_cpu_fp32", profiles))  # frozen, hashable despite options


def test_params_section_overlays_defaults_and_adds_devices():
    profiles = load_profiles({
        "ort_cpu_fp32": {"threads": 2},
        "jetson_nano_trt": {"backend": "tensorrt", "provider": "cuda", "precision": "fp16", "threads": 4},
    })
    assert profiles["ort_cpu_fp32"].threads == 2
    assert profiles["ort_cpu_fp32"].provider == "CPUExecutionProvider"
    assert profiles["jetson_nano_trt"].precision == "fp16"
    with pytest.raises(ValueError, match="unknown keys"):
        load_profiles({"ort_cpu_fp32": {"thread": 2}})
    with pytest.raises(ValueError, match="unknown backend"):
        load_profiles({"x": {"backend": "tvm", "provider": "cpu", "precision": "fp32", "threads": 1}})
    with pytest.raises(ValueError, match="needs backend"):
        load_profiles({"x": {"backend": "onnxruntime"}})


def test_unknown_device_error_lists_known_names():
    with pytest.raises(KeyError) as info:
        get_profile("cortex_a57")
    message = str(info.value)
    assert "cortex_a57" in message
    for name in DEFAULT_DEVICES:
        assert name in message


# ----------------------------------------------------------------------------- usability
def test_cpu_profiles_are_usable_with_versions():
    for name in ("ort_cpu_fp32", "openvino_cpu_fp32", "openvino_cpu_lowp", "torch_cpu"):
        usability = check_usable(get_profile(name))
        assert usability.usable, usability.reason
        assert usability.runtime_version


@pytest.mark.skipif(HAS_GPU, reason="a CUDA GPU is present: the GPU profiles may be usable")
def test_gpu_profiles_say_why_they_are_not_usable():
    ort_cuda = check_usable(get_profile("ort_cuda_fp32"))
    assert not ort_cuda.usable
    assert "CUDAExecutionProvider" in ort_cuda.reason or "no CUDA GPU" in ort_cuda.reason
    torch_cuda = check_usable(get_profile("torch_cuda"))
    assert not torch_cuda.usable
    assert torch_cuda.reason == "no CUDA GPU: torch.cuda.is_available() is False"
    trt = check_usable(get_profile("tensorrt_fp32"))
    assert not trt.usable
    assert "no CUDA GPU" in trt.reason
    openvino_gpu = check_usable(DeviceProfile("ov_gpu", "openvino", "GPU", "default", 1))
    assert not openvino_gpu.usable and "has no GPU device" in openvino_gpu.reason


# ----------------------------------------------------------------------------- timing loop
class _FakeClock:
    def __init__(self):
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


def test_time_callable_stops_when_the_median_is_stable():
    clock = _FakeClock()

    def run():
        clock.now_ns += 2_000_000

    result = time_callable(run, TimingConfig(warmup_runs=3, warmup_ms=0, min_repeats=10, min_total_ms=0, check_every=5), clock)
    assert result.median_ms == pytest.approx(2.0)
    assert result.p10_ms == result.p90_ms == pytest.approx(2.0)
    assert result.stable and 10 <= result.repeats <= 20


def test_time_callable_caps_a_median_that_never_settles():
    clock = _FakeClock()
    calls = []

    def run():  # every call slower than the last: the median keeps moving
        calls.append(1)
        clock.now_ns += 1_000_000 * len(calls)

    result = time_callable(run, TimingConfig(warmup_runs=0, warmup_ms=0, min_repeats=5, min_total_ms=0,
                                             max_repeats=40, check_every=5), clock)
    assert result.repeats == 40 and not result.stable
    assert result.p10_ms < result.median_ms < result.p90_ms


# ----------------------------------------------------------------------------- export + runtimes
@pytest.fixture(scope="module")
def tiny_net():
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        """Conv-BN-GELU, a depthwise conv, one self-attention and a classifier."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.GELU())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 5, 1, 2, groups=16), nn.BatchNorm2d(16), nn.ReLU())
            self.qkv = nn.Linear(16, 48)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            x = self.dw(self.stem(x))
            tokens = x.flatten(2).transpose(1, 2)
            q, k, v = self.qkv(tokens).chunk(3, dim=-1)
            attention = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1)
            return self.head((attention @ v + tokens).mean(1))

    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is tested
        for bn in (net.stem[1], net.dw[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="module")
def tiny_onnx(tiny_net, tmp_path_factory):
    from nas_core.latency.export import export_onnx

    return export_onnx(tiny_net, SHAPE, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def _sane(result):
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms
    assert result.mean_ms > 0 and result.repeats >= FAST.min_repeats


def test_onnxruntime_and_openvino_fp32_match_torch(tiny_net, tiny_onnx):
    import torch

    x = timing.make_input(SHAPE, seed=0)
    with torch.no_grad():
        expected = tiny_net(torch.from_numpy(x)).numpy()
    outputs = {}
    for name in ("ort_cpu_fp32", "openvino_cpu_fp32"):
        session = timing.open_session(tiny_onnx, SHAPE, get_profile(name).to_settings(), seed=0)
        session.run()
        outputs[name] = session.outputs()[0]
        assert session.info["precision_actual"] == "fp32"
        _sane(timing.time_session(session, FAST))
        session.close()
    np.testing.assert_allclose(outputs["ort_cpu_fp32"], expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(outputs["openvino_cpu_fp32"], expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(outputs["openvino_cpu_fp32"], outputs["ort_cpu_fp32"], atol=1e-4, rtol=0)


def test_openvino_low_precision_records_what_it_used(tiny_onnx):
    session = timing.open_session(tiny_onnx, SHAPE, get_profile("openvino_cpu_lowp").to_settings())
    assert session.info["precision_actual"] in {"bf16", "fp16", "fp32"}  # bf16 on AMX / AVX512-BF16 CPUs
    session.close()


def test_export_openvino_ir_keeps_fp32_weights(tiny_onnx, tmp_path):
    from nas_core.latency.export import export_openvino

    xml = export_openvino(tiny_onnx, tmp_path / "tiny.xml")
    assert xml.exists() and xml.with_suffix(".bin").exists()
    assert "f16" not in xml.read_text()  # no FP16-compressed weights in an fp32 IR


def test_measure_module_on_each_cpu_backend(tiny_net, tmp_path):
    from nas_core.latency.measure import measure_module

    for name in ("ort_cpu_fp32", "openvino_cpu_fp32", "torch_cpu"):
        result = measure_module(tiny_net, SHAPE, get_profile(name), workdir=tmp_path / name, config=FAST)
        _sane(result)
        assert result.info["device"] == name and result.info["runtime_version"]
    assert tiny_net.training is False


def test_measure_module_refuses_an_unusable_profile(tiny_net):
    from nas_core.latency.measure import measure_module

    if HAS_GPU:
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(RuntimeError, match="not usable here: no CUDA GPU"):
        measure_module(tiny_net, SHAPE, get_profile("torch_cuda"), config=FAST)


def test_cpu_pinning_is_restored():
    import os

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this OS")
    before = os.sched_getaffinity(0)
    with timing.pinned_cpus(1) as cpus:
        assert os.sched_getaffinity(0) == set(cpus) and len(cpus) == 1
    assert os.sched_getaffinity(0) == before


# ----------------------------------------------------------------------------- torch-free module
def test_timing_mirrors_of_io_helpers_agree():
    assert timing.machine_fingerprint() == io.machine_fingerprint()
    assert timing.PROVENANCE_KEY == io.PROVENANCE_KEY


def test_latency_package_imports_no_torch():
    code = (
        "import sys, nas_core; before = 'torch' in sys.modules\n"
        "import nas_core.latency, nas_core.latency.devices, nas_core.latency.timing\n"
        "import nas_core.latency.measure, nas_core.latency.bundle, nas_core.latency.export\n"
        "assert before or 'torch' not in sys.modules, 'nas_core.latency imported torch'\n"
        "assert 'timm' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_default_devices_round_trip_through_params_yaml():
    from pathlib import Path

    import yaml

    from nas_core.params import load_params

    section = yaml.safe_load(yaml.safe_dump({"devices": DEFAULT_DEVICES}, sort_keys=False))["devices"]
    assert load_profiles(section) == load_profiles({})
    params_path = Path(__file__).resolve().parents[1] / "params.yaml"
    if params_path.exists():  # whatever the project's params.yaml holds must load
        assert "ort_cpu_fp32" in load_profiles(load_params(params_path).get("devices") or {})
