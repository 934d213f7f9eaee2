"""The distinct blocks of the search space: the rows of every per-block table.

§5.3 profiles "all possible blocks in every stage": 568 blocks plus 4 classifier heads (one
per stage-4 width). They come out of Table 2 as

    stem 4 widths x 2 acts = 8           embed 1: 4 x 4 widths = 16     embed 2: 16
    FFN per stage: 4 widths x 2 types x 2 kernels x 3 expansions x 2 acts = 96   (x 4 stages)
    MHSA per stage 3/4: 4 widths x 3 value ratios x 2 acts = 24                  (x 2 stages)
    embed 3 (MHSA downsampling + conv): 4 x 4 widths x 3 ratios x 2 acts = 96
    8 + 16 + 16 + 4*96 + 2*24 + 96 = 568, + 4 heads = 572 rows.

The extended space (``SpaceSpec.attention_types = ("mhsa", "esha")``) adds MicroViT's ESHA
per stage 3/4: 4 widths x 2 acts = 8 (x 2 stages), 584 blocks + 4 heads.

A block's latency, parameter count and MAC count do not depend on where in its stage it sits,
so any additive per-subnet quantity is a sum over the subnet's blocks of a per-block table.
:meth:`BlockCatalog.block_rows` maps a batch of genomes to catalog rows with numpy fancy
indexing only, which is what makes latency/params/MACs estimation vectorised (>100k
architectures per second) - the LUT estimator and the fast counts share it.
:meth:`BlockCatalog.min_table_sum` is the exact minimum of such a sum over the whole space
(the fastest subnet of a LUT, the smallest parameter count): the feasible range of the search.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .search_space import (ESHA_QK_DIM, ESHA_VALUE_RATIO, ArchConfig, AttnConfig, BlockConfig, FFNConfig, SearchSpace,
                           SpaceSpec, StageConfig, StageSpec, projection_groups)

HEAD_CLASSES = 1000  # the LUT's heads are ImageNet classifiers, as on the paper's devices


@dataclass(frozen=True)
class BlockSpec:
    """One distinct block with its real input shape.

    kind: ``stem`` | ``ffn`` | ``embed`` (3x3 s2 conv) | ``mhsa`` | ``esha`` (extended space) |
    ``embed_attn`` (embed 3) | ``head``
    """

    kind: str
    stage: int  # stage whose resolution the block's *output* has (stem: 1, embed k: k+1)
    in_width: int
    out_width: int
    in_resolution: int
    ffn_type: str = ""
    kernel: int = 0
    expansion: int = 0
    value_ratio: int = 0
    act: str = ""

    @property
    def block_id(self) -> str:
        parts = {
            "stem": f"stem/w{self.out_width}/{self.act}",
            "ffn": f"s{self.stage}/ffn/w{self.in_width}/{self.ffn_type}/k{self.kernel}/e{self.expansion}/{self.act}",
            "embed": f"embed{self.stage - 1}/w{self.in_width}-{self.out_width}",
            "mhsa": f"s{self.stage}/mhsa/w{self.in_width}/v{self.value_ratio}/{self.act}",
            "esha": f"s{self.stage}/esha/w{self.in_width}/{self.act}",
            "embed_attn": f"embed3/w{self.in_width}-{self.out_width}/v{self.value_ratio}/{self.act}",
            "head": f"head/w{self.in_width}",
        }
        return parts[self.kind]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_width, self.in_resolution, self.in_resolution)


# --------------------------------------------------------------------------- closed-form counts
def _convnorm_params(cin: int, cout: int, k: int = 1, groups: int = 1) -> int:
    return cout * (cin // groups) * k * k + cout + 2 * cout  # conv weight + bias, BN weight + bias


def _conv_macs(cin: int, cout: int, k: int, out_res: int, groups: int = 1) -> int:
    return cout * (cin // groups) * k * k * out_res * out_res


def _esha_shape(b: BlockSpec, space: SearchSpace) -> tuple[int, int, int, int]:
    """(Q/K dim, attended channels, projection groups, K/V reduction) of an ESHA block."""
    c = b.in_width
    return ESHA_QK_DIM, int(c * ESHA_VALUE_RATIO), projection_groups(c, 2 * ESHA_QK_DIM + c), space.spec.esha_sr_of(b.stage)


def block_params(b: BlockSpec, space: SearchSpace, num_classes: int = HEAD_CLASSES) -> int:
    """Exact parameter count of one block (agrees with counting the built module)."""
    spec = space.spec
    c = b.in_width
    if b.kind == "stem":
        return _convnorm_params(3, b.out_width // 2, 3) + _convnorm_params(b.out_width // 2, b.out_width, 3)
    if b.kind == "ffn":
        h = c * b.expansion
        if b.ffn_type == "unified":
            body = _convnorm_params(c, h) + _convnorm_params(h, h, b.kernel, h) + _convnorm_params(h, c)
        else:
            body = _convnorm_params(c, h, b.kernel) + _convnorm_params(h, c)
        return body + c  # + layer scale
    if b.kind == "embed":
        return _convnorm_params(c, b.out_width, 3)
    if b.kind == "mhsa":
        heads, kh = spec.mhsa_heads, spec.mhsa_heads * spec.mhsa_key_dim
        dh = heads * spec.mhsa_key_dim * b.value_ratio
        res = math.ceil(b.in_resolution / 2) if b.stage == 3 else b.in_resolution
        n = (_convnorm_params(c, c, 3, c) if b.stage == 3 else 0)
        n += 2 * _convnorm_params(c, kh) + _convnorm_params(c, dh) + _convnorm_params(dh, dh, 3, dh)
        n += 2 * (heads * heads + heads) + _convnorm_params(dh, c) + heads * res * res
        return n + c  # + layer scale
    if b.kind == "esha":
        qk, v, groups, sr = _esha_shape(b, space)
        n = 2 * c + _convnorm_params(c, 2 * qk + c, 3, groups) + _convnorm_params(c, c)  # norm, Q/K/V/U, W_o
        if sr > 1:
            n += _convnorm_params(qk, qk, sr, qk) + _convnorm_params(v, v, sr, v)
        return n + c  # + layer scale
    if b.kind == "embed_attn":
        heads, kh = spec.mhsa_heads, spec.mhsa_heads * spec.downsample_key_dim
        dh = heads * spec.downsample_key_dim * b.value_ratio
        n = _convnorm_params(c, b.out_width, 3) + (c * 9 + c) + 2 * _convnorm_params(c, kh)
        n += _convnorm_params(c, dh) + _convnorm_params(dh, dh, 3, dh) + _convnorm_params(dh, b.out_width)
        return n + heads * b.in_resolution ** 2
    if b.kind == "head":
        return 2 * c + 2 * (c * num_classes + num_classes)
    raise ValueError(b.kind)


def block_macs(b: BlockSpec, space: SearchSpace, num_classes: int = HEAD_CLASSES) -> int:
    """Multiply-accumulates of convs, matmuls and linears (BN, activations, softmax and
    resizing are not counted, as ``torch.utils.flop_counter``)."""
    spec = space.spec
    c, r = b.in_width, b.in_resolution
    if b.kind == "stem":
        w = b.out_width
        return _conv_macs(3, w // 2, 3, r // 2) + _conv_macs(w // 2, w, 3, r // 4)
    if b.kind == "ffn":
        h = c * b.expansion
        if b.ffn_type == "unified":
            return _conv_macs(c, h, 1, r) + _conv_macs(h, h, b.kernel, r, h) + _conv_macs(h, c, 1, r)
        return _conv_macs(c, h, b.kernel, r) + _conv_macs(h, c, 1, r)
    if b.kind == "embed":
        return _conv_macs(c, b.out_width, 3, r // 2)
    if b.kind == "mhsa":
        heads, kd = spec.mhsa_heads, spec.mhsa_key_dim
        d = kd * b.value_ratio
        ar = math.ceil(r / 2) if b.stage == 3 else r  # attention resolution
        n = ar * ar
        macs = _conv_macs(c, c, 3, ar, c) if b.stage == 3 else 0
        macs += 2 * _conv_macs(c, heads * kd, 1, ar) + _conv_macs(c, heads * d, 1, ar)
        macs += _conv_macs(heads * d, heads * d, 3, ar, heads * d)
        macs += heads * n * n * kd + heads * n * n * d + 2 * heads * heads * n * n  # q@k, attn@v, talking heads
        return macs + _conv_macs(heads * d, c, 1, r)
    if b.kind == "esha":
        qk, v, groups, sr = _esha_shape(b, space)
        n, nk = r * r, (r // sr) ** 2
        macs = _conv_macs(c, 2 * qk + c, 3, r, groups) + _conv_macs(c, c, 1, r)
        if sr > 1:
            macs += _conv_macs(qk, qk, sr, r // sr, qk) + _conv_macs(v, v, sr, r // sr, v)
        return macs + n * nk * qk + n * nk * v  # Q^T K, V attn^T
    if b.kind == "embed_attn":
        heads, kd = spec.mhsa_heads, spec.downsample_key_dim
        d, r2 = kd * b.value_ratio, math.ceil(r / 2)
        n, n2 = r * r, r2 * r2
        macs = _conv_macs(c, b.out_width, 3, r2) + _conv_macs(c, c, 3, r2, c) + _conv_macs(c, heads * kd, 1, r2)
        macs += _conv_macs(c, heads * kd, 1, r) + _conv_macs(c, heads * d, 1, r)
        macs += _conv_macs(heads * d, heads * d, 3, r2, heads * d)
        macs += heads * n2 * n * kd + heads * n2 * n * d
        return macs + _conv_macs(heads * d, b.out_width, 1, r2)
    if b.kind == "head":
        return 2 * c * num_classes
    raise ValueError(b.kind)


# --------------------------------------------------------------------------- the catalog
class BlockCatalog:
    """Every distinct block at one input resolution, and the genome -> blocks mapping."""

    def __init__(self, space: SearchSpace | None = None, resolution: int = 224):
        self.space = space or SearchSpace()
        self.resolution = resolution
        self.blocks: list[BlockSpec] = []
        self._build()
        self.index = {b.block_id: i for i, b in enumerate(self.blocks)}
        if len(self.index) != len(self.blocks):
            raise AssertionError("duplicate block ids in the catalog")

    # ---- enumeration
    def _add(self, table: np.ndarray, key: tuple, block: BlockSpec) -> None:
        table[key] = len(self.blocks)
        self.blocks.append(block)

    def _build(self) -> None:
        spec, r = self.space.spec, self.resolution
        st = spec.stages
        res = [math.ceil(r / s.reduction) for s in st]
        acts, types, kernels, exps, ratios = (spec.activations, spec.ffn_types, spec.kernels,
                                              spec.expansions, spec.value_ratios)
        self._stem = np.full((len(st[0].widths), len(acts)), -1)
        for (wi, w), (ai, a) in itertools.product(enumerate(st[0].widths), enumerate(acts)):
            self._add(self._stem, (wi, ai), BlockSpec("stem", 1, 3, w, r, act=a))
        self._ffn, self._embed, self._mhsa, self._esha = {}, {}, {}, {}
        for si, stage in enumerate(st):
            n = stage.number
            if n == 4:
                self._embed_attn = np.full((len(st[2].widths), len(stage.widths), len(ratios), len(acts)), -1)
                for (ii, wi), (oi, wo), (vi, v), (ai, a) in itertools.product(
                        enumerate(st[2].widths), enumerate(stage.widths), enumerate(ratios), enumerate(acts)):
                    self._add(self._embed_attn, (ii, oi, vi, ai),
                              BlockSpec("embed_attn", 4, wi, wo, res[2], value_ratio=v, act=a))
            elif n > 1:
                table = self._embed[n] = np.full((len(st[si - 1].widths), len(stage.widths)), -1)
                for (ii, wi), (oi, wo) in itertools.product(enumerate(st[si - 1].widths), enumerate(stage.widths)):
                    self._add(table, (ii, oi), BlockSpec("embed", n, wi, wo, res[si - 1]))
            if stage.allows_mhsa:
                table = self._mhsa[n] = np.full((len(stage.widths), len(ratios), len(acts)), -1)
                for (wi, w), (vi, v), (ai, a) in itertools.product(enumerate(stage.widths), enumerate(ratios),
                                                                    enumerate(acts)):
                    self._add(table, (wi, vi, ai), BlockSpec("mhsa", n, w, w, res[si], value_ratio=v, act=a))
            if stage.allows_mhsa and "esha" in spec.attention_types:
                table = self._esha[n] = np.full((len(stage.widths), len(acts)), -1)
                for (wi, w), (ai, a) in itertools.product(enumerate(stage.widths), enumerate(acts)):
                    self._add(table, (wi, ai), BlockSpec("esha", n, w, w, res[si], value_ratio=ratios[0], act=a))
            table = self._ffn[n] = np.full((len(stage.widths), len(types), len(kernels), len(exps), len(acts)), -1)
            for (wi, w), (ti, t), (ki, k), (ei, e), (ai, a) in itertools.product(
                    enumerate(stage.widths), enumerate(types), enumerate(kernels), enumerate(exps), enumerate(acts)):
                self._add(table, (wi, ti, ki, ei, ai),
                          BlockSpec("ffn", n, w, w, res[si], ffn_type=t, kernel=k, expansion=e, act=a))
        self._head = np.full(len(st[-1].widths), -1)
        for wi, w in enumerate(st[-1].widths):
            self._add(self._head, (wi,), BlockSpec("head", 4, w, HEAD_CLASSES, res[-1]))

    @property
    def num_blocks(self) -> int:
        """Blocks without the classifier heads (568 for Table 2, 584 with ESHA)."""
        return sum(b.kind != "head" for b in self.blocks)

    @property
    def num_heads(self) -> int:
        return sum(b.kind == "head" for b in self.blocks)

    @cached_property
    def max_path_length(self) -> int:
        """Slots of the block path: every block a subnet can have, in execution order."""
        return len(self._slots())

    # ---- genome -> blocks
    def _slots(self) -> list[tuple[str, int, int]]:
        slots = [("stem", 1, 0)]
        for stage in self.space.spec.stages:
            n = stage.number
            if n > 1:
                slots.append(("embed_attn" if n == 4 else "embed", n, 0))
            for j in range(max(stage.depths)):
                if stage.allows_mhsa:
                    slots.append(("mhsa", n, j))
                slots.append(("ffn", n, j))
        slots.append(("head", 4, 0))
        return slots

    def block_rows(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Catalog rows of each genome's blocks in execution order: ``rows`` [N, S] (int) and
        ``active`` [N, S] (bool; inactive slots point at row 0 and must be masked)."""
        g = np.atleast_2d(np.asarray(genomes, dtype=np.int64))
        gi = self.space.gene_index
        col = lambda name: g[:, gi[name]]  # noqa: E731 - a local shorthand
        spec = self.space.spec
        width = {s.number: col(f"s{s.number}.width") for s in spec.stages}
        depth = {s.number: np.asarray(s.depths)[col(f"s{s.number}.depth")] for s in spec.stages}
        rows, active = [], []
        true = np.ones(len(g), dtype=bool)
        for kind, n, j in self._slots():
            if kind == "stem":
                rows.append(self._stem[width[1], col("stem.act")]); active.append(true)
            elif kind == "embed":
                rows.append(self._embed[n][width[n - 1], width[n]]); active.append(true)
            elif kind == "embed_attn":
                rows.append(self._embed_attn[width[3], width[4], col("embed3.value_ratio"), col("embed3.act")])
                active.append(true)
            elif kind == "mhsa":  # the attention position: an MHSA, or an ESHA in the extended space
                p = f"s{n}.b{j}.mhsa"
                row = self._mhsa[n][width[n], col(p + ".value_ratio"), col(p + ".act")]
                if n in self._esha:
                    row = np.where(col(p + ".type") == 1, self._esha[n][width[n], col(p + ".act")], row)
                rows.append(row)
                active.append((j < depth[n]) & (col(p) == 1))
            elif kind == "ffn":
                p = f"s{n}.b{j}.ffn"
                rows.append(self._ffn[n][width[n], col(p + ".type"), col(p + ".kernel"), col(p + ".expansion"),
                                         col(p + ".act")])
                active.append(j < depth[n])
            else:
                rows.append(self._head[width[4]]); active.append(true)
        return np.stack(rows, axis=1), np.stack(active, axis=1)

    def block_ids(self, arch: ArchConfig) -> list[str]:
        rows, active = self.block_rows(self.space.encode(arch)[None])
        return [self.blocks[r].block_id for r in rows[0][active[0]]]

    def sum_table(self, table: np.ndarray, genomes: np.ndarray) -> np.ndarray:
        """Sum a per-block table (one value per catalog row) over each genome's blocks."""
        rows, active = self.block_rows(genomes)
        return np.where(active, np.asarray(table)[rows], 0).sum(axis=1)

    # ---- fast counts
    def params_table(self, num_classes: int = HEAD_CLASSES) -> np.ndarray:
        return np.array([block_params(b, self.space, num_classes) for b in self.blocks], dtype=np.int64)

    def macs_table(self, num_classes: int = HEAD_CLASSES) -> np.ndarray:
        return np.array([block_macs(b, self.space, num_classes) for b in self.blocks], dtype=np.int64)

    def count_params(self, genomes: np.ndarray, num_classes: int = HEAD_CLASSES) -> np.ndarray:
        return self.sum_table(self._cached("params", num_classes), genomes)

    def count_macs(self, genomes: np.ndarray, num_classes: int = HEAD_CLASSES) -> np.ndarray:
        return self.sum_table(self._cached("macs", num_classes), genomes)

    def _cached(self, what: str, num_classes: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_tables", {})
        if (what, num_classes) not in cache:
            cache[(what, num_classes)] = (self.params_table if what == "params" else self.macs_table)(num_classes)
        return cache[(what, num_classes)]

    # ---- the exact minimum of a table sum
    def min_table_sum(self, table: np.ndarray) -> tuple[float, np.ndarray]:
        """The exact minimum over the whole space of a per-block table summed over a
        subnet's blocks (:meth:`sum_table`), and a genome that attains it.

        A subnet's blocks are coupled only through the stage widths. Given the widths, the
        stem, the embeddings and the head each take their cheapest knobs, and each stage
        repeats its cheapest FFN, adds its cheapest MHSA only where that is negative, and
        takes the depth that minimises ``depth * (ffn + mhsa)``. So the minimum is the best
        of these per-width minima over all width combinations (4**4 in Table 2). Exact for
        any table, negative entries included; the minimum of ``-table`` is the maximum.
        """
        table = np.asarray(table, dtype=float)
        if table.shape != (len(self.blocks),):
            raise ValueError(f"per-block table has shape {table.shape}; the catalog has {len(self.blocks)} rows")
        cheapest = _cheapest_per_slot(self.blocks, table)
        best_value, best_arch = math.inf, None
        for widths in itertools.product(*(s.widths for s in self.space.spec.stages)):
            value, arch = _cheapest_arch(self.space.spec, cheapest, widths)
            if value < best_value:
                best_value, best_arch = value, arch
        genome = self.space.encode(self.space.validate(best_arch))
        check = float(self.sum_table(table, genome[None])[0])
        if not math.isclose(check, best_value, rel_tol=1e-9, abs_tol=1e-9):
            raise AssertionError(f"min_table_sum: the argmin genome sums to {check}, expected {best_value}")
        return best_value, genome


Slot = tuple[str, int, int, int]  # (kind, stage, in_width, out_width): where a block can sit


def _cheapest_per_slot(blocks: list[BlockSpec], table: np.ndarray) -> dict[Slot, tuple[float, BlockSpec]]:
    """slot -> (lowest table value of the blocks that fit it, that block)."""
    cheapest: dict[Slot, tuple[float, BlockSpec]] = {}
    for value, block in zip(table, blocks):
        slot = (block.kind, block.stage, block.in_width, block.out_width)
        if slot not in cheapest or value < cheapest[slot][0]:
            cheapest[slot] = (float(value), block)
    return cheapest


def _cheapest_arch(spec: SpaceSpec, cheapest: dict[Slot, tuple[float, BlockSpec]],
                   widths: tuple[int, ...]) -> tuple[float, ArchConfig]:
    """The lowest table sum of the subnets with these stage widths, and one such subnet."""
    total, stem = cheapest[("stem", 1, 3, widths[0])]
    embed3 = None
    for stage, in_width, out_width in zip(spec.stages[1:], widths, widths[1:]):
        kind = "embed_attn" if stage.number == 4 else "embed"  # embed 3 carries an MHSA (the catalog's kinds)
        value, block = cheapest[(kind, stage.number, in_width, out_width)]
        total += value
        if kind == "embed_attn":
            embed3 = block
    total += cheapest[("head", 4, widths[-1], HEAD_CLASSES)][0]
    stages = []
    for stage, width in zip(spec.stages, widths):
        value, config = _cheapest_stage(cheapest, stage, width)
        total += value
        stages.append(config)
    return total, ArchConfig(stem.act, tuple(stages), AttnConfig(embed3.value_ratio, embed3.act))


def _cheapest_stage(cheapest: dict[Slot, tuple[float, BlockSpec]], stage: StageSpec,
                    width: int) -> tuple[float, StageConfig]:
    """The lowest table sum of one stage at ``width``, and that stage."""
    block_value, ffn = cheapest[("ffn", stage.number, width, width)]
    attn = None
    if stage.allows_mhsa:
        options = [cheapest[(kind, stage.number, width, width)] for kind in ("mhsa", "esha")
                   if (kind, stage.number, width, width) in cheapest]
        mhsa_value, mhsa = min(options, key=lambda option: option[0])
        if mhsa_value < 0:  # never with real latencies or counts; keeps the minimum exact for any table
            block_value += mhsa_value
            attn = AttnConfig(mhsa.value_ratio, mhsa.act, mhsa.kind)
    depth = max(stage.depths) if block_value < 0 else min(stage.depths)
    block = BlockConfig(FFNConfig(ffn.ffn_type, ffn.kernel, ffn.expansion, ffn.act), attn)
    return depth * block_value, StageConfig(width, (block,) * depth)
