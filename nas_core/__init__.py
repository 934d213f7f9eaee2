"""scan-edge's library: search space, supernet, training, predictors, latency, search.

Imports are lazy (PEP 562) so that torch-free parts, such as the latency runner that is
shipped to edge devices, can be imported without pulling in torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SearchSpace": "nas_core.search_space",
    "SpaceSpec": "nas_core.search_space",
    "ArchConfig": "nas_core.search_space",
    "ArchError": "nas_core.search_space",
    "Supernet": "nas_core.supernet",
    "SubnetModel": "nas_core.subnet",
    "load_timm_efficientformerv2": "nas_core.supernet",
    "BlockCatalog": "nas_core.block_catalog",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nas_core' has no attribute {name!r}")
