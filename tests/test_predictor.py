"""The accuracy predictor: exact fast path, training quality, baselines, persistence, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas_core.accuracy_predictor import (AccuracyPredictor, NetworkShape, PredictorBundle, PredictorConfig,
                                         check_genomes, genome_rows, one_hot_genomes)
from nas_core.encoding import ArchEncoder
from nas_core.io import torch_load, torch_save, write_parquet
from nas_core.pairs import synthetic_pairs
from nas_core.predictor_training import fit_and_write, fit_predictor, ranking_metrics, ridge_fit
from nas_core.search_space import ArchError, SearchSpace

SPACE = SearchSpace()
# Small but real training: enough epochs to rank synthetic pairs well, ~10 s on a busy CPU.
QUICK = dict(seeds=(0,), epochs=60, batch_size=64, lr=2e-3)


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(500, seed=0, noise=0.002)


@pytest.fixture(scope="module")
def fitted(pairs):
    return fit_predictor(pairs, PredictorConfig.from_dict(QUICK), log=lambda _: None)


def random_bundle(shape: NetworkShape | None = None, layout: str = "stacked", seed: int = 0) -> PredictorBundle:
    torch.manual_seed(seed)
    model = AccuracyPredictor(shape)
    return PredictorBundle(model, ArchEncoder(SPACE, layout=layout))


# --------------------------------------------------------------------------- the fast path
@pytest.mark.parametrize("layout", ["stacked", "slotted"])
def test_genome_rows_index_the_encoders_matrix(layout):
    encoder = ArchEncoder(SPACE, layout=layout)
    genomes = SPACE.sample_genomes(300, 1)
    rows = genome_rows(encoder, genomes)
    codes = np.concatenate([encoder.codes, np.zeros((1, encoder.codes.shape[1]), np.float32)])
    np.testing.assert_array_equal(codes[rows], encoder.encode_genomes(genomes))


@pytest.mark.parametrize("shape", [
    NetworkShape(),
    NetworkShape(channels=(16, 24, 8), strides=(1, 2, 2), readout="flatten"),
    NetworkShape(channels=(8,), strides=(3,), kernel_size=5, hidden=(16, 8), readout="sum"),
])
@pytest.mark.parametrize("layout", ["stacked", "slotted"])
def test_gather_path_equals_the_papers_matrix_input(shape, layout):
    bundle = random_bundle(shape, layout)
    genomes = SPACE.sample_genomes(2500, 2)  # > one forward chunk, so chunk seams are covered
    fast = bundle.predict_genomes(genomes)
    exact = bundle.predict_encodings(bundle.encoder.encode_genomes(genomes))
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-6)
    assert fast.std() > 1e-3, "the outputs should vary far more than the tolerance"


def test_row_convolutions_are_conv1d():
    conv = torch.nn.Conv1d(24, 16, 5, stride=2, padding=2)
    model = AccuracyPredictor(NetworkShape(channels=(16,), strides=(2,), kernel_size=5, hidden=()))
    model.convs[0] = conv
    x = torch.rand(7, 44, 24)
    from nas_core.accuracy_predictor import _conv_rows

    reference = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, stride=2, padding=2).transpose(1, 2)
    torch.testing.assert_close(_conv_rows(x, conv), reference)


def test_predict_on_archs_equals_predict_on_genomes():
    bundle = random_bundle()
    archs = [SPACE.preset("efficientformerv2_s0"), SPACE.smallest(), SPACE.largest("fused")]
    np.testing.assert_array_equal(bundle.predict(archs), bundle.predict_genomes(np.stack([SPACE.encode(a) for a in archs])))
    assert bundle.predict(archs[0]).shape == (1,)


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_clearly():
    bundle = random_bundle()
    with pytest.raises(ValueError, match=r"shape \(44, 23\), expected \(44, 24\)"):
        bundle.predict_encodings(np.zeros((3, 44, 23), np.float32))
    with pytest.raises(ValueError, match=f"has {len(SPACE.genes)} genes"):
        bundle.predict_genomes(np.zeros((2, len(SPACE.genes) - 1), np.int64))
    genome = SPACE.encode(SPACE.smallest())
    genome[SPACE.gene_index["s2.width"]] = 4
    with pytest.raises(ValueError, match=r"s2.width = 4 is out of range 0..3"):
        bundle.predict_genomes(genome[None])
    with pytest.raises(ValueError, match="integers"):
        bundle.predict_genomes(np.zeros((1, len(SPACE.genes))) + 0.5)
    import dataclasses

    foreign = dataclasses.replace(SPACE.smallest(), space="scan-edge/v0")
    with pytest.raises(ArchError, match="scan-edge/v0"):
        bundle.predict([foreign])


def test_check_genomes_accepts_one_genome():
    assert check_genomes(SPACE, SPACE.encode(SPACE.smallest())).shape == (1, len(SPACE.genes))


# --------------------------------------------------------------------------- persistence
def test_save_load_roundtrip_and_version_check(tmp_path):
    bundle = random_bundle(NetworkShape(channels=(8, 8), strides=(1, 2), readout="flatten"), layout="slotted")
    bundle.metadata["note"] = "kept"
    path = bundle.save(tmp_path / "p.pt")
    loaded = PredictorBundle.load(path)
    genomes = SPACE.sample_genomes(50, 3)
    np.testing.assert_array_equal(loaded.predict_genomes(genomes), bundle.predict_genomes(genomes))
    assert loaded.encoder.layout == "slotted" and loaded.metadata["note"] == "kept"
    assert not list(tmp_path.glob(".*.tmp")), "atomic save leaves no temporary file"

    payload = torch_load(path)
    payload["space_version"] = "scan-edge/v0"
    torch_save(tmp_path / "old.pt", payload)
    with pytest.raises(ValueError, match=r"search space 'scan-edge/v0'.*retrain"):
        PredictorBundle.load(tmp_path / "old.pt")
    torch_save(tmp_path / "other.pt", {"format": "something else"})
    with pytest.raises(ValueError, match="not an accuracy predictor bundle"):
        PredictorBundle.load(tmp_path / "other.pt")


# --------------------------------------------------------------------------- metrics and baselines
def test_ranking_metrics_values():
    measured = np.arange(20, dtype=float)
    perfect = ranking_metrics(measured * 2 + 1, measured)
    assert perfect["spearman"] == pytest.approx(1) and perfect["kendall"] == pytest.approx(1)
    assert perfect["top10_precision"] == 1.0 and perfect["mae"] == pytest.approx(np.mean(measured + 1))
    reverse = ranking_metrics(-measured, measured, with_mae=False)
    assert reverse["spearman"] == pytest.approx(-1) and reverse["top10_precision"] == 0.0 and reverse["mae"] is None
    # top 2 of 20 by prediction: indices 19 and 0; truly top: 19 and 18 -> precision 1/2
    predicted = measured.copy()
    predicted[0] = 100
    assert ranking_metrics(predicted, measured)["top10_precision"] == 0.5


def test_ridge_fit_recovers_linear_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    weights = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    w, b = ridge_fit(x, x @ weights + 4.0, alpha=1e-9)
    np.testing.assert_allclose(w, weights, atol=1e-6)
    assert b == pytest.approx(4.0)
    shrunk, _ = ridge_fit(x, x @ weights + 4.0, alpha=1e4)
    assert np.abs(shrunk).sum() < 0.5 * np.abs(weights).sum()


def test_one_hot_genomes_zero_inactive_genes():
    genomes = SPACE.sample_genomes(40, 4)
    onehot = one_hot_genomes(SPACE, genomes)
    assert onehot.shape == (40, SPACE.num_choices.sum())
    np.testing.assert_array_equal(onehot.sum(1), SPACE.active_mask(genomes).sum(1))
    smallest = one_hot_genomes(SPACE, SPACE.encode(SPACE.smallest())[None])[0]
    first = SPACE.gene_index["s1.b2.ffn.type"]  # stage 1 of the smallest has depth 2
    offset = SPACE.num_choices[:first].sum()
    assert smallest[offset: offset + 2].sum() == 0


# --------------------------------------------------------------------------- training
def test_fit_ranks_synthetic_pairs_and_beats_parameter_count(fitted, pairs):
    bundle, metrics = fitted
    test = metrics["test"]
    assert set(test) == {"predictor", "mlp_onehot", "ridge_onehot", "params", "macs"}
    assert test["predictor"]["spearman"] >= 0.85, test["predictor"]
    assert test["predictor"]["spearman"] > test["params"]["spearman"] + 0.05
    assert test["params"]["mae"] is None and test["predictor"]["mae"] < 0.02
    assert metrics["splits"] == {"train": 358, "val": 71, "test": 71}
    assert metrics["winner"] == max(test, key=lambda k: test[k]["spearman"])
    # The reported figures are the bundle's: recompute them from its predictions.
    held_out = pairs[pairs["split"] == "test"]
    predicted = bundle.predict_genomes(np.stack(held_out["genome"].to_numpy()))
    assert ranking_metrics(predicted, held_out["top1"].to_numpy())["spearman"] == pytest.approx(test["predictor"]["spearman"])
    # Selection used validation only: the selected epoch's val Spearman is the one reported.
    assert metrics["selected"]["val_spearman"] == pytest.approx(metrics["val"]["predictor"]["spearman"], abs=1e-6)


def test_fit_refuses_pairs_without_a_split(pairs):
    with pytest.raises(ValueError, match="split 'test'"):
        fit_predictor(pairs[pairs["split"] != "test"], PredictorConfig.from_dict(QUICK))
    with pytest.raises(ValueError, match="unknown keys"):
        PredictorConfig.from_dict({"epoch": 3})


def test_fit_and_write_artifacts_and_cli_predict(pairs, tmp_path, capsys):
    from flows.cli import main

    pairs_path = write_parquet(tmp_path / "pairs.parquet", pairs, provenance={"key": "plan-key"})
    config = PredictorConfig.from_dict({**QUICK, "epochs": 3, "baselines": False})
    paths, metrics = fit_and_write(pairs_path, tmp_path / "predictor", config, log=lambda _: None)
    assert {p.name for p in paths.values()} == {"predictor.pt", "metrics.json", "predictions.parquet",
                                                "predicted_vs_measured.png"}
    written = json.loads(paths["metrics"].read_text())
    assert written["provenance"]["pairs_plan_key"] == "plan-key" and written["test"]["predictor"]["n"] == 71
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["predict", "efficientformerv2_s0", "cortex@95ms", "--predictor", str(paths["predictor"])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = PredictorBundle.load(paths["predictor"]).predict([SPACE.preset("efficientformerv2_s0")])[0]
    assert len(lines) == 2 and f"{100 * expected:.2f}%" in lines[0]
    with pytest.raises(SystemExit, match="unknown preset 'no-such-arch'"):
        main(["predict", "no-such-arch", "--predictor", str(paths["predictor"])])


def test_loss_target_learns_minus_loss_and_reports_top1_alongside(pairs, tmp_path, capsys):
    """``target: loss``: the predictor's score is -loss (higher is better, as the search
    expects), its metrics are on -loss, and ``test_top1`` scores the same models against
    top-1, here pure noise, so a proxy that gives up top-1 shows it."""
    from flows.cli import main

    rng = np.random.default_rng(0)
    noisy = pairs.copy()
    noisy["loss"] = 3.0 - 3.0 * pairs["top1"]               # the signal, in the loss only
    noisy["top1"] = rng.permutation(pairs["top1"].to_numpy())  # labels that repeat nothing
    pairs_path = write_parquet(tmp_path / "pairs.parquet", noisy, provenance={"key": "k"})
    config = PredictorConfig.from_dict({**QUICK, "target": "loss", "baselines": False})
    paths, metrics = fit_and_write(pairs_path, tmp_path / "predictor", config, log=lambda _: None)
    assert metrics["target"] == "loss"
    assert metrics["test"]["predictor"]["spearman"] >= 0.85, metrics["test"]
    assert abs(metrics["test_top1"]["predictor"]["spearman"]) < 0.4, metrics["test_top1"]
    bundle = PredictorBundle.load(paths["predictor"])
    held_out = noisy[noisy["split"] == "test"]
    predicted = bundle.predict_genomes(np.stack(held_out["genome"].to_numpy()))
    assert ranking_metrics(predicted, held_out["loss"].to_numpy())["spearman"] <= -0.85  # high score = low loss
    assert np.median(np.abs(-predicted - held_out["loss"].to_numpy())) < 0.05
    table = __import__("pandas").read_parquet(paths["predictions"]).set_index("arch_id")
    measured = table.loc[table["split"] == "test", "measured"]
    np.testing.assert_allclose(measured, -held_out.set_index("arch_id").loc[measured.index, "loss"])  # -loss

    assert main(["predict", "efficientformerv2_s0", "--predictor", str(paths["predictor"])]) == 0
    expected = bundle.predict([SPACE.preset("efficientformerv2_s0")])[0]
    assert f"predicted loss {-expected:.4f}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="predictor.target must be one of"):
        PredictorConfig.from_dict({"target": "top3"})
