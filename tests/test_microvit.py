"""MicroViT S1-S3 (nas_core/microvit.py): the paper's sizes, the attention's shapes, export."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from flows.cli import main as cli_main
from nas_core.complexity import module_complexity
from nas_core.latency.export import export_onnx
from nas_core.microvit import MICROVIT_CONFIGS, create_microvit
from nas_core.search_space import projection_groups
from nas_core.subnet import ESHA

# MicroViT Table I/II at 224x224: (params, MACs). S2 is checked against its own ablation
# baseline (Table V: 11.0 M / 0.343 G), since Table II's 10.0 M contradicts it (module docstring).
PAPER = {"microvit_s1": (6.4e6, 0.231e9), "microvit_s3": (16.7e6, 0.580e9)}
PAPER_S2_TABLE_II = (10.0e6, 0.345e9)


@pytest.fixture(scope="module")
def sizes():
    return {name: module_complexity(create_microvit(name), 224) for name in MICROVIT_CONFIGS}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_macs_within_5_percent_of_the_paper(sizes, name):
    params, macs = PAPER[name]
    assert sizes[name]["params"] == pytest.approx(params, rel=0.05)
    assert sizes[name]["macs"] == pytest.approx(macs, rel=0.05)


def test_s2_macs_match_the_paper_and_its_params_sit_between_its_two_figures(sizes):
    params, macs = PAPER_S2_TABLE_II
    assert sizes["microvit_s2"]["macs"] == pytest.approx(macs, rel=0.10)
    # Table II: 10.0 M; Table V (same model): 11.0 M. Ours is Table I's widths and depths.
    assert 10.0e6 < sizes["microvit_s2"]["params"] < 11.0e6 * 1.06


def test_sizes_grow_from_s1_to_s3(sizes):
    assert sizes["microvit_s1"]["params"] < sizes["microvit_s2"]["params"] < sizes["microvit_s3"]["params"]
    assert sizes["microvit_s1"]["macs"] < sizes["microvit_s2"]["macs"] < sizes["microvit_s3"]["macs"]


def test_esha_splits_channels_and_keeps_the_shape():
    esha = ESHA(320, sr=2).eval()
    assert esha.split == (16, 16, 68, 320 - 68)  # SHViT-S1's partial dim for 320 channels
    assert esha.qkvu.conv.groups == 32 and esha.qkvu.conv.out_channels == 32 + 320
    assert esha.k_reduce.conv.stride == (2, 2) and esha.v_reduce.conv.in_channels == 68
    x = torch.randn(2, 320, 4, 4)
    with torch.no_grad():
        y = esha(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_esha_attention_mixes_tokens_and_leaves_untouched_channels_local():
    """Changing one token moves a far token's output (global attention); with the value
    channels zeroed, a token's output depends only on its 3x3 neighbourhood (U is local)."""
    torch.manual_seed(0)
    esha = ESHA(64, qk_dim=8, value_ratio=0.25, groups=8).eval()
    esha.norm = torch.nn.Identity()  # its statistics span all tokens: off, to isolate the attention
    x = torch.randn(1, 64, 6, 6)
    x2 = x.clone()
    x2[..., 0, 0] += 3.0
    with torch.no_grad():
        far = (esha(x2) - esha(x))[..., 5, 5].abs().max()
    assert far > 1e-4
    with torch.no_grad():
        esha.qkvu.conv.weight[16:32] = 0
        esha.qkvu.conv.bias[16:32] = 0
        esha.qkvu.bn.bias[16:32] = 0
        esha.qkvu.bn.running_mean[16:32] = 0
        local = (esha(x2) - esha(x))[..., 5, 5].abs().max()
    assert local == 0


def test_projection_groups_divide_both_channel_counts():
    assert projection_groups(448, 480) == 32
    assert projection_groups(108, 140) == 4  # the search space's widths need fewer groups
    assert 108 % projection_groups(108, 140) == 0 and 140 % projection_groups(108, 140) == 0


@pytest.mark.parametrize("name", ["microvit_s1"])
def test_forward_shapes_and_stages(name):
    model = create_microvit(name, num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        stages = model.forward_stages(x)
    widths = MICROVIT_CONFIGS[name].widths
    assert [tuple(s.shape[1:]) for s in stages] == [(widths[0], 14, 14), (widths[1], 7, 7), (widths[2], 4, 4)]


def test_onnx_export_through_the_project_exporter_matches_torch(tmp_path):
    torch.manual_seed(1)
    model = create_microvit("microvit_s1").eval()
    path = export_onnx(model, (1, 3, 224, 224), tmp_path / "microvit_s1.onnx")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (1, 1000)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_cli_arch_show_prints_params_and_macs(capsys, sizes):
    assert cli_main(["arch", "show", "microvit_s1"]) == 0
    out = capsys.readouterr().out
    assert f"{sizes['microvit_s1']['params']:,}" in out and f"{sizes['microvit_s1']['macs']:,}" in out
    assert "6.4 M params" in out
    assert cli_main(["arch", "show", "microvit_s3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["params"] == sizes["microvit_s3"]["params"] and record["config"]["widths"] == [192, 384, 512]


def test_baselines_build_microvit_and_record_params_and_macs(monkeypatch, tmp_path):
    from torch import nn

    from nas_core.latency import baselines
    from nas_core.latency.devices import get_profile
    from nas_core.latency.timing import TimingConfig

    assert baselines.is_known_model("microvit_s2") and baselines.is_known_model("gernet_l")
    assert not baselines.is_known_model("microvit_s9")
    assert {"microvit_s1", "microvit_s2", "microvit_s3", "gernet_m", "efficientformerv2_s1"} <= set(
        baselines.BASELINE_MODELS)
    assert isinstance(baselines.build_model("microvit_s1"), type(create_microvit("microvit_s1")))

    def tiny(name):  # conv 3->4 (3x3, 30x30 out) + linear 4->10
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()

    monkeypatch.setattr(baselines, "build_model", tiny)
    fast = TimingConfig(warmup_runs=1, warmup_ms=0, min_repeats=3, min_total_ms=1, max_total_ms=50)
    frame = baselines.measure_baselines([get_profile("ort_cpu_fp32")], {"mobilenetv2_100": 32},
                                        out_path=tmp_path / "b.parquet", config=fast, progress=False)
    row = frame.iloc[0]
    assert row["error"] == "" and row["params"] == 4 * 3 * 9 + 4 + 4 * 10 + 10
    assert row["macs"] == 4 * 3 * 9 * 30 * 30 + 4 * 10
