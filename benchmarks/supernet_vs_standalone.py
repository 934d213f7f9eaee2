"""Does the supernet rank subnets as training them alone would, at the same budget?

    python benchmarks/supernet_vs_standalone.py --out ranking.json [--supernet data/supernet/supernet.pt]
                                                [--data data/dataset] [--num-subnets 24] [--jobs 2]
    python benchmarks/supernet_vs_standalone.py --resummarize ranking.json --out ranking.json

A weight-sharing supernet is useful when its inherited-weight ranking of subnets is the
ranking the subnets would have if each were trained on its own. This benchmark measures
that directly: it samples subnets (the four extremes - smallest and largest, all-unified
and all-fused - and ``--num-subnets`` uniformly random ones), and for each

* **inherited**: the supernet's weights, BatchNorm recalibrated (as ``supernet_quality.py``);
* **standalone**: a fresh model trained from scratch with the supernet's own recipe and
  budget (the checkpoint's config: steps, batch, lr schedule, weight decay, label smoothing,
  augmentation, resolution), one process per subnet (``--jobs`` in parallel, one thread each);

both evaluated on the same images (the ``val`` and ``test`` splits together: 900 images on the
smoke dataset, half the binomial noise of ``val`` alone). It reports the Spearman and Kendall
correlation of the two rankings (on top-1 and on ``-loss``), and each ranking's Spearman
with params, MACs and the architecture features: whether an ordering the supernet gives is
the supernet's or the training budget's. A perfect supernet reproduces the standalone
column; it cannot be expected to rank by size where standalone training at that budget
does not.

Standalone training at a budget this short is itself noisy: ``--train-seeds 0 1`` trains the
first ``--repeat-limit`` subnets again with another seed, reports the standalone ranking's
own seed-to-seed Spearman (``standalone_reliability``, the ceiling of any agreement with it)
and scores every subnet by its mean over seeds.

``--standalone-from EARLIER.json`` reuses an earlier file's standalone runs: another supernet
(a variant, a longer run with the same recipe budget...) is then compared with the same
ground truth at the cost of its inherited evaluation alone.

Resumable: the results file is rewritten (atomically) after every standalone run, and a
rerun with the same arguments (or more ``--train-seeds``) skips the runs already done. JSON:
``{"supernet", "dataset", "seed", "recipe" (without its seed), "eval_images", "subnets":
[{"role", "arch_id", "arch", "params", "macs", "inherited": {"top1", "top5", "loss", "images"},
"standalone_runs": {seed: {"top1", "top5", "loss", "images", "seconds"}}}], "summary": {...},
"created", "code_version"}``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nas_core.io import code_version, read_json, utc_now, write_json  # noqa: E402
from nas_core.layout import DATA  # noqa: E402

# The supernet recipe's fields that a standalone run of one subnet takes over unchanged.
RECIPE_FIELDS = ("resolution", "epochs", "steps_per_epoch", "batch_size", "lr", "min_lr", "warmup_lr",
                 "warmup_epochs", "weight_decay", "opt", "clip_grad", "smoothing", "seed", "cache_images",
                 "augment")


def standalone_recipe(supernet_config: dict) -> dict:
    """FinetuneConfig fields for training one subnet alone with the supernet's budget."""
    recipe = {k: supernet_config[k] for k in RECIPE_FIELDS if k in supernet_config}
    # Workers: none (each run is its own process, no other thread draws from `random`).
    return {**recipe, "num_workers": 0, "amp": False, "eval_every": 10 ** 6, "eval_split": "val",
            "drop_path": 0.0}


def eval_batches(data: str, resolution: int, batch_size: int = 200) -> list:
    """The ``val`` and ``test`` splits' decoded batches (``val`` alone where there is no test)."""
    from supernet_quality import load_split

    from nas_core.data.folders import load_manifest

    manifest = load_manifest(data)
    splits = [s for s in ("val", "test") if s in set(manifest["split"])]
    return [b for s in splits for b in load_split(manifest, Path(data), s, resolution, None, batch_size, 0)]


def train_standalone(arch, recipe: dict, data: str, num_classes: int, workdir: str) -> dict:
    """One process: train ``arch`` (an ArchConfig) from scratch with ``recipe``, evaluate it."""
    torch.set_num_threads(1)
    from nas_core.evaluate import evaluate
    from nas_core.finetune import FinetuneConfig, classification_data, train_classifier
    from nas_core.subnet import SubnetModel

    config = FinetuneConfig(**recipe)
    train = classification_data(data, config.resolution, config).train
    torch.manual_seed(config.seed)
    model = SubnetModel(arch, num_classes, config.resolution)
    start = time.perf_counter()
    train_classifier(model, train, config, workdir, num_classes=num_classes, resume=False, overwrite=True,
                     progress=False, desc=arch.arch_id)
    seconds = time.perf_counter() - start
    metrics = evaluate(model, eval_batches(data, config.resolution))
    return {**metrics, "seconds": seconds}


def resumable_rows(path: str, identity: dict, count: int, overwrite: bool = False) -> list[dict] | None:
    """The rows of an earlier run with the same identity (to resume); None for a new run.
    Results of another run are never replaced silently: they cost up to an hour of training."""
    if not Path(path).exists() or overwrite:
        return None
    previous = read_json(path)
    changed = sorted(k for k, v in identity.items() if previous.get(k) != v)
    if changed:
        raise SystemExit(f"error: {path} holds another run (different {', '.join(changed)}): "
                         f"pass --overwrite to replace it, or choose another --out")
    rows = previous["subnets"]
    if len(rows) != count:
        raise SystemExit(f"error: {path} has {len(rows)} subnets, this run {count}: use the same --num-subnets "
                         f"or another --out")
    seeds = {seed for r in rows for seed in r["standalone_runs"]}
    print(f"resuming {path}: standalone runs done for seeds {sorted(seeds)}: "
          f"{sum(bool(r['standalone_runs']) for r in rows)}/{len(rows)} subnets")
    return rows


def source_seeds(path: str) -> list[int]:
    """The training seeds of an earlier results file's standalone runs, first seed first."""
    subnets = read_json(path)["subnets"]
    return sorted({int(seed) for r in subnets for seed in r["standalone_runs"]},
                  key=lambda seed: -sum(str(seed) in r["standalone_runs"] for r in subnets))


def reuse_standalone_runs(rows: list[dict], path: str, identity: dict) -> None:
    """Copy the standalone runs of another supernet's results (same data, recipe and
    subnets) into ``rows``: several supernets compared against one ground truth."""
    source = read_json(path)
    changed = sorted(k for k in ("dataset", "seed", "recipe") if source.get(k) != identity[k])
    if changed:
        raise SystemExit(f"error: {path} used another {', '.join(changed)}; its standalone runs do not apply")
    runs = {r["arch_id"]: r["standalone_runs"] for r in source["subnets"]}
    for row in rows:
        row["standalone_runs"] = {**runs.get(row["arch_id"], {}), **row["standalone_runs"]}


def sample_archs(space, num_subnets: int, seed: int) -> list[tuple[str, object]]:
    rng = np.random.default_rng(seed)
    archs = [(f"{size}_{ffn}", getattr(space, size)(ffn)) for size in ("smallest", "largest")
             for ffn in ("unified", "fused")]
    return archs + [("random", space.sample(rng)) for _ in range(num_subnets)]


# (summary name, metric, sign): both scored so that higher is better
SCORES = (("top1", "top1", 1.0), ("neg_loss", "loss", -1.0))


def mean_runs(runs: dict) -> dict:
    """A subnet's standalone score: each metric averaged over its training seeds."""
    return {k: float(np.mean([run[k] for run in runs.values()])) for k in ("top1", "top5", "loss")}


def summarize(rows: list[dict]) -> dict:
    from scipy.stats import kendalltau, spearmanr
    from supernet_quality import arch_features

    done = [{**r, "standalone": mean_runs(r["standalone_runs"])} for r in rows if r["standalone_runs"]]

    def rank_corr(fn, a, b):
        return float(fn(a, b).statistic) if len(done) > 2 else float("nan")

    summary: dict = {"subnets": len(done)}
    seeds = sorted({seed for r in done for seed in r["standalone_runs"]}, key=int)
    if len(seeds) > 1:  # the standalone ranking's own repeatability: seed against seed
        both = [r for r in done if all(seed in r["standalone_runs"] for seed in seeds[:2])]
        summary["standalone_reliability"] = {
            "subnets": len(both), "seeds": seeds[:2],
            **{name: float(spearmanr([sign * r["standalone_runs"][seeds[0]][metric] for r in both],
                                     [sign * r["standalone_runs"][seeds[1]][metric] for r in both]).statistic)
               for name, metric, sign in SCORES}}
    sizes = {"params": [r["params"] for r in done], "macs": [r["macs"] for r in done],
             "fused_share": [arch_features(r["arch"])["fused_share"] for r in done]}
    for name, metric, sign in SCORES:
        inherited = [sign * r["inherited"][metric] for r in done]
        standalone = [sign * r["standalone"][metric] for r in done]
        summary[f"spearman_{name}"] = rank_corr(spearmanr, inherited, standalone)
        summary[f"kendall_{name}"] = rank_corr(kendalltau, inherited, standalone)
        for column, scores in (("inherited", inherited), ("standalone", standalone)):
            for size, values in sizes.items():
                summary[f"{column}_{name}_vs_{size}"] = rank_corr(spearmanr, scores, values)
    summary["extremes"] = {r["role"]: {"inherited_top1": r["inherited"]["top1"],
                                       "standalone_top1": r["standalone"]["top1"],
                                       "inherited_loss": r["inherited"]["loss"],
                                       "standalone_loss": r["standalone"]["loss"]}
                           for r in done if r["role"] != "random"}
    return summary


def print_summary(result: dict) -> None:
    s = result["summary"]
    print(f"\n{s['subnets']} subnets, {result['eval_images']} images")
    if "standalone_reliability" in s:
        rel = s["standalone_reliability"]
        print(f"standalone, seed {rel['seeds'][0]} vs {rel['seeds'][1]} over {rel['subnets']} subnets: Spearman "
              f"top-1 {rel['top1']:+.2f}, -loss {rel['neg_loss']:+.2f}")
    print(f"inherited vs standalone ranking: Spearman top-1 {s['spearman_top1']:+.2f}, -loss {s['spearman_neg_loss']:+.2f}"
          f" (Kendall {s['kendall_top1']:+.2f} / {s['kendall_neg_loss']:+.2f})")
    for column in ("inherited", "standalone"):
        print(f"{column:>10}: -loss vs params {s[f'{column}_neg_loss_vs_params']:+.2f}, vs MACs "
              f"{s[f'{column}_neg_loss_vs_macs']:+.2f}, vs fused share {s[f'{column}_neg_loss_vs_fused_share']:+.2f}; "
              f"top-1 vs params {s[f'{column}_top1_vs_params']:+.2f}, vs MACs {s[f'{column}_top1_vs_macs']:+.2f}")
    for role, e in s["extremes"].items():
        print(f"{role:>16}: inherited {e['inherited_top1']:.3f} (loss {e['inherited_loss']:.3f}), "
              f"standalone {e['standalone_top1']:.3f} (loss {e['standalone_loss']:.3f})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON results (also the resume state)")
    parser.add_argument("--supernet", default=str(DATA.supernet))
    parser.add_argument("--data", default=str(DATA.dataset), help="dataset folder (with manifest.parquet)")
    parser.add_argument("--num-subnets", type=int, default=24, help="random subnets, besides the 4 extremes")
    parser.add_argument("--seed", type=int, default=0, help="subnet sampling")
    parser.add_argument("--train-seeds", type=int, nargs="+",
                        help="seeds of the standalone runs (default: the supernet's; with --standalone-from, that "
                             "file's, so nothing new is trained); a subnet's standalone "
                             "score is the mean over its seeds, and two seeds give the standalone ranking's "
                             "own reliability")
    parser.add_argument("--repeat-limit", type=int, default=12,
                        help="seeds after the first train only the first this many subnets")
    parser.add_argument("--jobs", type=int, default=2, help="standalone runs in parallel (one thread each)")
    parser.add_argument("--bn-batches", type=int, default=10, help="BN recalibration batches (inherited)")
    parser.add_argument("--bn-batch-size", type=int, default=64)
    parser.add_argument("--standalone-from", metavar="JSON",
                        help="reuse the standalone runs of an earlier results file (same data, recipe and "
                             "subnets): compares another supernet against the same ground truth in minutes")
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if it holds another run")
    parser.add_argument("--workdir", default="/tmp/supernet_vs_standalone", help="standalone runs' checkpoints")
    parser.add_argument("--resummarize", metavar="JSON", help="no training: recompute the summary into --out")
    args = parser.parse_args(argv)
    if args.resummarize:
        result = read_json(args.resummarize)
        result["summary"] = summarize(result["subnets"])
        write_json(args.out, result)
        print_summary(result)
        return result

    from supernet_quality import evaluate_subnets, load_eval_data

    from nas_core.data.folders import class_names, load_manifest
    from nas_core.train import load_supernet

    torch.set_num_threads(max(1, args.jobs))
    try:
        supernet, meta = load_supernet(args.supernet)
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error} (train one with `scan-edge train-supernet`)") from None
    manifest = load_manifest(args.data)
    num_classes = len(class_names(manifest))
    recipe = standalone_recipe(meta["config"])
    train_seeds = args.train_seeds or (
        # reusing runs: train nothing new unless asked (the supernet's own seed may differ)
        source_seeds(args.standalone_from) if args.standalone_from else [recipe["seed"]])
    archs = sample_archs(supernet.space, args.num_subnets, args.seed)
    identity = {"supernet": str(args.supernet), "dataset": str(args.data), "seed": args.seed,
                "recipe": {k: v for k, v in recipe.items() if k != "seed"}}
    rows = resumable_rows(args.out, identity, len(archs), args.overwrite)
    if rows is None:
        calib, _ = load_eval_data(manifest, Path(args.data), supernet.resolution, None, 200, args.bn_batches,
                                  args.bn_batch_size, args.seed)
        inherited = evaluate_subnets(supernet, archs, calib, eval_batches(args.data, supernet.resolution),
                                     num_classes)
        rows = [{"role": r["role"], "arch_id": r["arch_id"], "arch": r["arch"], "params": r["params"],
                 "macs": r["macs"], "inherited": {k: r[k] for k in ("top1", "top5", "loss", "images")},
                 "standalone_runs": {}} for r in inherited]
    if args.standalone_from:
        reuse_standalone_runs(rows, args.standalone_from, identity)
    result = {**identity, "num_classes": num_classes, "eval_images": rows[0]["inherited"]["images"],
              "subnets": rows, "code_version": code_version()}
    space = supernet.space
    del supernet

    def save() -> None:
        result["summary"] = summarize(rows)
        result["created"] = utc_now()
        write_json(args.out, result)

    save()
    # The first seed trains every subnet; later seeds only the first --repeat-limit (their noise).
    todo = [(i, seed) for n, seed in enumerate(train_seeds)
            for i in range(len(rows) if n == 0 else min(len(rows), args.repeat_limit))
            if str(seed) not in rows[i]["standalone_runs"]]
    # spawn: fresh interpreters, no inherited torch thread pools or open files
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        pending = {pool.submit(train_standalone, space.from_dict(rows[i]["arch"]), {**recipe, "seed": seed},
                               args.data, num_classes, f"{args.workdir}/{rows[i]['arch_id']}_{seed}"): (i, seed)
                   for i, seed in todo}
        for n, job in enumerate(futures.as_completed(pending), start=1):
            i, seed = pending[job]
            run = rows[i]["standalone_runs"][str(seed)] = job.result()
            save()
            r = rows[i]
            print(f"{n:>3}/{len(todo)} {r['role']:<16} {r['arch_id']} seed {seed} params {r['params'] / 1e6:5.2f} M | "
                  f"inherited {r['inherited']['top1']:.3f} / {r['inherited']['loss']:.3f} | standalone "
                  f"{run['top1']:.3f} / {run['loss']:.3f} ({run['seconds']:.0f} s)", flush=True)
    print_summary(result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
