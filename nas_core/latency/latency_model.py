"""The calibrated latency model: from a subnet's LUT block latencies to its measured latency.

§5.3 sums a subnet's block latencies from the LUT and corrects the sum with one line,
``measured ≈ a · Σ block_ms + b``, fitted on 10 measured subnets. That line is the
``linear`` model here, and the default. A LUT times each block alone, so what a whole
network does differently is not in it: per-call overhead that a network pays once instead
of once per block, caches that stay warm between blocks, layout changes a runtime inserts
between convolutions and attention. Those effects differ per kind of block, so one slope
can be right for a conv-heavy subnet and wrong for an attention-heavy one of the same sum.
The extensions give each *group* of blocks its own scale and may add a per-block term:

    measured ≈ Σ_g scale_g · Σ_{blocks in g} block_ms  +  per_block_ms · n_blocks  +  intercept_ms

``MODELS`` names the groupings (``linear``: one group, the paper's; ``per_kind``: stem,
unified FFN, fused FFN, MHSA, embeddings, head; ``per_stage``: the four stages; ``per_op``:
``per_kind`` with the FFNs split by kernel size) and ``+blocks`` adds the per-block term.
``per_op`` raised the share of random calibration/held-out splits meeting the held-out bar
from 61 to 72 % on OpenVINO (3 LUTs x 3 calibration tables) and from 17 to 50 % on ORT
(benchmarks/README.md, "LUT revisit passes"). Scales are fitted non-negative (a block never makes a
network faster; ``scipy.optimize.lsq_linear``) on *relative* errors (weights 1/measured),
since the targets are relative (MAPE, ±5 %).

Every model of this family is again a per-block table plus a constant
(:meth:`LatencyModel.effective_block_ms`): the search's estimate stays one table look-up
and sum per genome, and ``BlockCatalog.min_table_sum`` still gives the exact fastest subnet.

:func:`select_model` fits every candidate and keeps the one with the lowest
cross-validated error on the calibration subnets (leave-one-out, each subnet predicted by
a fit that never saw it). The held-out validation subnets are never used to choose, so the
figures reported on them are unbiased. :func:`error_metrics` is what nn-Meter and LitePred
report: MAPE, RMSPE, max error, Spearman, and the share within ±5 % / ±10 %.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import lsq_linear
from scipy.stats import spearmanr

from nas_core.block_catalog import BlockCatalog, BlockSpec

PAPER_MODEL = "linear"


def _kind_group(block: BlockSpec) -> str:
    if block.kind == "ffn":
        return f"ffn_{block.ffn_type}"
    return {"embed_attn": "embed", "embed": "embed"}.get(block.kind, block.kind)


def _stage_group(block: BlockSpec) -> str:
    return "stem" if block.kind == "stem" else f"s{block.stage}"


def _op_group(block: BlockSpec) -> str:
    """``per_kind`` with each FFN type split by kernel: a 5x5 depthwise (unified) or full
    (fused) convolution is fused and laid out differently from a 3x3 one inside a compiled network."""
    return f"ffn_{block.ffn_type}_k{block.kernel}" if block.kind == "ffn" else _kind_group(block)


# Grouping name -> the group of a block.
GROUPINGS: dict[str, Callable[[BlockSpec], str]] = {
    "linear": lambda block: "all",
    "per_kind": _kind_group,
    "per_stage": _stage_group,
    "per_op": _op_group,
}
MODELS = tuple(f"{g}{extra}" for g in GROUPINGS for extra in ("", "+blocks"))


def parse_model_name(name: str) -> tuple[str, bool]:
    """``"per_kind+blocks"`` -> ``("per_kind", True)``; unknown names raise with the known ones."""
    grouping, plus, extra = str(name).partition("+")
    if grouping not in GROUPINGS or (plus and extra != "blocks"):
        raise ValueError(f"unknown latency model {name!r}; known: {', '.join(MODELS)}")
    return grouping, bool(plus)


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """A fitted model: one scale per block group, an optional per-block term, an intercept (ms)."""

    name: str
    scales: Mapping[str, float]
    per_block_ms: float = 0.0
    intercept_ms: float = 0.0

    @property
    def grouping(self) -> str:
        return parse_model_name(self.name)[0]

    def effective_block_ms(self, catalog: BlockCatalog, block_ms: np.ndarray) -> np.ndarray:
        """The per-block table whose sum over a subnet, plus ``intercept_ms``, is the estimate."""
        group_of = GROUPINGS[self.grouping]
        scale = np.array([self.scales.get(group_of(b), 0.0) for b in catalog.blocks])
        return np.asarray(block_ms, dtype=np.float64) * scale + self.per_block_ms

    def predict(self, catalog: BlockCatalog, block_ms: np.ndarray, genomes: np.ndarray) -> np.ndarray:
        return catalog.sum_table(self.effective_block_ms(catalog, block_ms), genomes) + self.intercept_ms

    def to_dict(self) -> dict:
        return {"name": self.name, "scales": dict(self.scales), "per_block_ms": self.per_block_ms,
                "intercept_ms": self.intercept_ms}

    @classmethod
    def from_dict(cls, values: Mapping) -> "LatencyModel":
        parse_model_name(values["name"])
        return cls(values["name"], {k: float(v) for k, v in values["scales"].items()},
                   float(values.get("per_block_ms", 0.0)), float(values.get("intercept_ms", 0.0)))

    @classmethod
    def paper_line(cls, a: float, b: float) -> "LatencyModel":
        """§5.3's ``a · lut_sum + b`` as a model (fit files from before the model field)."""
        return cls(PAPER_MODEL, {"all": float(a)}, 0.0, float(b))


# --------------------------------------------------------------------------- features and fitting
@dataclasses.dataclass(frozen=True)
class Features:
    """Per-group LUT sums [N, G] and block counts [N] of some subnets."""

    groups: tuple[str, ...]
    group_sums: np.ndarray
    n_blocks: np.ndarray

    def take(self, index) -> "Features":
        return Features(self.groups, self.group_sums[index], self.n_blocks[index])


def features(catalog: BlockCatalog, block_ms: np.ndarray, genomes: np.ndarray, grouping: str) -> Features:
    group_of = GROUPINGS[grouping]
    labels = [group_of(b) for b in catalog.blocks]
    groups = tuple(dict.fromkeys(labels))
    block_ms = np.asarray(block_ms, dtype=np.float64)
    sums = np.stack([catalog.sum_table(np.where(np.array(labels) == g, block_ms, 0.0), genomes) for g in groups],
                    axis=1)
    return Features(groups, sums, catalog.sum_table(np.ones(len(catalog.blocks)), genomes))


def fit_model(name: str, feats: Features, measured_ms: np.ndarray) -> LatencyModel:
    """Least squares on relative error; scales >= 0, per-block term and intercept free.

    A group no calibration subnet uses (all-zero column) keeps scale 1: the raw LUT value,
    rather than an arbitrary one.
    """
    _, per_block = parse_model_name(name)
    y = np.asarray(measured_ms, dtype=np.float64)
    columns = [feats.group_sums] + ([feats.n_blocks[:, None]] if per_block else []) + [np.ones((len(y), 1))]
    x = np.concatenate(columns, axis=1)
    groups = len(feats.groups)
    lower = np.r_[np.zeros(groups), np.full(x.shape[1] - groups, -np.inf)]
    weight = 1.0 / y
    used = np.r_[feats.group_sums.any(axis=0), np.ones(x.shape[1] - groups, dtype=bool)]
    solution = np.ones(x.shape[1])
    result = lsq_linear(x[:, used] * weight[:, None], y * weight, bounds=(lower[used], np.inf))
    solution[used] = result.x
    scales = {g: float(solution[i]) for i, g in enumerate(feats.groups)}
    return LatencyModel(name, scales, float(solution[groups]) if per_block else 0.0, float(solution[-1]))


def predict_features(model: LatencyModel, feats: Features) -> np.ndarray:
    scale = np.array([model.scales.get(g, 0.0) for g in feats.groups])
    return feats.group_sums @ scale + model.per_block_ms * feats.n_blocks + model.intercept_ms


def cross_validated_ms(name: str, feats: Features, measured_ms: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions: each subnet's latency from a fit on all the others."""
    measured_ms = np.asarray(measured_ms, dtype=np.float64)
    out = np.empty_like(measured_ms)
    everyone = np.arange(len(measured_ms))
    for i in everyone:
        others = everyone != i
        out[i] = predict_features(fit_model(name, feats.take(others), measured_ms[others]), feats.take([i]))[0]
    return out


@dataclasses.dataclass(frozen=True)
class Selection:
    """The chosen model, fitted on every calibration subnet, and how each candidate did."""

    model: LatencyModel
    candidates: dict  # name -> {"cv": error_metrics, "fit": LatencyModel.to_dict()}

    def to_dict(self) -> dict:
        return {"chosen": self.model.name, "rule": "lowest leave-one-out RMSPE on the calibration subnets",
                "candidates": self.candidates}


def select_model(names: Sequence[str], catalog: BlockCatalog, block_ms: np.ndarray, genomes: np.ndarray,
                 measured_ms: np.ndarray) -> Selection:
    """Fit every model of ``names`` and keep the lowest leave-one-out RMSPE.

    When there is a choice, a model with more coefficients than half the subnets is skipped
    (noted in the result): its leave-one-out error would mostly measure noise. Ties keep the
    earlier name, so list the simpler models first. A single candidate is simply fitted
    (the paper's line needs two subnets; its leave-one-out error needs three).
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("select_model: no candidate models")
    measured_ms = np.asarray(measured_ms, dtype=np.float64)
    candidates, best = {}, None
    for name in names:
        grouping, per_block = parse_model_name(name)
        feats = features(catalog, block_ms, genomes, grouping)
        coefficients = len(feats.groups) + per_block + 1
        if len(names) > 1 and 2 * coefficients > len(measured_ms):
            candidates[name] = {"skipped": f"{coefficients} coefficients for {len(measured_ms)} subnets"}
            continue
        cv = (error_metrics(cross_validated_ms(name, feats, measured_ms), measured_ms)
              if len(measured_ms) > coefficients else None)
        model = fit_model(name, feats, measured_ms)
        candidates[name] = {"cv": cv, "fit": model.to_dict()}
        if best is None or (cv is not None and cv["rmspe_pct"] < candidates[best.name]["cv"]["rmspe_pct"]):
            best = model
    if best is None:
        raise ValueError(f"select_model: {len(measured_ms)} calibration subnets are too few for any of "
                         f"{list(names)}; measure more (calibration.n_calibration)")
    return Selection(best, candidates)


# --------------------------------------------------------------------------- how good an estimate is
def error_metrics(estimated, measured) -> dict:
    """How well ``estimated`` predicts ``measured`` (ms), as nn-Meter / LitePred report it.

    Percentages are relative to ``measured``; ``spearman`` is NaN below 2 points.
    """
    est, meas = np.asarray(estimated, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    err = est - meas
    ape = np.abs(err) / meas * 100.0
    spearman = float(spearmanr(est, meas).statistic) if len(est) >= 2 else math.nan
    return {"n": int(len(est)), "spearman": spearman, "rmse_ms": float(np.sqrt(np.mean(err ** 2))),
            "mape_pct": float(np.mean(ape)), "rmspe_pct": float(np.sqrt(np.mean(ape ** 2))),
            "max_abs_err_ms": float(np.max(np.abs(err))), "max_ape_pct": float(np.max(ape)),
            "within_5_pct": float(np.mean(ape <= 5.0)), "within_10_pct": float(np.mean(ape <= 10.0)),
            "bias_ms": float(np.mean(err))}
