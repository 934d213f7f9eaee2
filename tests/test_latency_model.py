"""The calibrated latency model (nas_core.latency.latency_model) and the in-band subnet sampling
(nas_core.latency.subnet_sampling), on made-up LUTs whose true model is known."""
from __future__ import annotations

import numpy as np
import pytest

from nas_core.block_catalog import BlockCatalog
from nas_core.efficiency_predictor import LatencyEstimator
from nas_core.latency import latency_model as lm
from nas_core.latency import subnet_sampling as ss
from nas_core.search_space import SearchSpace

SPACE = SearchSpace()
CATALOG = BlockCatalog(SPACE, 224)
BLOCK_MS = np.random.default_rng(3).uniform(0.05, 2.0, len(CATALOG.blocks))
TRUE = lm.LatencyModel("per_kind+blocks", {"stem": 1.1, "ffn_unified": 0.8, "ffn_fused": 1.3, "mhsa": 1.6,
                                           "embed": 0.9, "head": 1.0}, per_block_ms=-0.02, intercept_ms=0.4)


def _genomes(n: int, seed: int) -> np.ndarray:
    return SPACE.sample_genomes(n, np.random.default_rng(seed))


def test_a_model_is_a_block_table_plus_a_constant():
    genomes = _genomes(50, 1)
    feats = lm.features(CATALOG, BLOCK_MS, genomes, "per_kind")
    direct = lm.predict_features(TRUE, feats)
    np.testing.assert_allclose(TRUE.predict(CATALOG, BLOCK_MS, genomes), direct, rtol=1e-12)
    # The paper's line is the one-group model.
    line = lm.LatencyModel.paper_line(0.9, 1.5)
    np.testing.assert_allclose(line.predict(CATALOG, BLOCK_MS, genomes),
                               0.9 * CATALOG.sum_table(BLOCK_MS, genomes) + 1.5, rtol=1e-12)
    assert lm.LatencyModel.from_dict(TRUE.to_dict()) == TRUE


def test_fit_recovers_known_scales_and_selection_prefers_the_true_family():
    genomes = _genomes(40, 2)
    measured = TRUE.predict(CATALOG, BLOCK_MS, genomes)
    fitted = lm.fit_model("per_kind+blocks", lm.features(CATALOG, BLOCK_MS, genomes, "per_kind"), measured)
    for group, scale in TRUE.scales.items():
        assert fitted.scales[group] == pytest.approx(scale, rel=1e-6)
    assert fitted.per_block_ms == pytest.approx(-0.02, rel=1e-5) and fitted.intercept_ms == pytest.approx(0.4, rel=1e-4)
    selection = lm.select_model(lm.MODELS, CATALOG, BLOCK_MS, genomes, measured)
    assert selection.model.name == "per_kind+blocks"
    assert selection.candidates["per_kind+blocks"]["cv"]["max_ape_pct"] < 1e-6
    assert selection.candidates["linear"]["cv"]["mape_pct"] > 0.1  # one slope cannot fit per-kind costs
    # Data made by the paper's line: the simplest exact model wins (ties keep the earlier name).
    line = lm.LatencyModel.paper_line(0.85, 0.3).predict(CATALOG, BLOCK_MS, genomes)
    assert lm.select_model(lm.MODELS, CATALOG, BLOCK_MS, genomes, line).model.name == "linear"


def test_scales_stay_non_negative_and_small_calibration_sets_skip_rich_models():
    genomes = _genomes(12, 4)
    noise = np.random.default_rng(5).normal(1.0, 0.3, 12)
    measured = TRUE.predict(CATALOG, BLOCK_MS, genomes) * noise
    selection = lm.select_model(lm.MODELS, CATALOG, BLOCK_MS, genomes, measured)
    assert "skipped" in selection.candidates["per_kind+blocks"]  # 8 coefficients for 12 subnets
    assert all(s >= 0 for s in selection.model.scales.values())
    with pytest.raises(ValueError, match="unknown latency model 'cubic'"):
        lm.parse_model_name("cubic")


def test_error_metrics_report_the_shares_within_5_and_10_percent():
    m = lm.error_metrics([10.4, 9.0, 11.2, 10.0], [10.0, 10.0, 10.0, 10.0])
    assert m["within_5_pct"] == 0.5 and m["within_10_pct"] == 0.75
    assert m["max_ape_pct"] == pytest.approx(12.0) and m["mape_pct"] == pytest.approx((4 + 10 + 12 + 0) / 4)
    assert m["rmspe_pct"] == pytest.approx(np.sqrt((16 + 100 + 144) / 4))


def test_estimator_uses_the_fitted_model_and_finds_the_exact_fastest_subnet():
    estimator = LatencyEstimator(CATALOG, BLOCK_MS, model=TRUE)
    genomes = _genomes(2000, 6)
    np.testing.assert_allclose(estimator.predict_genomes(genomes), TRUE.predict(CATALOG, BLOCK_MS, genomes))
    assert estimator.min_latency_ms() <= estimator.predict_genomes(genomes).min() + 1e-9
    fastest = SPACE.encode(estimator.fastest_arch())
    assert estimator.predict_genomes(fastest[None])[0] == pytest.approx(estimator.min_latency_ms())


def test_band_sampling_fills_the_band_evenly_with_distinct_subnets():
    raw = lambda g: CATALOG.sum_table(BLOCK_MS, g)  # noqa: E731
    uniform = raw(_genomes(4000, 7))
    fastest = CATALOG.min_table_sum(BLOCK_MS)[0]
    band = ss.Band(2.0 * fastest)  # a MobileNetV2 far below every uniform subnet (as on Table 2)
    chosen = ss.choose_subnets(SPACE, 20, 30, seed=1, sampling="band", raw_sum_ms=raw, band=band)
    calibration = [c for c in chosen if c.role == "calibration"]
    validation = np.array([raw(SPACE.encode(c.arch)[None])[0] for c in chosen if c.role == "validation"])
    low, high = band.ms
    low = max(low, fastest)
    assert len(calibration) == 20 and len(validation) == 30
    assert (validation >= low - 1e-9).all() and (validation <= high + 1e-9).all()
    assert np.diff(np.sort(validation)).max() < 0.2 * (high - low)  # spread over the band, not clumped
    assert len({c.arch.arch_id for c in chosen}) == 50
    outside = [raw(SPACE.encode(c.arch)[None])[0] for c in calibration]
    assert sum(v > high for v in outside) >= 3  # 20 % of the calibration subnets lie beyond the band
    assert (uniform > high).all()  # uniform sampling would not have given a single one of them
    with pytest.raises(ValueError, match="only 0 distinct subnets"):
        ss.band_genomes(SPACE, raw, (0.001, 0.002), 5, np.random.default_rng(0), set())


def test_per_op_separates_ffn_kernels_that_per_kind_lumps_together():
    genomes = _genomes(40, 7)
    truth = lm.LatencyModel("per_op", {"stem": 1.0, "ffn_unified_k3": 0.8, "ffn_unified_k5": 1.4, "ffn_fused_k3": 1.0,
                                       "ffn_fused_k5": 1.2, "mhsa": 1.5, "embed": 0.9, "head": 1.0}, intercept_ms=0.3)
    assert {lm.GROUPINGS["per_op"](b) for b in CATALOG.blocks} == set(truth.scales)
    measured = truth.predict(CATALOG, BLOCK_MS, genomes)
    selection = lm.select_model(lm.MODELS, CATALOG, BLOCK_MS, genomes, measured)
    assert selection.model.name == "per_op"
    assert selection.model.scales["ffn_unified_k5"] == pytest.approx(1.4, rel=1e-6)
    assert selection.candidates["per_kind+blocks"]["cv"]["mape_pct"] > 0.1  # one scale per FFN type cannot fit it


def _raw(genomes: np.ndarray) -> np.ndarray:
    return CATALOG.sum_table(BLOCK_MS, genomes)


def test_frontier_subnets_spend_the_same_latency_on_more_macs_than_the_bands_draws():
    fastest = CATALOG.min_table_sum(BLOCK_MS)[0]
    window = (3.0 * fastest, 6.0 * fastest)  # uniform subnets of this made-up LUT sit at 8-14x its fastest
    frontier = ss.Frontier(CATALOG, BLOCK_MS, 0.5)
    taken: set = set()
    searched = np.stack(ss.frontier_genomes(SPACE, frontier, window, 8, [0, 1], taken))
    drawn = np.stack(ss.band_genomes(SPACE, _raw, window, 8, np.random.default_rng(0), taken))
    assert len(taken) == 16 and len({g.tobytes() for g in searched}) == 8
    sums = _raw(searched)
    assert (sums >= window[0] - 1e-9).all() and (sums <= window[1] + 1e-9).all()
    targets = np.linspace(*window, 10)[1:-1]  # one search per target, targets spread over the window
    assert ((sums <= targets + 1e-9) & (sums >= targets - (window[1] - window[0]) / 9 - 1e-9)).all()
    # What a search does: at the same raw sum, a searched subnet holds far more MACs than a cheap-tilted draw.
    macs_per_ms = lambda g: CATALOG.count_macs(g) / _raw(g)  # noqa: E731
    assert np.median(macs_per_ms(searched)) > 1.2 * np.median(macs_per_ms(drawn))
    again = ss.frontier_genomes(SPACE, frontier, window, 8, [0, 1], set())
    assert [g.tobytes() for g in again] == [g.tobytes() for g in searched]  # reproducible from its stream


def test_band_sampling_with_a_frontier_labels_each_subnet_with_its_origin():
    fastest = CATALOG.min_table_sum(BLOCK_MS)[0]
    band = ss.Band(6.0 * fastest)
    chosen = ss.choose_subnets(SPACE, 20, 30, seed=1, sampling="band", raw_sum_ms=_raw, band=band,
                               frontier=ss.Frontier(CATALOG, BLOCK_MS, share=0.5))
    counts = {}
    for choice in chosen:
        counts[choice.role, choice.origin] = counts.get((choice.role, choice.origin), 0) + 1
    # 20 % of the calibration set outside the band; half of the rest, and half of the held-out set, searched
    assert counts == {("calibration", "frontier"): 8, ("calibration", "band"): 8, ("calibration", "outside"): 4,
                      ("validation", "frontier"): 15, ("validation", "band"): 15}
    assert len({c.arch.arch_id for c in chosen}) == 50
    low, high = band.ms
    inside = np.array([_raw(SPACE.encode(c.arch)[None])[0] for c in chosen if c.origin == "frontier"])
    assert (inside >= max(low, fastest) - 1e-9).all() and (inside <= high + 1e-9).all()
    plain = ss.choose_subnets(SPACE, 20, 30, seed=1, sampling="band", raw_sum_ms=_raw, band=band)
    assert {c.origin for c in plain} == {"band", "outside"}
    with pytest.raises(ValueError, match="need band sampling"):
        ss.choose_subnets(SPACE, 20, 30, sampling="stratified", raw_sum_ms=_raw,
                          frontier=ss.Frontier(CATALOG, BLOCK_MS, 0.5))
    with pytest.raises(ValueError, match="origin must be one of"):
        ss.SubnetChoice(chosen[0].arch, "validation", "lucky")
    with pytest.raises(ValueError, match="no subnet has a raw LUT sum"):
        ss.frontier_genomes(SPACE, ss.Frontier(CATALOG, BLOCK_MS, 0.5), (0.1 * fastest, 0.5 * fastest), 3, [0], set())


def test_calibration_settings_take_a_frontier_share_only_with_the_band():
    from nas_core.latency.calibration import CalibrationSettings

    assert CalibrationSettings(sampling="band", frontier=0.5).frontier == 0.5
    assert CalibrationSettings().frontier == 0.0  # the paper's: no searched subnets
    with pytest.raises(ValueError, match="needs sampling: band"):
        CalibrationSettings(sampling="uniform", frontier=0.5)
    with pytest.raises(ValueError, match=r"share in \[0, 1\]"):
        CalibrationSettings(sampling="band", frontier=1.5)


def test_report_gives_the_calibrated_model_on_each_origin_of_held_out_subnet(tmp_path):
    import pandas as pd

    from nas_core import io
    from nas_core.latency.calibration import metrics_by_origin
    from nas_core.layout import Layout
    from nas_core.report import Sources, latency_predictor_table

    frame = pd.DataFrame({"role": ["calibration"] * 2 + ["validation"] * 4,
                          "origin": ["band", "frontier", "band", "band", "frontier", "frontier"],
                          "median_ms": [5.0, 6.0, 5.0, 4.0, 6.0, 8.0],
                          "calibrated_ms": [5.0, 6.0, 5.1, 4.0, 6.6, 8.8]})
    by_origin = metrics_by_origin(frame)
    assert by_origin["validation"]["band"]["mape_pct"] == pytest.approx(1.0)      # 2 % and 0 %
    assert by_origin["validation"]["frontier"]["mape_pct"] == pytest.approx(10.0)  # 10 % and 10 %
    overall = lm.error_metrics(frame["calibrated_ms"][2:], frame["median_ms"][2:])
    layout = Layout(tmp_path)
    io.write_json(layout.lut_paths("ort_cpu_fp32").fit, {
        "a": 1.0, "b": 0.0, "model": {"name": "per_op"}, "sampling": "band",
        "metrics": {"validation": {"calibrated": overall}}, "metrics_by_origin": by_origin})
    table = latency_predictor_table(layout, ["ort_cpu_fp32"], Sources(tmp_path)).set_index("estimator")
    assert table.loc["calibrated (per_op), frontier subnets", "mape_pct"] == pytest.approx(10.0)
    assert table.loc["calibrated (per_op), band subnets", "n"] == 2
    assert table.loc["calibrated (per_op)", "n"] == 4
