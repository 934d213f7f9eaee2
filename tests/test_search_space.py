import json

import numpy as np
import pytest

from nas_core.block_catalog import BlockCatalog, block_macs, block_params
from nas_core.blocks import build_block
from nas_core.complexity import arch_complexity, count_macs, count_params
from nas_core.encoding import ArchEncoder
from nas_core.search_space import ArchError, SearchSpace
from tests._archs import covering_archs

SPACE = SearchSpace()


def test_catalog_has_568_blocks_and_4_heads():
    catalog = BlockCatalog(SPACE)
    assert catalog.num_blocks == 568
    assert catalog.num_heads == 4
    kinds = {}
    for b in catalog.blocks:
        kinds[b.kind] = kinds.get(b.kind, 0) + 1
    assert kinds == {"stem": 8, "ffn": 384, "embed": 32, "mhsa": 48, "embed_attn": 96, "head": 4}


def test_block_input_shapes_follow_the_resolution():
    catalog = BlockCatalog(SPACE, resolution=224)
    by_id = {b.block_id: b for b in catalog.blocks}
    assert by_id["stem/w32/gelu"].input_shape == (1, 3, 224, 224)
    assert by_id["s1/ffn/w32/unified/k3/e4/gelu"].input_shape == (1, 32, 56, 56)
    assert by_id["embed3/w96-176/v4/gelu"].input_shape == (1, 96, 14, 14)
    assert by_id["s4/mhsa/w176/v4/gelu"].input_shape == (1, 176, 7, 7)
    assert by_id["head/w248"].input_shape == (1, 248, 7, 7)


def test_fast_counts_equal_exact_counts_of_built_blocks():
    catalog = BlockCatalog(SPACE, resolution=64)
    for b in catalog.blocks[::11]:  # every kind is covered at this stride
        module = build_block(b)
        assert count_params(module) == block_params(b, SPACE), b.block_id
        assert count_macs(module, b.input_shape) == block_macs(b, SPACE), b.block_id


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_counts_equal_exact_counts_of_whole_subnets(seed):
    arch = SPACE.sample(seed)
    catalog = BlockCatalog(SPACE, resolution=96)
    genome = SPACE.encode(arch)[None]
    exact = arch_complexity(arch, resolution=96, num_classes=10)
    assert catalog.count_params(genome, num_classes=10)[0] == exact["params"]
    assert catalog.count_macs(genome, num_classes=10)[0] == exact["macs"]


def test_efficientformerv2_s0_counts():
    arch = SPACE.preset("efficientformerv2_s0")
    exact = arch_complexity(arch)
    assert exact["params"] == 3_600_256
    assert abs(exact["macs"] - 395.9e6) < 0.1e6  # timm's flop counter: 791.8 MFLOP


# The paper's Table 3/4 params (M) and "FLOPS" (M, multiply-adds) of its searched models.
PAPER = {"cortex@95ms": (4.6, 441.3), "cortex@150ms": (9.7, 790.8), "cortex@150ms_5M": (5.0, None),
         "nano_trt@20ms": (13.5, 1437.4), "nano_trt@20ms_5M": (5.0, None), "nano_trt@13ms": (7.9, 806.4)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_presets_match_the_papers_counts(name):
    arch = SPACE.preset(name)
    genome = SPACE.encode(arch)[None]
    catalog = BlockCatalog(SPACE)
    params_m = catalog.count_params(genome)[0] / 1e6
    paper_params, paper_macs = PAPER[name]
    assert abs(params_m - paper_params) / paper_params < 0.035
    if paper_macs:
        # The paper counts ~1.8% more than a multiply-add counter for S0 too (402.9 vs 395.9).
        assert abs(catalog.count_macs(genome)[0] / 1e6 - paper_macs) / paper_macs < 0.04


def test_all_presets_valid_and_distinct():
    names = SPACE.preset_names()
    assert len(names) == 7
    ids = {SPACE.preset(n).arch_id for n in names}
    assert len(ids) == 7
    with pytest.raises(KeyError, match="known presets"):
        SPACE.preset("mobilenet")


def test_json_round_trip_and_stable_id():
    for seed in range(20):
        arch = SPACE.sample(seed)
        again = SPACE.from_json(arch.to_json())
        assert again == arch and again.arch_id == arch.arch_id
    # the id is a content hash: equal archs from different routes share it
    s0 = SPACE.preset("efficientformerv2_s0")
    assert SPACE.decode(SPACE.encode(s0)).arch_id == s0.arch_id
    assert s0.arch_id != SPACE.preset("cortex@95ms").arch_id


def test_sampling_is_deterministic_and_varied():
    assert SPACE.sample(7) == SPACE.sample(7)
    assert len({SPACE.sample(s).arch_id for s in range(50)}) == 50
    genomes = SPACE.sample_genomes(4000, 0)
    active = SPACE.active_mask(genomes)
    for i, gene in enumerate(SPACE.genes[:30]):
        counts = genomes[active[:, i], i]  # inactive genes are canonically 0
        freq = np.bincount(counts, minlength=len(gene.choices)) / len(counts)
        assert np.allclose(freq, 1 / len(gene.choices), atol=0.04), gene.name


def test_sampling_from_probability_tables():
    probs = SPACE.uniform_probs()
    probs["stem.act"] = np.array([0.0, 1.0])
    probs["s3.depth"] = np.array([0.0, 0.0, 0.0, 1.0])
    archs = [SPACE.sample(s, probs) for s in range(20)]
    assert all(a.stem_act == "relu" and a.depths[2] == 9 for a in archs)
    probs["s3.depth"] = np.array([0.5, 0.6, 0.0, 0.0])
    with pytest.raises(ValueError, match="s3.depth"):
        SPACE.sample(0, probs)


def test_genome_round_trip_and_canonical_form():
    genomes = SPACE.sample_genomes(300, 3)
    for g in genomes:
        assert np.array_equal(SPACE.encode(SPACE.decode(g)), g)
    noisy = genomes.copy()
    inactive = ~SPACE.active_mask(genomes)
    noisy[inactive] = (noisy[inactive] + 1) % SPACE.num_choices[np.nonzero(inactive)[1]]
    assert [SPACE.decode(g) for g in noisy[:20]] == [SPACE.decode(g) for g in genomes[:20]]
    assert np.array_equal(SPACE.canonicalize(noisy), genomes)


def test_smallest_and_largest_follow_section_4():
    small, large = SPACE.smallest(), SPACE.largest("fused")
    assert small.widths == (24, 40, 96, 176) and small.depths == (2, 2, 6, 4)
    assert small.num_mhsa == 0 and small.embed3_attn.value_ratio == 2
    assert all(b.ffn.kernel == 3 and b.ffn.expansion == 2 for s in small.stages for b in s.blocks)
    assert large.widths == (36, 64, 132, 248) and large.depths == (3, 3, 9, 6)
    assert large.num_mhsa == 15  # an MHSA before every FFN of stages 3-4
    assert all(b.ffn.type == "fused" and b.ffn.kernel == 5 and b.ffn.expansion == 4
               for s in large.stages for b in s.blocks)
    catalog = BlockCatalog(SPACE)
    params = catalog.count_params(SPACE.sample_genomes(2000, 5))
    assert catalog.count_params(SPACE.encode(small)[None])[0] <= params.min()
    assert catalog.count_params(SPACE.encode(SPACE.largest("fused"))[None])[0] >= params.max()


@pytest.mark.parametrize("mutate, field, value", [
    (lambda d: d["stages"][1].update(width=50), "s2.width", "50"),
    (lambda d: d["stages"][2]["blocks"].pop(), "s3.depth", "5"),
    (lambda d: d["stages"][0]["blocks"][0].update(mhsa={"value_ratio": 2, "act": "gelu"}), "s1.b0.mhsa", "stage 1"),
    (lambda d: d["stages"][3]["blocks"][1]["ffn"].update(kernel=7), "s4.b1.ffn.kernel", "7"),
    (lambda d: d["stages"][2]["blocks"][0]["ffn"].update(type="dense"), "s3.b0.ffn.type", "dense"),
    (lambda d: d["stages"][3]["blocks"][0].update(mhsa={"value_ratio": 5, "act": "gelu"}),
     "s4.b0.mhsa.value_ratio", "5"),
    (lambda d: d["stem"].update(act="swish"), "stem.act", "swish"),
    (lambda d: d["embed3"].update(value_ratio=1), "embed3.value_ratio", "1"),
    (lambda d: d.update(space="scan-edge/v0"), "space", "scan-edge/v0"),
])
def test_invalid_architectures_name_field_value_and_allowed(mutate, field, value):
    data = SPACE.preset("efficientformerv2_s0").to_dict()
    data = json.loads(json.dumps(data))
    mutate(data)
    with pytest.raises(ArchError) as err:
        SPACE.from_dict(data)
    message = str(err.value)
    assert message.startswith(field) and value in message


def test_malformed_json_is_refused_clearly():
    with pytest.raises(ArchError, match="not valid architecture JSON"):
        SPACE.from_json("{")
    with pytest.raises(ArchError, match="missing or unexpected field"):
        SPACE.from_dict({"stages": []})


def _knob(gene) -> str:
    """'s3.b4.ffn.kernel' -> 's3.ffn.kernel': the knob, whatever the block position."""
    parts = gene.name.split(".")
    return ".".join([parts[0], *parts[2:]]) if gene.block is not None else gene.name


def test_covering_archs_cover_every_choice():
    used: dict[str, set] = {}
    for arch in covering_archs(SPACE):
        g = SPACE.encode(arch)
        mask = SPACE.active_mask(g[None])[0]
        for gene, value, on in zip(SPACE.genes, g, mask):
            if on:
                used.setdefault(_knob(gene), set()).add(gene.choices[value])
    for gene in SPACE.genes:
        assert used[_knob(gene)] == set(gene.choices), _knob(gene)


def test_encoding_shape_uniqueness_and_refusal():
    encoder = ArchEncoder(SPACE)
    assert len({c.tobytes() for c in encoder.codes}) == 572  # every block has its own code
    matrices = encoder.encode_genomes(SPACE.sample_genomes(100, 0))
    assert matrices.shape == (100, 44, 24)
    s0 = encoder.encode([SPACE.preset("efficientformerv2_s0")])[0]
    assert int(s0.any(axis=1).sum()) == 1 + 2 + 1 + 2 + 1 + 6 + 2 + 1 + 4 + 2 + 1  # blocks incl. 4 MHSAs, head
    assert np.all(s0[:, :4].sum(axis=1) <= 2)
    with pytest.raises(ValueError, match="expected \\(44, 24\\)"):
        encoder.check(np.zeros((3, 40, 24)))
    with pytest.raises(ValueError, match="genes"):
        encoder.encode_genomes(np.zeros((2, 17), dtype=int))


def test_search_space_size_is_astronomical():
    assert SPACE.size() > 1e40
