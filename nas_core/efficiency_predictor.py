"""Latency of architectures for the search: calibrated LUT sums over batches of genomes (§5.3).

The search scores millions of candidates, so the estimate is a table look-up and a sum
(Once-for-All calls this the efficiency predictor)::

    lut_sum(subnet) = sum of its blocks' LUT latencies            (BlockCatalog.sum_table)
    latency(subnet) = a · lut_sum(subnet) + b                      (the paper's calibration)

The calibration may also choose a richer model of the same family (per-group scales and a
per-block term, ``nas_core.latency.latency_model``); any such model is a per-block table
plus a constant, so the estimate stays one table sum per genome.

Everything is vectorised over genomes (``SearchSpace.genes``): no architecture objects,
no Python loop per candidate. ``LatencyEstimator.from_files`` refuses any table that would
give a silently wrong number: a LUT for another device, runtime version, resolution,
precision, threads or batch; a LUT with missing blocks; a fit made from another LUT.

>>> est = LatencyEstimator.from_files("data/lut/ort_cpu_fp32.parquet",
...                                   "data/lut/ort_cpu_fp32.fit.json", "ort_cpu_fp32")  # doctest: +SKIP
>>> est.predict_genomes(space.sample_genomes(100_000, rng))        # doctest: +SKIP
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable, Mapping

import numpy as np

from nas_core.block_catalog import HEAD_CLASSES, BlockCatalog
from nas_core.io import file_sha256
from nas_core.latency.calibration import current_fit, fitted_model, read_fit
from nas_core.layout import DATA
from nas_core.latency.latency_model import LatencyModel
from nas_core.latency.devices import DeviceProfile, get_profile, load_profiles
from nas_core.latency.lut import LookupTable, LutError, LutPaths
from nas_core.search_space import ArchConfig, SearchSpace


class LatencyEstimator:
    """Calibrated latency (ms) of genomes on one device: ``a · Σ block_ms + b``.

    ``block_ms`` holds one latency per catalog row (``catalog.blocks``); ``a = 1, b = 0``
    gives the raw LUT sum.
    """

    def __init__(self, catalog: BlockCatalog, block_ms: np.ndarray, a: float = 1.0, b: float = 0.0, *,
                 device: str | None = None, provenance: Mapping | None = None, model: LatencyModel | None = None):
        block_ms = np.asarray(block_ms, dtype=np.float64)
        if block_ms.shape != (len(catalog.blocks),):
            raise LutError(f"block_ms must have one value per catalog block ({len(catalog.blocks)}), "
                           f"got shape {block_ms.shape}")
        if not np.isfinite(block_ms).all():
            raise LutError(f"block_ms has {int((~np.isfinite(block_ms)).sum())} missing (non-finite) latencies")
        self.catalog, self.space = catalog, catalog.space
        self.block_ms = block_ms
        self.model = model or LatencyModel.paper_line(a, b)
        # What the estimate sums: the calibrated per-block table (a · block_ms for the paper's line).
        self.calibrated_block_ms = self.model.effective_block_ms(catalog, block_ms)
        self.intercept_ms = self.model.intercept_ms
        self.device = device
        self.provenance = dict(provenance or {})

    @classmethod
    def from_files(cls, lut_parquet: str | os.PathLike, fit_json: str | os.PathLike | None,
                   profile: DeviceProfile | str, *, runtime_version: str | None = None,
                   space: SearchSpace | None = None, profiles: Mapping[str, DeviceProfile] | None = None,
                   ) -> "LatencyEstimator":
        """The estimator of ``profile`` (a DeviceProfile, or a name looked up in ``profiles``,
        default the built-in ones) from its LUT and calibration fit (None: raw LUT sums).

        Raises ``KeyError`` listing the devices for an unknown name, and ``LutError`` when the
        LUT does not match the profile (``LookupTable.check_matches``; ``runtime_version``
        overrides the expected version, e.g. for a LUT measured on a remote device), lacks
        blocks, or the fit was made for another device or from another LUT.
        """
        if isinstance(profile, str):
            profile = get_profile(profile, profiles if profiles is not None else load_profiles())
        lut = LookupTable.read(lut_parquet)
        lut.check_matches(profile, runtime_version)
        catalog = BlockCatalog(space or SearchSpace(), profile.resolution)
        block_ms = lut.require_complete(catalog, f"complete it: scan-edge lut build --device {profile.name} --resume")
        model = LatencyModel.paper_line(1.0, 0.0)
        if fit_json is not None:
            model = fitted_model(_checked_fit(fit_json, lut, profile))
        provenance = {"lut": str(lut_parquet), "fit": str(fit_json) if fit_json else None,
                      "lut_identity": lut.identity, "calibrated": fit_json is not None, "model": model.name}
        return cls(catalog, block_ms, device=profile.name, provenance=provenance, model=model)

    @classmethod
    def for_device(cls, profile: DeviceProfile | str, root: str | os.PathLike = DATA.lut_dir, **kwargs
                   ) -> "LatencyEstimator":
        """``from_files`` with the standard file names under ``root`` (``LutPaths``) and the fit the
        searches read (``calibration.current_fit``: the second round's when current)."""
        name = profile if isinstance(profile, str) else profile.name
        paths = LutPaths.for_device(name, root)
        return cls.from_files(paths.lut, current_fit(paths), profile, **kwargs)

    # ---- estimates
    def raw_sum_ms(self, genomes: np.ndarray) -> np.ndarray:
        """Sum of the LUT latencies of each genome's blocks (uncalibrated), shape [N]."""
        return self.catalog.sum_table(self.block_ms, genomes)

    def predict_genomes(self, genomes: np.ndarray) -> np.ndarray:
        """Calibrated latency (ms) of each genome, shape [N]."""
        return self.catalog.sum_table(self.calibrated_block_ms, genomes) + self.intercept_ms

    def predict(self, archs: ArchConfig | Iterable[ArchConfig]) -> np.ndarray:
        """Calibrated latency (ms) of architectures (one or many), shape [N]."""
        archs = [archs] if isinstance(archs, ArchConfig) else list(archs)
        return self.predict_genomes(np.stack([self.space.encode(arch) for arch in archs]))

    def count_params(self, genomes: np.ndarray, num_classes: int = HEAD_CLASSES) -> np.ndarray:
        return self.catalog.count_params(genomes, num_classes)

    def count_macs(self, genomes: np.ndarray, num_classes: int = HEAD_CLASSES) -> np.ndarray:
        return self.catalog.count_macs(genomes, num_classes)

    # ---- the feasible range
    def min_latency_ms(self) -> float:
        """The exact minimum calibrated latency over the whole space (targets below it are infeasible)."""
        return float(self.predict_genomes(self._fastest_genome()[None])[0])

    def fastest_arch(self) -> ArchConfig:
        """An architecture with the minimum calibrated latency (the minimum raw sum when a >= 0)."""
        return self.space.decode(self._fastest_genome())

    def _fastest_genome(self) -> np.ndarray:
        # Exact: the estimate is a table sum plus a constant, whatever the model (a negative
        # slope, refused in fit files but possible by hand, just makes the table negative).
        return self.catalog.min_table_sum(self.calibrated_block_ms)[1]


def _checked_fit(fit_json, lut: LookupTable, profile: DeviceProfile) -> dict:
    fit = read_fit(fit_json)
    if fit.get("device") != profile.name:
        raise LutError(f"{fit_json} calibrates device {fit.get('device')!r}, not {profile.name!r}")
    made_from = (fit.get("lut") or {}).get("sha256")
    if made_from != file_sha256(lut.path):
        raise LutError(f"{fit_json} was fitted on another version of {lut.path} (the LUT changed since); "
                       f"re-run scan-edge lut calibrate --device {profile.name}")
    model = fitted_model(fit)
    if any(scale <= 0 for scale in model.scales.values()) and model.name == "linear":
        raise LutError(f"{fit_json}: calibration slope a = {model.scales} is not positive, so the estimate would "
                       f"rank architectures backwards; re-run the calibration on a quiet machine")
    if not (fit.get("targets") or {}).get("met", True):
        scored = ((fit.get("metrics") or {}).get("validation") or {}).get("calibrated") or {}  # the chosen model
        mape, spearman = scored.get("mape_pct") or float("nan"), scored.get("spearman") or float("nan")
        worst, within = scored.get("max_ape_pct") or float("nan"), scored.get("within_5_pct") or float("nan")
        failed = ", ".join(fit["targets"].get("failed") or []) or "unknown"
        warnings.warn(f"{fit_json}: the calibrated LUT missed its accuracy targets on the held-out subnets "
                      f"({failed}: MAPE {mape:.1f} %, max {worst:.1f} %, Spearman {spearman:.3f}, "
                      f"{within:.0%} within ±5 %); its estimates may be off by that much. Was the machine "
                      "busy? Re-run the LUT and calibration on a quiet machine (or with the cpu clock, see "
                      "nas_core.latency.lut.CLOCKS)", stacklevel=3)
    return fit
