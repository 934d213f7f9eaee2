"""Is a trained supernet useful? Inherited-weight accuracy of random subnets vs their size.

    python benchmarks/supernet_quality.py --out quality.json [--supernet data/supernet/supernet.pt]
                                          [--data data/dataset] [--num-subnets 50] [--val-images 800]
                                          [--repeat-split test]
    python benchmarks/supernet_quality.py --resummarize quality.json --out quality.json

Loads a trained supernet and evaluates, with weights inherited and BatchNorm statistics
recalibrated on a fixed set of training images (``nas_core.evaluate``), the smallest and
largest subnets (``space.smallest()`` / ``space.largest()``) and ``--num-subnets`` uniformly
random ones on the dataset's ``val`` split (a fixed seeded subset with ``--val-images``).
The search downstream needs three things from it, each reported:

* the largest subnet far above chance (``1 / num_classes``);
* random subnets' accuracies spread over a useful range (not all at chance, not all equal);
* accuracy increasing with size: Spearman rank correlation of top-1 with params and MACs,
  and of the negated val loss (``-loss``: higher is better, like top-1) with them.

``--repeat-split test`` measures how much of that is the subnets and how much the images:
every subnet is evaluated again, with the same BN statistics, on a second split the
supernet never saw. The Spearman correlation between the two splits' top-1 (and loss) is the
*reliability* of the labels: a ranking that another set of images does not repeat is noise,
and no accuracy predictor trained on such labels can rank held-out subnets better.

JSON: ``{"supernet": path, "supernet_meta": {...}, "dataset": path, "num_classes", "chance",
"val_images", "bn_calib": {"batches", "batch_size"}, "subnets": [{"role", "arch_id",
"top1", "top5", "loss", "params", "macs", "seconds", "arch"}], "summary": {"top1_largest",
"top1_smallest", "random_top1": {"min", "median", "max", "std"}, "spearman_params",
"spearman_macs", "spearman_params_all", "spearman_macs_all", "spearman_neg_loss_params",
"spearman_neg_loss_macs", "above_chance_fraction", "feature_spearman_neg_loss",
"feature_spearman_top1" ({feature: rho}, strongest first, see :func:`arch_features`),
and with --repeat-split: "reliability":
{"top1", "loss"}, "spearman_pooled_{top1,neg_loss}_{params,macs}" (both splits' images)}},
"threads", "created", "code_version"}``. ``spearman_*`` use the random subnets;
``*_all`` add the smallest and largest.

``--resummarize RESULTS.json --out NEW.json`` recomputes the summary of earlier results
without evaluating anything (for summary fields added since).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas_core.io import code_version, utc_now, write_json  # noqa: E402
from nas_core.layout import DATA  # noqa: E402


def load_eval_data(manifest, root: Path, resolution: int, val_images: int | None, batch_size: int,
                   calib_batches: int, calib_batch_size: int, seed: int):
    """Decoded once: the BN calibration batches (train split) and the val batches."""
    from nas_core.data.folders import build_loader
    from nas_core.evaluate import calibration_batches

    calib_source = build_loader(manifest, root, "train", resolution, calib_batch_size, train=False).dataset
    calib = calibration_batches(calib_source, calib_batches, calib_batch_size, seed)
    return calib, load_split(manifest, root, "val", resolution, val_images, batch_size, seed)


def load_split(manifest, root: Path, split: str, resolution: int, images: int | None, batch_size: int,
               seed: int) -> list:
    """``split``'s decoded batches: all of it, or a seeded subset of ``images``."""
    from torch.utils.data import DataLoader, Subset

    from nas_core.data.folders import build_loader

    dataset = build_loader(manifest, root, split, resolution, batch_size, train=False).dataset
    indices = list(range(len(dataset)))
    if images is not None and images < len(dataset):
        generator = torch.Generator().manual_seed(seed)
        indices = sorted(torch.randperm(len(dataset), generator=generator)[:images].tolist())
    return [(x, y) for x, y in DataLoader(Subset(dataset, indices), batch_size=batch_size)]


def evaluate_subnets(supernet, archs, calib, val_batches, num_classes: int, repeat_batches=None) -> list[dict]:
    from nas_core.block_catalog import BlockCatalog
    from nas_core.evaluate import evaluate, recalibrate_bn

    catalog = BlockCatalog(supernet.space, supernet.resolution)
    genomes = np.stack([supernet.space.encode(arch) for _, arch in archs])
    params = catalog.count_params(genomes, num_classes)
    macs = catalog.count_macs(genomes, num_classes)
    rows = []
    for i, (role, arch) in enumerate(archs):
        start = time.perf_counter()
        recalibrate_bn(supernet, arch, calib, len(calib))
        metrics = evaluate(supernet, val_batches, arch)
        if repeat_batches is not None:  # same BN statistics, other images
            metrics["repeat"] = evaluate(supernet, repeat_batches, arch)
        rows.append({"role": role, "arch_id": arch.arch_id, **metrics, "params": int(params[i]),
                     "macs": int(macs[i]), "seconds": time.perf_counter() - start, "arch": arch.to_dict()})
        print(f"{i + 1:>3}/{len(archs)} {role:<9} {arch.arch_id}  top-1 {metrics['top1']:.3f}  "
              f"params {params[i] / 1e6:5.2f} M  MACs {macs[i] / 1e6:6.1f} M", flush=True)
    return rows


def arch_features(arch: dict) -> dict[str, float]:
    """What a subnet is made of, from its ``ArchConfig.to_dict()``: depth and width per
    stage, MHSA count and the share of each per-block choice."""
    blocks = [b for stage in arch["stages"] for b in stage["blocks"]]
    features: dict[str, float] = {}
    for i, stage in enumerate(arch["stages"], start=1):
        features[f"depth{i}"], features[f"width{i}"] = len(stage["blocks"]), stage["width"]
    features["depth"] = len(blocks)
    features["num_mhsa"] = sum("mhsa" in b for b in blocks)
    features["fused_share"] = float(np.mean([b["ffn"]["type"] == "fused" for b in blocks]))
    features["kernel5_share"] = float(np.mean([b["ffn"]["kernel"] == 5 for b in blocks]))
    features["gelu_share"] = float(np.mean([b["ffn"]["act"] == "gelu" for b in blocks]))
    features["mean_expansion"] = float(np.mean([b["ffn"]["expansion"] for b in blocks]))
    return features


def feature_spearman(rows: list[dict], score) -> dict[str, float]:
    """Spearman of ``score(row)`` with each architecture feature, strongest first: which
    choices the supernet's ranking follows."""
    from scipy.stats import spearmanr

    features = [arch_features(r["arch"]) for r in rows]
    scores = [score(r) for r in rows]
    rho = {name: float(spearmanr([f[name] for f in features], scores).statistic) for name in features[0]}
    return dict(sorted(rho.items(), key=lambda item: 0.0 if math.isnan(item[1]) else -abs(item[1])))  # constant: nan


def top1_of(row: dict) -> float:
    return row["top1"]


def neg_loss_of(row: dict) -> float:
    """``-loss``: higher is better, like top-1."""
    return -row["loss"]


def summarize(rows: list[dict], chance: float) -> dict:
    from scipy.stats import spearmanr

    random_rows = [r for r in rows if r["role"] == "random"]
    top1 = [r["top1"] for r in random_rows]

    def rho(subset: list[dict], key: str, score=top1_of) -> float:
        return float(spearmanr([score(r) for r in subset], [r[key] for r in subset]).statistic)

    by_role = {r["role"]: r for r in rows if r["role"] in ("smallest", "largest")}
    extra = {}
    if all("repeat" in r for r in rows):
        def pooled(r: dict, key: str) -> float:  # the metric over both splits' images
            return (r[key] * r["images"] + r["repeat"][key] * r["repeat"]["images"]) / (
                r["images"] + r["repeat"]["images"])

        def pooled_top1(r: dict) -> float:
            return pooled(r, "top1")

        def pooled_neg_loss(r: dict) -> float:
            return -pooled(r, "loss")

        extra = {"reliability": {k: float(spearmanr([r[k] for r in random_rows],
                                                    [r["repeat"][k] for r in random_rows]).statistic)
                                 for k in ("top1", "loss")},
                 "spearman_pooled_top1_params": rho(random_rows, "params", pooled_top1),
                 "spearman_pooled_top1_macs": rho(random_rows, "macs", pooled_top1),
                 "spearman_pooled_neg_loss_params": rho(random_rows, "params", pooled_neg_loss),
                 "spearman_pooled_neg_loss_macs": rho(random_rows, "macs", pooled_neg_loss)}
    return {
        "top1_largest": by_role["largest"]["top1"], "top1_smallest": by_role["smallest"]["top1"],
        "random_top1": {"min": min(top1), "median": statistics.median(top1), "max": max(top1),
                        "std": statistics.pstdev(top1)},
        "spearman_params": rho(random_rows, "params"), "spearman_macs": rho(random_rows, "macs"),
        "spearman_params_all": rho(rows, "params"), "spearman_macs_all": rho(rows, "macs"),
        "spearman_neg_loss_params": rho(random_rows, "params", neg_loss_of),
        "spearman_neg_loss_macs": rho(random_rows, "macs", neg_loss_of),
        "above_chance_fraction": sum(t > chance for t in top1) / len(top1),
        "feature_spearman_neg_loss": feature_spearman(random_rows, neg_loss_of),
        "feature_spearman_top1": feature_spearman(random_rows, top1_of), **extra,
    }


def print_summary(result: dict) -> None:
    summary, chance = result["summary"], result["chance"]
    random_rows = [row for row in result["subnets"] if row["role"] == "random"]
    r = summary["random_top1"]
    print(f"\nchance {chance:.3f} | largest {summary['top1_largest']:.3f} | smallest {summary['top1_smallest']:.3f}")
    print(f"{len(random_rows)} random subnets: top-1 min {r['min']:.3f} median {r['median']:.3f} max {r['max']:.3f} "
          f"(std {r['std']:.3f}); {summary['above_chance_fraction']:.0%} above chance")
    print(f"Spearman top-1 vs params {summary['spearman_params']:+.2f}, vs MACs {summary['spearman_macs']:+.2f} "
          f"(with the extremes: {summary['spearman_params_all']:+.2f} / {summary['spearman_macs_all']:+.2f})")
    print(f"Spearman -loss vs params {summary['spearman_neg_loss_params']:+.2f}, "
          f"vs MACs {summary['spearman_neg_loss_macs']:+.2f}")
    if "reliability" in summary:
        rel = summary["reliability"]
        print(f"reliability, val vs {result['repeat_split']} (Spearman over the random subnets): top-1 {rel['top1']:+.2f}, "
              f"loss {rel['loss']:+.2f}")
        if "spearman_pooled_top1_macs" in summary:
            print(f"both splits pooled: top-1 vs params {summary['spearman_pooled_top1_params']:+.2f}, vs MACs "
                  f"{summary['spearman_pooled_top1_macs']:+.2f}; -loss vs params "
                  f"{summary['spearman_pooled_neg_loss_params']:+.2f}, vs MACs {summary['spearman_pooled_neg_loss_macs']:+.2f}")
    drivers = ", ".join(f"{name} {rho:+.2f}" for name, rho in list(summary["feature_spearman_neg_loss"].items())[:4])
    print(f"-loss follows (Spearman with architecture features, strongest first): {drivers}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--supernet", default=str(DATA.supernet))
    parser.add_argument("--data", default=str(DATA.dataset), help="dataset folder (with manifest.parquet)")
    parser.add_argument("--num-subnets", type=int, default=50)
    parser.add_argument("--val-images", type=int, help="seeded subset of the val split (default: all)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--bn-batches", type=int, default=10, help="BN recalibration batches")
    parser.add_argument("--bn-batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="subnet sampling and subsets")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeat-split", help="evaluate every subnet again on this split (e.g. test): the "
                                               "labels' reliability, split against split")
    parser.add_argument("--resummarize", metavar="JSON",
                        help="no evaluation: recompute the summary of an earlier run's results file into --out")
    args = parser.parse_args(argv)
    if args.resummarize:
        from nas_core.io import read_json

        result = read_json(args.resummarize)
        result["summary"] = summarize(result["subnets"], result["chance"])
        write_json(args.out, result)
        print_summary(result)
        print(f"wrote {args.out}")
        return result

    torch.set_num_threads(args.threads)
    from nas_core.data.folders import class_names, load_manifest
    from nas_core.train import load_supernet

    supernet, meta = load_supernet(args.supernet)
    manifest = load_manifest(args.data)
    num_classes = len(class_names(manifest))
    if num_classes != supernet.num_classes:
        raise SystemExit(f"error: {args.data} has {num_classes} classes, the supernet {supernet.num_classes}")
    calib, val_batches = load_eval_data(manifest, Path(args.data), supernet.resolution, args.val_images,
                                        args.batch_size, args.bn_batches, args.bn_batch_size, args.seed)
    repeat_batches = None
    if args.repeat_split:
        repeat_batches = load_split(manifest, Path(args.data), args.repeat_split, supernet.resolution, None,
                                    args.batch_size, args.seed)
    space = supernet.space
    rng = np.random.default_rng(args.seed)
    archs = [("largest", space.largest()), ("smallest", space.smallest())]
    archs += [("random", space.sample(rng)) for _ in range(args.num_subnets)]
    rows = evaluate_subnets(supernet, archs, calib, val_batches, num_classes, repeat_batches)
    chance = 1.0 / num_classes
    summary = summarize(rows, chance)
    result = {"supernet": args.supernet, "supernet_meta": {k: meta.get(k) for k in (
                  "epochs", "steps", "resolution", "num_classes", "config", "final_metrics", "code_version")},
              "dataset": args.data, "num_classes": num_classes, "chance": chance,
              "val_images": rows[0]["images"], "repeat_split": args.repeat_split, "bn_calib": {"batches": args.bn_batches,
                                                            "batch_size": args.bn_batch_size},
              "subnets": rows, "summary": summary, "threads": torch.get_num_threads(),
              "created": utc_now(), "code_version": code_version()}
    write_json(args.out, result)
    print_summary(result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
