"""Deployment files of a trained model: ONNX always, an OpenVINO IR and a TensorRT engine
where possible (:func:`export_all`), and the check that a TensorRT engine computes what the
torch model does before it is timed or shipped (:func:`tensorrt_matches_torch`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .io import atomic_path
from .latency.devices import check_usable, get_profile
from .latency.export import export_onnx, export_openvino
from .latency.timing import TensorRtSession, make_input


def tensorrt_unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built here (None when it can)."""
    usability = check_usable(get_profile("tensorrt_fp32"))
    return None if usability.usable else usability.reason


def export_tensorrt(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, fp16: bool = False,
                    workspace_mb: int = 1024) -> Path:
    """Build a serialized TensorRT engine from ONNX (needs ``tensorrt`` and a CUDA GPU)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: "
                           + "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return Path(engine_path)


def export_all(model: nn.Module, input_shape: Sequence[int], out_dir: Path, openvino: bool = True,
               tensorrt: bool = True) -> dict[str, Any]:
    """``model.onnx`` always; OpenVINO IR and a TensorRT engine when asked and possible
    (else ``{"skipped": reason}``). Returns the paths written."""
    onnx_path = export_onnx(model, input_shape, out_dir / "model.onnx")
    exports: dict[str, Any] = {"onnx": str(onnx_path), "input_shape": list(input_shape)}
    if openvino:
        try:
            exports["openvino"] = str(export_openvino(onnx_path, out_dir / "model.xml"))
        except Exception as err:
            exports["openvino"] = {"skipped": f"{type(err).__name__}: {err}"}
    if tensorrt:
        reason = tensorrt_unavailable_reason()
        if reason:
            exports["tensorrt"] = {"skipped": reason}
        else:
            try:
                exports["tensorrt"] = str(export_tensorrt(onnx_path, out_dir / "model.engine"))
                exports["tensorrt_check"] = tensorrt_matches_torch(model, onnx_path, input_shape)
            except Exception as err:
                exports["tensorrt"] = {"skipped": f"{type(err).__name__}: {err}"}
    return exports


def tensorrt_matches_torch(model: nn.Module, onnx_path: str | os.PathLike, input_shape: Sequence[int],
                           atol: float = 1e-3, rtol: float = 1e-3) -> dict[str, float]:
    """Run the TensorRT engine built from ``onnx_path`` and ``model`` (torch, CPU) on the same
    input; raise if any output differs beyond ``atol + rtol * |torch|``. Returns the largest
    absolute difference, for the record (a wrong engine must not be timed or shipped)."""
    session = TensorRtSession(onnx_path, input_shape, {"precision": "fp32", "options": {}})
    try:
        session.run()
        engine_outputs = session.outputs()
    finally:
        session.close()
    with torch.no_grad():
        torch_out = model.eval().cpu()(torch.from_numpy(make_input(input_shape)))
    torch_outputs = [t.numpy() for t in (torch_out if isinstance(torch_out, (tuple, list)) else [torch_out])]
    worst = 0.0
    for got, want in zip(engine_outputs, torch_outputs):
        diff = np.abs(got.reshape(want.shape) - want)
        worst = max(worst, float(diff.max()))
        if not np.all(diff <= atol + rtol * np.abs(want)):
            raise RuntimeError(f"TensorRT engine of {onnx_path} differs from torch by up to {float(diff.max()):.3g}")
    return {"max_abs_diff": worst, "outputs": len(torch_outputs)}
