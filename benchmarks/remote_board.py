"""The whole device path on a board this machine is not: a simulated board, end to end.

The board (``tasks.simulated_board``): its own venv without torch (numpy, pyarrow, Prefect and
onnxruntime ``--board-runtime``, not the host's), pinned to one core, served by a real
``prefect worker`` on a work pool of a real Prefect server. The pipeline's own stage functions
then run for device ``board_ort`` (``location: worker``) in a scratch root:

    runtime -> LUT (every block, one job) -> baselines (MobileNetV2: the target) ->
    calibration (in-band subnets) -> second round (the predictor's searched subnets, timed on
    the board) -> searches at 0.75x / 1.0x / 1.5x with on-device refinement
    -> the fine-tuned model timed -> a runtime upgrade on the board, detected as reprofile does

and every timing table is checked for who timed it: ``host_measurements_of_board`` counts rows
of the board's tables whose executor is not the board's Python (it must be 0).

    python benchmarks/remote_board.py --root data --out benchmarks/results/remote_board.json

``--root`` must hold a finished pipeline's predictor (and a fine-tuned model to time); the
block exports under ``<root>/lut/_work/onnx`` are reused when present.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from flows.reprofile import recorded_runtime_version  # noqa: E402
from nas_core.finetune import measure_latency  # noqa: E402
from nas_core.io import read_json, write_json  # noqa: E402
from nas_core.latency import timing  # noqa: E402
from nas_core.layout import Layout  # noqa: E402
from nas_core.params import load_params  # noqa: E402
from tasks import stages  # noqa: E402
from tasks._server import prefect_server  # noqa: E402
from tasks.simulated_board import SimulatedBoard  # noqa: E402

DEVICE = "board_ort"


def board_params(base: dict, board: SimulatedBoard) -> dict:
    params = dict(base)
    # The simulated board shares this VM's host, whose speed moves within seconds: time it in
    # pairs with its LUT's reference block, as the smoke devices are (README, "Paired timing").
    profile = board.profile(DEVICE, options={"clock": "cpu", "paired_reference": True})
    params["devices"] = {**(base.get("devices") or {}), DEVICE: profile}
    params["search"] = {**base["search"], "devices": [DEVICE]}
    return params


def prepare_root(source: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(Layout(source).predictor_dir, Layout(work).predictor_dir, dirs_exist_ok=True)
    exports = Layout(source).lut_exports
    if exports.exists():
        shutil.copytree(exports, Layout(work).lut_exports, dirs_exist_ok=True)


def host_measurements(work: Path, board_python: str) -> tuple[int, int, list[str]]:
    """(rows timed by someone other than the board, rows timed by the board, tables read)."""
    tables = [p for p in work.rglob("*.parquet") if DEVICE in str(p) and "bundles" not in p.parts]
    foreign = own = 0
    read = []
    for path in tables:
        try:
            rows, provenance = timing.read_rows(path)
        except ValueError:
            continue
        if "identity" not in provenance or not rows or "median_ms" not in rows[0]:
            continue
        read.append(str(path.relative_to(work)))
        python = (provenance.get("executor") or {}).get("python")
        if python == board_python:
            own += len(rows)
        else:
            foreign += len(rows)
    return foreign, own, read


def finetuned_onnx(source: Path) -> Path | None:
    found = sorted(source.glob("finetune/ours_*/model.onnx"))
    return found[0] if found else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT / "data", help="a finished pipeline's data folder")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scan-edge-remote-board"))
    parser.add_argument("--board-runtime", default="1.30.0", help="onnxruntime on the board (host: 1.31.1)")
    parser.add_argument("--upgrade-to", default="1.32.0", help="the board's runtime after the 'compiler update'")
    parser.add_argument("--multiples", type=float, nargs="+", default=[0.75, 1.0, 1.5])
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "benchmarks/results/remote_board.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    if args.work.exists():
        shutil.rmtree(args.work)
    prepare_root(args.root, args.work / "data")
    root = args.work / "data"
    board = SimulatedBoard(args.work / "board", core=args.core, runtime_version=args.board_runtime).create()
    params = board_params(load_params(PROJECT_ROOT / "params.yaml"), board)
    result: dict = {"board_runtime_version": board.installed("onnxruntime"),
                    "host_runtime_version": __import__("onnxruntime").__version__, "board_has_torch":
                    board.installed("torch") is not None, "stages": {}}
    with prefect_server(required=True, home=args.work / "server") as url:
        os.environ["PREFECT_API_URL"] = url
        board.deploy(DEVICE, url)
        board.start_worker(url)
        try:
            for stage in ("runtime", "lut", "baselines", "calibration", "recalibration"):
                tick = time.perf_counter()
                stages.STAGES[stage].function(params, device=DEVICE, root=root)
                result["stages"][stage] = round(time.perf_counter() - tick, 1)
                print(f"{stage}: {result['stages'][stage]} s", flush=True)
            fit = read_json(Layout(root).lut_paths(DEVICE).fit)
            result["heldout"] = {k: fit["metrics"]["validation"]["calibrated"][k]
                                 for k in ("n", "mape_pct", "max_ape_pct", "spearman", "within_5_pct")}
            result["heldout_mape_pct"] = result["heldout"]["mape_pct"]
            result["model"] = fit["model"]["name"]
            refit = read_json(Layout(root).lut_paths(DEVICE).search_fit)
            result["heldout_second_round"] = {k: refit["metrics"]["validation"]["calibrated"][k]
                                              for k in ("n", "mape_pct", "max_ape_pct", "spearman", "within_5_pct")}
            result["second_round_subnets"] = (refit.get("searched") or {}).get("n")
            result["searches"] = []
            for multiple in args.multiples:
                summary = read_json(stages.stage_search(params, DEVICE, f"{multiple}x", root=root)["summary"])
                result["searches"].append({k: summary.get(k) for k in (
                    "target", "targets_ms", "latency_ms", "measured_ms", "within", "refine_rounds",
                    "first_estimate_error_pct")})
                print(f"search {multiple}x: {result['searches'][-1]}", flush=True)
            onnx = finetuned_onnx(args.root)
            if onnx is not None:
                access_of = stages._access_of(params, root)
                result["finetuned_latency"] = measure_latency(None, (1, 3, 224, 224), [DEVICE], params["devices"],
                                                              None, onnx_path=onnx, access_of=access_of,
                                                              job_name="finetune-ours")
            board.install_runtime(args.upgrade_to)
            stages._BOARD_VERSIONS.clear()
            now = stages.runtime_identity(params, DEVICE, root)["runtime_version"]
            recorded = recorded_runtime_version(Layout(root).lut_paths(DEVICE).lut)
            result["upgrade"] = {"recorded": recorded, "board_now": now, "detected": now != recorded}
        finally:
            board.stop_worker()
    foreign, own, tables = host_measurements(root, str(board.python))
    result.update(host_measurements_of_board=foreign, board_measurements=own, tables_checked=tables,
                  searches_within=sum(bool(s["within"]) for s in result.get("searches", [])),
                  seconds=round(time.perf_counter() - started, 1))
    write_json(args.out, result)
    print({k: v for k, v in result.items() if k not in ("tables_checked",)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
