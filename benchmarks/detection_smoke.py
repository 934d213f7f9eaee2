"""Table 6 in miniature: SSDLite with our backbone vs with MobileNetV2, same data and budget.

    python benchmarks/detection_smoke.py --ours data/finetune/ours_ort_cpu_fp32@7.6ms \\
        [--data DIR] [--profile smoke] [--out benchmarks/results/detection_smoke.json]

Both detectors are trained and evaluated by ``nas_core.detection.run_detection`` with the
params' ``detection:`` section (smoke: 128x128 generated shapes, a few minutes each on a
2-core CPU); the default data is the generated shapes set. ``--ours`` is anything
``scan-edge detect`` accepts (a fine-tune output, or a preset with ``--supernet``).
Prints mAP, mAP@0.5, params, MACs and the detectors' latency (network without NMS) on each
usable device, and writes them to ``--out``. Latencies measured while other jobs share
the CPU are indicative only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas_core.detection import DetectionConfig, compare_table, ensure_synthetic_detection, run_detection  # noqa: E402
from nas_core.io import write_json  # noqa: E402
from nas_core.layout import DATA  # noqa: E402
from nas_core.params import load_params  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", required=True, help="our backbone: fine-tune output (folder or name) or preset")
    parser.add_argument("--baseline", default="mobilenetv2_100")
    parser.add_argument("--supernet", help="inherit a preset backbone's weights from this supernet")
    parser.add_argument("--data", help="COCO detection folder (default: the generated shapes)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile")
    parser.add_argument("--epochs", type=int, help="override the params' epochs")
    parser.add_argument("--work", default=str(DATA.detection_runs), help="where the detectors are written")
    parser.add_argument("--out", default="benchmarks/results/detection_smoke.json")
    args = parser.parse_args(argv)

    params = load_params(args.params, args.profile)
    section = dict(params.get("detection") or {})
    if args.epochs is not None:
        section["epochs"] = args.epochs
    config = DetectionConfig.from_params(section)
    data = Path(args.data) if args.data else ensure_synthetic_detection(DATA.detection_dataset, config)
    results, seconds = [], {}
    for model in (args.ours, args.baseline):
        started = time.perf_counter()
        results.append(run_detection(model, data, out_root=args.work, config=config, supernet=args.supernet,
                                     devices_section=params.get("devices")))
        seconds[results[-1]["name"]] = round(time.perf_counter() - started, 1)
    table = compare_table(results)
    print(table)
    write_json(args.out, {"table": table, "seconds": seconds, "data": str(data), "config": config.to_dict(),
                          "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
