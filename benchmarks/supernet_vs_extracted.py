"""Dynamic supernet forward vs the extracted standalone subnet (issue: foundation).

For N random subnets, time the supernet's forward with the subnet active and the
extracted module's forward (CPU, eval, same batch), alternating the two so machine drift
hits both alike; report per-subnet median ratios and their median (aim: <= 1.5).

    python benchmarks/supernet_vs_extracted.py --subnets 20 --batch 32 --out benchmarks/results/supernet_vs_extracted.json
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from nas_core.io import machine_fingerprint, utc_now, write_json
from nas_core.search_space import SearchSpace
from nas_core.supernet import Supernet


def _time(fn, x, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subnets", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per subnet (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results/supernet_vs_extracted.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    space = SearchSpace()
    supernet = Supernet(space, num_classes=1000, resolution=args.resolution).eval()
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    rows = []
    with torch.inference_mode():
        for seed in range(args.subnets):
            arch = space.sample(seed)
            static = supernet.extract(arch).eval()
            dynamic = lambda inp, a=arch: supernet(inp, a)  # noqa: E731
            static(x), dynamic(x)  # warm-up
            dyn, sta = [], []
            for _ in range(args.repeats):  # interleaved rounds
                dyn += _time(dynamic, x, 1)
                sta += _time(static, x, 1)
            ratio = statistics.median(dyn) / statistics.median(sta)
            rows.append({"arch_id": arch.arch_id, "dynamic_ms": 1e3 * statistics.median(dyn),
                         "extracted_ms": 1e3 * statistics.median(sta), "ratio": ratio})
            print(f"{seed:3d} {arch.arch_id}  dynamic {rows[-1]['dynamic_ms']:8.1f} ms  "
                  f"extracted {rows[-1]['extracted_ms']:8.1f} ms  ratio {ratio:.3f}", flush=True)
    result = {
        "benchmark": "supernet_vs_extracted", "median_ratio": statistics.median(r["ratio"] for r in rows),
        "max_ratio": max(r["ratio"] for r in rows), "target": 1.5, "batch": args.batch,
        "resolution": args.resolution, "threads": args.threads, "subnets": rows,
        "machine": machine_fingerprint(), "timestamp": utc_now(),
    }
    print(f"median ratio dynamic/extracted over {len(rows)} subnets: {result['median_ratio']:.3f} "
          f"(max {result['max_ratio']:.3f}; target <= 1.5)")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
