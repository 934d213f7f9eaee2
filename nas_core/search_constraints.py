"""What a search must satisfy (Eq. 1) and what it calls to score subnets.

* :class:`AccuracyScorer` and :class:`LatencyScorer`: the two interfaces the search needs
  (``predict_genomes`` on an [N, genes] integer matrix; a latency scorer also knows the
  lowest latency any subnet reaches). :class:`~nas_core.accuracy_predictor.PredictorBundle`
  and :class:`~nas_core.efficiency_predictor.LatencyEstimator` are the real ones.
* :class:`BlockTableEstimator`: an additive per-block cost (parameters, MACs, or a stand-in
  latency table), with its exact minimum.
* :class:`LatencyConstraint` and :class:`Constraints`: the constraint set, which rejects a
  target no subnet can meet before any search starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from .block_catalog import HEAD_CLASSES, BlockCatalog


# --------------------------------------------------------------------------- errors
class SearchError(ValueError):
    """A search that cannot be run as asked (a ValueError, so the CLI prints it plainly)."""


class InfeasibleConstraintError(SearchError):
    """A constraint below the smallest value any subnet of the space achieves."""


class SamplingBudgetError(SearchError):
    """Too few valid subnets within ``max_sampling_attempts`` draws."""


# --------------------------------------------------------------------------- what the search calls
class AccuracyScorer(Protocol):
    """Predicted accuracy of each genome, higher is better (``PredictorBundle``)."""

    def predict_genomes(self, genomes: np.ndarray) -> np.ndarray: ...


class LatencyScorer(Protocol):
    """Estimated latency of each genome on one device, and the lowest any subnet reaches
    (``LatencyEstimator``; ``BlockTableEstimator`` as a stand-in)."""

    def predict_genomes(self, genomes: np.ndarray) -> np.ndarray: ...  # calibrated ms
    def min_latency_ms(self) -> float: ...


# --------------------------------------------------------------------------- additive per-block estimators
class BlockTableEstimator:
    """``scale * (sum of a per-block table over a subnet's blocks) + offset``.

    This is the shape of every additive cost model in the project: a calibrated latency LUT
    (§5.3: a * LUT sum + b), the parameter count and the MAC count (scale 1, offset 0). The
    search uses it for the params / MACs constraints; tests and benchmarks use it as a
    stand-in latency estimator. ``min_value`` is exact (:meth:`BlockCatalog.min_table_sum`).
    """

    def __init__(self, catalog: BlockCatalog, table: np.ndarray, scale: float = 1.0, offset: float = 0.0,
                 name: str = "table"):
        if scale <= 0:
            raise ValueError(f"{name}: scale must be positive (got {scale}); a negative scale reverses the order")
        self.catalog = catalog
        self.table = np.asarray(table, dtype=float)
        self.scale, self.offset, self.name = float(scale), float(offset), name
        self._min: tuple[float, np.ndarray] | None = None

    @classmethod
    def params(cls, catalog: BlockCatalog, num_classes: int = HEAD_CLASSES) -> "BlockTableEstimator":
        return cls(catalog, catalog.params_table(num_classes), name="params")

    @classmethod
    def macs(cls, catalog: BlockCatalog, num_classes: int = HEAD_CLASSES) -> "BlockTableEstimator":
        return cls(catalog, catalog.macs_table(num_classes), name="macs")

    def predict_genomes(self, genomes: np.ndarray) -> np.ndarray:
        return self.scale * self.catalog.sum_table(self.table, genomes) + self.offset

    def _minimum(self) -> tuple[float, np.ndarray]:
        if self._min is None:
            raw, genome = self.catalog.min_table_sum(self.table)
            self._min = (self.scale * raw + self.offset, genome)
        return self._min

    def min_value(self) -> float:
        return self._minimum()[0]

    def argmin_genome(self) -> np.ndarray:
        return self._minimum()[1].copy()

    def min_latency_ms(self) -> float:  # the LatencyScorer protocol
        return self.min_value()


# --------------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class LatencyConstraint:
    """Calibrated latency on ``device`` must be <= ``target_ms`` (and >= ``floor_ms`` if set).

    The paper's constraint is the upper bound alone. The floor exists for
    :func:`refine_on_device`: once measurements show where the device's window
    [target - 3%, target] lies in estimated milliseconds, a re-search confined to that band
    returns candidates that land in the window, instead of the predictor's favourite far below it.
    """

    device: str
    target_ms: float
    estimator: LatencyScorer = field(compare=False, repr=False)
    floor_ms: float | None = None


class Constraints:
    """Eq. 1's constraint set: latency on one or more devices, params, optionally MACs.

    Metric names (also Parquet column names): ``latency_ms.<device>``, ``params``, ``macs``.
    """

    def __init__(self, catalog: BlockCatalog, latency: Sequence[LatencyConstraint] = (),
                 max_params: float | None = None, max_macs: float | None = None,
                 num_classes: int = HEAD_CLASSES):
        self.catalog = catalog
        self.latency = tuple(latency)
        self.max_params, self.max_macs, self.num_classes = max_params, max_macs, int(num_classes)
        devices = [c.device for c in self.latency]
        if len(set(devices)) != len(devices):
            raise SearchError(f"a device may have one latency target; got {devices}")
        for name, limit in [*((f"latency_ms.{c.device}", c.target_ms) for c in self.latency),
                            ("params", max_params), ("macs", max_macs)]:
            if limit is not None and not (np.isfinite(limit) and limit > 0):
                raise SearchError(f"constraint {name} must be a positive number, got {limit}")
        for c in self.latency:
            if c.floor_ms is not None and not 0 <= c.floor_ms < c.target_ms:
                raise SearchError(f"latency floor on {c.device} must be in [0, {c.target_ms}), got {c.floor_ms}")
        self.params_estimator = BlockTableEstimator.params(catalog, num_classes)
        self.macs_estimator = BlockTableEstimator.macs(catalog, num_classes)

    @property
    def devices(self) -> list[str]:
        return [c.device for c in self.latency]

    def limits(self) -> dict[str, float]:
        """Metric name -> upper bound, for the constrained metrics only."""
        out = {f"latency_ms.{c.device}": float(c.target_ms) for c in self.latency}
        if self.max_params is not None:
            out["params"] = float(self.max_params)
        if self.max_macs is not None:
            out["macs"] = float(self.max_macs)
        return out

    def floors(self) -> dict[str, float]:
        """Metric name -> lower bound, for latency constraints with a floor."""
        return {f"latency_ms.{c.device}": float(c.floor_ms) for c in self.latency if c.floor_ms is not None}

    def _estimators(self) -> dict[str, Any]:
        return {**{f"latency_ms.{c.device}": c.estimator for c in self.latency},
                "params": self.params_estimator, "macs": self.macs_estimator}

    def check_feasible(self) -> dict[str, float]:
        """Raise :class:`InfeasibleConstraintError` if a bound is below the smallest value the
        space achieves; return the smallest achievable value of each constrained metric."""
        lowest = {}
        for name, limit in self.limits().items():
            estimator = self._estimators()[name]
            low = float(estimator.min_latency_ms() if name.startswith("latency_ms.") else estimator.min_value())
            lowest[name] = low
            if limit < low:
                raise InfeasibleConstraintError(
                    f"{describe_metric(name)} target {format_metric(name, limit)} is infeasible: the lowest "
                    f"achievable value in the search space is {format_metric(name, low)}")
        return lowest

    def evaluate(self, genomes: np.ndarray, metrics: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Metric name -> values for ``genomes`` (the constrained metrics by default)."""
        estimators = self._estimators()
        names = list(self.limits()) if metrics is None else list(metrics)
        out = {}
        for name in names:
            values = np.asarray(estimators[name].predict_genomes(genomes), dtype=float)
            if values.shape != (len(genomes),):
                raise SearchError(f"{name}: estimator returned shape {values.shape} for {len(genomes)} genomes")
            out[name] = values
        return out

    def all_metrics(self, genomes: np.ndarray) -> dict[str, np.ndarray]:
        return self.evaluate(genomes, [*(f"latency_ms.{d}" for d in self.devices), "params", "macs"])

    def violation(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Largest relative excess over an upper bound or shortfall under a floor (0 where
        every constraint holds)."""
        limits = self.limits()
        if not limits:
            return np.zeros(len(next(iter(values.values()), [])))
        excess = [np.maximum(values[name] / limit - 1.0, 0.0) for name, limit in limits.items()]
        excess += [np.maximum(1.0 - values[name] / floor, 0.0) for name, floor in self.floors().items() if floor > 0]
        return np.max(excess, axis=0)

    def describe(self) -> dict[str, Any]:
        return {"latency_ms": {c.device: float(c.target_ms) for c in self.latency},
                **({"latency_floor_ms": {k.split(".", 1)[1]: v for k, v in self.floors().items()}}
                   if self.floors() else {}),
                "max_params": self.max_params, "max_macs": self.max_macs, "num_classes": self.num_classes,
                "resolution": self.catalog.resolution}

    def with_latency_targets(self, targets: Mapping[str, float],
                             floors: Mapping[str, float] | None = None) -> "Constraints":
        """The same constraints with new latency targets and floors (used to re-target a search)."""
        floors = floors or {}
        latency = [dataclasses.replace(c, target_ms=float(targets.get(c.device, c.target_ms)),
                                       floor_ms=floors.get(c.device)) for c in self.latency]
        return Constraints(self.catalog, latency, self.max_params, self.max_macs, self.num_classes)


def describe_metric(name: str) -> str:
    if name.startswith("latency_ms."):
        return f"latency on {name.split('.', 1)[1]}"
    return {"params": "parameter count", "macs": "MAC count"}[name]


def format_metric(name: str, value: float) -> str:
    if name.startswith("latency_ms."):
        return f"{value:.3f} ms"
    return f"{value / 1e6:.3f} M"


