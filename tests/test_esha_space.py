"""The extended search space: MicroViT's ESHA as a second attention type (issue 19).

Table 2's space must not move (its own tests: test_search_space, test_timm_equivalence,
test_supernet); these check what the extension adds, and that it stays opt-in.
"""
import json

import numpy as np
import pytest
import torch

from flows.cli import main as cli_main
from flows.cli import space_holding
from nas_core.block_catalog import BlockCatalog, block_macs, block_params
from nas_core.blocks import build_block
from nas_core.complexity import arch_complexity, count_macs, count_params
from nas_core.encoding import BITS, ESHA_BIT, ArchEncoder
from nas_core.latency.export import export_onnx
from nas_core.search_space import ArchError, SearchSpace, SpaceSpec
from nas_core.subnet import ESHA
from nas_core.supernet import Supernet

TABLE2 = SearchSpace()
EXTENDED = SearchSpace(SpaceSpec.from_params({"attention": ["mhsa", "esha"]}))
ESHA_ARCH = dict(stem_act="R", widths=(24, 40, 96, 176), embed3="DS(2,R)",
                 stages=("U(2,3,R) U(2,3,R)", "U(2,3,R) U(2,3,R)",
                         "U(2,3,R) E(R)+U(2,3,R) M(2,G)+U(2,3,R) U(2,3,R) U(2,3,R) E(G)+U(2,3,R)",
                         "E(R)+U(2,3,R) U(2,3,R) M(3,R)+U(2,3,R) U(2,3,R)"))


def esha_arch(space=EXTENDED):
    return space.from_compact(**ESHA_ARCH)


def test_params_name_the_extended_space_and_table2_stays_the_default():
    assert SpaceSpec.from_params({}) == SpaceSpec() == SpaceSpec.from_params({"attention": ["mhsa"]})
    assert EXTENDED.spec.attention_types == ("mhsa", "esha")
    with pytest.raises(ValueError, match="attention_types"):
        SpaceSpec(attention_types=("esha",))
    assert not any(g.name.endswith(".mhsa.type") for g in TABLE2.genes)
    assert len(EXTENDED.genes) == len(TABLE2.genes) + 15  # a type gene per attention position (9 + 6)


def test_table2_rejects_an_esha_and_its_json_has_no_type():
    with pytest.raises(ArchError, match="mhsa.type"):
        esha_arch(TABLE2)
    s0 = TABLE2.preset("efficientformerv2_s0")
    record = s0.to_dict()  # what the architecture id hashes: no attention type for Table 2
    assert "type" not in record["embed3"]
    assert all("type" not in b["mhsa"] for s in record["stages"] for b in s["blocks"] if "mhsa" in b)
    assert EXTENDED.validate(s0) == s0  # Table 2's architectures are members of the extension


def test_catalog_adds_16_esha_blocks_and_the_encoding_one_bit():
    catalog = BlockCatalog(EXTENDED)
    kinds = {}
    for b in catalog.blocks:
        kinds[b.kind] = kinds.get(b.kind, 0) + 1
    assert catalog.num_blocks == 584 and catalog.num_heads == 4 and kinds["esha"] == 16
    assert BlockCatalog(TABLE2).num_blocks == 568
    assert ArchEncoder(TABLE2).shape == (44, BITS) == (44, 24)
    encoder = ArchEncoder(EXTENDED)
    assert encoder.shape == (44, 25)
    code = encoder.codes[catalog.index["s3/esha/w96/relu"]]
    assert code[ESHA_BIT] == 1 and code[15:18].sum() == 0 and code[2] == 1  # stage 3, no value-ratio bits
    mhsa_code = encoder.codes[catalog.index["s3/mhsa/w96/v2/relu"]]
    assert mhsa_code[ESHA_BIT] == 0


def test_genome_round_trip_json_and_compact():
    arch = esha_arch()
    assert sum(b.mhsa is not None and b.mhsa.type == "esha" for s in arch.stages for b in s.blocks) == 3
    assert "E(R)+U(2,3,R)" in arch.compact()
    assert EXTENDED.decode(EXTENDED.encode(arch)) == arch
    assert EXTENDED.from_json(arch.to_json()) == arch
    catalog = BlockCatalog(EXTENDED)
    ids = catalog.block_ids(arch)
    assert ids.count("s3/esha/w96/relu") == 1 and "s3/esha/w96/gelu" in ids and "s4/esha/w176/relu" in ids
    assert "s3/mhsa/w96/v2/gelu" in ids


def test_sampling_reaches_esha_and_its_value_ratio_is_inactive():
    genomes = EXTENDED.sample_genomes(200, rng=0)
    types = [EXTENDED.gene_index[f"s3.b{j}.mhsa.type"] for j in range(9)]
    assert (genomes[:, types] == 1).any()
    for genome in genomes[:20]:
        arch = EXTENDED.decode(genome)
        assert np.array_equal(EXTENDED.encode(arch), genome)  # canonical: an ESHA's value ratio is gene 0
    assert EXTENDED.size() > TABLE2.size()


def test_fast_counts_equal_exact_counts_of_esha_blocks_and_subnets():
    catalog = BlockCatalog(EXTENDED, resolution=224)
    for b in (b for b in catalog.blocks if b.kind == "esha"):
        module = build_block(b, EXTENDED.spec)
        assert count_params(module) == block_params(b, EXTENDED), b.block_id
        assert count_macs(module, b.input_shape) == block_macs(b, EXTENDED), b.block_id
    arch = esha_arch()
    exact = arch_complexity(arch, resolution=224)
    genome = EXTENDED.encode(arch)[None]
    assert catalog.count_params(genome)[0] == exact["params"]
    assert catalog.count_macs(genome)[0] == exact["macs"]


def test_esha_blocks_follow_the_stage_reduction_and_export(tmp_path):
    catalog = BlockCatalog(EXTENDED, resolution=224)
    s3 = catalog.blocks[catalog.index["s3/esha/w108/gelu"]]
    s4 = catalog.blocks[catalog.index["s4/esha/w248/relu"]]
    m3, m4 = build_block(s3, EXTENDED.spec).eval(), build_block(s4, EXTENDED.spec).eval()
    assert isinstance(m3.token_mixer, ESHA) and m3.token_mixer.k_reduce.conv.stride == (2, 2)
    assert m3.token_mixer.qkvu.conv.groups == 4  # 108 and 140 channels share 4 groups at most
    assert isinstance(m4.token_mixer.k_reduce, torch.nn.Identity)
    assert export_onnx(m3, s3.input_shape, tmp_path / "esha.onnx").stat().st_size > 0


def test_min_table_sum_stays_exact_with_esha_blocks():
    catalog = BlockCatalog(EXTENDED, resolution=224)
    table = np.array([block_params(b, EXTENDED) for b in catalog.blocks], dtype=float)
    value, genome = catalog.min_table_sum(table)
    assert value == catalog.sum_table(table, genome[None])[0]
    table[[i for i, b in enumerate(catalog.blocks) if b.kind == "esha"]] = -1e9  # ESHA everywhere pays
    value, genome = catalog.min_table_sum(table)
    arch = EXTENDED.decode(genome)
    assert all(b.mhsa is not None and b.mhsa.type == "esha" for s in arch.stages[2:] for b in s.blocks)


def test_supernet_holds_esha_weights_and_extracts_them():
    torch.manual_seed(0)
    net = Supernet(EXTENDED, num_classes=10, resolution=64).eval()
    default = Supernet(TABLE2, num_classes=10, resolution=64)
    assert not any(".esha." in name for name in default.state_dict())  # Table 2's supernet is unchanged
    assert any(".esha.by_width.96." in name for name in net.state_dict())
    arch = esha_arch()
    with torch.no_grad():
        for p in net.parameters():  # layer scales start at 1e-5: make the attention visible
            if p.dim() == 1 and p.shape[0] >= 96:
                p.uniform_(0.5, 1.5)
        x = torch.randn(2, 3, 64, 64)
        model = net.extract(arch).eval()
        torch.testing.assert_close(model(x), net(x, arch), rtol=1e-4, atol=1e-5)
        blocks = model.stages[2].blocks
        assert isinstance(blocks[1].token_mixer, ESHA)
        before = net(x, arch)
        blocks[1].token_mixer.proj.conv.weight.mul_(2)  # write a changed subnet back
        net.load_subnet(arch, model)
        after = net(x, arch)
        torch.testing.assert_close(after, model(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(before, after)


def test_the_predictor_reads_the_extended_encoding():
    from nas_core.accuracy_predictor import AccuracyPredictor, PredictorBundle

    encoder = ArchEncoder(EXTENDED)
    bundle = PredictorBundle(AccuracyPredictor(rows=encoder.rows, bits=encoder.bits), encoder)
    archs = [esha_arch(), EXTENDED.preset("efficientformerv2_s0")]
    by_archs = bundle.predict(archs)
    by_genomes = bundle.predict_genomes(np.stack([EXTENDED.encode(a) for a in archs]))
    np.testing.assert_allclose(by_archs, by_genomes, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="25"):
        PredictorBundle(AccuracyPredictor(), encoder)  # a Table 2 predictor (24 bits) refuses it


def test_arch_show_reads_an_esha_architecture_in_the_space_that_holds_it(tmp_path, capsys):
    arch = esha_arch()
    path = tmp_path / "esha.json"
    path.write_text(json.dumps({"arch": arch.to_dict()}))  # as a search result wraps it
    assert space_holding(arch).spec.attention_types == ("mhsa", "esha")
    assert space_holding(TABLE2.preset("efficientformerv2_s0")).spec == TABLE2.spec
    assert cli_main(["arch", "show", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    g = EXTENDED.encode(arch)[None]
    assert shown["params"] == int(BlockCatalog(EXTENDED, 224).count_params(g)[0]) == arch_complexity(arch)["params"]
    assert shown["arch"] == arch.to_dict()
