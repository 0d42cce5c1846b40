"""Tests for nriqa.core.metrics and nriqa.evaluation.plots: known values, degenerate input, categories, PNG determinism."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nriqa.core.categories import CATEGORY_NAMES, DEFAULT_THRESHOLDS, categorize
from nriqa.core.errors import NriqaError
from nriqa.core.metrics import (
    category_metrics,
    fit_logistic,
    logistic_5,
    per_group_srcc,
    quality_metrics,
    rgb_psnr,
    srcc,
)

KEYS = {"srcc", "krcc", "plcc", "rmse", "plcc_logistic", "rmse_logistic"}


# --------------------------------------------------------------------------- #
# Correlations
# --------------------------------------------------------------------------- #


def test_perfect_monotone_and_reversed():
    mos = np.arange(1.0, 11.0)
    up = quality_metrics(mos, mos**3)  # monotone but non-linear
    assert set(up) == KEYS
    assert up["srcc"] == pytest.approx(1.0)
    assert up["krcc"] == pytest.approx(1.0)
    assert up["plcc"] < 1.0  # the raw relation is not linear...
    assert up["plcc_logistic"] > up["plcc"]  # ...and the logistic mapping straightens it

    down = quality_metrics(mos, -mos)
    assert down["srcc"] == pytest.approx(-1.0)
    assert down["krcc"] == pytest.approx(-1.0)
    assert down["plcc"] == pytest.approx(-1.0)


def test_hand_computed_small_case():
    mos = [1.0, 2.0, 3.0, 4.0]
    pred = [1.0, 3.0, 2.0, 4.0]
    m = quality_metrics(mos, pred)
    # Ranks differ by one swap: d = (0, 1, -1, 0), SRCC = 1 - 6*2 / (4*15) = 0.8.
    assert m["srcc"] == pytest.approx(0.8)
    # 6 pairs, 5 concordant, 1 discordant: KRCC = (5 - 1) / 6.
    assert m["krcc"] == pytest.approx(4 / 6)
    # Both vectors have mean 2.5 and the same spread: PLCC = sum(dx*dy)/sum(dx^2) = 4/5.
    assert m["plcc"] == pytest.approx(0.8)
    # Two errors of 1 out of four: RMSE = sqrt(2/4).
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))


def test_matches_scipy_on_random_data():
    rng = np.random.default_rng(1)
    mos = rng.uniform(1, 5, 200)
    pred = mos + rng.normal(0, 0.7, 200)
    m = quality_metrics(mos, pred)
    assert m["srcc"] == pytest.approx(stats.spearmanr(mos, pred)[0])
    assert m["krcc"] == pytest.approx(stats.kendalltau(mos, pred)[0])
    assert m["plcc"] == pytest.approx(stats.pearsonr(mos, pred)[0])
    # A least-squares mapping can only reduce the error of the raw scores here.
    assert m["rmse_logistic"] <= m["rmse"]
    assert all(type(v) is float for v in m.values())


def test_constant_predictions_give_zero_not_nan():
    mos = np.linspace(1, 5, 20)
    m = quality_metrics(mos, np.full(20, 3.0))
    assert all(np.isfinite(v) for v in m.values())
    assert m["srcc"] == m["krcc"] == m["plcc"] == m["plcc_logistic"] == 0.0
    # The mapping of a constant predictor is the mean MOS.
    assert m["rmse_logistic"] == pytest.approx(float(np.std(mos)))


def test_invalid_input_raises_clear_error():
    with pytest.raises(NriqaError, match="length"):
        quality_metrics([1, 2, 3], [1, 2])
    with pytest.raises(NriqaError, match="NaN"):
        quality_metrics([1, 2, 3], [1, np.nan, 3])


# --------------------------------------------------------------------------- #
# Logistic mapping
# --------------------------------------------------------------------------- #


def test_logistic_fit_recovers_known_curve():
    rng = np.random.default_rng(0)
    true = np.array([3.0, 1.5, 0.5, 0.2, 3.0])
    x = rng.uniform(-3, 4, 300)
    y = logistic_5(x, *true) + rng.normal(0, 0.01, x.size)
    params = fit_logistic(x, y)
    np.testing.assert_allclose(params, true, atol=0.05)
    m = quality_metrics(y, x)
    assert m["plcc_logistic"] == pytest.approx(1.0, abs=1e-3)
    assert m["rmse_logistic"] == pytest.approx(0.01, abs=0.003)


def test_logistic_fit_degenerate_inputs_fall_back_to_linear():
    # Constant predictions: b1 = 0 and the mapping is the mean MOS.
    params = fit_logistic(np.ones(10), np.arange(10.0))
    assert params[0] == 0.0
    np.testing.assert_allclose(logistic_5(np.ones(3), *params), 4.5)
    # Too few points for five parameters: an exact line.
    params = fit_logistic([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    np.testing.assert_allclose(logistic_5([0.0, 1.0, 2.0], *params), [1.0, 3.0, 5.0])
    # Pure linear data: whatever is returned must fit it essentially exactly.
    x = np.linspace(0, 1, 50)
    params = fit_logistic(x, 2 * x + 1)
    np.testing.assert_allclose(logistic_5(x, *params), 2 * x + 1, atol=1e-4)


# --------------------------------------------------------------------------- #
# Per-group SRCC
# --------------------------------------------------------------------------- #


def test_per_group_srcc():
    frame = pd.DataFrame(
        {
            "dist": ["blur"] * 4 + ["noise"] * 4 + ["flat"] * 3 + ["tiny"] * 2,
            "mos": [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 1, 2],
            "pred": [1, 2, 3, 4, 4, 3, 2, 1, 5, 5, 5, 1, 2],
        }
    )
    result = per_group_srcc(frame, "dist")
    assert result == {"blur": pytest.approx(1.0), "flat": 0.0, "noise": pytest.approx(-1.0)}
    assert "tiny" not in result  # fewer than 3 items: skipped

    ints = per_group_srcc(frame.assign(dist=frame["dist"].astype("category").cat.codes), "dist")
    assert all(type(k) is int for k in ints)
    with pytest.raises(NriqaError, match="missing"):
        per_group_srcc(frame, "nope")


# --------------------------------------------------------------------------- #
# Categories
# --------------------------------------------------------------------------- #


def test_categories_at_and_below_thresholds():
    values = [7.0, 6.0, 5.999, 5.0, 4.999, 4.0, 3.0, 2.999, -1.0]
    expected = ["Excellent", "Excellent", "Good", "Good", "Average", "Average", "Poor", "Very Poor", "Very Poor"]
    out = categorize(values, DEFAULT_THRESHOLDS)
    assert isinstance(out, np.ndarray)
    assert out.tolist() == expected


def test_categories_ignore_dict_order_and_accept_scalars():
    shuffled = {"Poor": 3.0, "Excellent": 6.0, "Average": 4.0, "Good": 5.0}
    assert categorize([6.0, 3.5], shuffled).tolist() == ["Excellent", "Poor"]
    label = categorize(5.0, shuffled)
    assert label == "Good" and type(label) is str
    assert categorize(np.float32(2.0), shuffled) == "Very Poor"
    with pytest.raises(NriqaError):
        categorize(float("nan"), shuffled)


def test_category_metrics_confusion_and_accuracy():
    mos = [6.5, 5.5, 4.5, 3.5, 2.5, 6.1]
    pred = [6.2, 5.1, 3.9, 3.2, 2.0, 5.9]  # two misses: 4.5 -> Poor, 6.1 -> Good
    result = category_metrics(mos, pred, DEFAULT_THRESHOLDS)
    assert result["labels"] == CATEGORY_NAMES
    confusion = np.array(result["confusion"])
    assert confusion.shape == (5, 5)
    assert confusion.sum() == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert confusion[0, 0] == 1 and confusion[0, 1] == 1  # one Excellent right, one called Good
    assert confusion[2, 3] == 1  # Average called Poor
    assert np.trace(confusion) == 4
    assert isinstance(result["confusion"][0][0], int)


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #


def test_plots_write_identical_pngs(tmp_path):
    from nriqa.evaluation import plots

    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 100)
    pred = mos + rng.normal(0, 0.5, 100)
    confusion = category_metrics(mos + 2, pred + 2)["confusion"]
    calls = {
        "scatter": lambda p: plots.scatter_plot(mos, pred, p, "test scatter"),
        "per_dist": lambda p: plots.per_distortion_plot(
            {"cnn": {"blur": 0.9, "noise": 0.8, "jpeg": 0.7}, "baseline": {"blur": 0.6, "noise": 0.75}},
            p,
            "per distortion",
        ),
        "confusion": lambda p: plots.confusion_plot(confusion, CATEGORY_NAMES, p),
        "curves": lambda p: plots.training_curves_plot(
            {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7], "srcc": [0.5, 0.7, 0.8]}, p
        ),
    }
    for name, draw in calls.items():
        first = draw(tmp_path / "a" / f"{name}.png")
        second = draw(tmp_path / "b" / f"{name}.png")
        assert first.exists() and first.stat().st_size > 1000, name
        assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert first.read_bytes() == second.read_bytes(), f"{name} PNG is not deterministic"


def test_rgb_psnr_sees_colour_errors():
    reference = np.full((8, 8, 3), 100, np.uint8)
    shifted = reference.copy()
    shifted[..., 2] += 10  # blue only: luma barely moves, RGB PSNR does
    assert rgb_psnr(reference, shifted) == pytest.approx(10 * np.log10(255**2 / (100 / 3)))
    assert rgb_psnr(reference, reference) == float("inf")


def test_srcc_is_spearman_and_zero_for_constant_input():
    """The one Spearman: evaluation, the baseline's model selection and training's val_srcc."""
    mos, pred = [1.0, 2.0, 3.0, 4.0], np.array([0.1, 0.4, 0.3, 0.9], np.float32)
    assert srcc(mos, pred) == pytest.approx(stats.spearmanr(mos, pred).statistic)
    assert srcc(mos, np.full(4, 0.5)) == 0.0
    assert srcc(np.full(4, 3.0), pred) == 0.0


def test_type_accuracy_per_type_and_level():
    import pandas as pd

    from nriqa.evaluation.report import TYPE_ACCURACY_COLUMNS, distortion_accuracy_table

    scored = pd.DataFrame({
        "distortion": [1, 1, 1, 2, 2, 0],
        "level": [1, 1, 5, 3, 3, 0],
        "pred_distortion": [1, 8, 1, 1, 2, 0],
        "pred_top3": ["1 8 2", "8 2 1", "1 2 3", "1 3 5", "2 1 3", "0 1 2"]})
    table = distortion_accuracy_table(scored).set_index(["distortion", "level"])
    assert list(table.reset_index().columns) == TYPE_ACCURACY_COLUMNS
    assert table.loc[(1, "1")].tolist() == [2, 0.5, 1.0]
    assert table.loc[(1, "5")].tolist() == [1, 1.0, 1.0]
    assert table.loc[(2, "3")].tolist() == [2, 0.5, 0.5]
    assert table.loc[(1, "all")].tolist() == [3, 0.6667, 1.0]  # rounded to 4 decimals
    assert 0 not in table.index.get_level_values("distortion")  # undistorted: no type to name
    assert distortion_accuracy_table(scored.drop(columns=["pred_distortion", "pred_top3"])) is None
