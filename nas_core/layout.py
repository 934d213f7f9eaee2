"""Where every pipeline artifact lives under the data root: the one place a path is spelled.

Stages, the ``scan-edge`` commands' defaults, the report, the reprofile flow and the
benchmarks all ask :class:`Layout` (and, inside one device's LUT folder, :class:`LutPaths`)
instead of joining folder names themselves, so the tree below cannot drift between its
writers and readers (a test greps the sources for re-spelled paths). Pure paths: nothing
here reads or writes a file.

Artifacts (``root`` = ``data/``)::

    dataset/                               generated classification set + manifest.parquet
    supernet/{supernet.pt,train_log.parquet}
    pairs/accuracy_pairs.parquet           (+ pairs/shards/: resumable work)
    predictor/{predictor.pt,metrics.json,predicted_vs_measured.png,predictions.parquet}
    runtime/<device>.json                  runtime name + version + machine the device runs on
    lut/<device>.parquet                   (+ lut/_work/: exports, raw timings)
    lut/<device>.{calibration.parquet,fit.json,calibration.png}
    lut/<device>.{recalibration.parquet,recalibration.json,recalibration.png}   the second round
    baselines/<device>.parquet             timm baselines timed on the device (Table 3)
    search/<run>/                          one search: history, top-k, .arch.json, measurements
    search/<run>.json                      its summary (a DVC metric)
    finetune/<name>/                       metrics.json, model.pt, model.onnx, train_log.parquet
    finetune/<name>/seeds/seed<s>/         the same model fine-tuned with the other finetune.seeds
    controls/<run>/                        random-architecture controls of a search: draws, .arch.json,
                                           random<i>/seed<s>/ fine-tunes (as finetune/<name>/)
    controls/summary.json                  every control run's summary (Table 3's random rows)
    transfer/{dataset/,runs/,metrics.json} downstream classification (Table 5)
    transfer/runs/seeds/seed<s>/           the same transfers with the other transfer.seeds
    detection/{dataset/,runs/,metrics.json}  SSDLite (Table 6)
    detection/runs/seeds/seed<s>/          the same detectors with the other detection.seeds
    report/                                README.md, tables (Parquet), figures (PNG)
    bundles/<device>/                      jobs for a ``bundle`` device (offline profiling)
    reprofile/<device>-<time>.{md,json,blocks.parquet}   re-profiling change reports
    reprofile/<device>/<time>/before/      the old LUT, fit and searches (search/) set aside, and a bundle
                                           device's old jobs (bundles/)
    reprofile/<device>/in_progress.json    a re-profile started and not finished (continued by the next run)
    .resume/                               resume stamps of interrupted stages (not tracked)

``<run>`` names a search: ``<device>[+<device>]@<target>[_<M>M]`` where ``<target>`` is
``<k>x`` (k times MobileNetV2's latency measured on the device: the paper's targets) or
``<ms>ms``; the fine-tuned model of a search is ``finetune/ours_<run>/``.

One device's LUT folder (:class:`LutPaths`; ``lut/`` above, or any ``--root``)::

    <device>.parquet                 the LUT
    <device>.calibration.parquet     measured subnets (calibration)
    <device>.fit.json                the fitted latency model
    <device>.calibration.png         its figure
    <device>.recalibration.{parquet,json,png}   the second round: the same three, refitted with the
                                     subnets the predictor's searches pick (``LutPaths.second_round``)
    _work/<device>/timings.parquet   raw, resumable block timings (+ subnet_timings[.passN].parquet,
                                     and the second round's searched_timings[.passN].parquet)
    _work/onnx/                      exported blocks and subnets, shared by every device
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

DATA_ROOT = Path("data")

# Inside a stage's output folder: the files other stages and the report read.
METRICS = "metrics.json"
MODEL = "model.pt"


@dataclasses.dataclass(frozen=True)
class LutPaths:
    """Where one device's LUT, calibration and work files live in a LUT folder ``root``."""

    root: Path
    device: str
    export_root: Path | None = None  # None: ``root/_work/onnx``
    # 1: the calibration stage's files; 2: the recalibration stage's (the same LUT, refitted with
    # the subnets the accuracy predictor's searches pick: nas_core.latency.calibration.recalibrate).
    calibration_round: int = 1

    def __post_init__(self):
        if self.calibration_round not in (1, 2):
            raise ValueError(f"calibration_round is 1 or 2, not {self.calibration_round!r}")

    @classmethod
    def for_device(cls, device: str, root: str | os.PathLike | None = None,
                   export_root: str | os.PathLike | None = None) -> "LutPaths":
        """``root`` defaults to the pipeline's ``data/lut``."""
        root = Layout().lut_dir if root is None else Path(root)
        return cls(root, device, Path(export_root) if export_root is not None else None)

    def second_round(self) -> "LutPaths":
        """The same LUT folder, naming the second calibration round's table, fit, figure and timings."""
        return dataclasses.replace(self, calibration_round=2)

    def first_round(self) -> "LutPaths":
        return dataclasses.replace(self, calibration_round=1)

    @property
    def lut(self) -> Path:
        return self.root / f"{self.device}.parquet"

    @property
    def calibration(self) -> Path:
        if self.calibration_round == 2:
            return self.root / f"{self.device}.recalibration.parquet"
        return self.root / f"{self.device}.calibration.parquet"

    @property
    def fit(self) -> Path:
        if self.calibration_round == 2:
            return self.root / f"{self.device}.recalibration.json"
        return self.root / f"{self.device}.fit.json"

    @property
    def search_fit(self) -> Path:
        """The fit the pipeline's searches and controls read: the second round's (the recalibration
        stage's; ``calibration.current_fit`` chooses for commands run by hand)."""
        return self.second_round().fit

    @property
    def figure(self) -> Path:
        if self.calibration_round == 2:
            return self.root / f"{self.device}.recalibration.png"
        return self.root / f"{self.device}.calibration.png"

    @property
    def work(self) -> Path:
        """Resumable raw timing tables of this device."""
        return self.root / "_work" / self.device

    @property
    def block_timings(self) -> Path:
        return self.work / "timings.parquet"

    def block_timings_pass(self, index: int) -> Path:
        """The raw timings of LUT pass ``index`` (0: ``block_timings``; later passes re-time the slowest blocks)."""
        return self.block_timings if index == 0 else self.work / f"timings.pass{index + 1}.parquet"

    @property
    def subnet_timings(self) -> Path:
        return self.work / f"{self._subnets_stem}.parquet"

    def subnet_timings_pass(self, index: int) -> Path:
        """The raw subnet timings of calibration pass ``index`` (0: ``subnet_timings``)."""
        return self.subnet_timings if index == 0 else self.work / f"{self._subnets_stem}.pass{index + 1}.parquet"

    def subnet_job(self, index: int) -> str:
        """The timing job (``location.TimingJob.name``: a board's job folder) of pass ``index`` over
        this round's subnets: each pass is a job of its own, so that a board times it again."""
        name = "recalibration" if self.calibration_round == 2 else "calibration"
        return name if index == 0 else f"{name}-pass{index + 1}"

    @property
    def _subnets_stem(self) -> str:
        return "searched_timings" if self.calibration_round == 2 else "subnet_timings"

    @property
    def searches(self) -> Path:
        """The second round's quick searches (their history files), which chose its subnets."""
        return self.work / "recalibration_searches"

    @property
    def exports(self) -> Path:
        """ONNX exports, shared by every device (keyed by resolution, batch and code)."""
        return self.export_root if self.export_root is not None else default_exports(self.root)


def default_exports(lut_dir: str | os.PathLike) -> Path:
    """The ONNX export cache of a LUT folder (``_work/onnx``)."""
    return Path(lut_dir) / "_work" / "onnx"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every artifact lives under ``root`` (the module docstring's tree)."""

    root: Path = DATA_ROOT

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------ data and training
    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def manifest(self) -> Path:
        return self.dataset / "manifest.parquet"

    @property
    def supernet_dir(self) -> Path:
        return self.root / "supernet"

    @property
    def supernet(self) -> Path:
        return self.supernet_dir / "supernet.pt"

    @property
    def supernet_log(self) -> Path:
        return self.supernet_dir / "train_log.parquet"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs" / "accuracy_pairs.parquet"

    @property
    def predictor_dir(self) -> Path:
        return self.root / "predictor"

    @property
    def predictor(self) -> Path:
        return self.predictor_dir / "predictor.pt"

    @property
    def predictor_metrics(self) -> Path:
        return self.predictor_dir / METRICS

    @property
    def predictor_figure(self) -> Path:
        return self.predictor_dir / "predicted_vs_measured.png"

    # ------------------------------------------------------------------ devices and latency
    def runtime(self, device: str) -> Path:
        return self.root / "runtime" / f"{device}.json"

    @property
    def lut_dir(self) -> Path:
        return self.root / "lut"

    @property
    def lut_exports(self) -> Path:
        return default_exports(self.lut_dir)

    def lut_paths(self, device: str) -> LutPaths:
        return LutPaths.for_device(device, self.lut_dir)

    @property
    def baselines_dir(self) -> Path:
        return self.root / "baselines"

    def baselines(self, device: str) -> Path:
        return self.baselines_dir / f"{device}.parquet"

    @property
    def baselines_work(self) -> Path:
        return self.baselines_dir / "_work"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def reprofile(self) -> Path:
        return self.root / "reprofile"

    def reprofile_before(self, device: str, stamp: str) -> Path:
        """Where a re-profiling sets the device's old LUT, fit and searches aside."""
        return self.reprofile / device / stamp / "before"

    def reprofile_in_progress(self, device: str) -> Path:
        """The record of the device's re-profile that started and has not finished."""
        return self.reprofile / device / "in_progress.json"

    def reprofile_report(self, device: str, stamp: str) -> Path:
        """The change report's stem (``.md``, ``.json``, ``.blocks.parquet`` are added)."""
        return self.reprofile / f"{device}-{stamp}"

    # ------------------------------------------------------------------ search
    @property
    def search_root(self) -> Path:
        return self.root / "search"

    def search_dir(self, run: str) -> Path:
        return self.search_root / run

    def search_summary(self, run: str) -> Path:
        return self.search_root / f"{run}.json"

    # ------------------------------------------------------------------ downstream
    @property
    def finetune_root(self) -> Path:
        return self.root / "finetune"

    def finetune_dir(self, name: str) -> Path:
        return self.finetune_root / name

    def finetune_metrics(self, name: str) -> Path:
        return self.finetune_dir(name) / METRICS

    def finetune_model(self, name: str) -> Path:
        return self.finetune_dir(name) / MODEL

    def finetune_seeds_root(self, name: str) -> Path:
        """Where the runs of ``finetune.seeds`` after the first live (``seed<s>/``, each as a fine-tune folder)."""
        return self.finetune_dir(name) / "seeds"

    @property
    def controls_root(self) -> Path:
        return self.root / "controls"

    def controls_dir(self, run: str) -> Path:
        return self.controls_root / run

    @property
    def controls_summary(self) -> Path:
        return self.controls_root / "summary.json"

    @property
    def transfer(self) -> Path:
        return self.root / "transfer"

    @property
    def transfer_dataset(self) -> Path:
        return self.transfer / "dataset"

    @property
    def transfer_runs(self) -> Path:
        return self.transfer / "runs"

    def transfer_seed_runs(self, seed: int) -> Path:
        """The transfer runs of one of ``transfer.seeds`` after the first (the first's are ``transfer_runs``)."""
        return self.transfer_runs / "seeds" / f"seed{seed}"

    @property
    def transfer_metrics(self) -> Path:
        return self.transfer / METRICS

    @property
    def detection(self) -> Path:
        return self.root / "detection"

    @property
    def detection_dataset(self) -> Path:
        return self.detection / "dataset"

    @property
    def detection_runs(self) -> Path:
        return self.detection / "runs"

    def detection_seed_runs(self, seed: int) -> Path:
        """The detectors of one of ``detection.seeds`` after the first (the first's are ``detection_runs``)."""
        return self.detection_runs / "seeds" / f"seed{seed}"

    @property
    def detection_metrics(self) -> Path:
        return self.detection / METRICS

    # ------------------------------------------------------------------ report and bookkeeping
    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_readme(self) -> Path:
        return self.report / "README.md"

    @property
    def resume_stamps(self) -> Path:
        return self.root / ".resume"

    def resume_stamp(self, stage_id: str) -> Path:
        """What the last run of ``stage_id`` (``lut@<device>``, ``finetune@<name>``, ...) depended on."""
        return self.resume_stamps / f"{stage_id.replace('/', '_')}.json"


DATA = Layout()  # the pipeline's own data root (relative to the project): CLI defaults read it
