import numpy as np
import onnxruntime as ort
import pytest
import torch

from nas_core.latency.export import export_onnx
from nas_core.search_space import SearchSpace
from nas_core.subnet import SubnetModel
from nas_core.supernet import Supernet
from tests._archs import covering_archs, randomize_

SPACE = SearchSpace()
RES = 64


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return randomize_(Supernet(SPACE, num_classes=10, resolution=RES)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(1))


def _archs():
    return covering_archs(SPACE) + [SPACE.smallest(), SPACE.largest("unified"), SPACE.largest("fused"),
                                    SPACE.preset("efficientformerv2_s0")]


@pytest.mark.parametrize("index", range(8))
def test_extracted_subnet_equals_supernet(supernet, images, index):
    arch = _archs()[index]
    model = supernet.extract(arch).eval()
    with torch.no_grad():
        expected, got = supernet(images, arch), model(images)
    assert expected.abs().max() > 1e-2  # not a degenerate comparison
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The extracted model is plain: exactly the architecture's parameters, no spare channels.
    from nas_core.complexity import count_params
    assert count_params(model) == count_params(SubnetModel(arch, 10, RES))


def test_train_mode_updates_only_the_active_slice_of_bn_statistics(images):
    torch.manual_seed(0)
    net = randomize_(Supernet(SPACE, num_classes=10, resolution=RES))
    arch = covering_archs(SPACE)[1]
    untouched = net.state_dict()["stages.3.blocks.5.mlp.fused.fc2.bn.running_mean"].clone()
    static = net.extract(arch).train()
    net.train()
    with torch.no_grad():
        out_static, out_net = static(images), net(images, arch)
    torch.testing.assert_close(out_net, out_static, rtol=1e-4, atol=1e-4)  # batch statistics
    after = net.extract(arch)
    for (name, a), (_, b) in zip(static.state_dict().items(), after.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert arch.depths[3] < 6  # block 5 of stage 4 is unused by this arch: its stats must not move
    assert torch.equal(net.state_dict()["stages.3.blocks.5.mlp.fused.fc2.bn.running_mean"], untouched)


def test_load_subnet_is_the_inverse_of_extract(images):
    torch.manual_seed(0)
    net = Supernet(SPACE, num_classes=10, resolution=RES).eval()
    arch = covering_archs(SPACE)[2]
    donor = randomize_(SubnetModel(arch, 10, RES), seed=3).eval()
    net.load_subnet(arch, donor)
    with torch.no_grad():
        torch.testing.assert_close(net(images, arch), donor(images), rtol=1e-4, atol=1e-4)
    for (name, a), (_, b) in zip(donor.state_dict().items(), net.extract(arch).state_dict().items()):
        assert torch.equal(a, b), name


def test_gradients_reach_only_the_active_weights(images):
    net = Supernet(SPACE, num_classes=10, resolution=RES).train()
    arch = SPACE.smallest("fused")
    net(images, arch).sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert grads["stages.0.blocks.0.mlp.fused.conv.conv.weight"] is not None
    assert grads["stages.0.blocks.0.mlp.unified.fc1.conv.weight"] is None  # the other FFN type
    assert grads["stages.2.blocks.0.token_mixer.q.conv.weight"] is None  # no MHSA in the smallest
    w = grads["stages.0.blocks.0.mlp.fused.conv.conv.weight"]
    assert w[:48, :24, 1:4, 1:4].abs().sum() > 0  # 24 channels x2, centre 3x3 of the 5x5 kernel
    assert w[48:].abs().sum() == 0 and w[:, 24:].abs().sum() == 0 and w[:, :, 0].abs().sum() == 0


def test_resolution_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        Supernet(SPACE, resolution=100)


def test_extract_at_another_resolution_resizes_attention_biases(supernet):
    arch = SPACE.preset("efficientformerv2_s0")
    model = supernet.extract(arch, resolution=128).eval()
    assert model.stages[3].blocks[3].token_mixer.attention_biases.shape == (8, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 10)


@pytest.mark.parametrize("index", range(4))
def test_every_knob_choice_exports_and_matches_in_onnxruntime(supernet, images, index, tmp_path):
    arch = covering_archs(SPACE)[index]
    model = supernet.extract(arch).eval()
    path = export_onnx(model, (1, 3, RES, RES), tmp_path / "subnet.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images[:1]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("index", [0, 3])
def test_openvino_f32_matches(supernet, images, index, tmp_path):
    import openvino as ov

    arch = covering_archs(SPACE)[index]
    model = supernet.extract(arch).eval()
    path = export_onnx(model, (1, 3, RES, RES), tmp_path / "subnet.onnx")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = images[:1]
    got = compiled(x.numpy())[0]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
