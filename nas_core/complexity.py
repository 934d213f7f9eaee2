"""Exact parameter and MAC counts of built modules.

The search uses the fast, table-based counts of :class:`~nas_core.block_catalog.BlockCatalog`
(millions of calls); these exact counts build the model and are the reference the fast
counts are tested against. MACs follow ``torch.utils.flop_counter`` (convs, matmuls,
linears; BN, activations, softmax and resizing are not counted), divided by two.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .search_space import ArchConfig
from .subnet import SubnetModel


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        module(torch.zeros(input_shape))
    module.train(was_training)
    return counter.get_total_flops() // 2


def module_complexity(module: nn.Module, resolution: int = 224) -> dict[str, int]:
    """Exact ``params`` and ``macs`` of any image model at ``resolution`` (batch 1)."""
    return {"params": count_params(module), "macs": count_macs(module, (1, 3, resolution, resolution))}


def arch_complexity(arch: ArchConfig, resolution: int = 224, num_classes: int = 1000) -> dict[str, int]:
    """Exact ``params`` and ``macs`` of an architecture (builds it; ~0.1-0.5 s)."""
    return module_complexity(SubnetModel(arch, num_classes=num_classes, resolution=resolution), resolution)
