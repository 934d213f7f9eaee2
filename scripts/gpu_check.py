"""One GPU check of scan-edge, ≤ 8 minutes on one GPU; writes one JSON of results.

    bash scripts/gpu_check.sh [OUT.json]        (default: gpu_check.json; $OUT/gpu_check.json when $OUT is set)

Parts, each in its own try/except with its own time budget, each recorded as
``{"status": "ok" | "skipped" | "failed", "seconds", ...}`` (a skip says what could not
be imported or found, a failure carries the traceback's last lines):

1. ``gpu_tests``: ``pytest -m gpu tests/test_gpu_paths.py`` (ORT CUDA I/O binding,
   TensorRT engine vs torch, AMP supernet steps, pairs on CUDA) with pass/skip/fail counts;
2. ``lut_<device>``: a CUDA LUT of a block subset on ``ort_cuda_fp32`` (onnxruntime-gpu),
   ``tensorrt_fp32`` (TensorRT) and ``torch_cuda`` (torch alone, always possible on a GPU);
3. ``calibration_<device>``: a small calibration: random subnets timed end to end on each
   device, next to their LUT sums, and the fit ``measured = a * LUT + b`` when the LUT is complete
   (it is not here: a subset), so the subnets' measured latency is what is recorded;
4. ``amp_supernet``: AMP sandwich steps of the paper-size supernet at 224 px on the GPU;
5. ``pairs_shard``: one pairs shard evaluated on the GPU (streamed images, BN recalibration
   on the GPU), one subnet compared against the CPU.

The lent machine has CUDA torch but no network, no TensorRT and no onnxruntime-gpu: those
parts skip naming the import that failed, the torch-CUDA parts run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOTAL_BUDGET_S = 450  # the shell script kills everything at 480 s
# GPU_CHECK_DEVICE=cpu runs the torch parts on the CPU: a self-test of this script where there is no GPU.
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def expire(signum, frame):
        raise PartTimeout(f"part exceeded its {seconds} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Skip(Exception):
    """A part that cannot run here; the message says why."""


def run_part(results: dict, name: str, budget_s: int, fn) -> None:
    started = time.monotonic()
    remaining = TOTAL_BUDGET_S - (started - START)
    if remaining < 10:
        results[name] = {"status": "skipped", "reason": "no time left in the script's budget"}
        return
    try:
        with time_limit(min(budget_s, remaining)):
            outcome = fn() or {}
        results[name] = {"status": "ok", **outcome}
    except Skip as why:
        results[name] = {"status": "skipped", "reason": str(why)}
    except BaseException as err:  # noqa: BLE001 - every part is independent; keep going
        results[name] = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc().splitlines()[-12:]}
    results[name]["seconds"] = round(time.monotonic() - started, 1)
    print(f"[gpu_check] {name}: {results[name]['status']} ({results[name]['seconds']} s)"
          + (f" - {results[name].get('reason') or results[name].get('error')}"
             if results[name]["status"] != "ok" else ""), flush=True)


def require_cuda():
    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} sees no CUDA device")
    return torch


def require_import(module: str, what: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise Skip(f"cannot import {module} ({what}): {err}") from None


# --------------------------------------------------------------------------- parts
def gpu_tests() -> dict:
    require_cuda()
    if DEVICE != "cuda":
        raise Skip("GPU_CHECK_DEVICE=cpu: the gpu tests need CUDA")
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu_paths.py", "-q", "-rs",
                               "-p", "no:cacheprovider", f"--junitxml={junit}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=140)
        import xml.etree.ElementTree as ET

        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        cases = {}
        for case in suite.iter("testcase"):
            skipped, failed = case.find("skipped"), case.find("failure") or case.find("error")
            cases[case.get("name")] = ("failed" if failed is not None else "skipped: " + skipped.get("message", "")
                                       if skipped is not None else "passed")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    if counts["failures"] or counts["errors"]:
        raise RuntimeError(f"gpu tests failed: {counts}; {done.stdout[-1500:]}")
    return {"counts": counts, "cases": cases}


def usable_cuda_profile(device: str):
    """The CUDA device profile and its usability, or Skip with the reason."""
    require_cuda()
    if DEVICE != "cuda":
        raise Skip("GPU_CHECK_DEVICE=cpu: the device profiles are CUDA ones")
    from nas_core.latency.devices import check_usable, get_profile

    profile = get_profile(device)
    usability = check_usable(profile)
    if not usability.usable:
        raise Skip(usability.reason)
    return profile, usability


def lut_subset(device: str, blocks: str, limit: int, out: Path) -> dict:
    from nas_core.latency.lut import LutPaths, build_lut
    from nas_core.latency.timing import TimingConfig

    profile, usability = usable_cuda_profile(device)
    config = TimingConfig(warmup_runs=5, warmup_ms=20, min_repeats=20, min_total_ms=50, max_total_ms=500)
    frame = build_lut(profile, LutPaths.for_device(device, out / "lut"), block_filter=blocks, limit=limit,
                      config=config, progress=False)
    return {"runtime": usability.runtime_name, "runtime_version": usability.runtime_version, "blocks": len(frame),
            "median_ms": {str(b): round(float(m), 4) for b, m in zip(frame["block_id"], frame["median_ms"])}}


def small_calibration(device: str, out: Path, subnets: int = 3) -> dict:
    from nas_core.latency.measure import measure_module
    from nas_core.latency.timing import TimingConfig
    from nas_core.search_space import SearchSpace
    from nas_core.subnet import SubnetModel

    profile, usability = usable_cuda_profile(device)
    space = SearchSpace()
    config = TimingConfig(warmup_runs=5, warmup_ms=20, min_repeats=20, min_total_ms=50, max_total_ms=1000)
    measured = {}
    for seed in range(subnets):
        arch = space.sample(seed)
        model = SubnetModel(arch, 1000, profile.resolution).eval()
        result = measure_module(model, (profile.batch_size, 3, profile.resolution, profile.resolution), profile,
                                workdir=out / f"calib_{device}", config=config)
        measured[arch.arch_id] = round(result.median_ms, 4)
    return {"subnets_ms": measured, "note": "LUT sums need the full LUT (568 blocks + 4 heads): not fitted here"}


def amp_supernet(steps: int = 6 if DEVICE == "cuda" else 1) -> dict:
    torch = require_cuda()
    from torch.utils.data import TensorDataset

    from nas_core.train import DistContext, SupernetTrainConfig, SupernetTrainer

    config = SupernetTrainConfig(resolution=224, epochs=1, batch_size=32, steps_per_epoch=steps, warmup_epochs=0,
                                 ffn_drop_path=0.1, mhsa_drop_path=0.1, clip_grad=0.01, clip_mode="agc",
                                 mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0})
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32 * steps, 3, 224, 224, generator=g), torch.randint(0, 1000, (32 * steps,),
                                                                                         generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SupernetTrainer(config, data, 1000, tmp, ctx=DistContext(device=torch.device(DEVICE)),
                                  progress=False)
        stats = trainer.train_epoch(0)
    return {"steps": trainer.step, "amp": trainer.use_amp, "loss": stats["train_loss"],
            "images_per_s": round(stats["images_per_s"], 1), "device": _device_name(torch),
            "max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None}


def _device_name(torch) -> str:
    return torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (GPU_CHECK_DEVICE=cpu self-test)"


def pairs_shard(out: Path) -> dict:
    torch = require_cuda()
    from nas_core.data.synthetic import generate_classification
    from nas_core.io import read_parquet, torch_save
    from nas_core.pairs import PairsConfig, SubnetEvaluator, evaluate_shard, prepare_pairs
    from nas_core.search_space import SPACE_VERSION, SearchSpace
    from nas_core.supernet import Supernet
    from nas_core.train import SUPERNET_FORMAT

    data = out / "pairs_data"
    generate_classification(data, num_classes=10, train_per_class=20, val_per_class=20, test_per_class=1,
                            image_size=64)
    torch.manual_seed(0)
    net = Supernet(SearchSpace(), num_classes=10, resolution=64)
    supernet = torch_save(out / "supernet.pt", {"format": SUPERNET_FORMAT, "space_version": SPACE_VERSION,
                                                "space_spec": None, "num_classes": 10, "resolution": 64,
                                                "distillation": True, "model": net.state_dict()})
    config = PairsConfig(num_subnets=8, shard_size=8, bn_calib_batches=2, bn_calib_batch_size=32,
                         eval_batch_size=50, cache_images=False, num_workers=2, threads=None)
    plan = prepare_pairs(config, supernet, data, out / "shards", fresh=True)
    started = time.perf_counter()
    shard = read_parquet(evaluate_shard(plan.shard_specs()[0], device=DEVICE))
    gpu_seconds = time.perf_counter() - started
    on_cpu = SubnetEvaluator.from_files(supernet, data, dataclasses.replace(config, device="cpu", num_workers=0))
    arch = SearchSpace().from_dict(json.loads(shard["arch_json"].iloc[0]))
    cpu = on_cpu(arch)
    return {"subnets": len(shard), "seconds": round(gpu_seconds, 2), "top1": shard["top1"].round(4).tolist(),
            "first_subnet_loss_gpu": float(shard["loss"].iloc[0]), "first_subnet_loss_cpu": cpu["loss"],
            "first_subnet_top1_equal": bool(abs(float(shard["top1"].iloc[0]) - cpu["top1"]) < 1e-9)}


# --------------------------------------------------------------------------- main
START = time.monotonic()


def main() -> int:
    out_json = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with contextlib.suppress(Exception):  # imports first, outside the parts' time budgets
        import torch

        import nas_core.pairs  # noqa: F401
        import nas_core.train  # noqa: F401

        results["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_part(results, "gpu_tests", 150, gpu_tests)
        for device in ("ort_cuda_fp32", "tensorrt_fp32", "torch_cuda"):
            run_part(results, f"lut_{device}", 60, lambda d=device: lut_subset(d, "s3/*", 24, work))
            run_part(results, f"calibration_{device}", 40, lambda d=device: small_calibration(d, work))
        run_part(results, "amp_supernet", 90, amp_supernet)
        run_part(results, "pairs_shard", 90, lambda: pairs_shard(work))
    results["seconds"] = round(time.monotonic() - START, 1)
    results["summary"] = {name: part["status"] for name, part in results.items() if isinstance(part, dict)
                          and "status" in part}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=2, default=str))
    print(f"[gpu_check] wrote {out_json}: {results['summary']}")
    return 1 if "failed" in results["summary"].values() else 0


if __name__ == "__main__":
    sys.exit(main())
