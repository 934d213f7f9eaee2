"""Fitting the accuracy predictor on subnet-accuracy pairs (§5.2, Suppl. S4-S5): the predictor stage.

:func:`fit_predictor` trains candidate networks (:class:`~nas_core.accuracy_predictor.AccuracyPredictor`,
one per shape and seed) with an L1 loss on the ``train`` pairs, keeps the one with the highest
Spearman rank correlation on the ``val`` pairs, and reports it on held-out ``test`` pairs next to
simple baselines fitted the same way (Once-for-All's one-hot MLP, ridge regression, parameter and
MAC counts). :func:`fit_and_write` is the stage: pairs table in, bundle + metrics + figure out.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy.stats import kendalltau, spearmanr
from torch import nn

from .accuracy_predictor import (AccuracyPredictor, NetworkShape, OneHotMLP, PredictorBundle, PredictorConfig,
                                 check_genomes, one_hot_genomes, target_values)
from .encoding import ArchEncoder
from .io import (atomic_path, code_version, file_sha256, machine_fingerprint, read_provenance, utc_now, write_json,
                 write_parquet)
from .pairs import load_pairs
from .search_space import SearchSpace
from .threads import torch_threads


# --------------------------------------------------------------------------- metrics
def ranking_metrics(predicted, measured, top_fraction: float = 0.1, with_mae: bool = True) -> dict[str, Any]:
    """Spearman's rho, Kendall's tau, MAE and the top-``top_fraction`` precision.

    Precision: of the ``k = ceil(top_fraction * n)`` subnets ranked highest by ``predicted``,
    the fraction that are among the ``k`` highest by ``measured`` (ties broken by order).
    ``with_mae=False`` for scores that are not accuracies (parameter counts): MAE is None.
    """
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if predicted.shape != measured.shape or predicted.ndim != 1 or len(predicted) < 2:
        raise ValueError(f"ranking_metrics needs two equal-length 1-D arrays of >= 2 values, "
                         f"got {predicted.shape} and {measured.shape}")
    k = max(1, math.ceil(top_fraction * len(predicted)))
    top_predicted = set(np.argsort(-predicted, kind="stable")[:k])
    top_measured = set(np.argsort(-measured, kind="stable")[:k])
    return {
        "spearman": float(spearmanr(predicted, measured).statistic),
        "kendall": float(kendalltau(predicted, measured).statistic),
        "mae": float(np.abs(predicted - measured).mean()) if with_mae else None,
        f"top{round(top_fraction * 100)}_precision": len(top_predicted & top_measured) / k,
        "n": int(len(predicted)),
    }


# --------------------------------------------------------------------------- training
@dataclass
class _Candidate:
    """One (network shape, seed) training run and its best epoch by validation Spearman."""

    shape: NetworkShape
    seed: int
    best_epoch: int = -1
    val_spearman: float = -math.inf
    val_mae: float = math.inf
    state: dict = field(default_factory=dict, repr=False)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"network": asdict(self.shape), "seed": self.seed, "best_epoch": self.best_epoch,
                "val_spearman": self.val_spearman, "val_mae": self.val_mae, "seconds": round(self.seconds, 2)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    value = spearmanr(a, b).statistic
    return -1.0 if np.isnan(value) else float(value)  # constant predictions rank nothing


def _train_regressor(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                     y_val: np.ndarray, config: PredictorConfig, seed: int) -> tuple[int, float, float, dict]:
    """L1 regression of standardised targets with AdamW + cosine LR; returns the best epoch by
    validation Spearman as (epoch, spearman, MAE, state_dict)."""
    mean, std = y_train.mean(), y_train.std().clamp_min(1e-8)
    model.target_mean.fill_(mean)
    model.target_std.fill_(std)
    target = (y_train - mean) / std
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    generator = torch.Generator().manual_seed(seed)
    best = (-1, -math.inf, math.inf, {})
    for epoch in range(config.epochs):
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(config.batch_size):
            raw = (model(x_train[batch]) - model.target_mean) / model.target_std
            loss = F.l1_loss(raw, target[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        model.eval()
        with torch.inference_mode():
            predicted = model(x_val).numpy()
        rho, mae = _spearman(predicted, y_val), float(np.abs(predicted - y_val).mean())
        if (rho, -mae) > (best[1], -best[2]):
            best = (epoch, rho, mae, copy.deepcopy(model.state_dict()))
    return best


def _split_frame(pairs, target: str) -> dict[str, Any]:
    for column in ("genome", "split", target):
        if column not in pairs.columns:
            raise ValueError(f"pairs table has no column {column!r} (columns: {list(pairs.columns)}); "
                             "it is written by nas_core.pairs")
    splits = {}
    for name in ("train", "val", "test"):
        part = pairs[pairs["split"] == name]
        if len(part) < 2:
            raise ValueError(f"pairs table has {len(part)} rows in split {name!r}; fitting needs train, val "
                             "and test pairs (at least 2 each)")
        splits[name] = part
    return splits


def fit_predictor(pairs, config: PredictorConfig | Mapping[str, Any] | None = None,
                  space: SearchSpace | None = None, log=print) -> tuple[PredictorBundle, dict[str, Any]]:
    """Train on the ``train`` pairs, select by ``val`` Spearman, report on ``test`` pairs.

    ``pairs`` is a DataFrame with (at least) the columns ``genome`` (list of ints),
    ``split`` (``train`` / ``val`` / ``test``), the target (``top1``) and, for the
    baselines, ``params`` and ``macs`` (schema: :mod:`nas_core.pairs`). Returns the bundle of
    the selected network and a metrics dict (what ``data/predictor/metrics.json`` holds):
    ``test`` / ``val`` ranking metrics of the predictor and each baseline, the ``winner`` on
    test Spearman, the selected candidate and every candidate's validation score.
    """
    config = config if isinstance(config, PredictorConfig) else PredictorConfig.from_dict(config)
    with torch_threads(config.threads):
        return _fit_predictor(pairs, config, space, log)


def _fit_predictor(pairs, config: PredictorConfig, space: SearchSpace | None, log) -> tuple[PredictorBundle, dict]:
    encoder = ArchEncoder(space, layout=config.layout)
    splits = _split_frame(pairs, config.target)
    genomes = {k: check_genomes(encoder.space, np.stack(v["genome"].to_numpy())) for k, v in splits.items()}
    y = {k: target_values(v, config.target) for k, v in splits.items()}
    x = {k: torch.from_numpy(encoder.encode_genomes(g)) for k, g in genomes.items()}
    y_train = torch.tensor(y["train"], dtype=torch.float32)

    candidates = []
    for shape in config.networks:
        for seed in config.seeds:
            started = time.perf_counter()
            torch.manual_seed(seed)
            model = AccuracyPredictor(shape, *encoder.shape)
            cand = _Candidate(shape, seed)
            cand.best_epoch, cand.val_spearman, cand.val_mae, cand.state = _train_regressor(
                model, x["train"], y_train, x["val"], y["val"], config, seed)
            cand.seconds = time.perf_counter() - started
            log(f"predictor {shape.channels}/{shape.hidden} seed {seed}: best val Spearman "
                f"{cand.val_spearman:.4f} at epoch {cand.best_epoch} ({cand.seconds:.1f} s)")
            candidates.append(cand)
    best = max(candidates, key=lambda c: (c.val_spearman, -c.val_mae))
    model = AccuracyPredictor(best.shape, *encoder.shape)
    model.load_state_dict(best.state)
    bundle = PredictorBundle(model, encoder, config.target, {
        "selected": best.summary(), "config": config.to_dict(),
        "pairs": {k: len(v) for k, v in splits.items()},
    })

    scores = {"predictor": {k: bundle.predict_genomes(genomes[k]) for k in ("val", "test")}}
    if config.baselines:
        scores.update(_baseline_scores(encoder.space, splits, genomes, y, config))
    metrics = {"target": config.target, "splits": {k: len(v) for k, v in splits.items()},
               "selected": best.summary(), "candidates": [c.summary() for c in candidates]}
    for part in ("val", "test"):
        metrics[part] = {name: ranking_metrics(s[part], y[part], config.top_fraction,
                                               with_mae=name not in ("params", "macs"))
                         for name, s in scores.items()}
    metrics["winner"] = max(metrics["test"], key=lambda name: metrics["test"][name]["spearman"])
    if config.target != "top1" and "top1" in splits["test"].columns:
        # What a proxy target gives up: every scorer against the held-out pairs' top-1.
        top1 = splits["test"]["top1"].to_numpy(dtype=np.float64)
        metrics["test_top1"] = {name: ranking_metrics(s["test"], top1, config.top_fraction, with_mae=False)
                                for name, s in scores.items()}
    return bundle, metrics


# --------------------------------------------------------------------------- baselines
def _baseline_scores(space: SearchSpace, splits, genomes, y, config: PredictorConfig) -> dict[str, dict]:
    """Val/test scores of the simple baselines, each selected on ``val`` like the predictor."""
    onehot = {k: one_hot_genomes(space, g) for k, g in genomes.items()}
    scores = {"mlp_onehot": _fit_mlp(onehot, y, config), "ridge_onehot": _fit_ridge(onehot, y, config)}
    for column in ("params", "macs"):
        if column in splits["test"].columns:
            scores[column] = {k: splits[k][column].to_numpy(dtype=np.float64) for k in ("val", "test")}
    return scores


def _fit_mlp(onehot, y, config: PredictorConfig) -> dict[str, np.ndarray]:
    """Once-for-All's MLP, trained and selected with the predictor's protocol (L1, val Spearman,
    best over seeds), so the comparison isolates the network and its input encoding."""
    x = {k: torch.from_numpy(v) for k, v in onehot.items()}
    y_train = torch.tensor(y["train"], dtype=torch.float32)
    best_rho, best_state = -math.inf, None
    for seed in config.seeds:
        torch.manual_seed(seed)
        model = OneHotMLP(x["train"].shape[1], config.mlp_hidden)
        _, rho, _, state = _train_regressor(model, x["train"], y_train, x["val"], y["val"], config, seed)
        if rho > best_rho:
            best_rho, best_state = rho, state
    model.load_state_dict(best_state)
    model.eval()
    with torch.inference_mode():
        return {k: model(x[k]).numpy() for k in ("val", "test")}


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Closed-form ridge regression with an unpenalised intercept: ``(weights, intercept)``.
    Solves ``(Xc^T Xc + alpha I) w = Xc^T yc`` on centred data."""
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc = x - x_mean
    weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return weights, float(y_mean - x_mean @ weights)


def _fit_ridge(onehot, y, config: PredictorConfig) -> dict[str, np.ndarray]:
    x = {k: v.astype(np.float64) for k, v in onehot.items()}
    best_rho, best = -math.inf, None
    for alpha in config.ridge_alphas:
        weights, intercept = ridge_fit(x["train"], y["train"], alpha)
        rho = _spearman(x["val"] @ weights + intercept, y["val"])
        if rho > best_rho:
            best_rho, best = rho, (weights, intercept)
    weights, intercept = best
    return {k: x[k] @ weights + intercept for k in ("val", "test")}


# --------------------------------------------------------------------------- figure
_AXIS_LABEL = {"top1": "top-1 (%)", "top5": "top-5 (%)", "loss": "-loss (cross-entropy)"}


def plot_predictions(measured, predicted, path: str | Path, title: str = "", target: str = "top1") -> Path:
    """Suppl. S4: measured (x) vs predicted (y) score, with Spearman's rho in the title;
    accuracies (fractions) are shown in percent. PNG, written atomically."""
    scale = 1.0 if target == "loss" else 100.0
    measured, predicted = scale * np.asarray(measured, dtype=float), scale * np.asarray(predicted, dtype=float)
    rho = _spearman(predicted, measured)
    fig = Figure(figsize=(4.5, 4.5), dpi=120)  # no pyplot: no global backend, nothing to close
    ax = fig.subplots()
    ax.scatter(measured, predicted, s=8, alpha=0.6, edgecolors="none")
    low, high = min(measured.min(), predicted.min()), max(measured.max(), predicted.max())
    ax.plot([low, high], [low, high], color="0.4", linewidth=0.8, linestyle="--", label="y = x")
    ax.set_xlabel(f"measured {_AXIS_LABEL[target]}, inherited weights")
    ax.set_ylabel(f"predicted {_AXIS_LABEL[target]}")
    ax.set_title(f"{title + ': ' if title else ''}Spearman ρ = {rho:.3f} (n = {len(measured)})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# --------------------------------------------------------------------------- the stage's artifacts
def fit_and_write(pairs_path: str | Path, out_dir: str | Path, config: PredictorConfig | Mapping[str, Any] | None = None,
                  params: Mapping[str, Any] | None = None, log=print, space: SearchSpace | None = None
                  ) -> tuple[dict[str, Path], dict[str, Any]]:
    """The predictor stage: fit on the pairs table (subnets of ``space``, default Table 2) and
    write, under ``out_dir``:

    ``predictor.pt``               the :class:`PredictorBundle`
    ``metrics.json``               :func:`fit_predictor`'s metrics + ``provenance`` (pairs file
                                   and sha256, their plan key, config, code version, machine)
    ``predicted_vs_measured.png``  Suppl. S4 on the test split
    ``predictions.parquet``        ``arch_id`` (str), ``split`` (str: val | test), ``measured``
                                   and ``predicted`` (float64, the target's units; -loss for
                                   ``loss``) of every val and test pair
    """
    config = config if isinstance(config, PredictorConfig) else PredictorConfig.from_dict(config)
    pairs = load_pairs(pairs_path)
    bundle, metrics = fit_predictor(pairs, config, space=space, log=log)
    pairs_provenance = read_provenance(pairs_path)
    provenance = {"pairs": str(pairs_path), "pairs_sha256": file_sha256(pairs_path),
                  "pairs_plan_key": pairs_provenance.get("key"), "config": config.to_dict(), "params": params,
                  "code_version": code_version(), "machine": machine_fingerprint(), "created": utc_now()}
    out_dir = Path(out_dir)
    bundle.metadata["provenance"] = provenance
    paths = {"predictor": bundle.save(out_dir / "predictor.pt"),
             "metrics": write_json(out_dir / "metrics.json", {**metrics, "provenance": provenance})}
    held_out = pairs[pairs["split"].isin(["val", "test"])]
    predicted = bundle.predict_genomes(np.stack(held_out["genome"].to_numpy()))
    frame = pd.DataFrame({"arch_id": held_out["arch_id"].to_numpy(), "split": held_out["split"].to_numpy(),
                          "measured": target_values(held_out, config.target),
                          "predicted": predicted.astype(np.float64)})
    paths["predictions"] = write_parquet(out_dir / "predictions.parquet", frame, provenance=provenance)
    test = frame[frame["split"] == "test"]
    paths["figure"] = plot_predictions(test["measured"], test["predicted"], out_dir / "predicted_vs_measured.png",
                                       title="test split", target=config.target)
    return paths, metrics
