"""The benchmark scripts' own logic (their figures come from real runs, see benchmarks/README.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compare_versions as cv  # noqa: E402
import supernet_vs_standalone as svs  # noqa: E402

from nas_core.search_space import SearchSpace  # noqa: E402


def _rows(inherited_loss, standalone_loss, params, roles=None):
    space = SearchSpace()
    archs = [space.sample(seed) for seed in range(len(params))]
    roles = roles or ["random"] * len(params)
    return [{"role": role, "arch_id": arch.arch_id, "arch": arch.to_dict(), "params": p, "macs": 10 * p,
             "inherited": {"top1": 1 - li, "loss": li},
             "standalone_runs": {"0": {"top1": 1 - ls, "top5": 1.0, "loss": ls}}}
            for role, arch, li, ls, p in zip(roles, archs, inherited_loss, standalone_loss, params)]


def test_summary_compares_the_two_rankings_and_each_with_size():
    params = [1, 2, 3, 4, 5, 6]
    inherited = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]      # lower loss with size: -loss rises with params
    standalone = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]     # the opposite ranking
    s = svs.summarize(_rows(inherited, standalone, params))
    assert s["subnets"] == 6
    assert s["spearman_neg_loss"] == pytest.approx(-1.0) and s["kendall_neg_loss"] == pytest.approx(-1.0)
    assert s["inherited_neg_loss_vs_params"] == pytest.approx(1.0)
    assert s["standalone_neg_loss_vs_params"] == pytest.approx(-1.0)
    assert s["standalone_top1_vs_macs"] == pytest.approx(-1.0)


def test_summary_counts_only_finished_standalone_runs_and_reports_the_extremes():
    rows = _rows([0.9, 0.7, 0.8, 0.6], [0.5, 0.3, 0.4, 0.2], [1, 3, 2, 4],
                 roles=["smallest_unified", "largest_unified", "random", "random"])
    rows.append({**rows[-1], "standalone_runs": {}})  # still to train: left out
    s = svs.summarize(rows)
    assert s["subnets"] == 4
    assert s["spearman_top1"] == pytest.approx(1.0)
    assert s["extremes"]["largest_unified"]["standalone_loss"] == pytest.approx(0.3)
    assert set(s["extremes"]) == {"smallest_unified", "largest_unified"}


def test_standalone_score_is_the_mean_over_seeds_and_seeds_give_a_reliability():
    rows = _rows([0.9, 0.8, 0.7, 0.6], [0.5, 0.3, 0.4, 0.2], [1, 2, 3, 4])
    second = [0.1, 0.2, 0.32, 0.41]                   # seed 1 ranks the subnets in reverse
    for row, loss in zip(rows, second):
        row["standalone_runs"]["1"] = {"top1": 1 - loss, "top5": 1.0, "loss": loss}
    s = svs.summarize(rows)
    assert s["standalone_reliability"]["neg_loss"] == pytest.approx(-0.8)   # ranks 2,4,3,1 vs 4,3,2,1
    assert s["standalone_reliability"]["subnets"] == 4
    assert s["extremes"] == {}
    # mean losses 0.3, 0.25, 0.36, 0.305: -loss ranks 3, 4, 1, 2 against the inherited 1, 2, 3, 4
    assert s["spearman_neg_loss"] == pytest.approx(-0.6)


def test_standalone_recipe_is_the_supernets_budget_without_workers():
    supernet_config = {"resolution": 64, "epochs": 6, "steps_per_epoch": 25, "batch_size": 32, "lr": 0.004,
                       "num_random_subnets": 2, "num_workers": 1, "ffn_drop_path": 0.1, "seed": 3}
    recipe = svs.standalone_recipe(supernet_config)
    assert {k: recipe[k] for k in ("resolution", "epochs", "steps_per_epoch", "batch_size", "lr", "seed")} == {
        "resolution": 64, "epochs": 6, "steps_per_epoch": 25, "batch_size": 32, "lr": 0.004, "seed": 3}
    assert recipe["num_workers"] == 0 and "num_random_subnets" not in recipe and "ffn_drop_path" not in recipe
    from nas_core.finetune import FinetuneConfig
    FinetuneConfig(**recipe)                          # every key is a fine-tuning field


def test_sampled_subnets_start_with_the_four_extremes_and_are_seeded():
    space = SearchSpace()
    a, b = svs.sample_archs(space, 3, seed=0), svs.sample_archs(space, 3, seed=0)
    assert [role for role, _ in a] == ["smallest_unified", "smallest_fused", "largest_unified", "largest_fused",
                                       "random", "random", "random"]
    assert [x.arch_id for _, x in a] == [x.arch_id for _, x in b]
    assert a[3][1] == space.largest("fused") and np.all(space.encode(a[0][1]) == space.encode(space.smallest()))


def test_resume_keeps_finished_runs_and_refuses_to_replace_another_run(tmp_path):
    from nas_core.io import write_json

    out = tmp_path / "ranking.json"
    identity = {"supernet": "a.pt", "dataset": "d", "seed": 0, "recipe": {"lr": 0.004}}
    rows = _rows([0.9, 0.8], [0.5, 0.4], [1, 2])
    write_json(out, {**identity, "subnets": rows})
    assert svs.resumable_rows(str(out), identity, 2) == rows
    with pytest.raises(SystemExit, match="different recipe"):
        svs.resumable_rows(str(out), {**identity, "recipe": {"lr": 0.001}}, 2)
    with pytest.raises(SystemExit, match="--num-subnets"):
        svs.resumable_rows(str(out), identity, 3)
    assert svs.resumable_rows(str(out), {**identity, "seed": 1}, 2, overwrite=True) is None
    assert svs.resumable_rows(str(tmp_path / "new.json"), identity, 2) is None


def test_standalone_runs_are_reused_only_from_a_matching_run(tmp_path):
    from nas_core.io import write_json

    identity = {"supernet": "b.pt", "dataset": "d", "seed": 0, "recipe": {"lr": 0.004}}
    source = _rows([0.9, 0.8], [0.5, 0.4], [1, 2])
    write_json(tmp_path / "a.json", {**identity, "supernet": "a.pt", "subnets": source})
    rows = [{**r, "standalone_runs": {}} for r in _rows([0.7, 0.6], [0.0, 0.0], [1, 2])]
    svs.reuse_standalone_runs(rows, str(tmp_path / "a.json"), identity)
    assert [r["standalone_runs"]["0"]["loss"] for r in rows] == [0.5, 0.4]
    with pytest.raises(SystemExit, match="recipe"):
        svs.reuse_standalone_runs(rows, str(tmp_path / "a.json"), {**identity, "recipe": {"lr": 0.001}})


def test_seeds_of_reused_runs_put_the_seed_that_trained_every_subnet_first(tmp_path):
    from nas_core.io import write_json

    rows = _rows([0.9, 0.8, 0.7], [0.5, 0.4, 0.3], [1, 2, 3])
    rows[0]["standalone_runs"]["1"] = rows[0]["standalone_runs"]["0"]   # seed 1: only the first subnet
    write_json(tmp_path / "a.json", {"subnets": rows})
    assert svs.source_seeds(str(tmp_path / "a.json")) == [0, 1]


def test_yardstick_noise_scores_how_far_a_retiming_moves_a_subnet_and_fails_clearly_without_a_pipeline(tmp_path):
    import yardstick_noise

    times = np.array([[1.0, 2.0], [1.1, 2.0], [1.0, 2.2]])
    # pass p against a later pass q, subnet by subnet: (0,1) |1/1.1-1| and 0; (0,2) 0 and |2/2.2-1|;
    # (1,2) |1.1/1-1| and |2/2.2-1|
    moves = [(1 / 11 + 0) / 2, (0 + 1 / 11) / 2, (0.1 + 1 / 11) / 2]
    assert yardstick_noise.pass_to_pass_pct(times) == pytest.approx(100 * sum(moves) / 3)
    with pytest.raises(FileNotFoundError, match="no such table .has the stage that writes it run"):
        yardstick_noise.main(["--root", str(tmp_path), "--out", str(tmp_path / "x.json")])


def test_compare_versions_tells_identical_from_different_artifacts(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    for root, weight, seconds in ((before, 1.0, 3.0), (after, 2.0, 4.0)):
        (root / "dataset").mkdir(parents=True)
        (root / "dataset" / "x.png").write_bytes(b"same")
        (root / "m").mkdir()
        torch.save({"w": torch.tensor([1.0]), "b": torch.tensor([weight])}, root / "m" / "model.pt")
        pd.DataFrame({"top1": [0.5], "seconds": [seconds]}).to_parquet(root / "m" / "t.parquet")
        (root / "m" / "metrics.json").write_text(json.dumps({"rho": float("nan"), "runs": [{"s": seconds}]}))
        (root / "m" / "same.txt").write_text("x")
    report = cv.compare(before, after)
    verdicts = report["artifacts"]
    assert report["dataset_files"] == report["dataset_identical"] == 1
    assert verdicts["m/same.txt"]["verdict"] == "byte-identical"
    assert verdicts["m/model.pt"]["tensors_differing"] == ["/b"] and verdicts["m/model.pt"]["tensors"] == 2
    assert verdicts["m/t.parquet"]["columns_differing"] == ["seconds"]
    assert verdicts["m/metrics.json"]["keys_differing"] == ["runs.0.s"]  # NaN equals NaN


# --------------------------------------------------------------------------- esha_search (issue 19)
class _EshaFriendlyAccuracy:
    """A toy predictor of extended genomes: capacity (a MACs table) plus a bonus per ESHA."""

    def __init__(self, catalog):
        self.catalog = catalog
        self.macs = catalog.macs_table().astype(float)
        self.esha = np.array([1.0 if b.kind == "esha" else 0.0 for b in catalog.blocks])

    def predict_genomes(self, genomes):
        return (np.tanh(self.catalog.sum_table(self.macs, genomes) / 4e8)
                + 0.2 * self.catalog.sum_table(self.esha, genomes))


def _toy_extended_setup(tmp_path):
    from nas_core.block_catalog import BlockCatalog
    from nas_core.search_algorithm import EvolutionConfig
    from nas_core.search_constraints import BlockTableEstimator
    from nas_core.search_refine import RefineConfig
    from nas_core.search_run import SearchSetup
    from nas_core.search_space import SpaceSpec

    space = SearchSpace(SpaceSpec.from_params({"attention": ["mhsa", "esha"]}))
    catalog = BlockCatalog(space, 224)
    latency = BlockTableEstimator(catalog, catalog.macs_table().astype(float) / 5e7 + 0.05, 0.9, 0.3, name="dev")
    return SearchSetup(space=space, catalog=catalog, predictor=_EshaFriendlyAccuracy(catalog),
                       estimators={"dev": latency}, profiles={}, config=EvolutionConfig(population_size=24,
                                                                                          generations=4,
                                                                                          probe_samples=0),
                       refine=RefineConfig(), num_classes=1000, out_dir=tmp_path)


def test_esha_search_compares_the_extended_search_with_table2_inside_the_same_artifacts(tmp_path):
    import esha_search

    setup = _toy_extended_setup(tmp_path)
    setup.estimators["dev"].provenance = {"lut_identity": {"runtime_version": "9.9"}}
    table2 = esha_search.table2_setup(setup, tmp_path / "t2")
    # The on-device check reads the LUT's identity from the estimator (it crashed on the first real run).
    assert table2.estimators["dev"].provenance == setup.estimators["dev"].provenance
    arch = table2.space.sample(3)  # a Table 2 genome scores as its extended genome, in both models
    genome = table2.space.encode(arch)[None]
    assert np.allclose(table2.predictor.predict_genomes(genome), setup.predictor.predict_genomes(
        setup.space.encode(arch)[None]))
    assert np.allclose(table2.estimators["dev"].predict_genomes(genome),
                       setup.estimators["dev"].predict_genomes(setup.space.encode(arch)[None]))
    target = float(np.median(table2.estimators["dev"].predict_genomes(table2.space.sample_genomes(200, rng=0))))
    result = esha_search.compare(setup, {"dev": target}, tmp_path, measure=False, say=lambda _: None)
    assert result["table2"]["esha"] == 0 and result["extended"]["esha"] > 0 and result["esha_entered"]
    assert result["predicted_gain"] > 0  # the toy rewards ESHA: the extended search must find that
    for name in ("extended", "table2"):
        assert result[name]["estimated_ms"]["dev"] <= target and result[name]["measured_ms"] is None
    with pytest.raises(ValueError, match="extended"):
        esha_search.compare(table2, {"dev": target}, tmp_path, measure=False)


def test_esha_search_tiny_params_keep_the_deployment_resolution_and_name_the_extended_space():
    import esha_search
    from nas_core.params import load_params

    params = esha_search.tiny_params(load_params(Path(__file__).resolve().parents[1] / "params.yaml"), "ort_cpu_fp32")
    assert params["search_space"] == {"resolution": 224, "attention": ["mhsa", "esha"]}
    assert params["search"]["devices"] == ["ort_cpu_fp32"] and params["baselines"]["models"] == []
    assert params["dataset"]["num_classes"] == 4 and params["pairs"]["num_subnets"] == 14


# --------------------------------------------------------------------------- frontier_fidelity (issue 14)
def test_frontier_refit_removes_a_bias_the_band_alone_leaves():
    """Subnets that run 10 % slower than the band's line (as searched networks did on OpenVINO): the
    band-only fit underestimates them; refitted with half of them, the other half's bias shrinks."""
    import frontier_fidelity as ff
    from nas_core.block_catalog import BlockCatalog

    space = SearchSpace()
    catalog = BlockCatalog(space, 64)
    block_ms = np.random.default_rng(0).uniform(0.05, 1.0, len(catalog.blocks))
    archs = [space.sample(seed) for seed in range(36)]
    lut_sum = catalog.sum_table(block_ms, np.stack([space.encode(a) for a in archs]))
    slower = np.r_[np.ones(24), np.full(12, 1.10)]  # the last 12: the "frontier"
    frame = pd.DataFrame({"arch": [a.to_json() for a in archs], "role": ["calibration"] * 12 + ["validation"] * 12
                          + ["frontier"] * 12, "median_ms": (0.8 * lut_sum + 0.3) * slower, "lut_sum_ms": lut_sum,
                          "macs": catalog.count_macs(np.stack([space.encode(a) for a in archs])),
                          "params": catalog.count_params(np.stack([space.encode(a) for a in archs]))})
    base, frontier = frame.iloc[:24].reset_index(drop=True), frame.iloc[24:].reset_index(drop=True)
    fit = ff.fit_calibration(base, catalog, block_ms, ["linear"])
    before = ff.scores(fit.selection.model.predict(catalog, block_ms, ff.subnet_genomes(frontier, catalog)),
                       frontier["median_ms"].to_numpy(float))
    assert before["mean_signed_pct"] == pytest.approx(100 * (1 / 1.1 - 1), abs=0.5)  # -9.1 %: the band's blind spot
    folds = ff.refit_with_frontier(base, frontier, catalog, block_ms, ["linear"])["folds"]
    assert len(folds) == 2
    for fold in folds:
        assert fold["frontier"]["n"] == 6 and fold["heldout"]["n"] == 12
        assert abs(fold["frontier"]["mean_signed_pct"]) < abs(before["mean_signed_pct"]) - 2
