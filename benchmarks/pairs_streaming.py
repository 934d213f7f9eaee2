"""Pairs evaluation with the evaluation images streamed vs cached, at smoke size.

    python benchmarks/pairs_streaming.py [--subnets 8] [--out benchmarks/results/pairs_streaming.json]

The smoke profile's setting: its generated dataset (10 classes, 400 validation images at
64 px), a 64-px supernet (random weights: the time does not depend on them), one torch
thread per pairs worker, BN recalibration on 2 batches of 64. Each mode evaluates the same
``--subnets`` subnets (after one warm-up subnet); reported per subnet: median wall and CPU
seconds of the whole process tree (the streaming workers' decoding included), with the
machine's load average. Modes: ``cached`` (tensors in memory: today's path, what the smoke
profile still uses since its images fit ``cache_budget_mb``), and ``streamed`` with 0, 1
and 2 DataLoader workers (what ImageNet needs).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nas_core.data.synthetic import generate_classification
from nas_core.io import code_version, machine_fingerprint, torch_save, utc_now, write_json
from nas_core.pairs import PairsConfig, SubnetEvaluator
from nas_core.search_space import SPACE_VERSION, SearchSpace
from nas_core.supernet import Supernet
from nas_core.train import SUPERNET_FORMAT

RESOLUTION, CLASSES = 64, 10
SMOKE_PAIRS = dict(eval_batch_size=150, bn_calib_batches=2, bn_calib_batch_size=64, device="cpu")
MODES = {"cached": dict(cache_images=True), "streamed_0_workers": dict(cache_images=False, num_workers=0),
         "streamed_1_worker": dict(cache_images=False, num_workers=1),
         "streamed_2_workers": dict(cache_images=False, num_workers=2)}


def make_world(folder: Path) -> tuple[Path, Path]:
    data = folder / "data"
    generate_classification(data, seed=0, num_classes=CLASSES, train_per_class=30, val_per_class=40,
                            test_per_class=1, image_size=RESOLUTION)
    torch.manual_seed(0)
    net = Supernet(SearchSpace(), num_classes=CLASSES, resolution=RESOLUTION)
    path = torch_save(folder / "supernet.pt", {"format": SUPERNET_FORMAT, "space_version": SPACE_VERSION,
                                               "space_spec": None, "num_classes": CLASSES,
                                               "resolution": RESOLUTION, "distillation": True,
                                               "model": net.state_dict()})
    return data, path


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_mode(data: Path, supernet: Path, overrides: dict, archs) -> dict:
    evaluator = SubnetEvaluator.from_files(supernet, data, PairsConfig(**SMOKE_PAIRS, **overrides))
    evaluator(archs[0])  # warm-up: worker start, first decode
    wall, top1 = [], []
    cpu_start = _cpu_seconds()
    for arch in archs[1:]:
        start = time.perf_counter()
        top1.append(evaluator(arch)["top1"])
        wall.append(time.perf_counter() - start)
    # CPU of finished children only counts once they exit: the persistent workers exit here.
    loader = evaluator.eval_batches
    del evaluator, loader
    return {"median_wall_s": statistics.median(wall), "mean_wall_s": statistics.mean(wall),
            "cpu_s_per_subnet": (_cpu_seconds() - cpu_start) / len(wall), "top1": top1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subnets", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/pairs_streaming.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # pairs.threads: 1 in the smoke profile
    space = SearchSpace()
    archs = [space.sample(seed) for seed in range(args.subnets + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        data, supernet = make_world(Path(tmp))
        results = {}
        for name, overrides in MODES.items():
            results[name] = time_mode(data, supernet, overrides, archs)
            print(f"{name:>20}: {results[name]['median_wall_s']:.3f} s per subnet (median wall), "
                  f"{results[name]['cpu_s_per_subnet']:.3f} s CPU", flush=True)
    same = all(r["top1"] == results["cached"]["top1"] for r in results.values())
    ratio = results["streamed_1_worker"]["median_wall_s"] / results["cached"]["median_wall_s"]
    print(f"streamed (1 worker) / cached wall time: {ratio:.2f}; identical top-1 in every mode: {same}; "
          f"load average {os.getloadavg()[0]:.1f}")
    write_json(args.out, {"results": results, "streamed_1_worker_vs_cached": ratio, "identical_top1": same,
                          "subnets": args.subnets, "setting": {**SMOKE_PAIRS, "val_images": CLASSES * 40,
                                                                "resolution": RESOLUTION, "threads": 1},
                          "load_average": os.getloadavg(), "code_version": code_version(),
                          "machine": machine_fingerprint(), "created": utc_now()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
