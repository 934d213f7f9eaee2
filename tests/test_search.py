"""Evolutionary search with search-space evolution (nas_core/search_algorithm.py), its outputs
(nas_core/search_report.py) and the CLI (flows/cli_search.py).

The accuracy predictor and latency estimators are stand-ins defined here: additive per-block
tables (``BlockTableEstimator``, the shape of a calibrated LUT) and an accuracy that grows with
size, with a random per-block part and a nonlinear term, so that constraints bind.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from nas_core.block_catalog import BlockCatalog
from nas_core.search_algorithm import (PROB_ATOL, Candidate, EvolutionConfig, SamplingDistribution, model_name,
                                       run_name, search)
from nas_core.search_constraints import (BlockTableEstimator, Constraints, InfeasibleConstraintError, LatencyConstraint,
                                         SamplingBudgetError, SearchError)
from nas_core.search_refine import RefineConfig, refine_on_device
from nas_core.search_space import SearchSpace

FAST = dict(population_size=40, generations=25, sample_batch=512, probe_samples=256)


# --------------------------------------------------------------------------- stand-ins
class ToyAccuracy:
    """Saturating in log-MACs, plus a fixed random per-block term and a reward for a few MHSAs."""

    def __init__(self, catalog: BlockCatalog, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.catalog = catalog
        macs = catalog.macs_table().astype(float)
        self.table = np.log1p(macs / 1e6) + rng.normal(0, 0.5, len(macs))
        self.mhsa = np.array([b.kind == "mhsa" for b in catalog.blocks], dtype=float)
        self.calls = 0

    def predict_genomes(self, genomes):
        self.calls += 1
        x = self.catalog.sum_table(self.table, genomes)
        mhsa = self.catalog.sum_table(self.mhsa, genomes)
        return 80 * np.tanh(x / 150) - 0.3 * (mhsa - 4) ** 2


def toy_latency(catalog: BlockCatalog, seed: int, fused_cost: float = 1.0, gelu_cost: float = 1.0,
                name: str = "lat") -> BlockTableEstimator:
    """A calibrated-LUT-like estimator: MACs-proportional block times with per-kind factors."""
    rng = np.random.default_rng(seed)
    macs = catalog.macs_table().astype(float)
    factor = np.array([(fused_cost if b.ffn_type == "fused" else 1.0) * (gelu_cost if b.act == "gelu" else 1.0)
                       for b in catalog.blocks])
    table = macs / 4e7 * factor + 0.03 + rng.uniform(0, 0.03, len(macs))
    return BlockTableEstimator(catalog, table, scale=0.8, offset=0.4, name=name)


@pytest.fixture(scope="module")
def world():
    space = SearchSpace()
    catalog = BlockCatalog(space, 224)
    lat_a = toy_latency(catalog, 1, name="dev_a")
    lat_b = toy_latency(catalog, 2, fused_cost=0.5, gelu_cost=1.6, name="dev_b")
    uniform = space.sample_genomes(20000, np.random.default_rng(7))
    return {"space": space, "catalog": catalog, "acc": ToyAccuracy(catalog), "lat_a": lat_a, "lat_b": lat_b,
            "uniform": uniform, "lat_a_uniform": lat_a.predict_genomes(uniform)}


def constraint(world, target, device="dev_a", **kwargs):
    return Constraints(world["catalog"], [LatencyConstraint(device, target, world["lat_" + device[-1]])], **kwargs)


# --------------------------------------------------------------------------- the sampling distribution
def test_sampler_draws_each_gene_from_its_probabilities(world):
    space = world["space"]
    rng = np.random.default_rng(0)
    probs = {g.name: rng.dirichlet(np.ones(len(g.choices))) for g in space.genes}
    dist = SamplingDistribution.from_dict(space, probs)
    raw = dist.sample_raw(40000, rng)
    for i, gene in enumerate(space.genes):
        freq = np.bincount(raw[:, i], minlength=len(gene.choices)) / len(raw)
        assert np.abs(freq - probs[gene.name]).max() < 0.015, gene.name
    drawn = dist.sample(500, rng)
    assert np.array_equal(drawn, space.canonicalize(drawn))
    # The table round-trips and is what SearchSpace.sample_genomes accepts.
    assert space.sample_genomes(3, 0, dist.to_dict()).shape == (3, len(space.genes))
    assert np.allclose(SamplingDistribution.from_dict(space, dist.to_dict()).probs, dist.probs)


def test_moving_average_counts_a_gene_only_where_it_is_active(world):
    space = world["space"]
    gi = space.gene_index
    base = space.encode(space.smallest())  # s3 depth 6 (index 0), no MHSA anywhere
    top = np.stack([base] * 4)
    top[:, gi["stem.act"]] = [0, 0, 0, 1]
    top[3, gi["s3.depth"]] = 3  # depth 9: blocks 6-8 of stage 3 active in this genome only
    top[3, gi["s3.b8.ffn.kernel"]] = 1
    top[3, gi["s3.b8.mhsa"]] = 1
    top[3, gi["s3.b8.mhsa.value_ratio"]] = 2
    top = space.canonicalize(top)
    uniform = SamplingDistribution.uniform(space)
    alpha = 0.8
    new = uniform.moved_toward(top, alpha)
    row = lambda d, name: d.probs[gi[name], :len(space.genes[gi[name]].choices)]  # noqa: E731
    assert np.allclose(row(new, "stem.act"), alpha * 0.5 + (1 - alpha) * np.array([0.75, 0.25]), atol=1e-12)
    # Active in one genome: its frequency is that genome's choice, not diluted by the 3 inactive ones.
    assert np.allclose(row(new, "s3.b8.ffn.kernel"), alpha * 0.5 + (1 - alpha) * np.array([0.0, 1.0]), atol=1e-12)
    assert np.allclose(row(new, "s3.b8.mhsa.value_ratio"), alpha / 3 + (1 - alpha) * np.array([0, 0, 1]), atol=1e-12)
    # Active nowhere (no MHSA at s4.b0 in any of them): keeps P exactly.
    assert np.array_equal(row(new, "s4.b0.mhsa.act"), row(uniform, "s4.b0.mhsa.act"))
    freq, counted = uniform.choice_frequencies(top)
    assert counted[gi["s3.b8.ffn.kernel"]] and not counted[gi["s4.b0.mhsa.act"]]


def test_repeated_updates_stay_a_distribution_and_bad_tables_are_refused(world):
    space = world["space"]
    rng = np.random.default_rng(1)
    dist = SamplingDistribution.uniform(space)
    for alpha in (0.0, 0.3, 0.9, 0.999, 1.0) * 20:
        dist = dist.moved_toward(dist.sample(25, rng), alpha)  # validate() runs in the constructor
        assert (dist.probs >= 0).all()
        assert np.abs(dist.probs.sum(axis=1) - 1).max() <= PROB_ATOL
    bad = space.uniform_probs()
    bad["s2.width"] = np.array([0.5, 0.5, 0.5, -0.5])
    with pytest.raises(ValueError, match="s2.width"):
        SamplingDistribution.from_dict(space, bad)
    bad["s2.width"] = np.array([0.3, 0.3, 0.3, 0.3])
    with pytest.raises(ValueError, match="not a distribution"):
        SamplingDistribution.from_dict(space, bad)
    with pytest.raises(ValueError, match="alpha"):
        dist.moved_toward(dist.sample(2, rng), 1.5)


# --------------------------------------------------------------------------- exact minima
def test_min_params_is_the_smallest_subnet_and_bounds_every_sample(world):
    space, catalog = world["space"], world["catalog"]
    params = BlockTableEstimator.params(catalog)
    smallest = catalog.count_params(space.encode(space.smallest())[None])[0]
    assert params.min_value() == smallest
    assert params.predict_genomes(world["uniform"]).min() > params.min_value()


def test_min_table_sum_is_a_local_minimum_for_random_tables(world):
    """No single-gene change of the argmin genome lowers the sum (a necessary condition of
    exactness, checked over all 140 genes and their choices), for a table where MHSAs pay."""
    space, catalog = world["space"], world["catalog"]
    rng = np.random.default_rng(3)
    table = rng.uniform(0, 1, len(catalog.blocks))
    mhsa = np.array([b.kind == "mhsa" for b in catalog.blocks])
    for mhsa_value in (None, -5.0):
        if mhsa_value is not None:
            table = np.where(mhsa, mhsa_value + rng.uniform(0, 0.1, len(table)), table)
        value, genome = catalog.min_table_sum(table)
        neighbours = []
        for i, n in enumerate(space.num_choices):
            for c in range(n):
                g = genome.copy()
                g[i] = c
                neighbours.append(g)
        neighbours = space.canonicalize(np.stack(neighbours))
        assert catalog.sum_table(table, neighbours).min() >= value - 1e-9
        assert catalog.sum_table(table, world["uniform"]).min() >= value - 1e-9
        arch = space.decode(genome)
        if mhsa_value is not None:  # every block of stages 3-4 carries an MHSA, at the deepest depth
            assert arch.depths[2:] == (9, 6) and arch.num_mhsa == 15
        else:
            assert arch.depths == (2, 2, 6, 4) and arch.num_mhsa == 0


# --------------------------------------------------------------------------- constraints
def test_infeasible_targets_fail_at_once_naming_the_lowest_achievable_value(world):
    lowest = world["lat_a"].min_latency_ms()
    started = time.perf_counter()
    with pytest.raises(InfeasibleConstraintError, match=f"lowest achievable.*{lowest:.3f} ms"):
        search(world["space"], world["acc"], constraint(world, lowest * 0.99), EvolutionConfig(**FAST))
    min_params = BlockTableEstimator.params(world["catalog"]).min_value()
    with pytest.raises(InfeasibleConstraintError, match=f"parameter count.*{min_params / 1e6:.3f} M"):
        search(world["space"], world["acc"], constraint(world, 100.0, max_params=min_params - 1),
               EvolutionConfig(**FAST))
    assert time.perf_counter() - started < 5
    with pytest.raises(SearchError, match="positive"):
        constraint(world, -3.0)


def test_sampling_cap_raises_instead_of_hanging(world):
    tight = world["lat_a"].min_latency_ms() * 1.03
    config = EvolutionConfig(**{**FAST, "evolve_space": False, "max_sampling_attempts": 20_000})
    started = time.perf_counter()
    with pytest.raises(SamplingBudgetError, match=r"only \d+ of 40 valid subnets in 20,\d{3} attempts"):
        search(world["space"], world["acc"], constraint(world, tight), config)
    assert time.perf_counter() - started < 20


# --------------------------------------------------------------------------- the search
def test_search_meets_every_constraint_and_beats_random_sampling(world):
    space, catalog = world["space"], world["catalog"]
    target_a = float(np.percentile(world["lat_a_uniform"], 3))
    target_b = float(np.percentile(world["lat_b"].predict_genomes(world["uniform"]), 10))
    max_params = 6e6
    cons = Constraints(catalog, [LatencyConstraint("dev_a", target_a, world["lat_a"]),
                                 LatencyConstraint("dev_b", target_b, world["lat_b"])], max_params=max_params)
    result = search(space, world["acc"], cons, EvolutionConfig(**FAST))
    genomes = np.array([c.genome for c in result.top])
    assert len(result.top) == EvolutionConfig(**FAST).num_parents
    assert (world["lat_a"].predict_genomes(genomes) <= target_a).all()
    assert (world["lat_b"].predict_genomes(genomes) <= target_b).all()
    assert (catalog.count_params(genomes) <= max_params).all()
    # Reported metrics are the estimators' values; accuracies are the predictor's, best first.
    best = result.best
    assert best.latency_ms() == pytest.approx({"dev_a": world["lat_a"].predict_genomes(genomes[:1])[0],
                                               "dev_b": world["lat_b"].predict_genomes(genomes[:1])[0]})
    accs = [c.predicted_accuracy for c in result.top]
    assert accs == sorted(accs, reverse=True) and accs[0] == pytest.approx(world["acc"].predict_genomes(genomes[:1])[0])
    # Better than the best of the valid subnets among 20,000 uniform samples.
    u = world["uniform"]
    valid = ((world["lat_a_uniform"] <= target_a) & (world["lat_b"].predict_genomes(u) <= target_b)
             & (catalog.count_params(u) <= max_params))
    assert valid.sum() >= 1
    assert best.predicted_accuracy > world["acc"].predict_genomes(u[valid]).max()
    # History: one row per generation + the initial population; elitism makes best and Q monotone.
    hist = result.history
    assert [r["generation"] for r in hist] == list(range(FAST["generations"] + 1))
    assert all(b["best_accuracy"] >= a["best_accuracy"] for a, b in zip(hist, hist[1:]))
    assert all(b["quality"] >= a["quality"] - 1e-12 for a, b in zip(hist, hist[1:]))
    assert hist[0]["fresh_valid"] == FAST["population_size"] and hist[1]["fresh_attempts"] == 0
    assert all(r["valid"] == r["mutation_valid"] + r["crossover_valid"] for r in hist[1:])


def test_search_is_deterministic_per_seed(world):
    cons = constraint(world, float(np.percentile(world["lat_a_uniform"], 5)))
    config = EvolutionConfig(**{**FAST, "generations": 8})
    first = search(world["space"], world["acc"], cons, config)
    again = search(world["space"], world["acc"], cons, config)
    other = search(world["space"], world["acc"], cons, EvolutionConfig(**{**FAST, "generations": 8, "seed": 1}))
    assert [c.genome for c in first.top] == [c.genome for c in again.top]
    assert [c.genome for c in first.top] != [c.genome for c in other.top]


def test_evolution_off_keeps_the_space_uniform(world):
    cons = constraint(world, float(np.percentile(world["lat_a_uniform"], 5)))
    result = search(world["space"], world["acc"], cons, EvolutionConfig(**{**FAST, "evolve_space": False}))
    assert not any(r["space_evolved"] for r in result.history)
    assert np.array_equal(result.distribution.probs, SamplingDistribution.uniform(world["space"]).probs)
    assert result.history[-1]["space_entropy"] == pytest.approx(1.0)


def test_evolved_space_needs_10x_fewer_attempts_per_valid_subnet_than_uniform(world):
    """Fig. 4: at a target where ~0.2% of uniform subnets are valid, sampling from the evolved
    space needs >= 10x fewer attempts per valid subnet (and the whole search, including its
    initial population, fewer too)."""
    target = float(np.percentile(world["lat_a_uniform"], 0.2))
    uniform_rate = float(np.mean(world["lat_a_uniform"] <= target))
    result = search(world["space"], world["acc"], constraint(world, target), EvolutionConfig(**FAST))
    final = result.distribution.sample(4000, np.random.default_rng(11))
    evolved_rate = float(np.mean(world["lat_a"].predict_genomes(final) <= target))
    assert evolved_rate >= 10 * uniform_rate
    assert result.sampling_summary()["fresh_attempts_per_valid"] < 1 / uniform_rate
    assert any(r["space_evolved"] for r in result.history)
    assert result.history[-1]["space_entropy"] < 0.9


def test_bad_predictor_output_is_refused(world):
    class NaNPredictor:
        def predict_genomes(self, genomes):
            return np.full(len(genomes), np.nan)

    with pytest.raises(SearchError, match="accuracy predictor returned"):
        search(world["space"], NaNPredictor(), constraint(world, 30.0), EvolutionConfig(**FAST))


def test_configs_refuse_unknown_keys_and_bad_values():
    assert EvolutionConfig.from_dict({"alpha": 0.5}).alpha == 0.5
    default = EvolutionConfig()
    assert (default.num_parents, default.num_mutations, default.num_crossovers) == (25, 50, 25)
    with pytest.raises(ValueError, match="unknown keys.*'alfa'.*known:.*alpha"):
        EvolutionConfig.from_dict({"alfa": 0.5})
    with pytest.raises(ValueError, match="alpha must be in"):
        EvolutionConfig(alpha=1.5)
    assert RefineConfig.from_dict({"tolerance": 0.05}).tolerance == 0.05
    with pytest.raises(ValueError, match="search.refine: unknown keys"):
        RefineConfig.from_dict({"window": 0.05})


def test_names_follow_the_paper():
    assert run_name({"ort_cpu_fp32": 7.6}) == "ort_cpu_fp32@7.6ms"
    assert model_name({"cortex": 150.0}, max_params=5e6) == "ours_cortex@150ms_5M"
    assert run_name({"a": 7.25, "b": 20}, max_macs=4e8) == "a@7.25ms+b@20ms_400MMACs"


# --------------------------------------------------------------------------- meeting the target on the device
def fake_candidates(estimates_and_accs, device="dev"):
    return [Candidate((i,), acc, {f"latency_ms.{device}": est, "params": 1.0, "macs": 1.0})
            for i, (est, acc) in enumerate(estimates_and_accs)]


def test_refine_returns_the_most_accurate_candidate_measured_within_the_window():
    cands = fake_candidates([(9.9, 0.70), (9.8, 0.80), (9.5, 0.75), (9.0, 0.60)])
    measured = {1: 10.4, 2: 9.85, 0: 9.9, 3: 9.0}  # by genome; most accurate (1) is too slow
    calls = []

    def measure(c):
        calls.append(c.genome[0])
        return measured[c.genome[0]]

    out = refine_on_device(cands, measure, 10.0, tolerance=0.03)
    assert out.within and out.chosen.genome == (2,) and out.measured_ms == {"dev": 9.85}
    assert calls == [1, 2]  # in accuracy order, stopping at the first one within
    assert [r["within"] for r in out.records] == [False, True]
    assert out.records[0]["measured_over_estimated"] == pytest.approx(10.4 / 9.8)


def test_refine_retargets_the_search_by_the_measured_ratio(world):
    """The device is 10% slower than the estimator: the first round's candidates all measure
    above the target; the re-search confined to the window's middle half divided by 1.1 finds
    one within [-3%, 0]."""
    space = world["space"]
    target = float(np.percentile(world["lat_a_uniform"], 5))
    config = EvolutionConfig(**{**FAST, "generations": 15})
    first = search(space, world["acc"], constraint(world, target), config)
    asked = []

    def research(targets, floors):
        asked.append((dict(targets), dict(floors)))
        cons = constraint(world, targets["dev_a"]).with_latency_targets(targets, floors)
        return search(space, world["acc"], cons, config).top

    def slow_device(c):
        return {"dev_a": 1.10 * c.latency_ms()["dev_a"]}

    out = refine_on_device(first.top, slow_device, {"dev_a": target}, research=research, measure_top=5)
    assert out.within, out.message
    upper, floors = asked[0]
    assert upper["dev_a"] == pytest.approx(target * (1 - 0.0075) / 1.10)
    assert floors["dev_a"] == pytest.approx(target * (1 - 0.0225) / 1.10)
    assert target * 0.97 <= out.measured_ms["dev_a"] <= target
    assert {r["round"] for r in out.records} == {1, 2}
    second = [r for r in out.records if r["round"] == 2]
    assert all(r["search_floor_ms"] == pytest.approx(floors["dev_a"]) for r in second)


def test_refine_floor_pulls_a_too_fast_favourite_into_the_window(world):
    """The predictor favours subnets far below the target (accuracy *decreases* with latency
    here), so the first round measures far below the window and moving the upper bound alone
    would not help; the floor of the re-search forces candidates into the window."""
    space = world["space"]
    target = float(np.percentile(world["lat_a_uniform"], 30))
    config = EvolutionConfig(**{**FAST, "generations": 10})

    class FavoursFast:
        def predict_genomes(self, genomes):
            return -world["lat_a"].predict_genomes(genomes)

    first = search(space, FavoursFast(), constraint(world, target), config)
    assert max(c.latency_ms()["dev_a"] for c in first.top) < 0.9 * target  # the favourite sits far below

    def research(targets, floors):
        cons = constraint(world, target).with_latency_targets(targets, floors)
        return search(space, FavoursFast(), cons, config).top

    out = refine_on_device(first.top, lambda c: c.latency_ms()["dev_a"], target, research=research)
    assert out.within and out.rounds == 2, out.message
    assert target * 0.97 <= out.measured_ms["dev_a"] <= target


def test_refine_fits_a_line_once_rounds_measured_different_estimates():
    """A device whose error is not a constant ratio (measured = 1.5 * estimated - 3). Round 1
    (estimate 10) measures 12; the ratio 1.2 sends round 2 to 8.27, which measures 9.41 (too
    fast); a ratio again would overshoot to 10.09, but the line through both rounds is exact,
    so round 3's band maps onto the window's middle half and its candidate lands inside."""
    asked = []

    def candidate_at(estimate: float) -> Candidate:  # the re-search's best sits at its upper bound
        return Candidate((len(asked),), 0.5, {"latency_ms.dev": estimate, "params": 1.0, "macs": 1.0})

    def research(targets, floors):
        asked.append((dict(targets), dict(floors)))
        return [candidate_at(targets["dev"])]

    out = refine_on_device([candidate_at(10.0)], lambda c: 1.5 * c.latency_ms()["dev"] - 3.0, 10.0,
                           research=research, max_rounds=5)
    assert out.within and out.rounds == 3, out.message
    assert asked[0][0]["dev"] == pytest.approx(9.925 / 1.2)  # round 2: the ratio
    assert asked[1][0]["dev"] == pytest.approx((9.925 + 3) / 1.5)  # round 3: the line
    assert asked[1][1]["dev"] == pytest.approx((9.775 + 3) / 1.5)
    assert out.measured_ms["dev"] == pytest.approx(9.925)


def test_estimated_for_falls_back_to_the_ratio_until_estimates_differ():
    from nas_core.search_refine import _estimated_for

    same = [{"estimated_ms": 10.0, "measured_ms": 8.0}, {"estimated_ms": 10.1, "measured_ms": 8.1}]
    assert _estimated_for(same, 0.8)(8.0) == pytest.approx(10.0)
    spread = [{"estimated_ms": 8.0, "measured_ms": 6.0}, {"estimated_ms": 10.0, "measured_ms": 8.5}]
    assert _estimated_for(spread, 0.8)(7.0) == pytest.approx(8.8)  # the secant through both points


def test_latency_floor_is_a_constraint(world):
    cons = constraint(world, 10.0).with_latency_targets({"dev_a": 10.0}, {"dev_a": 9.0})
    values = {"latency_ms.dev_a": np.array([8.1, 9.0, 9.5, 11.0])}
    assert cons.violation(values) == pytest.approx([0.1, 0.0, 0.0, 0.1])
    assert cons.describe()["latency_floor_ms"] == {"dev_a": 9.0}
    with pytest.raises(SearchError, match="floor"):
        constraint(world, 10.0).with_latency_targets({"dev_a": 10.0}, {"dev_a": 12.0})


def test_refine_stops_with_a_message_when_the_research_fails():
    cands = fake_candidates([(9.9, 0.7)])

    def research(targets, floors):
        raise SamplingBudgetError("only 0 of 10 valid subnets")

    out = refine_on_device(cands, lambda c: 5.0, 10.0, max_rounds=3, research=research)
    assert not out.within and out.rounds == 1 and "re-search in round 2 failed" in out.message


def test_refine_reports_honestly_when_no_candidate_fits():
    cands = fake_candidates([(9.9, 0.7), (9.8, 0.6)])
    rounds = []
    out = refine_on_device(cands, lambda c: 50.0, 10.0, max_rounds=3,
                           research=lambda t, f: rounds.append(t) or fake_candidates([(9.0, 0.5)]))
    assert not out.within and out.chosen is None and out.rounds == 3 and len(rounds) == 2
    assert "no candidate measured within" in out.message
    with pytest.raises(SearchError, match="one number for several devices"):
        multi = [Candidate((0,), 1.0, {"latency_ms.a": 1.0, "latency_ms.b": 1.0})]
        refine_on_device(multi, lambda c: 1.0, {"a": 1.0, "b": 1.0})


def test_device_measure_fn_times_a_real_subnet():
    """The real path once: SubnetModel -> ONNX -> ONNX Runtime CPU, at resolution 64."""
    import dataclasses

    from nas_core.latency.devices import check_usable, get_profile
    from nas_core.latency.timing import TimingConfig
    from nas_core.search_refine import device_measure_fn

    profile = dataclasses.replace(get_profile("ort_cpu_fp32"), resolution=64)
    if not check_usable(profile).usable:
        pytest.skip(check_usable(profile).reason)
    space = SearchSpace()
    quick = TimingConfig(warmup_runs=2, warmup_ms=5, min_repeats=5, min_total_ms=20, max_total_ms=500)
    measure = device_measure_fn(space, {"ort": profile}, num_classes=10, timing_config=quick)
    cand = Candidate(tuple(int(x) for x in space.encode(space.smallest())), 0.0, {"latency_ms.ort": 1.0})
    ms = measure(cand)
    assert set(ms) == {"ort"} and 0 < ms["ort"] < 1000


# --------------------------------------------------------------------------- outputs and CLI
def test_written_outputs_round_trip(world, tmp_path):
    from nas_core.io import read_parquet, read_provenance
    from nas_core.search_report import is_up_to_date, output_paths, write_search

    space = world["space"]
    cons = constraint(world, 12.5, max_params=5e6)
    result = search(space, world["acc"], cons, EvolutionConfig(**{**FAST, "generations": 5}))
    run = run_name({"dev_a": 12.5}, 5e6)
    paths = write_search(tmp_path, run, space, [result], provenance={"inputs_key": "k1"})
    assert paths == {k: v for k, v in output_paths(tmp_path, run).items() if k != "measured"}
    history = read_parquet(paths["history"])
    assert len(history) == 6 and {"round", "search_target_ms.dev_a", "quality", "space_valid_rate",
                                  "best_latency_ms.dev_a", "best_params", "seconds"} <= set(history.columns)
    assert read_provenance(paths["history"])["inputs_key"] == "k1"
    top = read_parquet(paths["top"])
    assert list(top["rank"]) == list(range(1, len(result.top) + 1))
    assert np.isnan(top["measured_ms.dev_a"]).all()
    assert space.from_json(top["arch_json"][0]).arch_id == top["arch_id"][0]
    record = json.loads(paths["arch"].read_text())
    assert record["name"] == "ours_dev_a@12.5ms_5M"
    assert record["params"] <= 5e6 and record["latency_ms"]["dev_a"] <= 12.5
    assert space.from_dict(record["arch"]).arch_id == record["arch_id"] == top["arch_id"][0]
    assert record["constraints"]["max_params"] == 5e6
    probs = record["sampling_distribution"]
    assert all(math.isclose(sum(p), 1.0, abs_tol=1e-9) for p in probs.values())
    assert is_up_to_date(tmp_path, run, "k1") and not is_up_to_date(tmp_path, run, "k2")
    assert not is_up_to_date(tmp_path, run, "k1", need_refine=True)


def _cli_stand_ins(monkeypatch, world, tmp_path):
    """Point the search's loaders at the stand-ins (files must exist: the set-up hashes them)."""
    import nas_core.search_run as search_run

    predictor = tmp_path / "predictor.pt"
    predictor.write_bytes(b"stand-in")
    lut_dir = tmp_path / "lut"
    lut_dir.mkdir()
    for device in ("ort_cpu_fp32", "openvino_cpu_fp32"):
        for suffix in (".parquet", ".fit.json"):
            (lut_dir / f"{device}{suffix}").write_text("stand-in")
    estimators = {"ort_cpu_fp32": world["lat_a"], "openvino_cpu_fp32": world["lat_b"]}
    monkeypatch.setenv("SCAN_EDGE_CPU_LOCK", str(tmp_path / "cpu.lock"))  # not the machine's lock
    monkeypatch.setattr(search_run, "load_accuracy_predictor", lambda path, space=None: world["acc"])
    monkeypatch.setattr(search_run, "load_latency_estimator",
                        lambda device, lut, profile, space=None, fit=None: estimators[device])
    monkeypatch.setattr(search_run, "device_measure", lambda setup, accesses=None, run="", lock=None:
                        lambda c: {d: 1.02 * ms for d, ms in c.latency_ms().items()})
    return ["--predictor", str(predictor), "--lut-dir", str(lut_dir), "--out-dir", str(tmp_path / "search"),
            "--generations", "20", "--population", "30"]


def test_cli_names_the_missing_artifact_and_the_command_that_makes_it(tmp_path, capsys, monkeypatch, world):
    import nas_core.search_run as search_run
    from flows.cli import main

    base = ["search", "--device", "ort_cpu_fp32", "--latency-ms", "7", "--out-dir", str(tmp_path)]
    assert main(base + ["--predictor", str(tmp_path / "none.pt")]) == 2
    assert "scan-edge fit-predictor" in capsys.readouterr().err
    predictor = tmp_path / "p.pt"
    predictor.write_bytes(b"x")
    monkeypatch.setattr(search_run, "load_accuracy_predictor", lambda path, space=None: world["acc"])
    args = base + ["--predictor", str(predictor), "--lut-dir", str(tmp_path)]
    assert main(args) == 2
    assert "scan-edge lut build --device ort_cpu_fp32" in capsys.readouterr().err
    (tmp_path / "ort_cpu_fp32.parquet").write_text("x")
    assert main(args) == 2
    assert "scan-edge lut calibrate --device ort_cpu_fp32" in capsys.readouterr().err
    assert main(["search", "--device", "a", "--latency-ms", "7", "--device", "b"]) == 2
    assert "one --latency-ms per --device" in capsys.readouterr().err


def test_cli_search_measure_and_resume(tmp_path, capsys, monkeypatch, world):
    from flows.cli import main

    common = _cli_stand_ins(monkeypatch, world, tmp_path)
    target_a = float(np.percentile(world["lat_a_uniform"], 5))
    target_b = float(np.percentile(world["lat_b"].predict_genomes(world["uniform"]), 20))
    argv = ["search", "--device", "ort_cpu_fp32", "--latency-ms", f"{target_a:.2f}",
            "--device", "openvino_cpu_fp32", "--latency-ms", f"{target_b:.2f}", "--params-m", "6", "--measure", *common]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    run = f"ort_cpu_fp32@{target_a:.2f}ms+openvino_cpu_fp32@{target_b:.2f}ms_6M"
    record = json.loads((tmp_path / "search" / f"{run}.arch.json").read_text())
    assert record["name"] == "ours_" + run
    assert record["refine"]["within"] and set(record["measured_ms"]) == {"ort_cpu_fp32", "openvino_cpu_fp32"}
    targets = {"ort_cpu_fp32": round(target_a, 2), "openvino_cpu_fp32": round(target_b, 2)}
    # Several devices: at most the target on each, within [-3%, 0] on at least one (the binding one).
    assert all(record["measured_ms"][d] <= t for d, t in targets.items())
    assert any(record["measured_ms"][d] >= 0.97 * t for d, t in targets.items())
    assert (tmp_path / "search" / f"{run}.measured.parquet").exists() and "wrote" in out
    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out


def test_cli_sweep_writes_the_front(tmp_path, capsys, monkeypatch, world):
    from flows.cli import main
    from nas_core.io import read_parquet

    common = _cli_stand_ins(monkeypatch, world, tmp_path)
    targets = [f"{np.percentile(world['lat_a_uniform'], q):.2f}" for q in (3, 30)]
    assert main(["search-sweep", "--device", "ort_cpu_fp32", "--latency-ms", *targets, *common]) == 0
    front = read_parquet(tmp_path / "search" / "front_ort_cpu_fp32.parquet")
    assert list(front["target_ms"]) == [float(t) for t in targets]
    assert (front["latency_ms"] <= front["target_ms"]).all()
    assert front["predicted_accuracy"].is_monotonic_increasing  # a looser target never loses accuracy
    assert (tmp_path / "search" / "front_ort_cpu_fp32.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- the second calibration round's subnets
def test_second_calibration_round_measures_what_the_search_itself_would_pick(world, tmp_path, monkeypatch, capsys):
    """``recalibration``'s subnets: the search stage's own evolution on the *first* round's fit, one per
    target over the band, each under its target, new to the first round, alternately calibration and
    held out; a target below the fastest subnet is skipped with a message."""
    import pandas as pd

    import nas_core.search_run as search_run
    from nas_core.io import write_parquet
    from nas_core.latency.calibration import RecalibrationSettings
    from nas_core.params import load_params
    from tasks.stages import Layout
    from tasks.stages.recalibration import searched_subnets

    params = load_params("params.yaml", "smoke")
    layout, device, latency = Layout(tmp_path / "data"), "ort_cpu_fp32", world["lat_a"]
    paths = layout.lut_paths(device)
    for path in (paths.lut, paths.fit, paths.second_round().fit, layout.predictor):  # the set-up hashes them
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("stand-in")
    fits_read = []
    monkeypatch.setattr(search_run, "load_accuracy_predictor", lambda path, space=None: world["acc"])
    monkeypatch.setattr(search_run, "load_latency_estimator",
                        lambda device, lut, profile, space=None, fit=None: fits_read.append(fit) or latency)
    reference_ms = latency.min_value() / 0.7  # 0.6x of it lies below the fastest subnet
    settings = RecalibrationSettings(subnets=5, band=(0.6, 1.8))
    write_parquet(paths.calibration, pd.DataFrame({"arch_id": ["not-searched"]}))

    chosen, targets = searched_subnets(params, device, layout, settings, reference_ms)
    assert "skipping" in capsys.readouterr().out and len(targets) == len(chosen) == 4
    assert targets == [round(k * reference_ms, 3) for k in (0.9, 1.2, 1.5, 1.8)]
    assert set(fits_read) == {paths.fit}, "searched on the first round's fit, whatever the second round holds"
    assert [c.role for c in chosen] == ["calibration", "validation"] * 2 and {c.origin for c in chosen} == {"searched"}
    estimates = [float(latency.predict_genomes(world["space"].encode(c.arch)[None])[0]) for c in chosen]
    assert all(estimate <= target for estimate, target in zip(estimates, targets))
    assert estimates == sorted(estimates) and len({c.arch.arch_id for c in chosen}) == 4
    # A subnet the first round already measured is not measured again: the others are the same searches' picks.
    write_parquet(paths.calibration, pd.DataFrame({"arch_id": [chosen[1].arch.arch_id]}))
    again, targets_again = searched_subnets(params, device, layout, settings, reference_ms)
    assert [c.arch.arch_id for c in again] == [c.arch.arch_id for i, c in enumerate(chosen) if i != 1]
    assert targets_again == [t for i, t in enumerate(targets) if i != 1]
