"""Shared architecture fixtures for tests."""
from __future__ import annotations

import torch

from nas_core.search_space import (ArchConfig, AttnConfig, BlockConfig, FFNConfig, SearchSpace,
                                   StageConfig)


def covering_archs(space: SearchSpace, count: int = 4) -> list[ArchConfig]:
    """A few architectures that together use every choice of every knob at least once."""
    spec = space.spec
    archs = []
    for i in range(count):
        stages = []
        for stage in spec.stages:
            depth = stage.depths[i % len(stage.depths)]
            blocks = []
            for j in range(depth):
                ffn = FFNConfig(spec.ffn_types[(i + j) % 2], spec.kernels[(i + j // 2) % 2],
                                spec.expansions[(i + j) % 3], spec.activations[(i + j + stage.number) % 2])
                mhsa = None
                if stage.allows_mhsa and (i + j) % 2 == 0:
                    mhsa = AttnConfig(spec.value_ratios[(i + j // 2) % 3], spec.activations[(i + j // 2) % 2])
                blocks.append(BlockConfig(ffn, mhsa))
            stages.append(StageConfig(stage.widths[i % len(stage.widths)], tuple(blocks)))
        archs.append(space.validate(ArchConfig(spec.activations[i % 2], tuple(stages),
                                               AttnConfig(spec.value_ratios[i % 3], spec.activations[(i + 1) % 2]))))
    return archs


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise every parameter and BN statistic, so equality checks are not blind
    (with default init, layer scale 1e-5 makes most blocks nearly the identity)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        # Weights scaled by fan-in keep activations O(1) through deep random nets.
        scale = (p[0].numel() ** -0.5) if p.dim() > 1 else 0.2
        p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if name.endswith("bn.weight") else 0.0))
    for name, b in module.named_buffers():
        if name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
        elif name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
    return module
