"""Which yardstick makes a whole network's paired timing repeatable: the LUT's reference block, or
the device's MobileNetV2? (issue "Latency you can trust", README "Whole networks are paired with
MobileNetV2").

Reads a finished pipeline (``data/``): a device's calibration subnets (their ONNX exports in the
LUT's work folder), its LUT and its baselines. Re-times every subnet in ``--passes`` round-robin
passes, each subnet paired call by call with the block yardstick and then with the network
yardstick (same process, same pinned CPU, the device's clock and the LUT's timing settings), and
reports for each yardstick:

* ``pass_to_pass_pct``: mean |t_p / t_q - 1| over subnets and pairs of passes: how far re-timing
  moves a subnet;
* ``heldout``: the calibrated LUT fitted on the calibration subnets of each pass (the candidate
  models of ``calibration.models``, chosen by leave-one-out) and scored on the held-out ones
  (MAPE, max error, Spearman, share within ±5 %), per pass and on the median of the passes.

    python benchmarks/yardstick_noise.py --root data --device ort_cpu_fp32 --passes 3 \\
        --out benchmarks/results/yardstick_noise.json
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from nas_core.block_catalog import BlockCatalog  # noqa: E402
from nas_core.io import machine_fingerprint, read_parquet, utc_now, write_json  # noqa: E402
from nas_core.latency import baselines, lut  # noqa: E402
from nas_core.latency.latency_model import error_metrics, select_model  # noqa: E402
from nas_core.latency.timing import CLOCKS, TimingConfig, open_session, pinned_cpus, settings_clock, time_paired  # noqa: E402
from nas_core.layout import Layout  # noqa: E402
from nas_core.params import load_params  # noqa: E402
from nas_core.search_space import SearchSpace  # noqa: E402
from tasks import stages  # noqa: E402


def yardsticks(params: dict, device: str, layout: Layout) -> dict:
    profile = stages.device_profile(params, device)
    block = lut.yardstick(profile, layout.lut_paths(device))
    network = baselines.network_yardstick(profile, layout.baselines(device), layout.baselines_work)
    if block is None or network is None:
        raise SystemExit(f"{device}: needs a LUT timed in pairs and a baselines table with MobileNetV2 "
                         "(run scan-edge reproduce first)")
    return {"block": block, "network": network}


def subnet_files(layout: Layout, device: str, profile, frame) -> list[Path]:
    folder = lut.export_folder(layout.lut_paths(device).exports, profile.resolution, profile.batch_size) / "subnets"
    files = [folder / f"{arch_id}.onnx" for arch_id in frame["arch_id"]]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"{len(missing)} calibration subnets have no export in {folder} (e.g. {missing[:3]})")
    return files


def retime(files, profile, sticks: dict, config: TimingConfig, passes: int) -> dict[str, np.ndarray]:
    """{yardstick: [passes, subnets] ms}, both yardsticks timed for a subnet back to back."""
    settings = profile.to_settings()
    clock = CLOCKS[settings_clock(settings)]
    out = {name: np.zeros((passes, len(files))) for name in sticks}
    with pinned_cpus(profile.threads, enabled=profile.options.get("pin_cpus", True)):
        references = {name: open_session(s.entry.path, s.entry.input_shape, settings) for name, s in sticks.items()}
        sessions = [open_session(f, profile.input_shape(), settings) for f in files]
        for p in range(passes):
            started = time.monotonic()
            for j, session in enumerate(sessions):
                for name, stick in sticks.items():
                    out[name][p, j] = time_paired(session.run, references[name].run, stick.ms, config, clock).median_ms
            print(f"pass {p + 1}/{passes}: {time.monotonic() - started:.0f} s", flush=True)
        for session in [*sessions, *references.values()]:
            session.close()
    return out


def pass_to_pass_pct(times: np.ndarray) -> float:
    moves = [np.mean(np.abs(times[p] / times[q] - 1.0)) for p, q in itertools.combinations(range(len(times)), 2)]
    return float(np.mean(moves) * 100.0)


def heldout(times: np.ndarray, frame, catalog: BlockCatalog, block_ms: np.ndarray, models) -> dict:
    space = catalog.space
    genomes = np.stack([space.encode(space.from_json(text)) for text in frame["arch"]])
    calib = (frame["role"] == "calibration").to_numpy()

    def score(measured):
        chosen = select_model(models, catalog, block_ms, genomes[calib], measured[calib]).model
        metrics = error_metrics(chosen.predict(catalog, block_ms, genomes[~calib]), measured[~calib])
        return {"model": chosen.name, **{k: metrics[k] for k in ("n", "mape_pct", "max_ape_pct", "spearman",
                                                                   "within_5_pct")}}

    return {"passes": [score(t) for t in times], "median_of_passes": score(np.median(times, axis=0))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT / "data", help="a finished pipeline's data folder")
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--device", default="ort_cpu_fp32")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "benchmarks/results/yardstick_noise.json")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.profile)
    layout = Layout(args.root)
    profile = stages.device_profile(params, args.device)
    paths = layout.lut_paths(args.device)
    table = lut.LookupTable.read(paths.lut)
    frame = read_parquet(paths.calibration)
    catalog = BlockCatalog(SearchSpace(), profile.resolution)
    sticks = yardsticks(params, args.device, layout)
    config = TimingConfig.from_dict(table.identity.get("timing"))
    times = retime(subnet_files(layout, args.device, profile, frame), profile, sticks, config, args.passes)
    models = list(stages.section(params, "calibration").get("models") or ["linear"])
    result = {"device": args.device, "passes": args.passes, "subnets": len(frame), "timing": config.to_dict(),
              "yardsticks": {name: {"id": s.entry.id, "ms": s.ms} for name, s in sticks.items()},
              "results": {name: {"pass_to_pass_pct": pass_to_pass_pct(t),
                                 "heldout": heldout(t, frame, catalog, table.block_ms(catalog), models),
                                 "ms": t.tolist()} for name, t in times.items()},
              "machine": machine_fingerprint(), "created": utc_now()}
    for name, r in result["results"].items():
        best = r["heldout"]["median_of_passes"]
        per_pass = ", ".join(f"{h['mape_pct']:.2f}" for h in r["heldout"]["passes"])
        print(f"{name:8s} pass-to-pass {r['pass_to_pass_pct']:.2f} %; held-out per pass MAPE "
              f"{per_pass} %; median of passes: "
              f"MAPE {best['mape_pct']:.2f} %, max {best['max_ape_pct']:.1f} %, Spearman {best['spearman']:.3f}, "
              f"within ±5 % {best['within_5_pct']:.0%} ({best['model']})")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
