"""Run the training stages of two versions of the code on the same tiny params and compare
their artifacts: bytes first, then values where the bytes differ.

    python benchmarks/compare_versions.py --before bd21dfb        a git ref vs this checkout
    python benchmarks/compare_versions.py --before REF --after REF2
    python benchmarks/compare_versions.py --before bd21dfb --before-patch benchmarks/patches/bd21dfb-seed-finetune.patch

A refactor that only moves code must leave the artifacts identical. Each version runs
``scan-edge stage`` dataset, supernet, pairs, predictor and the fine-tune of MobileNetV2
from scratch (``--params``-sized down so both finish in minutes, one thread each, with its
own artifact root), in a git worktree of ``--before`` (and of ``--after`` when given; else in
this checkout). Both use this checkout's ``.venv`` (the same libraries: only the project's
code differs). Then, per artifact: byte-identical, or for checkpoints which tensors differ,
for tables which columns differ, for JSON which keys differ. Timings, dates, paths and the
code version differ by nature; the report lists them so you can see that nothing else does.

Writes ``benchmarks/results/compare_versions.json`` (the refs, each artifact's verdict).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "compare_versions.json"
STAGES = ("dataset", "supernet", "pairs", "predictor")
BASELINE = "mobilenetv2_100"

# Tiny values applied to each version's own params.yaml (both read the same keys).
TINY = {
    "dataset": dict(num_classes=4, train_per_class=24, val_per_class=10, test_per_class=10, image_size=32),
    "supernet": dict(resolution=32, epochs=2, steps_per_epoch=3, batch_size=8, eval_every=2, eval_batch_size=40,
                     bn_calib_batches=1, bn_calib_batch_size=16, threads=1, warmup_epochs=0.25),
    "pairs": dict(num_subnets=8, shard_size=4, eval_batch_size=40, bn_calib_batches=1, bn_calib_batch_size=16,
                  val_fraction=0.25, test_fraction=0.25),
    "predictor": dict(epochs=5, seeds=[0]),
    "finetune": dict(resolution=32, epochs=1, steps_per_epoch=3, batch_size=8, eval_batch_size=40,
                     bn_calib_batches=1, devices=[]),  # no latency: timings never repeat bit for bit
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git ref of the older version")
    parser.add_argument("--after", help="git ref of the newer version (default: this checkout as it is)")
    parser.add_argument("--before-patch", type=Path,
                        help="a patch applied to the --before worktree (e.g. a fix of a bug both versions share)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--compare-only", action="store_true",
                        help="compare the artifacts of an earlier run in --work without running the stages again")
    return parser.parse_args(argv)


def tiny_params(checkout: Path, out: Path) -> Path:
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params.setdefault("pipeline", {})["finetune_baselines"] = {BASELINE: "scratch"}
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_version(checkout: Path, out: Path) -> Path:
    """The tiny stages in ``checkout``; returns its artifact root."""
    out.mkdir(parents=True, exist_ok=True)
    params, root = tiny_params(checkout, out), out / "data"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCAN_EDGE_CPU_LOCK": str(out / "cpu.lock"),
           "PREFECT_HOME": str(out / "prefect")}
    commands = [[stage] for stage in STAGES] + [["finetune", "--name", BASELINE]]
    for command in commands:
        print(f"[{checkout.name}] stage {' '.join(command)}", flush=True)
        log = out / f"{command[0]}.log"
        with log.open("w") as handle:
            done = subprocess.run([sys.executable, "-m", "flows.cli", "stage", *command, "--params", str(params),
                                   "--root", str(root)], cwd=checkout, env=env, stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode:
            sys.exit(f"stage {command[0]} failed in {checkout}; see {log}:\n{log.read_text()[-2000:]}")
    return root


def worktree(ref: str, path: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=PROJECT_ROOT, check=True,
                   capture_output=True)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensors(obj, prefix: str = ""):
    """Every tensor in a (nested) checkpoint, by its path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from tensors(value, f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from tensors(value, f"{prefix}[{i}]")


def compare_checkpoint(a: Path, b: Path) -> dict:
    ta = dict(tensors(torch.load(a, map_location="cpu", weights_only=False)))
    tb = dict(tensors(torch.load(b, map_location="cpu", weights_only=False)))
    common = sorted(set(ta) & set(tb))
    differing = [k for k in common if not torch.equal(ta[k], tb[k])]
    return {"tensors": len(common), "tensors_differing": differing[:10], "n_tensors_differing": len(differing),
            "only_before": sorted(set(ta) - set(tb)), "only_after": sorted(set(tb) - set(ta))}


def compare_table(a: Path, b: Path) -> dict:
    da, db = pd.read_parquet(a), pd.read_parquet(b)
    common = [c for c in da.columns if c in db.columns]
    differing = [c for c in common if len(da) != len(db) or not da[c].astype(str).equals(db[c].astype(str))]
    return {"rows": [len(da), len(db)], "columns_differing": differing,
            "only_before": sorted(set(da.columns) - set(db.columns)),
            "only_after": sorted(set(db.columns) - set(da.columns))}


def flat(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    if isinstance(obj, list):
        return {k: v for i, value in enumerate(obj) for k, v in flat(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def same_value(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def compare_json(a: Path, b: Path) -> dict:
    fa, fb = flat(json.loads(a.read_text())), flat(json.loads(b.read_text()))
    return {"keys_differing": sorted(k for k in set(fa) | set(fb) if not same_value(fa.get(k), fb.get(k)))}


def compare(before: Path, after: Path) -> dict:
    files = sorted({p.relative_to(root) for root in (before, after) for p in root.rglob("*")
                    if p.is_file() and ".resume" not in p.parts})
    dataset = [f for f in files if f.parts[0] == "dataset"]
    report = {"dataset_files": len(dataset),
              "dataset_identical": sum((before / f).exists() and (after / f).exists()
                                       and digest(before / f) == digest(after / f) for f in dataset)}
    artifacts = {}
    for rel in (f for f in files if f.parts[0] != "dataset"):
        a, b = before / rel, after / rel
        if not (a.exists() and b.exists()):
            artifacts[str(rel)] = {"verdict": "only in " + ("after" if b.exists() else "before")}
        elif digest(a) == digest(b):
            artifacts[str(rel)] = {"verdict": "byte-identical"}
        elif rel.suffix == ".pt":
            artifacts[str(rel)] = {"verdict": "bytes differ", **compare_checkpoint(a, b)}
        elif rel.suffix == ".parquet":
            artifacts[str(rel)] = {"verdict": "bytes differ", **compare_table(a, b)}
        elif rel.suffix == ".json":
            artifacts[str(rel)] = {"verdict": "bytes differ", **compare_json(a, b)}
        else:
            artifacts[str(rel)] = {"verdict": "bytes differ"}
    report["artifacts"] = artifacts
    return report


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="compare_versions."))
    if args.compare_only:
        if args.work is None:
            sys.exit("--compare-only needs the --work folder of an earlier run")
        report = {"before": args.before, "before_patch": str(args.before_patch or ""), "after": args.after or "working tree",
                  **compare(work / "before" / "data", work / "after" / "data")}
        return write_report(report)
    trees = []
    try:
        before_tree = worktree(args.before, work / "before-tree")
        trees.append(before_tree)
        if args.before_patch:
            subprocess.run(["git", "apply", str(args.before_patch.resolve())], cwd=before_tree, check=True)
        after_tree = PROJECT_ROOT
        if args.after:
            after_tree = worktree(args.after, work / "after-tree")
            trees.append(after_tree)
        before = run_version(before_tree, work / "before")
        after = run_version(after_tree, work / "after")
        report = {"before": args.before, "before_patch": str(args.before_patch or ""), "after": args.after or "working tree", **compare(before, after)}
    finally:
        for tree in trees:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=PROJECT_ROOT, capture_output=True)
    write_report(report)


def write_report(report: dict) -> None:
    print(f"dataset: {report['dataset_identical']}/{report['dataset_files']} files byte-identical")
    for rel, verdict in report["artifacts"].items():
        detail = {k: v for k, v in verdict.items() if k != "verdict" and v}
        print(f"{rel}: {verdict['verdict']} {json.dumps(detail) if detail else ''}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
