"""Subnet-accuracy pairs: the seeded plan, real inherited-weight evaluation, resumption, Dask."""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
import yaml

from nas_core.encoding import ArchEncoder
from nas_core.io import read_parquet, read_provenance, torch_save
from nas_core.pairs import (PAIRS_COLUMNS, PairsConfig, ShardSpec, assemble_pairs, evaluate_shard, extreme_genomes,
                            make_plan, prepare_pairs, synthetic_accuracy)
from nas_core.search_space import SPACE_VERSION, SearchSpace

SPACE = SearchSpace()
RESOLUTION, CLASSES, VAL_PER_CLASS = 32, 4, 6


# --------------------------------------------------------------------------- the plan
def test_plan_is_seeded_distinct_split_and_sharded():
    config = PairsConfig(num_subnets=70, shard_size=20, seed=3, val_fraction=0.2, test_fraction=0.1)
    plan = make_plan(config, SPACE)
    again = make_plan(config, SPACE)
    assert list(plan["arch_id"]) == list(again["arch_id"]) and list(plan["split"]) == list(again["split"])
    assert plan["arch_id"].is_unique and len(plan) == 70
    extremes = [SPACE.decode(g).arch_id for g in extreme_genomes(SPACE)]
    assert len(set(extremes)) == 8 and list(plan["arch_id"][:8]) == extremes
    assert plan["arch_id"][0] == SPACE.smallest("unified", "gelu").arch_id
    assert plan["split"].value_counts().to_dict() == {"train": 49, "val": 14, "test": 7}
    assert plan["shard"].tolist() == [i // 20 for i in range(70)]
    other = make_plan(PairsConfig(num_subnets=70, shard_size=20, seed=4), SPACE)
    assert list(other["arch_id"][8:]) != list(plan["arch_id"][8:]), "another seed, other subnets"
    for genome in plan["genome"]:  # canonical genomes: decoding and encoding is the identity
        np.testing.assert_array_equal(SPACE.encode(SPACE.decode(genome)), genome)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown keys \\['shards'\\]"):
        PairsConfig.from_dict({"shards": 3})
    with pytest.raises(ValueError, match="mode must be one of"):
        PairsConfig(mode="fast")
    assert PairsConfig().split_counts() == {"train": 5000, "val": 1000, "test": 1000}  # the paper's 5k/1k + 1k test
    assert PairsConfig.from_dict({"runner": {"runner": "dask"}, "num_subnets": 9}).num_subnets == 9


# --------------------------------------------------------------------------- fakes (module level: Dask pickles them)
def fake_result(arch) -> dict:
    top1 = float(synthetic_accuracy(SPACE, SPACE.encode(arch)[None], noise=0.0)[0])
    return {"top1": top1, "top5": min(1.0, top1 + 0.1), "loss": 1 - top1, "images": 10, "bn_seconds": 0.0,
            "eval_seconds": 0.01}


class CountingEvaluator:
    """Records each evaluated arch_id; raises after ``fail_after`` calls (a killed worker)."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[str] = []
        self.fail_after = fail_after

    def __call__(self, arch) -> dict:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("worker killed")
        self.calls.append(arch.arch_id)
        return fake_result(arch)


def marking_factory(plan_provenance, config, marker_dir: str):
    """An evaluator that notes which process evaluated which subnet."""

    def evaluate(arch):
        with open(os.path.join(marker_dir, f"pid-{os.getpid()}"), "a") as fh:
            fh.write(arch.arch_id + "\n")
        return fake_result(arch)

    return evaluate


@pytest.fixture
def fake_inputs(tmp_path):
    supernet = tmp_path / "supernet.pt"
    supernet.write_bytes(b"not really a supernet")  # the plan hashes it; fakes never load it
    return supernet, tmp_path / "no-dataset"


# --------------------------------------------------------------------------- resumption
def test_killed_collection_resumes_without_losing_or_repeating(fake_inputs, tmp_path):
    supernet, data = fake_inputs
    config = PairsConfig(num_subnets=25, shard_size=10)
    plan = prepare_pairs(config, supernet, data, tmp_path / "shards")
    assert plan.num_shards == 3 and [s.shard for s in plan.pending()] == [0, 1, 2]
    first = CountingEvaluator()
    for spec in plan.shard_specs()[:2]:
        evaluate_shard(spec, lambda p, c: first)
    with pytest.raises(RuntimeError, match="worker killed"):  # dies 2 subnets into the last shard
        evaluate_shard(plan.shard_specs()[2], lambda p, c: CountingEvaluator(fail_after=2))
    assert not ShardSpec(str(plan.path), 2).out_path.exists(), "a killed shard leaves no file"
    assert not list(plan.path.parent.glob(".*.tmp")), "nor a temporary file"
    with pytest.raises(ValueError, match=r"1 of 3 shards are not evaluated yet .*--resume"):
        assemble_pairs(plan.path, tmp_path / "pairs.parquet")

    with pytest.raises(ValueError, match=r"\(2 shards done\); pass --resume"):
        prepare_pairs(config, supernet, data, tmp_path / "shards")
    resumed = prepare_pairs(config, supernet, data, tmp_path / "shards", resume=True)
    assert [s.shard for s in resumed.pending()] == [2]
    second = CountingEvaluator()
    for spec in resumed.shard_specs():  # finished shards are skipped, not re-evaluated
        evaluate_shard(spec, lambda p, c: second)
    frame = assemble_pairs(resumed.path, tmp_path / "pairs.parquet")
    assert len(first.calls) == 20 and len(second.calls) == 5
    assert sorted(first.calls + second.calls) == sorted(frame["arch_id"]) and frame["arch_id"].is_unique
    assert list(frame.columns) == list(PAIRS_COLUMNS) and frame["index"].tolist() == list(range(25))
    assert read_provenance(tmp_path / "pairs.parquet")["key"] == resumed.key


def test_changed_plan_is_refused_until_fresh(fake_inputs, tmp_path):
    supernet, data = fake_inputs
    plan = prepare_pairs(PairsConfig(num_subnets=12, shard_size=6), supernet, data, tmp_path / "shards")
    evaluate_shard(plan.shard_specs()[0], lambda p, c: CountingEvaluator())
    changed = PairsConfig(num_subnets=12, shard_size=6, seed=1)
    with pytest.raises(ValueError, match=r"another plan \(1 shards done; changed: config.seed\); pass --fresh"):
        prepare_pairs(changed, supernet, data, tmp_path / "shards", resume=True)
    # Threads do not change any row: resuming under another value is allowed.
    assert prepare_pairs(PairsConfig(num_subnets=12, shard_size=6, threads=2), supernet, data,
                         tmp_path / "shards", resume=True).key == plan.key
    supernet.write_bytes(b"another checkpoint")
    with pytest.raises(ValueError, match="supernet_sha256"):
        prepare_pairs(PairsConfig(num_subnets=12, shard_size=6), supernet, data, tmp_path / "shards", resume=True)
    fresh = prepare_pairs(changed, supernet, data, tmp_path / "shards", fresh=True)
    assert len(fresh.pending()) == 2


# --------------------------------------------------------------------------- real evaluation
@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A generated 4-class dataset at 32 px and a random-weight supernet in the training stage's format."""
    from nas_core.data.synthetic import generate_classification
    from nas_core.supernet import Supernet
    from nas_core.train import SUPERNET_FORMAT

    root = tmp_path_factory.mktemp("pairs_world")
    generate_classification(root / "data", seed=0, num_classes=CLASSES, train_per_class=8,
                            val_per_class=VAL_PER_CLASS, test_per_class=1, image_size=RESOLUTION, workers=1)
    torch.manual_seed(0)
    net = Supernet(SPACE, num_classes=CLASSES, resolution=RESOLUTION)
    with torch.no_grad():  # layer scales of 1 (not 1e-5) so that subnets differ visibly
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    torch_save(root / "supernet.pt", {"format": SUPERNET_FORMAT, "space_version": SPACE_VERSION,
                                      "space_spec": None, "num_classes": CLASSES, "resolution": RESOLUTION,
                                      "distillation": True, "model": net.state_dict()})
    params = {"pairs": {"num_subnets": 4, "shard_size": 2, "val_fraction": 0.25, "test_fraction": 0.25,
                        "bn_calib_batches": 2, "bn_calib_batch_size": 8, "eval_batch_size": 16},
              "runners": {"runner": "thread", "max_workers": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _collect_args(root):
    return ["collect-pairs", "--params", str(root / "params.yaml"), "--supernet", str(root / "supernet.pt"),
            "--data", str(root / "data"), "--out", str(root / "pairs" / "accuracy_pairs.parquet")]


def test_cli_collects_real_pairs_that_match_an_independent_evaluation(tiny_world, prefect_harness, monkeypatch,
                                                                       capsys):
    from flows.cli import main
    from nas_core.complexity import count_params
    from nas_core.data.folders import ManifestDataset, build_loader, build_transform, load_manifest
    from nas_core.evaluate import calibration_batches, evaluate, recalibrate_bn
    from nas_core.train import load_supernet

    monkeypatch.setenv("SCAN_EDGE_CPU_LOCK", str(tiny_world / "cpu.lock"))  # not other people's latency runs
    assert main(_collect_args(tiny_world)) == 0
    frame = read_parquet(tiny_world / "pairs" / "accuracy_pairs.parquet")
    assert list(frame.columns) == list(PAIRS_COLUMNS) and len(frame) == 4
    assert frame["images"].tolist() == [CLASSES * VAL_PER_CLASS] * 4
    assert frame["top1"].between(0, 1).all() and (frame["top5"] >= frame["top1"]).all()
    assert frame["top1"].nunique() > 1 or frame["loss"].nunique() > 1, "subnets should evaluate differently"
    genomes = np.stack(frame["genome"].to_numpy())
    encoding = ArchEncoder(SPACE).encode_genomes(genomes).reshape(4, -1)
    np.testing.assert_array_equal(np.stack(frame["encoding"].to_numpy()), encoding)

    # Recompute subnet 1 (the smallest, ReLU) independently: extracted copy, BN recalibrated
    # on the same training images, evaluated on the whole val split.
    supernet, _ = load_supernet(tiny_world / "supernet.pt")
    arch = SPACE.from_json(frame["arch_json"][1])
    assert arch == SPACE.smallest("unified", "relu")
    model = supernet.extract(arch)
    manifest = load_manifest(tiny_world / "data")
    calib = calibration_batches(ManifestDataset(manifest, tiny_world / "data", "train",
                                                build_transform(RESOLUTION, False)), 2, 8, seed=0)
    recalibrate_bn(model, None, calib, 2)
    expected = evaluate(model, build_loader(manifest, tiny_world / "data", "val", RESOLUTION, 7, train=False))
    assert frame["top1"][1] == pytest.approx(expected["top1"]) and frame["loss"][1] == pytest.approx(expected["loss"], rel=1e-4)
    assert frame["params"][1] == count_params(model)

    # A second run refuses to drop the finished work; --resume re-assembles without evaluating.
    assert main(_collect_args(tiny_world)) == 2
    assert "pass --resume" in capsys.readouterr().err
    before = (tiny_world / "pairs" / "shards" / "shard-00000.parquet").stat().st_mtime_ns
    assert main(_collect_args(tiny_world) + ["--resume"]) == 0
    assert (tiny_world / "pairs" / "shards" / "shard-00000.parquet").stat().st_mtime_ns == before


# --------------------------------------------------------------------------- Dask
def test_shards_run_in_parallel_dask_workers(fake_inputs, tmp_path, prefect_harness, monkeypatch):
    from tasks.pairs import collect_pairs

    monkeypatch.setenv("SCAN_EDGE_CPU_LOCK", str(tmp_path / "cpu.lock"))
    supernet, data = fake_inputs
    markers = tmp_path / "markers"
    markers.mkdir()
    params = {"pairs": {"num_subnets": 24, "shard_size": 3},
              "runners": {"runner": "dask", "n_workers": 2, "threads_per_worker": 1}}
    out = collect_pairs(params, supernet=supernet, data_root=data, out=tmp_path / "pairs.parquet",
                        evaluator_factory=functools.partial(marking_factory, marker_dir=str(markers)),
                        log=lambda _: None)
    frame = read_parquet(out)
    assert len(frame) == 24 and frame["arch_id"].is_unique
    evaluated = {p.name: p.read_text().split() for p in markers.iterdir()}
    assert f"pid-{os.getpid()}" not in evaluated, "shards should run in Dask worker processes"
    assert sorted(sum(evaluated.values(), [])) == sorted(frame["arch_id"]), "each subnet evaluated exactly once"
    np.testing.assert_allclose(frame["top1"], synthetic_accuracy(SPACE, np.stack(frame["genome"].to_numpy()), noise=0))


# --------------------------------------------------------------------------- devices and streaming
def test_streamed_and_cached_evaluation_agree(tiny_world):
    """The evaluation images streamed through DataLoader workers (what ImageNet needs: they do
    not fit a memory budget) give the same pairs as the cached tensors; the evaluator, its
    BN-calibration batches and its cached images live on the requested device."""
    from nas_core.pairs import PairsConfig, SubnetEvaluator, cached_tensor_bytes

    base = dict(bn_calib_batches=2, bn_calib_batch_size=8, eval_batch_size=5, device="cpu")
    cached = SubnetEvaluator.from_files(tiny_world / "supernet.pt", tiny_world / "data", PairsConfig(**base))
    over_budget = PairsConfig(**base, cache_budget_mb=0.5 * cached_tensor_bytes(CLASSES * VAL_PER_CLASS, RESOLUTION)
                              / 2**20, num_workers=1)
    streamed = SubnetEvaluator.from_files(tiny_world / "supernet.pt", tiny_world / "data", over_budget)
    assert isinstance(cached.eval_batches, list) and cached.eval_batches[0][0].device.type == "cpu"
    assert isinstance(streamed.eval_batches, torch.utils.data.DataLoader)
    assert streamed.eval_batches.num_workers == 1 and streamed.eval_batches.persistent_workers
    assert cached.device.type == "cpu" and all(b.device.type == "cpu" for b in cached.calib_batches)
    for arch in (SPACE.smallest(), SPACE.largest()):
        a, b = cached(arch), streamed(arch)
        assert (a["top1"], a["top5"], a["images"]) == (b["top1"], b["top5"], b["images"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_pairs_device_must_exist():
    from nas_core.pairs import evaluation_device

    assert evaluation_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert evaluation_device(None).type == "cpu"
        with pytest.raises(ValueError, match="pairs.device is 'cuda:1' but torch sees no CUDA device"):
            evaluation_device("cuda:1")
