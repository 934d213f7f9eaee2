"""Any single catalog block as a standalone module, for profiling it alone (the LUT).

Each module is exactly the layer(s) the block contributes to a subnet, residual connection
and layer scale included, so summing block latencies approximates a whole subnet (§5.3).
"""
from __future__ import annotations

import torch
from torch import nn

from .block_catalog import HEAD_CLASSES, BlockSpec
from .search_space import AttnConfig, FFNConfig, SpaceSpec
from .subnet import ClassifierHead, Downsample, LayerScale2d, Stem, build_attention, build_ffn


class FFNResidual(nn.Module):
    def __init__(self, dim: int, cfg: FFNConfig):
        super().__init__()
        self.mlp = build_ffn(dim, cfg)
        self.ls2 = LayerScale2d(dim)

    def forward(self, x):
        return x + self.ls2(self.mlp(x))


class MHSAResidual(nn.Module):
    """An attention position's token mixer (MHSA, or ESHA in the extended space) with its residual."""

    def __init__(self, dim: int, resolution: int, cfg: AttnConfig, stage: int, spec: SpaceSpec):
        super().__init__()
        self.token_mixer = build_attention(dim, resolution, cfg, stage, spec)
        self.ls1 = LayerScale2d(dim)

    def forward(self, x):
        return x + self.ls1(self.token_mixer(x))


def build_block(block: BlockSpec, spec: SpaceSpec | None = None, num_classes: int = HEAD_CLASSES) -> nn.Module:
    spec = spec or SpaceSpec()
    if block.kind == "stem":
        return Stem(block.out_width, block.act)
    if block.kind == "ffn":
        return FFNResidual(block.in_width, FFNConfig(block.ffn_type, block.kernel, block.expansion, block.act))
    if block.kind == "embed":
        return Downsample(block.in_width, block.out_width, block.in_resolution)
    if block.kind in ("mhsa", "esha"):
        return MHSAResidual(block.in_width, block.in_resolution, AttnConfig(block.value_ratio, block.act, block.kind),
                            block.stage, spec)
    if block.kind == "embed_attn":
        return Downsample(block.in_width, block.out_width, block.in_resolution,
                          AttnConfig(block.value_ratio, block.act), spec.downsample_key_dim, spec.mhsa_heads)
    if block.kind == "head":
        return ClassifierHead(block.in_width, num_classes, distillation=True)
    raise ValueError(f"unknown block kind {block.kind!r}")


def example_input(block: BlockSpec, batch_size: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, *block.input_shape[1:])
