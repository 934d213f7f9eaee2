"""Supernet training (nas_core.train) and subnet evaluation (nas_core.evaluate).

Most tests use a tiny search space (same structure as Table 2, a few channels) at 32x32 so a
sandwich step takes milliseconds; one end-to-end test runs the real space through the CLI.
Torch runs on one thread here: on this shared 2-core machine two OpenMP threads are up to
10x slower when other processes compete for the cores.
"""
from __future__ import annotations

import math
import random
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nas_core.evaluate import calibration_batches, evaluate, recalibrate_bn
from nas_core.search_space import SearchSpace, SpaceSpec, StageSpec
from nas_core.supernet import Supernet
from nas_core.train import (CHECKPOINT_NAME, LOG_COLUMNS, SupernetTrainConfig, SupernetTrainer, load_supernet,
                            read_train_log, sandwich_archs)

TINY_SPEC = SpaceSpec(
    stages=(StageSpec(1, 4, (8, 16), (1, 2), False), StageSpec(2, 8, (16, 24), (1, 2), False),
            StageSpec(3, 16, (24, 32), (1, 2), True), StageSpec(4, 32, (32, 48), (1, 2), True)),
    mhsa_heads=2, mhsa_key_dim=8, downsample_key_dim=8)
TINY = SearchSpace(TINY_SPEC)
SPACE = SearchSpace()
RES, CLASSES = 32, 4


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class NoisyImages(Dataset):
    """Fixed tensors plus noise drawn from the global torch *and* Python RNGs, as a timm
    transform would: resuming must restore both for the batches to be identical."""

    def __init__(self, n: int = 48, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, RES, RES, generator=g)
        self.y = torch.randint(0, CLASSES, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        flip = random.random() < 0.5
        x = self.x[i].flip(-1) if flip else self.x[i]
        return x + 0.1 * torch.randn_like(x), self.y[i]


def tiny_config(**overrides) -> SupernetTrainConfig:
    base = dict(resolution=RES, epochs=2, batch_size=8, steps_per_epoch=3, lr=2e-3, warmup_epochs=0.5,
                min_lr=1e-5, warmup_lr=1e-4, ffn_drop_path=0.2, mhsa_drop_path=0.2, eval_batch_size=16,
                bn_calib_batches=2, bn_calib_batch_size=8)
    return SupernetTrainConfig(**{**base, **overrides})


def tiny_trainer(tmp_path, config=None, dataset=None, with_val=True, **kwargs) -> SupernetTrainer:
    dataset = dataset or NoisyImages()
    val = DataLoader(TensorDataset(dataset.x[:16], dataset.y[:16]), batch_size=8) if with_val else None
    calib = [dataset.x[:8], dataset.x[8:16]] if with_val else None
    return SupernetTrainer(config or tiny_config(), dataset, CLASSES, tmp_path, val, calib, space=TINY,
                           progress=False, **kwargs)


def all_tensors(trainer: SupernetTrainer) -> dict[str, torch.Tensor]:
    """Model state and every optimizer state tensor, by name."""
    out = {f"model.{k}": v for k, v in trainer.supernet.state_dict().items()}
    for i, state in trainer.optimizer.state_dict()["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                out[f"optim.{i}.{k}"] = v
    return out


# --------------------------------------------------------------------------- the sandwich rule
def _blocks(arch):
    return [b for s in arch.stages for b in s.blocks]


def test_sandwich_extremes_share_one_ffn_type_and_activation_per_step():
    seen = set()
    for step in range(40):
        archs = dict(sandwich_archs(SPACE, seed=0, step=step))
        assert list(archs) == ["largest", "smallest", "random0", "random1"]
        largest, smallest = archs["largest"], archs["smallest"]
        ffn_type, act = largest.stages[0].blocks[0].ffn.type, largest.stem_act
        assert largest == SPACE.largest(ffn_type, act) and smallest == SPACE.smallest(ffn_type, act)
        assert {b.ffn.type for b in _blocks(largest) + _blocks(smallest)} == {ffn_type}
        assert {b.ffn.act for b in _blocks(smallest)} == {act}
        seen.add((ffn_type, act))
    assert seen == {(t, a) for t in ("unified", "fused") for a in ("gelu", "relu")}


def test_random_subnets_mix_ffn_types_per_block_and_are_reproducible():
    mixed = 0
    for step in range(20):
        first, again = sandwich_archs(SPACE, 0, step), sandwich_archs(SPACE, 0, step)
        assert first == again  # every process, and a resumed run, samples the same subnets
        for _, arch in first[2:]:
            mixed += len({b.ffn.type for b in _blocks(arch)}) == 2
    assert mixed >= 30  # 40 random subnets; with 12+ blocks each, nearly all mix both types
    assert sandwich_archs(SPACE, 0, 0)[2:] != sandwich_archs(SPACE, 0, 1)[2:]
    assert sandwich_archs(SPACE, 0, 0)[2:] != sandwich_archs(SPACE, 1, 0)[2:]
    assert len(sandwich_archs(SPACE, 0, 0, num_random=5)) == 7


# --------------------------------------------------------------------------- configuration
def test_config_rejects_unknown_and_invalid_keys():
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]"):
        SupernetTrainConfig.from_params({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="multiple of 32"):
        SupernetTrainConfig.from_params({"resolution": 100})
    with pytest.raises(ValueError, match="distillation_head"):
        SupernetTrainConfig.from_params({"teacher": "regnety_160", "distillation_head": False})
    config = SupernetTrainConfig.from_params({"epochs": 3, "lr": 5e-3})
    assert (config.epochs, config.lr, config.weight_decay, config.num_random_subnets) == (3, 5e-3, 0.025, 2)


def test_layer_scale_init_option_sets_every_gamma(tmp_path):
    default = tiny_trainer(tmp_path / "a").supernet
    assert float(default.stages[3].blocks[0].token_mixer.gamma.detach().max()) == pytest.approx(1e-5)  # timm init
    supernet = tiny_trainer(tmp_path / "b", tiny_config(layer_scale_init=0.1)).supernet
    gammas = {n: p for n, p in supernet.named_parameters() if n.endswith("gamma")}
    assert len(gammas) == 2 * 8 + 4  # unified + fused FFN in 8 blocks, an MHSA in the 4 of stages 3-4
    assert all(torch.all(g == 0.1) for g in gammas.values())


def test_batch_size_must_split_evenly_over_processes(tmp_path):
    from nas_core.train import DistContext

    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        tiny_trainer(tmp_path, ctx=DistContext(rank=0, world_size=3))


# --------------------------------------------------------------------------- evaluation
def test_evaluate_counts_top1_top5_and_loss_exactly():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0, -1],    # label 0: top-1
                           [5.0, 4, 3, 2, 1, 0, -1],    # label 4: top-5 only
                           [5.0, 4, 3, 2, 1, 0, -1]])   # label 6: neither
    labels = torch.tensor([0, 4, 6])

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return logits[x.long().flatten()]

    loader = [(torch.tensor([[0.0], [1.0]]), labels[:2]), (torch.tensor([[2.0]]), labels[2:])]
    result = evaluate(Fixed(), loader)
    assert result["top1"] == pytest.approx(1 / 3) and result["top5"] == pytest.approx(2 / 3)
    assert result["images"] == 3
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)))


def test_recalibrated_statistics_are_the_average_of_the_batches():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.1), nn.Dropout(0.9))
    batches = [torch.randn(6, 3, 5, 5) + i for i in range(3)]
    assert recalibrate_bn(model, None, batches, num_batches=2) == 2
    with torch.no_grad():
        means = [model[0](b).mean((0, 2, 3)) for b in batches[:2]]
    torch.testing.assert_close(model[1].running_mean, (means[0] + means[1]) / 2)
    assert model[1].momentum == 0.1 and not model.training  # restored, and left in eval mode
    with pytest.raises(ValueError, match="asked for 5 batches, only 3"):
        recalibrate_bn(model, None, batches, num_batches=5)


def test_recalibrating_the_supernet_slice_equals_recalibrating_the_extracted_subnet():
    torch.manual_seed(0)
    net = Supernet(TINY, CLASSES, RES, ffn_drop_path=0.5, mhsa_drop_path=0.5)  # drop path must stay off
    arch = TINY.sample(3)
    batches = [torch.randn(4, 3, RES, RES) for _ in range(3)]
    extracted = net.extract(arch)
    recalibrate_bn(net, arch, batches, 3)
    recalibrate_bn(extracted, None, [(b, None) for b in batches], 3)  # (images, labels) batches work too
    after = net.extract(arch).state_dict()
    for name, value in extracted.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(after[name], value, rtol=1e-4, atol=1e-5, msg=name)
    x = torch.randn(4, 3, RES, RES)
    with torch.no_grad():
        torch.testing.assert_close(net(x, arch), extracted.eval()(x), rtol=1e-4, atol=1e-5)


def test_calibration_batches_are_a_fixed_seeded_subset():
    data = TensorDataset(torch.arange(40.0).view(40, 1), torch.zeros(40))
    first = calibration_batches(data, num_batches=3, batch_size=4, seed=1)
    assert [b.shape for b in first] == [(4, 1)] * 3
    values = torch.cat(first).flatten()
    assert len(values.unique()) == 12 and not torch.equal(values, torch.arange(12.0))  # shuffled, no repeats
    assert all(torch.equal(a, b) for a, b in zip(first, calibration_batches(data, 3, 4, seed=1)))
    with pytest.raises(ValueError, match="need 60 images; the dataset has 40"):
        calibration_batches(data, num_batches=15, batch_size=4)


# --------------------------------------------------------------------------- the step
def test_one_optimizer_step_uses_the_summed_gradients_of_the_four_subnets(tmp_path):
    trainer = tiny_trainer(tmp_path, tiny_config(ffn_drop_path=0.0, mhsa_drop_path=0.0, warmup_epochs=0))
    x, y = NoisyImages().x[:8], NoisyImages().y[:8]
    expected = {}
    net = trainer.supernet.train()
    for role, arch in sandwich_archs(TINY, 0, 0):
        net.zero_grad(set_to_none=True)
        trainer.criterion(net(x, arch), y).backward()
        expected[role] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    trainer.sandwich_backward(x, y, step=0)
    names = set().union(*expected.values())
    grads = dict(net.named_parameters())
    assert all(grads[n].grad is not None for n in names)
    for name in names:
        total = sum(g[name] for g in expected.values() if name in g)
        torch.testing.assert_close(grads[name].grad, total, rtol=1e-5, atol=1e-7, msg=name)
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert unused, "four subnets of a dual-FFN supernet never touch every weight"
    before = {n: grads[n].detach().clone() for n in unused}
    trainer.optimizer_step()
    assert all(torch.equal(grads[n], before[n]) for n in unused)  # untouched: no weight decay either
    assert trainer.step == 1


def test_hard_distillation_and_inplace_distillation_losses(tmp_path):
    import timm

    teacher = timm.create_model("resnet10t", num_classes=CLASSES)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    config = tiny_config(ffn_drop_path=0.0, mhsa_drop_path=0.0, teacher="resnet10t",
                         teacher_checkpoint=str(tmp_path / "teacher.pth"), inplace_distillation=True)
    trainer = tiny_trainer(tmp_path, config)
    x, y = NoisyImages().x[:8], NoisyImages().y[:8]
    losses = trainer.sandwich_backward(x, y, step=0)
    archs = dict(sandwich_archs(TINY, 0, 0))
    with torch.no_grad():
        teacher_labels = trainer.teacher(x).argmax(1)
        cls_l, dist_l = trainer.supernet(x, archs["largest"])
        cls_s, dist_s = trainer.supernet(x, archs["smallest"])
    torch.testing.assert_close(teacher.eval()(x).argmax(1), teacher_labels)  # the checkpoint was loaded
    smooth = trainer.criterion(cls_l, y)
    torch.testing.assert_close(losses["largest"], (smooth + F.cross_entropy(dist_l, teacher_labels)) / 2)
    soft = -(cls_l.softmax(1) * cls_s.log_softmax(1)).sum(1).mean()  # the largest teaches the others
    torch.testing.assert_close(losses["smallest"], (soft + F.cross_entropy(dist_s, teacher_labels)) / 2)


# --------------------------------------------------------------------------- checkpoints and resume
def draw_foreign_random_every_step(trainer: SupernetTrainer) -> None:
    """Draw from Python's global ``random`` before each step, as another thread of the
    process would (Prefect's websocket keepalive ping does)."""
    original_step = trainer.train_step

    def step(images, labels):
        random.getrandbits(32)
        return original_step(images, labels)

    trainer.train_step = step


@pytest.mark.parametrize("num_workers", [0, 1])
def test_interrupted_run_resumes_to_bit_identical_weights(tmp_path, num_workers, prefect_services_drained):
    """Augmentation in the main process (0 workers, nothing else drawing from ``random``)
    or in workers (1: then even with foreign draws from the main process's ``random``)."""
    config = tiny_config(num_workers=num_workers)
    straight = tiny_trainer(tmp_path / "straight", config)
    straight.fit()

    class Interrupt(Exception):
        pass

    first = tiny_trainer(tmp_path / "resumed", config)
    if num_workers:
        draw_foreign_random_every_step(first)
    original_step = first.train_step

    def crash_in_second_epoch(images, labels):
        if first.step == 4:  # epoch 2 of 3-step epochs: the checkpoint holds epoch 1
            raise Interrupt
        return original_step(images, labels)

    first.train_step = crash_in_second_epoch
    with pytest.raises(Interrupt):
        first.fit()
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # a new process has other RNG states
    second = tiny_trainer(tmp_path / "resumed", config)
    if num_workers:
        draw_foreign_random_every_step(second)
    assert second.resume() and (second.epoch, second.step) == (1, 3)
    second.fit()

    a, b = all_tensors(straight), all_tensors(second)
    assert a.keys() == b.keys() and len(a) > 100
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert [r["train_loss"] for r in straight.log] == [r["train_loss"] for r in second.log]
    assert not torch.equal(a["model.head.weight"], tiny_trainer(tmp_path / "fresh").supernet.head.weight)
    log = read_train_log(tmp_path / "resumed")
    assert list(log.columns) == LOG_COLUMNS and list(log["epoch"]) == [1, 2] and list(log["step"]) == [3, 6]
    assert log["top1_largest"].between(0, 1).all() and (log["val_images"] == 16).all()
    loaded, meta = load_supernet(tmp_path / "resumed" / "supernet.pt")
    assert meta["epochs"] == 2 and meta["space_spec"]["mhsa_heads"] == 2
    assert all(torch.equal(v, b[f"model.{k}"]) for k, v in loaded.state_dict().items())


def test_foreign_draws_from_random_change_main_process_augmentation(tmp_path, prefect_services_drained):
    """Why the pipeline augments in workers: with 0 workers a draw from Python's global
    ``random`` by anyone else shifts the augmentation, and the weights differ."""
    quiet = tiny_trainer(tmp_path / "quiet", tiny_config(epochs=1))
    quiet.fit()
    disturbed = tiny_trainer(tmp_path / "disturbed", tiny_config(epochs=1))
    draw_foreign_random_every_step(disturbed)
    disturbed.fit()
    assert not torch.equal(quiet.supernet.head.weight, disturbed.supernet.head.weight)


def test_resume_refuses_changed_params(tmp_path):
    tiny_trainer(tmp_path).fit(stop_after=1)
    changed = tiny_trainer(tmp_path, tiny_config(lr=1e-2, eval_every=2))  # eval_every may change
    with pytest.raises(ValueError, match=r"cannot resume: .*lr: 0.002 -> 0.01"):
        changed.resume()
    assert (tmp_path / CHECKPOINT_NAME).exists()


def test_resuming_a_finished_run_leaves_its_artifacts_byte_identical(tmp_path):
    """A new timestamp inside supernet.pt would change its content hash, and DVC / Prefect
    would then re-run every stage downstream of the supernet."""
    from nas_core.io import file_sha256
    from nas_core.train import LOG_NAME, SUPERNET_NAME

    config = tiny_config(epochs=1, steps_per_epoch=1)
    tiny_trainer(tmp_path, config).fit()
    artifacts = [tmp_path / name for name in (SUPERNET_NAME, CHECKPOINT_NAME, LOG_NAME)]
    before = {path.name: (file_sha256(path), path.stat().st_mtime_ns) for path in artifacts}
    again = tiny_trainer(tmp_path, config)
    assert again.resume() and again.epoch == 1
    again.fit()
    assert {path.name: (file_sha256(path), path.stat().st_mtime_ns) for path in artifacts} == before
    (tmp_path / SUPERNET_NAME).unlink()  # a finished run whose supernet.pt went missing writes it again
    restored = tiny_trainer(tmp_path, config)
    assert restored.resume()
    restored.fit()
    assert load_supernet(tmp_path / SUPERNET_NAME)[1]["steps"] == 1


def test_evaluation_does_not_change_the_training_trajectory(tmp_path):
    with_eval = tiny_trainer(tmp_path / "a", tiny_config(epochs=1))
    with_eval.fit()
    without = tiny_trainer(tmp_path / "b", tiny_config(epochs=1), with_val=False)  # (re-seeds the RNGs)
    without.fit()
    assert not math.isnan(with_eval.log[0]["top1_largest"]) and math.isnan(without.log[0]["top1_largest"])
    a, b = with_eval.supernet.state_dict(), without.supernet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # BN statistics restored after recalibration


# --------------------------------------------------------------------------- end to end (real space)
def test_cli_trains_the_real_supernet_on_generated_images(tmp_path, capsys, monkeypatch):
    from flows.cli import main
    from nas_core.data.synthetic import generate_classification
    from nas_core.io import read_provenance

    monkeypatch.setenv("SCAN_EDGE_CPU_LOCK", str(tmp_path / "cpu.lock"))  # not the machine's lock
    data = tmp_path / "data"
    generate_classification(data, num_classes=4, train_per_class=4, val_per_class=2, test_per_class=1,
                            image_size=32, workers=1)
    (tmp_path / "params.yaml").write_text(
        "profile: smoke\nsupernet:\n  resolution: 32\n  epochs: 1\n  batch_size: 4\n  steps_per_epoch: 2\n"
        "  lr: 0.001\n  warmup_epochs: 0\n  threads: 1\n  bn_calib_batches: 2\n  bn_calib_batch_size: 4\n"
        "profiles:\n  other: {}\n")
    args = ["train-supernet", "--params", str(tmp_path / "params.yaml"), "--data", str(data),
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    supernet, meta = load_supernet(tmp_path / "out" / "supernet.pt")
    assert (meta["num_classes"], meta["resolution"], meta["space_version"]) == (4, 32, SPACE.version)
    assert meta["params"]["supernet"]["steps_per_epoch"] == 2 and meta["steps"] == 2
    assert isinstance(supernet, Supernet) and not supernet.training
    log = read_train_log(tmp_path / "out")
    assert len(log) == 1 and log["val_images"][0] == 8 and 0 <= log["top1_largest"][0] <= 1
    assert read_provenance(tmp_path / "out" / "train_log.parquet")["config"]["batch_size"] == 4
    capsys.readouterr()
    assert main(args) == 2  # a finished run is not silently overwritten
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # already complete: nothing to train, artifacts kept
    assert load_supernet(tmp_path / "out" / "supernet.pt")[1]["steps"] == 2
    shutil.rmtree(tmp_path / "out")  # ~0.8 GB of real-space checkpoints: do not leave them in /tmp
