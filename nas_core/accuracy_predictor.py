"""The accuracy predictor (§5.2, Suppl. S5): a subnet's inherited top-1 from its encoding.

Evaluating thousands of subnets on a validation set during the search is too slow, so a small
network learns ``encoding -> accuracy`` from the subnet-accuracy pairs of
:mod:`nas_core.pairs`. As in the paper:

* the input is the 44 x 24 block matrix of :class:`~nas_core.encoding.ArchEncoder` (one
  24-bit one-hot row per block, stacked, zero-padded to 44 rows);
* the network is a sequence of 1-D convolutions over the 44 rows (24 input channels)
  followed by linear layers, and outputs one scalar accuracy;
* it is trained with an L1 loss, and the model kept is the one with the highest Spearman
  rank correlation on the validation pairs, across epochs, seeds and candidate shapes.

Beyond the paper: the quality is reported on held-out *test* pairs used neither for
training nor for selection, next to simple baselines on the same split (Once-for-All's MLP
on a one-hot genome, ridge regression on the one-hot, parameter and MAC counts alone).

Fast inference. The search scores hundreds of thousands of genomes, and materialising
[N, 44, 24] float matrices is the bottleneck (~55k/s). Since every row is the code of one
of the 572 catalog blocks, the first convolution is a *gather*: its output at row ``t`` is
``bias + sum_d T_d[block at t + d - pad]`` with ``T_d = codes @ W[:, :, d].T`` precomputed
per catalog block. :meth:`PredictorBundle.predict_genomes` maps genomes to catalog rows
(integer [N, 44]) and runs that; it agrees with :meth:`PredictorBundle.predict_encodings`
(the paper's exact input) to float rounding.

What it learns (``PredictorConfig.target``). The paper's target is ``top1``, the default. The
other choices are ``top5`` and ``loss``, the validation cross-entropy, learned as its
negative so that the predictor's score is always "higher is better" and the search is
unchanged. Why ``loss`` exists: when the supernet is briefly trained (the CPU smoke
profile), its subnets differ by a point of top-1 or less, and top-1 on a few hundred images
is mostly sampling noise. There, evaluated on the val and on the test images, 50 random
subnets ranked alike by loss (Spearman 0.90) and hardly by top-1 (0.29; measured with
``benchmarks/supernet_quality.py --repeat-split test``): no predictor can learn a ranking
that the labels themselves do not repeat. The metrics then also report every scorer against held-out top-1
(``test_top1``), so what is given up stays visible.

Names follow Once-for-All (``AccuracyPredictor``); :class:`PredictorBundle` is what is
saved: the network, its encoder layout and the search-space version it was trained on.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .encoding import BITS, ArchEncoder
from .search_space import SPACE_VERSION, ArchConfig, SearchSpace

BUNDLE_FORMAT = "scan-edge/accuracy-predictor/v1"
READOUTS = ("flatten", "sum", "both")
TARGETS = ("top1", "top5", "loss")
# The predictor learns sign * column, so its score is "higher is better" for every target.
_TARGET_SIGN = {"top1": 1.0, "top5": 1.0, "loss": -1.0}
# Genomes -> catalog rows in numpy chunks of _ROWS_CHUNK (fewer numpy calls), then the
# network in chunks of _FORWARD_CHUNK, whose activations (~1 MB) stay in the CPU cache:
# 4x larger chunks were ~20% slower here, because large temporaries are fresh pages.
_ROWS_CHUNK = 16384
_FORWARD_CHUNK = 1024


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class NetworkShape:
    """The predictor network: 1-D convs over the block rows, then linear layers.

    ``channels[i]`` / ``strides[i]`` describe conv ``i`` (kernel ``kernel_size``, "same"
    padding, ReLU). ``readout`` turns the last conv's [L, C] output into the linear layers'
    input: ``flatten`` (position-aware), ``sum`` over the rows (position-free: a sum of
    per-block features, like a lookup table), or ``both`` concatenated. Then the ``hidden``
    linear layers (ReLU) and a final linear layer to one value.
    """

    channels: tuple[int, ...] = (32, 32)
    strides: tuple[int, ...] = (2, 2)
    kernel_size: int = 3
    hidden: tuple[int, ...] = (128,)
    readout: str = "both"

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.channels or len(self.channels) != len(self.strides):
            raise ValueError(f"predictor network: channels {self.channels} and strides {self.strides} "
                             "must be non-empty and of equal length (one entry per conv)")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"predictor network: kernel_size must be odd, got {self.kernel_size}")
        if self.readout not in READOUTS:
            raise ValueError(f"predictor network: readout must be one of {READOUTS}, got {self.readout!r}")
        if min(self.channels + self.strides + self.hidden + (1,)) < 1:
            raise ValueError(f"predictor network: sizes must be positive: {self}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NetworkShape":
        return cls(**_known_fields(cls, data, "predictor network"))


@dataclass(frozen=True)
class PredictorConfig:
    """How :func:`fit_predictor` trains and selects (the ``predictor:`` params section).

    Every (network shape, seed) pair is trained for ``epochs``; after each epoch the
    validation Spearman is computed, and the best state over all epochs, seeds and shapes
    is kept (the paper's "best predictor that has the highest Spearman's rank correlation").
    """

    target: str = "top1"     # the paper's; "top5", or "loss" (learned as -loss; see the module doc)
    layout: str = "stacked"  # the paper's; "slotted" keeps each block position on a fixed row
    networks: tuple[NetworkShape, ...] = (NetworkShape(),)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    top_fraction: float = 0.1  # "top-10% precision" of the reported metrics
    baselines: bool = True
    mlp_hidden: tuple[int, ...] = (400, 400, 400)  # Once-for-All's predictor
    ridge_alphas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
    threads: int | None = 1  # torch threads while fitting (small batches: 1 is fastest on a busy CPU)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "PredictorConfig":
        values = _known_fields(cls, data or {}, "predictor params")
        if "networks" in values:
            values["networks"] = tuple(n if isinstance(n, NetworkShape) else NetworkShape.from_dict(n)
                                       for n in values["networks"])
        for key in ("seeds", "mlp_hidden", "ridge_alphas"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"predictor.target must be one of {TARGETS}, got {self.target!r}")
        if not self.networks or not self.seeds or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("predictor: networks and seeds must be non-empty, epochs and batch_size >= 1")
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"predictor.top_fraction must be in (0, 1], got {self.top_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _known_fields(cls, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{what}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    return dict(data)


# --------------------------------------------------------------------------- the network
class AccuracyPredictor(nn.Module):
    """1-D convs over the [44, 24] block matrix, then linear layers -> one accuracy.

    Input ``[N, 44, 24]`` (rows = blocks, the paper's layout); the convs run over the rows
    with the 24 bits as channels. The output is in the units of the training target (top-1
    as a fraction): the network regresses the standardised target and ``target_mean`` /
    ``target_std`` (buffers, saved with the weights) undo the standardisation.

    Layers after the first run channels-last ([N, rows, channels]), the layout the fast
    genome path's gather produces; ``readout="flatten"`` flattens rows-major.
    """

    def __init__(self, shape: NetworkShape | None = None, rows: int = 44, bits: int = BITS):
        super().__init__()
        self.shape, self.rows, self.bits = shape or NetworkShape(), rows, bits
        k = self.shape.kernel_size
        convs, length, cin = [], rows, bits
        for cout, stride in zip(self.shape.channels, self.shape.strides):
            convs.append(nn.Conv1d(cin, cout, k, stride, padding=k // 2))
            length = (length + 2 * (k // 2) - k) // stride + 1
            cin = cout
        self.convs = nn.ModuleList(convs)
        self.out_length = length
        width = {"flatten": cin * length, "sum": cin, "both": cin * length + cin}[self.shape.readout]
        linears = []
        for hidden in self.shape.hidden:
            linears.append(nn.Linear(width, hidden))
            width = hidden
        self.linears = nn.ModuleList(linears)
        self.out = nn.Linear(width, 1)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 44, 24]`` -> predicted accuracy ``[N]``."""
        return self._tail(_conv_rows(x, self.convs[0]))

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        """Everything after the first conv's pre-activation ``h`` [N, L, C] (channels last)."""
        h = F.relu(h)
        for conv in self.convs[1:]:
            h = F.relu(_conv_rows(h, conv))
        readout = self.shape.readout
        if readout == "flatten":
            h = h.flatten(1)
        elif readout == "sum":
            h = h.sum(1)
        else:
            h = torch.cat([h.flatten(1), h.sum(1)], dim=1)
        for linear in self.linears:
            h = F.relu(linear(h))
        return self.out(h).squeeze(1) * self.target_std + self.target_mean

    def first_conv_tables(self, codes: torch.Tensor) -> torch.Tensor:
        """Per-block contributions of the first conv: ``[k, R + 1, C]`` for ``R`` block codes
        (``codes`` [R, 24]); the extra last row is the zero padding row."""
        weight = self.convs[0].weight  # [C, 24, k]
        tables = torch.einsum("rb,cbk->krc", codes.to(weight.dtype), weight)
        return F.pad(tables, (0, 0, 0, 1))

    def forward_rows(self, rows: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """Predict from catalog-row indices ``rows`` [N, 44] (padding = ``tables.shape[1] - 1``):
        the first conv as a gather of ``tables`` (see :meth:`first_conv_tables`)."""
        conv = self.convs[0]
        k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        padded = F.pad(rows, (pad, pad), value=tables.shape[1] - 1)
        length = (rows.shape[1] + 2 * pad - k) // stride + 1
        h = tables[0][padded[:, 0: stride * (length - 1) + 1: stride]]
        for d in range(1, k):
            h += tables[d][padded[:, d: d + stride * (length - 1) + 1: stride]]
        return self._tail(h + conv.bias)


def _conv_rows(h: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` over the rows of a channels-last ``h`` [N, L, C] -> [N, L', C'], as one matrix
    product of the row windows (im2col): on CPU it is faster than ``conv1d`` for these shapes,
    and channels-last is what the first layer's gather produces."""
    k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    windows = F.pad(h, (0, 0, pad, pad)).unfold(1, k, stride)  # [N, L', C, k]
    return F.linear(windows.flatten(2), conv.weight.flatten(1), conv.bias)


class OneHotMLP(nn.Module):
    """Once-for-All's accuracy predictor: a flat one-hot genome -> 3 x 400 ReLU MLP -> 1."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (400, 400, 400)):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers, nn.Linear(width, 1))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(1) * self.target_std + self.target_mean


# --------------------------------------------------------------------------- genomes -> rows
def check_genomes(space: SearchSpace, genomes) -> np.ndarray:
    """Genomes as int64 [N, G]; refuse a wrong gene count or an out-of-range gene clearly."""
    genomes = np.asarray(genomes)
    if genomes.ndim == 1:
        genomes = genomes[None]
    if genomes.ndim != 2 or genomes.shape[1] != len(space.genes):
        raise ValueError(f"genomes have shape {genomes.shape}; this search space ({SPACE_VERSION}) "
                         f"has {len(space.genes)} genes per genome")
    if genomes.size and not np.issubdtype(genomes.dtype, np.integer):
        raise ValueError(f"genomes must be integers (choice indices), got dtype {genomes.dtype}")
    bad = (genomes < 0) | (genomes >= space.num_choices[None, :])
    if bad.any():
        n, g = np.argwhere(bad)[0]
        raise ValueError(f"genome {n}: gene {space.genes[g].name} = {genomes[n, g]} is out of range "
                         f"0..{space.num_choices[g] - 1} ({SPACE_VERSION})")
    return genomes.astype(np.int64, copy=False)


def genome_rows(encoder: ArchEncoder, genomes: np.ndarray) -> np.ndarray:
    """Catalog rows of each genome's encoding rows, int64 [N, 44]; padding rows hold
    ``len(encoder.codes)``. ``encoder.codes[rows]`` (with a zero padding row) equals
    ``encoder.encode_genomes(genomes)``."""
    # Column-major genomes make block_rows' per-gene column reads contiguous (2.5x faster).
    rows, active = encoder.catalog.block_rows(np.asfortranarray(genomes))
    pad = len(encoder.codes)
    rows = np.where(active, rows, pad)
    if encoder.layout == "stacked":  # active blocks first, in execution order (as the encoder)
        rows = np.take_along_axis(rows, np.argsort(~active, axis=1, kind="stable"), axis=1)
    out = np.full((len(rows), encoder.rows), pad, dtype=np.int64)
    out[:, : rows.shape[1]] = rows
    return out


def one_hot_genomes(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    """Flat one-hot of every gene (Once-for-All's encoding), float32 [N, sum(choices)].
    Inactive genes (blocks beyond a stage's depth, knobs of an absent MHSA) are all zeros."""
    genomes = check_genomes(space, genomes)
    offsets = np.concatenate([[0], np.cumsum(space.num_choices)[:-1]])
    out = np.zeros((len(genomes), int(space.num_choices.sum())), dtype=np.float32)
    n, g = np.nonzero(space.active_mask(genomes))
    out[n, offsets[g] + genomes[n, g]] = 1.0
    return out


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch intra-op threads (process-wide; restored after)."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


# --------------------------------------------------------------------------- the bundle
class PredictorBundle:
    """A trained :class:`AccuracyPredictor` with the encoder it expects: what is saved.

    >>> bundle = PredictorBundle(AccuracyPredictor())
    >>> bundle.predict([SearchSpace().preset("efficientformerv2_s0")]).shape
    (1,)
    """

    def __init__(self, model: AccuracyPredictor, encoder: ArchEncoder | None = None,
                 target: str = "top1", metadata: Mapping[str, Any] | None = None):
        self.encoder = encoder or ArchEncoder()
        if (model.rows, model.bits) != self.encoder.shape:
            raise ValueError(f"predictor expects [{model.rows}, {model.bits}] inputs, the encoder "
                             f"makes {list(self.encoder.shape)}")
        self.model = model.eval()
        self.target = target
        self.metadata = dict(metadata or {})
        self.space_version = SPACE_VERSION

    @property
    def space(self) -> SearchSpace:
        return self.encoder.space

    # ---- prediction
    def predict_genomes(self, genomes, threads: int | None = 1) -> np.ndarray:
        """Predicted accuracy (float32 [N]) of each genome, by the fast gather path.

        ``threads``: torch threads for the call (restored after). One is the default because
        the per-chunk work is small: on this 2-core machine, shared with other jobs, two
        OpenMP threads were 3-10x *slower* than one. ``None`` keeps torch's setting.
        """
        genomes = check_genomes(self.space, genomes)
        out = np.empty(len(genomes), dtype=np.float32)
        with torch_threads(threads), torch.inference_mode():
            model = self.model.eval()
            tables = model.first_conv_tables(torch.from_numpy(self.encoder.codes))
            for start in range(0, len(genomes), _ROWS_CHUNK):
                rows = torch.from_numpy(genome_rows(self.encoder, genomes[start: start + _ROWS_CHUNK]))
                for offset in range(0, len(rows), _FORWARD_CHUNK):
                    chunk = rows[offset: offset + _FORWARD_CHUNK]
                    at = start + offset
                    out[at: at + len(chunk)] = model.forward_rows(chunk, tables).numpy()
        return out

    def predict(self, archs: Iterable[ArchConfig] | ArchConfig) -> np.ndarray:
        """Predicted accuracy of architectures; refuses ones from another search space."""
        archs = [archs] if isinstance(archs, ArchConfig) else list(archs)
        if not archs:
            return np.empty(0, dtype=np.float32)
        return self.predict_genomes(np.stack([self.space.encode(a) for a in archs]))

    @torch.inference_mode()
    def predict_encodings(self, matrix, chunk: int = _FORWARD_CHUNK) -> np.ndarray:
        """Predicted accuracy from the paper's exact input, [N, 44, 24] (or one [44, 24])."""
        matrix = self.encoder.check(matrix)
        model = self.model.eval()
        out = np.empty(len(matrix), dtype=np.float32)
        for start in range(0, len(matrix), chunk):
            x = torch.as_tensor(np.asarray(matrix[start: start + chunk], dtype=np.float32))
            out[start: start + len(x)] = model(x).numpy()
        return out

    # ---- persistence
    def save(self, path: str | Path) -> Path:
        """Write the bundle atomically (``torch.save`` of plain data, loadable without pickle
        of classes): format tag, search-space version, layout, network shape, weights,
        target and metadata."""
        from .io import code_version, torch_save, utc_now

        payload = {
            "format": BUNDLE_FORMAT,
            "space_version": self.space_version,
            "layout": self.encoder.layout,
            "network": asdict(self.model.shape),
            "rows": self.model.rows,
            "bits": self.model.bits,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "target": self.target,
            "metadata": {"code_version": code_version(), "saved_at": utc_now(), **self.metadata},
        }
        return torch_save(path, payload)

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None) -> "PredictorBundle":
        """Load a saved bundle; refuse another format or another search-space version."""
        from .io import torch_load

        payload = torch_load(path)
        if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{path}: not an accuracy predictor bundle (format {found!r}, "
                             f"expected {BUNDLE_FORMAT!r})")
        if payload["space_version"] != SPACE_VERSION:
            raise ValueError(f"{path}: predictor trained on search space {payload['space_version']!r}, "
                             f"this code is {SPACE_VERSION!r}; retrain it (scan-edge fit-predictor)")
        model = AccuracyPredictor(NetworkShape.from_dict(payload["network"]), payload["rows"], payload["bits"])
        model.load_state_dict(payload["state_dict"])
        encoder = ArchEncoder(space, layout=payload["layout"])
        return cls(model, encoder, payload["target"], payload["metadata"])


# --------------------------------------------------------------------------- metrics
def ranking_metrics(predicted, measured, top_fraction: float = 0.1, with_mae: bool = True) -> dict[str, Any]:
    """Spearman's rho, Kendall's tau, MAE and the top-``top_fraction`` precision.

    Precision: of the ``k = ceil(top_fraction * n)`` subnets ranked highest by ``predicted``,
    the fraction that are among the ``k`` highest by ``measured`` (ties broken by order).
    ``with_mae=False`` for scores that are not accuracies (parameter counts): MAE is None.
    """
    from scipy.stats import kendalltau, spearmanr

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
    from scipy.stats import spearmanr

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


def target_values(frame, target: str) -> np.ndarray:
    """The score the predictor learns for ``target``: the column, negated for ``loss``."""
    return _TARGET_SIGN[target] * frame[target].to_numpy(dtype=np.float64)


def score_to_target(score, target: str):
    """A predicted score back in the target's own units (the loss, not -loss)."""
    return _TARGET_SIGN[target] * score


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    scale = 1.0 if target == "loss" else 100.0
    measured, predicted = scale * np.asarray(measured, dtype=float), scale * np.asarray(predicted, dtype=float)
    rho = _spearman(predicted, measured)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
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
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the stage's artifacts
def fit_and_write(pairs_path: str | Path, out_dir: str | Path, config: PredictorConfig | Mapping[str, Any] | None = None,
                  params: Mapping[str, Any] | None = None, log=print) -> tuple[dict[str, Path], dict[str, Any]]:
    """The predictor stage: fit on the pairs table and write, under ``out_dir``:

    ``predictor.pt``               the :class:`PredictorBundle`
    ``metrics.json``               :func:`fit_predictor`'s metrics + ``provenance`` (pairs file
                                   and sha256, their plan key, config, code version, machine)
    ``predicted_vs_measured.png``  Suppl. S4 on the test split
    ``predictions.parquet``        ``arch_id`` (str), ``split`` (str: val | test), ``measured``
                                   and ``predicted`` (float64, the target's units; -loss for
                                   ``loss``) of every val and test pair
    """
    import pandas as pd

    from .io import code_version, file_sha256, machine_fingerprint, read_provenance, utc_now, write_json, write_parquet
    from .pairs import load_pairs

    config = config if isinstance(config, PredictorConfig) else PredictorConfig.from_dict(config)
    pairs = load_pairs(pairs_path)
    bundle, metrics = fit_predictor(pairs, config, log=log)
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
