"""Random-architecture controls (issue 16): sampling under the search's constraints, the
measurement that confirms a control, the intervals and the claims a report may word, and the
report's Table 3 rows. Stand-ins only: each test takes a second or two."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nas_core.block_catalog import BlockCatalog
from nas_core.controls import (ControlsConfig, blocked_difference_interval, claim, difference_interval, draw_controls,
                               mean_std, sample_in_window, window_constraints, window_quality)
from nas_core.io import write_json
from nas_core.search_constraints import BlockTableEstimator
from nas_core.search_space import SearchSpace


def toy_latency(catalog: BlockCatalog, seed: int = 1) -> BlockTableEstimator:
    """A calibrated-LUT-like estimator (as tests/test_search.py's): MACs-proportional block times."""
    rng = np.random.default_rng(seed)
    macs = catalog.macs_table().astype(float)
    table = macs / 4e7 + 0.03 + rng.uniform(0, 0.03, len(macs))
    return BlockTableEstimator(catalog, table, scale=0.8, offset=0.4, name="dev")


@pytest.fixture(scope="module")
def world():
    space = SearchSpace()
    catalog = BlockCatalog(space, 224)
    latency = toy_latency(catalog)
    uniform = latency.predict_genomes(space.sample_genomes(4000, np.random.default_rng(3)))
    return {"space": space, "catalog": catalog, "estimators": {"dev": latency},
            "target": float(np.quantile(uniform, 0.2))}  # a tail of the space, as the searches' targets are


@pytest.mark.parametrize("method", ["gibbs", "rejection"])
def test_controls_are_drawn_within_the_window_and_the_params_bound(world, method):
    space, catalog, estimators, target = world["space"], world["catalog"], world["estimators"], world["target"]
    params = BlockTableEstimator.params(catalog)
    bound = float(np.median(params.predict_genomes(space.sample_genomes(2000, np.random.default_rng(4)))))
    window = {"dev": (0.97 * target, target)}
    constraints = window_constraints(catalog, estimators, window, max_params=bound)
    genomes, work = sample_in_window(space, constraints, 12, np.random.default_rng(0), method=method, sweeps=5,
                                     batch=4096)
    assert genomes.shape == (12, len(space.genes)) and work >= 12
    latency = estimators["dev"].predict_genomes(genomes)
    assert np.all(latency >= 0.97 * target) and np.all(latency <= target)
    assert np.all(params.predict_genomes(genomes) <= bound)
    assert len({g.tobytes() for g in genomes}) == 12  # distinct
    assert np.array_equal(space.canonicalize(genomes), genomes)  # canonical, decodable subnets
    with pytest.raises(ValueError, match="subnets? within"):  # a window nothing reaches fails, it does not hang
        impossible = window_constraints(catalog, estimators, {"dev": (0.99 * target, target)}, max_params=1.0)
        sample_in_window(space, impossible, 1, np.random.default_rng(0), method=method, batch=1024, max_draws=4096)


def test_gibbs_draws_what_rejection_sampling_draws(world):
    """Where rejection sampling is affordable (a target at the space's 20 % quantile), the Gibbs
    chains draw subnets of the same size and depth: the uniform distribution in the window.
    (Chains confined to the window itself stayed at their starting depth: 1.2 M params fewer.)"""
    space, catalog, estimators, target = world["space"], world["catalog"], world["estimators"], world["target"]
    constraints = window_constraints(catalog, estimators, {"dev": (0.97 * target, target)})
    params = BlockTableEstimator.params(catalog)
    exact, _ = sample_in_window(space, constraints, 120, np.random.default_rng(0), method="rejection", batch=8192)
    chains, _ = sample_in_window(space, constraints, 120, np.random.default_rng(1), method="gibbs", sweeps=10)
    a, b = params.predict_genomes(exact), params.predict_genomes(chains)
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 3 * se, (a.mean(), b.mean(), se)
    depth = [np.mean([sum(space.decode(g).depths) for g in x]) for x in (exact, chains)]
    assert abs(depth[0] - depth[1]) < 1.0, depth


def test_a_draw_is_a_control_only_when_measured_within_the_window(world):
    """The device runs 8 % slower than the estimate: the first round's draws (estimated in the
    window) measure above the target and are rejected; the next round corrects by the measured
    ratio, and every control is measured within [-3 %, 0]."""
    space, catalog, estimators, target = world["space"], world["catalog"], world["estimators"], world["target"]
    measured = []

    def measure(genome):
        ms = 1.08 * float(estimators["dev"].predict_genomes(genome[None])[0])
        measured.append(ms)
        return {"dev": ms}

    draws, summary = draw_controls(space, catalog, estimators, {"dev": target}, 3, measure, np.random.default_rng(1),
                                   tolerance=0.03, max_measured=20, batch=4096)
    controls = [d for d in draws if d.within]
    assert len(controls) == 3 and summary["accepted"] == 3 and summary["measured_on_device"]
    assert all(0.97 * target <= d.measured_ms["dev"] <= target for d in controls)
    rejected = [d for d in draws if not d.within]
    assert rejected and all(d.round == 1 and d.measured_ms["dev"] > target for d in rejected)
    assert all(d.round == 2 for d in controls) and len(measured) == len(draws) == summary["measured"]
    assert all(abs(d.measured_ms["dev"] / d.estimated_ms["dev"] - 1.08) < 1e-9 for d in draws)

    # a measurement budget is a budget: never more measurements than max_measured
    draws, summary = draw_controls(space, catalog, estimators, {"dev": target}, 3, measure, np.random.default_rng(1),
                                   tolerance=0.03, max_measured=2, batch=4096)
    assert len(draws) == 2 and summary["accepted"] == 0 and "0 of 3 controls" in summary["message"]


def test_the_interval_matches_welch_and_a_claim_needs_it_to_exclude_zero():
    ours, random = [0.61, 0.62, 0.60], [0.50, 0.52, 0.49, 0.51]
    interval = difference_interval(ours, random)
    reference = stats.ttest_ind(ours, random, equal_var=False).confidence_interval(0.95)
    assert interval["diff"] == pytest.approx(0.61 - 0.505)
    assert (interval["low"], interval["high"]) == pytest.approx((reference.low, reference.high))
    assert interval["method"] == "welch t" and interval["low"] > 0
    assert claim("ours", "random", interval).startswith("ours beats random: +10.50 points of top-1, 95 % CI [")

    close = difference_interval([0.50, 0.60], [0.55, 0.45, 0.60])
    assert close["low"] < 0 < close["high"]
    text = claim("ours", "random", close)
    assert "not distinguishable" in text and "includes 0" in text and "beats" not in text

    behind = difference_interval([0.40, 0.41], [0.50, 0.52, 0.51])
    assert behind["high"] < 0 and claim("ours", "random", behind).startswith("ours trails random")

    one_seed = difference_interval([0.60], [0.50, 0.52, 0.49, 0.51])  # ours fixed, the controls a sample
    half = stats.t.ppf(0.975, 3) * np.std([0.50, 0.52, 0.49, 0.51], ddof=1) / 2
    assert (one_seed["low"], one_seed["high"]) == pytest.approx((0.095 - half, 0.095 + half))
    assert "one-sample" in one_seed["method"]

    too_few = difference_interval([0.60], [0.50])  # smoke: one control, one seed
    assert math.isnan(too_few["low"]) and too_few["diff"] == pytest.approx(0.10)
    assert "not distinguishable" in claim("ours", "random", too_few) and "too few runs" in claim("ours", "random",
                                                                                                too_few)
    assert mean_std([0.5]) == (0.5, pytest.approx(math.nan, nan_ok=True))
    assert mean_std([0.5, 0.7])[1] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_seeds_are_blocks_a_shared_seed_effect_does_not_hide_a_gain():
    """Seed 0 trains every model 5 points lower (its data order): ours is 1 point above every
    control at every seed. Welch's interval, blind to the blocks, includes 0; the blocked one does not."""
    effect = {0: -0.05, 1: 0.0, 2: 0.01}
    controls = [{s: 0.30 + a + e for s, e in effect.items()} for a in (-0.002, 0.0, 0.002, 0.001)]
    ours = {s: 0.31 + e + n for (s, e), n in zip(effect.items(), (0.001, -0.001, 0.0))}
    welch = difference_interval(list(ours.values()), [float(np.mean(list(c.values()))) for c in controls])
    blocked = blocked_difference_interval(ours, controls)
    assert welch["low"] < 0 < welch["high"]
    assert blocked["low"] > 0 and blocked["diff"] == pytest.approx(welch["diff"])
    assert claim("ours", "random", blocked).startswith("ours beats random")
    assert "4 architectures" in blocked["method"]
    # one other model: a paired t-interval, as scipy's
    other = {0: 0.20, 1: 0.26, 2: 0.24}
    paired = blocked_difference_interval(ours, [other])
    reference = stats.ttest_rel(list(ours.values()), list(other.values())).confidence_interval(0.95)
    assert (paired["low"], paired["high"]) == pytest.approx((reference.low, reference.high))
    # one shared seed: Welch / one-sample on the values there are
    assert blocked_difference_interval({0: 0.3}, [{0: 0.2}, {0: 0.25}])["method"].startswith("one-sample")


def test_predictor_quality_in_the_window():
    measured = np.arange(8.0)
    same = window_quality(measured, measured)
    assert same["spearman"] == pytest.approx(1.0)
    assert (same["n"], same["top_k"], same["top_k_precision"], same["chance"]) == (8, 2, 1.0, 0.25)
    reversed_ = window_quality(-measured, measured)
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["top_k_precision"] == 0.0


def test_controls_params_are_checked():
    assert ControlsConfig.from_params({"count": 2, "seeds": [0, 1]}).seeds == (0, 1)
    with pytest.raises(ValueError, match="unknown keys"):
        ControlsConfig.from_params({"cuont": 2})
    with pytest.raises(ValueError, match="first or all"):
        ControlsConfig.from_params({"searches": "some"})
    assert ControlsConfig.from_params({"count": 2}).measurement_budget == 8


# --------------------------------------------------------------------------- the report
def _metrics(name: str, top1: list[float], init: str, images: int, latency: float) -> dict:
    metrics = {"name": name, "init": init, "predicted_accuracy": 0.5, "inherited": {"top1": 0.4} if init == "supernet"
               else None, "finetuned": {"top1": top1[0]}, "params": 4_000_000, "macs": 12_000_000,
               "latency_ms": {"dev": {"median_ms": latency}}, "train": {"images": images, "seed": 0},
               "supernet": {"images": 3200} if init == "supernet" else None}
    if len(top1) > 1:
        metrics["seeds"] = {"seeds": list(range(len(top1))), "top1": top1, "top1_mean": float(np.mean(top1)),
                            "top1_std": float(np.std(top1, ddof=1))}
    return metrics


def test_table3_has_random_rows_init_images_seeds_and_the_search_gain(tmp_path):
    from nas_core.report import build_report

    root = tmp_path / "data"
    write_json(root / "finetune" / "ours_dev@1.0x" / "metrics.json",
               _metrics("ours_dev@1.0x", [0.62, 0.61, 0.63], "supernet", 3200, 10.0))
    write_json(root / "finetune" / "mobilenetv2_100" / "metrics.json",
               _metrics("mobilenetv2_100", [0.40, 0.45, 0.38], "scratch", 3200, 8.0))
    controls = [{"name": f"random{i}_dev@1.0x", "seeds": [0, 1, 2], "top1": top1, "top1_mean": float(np.mean(top1)),
                 "top1_std": float(np.std(top1, ddof=1)), "predicted": 0.4, "inherited_top1": 0.3,
                 "measured_ms": {"dev": 9.8}, "params": 3_000_000, "macs": 9_000_000, "train_images": 3200,
                 "supernet_images": 3200, "sources": [f"controls/random{i}/seed0/metrics.json"]}
                for i, top1 in enumerate([[0.60, 0.62, 0.61], [0.63, 0.62, 0.64], [0.59, 0.60, 0.58]])]
    write_json(root / "controls" / "summary.json", {"seeds": [0, 1, 2], "runs": {"dev@1.0x": {
        "controls": controls, "sampling": {"message": "3 of 3 controls measured within"},
        "predictor_window": {"n": 8, "spearman": 0.5, "top_k": 2, "top_k_precision": 0.5, "chance": 0.25,
                             "target": "loss", "ours_percentile": 0.75}}}})
    written = build_report(root, root / "report", devices=["dev"], searches=["dev@1.0x"],
                           baselines=["mobilenetv2_100"], params={"profile": "smoke"})

    table3 = pd.read_parquet(written["table3_models"]).set_index("model")
    for column in ("init", "train_images_seen", "seeds", "top1_mean", "top1_std"):
        assert column in table3.columns
    randoms = [m for m in table3.index if "random" in m]
    assert len(randoms) == 3 and (table3.loc[randoms, "type"] == "hybrid (random control)").all()
    assert table3.loc["ours_dev@1.0x", "train_images_seen"] == 6400  # its own 3200 + the supernet's 3200
    assert table3.loc["mobilenetv2_100", "train_images_seen"] == 3200 and table3.loc["mobilenetv2_100",
                                                                                     "init"] == "scratch"
    assert table3.loc["ours_dev@1.0x", "seeds"] == "0,1,2"
    assert table3.loc["ours_dev@1.0x", "top1_mean"] == pytest.approx(0.62)
    assert table3.loc["random0_dev@1.0x", "latency_ms.dev"] == 9.8

    gain = pd.read_parquet(written["table3_search_gain"]).set_index("other")
    vs_random = gain.loc["random controls of dev@1.0x (3)"]
    assert vs_random["diff_top1"] == pytest.approx(0.62 - np.mean([0.61, 0.63, 0.59]))
    assert "not distinguishable" in vs_random["claim"]  # +1.0 point; the controls spread 2 points
    vs_mnv2 = gain.loc["mobilenetv2_100"]
    assert vs_mnv2["ci_low"] > 0 and vs_mnv2["claim"].startswith("ours_dev@1.0x beats mobilenetv2_100")
    assert "from scratch" in vs_mnv2["setting"]
    text = written["readme"].read_text()
    assert "### Did the search help?" in text and "not distinguishable" in text
    window = pd.read_parquet(written["predictor_window"]).iloc[0]
    assert window["top_k_precision"] == 0.5 and window["ours_beats_share"] == 0.75


# --------------------------------------------------------------------------- the DAG
def test_controls_and_equal_budget_steps_in_the_plan(tmp_path):
    from nas_core.params import load_params
    from tasks import stages
    from tasks.step_stamps import measured_devices

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", "smoke")
    layout = stages.Layout(tmp_path)
    steps = {s.id: s for s in stages.pipeline_steps(params, tmp_path)}
    controls = steps["controls"]
    assert controls.outputs == (layout.controls_summary,)
    first = stages.search_runs(params)[0]
    assert layout.search_summary(first.key) in controls.inputs and layout.supernet in controls.inputs
    assert all(layout.search_summary(r.key) not in controls.inputs for r in stages.search_runs(params)[1:])
    assert controls.outputs[0] in steps["report"].inputs
    assert measured_devices("controls", params, {}) == list(first.devices)
    assert not any(s.startswith("finetune-equal-budget") for s in steps)  # smoke: off

    params = {**params, "pipeline": {**params["pipeline"], "equal_budget": ["mobilenetv2_100"]},
              "controls": {**params["controls"], "searches": "all"}}
    steps = {s.id: s for s in stages.pipeline_steps(params, tmp_path)}
    equal = steps["finetune-equal-budget@mobilenetv2_100"]
    assert equal.kwargs() == {"name": "mobilenetv2_100_equal_budget"} and layout.supernet in equal.inputs
    assert all(layout.search_summary(r.key) in steps["controls"].inputs for r in stages.search_runs(params))
    assert stages.equal_budget_baselines(params) == ["mobilenetv2_100_equal_budget"]
    assert stages.finetune_seeds({"finetune": {"seeds": [3, 1]}}) == [3, 1]
    assert stages.finetune_seeds({"finetune": {}}) == [0]
    assert stages.controlled_runs({**params, "controls": {"count": 0}}) == []


def test_equal_budget_epochs_count_the_supernet_s_images(tmp_path):
    from nas_core.io import write_parquet
    from tasks import stages
    from tasks.stages.downstream import equal_budget_epochs

    layout = stages.Layout(tmp_path)
    # 4 supernet epochs of 25 steps x 32 images (images/s x seconds = steps x batch)
    write_parquet(layout.supernet_log, pd.DataFrame({"epoch": [1, 2, 3, 4], "images_per_s": [80.0] * 4,
                                                     "epoch_seconds": [10.0] * 4}))
    params = {"finetune": {"epochs": 2, "batch_size": 64, "steps_per_epoch": 25}}
    # ours: 3,200 supernet images + 2 x 25 x 64 = 3,200 of its own; a baseline sees 6,400 in 4 epochs
    assert equal_budget_epochs(params, layout) == 4


def test_finetune_seeds_keep_the_first_seed_s_model_and_add_the_others(tmp_path, monkeypatch):
    from nas_core.io import read_json
    from tasks import stages
    from tasks.stages import downstream

    calls = []

    def fake_run(params, ref, *, data, supernet, out_root, name, init, resume, overwrite, progress):
        finetune = params["finetune"]
        calls.append((name, finetune.get("seed", 0), finetune.get("measure", True), Path(out_root)))
        metrics = {"name": name, "finetuned": {"top1": 0.5 + 0.01 * finetune.get("seed", 0)}}
        write_json(Path(out_root) / name / "metrics.json", metrics)
        return metrics

    monkeypatch.setattr(downstream, "run_finetune", fake_run)
    layout = stages.Layout(tmp_path)
    layout.manifest.parent.mkdir(parents=True)
    layout.manifest.write_text("m")
    params = {"finetune": {"seeds": [0, 2]}, "devices": {}, "pipeline": {"finetune_baselines":
                                                                         {"mobilenetv2_100": "scratch"}}}
    stages.stage_finetune(params, "mobilenetv2_100", tmp_path)
    assert calls == [("mobilenetv2_100", 0, True, layout.finetune_root),  # the model, measured, where it always was
                     ("seed2", 2, False, layout.finetune_seeds_root("mobilenetv2_100"))]  # a repeat, not re-timed
    seeds = read_json(layout.finetune_metrics("mobilenetv2_100"))["seeds"]
    assert seeds["seeds"] == [0, 2] and seeds["top1"] == [0.5, 0.52]
    assert seeds["top1_mean"] == pytest.approx(0.51) and seeds["top1_std"] == pytest.approx(np.std([0.5, 0.52],
                                                                                                    ddof=1))
    calls.clear()
    stages.stage_finetune(params, "mobilenetv2_100", tmp_path)  # the same inputs: the repeat is read back
    assert [c[0] for c in calls] == ["mobilenetv2_100"]
