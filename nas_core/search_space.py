"""The SCAN-Edge search space (paper Table 2) and its architectures.

An architecture is a plain immutable value, :class:`ArchConfig`::

    stem (act)  ->  stage 1 (FFN blocks)  -> embed 1 (conv) -> stage 2 (FFN blocks)
                ->  embed 2 (conv) -> stage 3 ([optional MHSA] + FFN blocks)
                ->  embed 3 (MHSA downsampling + conv) -> stage 4 ([optional MHSA] + FFN blocks)
                ->  head

Stage 1's width is the stem's width (Table 2 has one width for both). A block of stages 3-4
is "an MHSA followed by a FFN" (§4) where the MHSA is optional, so a stage's depth counts its
FFNs and the number and the position of the MHSAs are searched.

Besides the readable form, every architecture has a fixed-length integer *genome*: one
categorical gene per knob and block position (:attr:`SearchSpace.genes`). Genes of blocks
beyond a stage's depth are inactive and canonically 0. The genome is what vectorised code
(latency/params estimation, predictor encoding, evolutionary search) works on, and per-gene
probability tables are the sampling distribution that the search evolves (§5.4).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .presets import PRESETS

SPACE_VERSION = "scan-edge/v1"
FFN_TYPES = ("unified", "fused")
ACTIVATIONS = ("gelu", "relu")
# Token mixers of the attention positions of stages 3-4: EfficientFormerV2's MHSA (Table 2)
# and MicroViT's Efficient Single Head Attention (nas_core/microvit.py), issue 19's extension.
ATTENTION_TYPES = ("mhsa", "esha")


# ESHA's fixed geometry (nas_core/subnet.py's layer; nas_core/microvit.py's [A5]-[A8]).
ESHA_QK_DIM = 16  # MicroViT Table I: "QK (16, 16)"
ESHA_VALUE_RATIO = 0.215  # [A6] SHViT's 1/4.67 of the channels attend
ESHA_GROUPS = 32  # MicroViT Eq. 1 / Table I "Group": the most groups of the projection


def projection_groups(dim: int, out: int, groups: int = ESHA_GROUPS) -> int:
    """The largest group count <= ``groups`` that divides both channel counts (MicroViT's own
    widths take 32; the search space's 108, 120 ... need fewer)."""
    return math.gcd(groups, math.gcd(dim, out))


class ArchError(ValueError):
    """An architecture that is not a member of the search space."""


# --------------------------------------------------------------------------- Table 2 as data
@dataclass(frozen=True)
class StageSpec:
    """The choices of one stage (paper numbering: stage 1..4)."""

    number: int
    reduction: int  # output stride of the stage: 4, 8, 16, 32
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    allows_mhsa: bool


@dataclass(frozen=True)
class SpaceSpec:
    """Every choice of the search space. The defaults are the paper's Table 2."""

    stages: tuple[StageSpec, ...] = (
        StageSpec(1, 4, (24, 28, 32, 36), (2, 3), False),
        StageSpec(2, 8, (40, 48, 56, 64), (2, 3), False),
        StageSpec(3, 16, (96, 108, 120, 132), (6, 7, 8, 9), True),
        StageSpec(4, 32, (176, 200, 224, 248), (4, 5, 6), True),
    )
    ffn_types: tuple[str, ...] = FFN_TYPES
    kernels: tuple[int, ...] = (3, 5)
    expansions: tuple[int, ...] = (2, 3, 4)
    activations: tuple[str, ...] = ACTIVATIONS
    value_ratios: tuple[int, ...] = (2, 3, 4)
    # Fixed MHSA geometry (EfficientFormerV2): Q/K dims never change, so the attention
    # matrices are shared by all subnets; only the value dimension is searched.
    mhsa_heads: int = 8
    mhsa_key_dim: int = 32
    downsample_key_dim: int = 16
    max_blocks: int = 44  # rows of the predictor encoding (§5.2)
    # Which token mixer an attention position may hold. Table 2: MHSA only, and then the
    # space has no attention-type gene, block or encoding bit. ("mhsa", "esha") is the
    # extended space: a type gene per position, ESHA blocks in the catalog, one more bit.
    attention_types: tuple[str, ...] = ("mhsa",)
    # ESHA's spatial reduction of K and V in stages 3 and 4 (14x14 and 7x7 tokens at 224):
    # stage 3 reduces, as the MHSA there attends at stride 2; stage 4 attends every token.
    esha_sr: tuple[int, int] = (2, 1)

    def __post_init__(self):
        unknown = set(self.attention_types) - set(ATTENTION_TYPES)
        if unknown or not self.attention_types or self.attention_types[0] != "mhsa":
            raise ValueError(f"attention_types: {list(self.attention_types)}; allowed: ['mhsa'] or "
                             f"['mhsa', 'esha'] (MHSA first)")

    @property
    def stem_widths(self) -> tuple[int, ...]:
        return self.stages[0].widths

    @property
    def searches_attention_type(self) -> bool:
        return len(self.attention_types) > 1

    def esha_sr_of(self, stage: int) -> int:
        return self.esha_sr[stage - 3]

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> "SpaceSpec":
        """The space a ``search_space:`` params section names: Table 2, or with
        ``attention: [mhsa, esha]`` the extended one."""
        attention = tuple((section or {}).get("attention") or ("mhsa",))
        return cls(attention_types=attention)

    @property
    def label(self) -> str:
        """A short name for messages: "Table 2", "Table 2 + attention mhsa/esha", or custom."""
        if self == SpaceSpec():
            return "Table 2"
        if dataclasses.replace(self, attention_types=("mhsa",)) == SpaceSpec():
            return f"Table 2 + attention {'/'.join(self.attention_types)}"
        return "a custom space"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (stored in checkpoints and predictor bundles)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "SpaceSpec":
        """The spec :meth:`to_dict` wrote (Table 2 when ``values`` is empty: files from before)."""
        if not values:
            return cls()
        values = dict(values)
        stages = tuple(StageSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
                       for s in values.pop("stages"))
        return cls(stages=stages, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def space_identity(spec: SpaceSpec) -> dict[str, Any]:
    """What an artifact's identity says about its space: nothing for Table 2 (so the keys of
    everything made before the extension still hold), the whole spec for any other space."""
    return {} if spec == SpaceSpec() else {"space_spec": spec.to_dict()}


# --------------------------------------------------------------------------- architecture values
@dataclass(frozen=True)
class FFNConfig:
    type: str  # "unified" (1x1, depthwise kxk, 1x1) or "fused" (full kxk conv, 1x1)
    kernel: int
    expansion: int
    act: str

    def compact(self) -> str:
        return f"{self.type[0].upper()}({self.expansion},{self.kernel},{self.act[0].upper()})"


@dataclass(frozen=True)
class AttnConfig:
    """An attention: EfficientFormerV2's MHSA (``type="mhsa"``) or, in the extended space,
    MicroViT's ESHA. An ESHA has no value-ratio knob (its attended channels are a fixed
    fraction); it carries the space's first value ratio, so equal architectures are equal."""

    value_ratio: int
    act: str
    type: str = "mhsa"

    def compact(self, prefix: str = "M") -> str:
        if self.type == "esha":
            return f"E({self.act[0].upper()})"
        return f"{prefix}({self.value_ratio},{self.act[0].upper()})"

    def to_dict(self) -> dict[str, Any]:
        """Table 2's MHSA keeps its two fields (architecture ids do not change); ESHA says its type."""
        out = {"value_ratio": self.value_ratio, "act": self.act}
        return out if self.type == "mhsa" else {**out, "type": self.type}


@dataclass(frozen=True)
class BlockConfig:
    ffn: FFNConfig
    mhsa: AttnConfig | None = None  # only in stages 3-4; runs before the FFN

    def compact(self) -> str:
        return (self.mhsa.compact() + "+" if self.mhsa else "") + self.ffn.compact()


@dataclass(frozen=True)
class StageConfig:
    width: int
    blocks: tuple[BlockConfig, ...]

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class ArchConfig:
    """One architecture of the search space. Build it with :meth:`SearchSpace.validate`-checked
    constructors (``from_dict``, ``from_json``, ``SearchSpace.sample`` ...)."""

    stem_act: str
    stages: tuple[StageConfig, ...]
    embed3_attn: AttnConfig  # the MHSA downsampling layer between stages 3 and 4
    space: str = SPACE_VERSION

    @property
    def stem_width(self) -> int:
        return self.stages[0].width

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stages)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def num_mhsa(self) -> int:
        return sum(b.mhsa is not None for s in self.stages for b in s.blocks)

    # ---- serialisation
    def to_dict(self) -> dict[str, Any]:
        def block(b: BlockConfig) -> dict:
            out = {"ffn": dataclasses.asdict(b.ffn)}
            if b.mhsa is not None:
                out["mhsa"] = b.mhsa.to_dict()
            return out

        return {
            "space": self.space,
            "stem": {"act": self.stem_act},
            "stages": [{"width": s.width, "blocks": [block(b) for b in s.blocks]} for s in self.stages],
            "embed3": self.embed3_attn.to_dict(),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    def to_json_dict(self) -> dict[str, Any]:  # used by nas_core.io's JSON writer
        return self.to_dict()

    @property
    def arch_id(self) -> str:
        """Stable short id (content hash of the canonical JSON) for caches and file names."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    def compact(self) -> str:
        """One line, in the paper-architectures notation (U/F(e,k,a), M(e,a), DS(e,a))."""
        parts = [f"stem{self.stem_width}({self.stem_act[0].upper()})"]
        for number, stage in enumerate(self.stages, start=1):
            prefix = f"s{number}:{stage.width}"
            if number == 4:
                prefix += " " + self.embed3_attn.compact("DS")
            parts.append(prefix + " " + " ".join(b.compact() for b in stage.blocks))
        return " | ".join(parts)

    def table(self) -> str:
        """A readable multi-line printout, one row per layer."""
        rows = [("stem", "1/4", str(self.stem_width), "conv3x3 s2 x2", f"act={self.stem_act}")]
        for number, stage in enumerate(self.stages, start=1):
            res = f"1/{4 * 2 ** (number - 1)}"
            if number > 1:
                kind = "MHSA-DS + conv" if number == 4 else "conv3x3 s2"
                extra = (f"value_ratio={self.embed3_attn.value_ratio} act={self.embed3_attn.act}"
                         if number == 4 else "")
                rows.append((f"embed {number - 1}", res, str(stage.width), kind, extra))
            for j, b in enumerate(stage.blocks):
                if b.mhsa is not None and b.mhsa.type == "esha":
                    rows.append((f"stage {number}.{j}", res, str(stage.width), "ESHA", f"act={b.mhsa.act}"))
                elif b.mhsa is not None:
                    rows.append((f"stage {number}.{j}", res, str(stage.width), "MHSA",
                                 f"value_ratio={b.mhsa.value_ratio} act={b.mhsa.act}"))
                f = b.ffn
                rows.append((f"stage {number}.{j}", res, str(stage.width), f"FFN {f.type}",
                             f"e={f.expansion} k={f.kernel} act={f.act}"))
        header = ("layer", "res", "width", "type", "choices")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] +
                         [fmt.format(*r) for r in rows])


# --------------------------------------------------------------------------- genes
@dataclass(frozen=True)
class Gene:
    """One categorical knob of the genome: its name, its choices, and when it is active."""

    name: str
    choices: tuple
    stage: int | None = None  # stage number the gene belongs to (None: global)
    block: int | None = None  # block position inside the stage (None: stage-level)


def _stage_genes(spec: SpaceSpec, stage: StageSpec) -> list[Gene]:
    n = stage.number
    genes = [Gene(f"s{n}.width", stage.widths, n), Gene(f"s{n}.depth", stage.depths, n)]
    for j in range(max(stage.depths)):
        genes += [
            Gene(f"s{n}.b{j}.ffn.type", spec.ffn_types, n, j),
            Gene(f"s{n}.b{j}.ffn.kernel", spec.kernels, n, j),
            Gene(f"s{n}.b{j}.ffn.expansion", spec.expansions, n, j),
            Gene(f"s{n}.b{j}.ffn.act", spec.activations, n, j),
        ]
        if stage.allows_mhsa:
            genes.append(Gene(f"s{n}.b{j}.mhsa", (False, True), n, j))
            if spec.searches_attention_type:
                genes.append(Gene(f"s{n}.b{j}.mhsa.type", spec.attention_types, n, j))
            genes += [
                Gene(f"s{n}.b{j}.mhsa.value_ratio", spec.value_ratios, n, j),
                Gene(f"s{n}.b{j}.mhsa.act", spec.activations, n, j),
            ]
    return genes


def build_genes(spec: SpaceSpec) -> tuple[Gene, ...]:
    genes = [Gene("stem.act", spec.activations)]
    for stage in spec.stages:
        genes += _stage_genes(spec, stage)
    genes += [Gene("embed3.value_ratio", spec.value_ratios, 4), Gene("embed3.act", spec.activations, 4)]
    return tuple(genes)


# --------------------------------------------------------------------------- the space
class SearchSpace:
    """Table 2: validation, sampling, the smallest/largest subnets, presets and genomes.

    >>> space = SearchSpace()
    >>> arch = space.sample(seed=0)
    >>> space.from_json(arch.to_json()) == arch
    True
    """

    def __init__(self, spec: SpaceSpec | None = None):
        self.spec = spec or SpaceSpec()
        self.genes = build_genes(self.spec)
        self.gene_index = {g.name: i for i, g in enumerate(self.genes)}
        self.num_choices = np.array([len(g.choices) for g in self.genes], dtype=np.int64)
        # Which genes are active given each stage's depth gene: a block gene of position j
        # is active iff j < depth.
        self._block_gene = np.array([g.block if g.block is not None else -1 for g in self.genes])
        self._gene_stage = np.array([g.stage or 0 for g in self.genes])

    version = SPACE_VERSION

    # ---- validation
    def validate(self, arch: ArchConfig) -> ArchConfig:
        """Return ``arch`` if it is a member of this space; raise :class:`ArchError` naming the
        field, the value and the allowed values otherwise."""
        spec = self.spec
        if arch.space != SPACE_VERSION:
            raise ArchError(f"space: architecture is from search space {arch.space!r}, "
                            f"this is {SPACE_VERSION!r}")
        _check("stem.act", arch.stem_act, spec.activations)
        if len(arch.stages) != len(spec.stages):
            raise ArchError(f"stages: {len(arch.stages)} stages given, the space has {len(spec.stages)}")
        for stage_spec, stage in zip(spec.stages, arch.stages):
            n = stage_spec.number
            _check(f"s{n}.width", stage.width, stage_spec.widths)
            _check(f"s{n}.depth", stage.depth, stage_spec.depths)
            for j, block in enumerate(stage.blocks):
                self._validate_block(f"s{n}.b{j}", block, stage_spec)
        _check("embed3.type", arch.embed3_attn.type, ("mhsa",))
        _check("embed3.value_ratio", arch.embed3_attn.value_ratio, spec.value_ratios)
        _check("embed3.act", arch.embed3_attn.act, spec.activations)
        return arch

    def _validate_block(self, where: str, block: BlockConfig, stage_spec: StageSpec) -> None:
        spec = self.spec
        _check(f"{where}.ffn.type", block.ffn.type, spec.ffn_types)
        _check(f"{where}.ffn.kernel", block.ffn.kernel, spec.kernels)
        _check(f"{where}.ffn.expansion", block.ffn.expansion, spec.expansions)
        _check(f"{where}.ffn.act", block.ffn.act, spec.activations)
        if block.mhsa is not None:
            if not stage_spec.allows_mhsa:
                raise ArchError(f"{where}.mhsa: stage {stage_spec.number} has FFN blocks only; "
                                f"MHSA is allowed in stages 3 and 4")
            _check(f"{where}.mhsa.type", block.mhsa.type, spec.attention_types)
            ratios = spec.value_ratios[:1] if block.mhsa.type == "esha" else spec.value_ratios
            _check(f"{where}.mhsa.value_ratio", block.mhsa.value_ratio, ratios)
            _check(f"{where}.mhsa.act", block.mhsa.act, spec.activations)

    # ---- construction from data
    def from_dict(self, data: Mapping[str, Any]) -> ArchConfig:
        try:
            stages = tuple(
                StageConfig(int(s["width"]), tuple(_block_from_dict(b) for b in s["blocks"]))
                for s in data["stages"]
            )
            arch = ArchConfig(
                stem_act=data["stem"]["act"],
                stages=stages,
                embed3_attn=AttnConfig(**data["embed3"]),  # always an MHSA (checked below)
                space=data.get("space", SPACE_VERSION),
            )
        except (KeyError, TypeError) as err:
            raise ArchError(f"malformed architecture: missing or unexpected field {err}") from None
        return self.validate(arch)

    def from_json(self, text: str) -> ArchConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchError(f"not valid architecture JSON: {err}") from None
        return self.from_dict(data)

    def from_compact(self, stem_act: str, widths: Sequence[int], stages: Sequence[str],
                     embed3: str) -> ArchConfig:
        """Build from the notation of ``reference/paper-architectures.md``:
        ``"U(3,3,R) M(2,R)+U(3,3,R)"`` per stage and ``"DS(2,R)"`` for embed 3."""
        stage_cfgs = tuple(
            StageConfig(int(w), tuple(_parse_block(tok) for tok in text.split()))
            for w, text in zip(widths, stages)
        )
        m = re.fullmatch(r"DS\((\d),([GR])\)", embed3.strip())
        if not m:
            raise ArchError(f"embed3: cannot parse {embed3!r}; expected DS(e,a)")
        ds = AttnConfig(int(m.group(1)), _ACT[m.group(2)])
        return self.validate(ArchConfig(_ACT.get(stem_act, stem_act), stage_cfgs, ds))

    # ---- named architectures
    def preset(self, name: str) -> ArchConfig:
        try:
            builder = PRESETS[name]
        except KeyError:
            raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
        return builder(self)

    def preset_names(self) -> list[str]:
        return sorted(PRESETS)

    # ---- the sandwich rule's extremes (§4)
    def smallest(self, ffn_type: str = "unified", act: str = "relu") -> ArchConfig:
        """Minimal width, depth, kernel and expansion; no MHSA in stages 3-4 (only the MHSA
        downsampling, at its smallest value ratio)."""
        spec = self.spec
        ffn = FFNConfig(ffn_type, min(spec.kernels), min(spec.expansions), act)
        stages = tuple(StageConfig(min(s.widths), (BlockConfig(ffn),) * min(s.depths)) for s in spec.stages)
        return self.validate(ArchConfig(act, stages, AttnConfig(min(spec.value_ratios), act)))

    def largest(self, ffn_type: str = "unified", act: str = "gelu") -> ArchConfig:
        """Maximal width, depth, kernel and expansion, with an MHSA before every FFN of stages
        3-4 (at the largest value ratio)."""
        spec = self.spec
        ffn = FFNConfig(ffn_type, max(spec.kernels), max(spec.expansions), act)
        attn = AttnConfig(max(spec.value_ratios), act)
        stages = tuple(
            StageConfig(max(s.widths), (BlockConfig(ffn, attn if s.allows_mhsa else None),) * max(s.depths))
            for s in spec.stages
        )
        return self.validate(ArchConfig(act, stages, attn))

    # ---- sampling
    def uniform_probs(self) -> dict[str, np.ndarray]:
        """The uniform per-gene categorical tables (the search's starting distribution)."""
        return {g.name: np.full(len(g.choices), 1.0 / len(g.choices)) for g in self.genes}

    def sample_genomes(self, n: int, rng: np.random.Generator | int | None = None,
                       probs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """``n`` canonical genomes drawn gene by gene from ``probs`` (uniform by default)."""
        rng = np.random.default_rng(rng)
        genomes = np.empty((n, len(self.genes)), dtype=np.int64)
        for i, gene in enumerate(self.genes):
            p = None if probs is None else np.asarray(probs[gene.name], dtype=float)
            if p is not None and (p.shape != (len(gene.choices),) or abs(p.sum() - 1) > 1e-6 or (p < 0).any()):
                raise ValueError(f"probs[{gene.name!r}] is not a distribution over {gene.choices}: {p}")
            genomes[:, i] = rng.choice(len(gene.choices), size=n, p=p)
        return self.canonicalize(genomes)

    def sample(self, seed: int | np.random.Generator | None = None,
               probs: Mapping[str, np.ndarray] | None = None) -> ArchConfig:
        """A random subnet: uniform over every knob (or drawn from ``probs``)."""
        return self.decode(self.sample_genomes(1, seed, probs)[0])

    # ---- genomes
    def active_mask(self, genomes: np.ndarray) -> np.ndarray:
        """Boolean [N, G]: which genes matter (block genes beyond the stage depth do not)."""
        genomes = np.atleast_2d(genomes)
        mask = np.ones(genomes.shape, dtype=bool)
        for stage in self.spec.stages:
            depth_gene = self.gene_index[f"s{stage.number}.depth"]
            depth = np.asarray(stage.depths)[genomes[:, depth_gene]]
            in_stage = (self._gene_stage == stage.number) & (self._block_gene >= 0)
            mask[:, in_stage] = self._block_gene[in_stage][None, :] < depth[:, None]
            # MHSA knobs matter only where the MHSA is present; the value ratio only for an MHSA.
            for j in range(max(stage.depths)):
                if stage.allows_mhsa:
                    prefix = f"s{stage.number}.b{j}.mhsa"
                    on = genomes[:, self.gene_index[prefix]] == 1
                    is_mhsa = on
                    if self.spec.searches_attention_type:
                        mask[:, self.gene_index[prefix + ".type"]] &= on
                        is_mhsa = on & (genomes[:, self.gene_index[prefix + ".type"]] == 0)
                    mask[:, self.gene_index[prefix + ".value_ratio"]] &= is_mhsa
                    mask[:, self.gene_index[prefix + ".act"]] &= on
        return mask

    def canonicalize(self, genomes: np.ndarray) -> np.ndarray:
        """Zero the inactive genes, so equal architectures have equal genomes."""
        genomes = np.array(genomes, dtype=np.int64, copy=True)
        single = genomes.ndim == 1
        genomes = np.atleast_2d(genomes)
        genomes[~self.active_mask(genomes)] = 0
        return genomes[0] if single else genomes

    def encode(self, arch: ArchConfig) -> np.ndarray:
        """Architecture -> canonical genome (1-D int array)."""
        self.validate(arch)
        values: dict[str, Any] = {"stem.act": arch.stem_act,
                                  "embed3.value_ratio": arch.embed3_attn.value_ratio,
                                  "embed3.act": arch.embed3_attn.act}
        for stage_spec, stage in zip(self.spec.stages, arch.stages):
            n = stage_spec.number
            values[f"s{n}.width"] = stage.width
            values[f"s{n}.depth"] = stage.depth
            for j, block in enumerate(stage.blocks):
                for knob in ("type", "kernel", "expansion", "act"):
                    values[f"s{n}.b{j}.ffn.{knob}"] = getattr(block.ffn, knob)
                if stage_spec.allows_mhsa:
                    values[f"s{n}.b{j}.mhsa"] = block.mhsa is not None
                    if block.mhsa is not None:
                        values[f"s{n}.b{j}.mhsa.value_ratio"] = block.mhsa.value_ratio
                        values[f"s{n}.b{j}.mhsa.act"] = block.mhsa.act
                        if self.spec.searches_attention_type:
                            values[f"s{n}.b{j}.mhsa.type"] = block.mhsa.type
        genome = np.zeros(len(self.genes), dtype=np.int64)
        for name, value in values.items():
            gene = self.genes[self.gene_index[name]]
            genome[self.gene_index[name]] = gene.choices.index(value)
        return genome

    def decode(self, genome: Sequence[int] | np.ndarray) -> ArchConfig:
        """Genome -> architecture (inactive genes are ignored)."""
        genome = np.asarray(genome)
        if genome.shape != (len(self.genes),):
            raise ArchError(f"genome: expected shape ({len(self.genes)},), got {genome.shape}")
        if (genome < 0).any() or (genome >= self.num_choices).any():
            bad = int(np.flatnonzero((genome < 0) | (genome >= self.num_choices))[0])
            raise ArchError(f"genome: gene {self.genes[bad].name} = {genome[bad]} is out of range "
                            f"0..{self.num_choices[bad] - 1}")

        def value(name: str):
            i = self.gene_index[name]
            return self.genes[i].choices[genome[i]]

        stages = []
        for stage_spec in self.spec.stages:
            n = stage_spec.number
            blocks = []
            for j in range(value(f"s{n}.depth")):
                ffn = FFNConfig(*(value(f"s{n}.b{j}.ffn.{k}") for k in ("type", "kernel", "expansion", "act")))
                mhsa = None
                if stage_spec.allows_mhsa and value(f"s{n}.b{j}.mhsa"):
                    kind = value(f"s{n}.b{j}.mhsa.type") if self.spec.searches_attention_type else "mhsa"
                    ratio = self.spec.value_ratios[0] if kind == "esha" else value(f"s{n}.b{j}.mhsa.value_ratio")
                    mhsa = AttnConfig(ratio, value(f"s{n}.b{j}.mhsa.act"), kind)
                blocks.append(BlockConfig(ffn, mhsa))
            stages.append(StageConfig(value(f"s{n}.width"), tuple(blocks)))
        return ArchConfig(value("stem.act"), tuple(stages),
                          AttnConfig(value("embed3.value_ratio"), value("embed3.act")))

    def size(self) -> int:
        """Number of distinct architectures (Suppl. S7)."""
        spec = self.spec
        per_ffn = len(spec.ffn_types) * len(spec.kernels) * len(spec.expansions) * len(spec.activations)
        per_mhsa = 1 + len(spec.value_ratios) * len(spec.activations)  # absent, or one of the choices
        if "esha" in spec.attention_types:
            per_mhsa += len(spec.activations)  # an ESHA: its activation only
        total = len(spec.activations) * len(spec.value_ratios) * len(spec.activations)  # stem act, embed3
        for stage in spec.stages:
            per_block = per_ffn * (per_mhsa if stage.allows_mhsa else 1)
            total *= len(stage.widths) * sum(per_block ** d for d in stage.depths)
        return total


# --------------------------------------------------------------------------- helpers
_ACT = {"G": "gelu", "R": "relu"}
_TYPE = {"U": "unified", "F": "fused"}


def _check(field_name: str, value: Any, allowed: Iterable) -> None:
    allowed = tuple(allowed)
    if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
        raise ArchError(f"{field_name}: {value!r} is not allowed; allowed values: {list(allowed)}")


def _block_from_dict(data: Mapping[str, Any]) -> BlockConfig:
    unknown = set(data) - {"ffn", "mhsa"}
    if unknown:
        raise ArchError(f"block: unknown fields {sorted(unknown)}; a block has 'ffn' and optional 'mhsa'")
    mhsa = data.get("mhsa")
    if mhsa and mhsa.get("type") == "esha":
        mhsa = {"value_ratio": SpaceSpec.value_ratios[0], **mhsa}  # ESHA has no value ratio of its own
    return BlockConfig(FFNConfig(**data["ffn"]), AttnConfig(**mhsa) if mhsa else None)


def _parse_block(token: str) -> BlockConfig:
    m = re.fullmatch(r"(?:M\((\d),([GR])\)\+|E\(([GR])\)\+)?([UF])\((\d),(\d),([GR])\)", token.strip())
    if not m:
        raise ArchError(f"block: cannot parse {token!r}; expected U(e,k,a), F(e,k,a), M(e,a)+U(e,k,a) "
                        f"or E(a)+U(e,k,a)")
    mhsa = None
    if m.group(1):
        mhsa = AttnConfig(int(m.group(1)), _ACT[m.group(2)])
    elif m.group(3):
        mhsa = AttnConfig(SpaceSpec.value_ratios[0], _ACT[m.group(3)], "esha")
    ffn = FFNConfig(_TYPE[m.group(4)], int(m.group(6)), int(m.group(5)), _ACT[m.group(7)])
    return BlockConfig(ffn, mhsa)
