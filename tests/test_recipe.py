"""The imagenet profile's training recipe (EfficientFormerV2's, which SCAN-Edge follows),
built with timm's own transforms, Mixup, losses and clipping (``nas_core.recipe``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas_core.data.folders import build_transform
from nas_core.classification import ClassificationStep
from nas_core.finetune import FinetuneConfig
from nas_core.params import load_params
from nas_core.recipe import build_mixup, build_teacher, check_mixup, classification_criterion
from nas_core.train import SupernetTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def imagenet():
    return load_params("params.yaml", "imagenet")


def _types(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


@pytest.mark.parametrize("section", ["supernet", "finetune"])
def test_imagenet_training_transforms_are_efficientformerv2s(imagenet, section):
    config = (SupernetTrainConfig if section == "supernet" else FinetuneConfig).from_params(imagenet[section])
    train = build_transform(224, True, config.augment)
    crop, rand_augment, erasing = train.transforms[0], train.transforms[2], train.transforms[-1]
    assert _types(train) == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment",
                             "MaybeToTensor", "Normalize", "RandomErasing"]
    assert crop.scale == (0.08, 1.0) and crop.interpolation.value == "bicubic"
    assert len(rand_augment.ops) == 15 and {op.magnitude for op in rand_augment.ops} == {9}
    assert {op.magnitude_std for op in rand_augment.ops} == {0.5} and rand_augment.num_layers == 2
    assert (erasing.probability, erasing.mode, erasing.max_count) == (0.25, "pixel", 1)
    evaluation = build_transform(224, False, config.eval_transform)
    assert _types(evaluation) == ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]
    assert evaluation.transforms[0].size == int(224 / 0.95) and evaluation.transforms[1].size == (224, 224)
    mixup = build_mixup(config.mixup, config.smoothing, 1000)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob, mixup.switch_prob, mixup.mode,
            mixup.label_smoothing) == (0.8, 1.0, 1.0, 0.5, "batch", 0.1)
    assert type(classification_criterion(config.smoothing, mixup)).__name__ == "SoftTargetCrossEntropy"
    assert (config.opt, config.lr, config.weight_decay, config.warmup_epochs) == ("adamw", 1e-3, 0.025, 5)
    assert (config.clip_grad, config.clip_mode) == (0.01, "agc")
    assert config.teacher == "regnety_160.deit_in1k"


def test_the_teacher_tag_is_deits_regnety_16gf(imagenet):
    import timm

    cfg = timm.models.get_pretrained_cfg(imagenet["finetune"]["teacher"])
    assert cfg.url.endswith("/deit/regnety_160-a5fe301d.pth")  # EfficientFormer's --teacher-path
    assert timm.models.get_pretrained_cfg("regnety_160").tag != "deit_in1k"  # what the bare name would give


def test_supernet_drops_paths_and_smoke_keeps_its_own_recipe(imagenet):
    supernet = SupernetTrainConfig.from_params(imagenet["supernet"])
    assert supernet.ffn_drop_path == 0.1 and supernet.mhsa_drop_path == 0.1
    smoke = SupernetTrainConfig.from_params(load_params("params.yaml", "smoke")["supernet"])
    assert smoke.mixup is None and smoke.teacher is None and smoke.eval_transform is None


def test_mixup_with_hard_distillation_is_deits_loss():
    """loss = (SoftTargetCE(cls, mixed smoothed targets) + CE(dist, argmax teacher(mixed images))) / 2."""
    from timm.loss import SoftTargetCrossEntropy

    from nas_core.search_space import SearchSpace
    from nas_core.subnet import SubnetModel

    torch.manual_seed(0)
    model = SubnetModel(SearchSpace().smallest(), num_classes=5, resolution=32).train()
    model.distilled_training = True
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 5)).eval()
    mixup = build_mixup({"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5, "mode": "batch"},
                        0.1, 5)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    np.random.seed(3)
    torch.manual_seed(3)
    loss, _ = ClassificationStep(0.1, teacher, mixup)(model, (images.clone(), labels), torch.device("cpu"))  # mixes in place
    np.random.seed(3)
    torch.manual_seed(3)
    mixed, targets = mixup(images.clone(), labels)
    assert not torch.equal(mixed, images) and targets.shape == (4, 5)
    assert torch.allclose(targets.sum(1), torch.ones(4)) and targets.max() < 1.0  # smoothed, mixed
    cls, dist = model(mixed)
    expected = (SoftTargetCrossEntropy()(cls, targets) + F.cross_entropy(dist, teacher(mixed).argmax(1))) / 2
    torch.testing.assert_close(loss, expected)


def test_mixup_settings_are_checked():
    with pytest.raises(ValueError, match="unknown keys \\['alpha'\\]"):
        check_mixup({"alpha": 0.8}, 8, "finetune")
    with pytest.raises(ValueError, match="even batch per process"):
        check_mixup({"mixup_alpha": 0.8}, 3, "supernet")
    check_mixup(None, 3, "supernet")  # off: any batch


def test_unloadable_teacher_is_an_error_unless_a_dry_run_names_a_stand_in(tmp_path, monkeypatch, capsys):
    import timm

    teacher = timm.create_model("test_resnet", num_classes=7)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    loaded = build_teacher("test_resnet", str(tmp_path / "teacher.pth"), 7, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), teacher.eval()(x))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    missing = str(tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="teacher 'test_resnet' from .*nowhere.pth"):
        build_teacher("test_resnet", missing, 7, torch.device("cpu"))
    stand_in = build_teacher("test_resnet", missing, 7, torch.device("cpu"), stand_in="test_efficientnet")
    assert type(stand_in).__name__ == "EfficientNet" and stand_in.num_classes == 7
    assert "DRY RUN: distilling from a stand-in teacher, 'test_efficientnet'" in capsys.readouterr().err
