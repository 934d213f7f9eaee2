"""Named architectures, like timm's model registry: configs as data.

``efficientformerv2_s0`` is timm's model expressed in the search space (it is a member,
bit for bit: see tests/test_timm_equivalence.py). The other six are the paper's searched
architectures (Suppl. S9, transcribed in shared/reference/paper-architectures.md), named as
the paper names its models. Notation: ``U(e,k,a)`` unified FFN, ``F(e,k,a)`` fused FFN,
``M(e,a)+`` an MHSA before the FFN, ``DS(e,a)`` the MHSA downsampling of embed 3.
"""
from __future__ import annotations

from typing import Callable

PRESET_SPECS: dict[str, dict] = {
    "efficientformerv2_s0": dict(
        stem_act="G", widths=(32, 48, 96, 176), embed3="DS(4,G)",
        stages=(
            "U(4,3,G) U(4,3,G)",
            "U(4,3,G) U(4,3,G)",
            "U(4,3,G) U(3,3,G) U(3,3,G) U(3,3,G) M(4,G)+U(4,3,G) M(4,G)+U(4,3,G)",
            "U(4,3,G) U(3,3,G) M(4,G)+U(3,3,G) M(4,G)+U(4,3,G)",
        ),
    ),
    "cortex@95ms": dict(
        stem_act="R", widths=(24, 40, 96, 224), embed3="DS(2,R)",
        stages=(
            "F(2,3,R) F(2,3,R)",
            "U(2,3,R) F(2,3,R)",
            "U(3,3,R) M(2,R)+U(3,3,R) M(2,R)+U(3,3,R) M(2,R)+U(4,3,R) U(2,3,R) M(2,R)+U(3,3,R)",
            "M(2,R)+U(3,3,R) M(2,R)+U(3,3,R) M(2,R)+U(3,3,R) M(2,R)+U(3,3,R)",
        ),
    ),
    "cortex@150ms": dict(
        stem_act="R", widths=(32, 40, 96, 248), embed3="DS(4,R)",
        stages=(
            "F(2,3,R) F(2,3,R)",
            "F(2,3,R) F(2,3,R)",
            "U(3,3,R) M(2,R)+U(3,3,R) M(2,R)+F(2,3,R) M(2,R)+U(4,3,R) U(2,5,R) M(2,R)+U(3,3,R)",
            "M(2,R)+F(3,3,R) M(2,G)+F(3,3,G) M(2,R)+U(3,3,R) M(2,G)+F(3,3,G)",
        ),
    ),
    "cortex@150ms_5M": dict(
        stem_act="R", widths=(32, 64, 96, 224), embed3="DS(4,R)",
        stages=(
            "F(3,3,R) F(3,3,R)",
            "U(2,3,R) F(2,3,R)",
            "U(3,5,R) M(2,R)+U(3,5,R) M(2,R)+U(3,5,R) M(2,R)+U(4,5,R) U(4,5,R) M(2,R)+U(3,5,R)",
            "M(2,G)+U(3,5,G) M(2,G)+U(3,5,G) M(2,R)+U(4,5,R) M(2,R)+U(3,5,R)",
        ),
    ),
    "nano_trt@20ms": dict(
        stem_act="R", widths=(32, 64, 96, 224), embed3="DS(2,G)",
        stages=(
            "F(3,3,R) F(3,3,R)",
            "F(3,3,G) F(3,3,G)",
            "F(3,3,R) F(3,3,R) F(3,3,R) F(3,3,R) F(3,3,G) F(3,3,G) F(3,3,R) F(3,3,G) F(3,3,G)",
            "F(3,3,G) M(2,G)+F(3,3,G) F(3,3,G) F(3,3,G) F(3,3,R) M(2,G)+F(3,3,G)",
        ),
    ),
    "nano_trt@20ms_5M": dict(
        stem_act="R", widths=(32, 64, 120, 248), embed3="DS(2,R)",
        stages=(
            "F(4,3,G) F(3,3,R)",
            "F(2,3,G) F(2,3,G)",
            "U(3,5,R) U(3,5,R) M(2,G)+U(2,5,G) U(2,5,R) M(2,G)+U(3,5,G) U(3,5,R)",
            "M(2,G)+U(3,5,G) M(2,G)+U(3,5,G) U(3,5,G) M(2,R)+U(3,5,R)",
        ),
    ),
    "nano_trt@13ms": dict(
        stem_act="R", widths=(32, 64, 96, 224), embed3="DS(2,R)",
        stages=(
            "U(2,3,R) F(3,3,R)",
            "U(2,3,R) U(2,3,R)",
            "F(3,3,R) F(3,3,R) F(3,3,R) F(3,3,R) F(3,3,G) F(3,3,G)",
            "M(2,R)+F(2,3,R) F(2,3,G) M(2,G)+F(3,3,G) F(2,3,G)",
        ),
    ),
}


def _builder(spec: dict) -> Callable:
    def build(space):
        return space.from_compact(spec["stem_act"], spec["widths"], spec["stages"], spec["embed3"])

    return build


PRESETS: dict[str, Callable] = {name: _builder(spec) for name, spec in PRESET_SPECS.items()}
