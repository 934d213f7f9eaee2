"""Exporting torch modules for the runtimes: ONNX (every backend but torch) and OpenVINO IR.

Exporter choice: the classic TorchScript exporter (``torch.onnx.export(..., dynamo=False,
opset_version=17)``), deliberately. In torch 2.13 the default is the dynamo exporter,
which needs ``onnxscript`` and writes opset 18; the classic one is fast (well under a
second for a block, a few seconds for a whole network), needs nothing beyond torch, and its
files load in onnxruntime, OpenVINO and TensorRT (opset 17 is within what the Jetson
TensorRT 8.x parsers read). Shapes are fixed per export (batch 1, one resolution), which
is what a latency table wants; the tracer's warnings about turning tensor sizes into
constants are therefore expected and silenced. Constant folding is on, so that BatchNorm
and shape arithmetic are folded as a deployment toolchain would.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Sequence

from nas_core.io import atomic_path

ONNX_OPSET = 17


def export_onnx(module, input_shape: Sequence[int], path: str | os.PathLike, opset_version: int = ONNX_OPSET) -> Path:
    """Export ``module`` (in eval mode) for a fixed ``input_shape`` to ``path`` (atomically).

    The graph has one input ``input`` and output(s) ``output``/``output_<i>``; the module's
    train/eval mode is restored afterwards.
    """
    import torch  # on first use: nas_core.latency and nas_core.io import without torch (hosts driving boards)

    path = Path(path)
    was_training = module.training
    module.eval()
    example = torch.zeros(tuple(int(d) for d in input_shape))
    try:
        with torch.no_grad(), _quiet_exporter(), atomic_path(path) as tmp:
            torch.onnx.export(
                module, (example,), str(tmp), dynamo=False, opset_version=opset_version,
                do_constant_folding=True, input_names=["input"], output_names=["output"],
            )
    finally:
        module.train(was_training)
    return path


def export_openvino(onnx_path: str | os.PathLike, out_xml: str | os.PathLike, compress_to_fp16: bool = False) -> Path:
    """Convert an ONNX file to OpenVINO IR (``out_xml`` + its ``.bin``).

    ``compress_to_fp16`` is off by default (``openvino.save_model`` turns it on): FP16
    weights in the IR would make an "fp32" profile time a different file. Execution
    precision is chosen at compile time anyway (INFERENCE_PRECISION_HINT), which is how
    the NCS2 ran FP16.
    """
    import openvino  # an optional runtime: imported only when an OpenVINO model is wanted

    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    model = openvino.convert_model(str(onnx_path))
    openvino.save_model(model, str(out_xml), compress_to_fp16=compress_to_fp16)
    return out_xml


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's expected warnings: the legacy-exporter notice (a deliberate
    choice, see the module docstring) and tracer warnings about fixed shapes."""
    import torch  # on first use: nas_core.latency and nas_core.io import without torch (hosts driving boards)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield
