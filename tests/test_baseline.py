"""Tests for the BRISQUE + SVR baseline on small synthetic images (runs in seconds)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from nriqa.core.errors import NriqaError
from nriqa.evaluation.baseline import (
    N_FEATURES,
    BrisqueSVR,
    brisque_features,
    feature_names,
    features_for_paths,
    predict_test_split,
)


def natural_image(seed: int, size: int = 96) -> np.ndarray:
    """A stand-in for a photo: smooth shading, a few hard-edged shapes and fine texture (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    shading = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)), (0, 0), size / 8)
    shading = (shading - shading.min()) / np.ptp(shading) * 160 + 40
    for _ in range(4):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.circle(shading, centre, int(rng.integers(size // 10, size // 3)), colour, -1)
    texture = cv2.GaussianBlur(rng.normal(0, 12, (size, size, 1)), (0, 0), 1.0)[..., None]
    return np.clip(shading + texture, 0, 255).astype(np.uint8)


def add_noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_features_shape_finite_and_named():
    features = brisque_features(natural_image(0))
    assert features.shape == (N_FEATURES,) == (36,)
    assert features.dtype == np.float64
    assert np.all(np.isfinite(features))
    assert len(feature_names()) == 36 and len(set(feature_names())) == 36


def test_features_respond_to_distortions():
    clean = natural_image(1)
    noisy = add_noise(clean, 25, seed=0)
    blurred = cv2.GaussianBlur(clean, (0, 0), 2.0)
    f_clean, f_noisy, f_blur = (brisque_features(i) for i in (clean, noisy, blurred))
    assert not np.allclose(f_clean, f_noisy, rtol=0.05)
    assert not np.allclose(f_clean, f_blur, rtol=0.05)
    # The directions of Mittal et al.'s Fig. 2: white noise flattens the MSCN
    # histogram (higher GGD shape), blur makes it peakier (lower shape).
    assert f_noisy[0] > f_clean[0] > f_blur[0]


def test_greyscale_and_rgb_inputs_agree_and_degenerate_images_are_finite():
    grey = natural_image(2)[:, :, 0]
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_allclose(brisque_features(grey), brisque_features(rgb), atol=1e-9)
    assert np.all(np.isfinite(brisque_features(np.full((64, 64, 3), 128, np.uint8))))
    with pytest.raises(NriqaError, match="too small"):
        brisque_features(np.zeros((8, 8), np.uint8))
    with pytest.raises(NriqaError):
        brisque_features(np.zeros((32, 32, 2), np.uint8))


def test_features_for_paths_preserves_order(tmp_path):
    images = [natural_image(s, size=64) for s in range(5)]
    images[3] = add_noise(images[3], 30, seed=3)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    # A greyscale file is converted to RGB by the reader, like any other mode.
    Image.fromarray(images[0][:, :, 0]).save(tmp_path / "grey.png")
    paths.append(tmp_path / "grey.png")

    parallel = features_for_paths(paths, n_jobs=2, progress=False)
    serial = features_for_paths(paths, n_jobs=1, progress=False)
    assert parallel.shape == (6, 36)
    np.testing.assert_array_equal(parallel, serial)
    for row, img in zip(parallel, images):
        np.testing.assert_allclose(row, brisque_features(img))
    assert features_for_paths([], progress=False).shape == (0, 36)
    with pytest.raises(NriqaError, match="missing.png"):
        features_for_paths([tmp_path / "missing.png"], n_jobs=1, progress=False)


def _noise_dataset(seeds, sigmas):
    """Images at increasing noise levels; 'MOS' falls linearly with the noise sigma."""
    feats, mos = [], []
    for seed in seeds:
        base = natural_image(seed)
        for k, sigma in enumerate(sigmas):
            feats.append(brisque_features(add_noise(base, sigma, seed=100 * seed + k)))
            mos.append(5.0 - 4.0 * sigma / sigmas[-1])
    return np.array(feats), np.array(mos)


def test_svr_learns_noise_level_on_unseen_images():
    sigmas = np.linspace(0, 40, 9)
    x_train, y_train = _noise_dataset(range(0, 6), sigmas)
    x_test, y_test = _noise_dataset(range(10, 13), sigmas)

    model = BrisqueSVR().fit(x_train, y_train)
    pred = model.predict(x_test)
    assert pred.shape == y_test.shape
    assert stats.spearmanr(y_test, pred)[0] > 0.8
    # Deterministic: refitting gives the same predictions; one vector predicts too.
    np.testing.assert_array_equal(BrisqueSVR().fit(x_train, y_train).predict(x_test), pred)
    assert model.predict(x_test[0]).shape == (1,)

    searched = BrisqueSVR(search=True).fit(x_train, y_train)
    assert set(searched.best_params_) == {"C", "gamma", "epsilon"}
    assert stats.spearmanr(y_test, searched.predict(x_test))[0] > 0.8


def test_svr_input_checks():
    with pytest.raises(NriqaError, match="before fit"):
        BrisqueSVR().predict(np.zeros((1, 36)))
    with pytest.raises(NriqaError, match="36"):
        BrisqueSVR().fit(np.zeros((4, 35)), np.zeros(4))
    with pytest.raises(NriqaError, match="MOS"):
        BrisqueSVR().fit(np.zeros((4, 36)), np.zeros(3))


def test_baseline_predicts_the_test_rows_in_order_and_repeatably(tmp_path):
    """What the baseline stage writes and evaluate reads (nriqa.evaluation.report.add_baseline):
    a fit on the training rows, predictions for the test rows, the same on every run."""
    import pandas as pd

    from nriqa.evaluation.report import add_baseline

    rows = []
    for number in range(9):
        sigma = 6.0 * (number % 3)
        image = add_noise(natural_image(number, size=64), sigma, seed=number)
        folder = tmp_path / ("train" if number < 6 else "raw")
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{number}.png")
        rows.append({"image": f"{number}.png", "path": f"{number}.png", "root": str(folder),
                     "mos": 6.0 - sigma / 6, "split": "train" if number < 6 else "test"})
    splits = pd.DataFrame(rows).iloc[::-1].reset_index(drop=True)  # order is the table's
    first = predict_test_split(splits)
    assert list(first.columns) == ["image", "baseline_pred"]
    assert first["image"].tolist() == ["8.png", "7.png", "6.png"]
    assert np.all(np.isfinite(first["baseline_pred"]))
    pd.testing.assert_frame_equal(predict_test_split(splits), first)

    # Generated images beside the dataset's own are left out of the fit (labels from elsewhere)...
    generated = {"image": "g.png", "path": "0.png", "root": str(tmp_path / "train"), "mos": 0.0,
                 "split": "train"}
    mixed = pd.concat([splits.assign(generated=False),
                       pd.DataFrame([{**generated, "generated": True}])], ignore_index=True)
    pd.testing.assert_frame_equal(predict_test_split(mixed), first)
    # ... but not when they are all the training split has (the default synthetic pipeline).
    only_generated = mixed.assign(generated=mixed["split"] == "train")
    assert not np.allclose(predict_test_split(only_generated)["baseline_pred"], first["baseline_pred"])

    first.to_csv(tmp_path / "baseline.csv", index=False)
    test = splits[splits["split"] == "test"].reset_index(drop=True)
    joined = add_baseline(test, tmp_path / "baseline.csv")
    np.testing.assert_array_equal(joined["baseline_pred"], first["baseline_pred"])
    with pytest.raises(NriqaError, match="dvc repro baseline"):
        add_baseline(test.iloc[::-1], tmp_path / "baseline.csv")
