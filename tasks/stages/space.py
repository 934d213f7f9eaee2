"""The search space the pipeline runs in, from params: the one place a stage gets it.

``search_space.attention`` names it (``nas_core.search_space.SpaceSpec.from_params``): absent
or ``[mhsa]`` is the paper's Table 2 (568 blocks + 4 heads); ``[mhsa, esha]`` is the extended
space with MicroViT's ESHA as a second attention type (issue 19). Every stage that builds or
reads architectures (supernet, pairs, predictor, LUT, calibration, search, controls,
fine-tune, report) calls :func:`search_space`, and lists :data:`SPACE_KEY` (or the whole
``search_space`` section) among its params sections, so changing the space re-runs exactly
them: through their Prefect cache keys and resume stamps (``tasks.stages.registry``), and
through ``dvc.yaml``'s params.
"""
from __future__ import annotations

from typing import Any, Mapping

from nas_core.search_space import SearchSpace, SpaceSpec
from tasks.stages.common import SPACE_KEY, section

__all__ = ["SPACE_KEY", "search_space", "space_spec", "space_sections"]


def search_space(params: Mapping[str, Any]) -> SearchSpace:
    """The search space ``params`` name (Table 2 unless ``search_space.attention`` says otherwise)."""
    return SearchSpace(space_spec(params))


def space_spec(params: Mapping[str, Any]) -> SpaceSpec:
    """:func:`search_space`'s spec, without building the genes (for identities and messages)."""
    return SpaceSpec.from_params(section(params, "search_space"))


def space_sections(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"search_space": {"attention": ...}}``: the params a separate process (``torchrun``
    ranks) needs to rebuild the same space."""
    return {"search_space": {"attention": list(space_spec(params).attention_types)}}
