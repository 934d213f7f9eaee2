"""EfficientFormerV2-S0 is a member of the search space, bit for bit."""
import pytest
import timm
import torch

from nas_core.complexity import count_params
from nas_core.search_space import SearchSpace
from nas_core.supernet import Supernet, load_timm_efficientformerv2
from tests._archs import randomize_

SPACE = SearchSpace()


@pytest.fixture(scope="module")
def timm_s0():
    torch.manual_seed(0)
    return randomize_(timm.create_model("efficientformerv2_s0", pretrained=False), seed=11).eval()


def test_s0_preset_through_the_supernet_equals_timm(timm_s0):
    supernet = Supernet(SPACE, num_classes=1000, resolution=224)
    arch = load_timm_efficientformerv2(supernet, timm_s0)
    assert arch == SPACE.preset("efficientformerv2_s0")
    model = supernet.extract(arch).eval()
    assert count_params(model) == count_params(timm_s0) == 3_600_256
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(x), timm_s0(x)
        dynamic = supernet.eval()(x, arch)
    assert theirs.std() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(dynamic, theirs, rtol=1e-4, atol=1e-4)
    # ... and the extracted state dict loads back into timm unchanged
    fresh = timm.create_model("efficientformerv2_s0", pretrained=False)
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_warm_start_at_another_resolution_and_class_count(timm_s0):
    supernet = Supernet(SPACE, num_classes=10, resolution=64)
    head_before = supernet.head.weight.clone()
    load_timm_efficientformerv2(supernet, timm_s0.state_dict())
    assert torch.equal(supernet.head.weight, head_before)  # 1000-class head not copied
    stem = supernet.stem.conv1.conv.weight[:16]
    assert torch.equal(stem, timm_s0.stem.conv1.conv.weight)
    with torch.no_grad():
        assert supernet.eval()(torch.randn(1, 3, 64, 64), SPACE.preset("efficientformerv2_s0")).shape == (1, 10)


def test_a_foreign_checkpoint_is_refused():
    supernet = Supernet(SPACE, num_classes=10, resolution=64)
    with pytest.raises(KeyError, match="not a parameter of efficientformerv2_s0"):
        load_timm_efficientformerv2(supernet, {"features.0.weight": torch.zeros(1)})
