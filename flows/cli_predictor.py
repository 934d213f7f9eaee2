"""``scan-edge collect-pairs``, ``fit-predictor`` and ``predict``: the accuracy predictor (§5.2).

    scan-edge collect-pairs [--profile smoke] [--n N] [--resume | --fresh]
    scan-edge fit-predictor [--profile smoke]
    scan-edge predict ARCH [ARCH ...]           # preset names or architecture JSON files

``collect-pairs`` evaluates subnets with inherited weights (``tasks.pairs.collect_pairs``,
sharded and resumable) into ``data/pairs/accuracy_pairs.parquet``; ``fit-predictor`` trains
the predictor on it (``tasks.stages.run_predictor``) and writes ``data/predictor/predictor.pt``,
``metrics.json`` (test-split quality against baselines) and ``predicted_vs_measured.png``
(Suppl. S4); ``predict`` prints the predicted top-1 of architectures. The first two do the
work of the pairs and predictor stages; their flags only override params and name the files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from nas_core.layout import DATA

# The CLI boundary: each command imports the libraries it runs inside its function, so that
# `scan-edge --help` and the other commands do not load torch.

DEFAULT_PAIRS = str(DATA.pairs)
DEFAULT_PREDICTOR_DIR = str(DATA.predictor_dir)
DEFAULT_SUPERNET, DEFAULT_DATA = str(DATA.supernet), str(DATA.dataset)


def cmd_collect_pairs(args) -> int:
    from nas_core.params import load_params
    from tasks.pairs import collect_pairs
    from tasks.stages import search_space

    params = load_params(args.params, args.profile)
    if args.runner or args.dask_address:
        runner = dict((params.get("pairs") or {}).get("runner") or {})
        runner.update({k: v for k, v in (("runner", args.runner), ("dask_address", args.dask_address)) if v})
        if args.dask_address:
            runner["runner"] = "dask"
        params = {**params, "pairs": {**(params.get("pairs") or {}), "runner": runner}}
    try:
        out = collect_pairs(params, supernet=args.supernet, data_root=args.data, out=args.out,
                            shards_dir=args.shards_dir, num_subnets=args.n, resume=args.resume, fresh=args.fresh,
                            space=search_space(params))
    except KeyboardInterrupt:
        print("\ninterrupted: finished shards are kept; continue with `scan-edge collect-pairs --resume`",
              file=sys.stderr)
        return 130
    print(f"wrote {out}")
    return 0


def cmd_fit_predictor(args) -> int:
    from nas_core.io import read_json
    from nas_core.params import load_params
    from tasks.stages import run_predictor

    params = load_params(args.params, args.profile)
    if args.epochs:
        params = {**params, "predictor": {**(params.get("predictor") or {}), "epochs": args.epochs}}
    paths = run_predictor(params, args.pairs, args.out_dir)
    print(format_metrics(read_json(paths["metrics"])))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def format_metrics(metrics: dict) -> str:
    """The test-split comparison as a small table."""
    target = metrics.get("target", "top1")
    vs_top1 = metrics.get("test_top1")  # only for a proxy target (loss, top5)
    lines = [f"test split ({metrics['splits']['test']} pairs; selected on {metrics['splits']['val']} val pairs; "
             f"target {target}):",
             f"  {'model':<14} {'Spearman':>9} {'Kendall':>8} {'MAE':>8} {'top-10% prec':>13}"
             + (f" {'Spearman vs top-1':>18}" if vs_top1 else "")]
    for name, m in metrics["test"].items():
        mae = "n/a" if m["mae"] is None else f"{m['mae']:.4f}"
        precision = next(v for k, v in m.items() if k.endswith("_precision"))
        line = f"  {name:<14} {m['spearman']:>9.4f} {m['kendall']:>8.4f} {mae:>8} {precision:>13.3f}"
        if vs_top1:
            line += f" {vs_top1[name]['spearman']:>18.4f}"
        lines.append(line)
    lines.append(f"best on test Spearman: {metrics['winner']}")
    return "\n".join(lines)


def cmd_predict(args) -> int:
    from flows.cli import arch_argument
    from nas_core.accuracy_predictor import PredictorBundle, score_to_target

    path = Path(args.predictor)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no accuracy predictor; make it with `scan-edge collect-pairs` then "
                                "`scan-edge fit-predictor`")
    bundle = PredictorBundle.load(path)
    archs = [arch_argument(name) for name in args.arch]
    predicted = score_to_target(bundle.predict(archs), bundle.target)
    if args.json:
        print(json.dumps([{"arch": name, "arch_id": a.arch_id, f"predicted_{bundle.target}": float(p)}
                          for name, a, p in zip(args.arch, archs, predicted)], indent=2))
        return 0
    width = max(len(name) for name in args.arch)
    for name, arch, value in zip(args.arch, archs, predicted):
        shown = f"loss {value:.4f}" if bundle.target == "loss" else f"{bundle.target} {100 * value:.2f}%"
        print(f"{name:<{width}}  {arch.arch_id}  predicted {shown}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "collect-pairs", help="evaluate sampled subnets with inherited weights (predictor training data)",
        description="Sample subnets (seeded; the smallest and largest included), recalibrate BN and evaluate "
                    "each with the supernet's weights, in resumable shards run by a Prefect task runner.")
    p.add_argument("--profile", help="params profile (default: params.yaml's `profile`)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--n", type=int, help="number of subnets (default: pairs.num_subnets)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue a collection: finished shards are kept")
    mode.add_argument("--fresh", action="store_true", help="discard earlier shards and start over")
    p.add_argument("--supernet", default=DEFAULT_SUPERNET, help=f"supernet checkpoint (default {DEFAULT_SUPERNET})")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"dataset folder (default {DEFAULT_DATA})")
    p.add_argument("--out", default=DEFAULT_PAIRS, help=f"pairs table (default {DEFAULT_PAIRS})")
    p.add_argument("--shards-dir", help="shard folder (default: <out folder>/shards)")
    p.add_argument("--runner", choices=("thread", "dask"), help="task runner (default: params runners / pairs.runner)")
    p.add_argument("--dask-address", help="scheduler of an existing Dask cluster, e.g. tcp://host:8786")
    p.set_defaults(func=cmd_collect_pairs)

    p = subparsers.add_parser(
        "fit-predictor", help="train the accuracy predictor; report test quality against baselines",
        description="Train the 1-D-conv accuracy predictor on the train pairs, select by validation Spearman, "
                    "and report Spearman / Kendall / MAE / top-10%% precision on held-out test pairs next to "
                    "an MLP, ridge regression and parameter count.")
    p.add_argument("--profile", help="params profile (default: params.yaml's `profile`)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help=f"pairs table (default {DEFAULT_PAIRS})")
    p.add_argument("--out-dir", default=DEFAULT_PREDICTOR_DIR, help=f"output folder (default {DEFAULT_PREDICTOR_DIR})")
    p.add_argument("--epochs", type=int, help="override predictor.epochs")
    p.set_defaults(func=cmd_fit_predictor)

    p = subparsers.add_parser("predict", help="predicted accuracy of architectures",
                              description="Print the accuracy predictor's top-1 for each architecture.")
    p.add_argument("arch", nargs="+", help="preset name or architecture JSON file")
    p.add_argument("--predictor", default=str(DATA.predictor))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)
