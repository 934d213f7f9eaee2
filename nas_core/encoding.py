"""The accuracy predictor's input: a 44 x 24 binary matrix per subnet (§5.2).

Each block of a subnet becomes a 24-bit one-hot row; the rows are stacked in execution
order and zero-padded to 44 rows (``SpaceSpec.max_blocks``). Bit layout of a row:

    bits  0- 3  stage (1..4) the block's output belongs to (stem: 1, head: 4); an embedding
                between stages k and k+1 sets both bits, which keeps embed 3 (MHSA-DS)
                apart from a stage-4 MHSA of the same widths
    bits  4- 7  input width, as the index among the input stage's width choices
    bits  8-11  output width, as the index among the output stage's width choices
    bits 12-14  FFN expansion ratio {2, 3, 4}
    bits 15-17  MHSA value ratio {2, 3, 4}          (MHSA blocks and the embed-3 MHSA-DS)
    bits 18-19  FFN type {unified, fused}
    bits 20-21  FFN kernel size {3, 5}
    bits 22-23  activation {GELU, ReLU}              (stem, FFN, MHSA, embed 3)

In the extended space (``SpaceSpec.attention_types = ("mhsa", "esha")``) a 25th bit marks an
ESHA block (stage, widths and activation as an MHSA, no value-ratio bits); Table 2's space
keeps exactly 24.

4 + 8 + 6 + 2 + 2 + 2 = 24, the paper's split (stage 4, in/out width 8, expansion ratios 6,
FFN type 2, kernel 2, activation 2). A subnet has at most 41 blocks (stem, 3 + 3 FFNs,
2 embeds, 9 + 6 MHSA/FFN pairs, embed 3, head), within the paper's 44 rows. The encoding is
built per catalog block once; a batch of genomes is encoded by gathering rows.
"""
from __future__ import annotations

import numpy as np

from .block_catalog import BlockCatalog, BlockSpec
from .search_space import SPACE_VERSION, SearchSpace

BITS = 24  # Table 2's rows; the extended space adds ESHA_BIT
ESHA_BIT = 24
LAYOUTS = ("stacked", "slotted")


def code_bits(space: SearchSpace) -> int:
    return BITS + (1 if "esha" in space.spec.attention_types else 0)


def _width_index(width: int, space: SearchSpace, stage: int) -> int:
    return space.spec.stages[stage - 1].widths.index(width)


def block_code(b: BlockSpec, space: SearchSpace) -> np.ndarray:
    spec = space.spec
    row = np.zeros(code_bits(space), dtype=np.float32)
    row[b.stage - 1] = 1
    if b.kind in ("embed", "embed_attn"):
        row[b.stage - 2] = 1
    if b.kind == "stem":
        row[4 + _width_index(b.out_width, space, 1)] = 1
    elif b.kind == "head":
        row[4 + _width_index(b.in_width, space, 4)] = 1
    else:
        in_stage = b.stage - 1 if b.kind in ("embed", "embed_attn") else b.stage
        row[4 + _width_index(b.in_width, space, in_stage)] = 1
    if b.kind != "head":
        row[8 + _width_index(b.out_width, space, b.stage)] = 1
    if b.kind == "ffn":
        row[12 + spec.expansions.index(b.expansion)] = 1
        row[18 + spec.ffn_types.index(b.ffn_type)] = 1
        row[20 + spec.kernels.index(b.kernel)] = 1
    if b.kind in ("mhsa", "embed_attn"):
        row[15 + spec.value_ratios.index(b.value_ratio)] = 1
    if b.kind == "esha":
        row[ESHA_BIT] = 1
    if b.act:
        row[22 + spec.activations.index(b.act)] = 1
    return row


class ArchEncoder:
    """Genomes (or architectures) -> [N, 44, 24] float32 matrices.

    ``layout="stacked"`` (the paper) packs a subnet's blocks into the first rows;
    ``"slotted"`` keeps every block at a fixed row (zeros for absent blocks), an option
    that aligns the same block position across subnets for the 1-D convolutions.
    """

    def __init__(self, space: SearchSpace | None = None, layout: str = "stacked"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.space = space or SearchSpace()
        self.layout = layout
        self.catalog = BlockCatalog(self.space, resolution=224)  # codes do not depend on resolution
        self.codes = np.stack([block_code(b, self.space) for b in self.catalog.blocks])
        self.rows = self.space.spec.max_blocks
        self.bits = code_bits(self.space)
        if self.catalog.max_path_length > self.rows:
            raise ValueError(f"subnets have up to {self.catalog.max_path_length} blocks, more than {self.rows} rows")
        self.space_version = SPACE_VERSION

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.bits)

    def encode_genomes(self, genomes: np.ndarray) -> np.ndarray:
        genomes = np.atleast_2d(np.asarray(genomes))
        if genomes.shape[1] != len(self.space.genes):
            raise ValueError(f"genomes have {genomes.shape[1]} genes; this search space ({SPACE_VERSION}) "
                             f"has {len(self.space.genes)}")
        rows, active = self.catalog.block_rows(genomes)
        if self.layout == "stacked":
            order = np.argsort(~active, axis=1, kind="stable")  # active blocks first, in order
            rows = np.take_along_axis(rows, order, axis=1)
            active = np.take_along_axis(active, order, axis=1)
        out = np.zeros((len(genomes), self.rows, self.bits), dtype=np.float32)
        out[:, : rows.shape[1]] = self.codes[rows] * active[..., None]
        return out

    def encode(self, archs) -> np.ndarray:
        return self.encode_genomes(np.stack([self.space.encode(a) for a in archs]))

    def check(self, matrix: np.ndarray) -> np.ndarray:
        """Refuse encodings of the wrong shape with a clear message."""
        matrix = np.asarray(matrix)
        if matrix.ndim == 2:
            matrix = matrix[None]
        if matrix.shape[1:] != self.shape:
            raise ValueError(f"encoding has shape {matrix.shape[1:]}, expected {self.shape} "
                             f"({self.rows} blocks x {self.bits} bits of {SPACE_VERSION})")
        return matrix
