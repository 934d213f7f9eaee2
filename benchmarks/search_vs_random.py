"""Does the search beat random architectures at the same latency? (issue 16, at a larger size than smoke)

From a finished pipeline (``scan-edge reproduce``), for each search (``--searches first|all``):

1. ours: the fine-tuned model of the search (``finetune/ours_<run>/``, seed 0 as the pipeline
   trained it) and the same fine-tune again with each other seed of ``--seeds``;
2. ``--controls`` random controls drawn and trained by the controls stage's own code
   (``tasks.stages.controls.control_run``): uniform subnets of the space, measured within the
   search's [-3 %, 0] window on its device, inherited from the same supernet, fine-tuned with the
   same recipe and every seed of ``--seeds``; with ``--window-subnets`` more uniform subnets of the
   window score the accuracy predictor where the search uses it;
3. the search gain: mean top-1 of ours (over seeds) minus the mean of the controls (each over
   seeds), a 95 % t-interval with seeds as blocks and the architectures drawn as a sample
   (``nas_core.controls.blocked_difference_interval``; Welch's, which ignores the shared seeds,
   beside it), and the sentence the report would word (``nas_core.controls.claim``: "beats"
   only when the interval excludes zero).

Everything is written under ``--work`` (a scratch root whose inputs link to ``--root``), so the
pipeline's ``data/`` is left as it was; the figures go to ``--out``.

    python benchmarks/search_vs_random.py --root data --controls 5 --seeds 0 1 2 --searches all
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from nas_core.controls import (ControlsConfig, blocked_difference_interval, claim, difference_interval,  # noqa: E402
                               mean_std)
from nas_core.io import code_version, machine_fingerprint, read_json, utc_now, write_json  # noqa: E402
from nas_core.layout import Layout  # noqa: E402
from nas_core.params import load_params  # noqa: E402
from tasks import stages  # noqa: E402
from tasks.stages.controls import control_run  # noqa: E402
from tasks.stages.downstream import finetune_once, with_finetune  # noqa: E402

LINKED = ("dataset", "supernet")                                       # large, only read
COPIED = ("predictor", "lut", "baselines", "runtime", "search")          # small; timing work files are written beside


def scratch_root(root: Path, work: Path) -> Layout:
    """``work`` with the pipeline's inputs from ``root``: linked when only read, copied (without
    their ``_work`` folders) when measurement writes beside them; its own controls and fine-tunes."""
    work.mkdir(parents=True, exist_ok=True)
    for name in (*LINKED, *COPIED):
        target = work / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        if name in LINKED:
            target.symlink_to((root / name).resolve(), target_is_directory=True)
        else:
            shutil.copytree(root / name, target, ignore=shutil.ignore_patterns("_work", "_measure"))
    return Layout(work)


def ours_seeds(params, root: Layout, work: Layout, run, seeds) -> dict:
    """Ours' fine-tuned top-1 per seed: the pipeline's run for the first seed, the others trained in ``work``."""
    first = read_json(root.finetune_metrics(run.model_name))
    ref = str(stages.searched_arch(work, run.key))
    top1, sources = [first["finetuned"]["top1"]], [str(root.finetune_metrics(run.model_name))]
    seed0 = (first.get("train") or {}).get("seed", (first.get("config") or {}).get("seed", 0))
    for seed in seeds:
        if seed == seed0:
            continue
        metrics = finetune_once(with_finetune(params, seed=seed, measure=False, export_openvino=False,
                                              export_tensorrt=False), ref, work,
                                out_root=work.finetune_seeds_root(run.model_name), name=f"seed{seed}",
                                init="supernet", resume=True)
        top1.append(metrics["finetuned"]["top1"])
        sources.append(str(work.finetune_seeds_root(run.model_name) / f"seed{seed}" / "metrics.json"))
    return {"seeds": [seed0, *[s for s in seeds if s != seed0]], "top1": top1, "sources": sources}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT / "data", help="a finished pipeline's data folder")
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--controls", type=int, default=5, help="random controls per search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--searches", choices=("first", "all"), default="all")
    parser.add_argument("--window-subnets", type=int, default=24,
                        help="uniform subnets of the window scored with inherited weights (the predictor there)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scan-edge-search-vs-random"))
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "benchmarks/results/search_vs_random.json")
    args = parser.parse_args(argv)

    started = time.monotonic()
    params = load_params(args.params, args.profile)
    params["controls"] = {**(params.get("controls") or {}), "count": args.controls, "searches": args.searches,
                          "seeds": list(args.seeds), "window_subnets": args.window_subnets, "max_measured": None}
    config = ControlsConfig.from_params(params["controls"])
    root, work = Layout(args.root), scratch_root(args.root, args.work)
    rows = []
    for index, run in enumerate(stages.controlled_runs(params)):
        t0 = time.monotonic()
        ours = ours_seeds(params, root, work, run, args.seeds)
        entry = control_run(params, config, list(args.seeds), run, work, index)
        randoms = [c["top1_mean"] for c in entry["controls"]]
        interval = blocked_difference_interval(dict(zip(ours["seeds"], ours["top1"])),
                                               [dict(zip(c["seeds"], c["top1"])) for c in entry["controls"]])
        welch = difference_interval(ours["top1"], randoms)  # ignores that the seeds are shared: wider
        ours_mean, ours_std = mean_std(ours["top1"])
        random_mean, random_std = mean_std(randoms)
        row = {"run": run.key, "targets_ms": entry["targets_ms"], "ours": {**ours, "mean": ours_mean, "std": ours_std},
               "controls": [{k: c[k] for k in ("name", "arch_id", "measured_ms", "params", "predicted",
                                              "inherited_top1", "top1", "top1_mean", "top1_std")}
                            for c in entry["controls"]],
               "random_mean": random_mean, "random_std_between_architectures": random_std,
               "gain": interval, "claim": claim(f"ours ({run.key})", "random at the same latency", interval),
               "gain_welch": welch, "claim_welch": claim(f"ours ({run.key})", "random at the same latency", welch),
               "sampling": entry["sampling"], "predictor_window": entry["predictor_window"],
               "seconds": round(time.monotonic() - t0, 1)}
        rows.append(row)
        print(f"{run.key}: ours {ours_mean:.4f} (seeds {ours['top1']}), random {random_mean:.4f} over "
              f"{len(randoms)} controls; {row['claim']}", flush=True)
        if entry["predictor_window"]:
            w = entry["predictor_window"]
            print(f"  predictor in the window ({w['n']} subnets, target {w['target']}): Spearman {w['spearman']:.3f}, "
                  f"top-{w['top_k']} precision {w['top_k_precision']:.2f} (chance {w['chance']:.2f}); ours beats "
                  f"{w['ours_percentile']:.0%} of them on the inherited score", flush=True)
    beaten = sum(r["gain"]["low"] > 0 for r in rows)
    behind = sum(r["gain"]["high"] < 0 for r in rows)
    result = {"rows": rows, "summary": {"searches": len(rows), "ours_beats_random": beaten, "ours_trails_random": behind,
                                        "not_distinguishable": len(rows) - beaten - behind,
                                        "controls_per_search": args.controls, "seeds": list(args.seeds)},
              "command": " ".join(["python benchmarks/search_vs_random.py", *(argv or sys.argv[1:])]),
              "provenance": {"code_version": code_version(), "machine": machine_fingerprint(), "written": utc_now(),
                             "root": str(args.root), "seconds": round(time.monotonic() - started, 1)}}
    write_json(args.out, result)
    print(f"{beaten} of {len(rows)} searches beat random at the same latency, {behind} trail it, "
          f"{len(rows) - beaten - behind} not distinguishable -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
