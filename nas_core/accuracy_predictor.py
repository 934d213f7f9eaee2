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
Fitting it on the pairs (training, selection, baselines, the stage's artifacts) is
:mod:`nas_core.predictor_training`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .encoding import BITS, ArchEncoder
from .io import code_version, torch_load, torch_save, utc_now
from .search_space import SPACE_VERSION, ArchConfig, SearchSpace, SpaceSpec
from .threads import torch_threads

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
        of classes): format tag, search-space version and spec, layout, network shape, weights,
        target and metadata."""
        payload = {
            "format": BUNDLE_FORMAT,
            "space_version": self.space_version,
            "space_spec": self.encoder.space.spec.to_dict(),
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
        """Load a saved bundle; refuse another format or another search-space version. Its
        encoder is over the space it was trained on (``space`` when given: it must be that one)."""
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
        stored = SpaceSpec.from_dict(payload.get("space_spec"))  # bundles from before: Table 2
        if space is not None and space.spec != stored:
            raise ValueError(f"{path}: predictor trained on another search space ({stored.label}) than "
                             f"the one asked for ({space.spec.label}); refit it (scan-edge fit-predictor)")
        encoder = ArchEncoder(space or SearchSpace(stored), layout=payload["layout"])
        return cls(model, encoder, payload["target"], payload["metadata"])


# --------------------------------------------------------------------------- the predictor's target
def target_values(frame, target: str) -> np.ndarray:
    """The score the predictor learns for ``target``: the column, negated for ``loss``."""
    return _TARGET_SIGN[target] * frame[target].to_numpy(dtype=np.float64)


def score_to_target(score, target: str):
    """A predicted score back in the target's own units (the loss, not -loss)."""
    return _TARGET_SIGN[target] * score
