"""``scan-edge reproduce --profile imagenet --dry-run``: every stage of the imagenet profile, on CPU,
for a few steps on a tiny ImageNet-layout folder; a broken setting fails here, not on a cluster."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nas_core.io import read_json, torch_load
from nas_core.params import load_params
from tasks import lanes, stages
from tasks.dry_run import dry_run_params


def tiny_imagenet(root: Path, classes: int = 10, train: int = 16, val: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(40, 80, 2))
                pixels = np.clip(rng.normal(25 * c, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.JPEG", quality=85)
    return root


def test_dry_run_params_keep_the_recipe_and_shrink_the_sizes(tmp_path):
    imagenet = load_params("params.yaml", "imagenet")
    params, notes = dry_run_params(imagenet, tiny_imagenet(tmp_path / "in", classes=2, train=2, val=1))
    for section in ("supernet", "finetune"):  # the recipe is the profile's
        for key in ("augment", "mixup", "smoothing", "eval_transform", "opt", "clip_mode", "teacher"):
            assert params[section][key] == imagenet[section][key], (section, key)
    assert params["supernet"]["ffn_drop_path"] == imagenet["supernet"]["ffn_drop_path"] > 0
    assert params["search"]["evolution"] == imagenet["search"]["evolution"]  # 100 x 100
    assert params["predictor"]["target"] == "top1" and params["baselines"]["models"] == ["mobilenetv2_100"]
    assert params["search"]["devices"] == imagenet["search"]["devices"][:1]
    assert {"openvino_cpu_fp32", "openvino_cpu_lowp"} <= set(params["finetune"]["devices"])  # still measured
    assert params["supernet"]["steps_per_epoch"] == 2 and params["pairs"]["num_subnets"] == 14
    assert "tensorrt_fp32" not in params["search"]["devices"] + params["finetune"]["devices"]
    assert any("tensorrt_fp32" in note for note in notes)  # no GPU here: said, not silently dropped
    assert params["supernet"]["teacher_stand_in"] == "test_resnet"
    with pytest.raises(FileNotFoundError, match="--dry-run needs --data DIR"):
        dry_run_params(imagenet, tmp_path / "nowhere")


# ~7-8 min on a quiet 2-core machine (31 min under load here): run with -m slow until it is cheaper;
# the default suite must stay well under 20 minutes.
@pytest.mark.slow
def test_imagenet_profile_dry_run_writes_every_stage(tmp_path, prefect_harness, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: the teacher falls back at once
    data, out = tiny_imagenet(tmp_path / "tiny-imagenet"), tmp_path / "out"
    rc = main(["reproduce", "--profile", "imagenet", "--dry-run", "--data", str(data), "--root", str(out),
               "--no-dvc-commit"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    params, _ = dry_run_params(load_params("params.yaml", "imagenet"), data)
    steps = stages.pipeline_steps(params, out)
    missing = [str(path) for step in steps for path in step.outputs if not Path(path).exists()]
    assert not missing, missing
    assert {s.stage for s in steps} == set(stages.STAGES)  # every stage ran
    supernet = torch_load(out / "supernet" / "supernet.pt")
    assert supernet["config"]["mixup"]["cutmix_alpha"] == 1.0 and supernet["config"]["teacher"] == "regnety_160.deit_in1k"
    assert supernet["num_classes"] == 10 and supernet["resolution"] == 32
    ours = read_json(next((out / "finetune").glob("ours_*/metrics.json")))
    assert ours["train"]["distillation"] is True and ours["inherited"] is not None
    assert "tensorrt_fp32" not in ours["latency_ms"] and ours["latency_ms"]["ort_cpu_fp32"]["median_ms"] > 0
    assert read_json(out / "detection" / "metrics.json") and (out / "report" / "README.md").exists()
    # The second calibration round timed the subnets its quick predictor searches found, and refitted.
    refit = read_json(stages.Layout(out).lut_paths(params["search"]["devices"][0]).second_round().fit)
    assert refit["round"] == 2 and refit["searched"]["n"] >= 1
    assert "searched" in refit["metrics_by_origin"]["calibration"]
    assert "DRY RUN: distilling from a stand-in teacher" in printed.err + printed.out
    if len(lanes.allowed_cpus()) >= 2:  # both lanes ran their real stages in their own processes
        assert "latency lane: done" in printed.out + printed.err and "search lane: done" in printed.out + printed.err
        assert (out / ".resume" / "search-lane" / "search.log").read_text().count("search@") > 0
