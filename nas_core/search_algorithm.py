"""Hardware-aware evolutionary search with search-space evolution (paper §5.1, §5.4, Suppl. S8).

The search maximises predicted accuracy subject to constraints (Eq. 1): calibrated latency on
one device or on several at once, parameter count, optionally MACs. It works on *genomes*
(:attr:`SearchSpace.genes`), fully vectorised with numpy: a generation is a handful of array
operations on [N, 140] integer matrices, never a Python loop over architectures.

The algorithm (Once-for-All's evolution finder, which follows Real et al.'s regularised
evolution, plus the paper's search-space evolution)::

    P  <- uniform per-gene categorical tables            (the sampling space)
    population <- `population_size` valid subnets drawn from P
    for each generation:
        parents <- top-k of the population by predicted accuracy      (k = parent_ratio * size)
        Q <- mean predicted accuracy of the parents                    (search space quality)
        if Q > Q of the current space:                                 (§5.4)
            P <- alpha * P + (1 - alpha) * P_top-k                     (Theorem 1: still a distribution)
        children <- mutations (genes redrawn from P with mutate_prob) and
                    crossovers (gene-wise coin flip between two parents); valid ones only
                    (all constraints met), drawn until there are enough, attempts counted
        population <- parents + children
    return the top-k; the best is the top-1

Design decisions the paper leaves open, each documented where it is implemented:

* ``P_top-k`` counts, for each gene, only the top-k subnets in which that gene is *active*
  (a block gene beyond its stage's depth, or an MHSA knob where no MHSA is present, carries
  no choice). A gene active in none of them keeps its P.
* Inactive genes are canonically 0; before mutation and crossover they are refilled from P,
  so that a child whose depth grows does not inherit a bias towards choice 0.
* The population is de-duplicated before selection, so the top-k (and thus Q and P_top-k)
  never consist of copies of one subnet.
* Drawing the *initial* population at a tight target from the uniform space needs
  exponentially many attempts (Fig. 4a, blue). With evolution on, the same moving average
  also steers P while it is being sampled: while batches yield too few valid subnets, P moves
  towards the k draws so far closest to feasibility (smallest relative constraint violation)
  whenever their mean violation improves. With ``evolve_space=False`` the space stays uniform.

Constraint targets below the smallest achievable value fail at once
(:class:`InfeasibleConstraintError`, naming the lowest achievable value); sampling that hits
``max_sampling_attempts`` fails with :class:`SamplingBudgetError` instead of hanging.

After the search, :func:`nas_core.search_refine.refine_on_device` measures the best candidates
on the device itself and returns the most accurate one whose measured latency is within
[target - 3%, target], re-targeting the search by how far the measurements fell from the window
when none is. The constraints and the scorer interfaces are :mod:`nas_core.search_constraints`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .search_constraints import (AccuracyScorer, Constraints, SamplingBudgetError, SearchError, describe_metric,
                                 format_metric)
from .search_space import ArchConfig, SearchSpace

PROB_ATOL = 1e-9  # Theorem 1 check: probabilities >= 0 and summing to 1 per gene, within this


# --------------------------------------------------------------------------- the sampling space
class SamplingDistribution:
    """One categorical distribution per gene (per block position and knob): the search space
    that §5.4 evolves. ``probs`` is [G, C] (C = most choices of any gene; columns beyond a
    gene's choices are 0). Immutable: updates return a new object."""

    def __init__(self, space: SearchSpace, probs: np.ndarray):
        self.space = space
        self.probs = np.array(probs, dtype=float)
        self.probs.setflags(write=False)
        self.validate()
        self._cdf = np.cumsum(self.probs, axis=1)
        self._last = space.num_choices - 1

    @classmethod
    def uniform(cls, space: SearchSpace) -> "SamplingDistribution":
        return cls.from_dict(space, space.uniform_probs())

    @classmethod
    def from_dict(cls, space: SearchSpace, probs: Mapping[str, Sequence[float]]) -> "SamplingDistribution":
        missing = [g.name for g in space.genes if g.name not in probs]
        if missing:
            raise ValueError(f"sampling distribution lacks genes {missing[:5]}{'...' if len(missing) > 5 else ''}")
        table = np.zeros((len(space.genes), int(space.num_choices.max())))
        for i, gene in enumerate(space.genes):
            p = np.asarray(probs[gene.name], dtype=float)
            if p.shape != (len(gene.choices),):
                raise ValueError(f"probs[{gene.name!r}] has {p.size} entries; the gene has {len(gene.choices)} choices")
            table[i, :len(p)] = p
        return cls(space, table)

    def to_dict(self) -> dict[str, list[float]]:
        """Gene name -> probabilities (the format of ``SearchSpace.sample_genomes(probs=...)``)."""
        return {g.name: self.probs[i, :len(g.choices)].tolist() for i, g in enumerate(self.space.genes)}

    def validate(self, atol: float = PROB_ATOL) -> None:
        """Theorem 1, checked: every gene's row is non-negative, zero beyond its choices and
        sums to 1 within ``atol``."""
        p, n = self.probs, self.space.num_choices
        if p.shape != (len(n), int(n.max())):
            raise ValueError(f"probability table has shape {p.shape}, expected {(len(n), int(n.max()))}")
        beyond = np.arange(p.shape[1])[None, :] >= n[:, None]
        bad = (p < -atol).any(axis=1) | (np.abs(p.sum(axis=1) - 1) > atol) | (np.abs(p) * beyond > atol).any(axis=1)
        if not np.isfinite(p).all() or bad.any():
            gene = self.space.genes[int(np.flatnonzero(bad | ~np.isfinite(p).all(axis=1))[0])]
            raise ValueError(f"probabilities of gene {gene.name!r} are not a distribution over "
                             f"{len(gene.choices)} choices: {self.probs[self.space.gene_index[gene.name]]}")

    def sample_raw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` genomes with every gene drawn (inactive genes too): inverse-CDF sampling of all
        genes at once. Not canonical; see :meth:`sample`."""
        u = rng.random((n, self._cdf.shape[0]))
        drawn = np.zeros(u.shape, dtype=np.int64)
        for column in self._cdf[:, :-1].T:  # at most 3 thresholds: cheaper than an [n, G, C] array
            drawn += u >= column
        return np.minimum(drawn, self._last[None, :])  # float round-off can leave the last cdf < 1

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` canonical genomes (equivalent to ``space.sample_genomes(n, rng, self.to_dict())``,
        ~10x faster)."""
        return self.space.canonicalize(self.sample_raw(n, rng))

    def refill_inactive(self, genomes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Redraw the inactive (canonically 0) genes from the distribution."""
        return np.where(self.space.active_mask(genomes), genomes, self.sample_raw(len(genomes), rng))

    def choice_frequencies(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene choice frequencies over ``genomes``, counting a gene only in the genomes
        where it is active: ([G, C] frequencies, [G] bool 'counted in at least one'). Genes
        counted nowhere get their current probabilities, so a moving average keeps them."""
        genomes = np.atleast_2d(genomes)
        active = self.space.active_mask(genomes)
        num_genes, width = self.probs.shape
        flat = (np.arange(num_genes)[None, :] * width + genomes)[active]
        counts = np.bincount(flat, minlength=num_genes * width).reshape(num_genes, width).astype(float)
        totals = active.sum(axis=0)
        counted = totals > 0
        freq = np.where(counted[:, None], counts / np.maximum(totals, 1)[:, None], self.probs)
        return freq, counted

    def moved_toward(self, genomes: np.ndarray, alpha: float) -> "SamplingDistribution":
        """§5.4's update: ``P <- alpha * P + (1 - alpha) * P_top-k`` with ``P_top-k`` the choice
        frequencies of ``genomes`` (:meth:`choice_frequencies`)."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        freq, _ = self.choice_frequencies(genomes)
        return SamplingDistribution(self.space, alpha * self.probs + (1.0 - alpha) * freq)

    def entropy(self) -> float:
        """Mean over genes of the entropy normalised by log(#choices): 1 = uniform, 0 = fixed."""
        p = self.probs
        logs = np.log(np.where(p > 0, p, 1.0))
        return float(np.mean(-(p * logs).sum(axis=1) / np.log(self.space.num_choices)))


# --------------------------------------------------------------------------- search configuration
@dataclass(frozen=True)
class EvolutionConfig:
    """Knobs of the search; the defaults are Once-for-All's evolution finder (population 100,
    parents 25%, mutation 50% of the children, per-gene mutation probability 0.1) with the
    paper's search-space evolution on."""

    population_size: int = 100
    parent_ratio: float = 0.25  # top-k = parent_ratio * population_size
    mutation_ratio: float = 0.5  # share of the population made by mutation; the rest of the children by crossover
    mutate_prob: float = 0.1  # per-gene probability of redrawing a gene from P
    generations: int = 100
    # Moving-average weight of the current P (§5.4; the paper gives no value). 0.95 had the best
    # or near-best final accuracy across targets with the stand-ins; 0.8-0.9 converged too early.
    alpha: float = 0.95
    evolve_space: bool = True  # the paper's search-space evolution; False = fixed uniform space (Fig. 4, blue)
    sample_batch: int = 1024  # candidates drawn at once when sampling from P
    max_sampling_attempts: int = 2_000_000  # per request for valid subnets; then SamplingBudgetError
    probe_samples: int = 256  # fresh draws per generation that measure P's valid rate (0: off)
    seed: int = 0

    def __post_init__(self):
        if self.population_size < 2:
            raise ValueError("population_size must be >= 2")
        if not 0 < self.parent_ratio <= 1 or self.num_parents < 1:
            raise ValueError(f"parent_ratio {self.parent_ratio} gives {self.num_parents} parents; need >= 1")
        if not 0 <= self.mutation_ratio <= 1 - self.parent_ratio + 1e-12:
            raise ValueError("mutation_ratio must be in [0, 1 - parent_ratio]")
        for name in ("mutate_prob", "alpha"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        for name, least in (("generations", 0), ("probe_samples", 0), ("sample_batch", 1),
                            ("max_sampling_attempts", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be >= {least}, got {getattr(self, name)}")

    @property
    def num_parents(self) -> int:
        return max(1, int(round(self.population_size * self.parent_ratio)))

    @property
    def num_mutations(self) -> int:
        return int(round(self.population_size * self.mutation_ratio))

    @property
    def num_crossovers(self) -> int:
        return self.population_size - self.num_parents - self.num_mutations

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "EvolutionConfig":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"search.evolution: unknown keys {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class Candidate:
    """One searched subnet: its genome, predicted accuracy and estimated metrics
    (``latency_ms.<device>``, ``params``, ``macs``)."""

    genome: tuple[int, ...]
    predicted_accuracy: float
    metrics: Mapping[str, float]

    def arch(self, space: SearchSpace) -> ArchConfig:
        return space.decode(np.asarray(self.genome))

    def latency_ms(self) -> dict[str, float]:
        return {k.split(".", 1)[1]: v for k, v in self.metrics.items() if k.startswith("latency_ms.")}


@dataclass
class SearchResult:
    """What :meth:`EvolutionFinder.run` returns. ``history`` has one dict per generation
    (schema in ``nas_core.search_report``); ``top`` is the final top-k, best first."""

    top: list[Candidate]
    history: list[dict]
    distribution: SamplingDistribution
    constraints: Constraints
    config: EvolutionConfig
    lowest_achievable: dict[str, float]
    seconds: float

    @property
    def best(self) -> Candidate:
        return self.top[0]

    def sampling_summary(self) -> dict[str, float]:
        """Fresh-sample attempts per valid subnet over the whole search (Fig. 4's y-axis) and in
        the final space (probe)."""
        fresh = sum(r["fresh_attempts"] for r in self.history)
        valid = sum(r["fresh_valid"] for r in self.history)
        last = self.history[-1]
        return {"fresh_attempts": int(fresh), "fresh_valid": int(valid),
                "fresh_attempts_per_valid": fresh / valid if valid else math.inf,
                "final_space_valid_rate": last["space_valid_rate"],
                "candidate_attempts": int(sum(r["attempts"] for r in self.history)),
                "candidate_valid_rate": float(sum(r["valid"] for r in self.history) /
                                              max(1, sum(r["attempts"] for r in self.history)))}


# --------------------------------------------------------------------------- the evolutionary search
class EvolutionFinder:
    """Evolutionary search over genomes with search-space evolution (module docstring)."""

    def __init__(self, space: SearchSpace, accuracy_predictor: AccuracyScorer, constraints: Constraints,
                 config: EvolutionConfig | None = None,
                 initial_distribution: SamplingDistribution | None = None):
        self.space = space
        self.predictor = accuracy_predictor
        self.constraints = constraints
        self.config = config or EvolutionConfig()
        self.distribution = initial_distribution or SamplingDistribution.uniform(space)
        self._ids: dict[bytes, str] = {}

    # ---- public
    def run(self, on_generation: Callable[[dict], None] | None = None) -> SearchResult:
        cfg, started = self.config, time.perf_counter()
        lowest = self.constraints.check_feasible()
        rng = np.random.default_rng(cfg.seed)
        probe_rng = np.random.default_rng([cfg.seed, 1])  # a separate stream: probing never changes results
        space_quality = -math.inf
        history: list[dict] = []

        tick = time.perf_counter()
        stats = _Attempts()
        population = self._sample_valid(cfg.population_size, rng, stats)
        accuracy = self._predict(population)
        for generation in range(cfg.generations + 1):
            population, accuracy = _unique_by_accuracy(population, accuracy)
            parents, parent_acc = population[:cfg.num_parents], accuracy[:cfg.num_parents]
            quality = float(parent_acc.mean())
            evolved = cfg.evolve_space and quality > space_quality
            if evolved:
                self.distribution = self.distribution.moved_toward(parents, cfg.alpha)
                space_quality = quality
            row = self._record(generation, population, accuracy, quality, evolved, stats, probe_rng, tick)
            history.append(row)
            if on_generation is not None:
                on_generation(row)
            if generation == cfg.generations:
                break
            tick, stats = time.perf_counter(), _Attempts()
            children = self._children(parents, rng, stats)
            population = np.concatenate([parents, children])
            accuracy = np.concatenate([parent_acc, self._predict(children)])
        top = self._candidates(population[:cfg.num_parents], accuracy[:cfg.num_parents])
        return SearchResult(top, history, self.distribution, self.constraints, cfg, lowest,
                            time.perf_counter() - started)

    # ---- sampling valid subnets
    def _sample_valid(self, n: int, rng: np.random.Generator, stats: "_Attempts") -> np.ndarray:
        """``n`` valid subnets drawn from P in batches; with evolution on, P is also steered
        towards feasibility while too few candidates are valid (module docstring)."""
        cfg = self.config
        found: list[np.ndarray] = []
        need, attempts, best_violation = n, 0, math.inf
        elite, elite_score = np.empty((0, len(self.space.genes)), dtype=np.int64), np.empty(0)
        while need > 0:
            batch = self.distribution.sample(cfg.sample_batch, rng)
            violation = self.constraints.violation(self.constraints.evaluate(batch))
            valid_idx = np.flatnonzero(violation == 0)
            take = valid_idx[:need]
            # Count attempts as if drawn one by one: up to the last valid subnet taken.
            attempts += int(take[-1]) + 1 if len(take) == need else len(batch)
            found.append(batch[take])
            need -= len(take)
            if need > 0 and attempts >= cfg.max_sampling_attempts:
                raise SamplingBudgetError(self._budget_message("sampling", n - need, n, attempts))
            if need > 0 and cfg.evolve_space:
                # The k draws closest to feasibility so far (an elite, like the parents: its
                # quality only improves, so one lucky batch cannot stall the updates).
                elite, elite_score = _unique_by_accuracy(np.concatenate([elite, batch]),
                                                         np.concatenate([elite_score, -violation]))
                elite, elite_score = elite[:cfg.num_parents], elite_score[:cfg.num_parents]
                mean_violation = float(-elite_score.mean())
                if mean_violation < best_violation:
                    self.distribution = self.distribution.moved_toward(elite, cfg.alpha)
                    best_violation = mean_violation
        stats.add("fresh", attempts, n)
        return np.concatenate(found)

    def _children(self, parents: np.ndarray, rng: np.random.Generator, stats: "_Attempts") -> np.ndarray:
        cfg = self.config
        mutants = self._valid_offspring("mutation", self._mutate, parents, cfg.num_mutations, rng, stats)
        crossed = self._valid_offspring("crossover", self._crossover, parents, cfg.num_crossovers, rng, stats)
        return np.concatenate([mutants, crossed])

    def _valid_offspring(self, kind: str, make: Callable, parents: np.ndarray, n: int,
                         rng: np.random.Generator, stats: "_Attempts") -> np.ndarray:
        """``n`` valid children from ``make(parents, m, rng)``, drawn in batches sized by the
        valid rate seen so far."""
        found, need, attempts, rate = [], n, 0, 0.5
        while need > 0:
            batch = make(parents, int(min(self.config.sample_batch, max(16, 1.5 * need / rate))), rng)
            valid_idx = np.flatnonzero(self.constraints.violation(self.constraints.evaluate(batch)) == 0)
            take = valid_idx[:need]
            attempts += int(take[-1]) + 1 if len(take) == need else len(batch)
            found.append(batch[take])
            need -= len(take)
            rate = max(len(valid_idx) / len(batch), 1.0 / self.config.sample_batch)
            if need > 0 and attempts >= self.config.max_sampling_attempts:
                raise SamplingBudgetError(self._budget_message(kind, n - need, n, attempts))
        stats.add(kind, attempts, n)
        return np.concatenate(found) if found else np.empty((0, len(self.space.genes)), dtype=np.int64)

    def _mutate(self, parents: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Each child copies a random parent and redraws each gene from P with ``mutate_prob``."""
        base = self.distribution.refill_inactive(parents[rng.integers(len(parents), size=n)], rng)
        redraw = rng.random(base.shape) < self.config.mutate_prob
        return self.space.canonicalize(np.where(redraw, self.distribution.sample_raw(n, rng), base))

    def _crossover(self, parents: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Each child takes every gene from one of two random parents (a fair coin per gene)."""
        pair = rng.integers(len(parents), size=(2, n))
        a = self.distribution.refill_inactive(parents[pair[0]], rng)
        b = self.distribution.refill_inactive(parents[pair[1]], rng)
        return self.space.canonicalize(np.where(rng.random(a.shape) < 0.5, a, b))

    # ---- helpers
    def _predict(self, genomes: np.ndarray) -> np.ndarray:
        if len(genomes) == 0:
            return np.empty(0)
        accuracy = np.asarray(self.predictor.predict_genomes(genomes), dtype=float).reshape(-1)
        if accuracy.shape != (len(genomes),) or not np.isfinite(accuracy).all():
            raise SearchError(f"accuracy predictor returned {accuracy.shape} values (finite: "
                              f"{np.isfinite(accuracy).all()}) for {len(genomes)} genomes")
        return accuracy

    def _probe(self, rng: np.random.Generator) -> float:
        """Valid rate of fresh samples from the current P (Fig. 4: 1 / attempts per valid)."""
        if self.config.probe_samples == 0:
            return math.nan
        batch = self.distribution.sample(self.config.probe_samples, rng)
        return float(np.mean(self.constraints.violation(self.constraints.evaluate(batch)) == 0))

    def _record(self, generation, population, accuracy, quality, evolved, stats, probe_rng, tick) -> dict:
        best = self.constraints.all_metrics(population[:1])
        row = {"generation": generation, "best_accuracy": float(accuracy[0]), "quality": quality,
               "space_evolved": bool(evolved), **stats.as_row(),
               "space_valid_rate": self._probe(probe_rng), "space_entropy": self.distribution.entropy(),
               "population": len(population), "best_arch_id": self._arch_id(population[0]),
               **{f"best_{k}": float(v[0]) for k, v in best.items()}}
        row["seconds"] = time.perf_counter() - tick
        return row

    def _arch_id(self, genome: np.ndarray) -> str:
        key = genome.tobytes()
        if key not in self._ids:
            self._ids[key] = self.space.decode(genome).arch_id
        return self._ids[key]

    def _candidates(self, genomes: np.ndarray, accuracy: np.ndarray) -> list[Candidate]:
        metrics = self.constraints.all_metrics(genomes)
        return [Candidate(tuple(int(x) for x in g), float(a), {k: float(v[i]) for k, v in metrics.items()})
                for i, (g, a) in enumerate(zip(genomes, accuracy))]

    def _budget_message(self, kind: str, got: int, wanted: int, attempts: int) -> str:
        limits = ", ".join(f"{describe_metric(k)} <= {format_metric(k, v)}"
                           for k, v in self.constraints.limits().items())
        hint = ("relax the constraints, or turn search-space evolution on (evolve_space: true)"
                if not self.config.evolve_space else "relax the constraints or raise max_sampling_attempts")
        return (f"{kind}: only {got} of {wanted} valid subnets in {attempts:,} attempts "
                f"(max_sampling_attempts={self.config.max_sampling_attempts:,}) for {limits}; {hint}")


class _Attempts:
    """Per-generation counters: attempts and valid subnets by kind (fresh / mutation / crossover)."""

    KINDS = ("fresh", "mutation", "crossover")

    def __init__(self):
        self.attempts = dict.fromkeys(self.KINDS, 0)
        self.valid = dict.fromkeys(self.KINDS, 0)

    def add(self, kind: str, attempts: int, valid: int) -> None:
        self.attempts[kind] += attempts
        self.valid[kind] += valid

    def as_row(self) -> dict:
        attempts, valid = sum(self.attempts.values()), sum(self.valid.values())
        return {"attempts": attempts, "valid": valid, "valid_rate": valid / attempts if attempts else math.nan,
                **{f"{k}_attempts": self.attempts[k] for k in self.KINDS},
                **{f"{k}_valid": self.valid[k] for k in self.KINDS}}


def _unique_by_accuracy(genomes: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct genomes, sorted by accuracy (descending; ties by first occurrence)."""
    rows = np.ascontiguousarray(genomes, dtype=np.int8)  # choices < 128: one byte per gene
    _, first = np.unique(rows.view(np.dtype((np.void, rows.shape[1]))).ravel(), return_index=True)
    first = np.sort(first)
    order = first[np.argsort(-accuracy[first], kind="stable")]
    return genomes[order], accuracy[order]


def search(space: SearchSpace, accuracy_predictor: AccuracyScorer, constraints: Constraints,
           config: EvolutionConfig | None = None, on_generation: Callable[[dict], None] | None = None) -> SearchResult:
    """Run one evolutionary search (see :class:`EvolutionFinder`)."""
    return EvolutionFinder(space, accuracy_predictor, constraints, config).run(on_generation)


# --------------------------------------------------------------------------- names
def format_number(value: float) -> str:
    """7.6 -> '7.6', 95.0 -> '95', 7.25 -> '7.25' (file names and model names)."""
    return f"{float(value):.4g}"


def run_name(latency_ms: Mapping[str, float], max_params: float | None = None,
             max_macs: float | None = None) -> str:
    """``<device>@<ms>ms[+<device2>@<ms2>ms][_<M>M][_<G>MMACs]``, the paper's naming (§6.2, §6.3)."""
    if not latency_ms:
        raise SearchError("a search needs at least one latency target to be named")
    name = "+".join(f"{device}@{format_number(ms)}ms" for device, ms in latency_ms.items())
    if max_params is not None:
        name += f"_{format_number(max_params / 1e6)}M"
    if max_macs is not None:
        name += f"_{format_number(max_macs / 1e6)}MMACs"
    return name


def model_name(latency_ms: Mapping[str, float], max_params: float | None = None,
               max_macs: float | None = None) -> str:
    """``ours_<device>@<ms>ms...``: how the paper names its searched models."""
    return "ours_" + run_name(latency_ms, max_params, max_macs)
