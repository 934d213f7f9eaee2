"""GPU paths: ORT I/O binding, TensorRT engines against torch, AMP supernet steps and pairs on CUDA.

The ``gpu`` tests run where torch sees a CUDA device (``bash scripts/test.sh -m gpu``, or
``scripts/gpu_check.sh``) and skip here with the reason; each also skips, naming what it
cannot import, when its runtime is missing (onnxruntime-gpu, TensorRT). The I/O-binding
code path itself also runs on the CPU provider, in the default suite.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nas_core.latency.export import export_onnx
from nas_core.latency.timing import OrtSession, make_input
from nas_core.search_space import SearchSpace, SpaceSpec, StageSpec
from nas_core.subnet import SubnetModel

TINY = SpaceSpec(stages=(StageSpec(1, 4, (16,), (1,), False), StageSpec(2, 8, (24,), (1,), False),
                         StageSpec(3, 16, (32,), (2,), True), StageSpec(4, 32, (48,), (1, 2), True)),
                 expansions=(2,), kernels=(3,), value_ratios=(2,))
SHAPE = (1, 3, 64, 64)
CPU_SETTINGS = {"backend": "onnxruntime", "provider": "CPUExecutionProvider", "precision": "fp32", "threads": 1}


def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")


def needs_module(name: str, what: str):
    try:
        return __import__(name)
    except ImportError as err:
        pytest.skip(f"cannot import {name} ({what}): {err}")


@pytest.fixture(scope="module")
def model_and_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = SubnetModel(SearchSpace(TINY).largest(), num_classes=10, resolution=64).eval()
    return model, export_onnx(model, SHAPE, tmp_path_factory.mktemp("onnx") / "model.onnx")


def _torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(make_input(SHAPE))).numpy()


def test_io_binding_runs_the_model_and_returns_its_outputs(model_and_onnx):
    """The bound session (inputs placed once, outputs left on the device) computes what the
    plain one does: here on the CPU provider, by default for CUDA / TensorRT providers."""
    model, onnx_path = model_and_onnx
    plain = OrtSession(onnx_path, SHAPE, CPU_SETTINGS)
    bound = OrtSession(onnx_path, SHAPE, {**CPU_SETTINGS, "options": {"io_binding": True}})
    assert plain.binding is None and bound.binding is not None and bound.info["io_binding"] is True
    plain.run()
    bound.run()
    np.testing.assert_allclose(bound.outputs()[0], plain.outputs()[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bound.outputs()[0], _torch_logits(model), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
def test_cuda_ort_timing_binds_inputs_on_the_gpu(model_and_onnx):
    needs_cuda()
    ort = needs_module("onnxruntime", "onnxruntime-gpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (onnxruntime-gpu not installed)")
    model, onnx_path = model_and_onnx
    session = OrtSession(onnx_path, SHAPE, {**CPU_SETTINGS, "provider": "CUDAExecutionProvider"})
    assert session.binding is not None and session.info["provider"] == "CUDAExecutionProvider"
    session.run()
    np.testing.assert_allclose(session.outputs()[0], _torch_logits(model), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_tensorrt_engine_from_onnx_matches_torch(model_and_onnx, tmp_path):
    needs_cuda()
    needs_module("tensorrt", "NVIDIA TensorRT")
    from nas_core.deploy import export_tensorrt, tensorrt_matches_torch

    model, onnx_path = model_and_onnx
    assert export_tensorrt(onnx_path, tmp_path / "model.engine").stat().st_size > 0
    check = tensorrt_matches_torch(model, onnx_path, SHAPE)
    assert check["outputs"] == 1 and check["max_abs_diff"] < 1e-3


@pytest.mark.gpu
def test_amp_supernet_steps_on_cuda(tmp_path):
    needs_cuda()
    from torch.utils.data import TensorDataset

    from nas_core.train import DistContext, SupernetTrainConfig, SupernetTrainer

    config = SupernetTrainConfig(resolution=32, epochs=1, batch_size=16, steps_per_epoch=3, warmup_epochs=0,
                                 mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0}, ffn_drop_path=0.1,
                                 mhsa_drop_path=0.1, clip_grad=0.01, clip_mode="agc")
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 4, (64,), generator=g))
    trainer = SupernetTrainer(config, data, 4, tmp_path, space=SearchSpace(TINY),
                              ctx=DistContext(device=torch.device("cuda")), progress=False)
    assert trainer.use_amp and trainer.scaler.is_enabled()
    before = {k: v.clone() for k, v in trainer.supernet.state_dict().items()}
    stats = trainer.train_epoch(0)
    assert np.isfinite(stats["train_loss"]) and trainer.step == 3
    assert any(not torch.equal(before[k], v) for k, v in trainer.supernet.state_dict().items())


@pytest.mark.gpu
def test_pairs_on_the_gpu_match_the_cpu(tmp_path):
    needs_cuda()
    from nas_core.data.synthetic import generate_classification
    from nas_core.io import torch_save
    from nas_core.pairs import PairsConfig, SubnetEvaluator
    from nas_core.search_space import SPACE_VERSION
    from nas_core.supernet import Supernet
    from nas_core.train import SUPERNET_FORMAT

    generate_classification(tmp_path / "data", num_classes=4, train_per_class=8, val_per_class=6, test_per_class=1,
                            image_size=32, workers=1)
    torch.manual_seed(0)
    net = Supernet(SearchSpace(TINY), num_classes=4, resolution=32)
    torch_save(tmp_path / "supernet.pt", {"format": SUPERNET_FORMAT, "space_version": SPACE_VERSION,
                                          "space_spec": dataclasses.asdict(TINY), "num_classes": 4, "resolution": 32,
                                          "distillation": True, "model": net.state_dict()})
    config = PairsConfig(bn_calib_batches=2, bn_calib_batch_size=8, eval_batch_size=8)
    on_gpu = SubnetEvaluator.from_files(tmp_path / "supernet.pt", tmp_path / "data", config)
    on_cpu = SubnetEvaluator.from_files(tmp_path / "supernet.pt", tmp_path / "data",
                                        dataclasses.replace(config, device="cpu"))
    assert on_gpu.device.type == "cuda" and all(b.is_cuda for b in on_gpu.calib_batches)  # BN recalibration there
    arch = SearchSpace(TINY).largest()
    gpu, cpu = on_gpu(arch), on_cpu(arch)
    assert gpu["images"] == cpu["images"] == 24
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-3)
