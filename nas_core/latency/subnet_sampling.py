"""Which subnets to measure end to end, to calibrate a LUT and to check the calibration.

Three samplings (``SAMPLINGS``):

* ``uniform``: the paper's "random subnets" (§5.3): uniform genomes. On Table 2 they sit at
  3-8x MobileNetV2's latency, far from where the searches land (0.75-1.5x), so a line
  fitted there is extrapolated to the searches' targets.
* ``stratified``: calibration subnets at evenly spaced quantiles of the raw LUT sum of
  20 000 uniform genomes (the same range, evenly covered).
* ``band`` (the default of both params profiles): subnets whose raw LUT sum lies in a band
  around the device's MobileNetV2 latency (``band`` = (0.5, 2.0) times it), evenly spread
  over the band, plus a few outside it (``outside``, ×0.5 below and ×2 above the band) so
  that the fit does not end at the band's edges. Such subnets are rare among uniform
  genomes; :func:`band_genomes` draws them from per-gene distributions tilted toward cheap
  choices (``exp(-τ · cost)``, the cost of a choice being how much it moves the mean raw
  LUT sum of a uniform pool), over a range of tilts τ, and then picks evenly spaced raw sums.

With ``band``, a share of the in-band subnets (``Frontier.share``, both roles) can come from
where the searches themselves land instead: the tilted draws are cheap everywhere, while a
search returns the most accurate subnet under its target, wide where accuracy pays and cheap
elsewhere, a kind of subnet the band holds few of. On run 11 the band-fitted model missed
searched subnets by 4.9-5.2 % MAPE against 1.4-1.6 % on its band held-out subnets
(``benchmarks/frontier_fidelity.py``). :func:`frontier_genomes` runs short evolutionary
searches (the search stage's own ``EvolutionFinder``) on the raw LUT sum at targets spread
over the band. The calibration runs before any accuracy predictor exists, so each search
maximises a stand-in for accuracy: a mix of MACs, parameters, self-attention layers and
block widths, a fresh mix per target (Dirichlet weights), so that the subnets differ in how
they spend their latency. Attention and width are in the mix because the searches keep them
(searched networks hold up to six MHSA layers and stage 4 at its widest) while MACs and
parameters alone pick no attention, and the subnets without it were the ones the calibrated
LUT missed on OpenVINO.

Validation (held-out) subnets never repeat a calibration subnet and come from their own
random stream; with ``band`` they are all inside the band (the region the accuracy targets
are defined on), otherwise uniform.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from nas_core.block_catalog import BlockCatalog
from nas_core.search_algorithm import EvolutionConfig, EvolutionFinder, SamplingDistribution
from nas_core.search_constraints import BlockTableEstimator, Constraints, LatencyConstraint, SamplingBudgetError
from nas_core.search_space import ArchConfig, SearchSpace

SAMPLINGS = ("uniform", "stratified", "band")
ROLES = ("calibration", "validation")
# uniform / stratified / band: drawn by that sampling; outside: beyond the band (calibration only);
# frontier: from a quick search (Frontier); searched: from a search with the accuracy predictor on the
# calibrated LUT (the second calibration round, calibration.recalibrate); given: chosen by the caller
ORIGINS = ("uniform", "stratified", "band", "outside", "frontier", "searched", "given")
DEFAULT_BAND = (0.5, 2.0)  # x MobileNetV2's measured latency: the searches' 0.75-1.5x targets and margin
DEFAULT_OUTSIDE = 0.2       # share of calibration subnets outside the band

ATTENTION_KINDS = ("mhsa", "esha")          # the stand-in's attention layers (esha: the extended space)
WIDE_KINDS = ("ffn", "mhsa", "esha")         # blocks whose width the stand-in's width term counts

RawSum = Callable[[np.ndarray], np.ndarray]  # genomes -> raw LUT sum (ms)


@dataclasses.dataclass(frozen=True)
class SubnetChoice:
    """A subnet to measure end to end, and what it is for (``calibration`` or ``validation``)."""

    arch: ArchConfig
    role: str
    origin: str = "given"  # how it was chosen (ORIGINS): the held-out figures are also given per origin

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {self.origin!r}")

    @property
    def id(self) -> str:
        """Its model id in timing tables (never a block id: those have no ``subnet/`` prefix)."""
        return f"subnet/{self.arch.arch_id}"


@dataclasses.dataclass(frozen=True)
class Band:
    """Raw-LUT-sum window (ms) the band sampling fills: ``reference_ms`` x (``low``, ``high``)."""

    reference_ms: float
    low: float = DEFAULT_BAND[0]
    high: float = DEFAULT_BAND[1]

    def __post_init__(self):
        if not (self.reference_ms > 0 and 0 < self.low < self.high):
            raise ValueError(f"a band needs reference_ms > 0 and 0 < low < high, got {self}")

    @property
    def ms(self) -> tuple[float, float]:
        return self.low * self.reference_ms, self.high * self.reference_ms


@dataclasses.dataclass(frozen=True)
class Frontier:
    """Quick searches on the raw LUT sum (``block_ms`` over ``catalog``) supply ``share`` of the
    band's subnets, in both roles; each search has the evolution's own knobs, made small."""

    catalog: BlockCatalog
    block_ms: np.ndarray
    share: float  # calibration.frontier (CalibrationSettings; 0.5 in params.yaml)
    population_size: int = 48
    generations: int = 12
    max_sampling_attempts: int = 100_000  # per search; a target no search fits in this is left to the band

    def __post_init__(self):
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"the frontier share must be in [0, 1], not {self.share!r}")

    def count(self, n: int) -> int:
        return int(round(n * self.share))


def choose_subnets(space: SearchSpace, n_calibration: int = 10, n_validation: int = 30, seed: int = 0,
                   sampling: str = "uniform", raw_sum_ms: RawSum | None = None, band: Band | None = None,
                   outside: float = DEFAULT_OUTSIDE, pool_size: int = 20_000,
                   frontier: Frontier | None = None) -> list[SubnetChoice]:
    """Calibration and validation subnets (see the module docstring); distinct architectures,
    each with its ``origin`` (``ORIGINS``).

    ``stratified`` and ``band`` need ``raw_sum_ms`` (a complete LUT); ``band`` also ``band``;
    ``frontier`` (band only) draws part of the band's subnets from quick searches.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")
    if n_calibration < 2 or n_validation < 0:
        raise ValueError(f"need n_calibration >= 2 (a line needs two points) and n_validation >= 0, "
                         f"got {n_calibration} and {n_validation}")
    if sampling != "uniform" and raw_sum_ms is None:
        raise ValueError(f"{sampling} sampling needs the raw LUT sum (a complete LUT)")
    if frontier is not None and sampling != "band":
        raise ValueError(f"frontier subnets fill the band: they need band sampling, not {sampling!r}")
    taken: set = set()
    if sampling == "uniform":
        calibration = _labelled(_distinct_uniform(space, n_calibration, np.random.default_rng([seed, 0]), taken),
                                "uniform")
    elif sampling == "stratified":
        pool = space.sample_genomes(pool_size, np.random.default_rng([seed, 0]))
        order = np.argsort(raw_sum_ms(pool), kind="stable")
        picks = order[np.unique(np.linspace(0, pool_size - 1, n_calibration).round().astype(int))]
        calibration = _labelled(_distinct(pool[picks], taken)[:n_calibration], "stratified")
    else:
        if band is None:
            raise ValueError("band sampling needs the band (the device's MobileNetV2 latency)")
        calibration = _band_calibration(space, raw_sum_ms, band, n_calibration, outside, seed, taken, frontier)
    if sampling == "band":
        validation = _band_and_frontier(space, raw_sum_ms, band.ms, n_validation, [seed, 1], taken, frontier)
    else:
        validation = _labelled(_distinct_uniform(space, n_validation, np.random.default_rng([seed, 1]), taken),
                               "uniform")
    return ([SubnetChoice(space.decode(g), "calibration", origin) for g, origin in calibration]
            + [SubnetChoice(space.decode(g), "validation", origin) for g, origin in validation])


def _labelled(genomes: list[np.ndarray], origin: str) -> list[tuple[np.ndarray, str]]:
    return [(genome, origin) for genome in genomes]


def _band_calibration(space, raw_sum_ms, band: Band, n: int, outside: float, seed: int, taken: set,
                      frontier: Frontier | None) -> list[tuple[np.ndarray, str]]:
    low_ms, high_ms = band.ms
    n_out = int(round(n * outside))
    n_below = n_out // 2  # the rest goes above the band (the space may reach nothing below it)
    rng = np.random.default_rng([seed, 0])
    chosen = _band_and_frontier(space, raw_sum_ms, (low_ms, high_ms), n - n_out, [seed, 0], taken, frontier, rng)
    below = band_genomes(space, raw_sum_ms, (low_ms / 2, low_ms), n_below, rng, taken, required=False)
    above = band_genomes(space, raw_sum_ms, (high_ms, high_ms * 2), n - len(chosen) - len(below), rng, taken,
                         required=False)
    return chosen + _labelled(below + above, "outside")


def _band_and_frontier(space, raw_sum_ms, window_ms, n: int, stream: list[int], taken: set,
                       frontier: Frontier | None, rng: np.random.Generator | None = None
                       ) -> list[tuple[np.ndarray, str]]:
    """``n`` in-band genomes: ``frontier.count(n)`` of them searched, the rest tilted draws."""
    n_searched = frontier.count(n) if frontier is not None else 0
    searched = frontier_genomes(space, frontier, window_ms, n_searched, stream, taken) if n_searched else []
    rng = rng if rng is not None else np.random.default_rng(stream)
    drawn = band_genomes(space, raw_sum_ms, window_ms, n - len(searched), rng, taken)
    return _labelled(searched, "frontier") + _labelled(drawn, "band")


def frontier_genomes(space: SearchSpace, frontier: Frontier, window_ms: tuple[float, float], n: int,
                     stream: Sequence[int], taken: set) -> list[np.ndarray]:
    """Up to ``n`` distinct genomes (not in ``taken``, which is updated) from short searches at
    raw LUT sums evenly spread over ``window_ms``: each the most "accurate" subnet under its
    target by a stand-in score, a random mix of MACs, parameters, attention layers and widths
    (module docstring). A target whose search finds no valid subnet gives none."""
    catalog = frontier.catalog
    lut_sum = BlockTableEstimator(catalog, frontier.block_ms, name="lut_sum")
    low, high = max(window_ms[0], 1.02 * lut_sum.min_value()), window_ms[1]  # the space's floor: nothing to search
    if high <= low:
        raise ValueError(f"no subnet has a raw LUT sum in [{window_ms[0]:.2f}, {window_ms[1]:.2f}] ms: the fastest "
                         f"is {lut_sum.min_value():.2f} ms")
    rng = np.random.default_rng([*stream, 2])
    tables = _stand_in_tables(space, catalog, rng)
    starts = _starting_distributions(space, lut_sum.predict_genomes, rng)
    spacing = (high - low) / (n + 1)
    chosen: list[np.ndarray] = []
    for target in np.linspace(low, high, n + 2)[1:-1]:
        weights = rng.dirichlet(np.ones(len(tables)))
        stand_in = BlockTableEstimator(catalog, sum(w * table for w, table in zip(weights, tables.values())),
                                       name="accuracy stand-in")
        # The floor keeps each subnet near its own target (a short search may stop below it).
        constraints = Constraints(catalog, [LatencyConstraint("lut_sum", float(target), lut_sum,
                                                              floor_ms=float(target - spacing))])
        config = EvolutionConfig(population_size=frontier.population_size, generations=frontier.generations,
                                 probe_samples=0, max_sampling_attempts=frontier.max_sampling_attempts,
                                 seed=int(rng.integers(2**31)))
        result = _search_from(starts, space, stand_in, constraints, config)
        fresh = [g for g in (np.asarray(c.genome, dtype=np.int64) for c in (result.top if result else []))
                 if g.tobytes() not in taken]
        if fresh:
            taken.add(fresh[0].tobytes())
            chosen.append(fresh[0])
    return chosen


def _starting_distributions(space: SearchSpace, raw_sum_ms: RawSum, rng: np.random.Generator) -> list:
    """Where a search starts: uniform, as the search stage does; then, for targets near the
    fastest subnet that uniform draws almost never meet, per-gene tilts toward cheap choices."""
    costs = choice_costs(space, raw_sum_ms, rng)
    spread = max(float(np.ptp(np.concatenate(list(costs.values())))), 1e-9)
    tilted = [SamplingDistribution.from_dict(space, {name: _softmin(cost, tau / spread)
                                                     for name, cost in costs.items()}) for tau in (4.0, 16.0)]
    return [SamplingDistribution.uniform(space), *tilted]


def _search_from(starts, space, score, constraints, config):
    """The first search that finds enough valid subnets from one of ``starts`` (None: none did)."""
    for start in starts:
        try:
            return EvolutionFinder(space, score, constraints, config, initial_distribution=start).run()
        except SamplingBudgetError:
            continue
    return None


def _stand_in_tables(space: SearchSpace, catalog: BlockCatalog, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The stand-in's per-block tables (MACs, parameters, attention layers, widths), each divided
    by its mean sum over uniform subnets, so that a mix weighs them alike."""
    pool = space.sample_genomes(256, rng)
    tables = {"macs": catalog.macs_table().astype(np.float64), "params": catalog.params_table().astype(np.float64),
              "attention": np.array([block.kind in ATTENTION_KINDS for block in catalog.blocks], dtype=np.float64),
              "width": np.array([block.out_width if block.kind in WIDE_KINDS else 0 for block in catalog.blocks],
                                dtype=np.float64)}
    return {name: table / catalog.sum_table(table, pool).mean() for name, table in tables.items()}


def band_genomes(space: SearchSpace, raw_sum_ms: RawSum, window_ms: tuple[float, float], n: int,
                 rng: np.random.Generator, taken: set, pool_per_tilt: int = 4_000,
                 required: bool = True) -> list[np.ndarray]:
    """``n`` distinct genomes (not in ``taken``, which is updated) with raw LUT sums evenly
    spread over ``window_ms``: the pool of tilted draws is sorted by raw sum and the genome
    closest to each of ``n`` evenly spaced sums is taken.

    ``required``: raise when the window holds fewer than ``n`` distinct genomes (e.g. it lies
    below the fastest subnet); otherwise return what there is.
    """
    if n <= 0:
        return []
    low, high = window_ms
    pool = tilted_pool(space, raw_sum_ms, rng, pool_per_tilt)
    sums = raw_sum_ms(pool)
    low, high = max(low, float(sums.min())), min(high, float(sums.max()))  # what the space can reach
    inside = (sums >= low) & (sums <= high)
    pool, sums = pool[inside], sums[inside]
    order = np.argsort(sums, kind="stable")
    pool, sums = pool[order], sums[order]
    chosen: list[np.ndarray] = []
    for wanted in np.linspace(low, high, n + 2)[1:-1] if n > 1 else [(low + high) / 2]:
        for index in np.argsort(np.abs(sums - wanted), kind="stable"):
            key = pool[index].tobytes()
            if key not in taken:
                taken.add(key)
                chosen.append(pool[index])
                break
    if required and len(chosen) < n:
        raise ValueError(f"only {len(chosen)} distinct subnets have a raw LUT sum in [{low:.2f}, {high:.2f}] ms, "
                         f"{n} wanted (the fastest subnet may be slower than the band's low end: widen the band "
                         f"or lower the count)")
    return chosen


def tilted_pool(space: SearchSpace, raw_sum_ms: RawSum, rng: np.random.Generator,
                per_tilt: int = 4_000, tilts: int = 12) -> np.ndarray:
    """Genomes from per-gene distributions ``p(choice) ∝ exp(-τ · cost(choice))`` for ``tilts``
    values of τ from 0 (uniform) up to nearly always the cheapest choice."""
    costs = choice_costs(space, raw_sum_ms, rng)
    spread = max(float(np.ptp(np.concatenate(list(costs.values())))), 1e-9)
    pools = []
    for tau in np.r_[0.0, np.geomspace(0.5, 40.0, tilts - 1)] / spread:
        probs = {name: _softmin(cost, tau) for name, cost in costs.items()}
        pools.append(space.sample_genomes(per_tilt, rng, probs))
    return descend(space, raw_sum_ms, np.concatenate(pools), rng)


def descend(space: SearchSpace, raw_sum_ms: RawSum, pool: np.ndarray, rng: np.random.Generator,
            rounds: int = 6, parents: int = 64, children: int = 16) -> np.ndarray:
    """``pool`` plus mutants walking down from its cheapest genomes (1-3 genes re-drawn each),
    so the band's low end near the fastest subnet is reached even where the per-gene costs,
    an additive approximation, miss how widths and blocks interact."""
    for _ in range(rounds):
        cheapest = pool[np.argsort(raw_sum_ms(pool), kind="stable")[:parents]]
        mutants = np.repeat(cheapest, children, axis=0)
        fresh = space.sample_genomes(len(mutants), rng)
        for _ in range(3):
            genes = rng.integers(0, mutants.shape[1], len(mutants))
            keep = rng.random(len(mutants)) < 0.6
            rows = np.flatnonzero(keep)
            mutants[rows, genes[rows]] = fresh[rows, genes[rows]]
        pool = np.concatenate([pool, space.canonicalize(mutants)])
    return pool


def choice_costs(space: SearchSpace, raw_sum_ms: RawSum, rng: np.random.Generator,
                 pool_size: int = 4_000) -> dict[str, np.ndarray]:
    """Per gene, each choice's mean raw LUT sum over a uniform pool minus the gene's mean."""
    pool = space.sample_genomes(pool_size, rng)
    sums = raw_sum_ms(pool)
    costs = {}
    for index, gene in enumerate(space.genes):
        means = np.array([sums[pool[:, index] == c].mean() if (pool[:, index] == c).any() else sums.mean()
                          for c in range(len(gene.choices))])
        costs[gene.name] = means - means.mean()
    return costs


def _softmin(cost: np.ndarray, tau: float) -> np.ndarray:
    logits = -tau * (cost - cost.min())
    weights = np.exp(logits)
    return weights / weights.sum()


def _distinct_uniform(space: SearchSpace, n: int, rng: np.random.Generator, exclude: set) -> list[np.ndarray]:
    chosen: list[np.ndarray] = []
    while len(chosen) < n:
        chosen += _distinct(space.sample_genomes(n - len(chosen), rng), exclude)
    return chosen


def _distinct(genomes: np.ndarray, exclude: set) -> list[np.ndarray]:
    """Genomes not seen before (``exclude`` is updated)."""
    out = []
    for genome in genomes:
        key = genome.tobytes()
        if key not in exclude:
            exclude.add(key)
            out.append(genome)
    return out
