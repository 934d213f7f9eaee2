"""Does ESHA enter the searched network? A search in the extended space vs Table 2's (issue 19).

    python benchmarks/esha_search.py --root data            # a pipeline run with search_space.attention: [mhsa, esha]
    python benchmarks/esha_search.py --tiny WORK            # builds a tiny one on generated data first
        [--device ort_cpu_fp32] [--multiple 1.0] [--no-measure] [--out benchmarks/results/esha_search.json]

Both searches read the same artifacts of the extended space: supernet-trained predictor, LUT,
calibration and MobileNetV2's latency on the device (the target is ``multiple`` x that). The
extended search is the search stage's own (``tasks.stages.search_setup`` + ``run_search``, with
its on-device check). The Table 2 search is the same evolutionary search over Table 2's genes,
each genome scored as the extended genome with every attention an MHSA, and its latency
estimated from the same calibrated per-block table restricted to Table 2's blocks. So the two
differ only in whether ESHA may be chosen; their predicted accuracies come from one predictor
and are comparable, their latencies are measured on the device.

``--tiny WORK`` first runs the pipeline's stages (dataset, supernet, pairs, predictor, LUT,
baselines, calibration: ``tasks.stages``) in WORK with the dry run's sizes
(``tasks.dry_run.DRY_RUN_OVERRIDES``), a 4-class generated dataset and the extended space, at
``search_space.resolution`` of params (224): a check of the wiring and of ESHA's latency, not
of accuracy (a supernet of a few steps ranks nothing).

Writes JSON: ``{"device", "multiple", "target_ms", "root", "tiny", "extended": S, "table2": S,
"esha_entered": bool, "predicted_gain", "measured_ms_ratio", "seconds", "created",
"code_version", "machine"}`` with ``S = {"arch_id", "compact", "esha", "attentions",
"predicted_accuracy", "estimated_ms", "measured_ms", "within", "params", "macs"}``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas_core.block_catalog import BlockCatalog  # noqa: E402
from nas_core.io import code_version, machine_fingerprint, utc_now, write_json  # noqa: E402
from nas_core.layout import Layout  # noqa: E402
from nas_core.params import deep_merge, load_params  # noqa: E402
from nas_core.search_constraints import BlockTableEstimator  # noqa: E402
from nas_core.search_report import measured_latency  # noqa: E402
from nas_core.search_space import SearchSpace  # noqa: E402

EXTENDED = {"search_space": {"attention": ["mhsa", "esha"]}}
TINY_DATASET = {"num_classes": 4, "train_per_class": 16, "val_per_class": 4, "test_per_class": 4, "image_size": 32}
TINY_STAGES = ("dataset", "supernet", "pairs", "predictor")
TINY_DEVICE_STAGES = ("lut", "baselines", "calibration")


# --------------------------------------------------------------------------- params and the tiny pipeline
def extended_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with the extended space (``search_space.attention: [mhsa, esha]``)."""
    return deep_merge(copy.deepcopy(dict(params)), EXTENDED)


def tiny_params(params: Mapping[str, Any], device: str) -> dict[str, Any]:
    """The dry run's sizes, a tiny generated dataset, one device, MobileNetV2 as the only baseline;
    the resolution of the searched models stays the profile's (latency at deployment size)."""
    from tasks.dry_run import DRY_RUN_OVERRIDES

    resolution = (params.get("search_space") or {}).get("resolution")
    out = deep_merge(extended_params(params), copy.deepcopy(DRY_RUN_OVERRIDES))
    out["search_space"]["resolution"] = resolution
    out["dataset"] = {**(out.get("dataset") or {}), **TINY_DATASET}
    out["search"]["devices"] = [device]
    out["baselines"]["models"] = []
    return out


def build_tiny(root: Path, params: Mapping[str, Any], device: str, say: Callable[[str], None] = print) -> None:
    """Run the stages a search needs, in ``root`` (each stage resumes or skips work already done)."""
    from tasks import stages

    for name in TINY_STAGES:
        started = time.perf_counter()
        getattr(stages, f"stage_{name}")(params, root)
        say(f"tiny {name}: {time.perf_counter() - started:.0f} s")
    for name in TINY_DEVICE_STAGES:
        started = time.perf_counter()
        getattr(stages, f"stage_{name}")(params, device, root)
        say(f"tiny {name} {device}: {time.perf_counter() - started:.0f} s")


# --------------------------------------------------------------------------- Table 2 inside the extended artifacts
class MhsaOnly:
    """Scores Table 2 genomes with a scorer of extended genomes: each as the extended genome of
    the same architecture (gene by gene, by name; every attention-type gene 0, MHSA)."""

    def __init__(self, scorer, extended: SearchSpace, table2: SearchSpace):
        self.scorer = scorer
        self.columns = np.array([extended.gene_index[gene.name] for gene in table2.genes])
        self.width = len(extended.genes)
        probe = table2.preset("efficientformerv2_s0")  # the mapping must be the space's own encoding
        if not np.array_equal(self.extend(table2.encode(probe)[None])[0], extended.encode(probe)):
            raise AssertionError("Table 2's genes do not map onto the extended space's by name")

    def extend(self, genomes: np.ndarray) -> np.ndarray:
        genomes = np.atleast_2d(np.asarray(genomes, dtype=np.int64))
        out = np.zeros((len(genomes), self.width), dtype=np.int64)
        out[:, self.columns] = genomes
        return out

    def predict_genomes(self, genomes: np.ndarray) -> np.ndarray:
        return self.scorer.predict_genomes(self.extend(genomes))


def table2_estimator(estimator, catalog: BlockCatalog) -> BlockTableEstimator:
    """The extended estimator's calibrated per-block table on Table 2's blocks (the same ms per
    block, the same intercept; exact minimum over Table 2)."""
    if hasattr(estimator, "calibrated_block_ms"):  # nas_core.efficiency_predictor.LatencyEstimator
        table, scale, offset = estimator.calibrated_block_ms, 1.0, estimator.intercept_ms
    else:  # a BlockTableEstimator (tests)
        table, scale, offset = estimator.table, estimator.scale, estimator.offset
    rows = [estimator.catalog.index[block.block_id] for block in catalog.blocks]
    restricted = BlockTableEstimator(catalog, np.asarray(table)[rows], scale, offset,
                                     name=getattr(estimator, "name", "lat"))
    # The same LUT: the on-device check reads its identity (the runtime version a board must run).
    restricted.provenance = dict(getattr(estimator, "provenance", {}))
    return restricted


def table2_setup(setup, out_dir: Path):
    """The extended search's set-up restricted to Table 2 (same predictor, LUT, calibration)."""
    table2 = SearchSpace()
    catalog = BlockCatalog(table2, setup.catalog.resolution)
    return dataclasses.replace(setup, space=table2, catalog=catalog, out_dir=Path(out_dir),
                               predictor=MhsaOnly(setup.predictor, setup.space, table2),
                               estimators={d: table2_estimator(e, catalog) for d, e in setup.estimators.items()})


# --------------------------------------------------------------------------- the comparison
def attention_counts(arch) -> dict[str, int]:
    """How many attentions of each type the architecture has (stages 3-4; not embed 3's)."""
    counts = {"mhsa": 0, "esha": 0}
    for stage in arch.stages:
        for block in stage.blocks:
            if block.mhsa is not None:
                counts[block.mhsa.type] += 1
    return counts


def one_search(setup, targets: Mapping[str, float], *, measure: bool, accesses=None, measure_fn=None,
               lock=None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """``run_search`` on ``setup``; the chosen network's summary (``S`` of the module docstring)."""
    from nas_core.locks import no_lock
    from nas_core.search_run import run_search

    record, within = run_search(setup, targets, measure=measure, accesses=accesses, measure_fn=measure_fn,
                                lock=lock or no_lock, say=say, force=True)
    arch = setup.space.from_dict(record["arch"])
    counts = attention_counts(arch)
    run = record["name"].removeprefix("ours_")  # the files are named by the run, the record by the model
    measured = measured_latency(setup.out_dir, run, record["arch_id"]) if measure else None
    return {"arch_id": record["arch_id"], "compact": record.get("compact"), "esha": counts["esha"],
            "attentions": counts["mhsa"] + counts["esha"], "predicted_accuracy": record.get("predicted_accuracy"),
            "estimated_ms": record.get("latency_ms"), "measured_ms": measured,
            "within": bool(within) if measure else None, "params": record.get("params"), "macs": record.get("macs")}


def compare(setup, targets: Mapping[str, float], work: Path, *, measure: bool, accesses=None, measure_fn=None,
            lock=None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Search in ``setup``'s extended space and in Table 2 within it; the two summaries side by side."""
    if not setup.space.spec.searches_attention_type:
        raise ValueError(f"the set-up searches {setup.space.spec.label}: give it the extended space's artifacts "
                         "(search_space.attention: [mhsa, esha])")
    runs = {"extended": dataclasses.replace(setup, out_dir=Path(work) / "extended"),
            "table2": table2_setup(setup, Path(work) / "table2")}
    found = {}
    for name, run_setup in runs.items():
        run_setup.out_dir.mkdir(parents=True, exist_ok=True)
        found[name] = one_search(run_setup, targets, measure=measure, accesses=accesses, measure_fn=measure_fn,
                                 lock=lock, say=say)
    ext, t2 = found["extended"], found["table2"]
    ratio = None
    if ext["measured_ms"] and t2["measured_ms"]:
        ratio = {d: ext["measured_ms"][d] / t2["measured_ms"][d] for d in ext["measured_ms"] if d in t2["measured_ms"]}
    return {**found, "esha_entered": ext["esha"] > 0,
            "predicted_gain": ext["predicted_accuracy"] - t2["predicted_accuracy"], "measured_ms_ratio": ratio}


# --------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=Path, help="data root of a pipeline run in the extended space")
    source.add_argument("--tiny", type=Path, metavar="WORK", help="build a tiny extended-space pipeline here first")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--device", default="ort_cpu_fp32")
    parser.add_argument("--multiple", type=float, default=1.0, help="target: k x MobileNetV2's measured latency")
    parser.add_argument("--no-measure", action="store_true", help="skip the on-device check (estimates only)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/esha_search.json"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from tasks import stage_lock
    from tasks.stages import SearchRun, device_access, search_setup, target_latencies

    args = parse_args(argv)
    started = time.perf_counter()
    params = load_params(args.params, args.profile)
    if args.tiny:
        root, params = args.tiny / "data", tiny_params(params, args.device)
        build_tiny(root, params, args.device)
    else:
        root, params = args.root, extended_params(params)
    layout = Layout(root)
    targets = target_latencies(SearchRun((args.device,), f"{args.multiple}x"), layout)
    work = root.parent / "esha_search"
    setup = search_setup(params, [args.device], predictor=layout.predictor, lut_dir=layout.lut_dir, out_dir=work)
    accesses = None if args.no_measure else {args.device: device_access(params, args.device, root)}
    result = compare(setup, targets, work, measure=not args.no_measure, accesses=accesses, lock=stage_lock)
    result = {"device": args.device, "multiple": args.multiple, "target_ms": targets[args.device], "root": str(root),
              "tiny": bool(args.tiny), **result, "seconds": round(time.perf_counter() - started, 1),
              "created": utc_now(), "code_version": code_version(), "machine": machine_fingerprint()}
    write_json(args.out, result)
    for name in ("extended", "table2"):
        r = result[name]
        print(f"{name:>8}: {r['compact']}\n          ESHA {r['esha']}/{r['attentions']} attentions, predicted "
              f"{r['predicted_accuracy']:.4f}, estimated {r['estimated_ms']}, measured {r['measured_ms']}")
    print(f"ESHA entered: {result['esha_entered']}; wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
