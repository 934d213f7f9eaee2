"""The search space reaches every stage from params (issue 19): ``search_space.attention``.

Each stage's ``nas_core`` entry is replaced by a recorder: what is checked is the space the
stage hands over (Table 2 by default; the extended space with ``[mhsa, esha]``), and that the
key is part of each affected stage's identity. The library's own behaviour in the extended
space is tests/test_esha_space.py's.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from nas_core.block_catalog import BlockCatalog
from nas_core.encoding import ArchEncoder
from nas_core.layout import Layout
from nas_core.params import load_params
from nas_core.search_space import SearchSpace, SpaceSpec
from tasks.stages import controls, downstream, latency, registry, report, search, space, training
from tasks.stages.runtimes import device_profile

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT = load_params(PROJECT / "params.yaml")
EXTENDED = copy.deepcopy(DEFAULT)
EXTENDED["search_space"]["attention"] = ["mhsa", "esha"]
DEVICE = "ort_cpu_fp32"
# Every stage that builds or reads architectures of the space.
SPACE_STAGES = ("supernet", "pairs", "predictor", "lut", "calibration", "search", "controls", "finetune", "report")


def _blocks_and_bits(space: SearchSpace) -> tuple[int, int]:
    catalog = BlockCatalog(space)
    return catalog.num_blocks + catalog.num_heads, ArchEncoder(space).shape[1]


def test_the_helper_gives_table2_by_default_and_the_extension_when_named():
    assert _blocks_and_bits(space.search_space(DEFAULT)) == (568 + 4, 24)
    assert space.search_space({}).spec == SpaceSpec()  # no search_space section at all: Table 2
    blocks, bits = _blocks_and_bits(space.search_space(EXTENDED))
    assert blocks > 572 and bits == 25
    assert space.space_sections(EXTENDED) == {"search_space": {"attention": ["mhsa", "esha"]}}


@pytest.mark.parametrize("stage", SPACE_STAGES)
def test_the_space_key_is_part_of_each_stage_identity(stage):
    sections = registry.STAGES[stage].sections
    assert space.SPACE_KEY in sections or "search_space" in sections
    options = {"device": DEVICE} if stage in ("lut", "calibration") else {}
    assert registry.params_for(stage, DEFAULT, options) != registry.params_for(stage, EXTENDED, options)


class Recorder:
    """Stands in for a ``nas_core`` entry point; keeps the ``space`` it was given."""

    def __init__(self, result=None):
        self.space, self.result = None, result

    def __call__(self, *args, **kwargs):
        self.space = kwargs.get("space")
        return self.result


def _record(monkeypatch, target, name: str, result=None) -> Recorder:
    recorder = Recorder(result)
    monkeypatch.setattr(target, name, recorder)
    return recorder


def _stage_calls(monkeypatch, tmp_path: Path):
    """(stage, call, recorder): each stage's work called with params, its nas_core entry recorded."""
    layout = Layout(tmp_path)
    pairs = tmp_path / "pairs.parquet"
    pairs.write_bytes(b"")
    profile = device_profile(DEFAULT, DEVICE)
    paths = layout.lut_paths(DEVICE)
    calls = [
        ("supernet", lambda p: training.run_supernet(p, tmp_path, tmp_path / "supernet"),
         _record(monkeypatch, training, "train_supernet")),
        ("predictor", lambda p: training.run_predictor(p, pairs, tmp_path / "predictor"),
         _record(monkeypatch, training.predictor_training, "fit_and_write", ({}, {}))),
        ("lut", lambda p: latency.run_lut(p, profile, paths), _record(monkeypatch, latency, "build_lut")),
        ("calibration", lambda p: latency.run_calibration(p, profile, paths),
         _record(monkeypatch, latency, "calibrate")),
        ("search", lambda p: search.search_setup(p, [DEVICE], predictor=tmp_path, lut_dir=tmp_path, out_dir=tmp_path),
         _record(monkeypatch, search, "load_setup")),
        ("finetune", lambda p: downstream.run_finetune(p, "efficientformerv2_s0", data=tmp_path, supernet=None,
                                                       out_root=tmp_path / "finetune"),
         _record(monkeypatch, downstream.finetuning, "finetune")),
        ("report", lambda p: report.stage_report(p, tmp_path),
         _record(monkeypatch, report, "build_report", {"readme": ""})),
    ]
    return calls


@pytest.mark.parametrize("params, blocks, bits", [(DEFAULT, 572, 24), (EXTENDED, 588, 25)],
                         ids=["default", "extended"])
def test_each_stage_hands_its_nas_core_entry_the_params_space(monkeypatch, tmp_path, params, blocks, bits):
    for stage, call, recorder in _stage_calls(monkeypatch, tmp_path):
        call(params)
        assert recorder.space is not None, stage
        assert _blocks_and_bits(recorder.space) == (blocks, bits), stage


def test_controls_search_in_the_params_space():
    # the controls draw, decode and score in the search's set-up (search_setup, tested above)
    assert controls.search_setup is search.search_setup


def test_pairs_stage_plans_in_the_params_space(monkeypatch, tmp_path):
    layout = Layout(tmp_path)
    layout.supernet.parent.mkdir(parents=True)
    layout.supernet.write_bytes(b"weights")
    recorder = _record(monkeypatch, training, "collect_pairs", tmp_path / "pairs.parquet")
    training.stage_pairs(EXTENDED, tmp_path)
    assert _blocks_and_bits(recorder.space)[1] == 25


def test_torchrun_ranks_get_the_space(monkeypatch, tmp_path):
    layout = Layout(tmp_path)
    layout.manifest.parent.mkdir(parents=True)
    layout.manifest.write_bytes(b"manifest")
    sent = {}
    monkeypatch.setattr(training, "_torchrun", lambda nproc, command, sections, layout: sent.update(sections))
    params = copy.deepcopy(EXTENDED)
    params["pipeline"]["torchrun"] = {"nproc_per_node": 2}
    training.stage_supernet(params, tmp_path)
    assert sent["search_space"] == {"attention": ["mhsa", "esha"]}
    assert space.search_space(sent).spec.searches_attention_type


# --------------------------------------------------------------------------- what carries the space between stages
def test_a_pairs_plan_records_its_space_and_its_shards_decode_in_it(tmp_path):
    from nas_core.pairs import PairsConfig, evaluate_shard, plan_identity, prepare_pairs

    supernet = tmp_path / "supernet.pt"
    supernet.write_bytes(b"stand-in")  # hashed, never loaded (the evaluator is a fake)
    config = PairsConfig(num_subnets=6, shard_size=6)
    extended = space.search_space(EXTENDED)
    table2_key = plan_identity(config, supernet, tmp_path)["key"]
    assert plan_identity(config, supernet, tmp_path, SearchSpace())["key"] == table2_key  # Table 2's keys hold
    assert plan_identity(config, supernet, tmp_path, extended)["key"] != table2_key
    plan = prepare_pairs(config, supernet, tmp_path, tmp_path / "shards", space=extended)
    seen = []

    def evaluator(arch):
        seen.append(arch)
        return {"top1": 0.5, "top5": 0.9, "loss": 1.0, "images": 1, "bn_seconds": 0.0, "eval_seconds": 0.0}

    from nas_core.io import read_parquet

    shard = read_parquet(evaluate_shard(plan.shard_specs()[0], lambda provenance, cfg: evaluator))
    assert len(shard["genome"].iloc[0]) == len(extended.genes)
    assert len(shard["encoding"].iloc[0]) == 44 * 25
    assert {extended.validate(a).arch_id for a in seen} == set(shard["arch_id"])


def test_a_predictor_bundle_keeps_its_space_and_refuses_another(tmp_path):
    from nas_core.accuracy_predictor import AccuracyPredictor, PredictorBundle

    extended = space.search_space(EXTENDED)
    encoder = ArchEncoder(extended)
    path = PredictorBundle(AccuracyPredictor(rows=encoder.rows, bits=encoder.bits), encoder).save(
        tmp_path / "predictor.pt")
    assert PredictorBundle.load(path).encoder.space.spec == extended.spec
    assert PredictorBundle.load(path, extended).encoder.shape == (44, 25)
    with pytest.raises(ValueError, match="another search space"):
        PredictorBundle.load(path, SearchSpace())


def test_the_report_counts_the_eshas_a_search_chose_in_the_extended_space(tmp_path):
    from nas_core.io import write_json
    from nas_core.report import Sources, esha_count, table4_searches

    extended = space.search_space(EXTENDED)
    genomes = extended.sample_genomes(50, rng=1)
    archs = [extended.decode(g) for g in genomes]
    for arch in archs:  # the compact form's count is the architecture's
        eshas = sum(b.mhsa is not None and b.mhsa.type == "esha" for s in arch.stages for b in s.blocks)
        assert esha_count(arch.compact()) == eshas
    chosen = max(archs, key=lambda a: esha_count(a.compact()))
    layout = Layout(tmp_path)
    write_json(layout.search_summary("dev@1.0x"), {"compact": chosen.compact(), "targets_ms": {"dev": 5.0}})
    row = table4_searches(layout, ["dev@1.0x"], Sources(tmp_path), extended).iloc[0]
    assert row["esha"] == esha_count(chosen.compact()) > 0
    assert "esha" not in table4_searches(layout, ["dev@1.0x"], Sources(tmp_path)).columns  # Table 2: unchanged
