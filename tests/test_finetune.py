"""Fine-tuning, the generic classifier trainer, baselines and downstream transfer.

Tiny everything: a 4-class generated dataset at 32x32, a supernet over a one-choice-per-
stage search space (so it is small), one or two epochs. One torch thread: on a shared
2-core machine OpenMP threads fighting other processes made steps 10x slower.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from nas_core.classification import ClassificationStep
from nas_core.classifiers import load_classifier, load_classifier_file, save_classifier, subnet_at_resolution
from nas_core.config import TrainRecipe
from nas_core.finetune import FinetuneConfig, comparison_table, finetune
from nas_core.trainer import Trainer as ModelTrainer
from nas_core.io import read_json, torch_save
from nas_core.search_space import SPACE_VERSION, SearchSpace, SpaceSpec, StageSpec
from nas_core.subnet import SubnetModel
from nas_core.supernet import Supernet, resize_attention_bias_table

TINY_SPEC = SpaceSpec(stages=(
    StageSpec(1, 4, (16,), (1,), False), StageSpec(2, 8, (24,), (1,), False),
    StageSpec(3, 16, (32,), (2,), True), StageSpec(4, 32, (48,), (1, 2), True),
), expansions=(2,), kernels=(3,), value_ratios=(2,))
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from nas_core.data.synthetic import generate_classification

    root = tmp_path_factory.mktemp("cls") / "data"
    generate_classification(root, num_classes=4, train_per_class=8, val_per_class=4, test_per_class=4,
                            image_size=32, workers=1)
    return root


@pytest.fixture(scope="module")
def tiny_space() -> SearchSpace:
    return SearchSpace(TINY_SPEC)


@pytest.fixture(scope="module")
def supernet_file(tmp_path_factory, tiny_space) -> Path:
    """A supernet file in nas_core.train's format, over the tiny space (random weights)."""
    from nas_core.train import SUPERNET_FORMAT

    torch.manual_seed(0)
    net = Supernet(tiny_space, num_classes=4, resolution=32)
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    torch_save(path, {"format": SUPERNET_FORMAT, "space_version": SPACE_VERSION,
                      "space_spec": dataclasses.asdict(TINY_SPEC), "num_classes": 4, "resolution": 32,
                      "distillation": True, "model": net.state_dict()})
    return path


@pytest.fixture(scope="module")
def arch_json(tmp_path_factory, tiny_space) -> Path:
    """A search result as the search stage writes it (name, arch, predicted accuracy, estimates)."""
    arch = tiny_space.largest("unified", "relu")
    path = tmp_path_factory.mktemp("search") / "ort_cpu_fp32@3ms.arch.json"
    path.write_text(json.dumps({"name": "ours_ort_cpu_fp32@3ms", "arch": arch.to_dict(), "arch_id": arch.arch_id,
                                "predicted_accuracy": 0.61, "latency_ms": {"ort_cpu_fp32": 3.0}}))
    return path


@pytest.fixture(scope="module")
def tiny_config(quick_timing):
    """``tiny_config(**overrides)``: a FinetuneConfig for this module's tiny runs."""

    def make(**overrides) -> FinetuneConfig:
        values = dict(epochs=2, batch_size=8, lr=2e-3, warmup_epochs=0, eval_batch_size=16, bn_calib_batches=2,
                      bn_calib_batch_size=8, deploy_resolution=64, devices=("ort_cpu_fp32", "tensorrt_fp32"),
                      timing=quick_timing, export_openvino=False)
        values.update(overrides)
        return FinetuneConfig(**values)

    return make


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, dataset, supernet_file, arch_json, tiny_config) -> dict:
    out = tmp_path_factory.mktemp("finetune")
    metrics = finetune(str(arch_json), data_root=dataset, supernet=supernet_file, out_root=out, config=tiny_config(),
                       progress=False)
    return {"metrics": metrics, "dir": out / metrics["name"], "out": out}


# --------------------------------------------------------------------------- the generic trainer
def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_trainer_resume_ends_bit_identical(tmp_path, tiny_space):
    """2 epochs straight == 1 epoch, a new process-like trainer resuming, 1 more epoch."""
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 3, 32, 32, generator=gen), torch.randint(0, 4, (24,), generator=gen))
    arch = tiny_space.largest("fused", "gelu")
    recipe = TrainRecipe(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0.5, seed=3)

    def trainer(out: Path) -> ModelTrainer:
        torch.manual_seed(7)  # same initial weights for every trainer
        model = SubnetModel(arch, 4, 32, drop_path_rate=0.1)  # drop path: the RNG state matters
        return ModelTrainer(model, data, ClassificationStep(smoothing=0.1), recipe, out, progress=False)

    straight = trainer(tmp_path / "a")
    straight.fit()
    first = trainer(tmp_path / "b")
    first.fit(stop_after=1)
    torch.manual_seed(12345)  # a resumed run must not depend on the RNG it starts with
    resumed = trainer(tmp_path / "b")
    assert resumed.resume() and resumed.epoch == 1
    resumed.fit()
    a, b = _state(straight.model), _state(resumed.model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert not torch.equal(a["head.weight"], _state(trainer(tmp_path / "c").model)["head.weight"])  # it trained
    assert [r["loss"] for r in straight.log] == [r["loss"] for r in resumed.log]
    assert resumed.log_frame()["epoch"].tolist() == [1, 2]


def test_trainer_refuses_to_resume_a_different_run(tmp_path, tiny_space):
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,)))
    model = SubnetModel(tiny_space.smallest(), 4, 32)
    ModelTrainer(model, data, ClassificationStep(), TrainRecipe(epochs=1, batch_size=4), tmp_path,
                 progress=False).fit()
    other = ModelTrainer(model, data, ClassificationStep(), TrainRecipe(epochs=1, batch_size=4, lr=5e-3), tmp_path,
                         progress=False)
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.005"):
        other.resume()


def test_recipe_and_config_validation():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainRecipe(batch_size=0)
    with pytest.raises(ValueError, match=r"unknown keys \['epoch'\]; known keys: .*'epochs'"):
        FinetuneConfig.from_params({"epoch": 3})
    config = FinetuneConfig.from_params({"devices": ["ort_cpu_fp32"], "epochs": 3})
    assert config.devices == ("ort_cpu_fp32",) and TrainRecipe.from_config(config).epochs == 3


# --------------------------------------------------------------------------- models and files
def test_subnet_at_resolution_keeps_weights_and_resizes_attention(tiny_space):
    torch.manual_seed(0)
    model = SubnetModel(tiny_space.largest(), 4, 32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn_like(p))
    assert subnet_at_resolution(model, 32) is model
    big = subnet_at_resolution(model, 64)
    assert big.resolution == 64
    small_state, big_state = model.state_dict(), big.state_dict()
    resized = [k for k in small_state if k.endswith("attention_biases")]
    assert resized
    for key, value in small_state.items():
        if key in resized:
            side = int(round(big_state[key].shape[1] ** 0.5))
            assert big_state[key].shape[1] > value.shape[1]
            torch.testing.assert_close(big_state[key], resize_attention_bias_table(value, side))
        else:
            assert torch.equal(big_state[key], value), key
    assert big(torch.randn(1, 3, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize("kind", ["subnet", "timm"])
def test_classifier_file_round_trip(tmp_path, tiny_space, kind):
    from nas_core.classifiers import build_timm_classifier

    torch.manual_seed(0)
    if kind == "subnet":
        model, info = SubnetModel(tiny_space.largest(), 4, 32), {"name": "x"}
    else:
        model, info = build_timm_classifier("mobilenetv2_100", 4), {"name": "m", "timm_name": "mobilenetv2_100"}
    model.eval()
    save_classifier(tmp_path / "model.pt", model, info, tiny_space if kind == "subnet" else None)
    loaded, loaded_info = load_classifier_file(tmp_path / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded_info["name"] == info["name"]
    again, source = load_classifier(str(tmp_path))  # the folder works as MODEL too
    assert type(again) is type(model) and source["path"].endswith("model.pt")


def test_load_classifier_errors_name_the_choices(tmp_path):
    with pytest.raises(KeyError, match="mobilenetv2_100"):
        load_classifier("no_such_model", finetune_root=tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        load_classifier(str(tmp_path / "model.pt"))


# --------------------------------------------------------------------------- the finetune stage
def test_finetune_writes_every_figure(finetuned, dataset, supernet_file, tiny_space, tiny_config):
    m, out = finetuned["metrics"], finetuned["dir"]
    assert read_json(out / "metrics.json")["name"] == m["name"] == "ours_ort_cpu_fp32@3ms"
    assert m["predicted_accuracy"] == 0.61 and m["estimated_latency_ms"] == {"ort_cpu_fp32": 3.0}
    assert m["searched_for"] == ["ort_cpu_fp32"] and m["init"] == "supernet"
    for key in ("inherited", "finetuned"):
        assert m[key]["split"] == "test" and m[key]["images"] == 16 and 0.0 <= m[key]["top1"] <= 1.0
    # The inherited accuracy is the supernet's subnet after BN recalibration, recomputed here.
    from nas_core.classification import classification_data
    from nas_core.evaluate import evaluate, recalibrate_bn
    from nas_core.train import load_supernet

    net, _ = load_supernet(supernet_file)
    arch = tiny_space.largest("unified", "relu")
    data = classification_data(dataset, 32, tiny_config())
    recalibrate_bn(net, arch, data.calib_batches, len(data.calib_batches))
    assert evaluate(net, data.eval_loader, arch)["loss"] == pytest.approx(m["inherited"]["loss"], rel=1e-4)
    # Fine-tuned weights: model.pt reproduces the reported accuracy.
    model, info = load_classifier_file(out / "model.pt")
    assert info["arch_id"] == arch.arch_id
    assert evaluate(model, data.eval_loader)["top1"] == m["finetuned"]["top1"]
    # Params / MACs of the deployed (64x64, 4-class) model.
    from nas_core.complexity import count_macs, count_params

    deployed = subnet_at_resolution(model, 64)
    assert m["params"] == count_params(deployed) and m["macs"] == count_macs(deployed, (1, 3, 64, 64))
    assert m["train"]["epochs"] == 2 and m["train"]["distillation"] is False
    assert m["supernet"]["sha256"] and m["dataset"]["classes"] == 4


def test_finetune_exports_and_latency(finetuned):
    import onnxruntime as ort

    m, out = finetuned["metrics"], finetuned["dir"]
    ort_row = m["latency_ms"]["ort_cpu_fp32"]
    assert ort_row["median_ms"] > 0 and ort_row["input_shape"] == [1, 3, 64, 64] and ort_row["threads"] == 1
    assert "skipped" in m["latency_ms"]["tensorrt_fp32"] and "tensorrt" in m["latency_ms"]["tensorrt_fp32"]["skipped"]
    assert "skipped" in m["exports"]["tensorrt"]
    model, _ = load_classifier_file(out / "model.pt")
    deployed = subnet_at_resolution(model, 64).eval()
    x = torch.rand(1, 3, 64, 64)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, deployed(x).numpy(), rtol=1e-4, atol=1e-4)
    log = __import__("pandas").read_parquet(out / "train_log.parquet")
    assert log["epoch"].tolist() == [1, 2] and log["val_top1"].notna().all()


def test_finetune_resume_does_not_retrain(finetuned, dataset, supernet_file, arch_json, tiny_config):
    """Running the stage again continues from the finished checkpoint: no new epochs."""
    before = (finetuned["dir"] / "checkpoint.pt").stat().st_mtime_ns
    metrics = finetune(str(arch_json), data_root=dataset, supernet=supernet_file, out_root=finetuned["out"],
                       config=tiny_config(devices=("tensorrt_fp32",)), progress=False)
    assert (finetuned["dir"] / "checkpoint.pt").stat().st_mtime_ns == before
    assert metrics["finetuned"]["top1"] == finetuned["metrics"]["finetuned"]["top1"]


def test_baselines_train_the_same_way(tmp_path, dataset, supernet_file, finetuned, tiny_config, quick_timing):
    config = tiny_config(epochs=1, devices=("ort_cpu_fp32",))
    mnv2 = finetune("mobilenetv2_100", data_root=dataset, supernet=supernet_file, out_root=finetuned["out"],
                    config=config, progress=False)
    assert mnv2["kind"] == "timm" and mnv2["init"] == "scratch" and mnv2["inherited"] is None
    assert mnv2["train_resolution"] == finetuned["metrics"]["train_resolution"] == 32  # the supernet's
    assert mnv2["config"]["batch_size"] == finetuned["metrics"]["config"]["batch_size"]
    assert mnv2["params"] == pytest.approx(2.23e6, rel=0.01)  # timm MobileNetV2 with a 4-class head
    table = comparison_table([finetuned["metrics"], mnv2])
    assert table["ort_cpu_fp32_vs_mobilenetv2"].iloc[1] == 1.0
    from nas_core.finetune import remeasure_latency

    again = remeasure_latency([finetuned["metrics"], mnv2], ["ort_cpu_fp32", "tensorrt_fp32"], rounds=1,
                              timing=quick_timing)  # side by side; devices not usable here are left out
    assert set(again) == {"ours_ort_cpu_fp32@3ms", "mobilenetv2_100"}
    assert all(set(v) == {"ort_cpu_fp32"} and v["ort_cpu_fp32"] > 0 for v in again.values())
    assert comparison_table([mnv2], latency={"mobilenetv2_100": {"x": 2.0}})["x_ms"].iloc[0] == 2.0
    assert table.set_index("name").loc["ours_ort_cpu_fp32@3ms", "inherited"] == finetuned["metrics"]["inherited"]["top1"]
    with pytest.raises(ValueError, match="only be trained from scratch"):
        finetune("mobilenetv2_100", data_root=dataset, init="supernet", out_root=tmp_path, config=config)


def test_from_scratch_starts_from_the_same_weights(tmp_path, dataset, tiny_config):
    """A baseline trained from scratch is the same model whatever the process drew before
    (its initialisation is seeded by the recipe's seed, not by the global RNG's state)."""
    config = tiny_config(epochs=1, steps_per_epoch=2, devices=())
    states = []
    for run in ("a", "b"):
        torch.rand(7 if run == "a" else 11)  # the global RNG in a different state each time
        finetune("mobilenetv2_100", data_root=dataset, init="scratch", out_root=tmp_path / run, config=config,
                 progress=False)
        states.append(torch.load(tmp_path / run / "mobilenetv2_100" / "model.pt", weights_only=False)["state_dict"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_finetune_cli_reports_errors_without_traceback(tmp_path, capsys, dataset):
    from flows.cli import main

    rc = main(["finetune", "no_such_arch", "--data", str(dataset), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no_such_arch" in err and "Traceback" not in err
    rc = main(["finetune", "efficientformerv2_s0", "--supernet", str(tmp_path / "missing.pt"),
               "--data", str(dataset), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no supernet to inherit from" in err and "--init scratch" in err


# --------------------------------------------------------------------------- transfer
def test_transfer_new_head_all_layers(tmp_path, finetuned, tiny_space):
    from nas_core.data.synthetic import generate_classification
    from nas_core.transfer import TransferConfig, transfer

    downstream = tmp_path / "down"
    generate_classification(downstream, seed=5, num_classes=3, train_per_class=8, val_per_class=4,
                            test_per_class=4, image_size=32, workers=1)
    config = TransferConfig(resolution=32, epochs=1, batch_size=8, base_lr=1e-3, lr_base_batch=8, eval_batch_size=16)
    record = transfer(str(finetuned["dir"]), downstream, out_root=tmp_path / "transfer", config=config, progress=False)
    written = read_json(tmp_path / "transfer" / f"{record['name']}.json")
    assert written["name"] == "ours_ort_cpu_fp32@3ms__down"
    assert written["dataset"]["classes"] == 3 and written["dataset"]["eval_split"] == "test"
    assert written["images"] == 12 and 0 <= written["top1"] <= 1 and written["lr"] == pytest.approx(1e-3)
    assert len(written["val_top1_per_epoch"]) == 1 and written["model"]["kind"] == "subnet"
    # All layers trained: the backbone moved away from the fine-tuned weights.
    from nas_core.classifiers import load_classifier_file
    from nas_core.io import torch_load

    start, _ = load_classifier_file(finetuned["dir"] / "model.pt")
    after = torch_load(tmp_path / "transfer" / record["name"] / "checkpoint.pt")["model"]
    assert after["head.weight"].shape == (3, start.num_features)
    assert not torch.equal(after["stem.conv1.conv.weight"], start.state_dict()["stem.conv1.conv.weight"])


@pytest.mark.realdata
def test_transfer_on_sign_digits(tmp_path, shared_dataset):
    root = shared_dataset("sign-digits")
    from nas_core.transfer import TransferConfig, transfer

    config = TransferConfig(resolution=32, epochs=1, batch_size=16, steps_per_epoch=2, eval_batch_size=64,
                            eval_split="val")
    record = transfer("mobilenetv2_100", root, out_root=tmp_path, config=config, progress=False)
    assert record["dataset"]["classes"] == 10 and record["dataset"]["eval_split"] == "val"
    assert record["images"] == pytest.approx(0.15 * 2062, abs=12)  # seeded, stratified 15% split


# --------------------------------------------------------------------------- torchrun / DDP
def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from nas_core.train import init_distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 4, (16,), generator=gen))
        torch.manual_seed(100 + rank)  # different initial weights per rank: rank 0's must win (broadcast)
        model = SubnetModel(SearchSpace(TINY_SPEC).largest(), 4, 32)
        trainer = ModelTrainer(model, data, ClassificationStep(), TrainRecipe(epochs=1, batch_size=8, lr=3e-3),
                               out, ctx=init_distributed("cpu"), progress=False)
        trainer.fit()
        torch.save(trainer.model.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh processes import torch + timm: ~15 s idle, 90 s on a loaded 2-core machine
def test_trainer_under_two_processes_keeps_ranks_identical(tmp_path):
    """What torchrun does, with two CPU processes (gloo): same weights on both ranks after
    training (gradients and BN statistics averaged), one checkpoint, 4+4 images per step."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 2  # 16 images / 8 per step
