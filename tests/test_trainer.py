"""The one training loop (nas_core.trainer) and the shared config pieces (nas_core.config).

Tiny: a linear model on random tensors, one or two epochs, one torch thread.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nas_core.config import ClassificationRecipe, SectionConfig, TrainRecipe
from nas_core.detection import DetectionConfig
from nas_core.finetune import FinetuneConfig
from nas_core.io import torch_load, torch_save
from nas_core.latency.calibration import CalibrationSettings
from nas_core.train import SupernetTrainConfig
from nas_core.trainer import CHECKPOINT_NAME, LossStep, Trainer
from nas_core.transfer import TransferConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
STAGE_CONFIGS = (SupernetTrainConfig, FinetuneConfig, TransferConfig, DetectionConfig)


def _data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


def _mse_with_a_part(model: nn.Module, batch, device: torch.device):
    x, y = batch
    out = model(x.to(device))
    loss = out.pow(2).mean() + nn.functional.cross_entropy(out, y.to(device))
    return loss, {"norm": float(out.detach().norm())}


def _trainer(out, recipe: TrainRecipe, step=_mse_with_a_part) -> Trainer:
    torch.manual_seed(0)
    return Trainer(nn.Linear(5, 3), _data(), step, recipe, out, progress=False)


# --------------------------------------------------------------------------- configs
def test_every_stage_config_is_one_train_recipe_plus_its_own_fields():
    recipe_fields = {f.name for f in dataclasses.fields(TrainRecipe)}
    for cls in STAGE_CONFIGS:
        assert issubclass(cls, TrainRecipe) and issubclass(cls, SectionConfig)
        assert recipe_fields <= {f.name for f in dataclasses.fields(cls)}, cls
    for cls in (SupernetTrainConfig, FinetuneConfig, TransferConfig):
        assert issubclass(cls, ClassificationRecipe)
    # Each stage keeps the paper's defaults for that stage.
    assert (SupernetTrainConfig().epochs, FinetuneConfig().epochs, TransferConfig().epochs,
            DetectionConfig().epochs) == (300, 150, 50, 600)
    assert (DetectionConfig().opt, DetectionConfig().lr) == ("sgd", 0.15 * 24 / 192)
    assert TransferConfig(batch_size=64, base_lr=1e-3, lr_base_batch=256).lr == pytest.approx(2.5e-4)
    assert TrainRecipe.from_config(FinetuneConfig(epochs=3, lr=0.5)) == TrainRecipe(
        epochs=3, lr=0.5, batch_size=1024, warmup_epochs=5.0)  # the fine-tuning defaults, 3 epochs, lr 0.5


@pytest.mark.parametrize("cls, section", [(SupernetTrainConfig, "supernet"), (FinetuneConfig, "finetune"),
                                          (TransferConfig, "transfer"), (DetectionConfig, "detection"),
                                          (CalibrationSettings, "calibration")])
def test_an_unknown_key_names_the_section_the_key_and_the_valid_keys(cls, section):
    with pytest.raises(ValueError, match=rf"params {section}: unknown keys \['learning_rate'\]; known keys: "
                                         rf"\[.*'seed'.*\]"):
        cls.from_params({"learning_rate": 0.1, "seed": 1})
    assert cls.from_params({"seed": 3}).seed == 3 and cls.from_dict(None) == cls()


def test_transfer_derives_its_learning_rate_and_refuses_a_given_one():
    with pytest.raises(ValueError, match=r"unknown keys \['lr'\]"):
        TransferConfig.from_params({"lr": 0.1})
    assert "lr" in TransferConfig().to_dict() and "lr" not in TransferConfig.valid_keys()


def test_yaml_lists_become_tuples():
    config = DetectionConfig.from_params({"devices": ["ort_cpu_fp32"], "anchor_scales": [0.1, 0.9]})
    assert config.devices == ("ort_cpu_fp32",) and config.anchor_scales == (0.1, 0.9)


# --------------------------------------------------------------------------- the loop
def test_a_loss_function_is_a_step_and_its_parts_are_logged(tmp_path):
    trainer = _trainer(tmp_path, TrainRecipe(epochs=2, batch_size=4, lr=0.05))
    before = trainer.model.weight.detach().clone()
    log = trainer.fit()
    assert [r["epoch"] for r in log] == [1, 2] and [r["step"] for r in log] == [4, 8]
    assert all(r["norm"] > 0 and r["loss"] > 0 for r in log)
    assert not torch.equal(before, trainer.model.weight)
    assert list(trainer.log_frame().columns[:5]) == ["epoch", "step", "lr", "loss", "norm"]


def test_a_step_object_owns_the_backward_and_the_log_columns(tmp_path):
    class TwoLosses(LossStep):
        """Two backward passes per batch, like the sandwich rule."""

        def backward(self, model, batch, context):
            losses = {}
            for name, scale in (("a", 1.0), ("b", 2.0)):
                loss, _ = _mse_with_a_part(model, batch, context.device)
                context.scaler.scale(scale * loss).backward()
                losses[name] = loss.detach()
            return losses

        def summarize(self, means):
            return {"mean_loss": (means["a"] + means["b"]) / 2}

    log = _trainer(tmp_path, TrainRecipe(epochs=1, batch_size=8), TwoLosses()).fit()
    assert set(log[0]) >= {"mean_loss", "images_per_s"} and "a" not in log[0]


def test_resume_takes_a_setting_the_checkpoint_predates_at_its_default(tmp_path):
    """Adding a field to a recipe must not orphan the checkpoints written before it."""
    recipe = TrainRecipe(epochs=2, batch_size=4)
    _trainer(tmp_path, recipe).fit(stop_after=1)
    state = torch_load(tmp_path / CHECKPOINT_NAME)
    del state["recipe"]["momentum"]  # as written before momentum was a recipe field
    torch_save(tmp_path / CHECKPOINT_NAME, state)
    resumed = _trainer(tmp_path, recipe)
    assert resumed.resume() and resumed.epoch == 1
    other = _trainer(tmp_path, dataclasses.replace(recipe, momentum=0.5))
    with pytest.raises(ValueError, match=r"momentum: 0.9 -> 0.5"):
        other.resume()
