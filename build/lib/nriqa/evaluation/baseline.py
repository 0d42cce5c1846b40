"""A classical no-reference IQA baseline: BRISQUE features + support vector regression.

BRISQUE (Mittal, Moorthy & Bovik, "No-Reference Image Quality Assessment in
the Spatial Domain", IEEE TIP 2012) rests on one observation: after local mean
subtraction and divisive contrast normalisation, the luminance of a *natural*
image has near-Gaussian statistics, and distortions (noise, blur, compression)
bend those statistics in characteristic ways. It summarises the bending with
36 numbers and regresses MOS on them with an SVR.

Per scale (the image, then the image downsampled by 2):

1. MSCN coefficients ``(I - mu) / (sigma + 1)``, where ``mu`` and ``sigma`` are
   the local mean and standard deviation under a 7x7 Gaussian window with
   sigma 7/6, on the 0-255 luminance.
2. A generalised Gaussian (GGD) fitted to the MSCN coefficients: shape and
   variance (2 features).
3. Asymmetric generalised Gaussians (AGGD) fitted to the products of
   neighbouring MSCN coefficients in 4 orientations (horizontal, vertical,
   main and secondary diagonal): shape, mean, left and right variance
   (4 x 4 = 16 features).

That is 18 features per scale, 36 in all, in the order of the authors'
reference MATLAB code (``brisque_feature.m``). Both distribution fits use the
moment-matching grid search of that code (shape in 0.2:0.001:10).

Deliberate small deviations from the reference code, for robustness:

* Borders are mirrored when filtering (``cv2.BORDER_REFLECT``) instead of
  zero-padded as MATLAB's ``filter2`` does; zero padding darkens the local
  mean at the borders and injects spurious structure there.
* The half-scale image is made with area averaging (``cv2.INTER_AREA``, an
  anti-aliased 2x2 mean) rather than MATLAB's anti-aliased bicubic
  ``imresize``, which OpenCV has no direct equivalent for.
* Degenerate images (e.g. flat colour) give finite features instead of NaN.

The regressor is a standardise -> RBF-SVR pipeline with fixed hyper-parameters
(optionally a small, seeded grid search), so a run is reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy import special
from sklearn.compose import TransformedTargetRegressor
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from nriqa.core.errors import NriqaError
from nriqa.core.imaging import IMAGE_FORMATS
from nriqa.core.metrics import srcc
from nriqa.data.distortions import luma

__all__ = ["N_FEATURES", "BrisqueSVR", "brisque_features", "features_for_paths", "feature_names",
           "predict_test_split"]

N_FEATURES = 36
_MIN_SIDE = 16  # below this the half-scale image is too small for a 7x7 window to mean anything
_EPS = 1e-12

# Moment-matching lookup tables, computed once. For a GGD with shape g,
# E[x^2] / E[|x|]^2 = G(1/g) G(3/g) / G(2/g)^2, a monotone function of g, so the
# shape is read off by matching the sample ratio to the table (as in the
# reference code). The AGGD uses the reciprocal ratio.
_SHAPES = np.arange(0.2, 10.0 + 1e-9, 0.001)
_GGD_RATIO = special.gamma(1 / _SHAPES) * special.gamma(3 / _SHAPES) / special.gamma(2 / _SHAPES) ** 2
_AGGD_RATIO = 1.0 / _GGD_RATIO

# (dy, dx) shifts of the neighbour used for the pairwise products; the same
# four orientations as the reference code's circshift table.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


def feature_names() -> list[str]:
    """Names of the 36 features, in output order (useful for logging and plots)."""
    names = []
    for scale in (1, 2):
        names += [f"s{scale}_ggd_shape", f"s{scale}_ggd_var"]
        for orient in ("h", "v", "d1", "d2"):
            names += [f"s{scale}_{orient}_{p}" for p in ("shape", "mean", "lvar", "rvar")]
    return names


def _luminance(image: np.ndarray) -> np.ndarray:
    """0-255 float64 luminance from an HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) array.

    The RGB weights are ITU-R BT.601 (0.299, 0.587, 0.114), as in MATLAB's
    ``rgb2gray`` used by the reference implementation. Float input is taken to
    be on the 0-255 scale already, because MSCN's stabilising constant (1) is
    scale-dependent.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = luma(img)
    if img.ndim != 2:
        raise NriqaError(f"Expected a greyscale or RGB image, got an array of shape {np.shape(image)}.")
    if min(img.shape) < _MIN_SIDE:
        raise NriqaError(f"Image is too small for BRISQUE features: {img.shape}; need at least {_MIN_SIDE} px.")
    out = img.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise NriqaError("Image contains NaN or infinite pixel values.")
    return out


def _gaussian_window(a: np.ndarray) -> np.ndarray:
    """Local weighted mean under the paper's 7x7 Gaussian window (sigma 7/6), mirrored borders."""
    return cv2.GaussianBlur(a, (7, 7), 7 / 6, borderType=cv2.BORDER_REFLECT)


def _mscn(lum: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a luminance image."""
    mu = _gaussian_window(lum)
    # abs() guards against tiny negative variances from floating-point cancellation.
    sigma = np.sqrt(np.abs(_gaussian_window(lum * lum) - mu * mu))
    return (lum - mu) / (sigma + 1.0)


def _fit_ggd(x: np.ndarray) -> tuple[float, float]:
    """Shape and variance of a zero-mean generalised Gaussian, by moment matching."""
    variance = float(np.mean(x * x))
    mean_abs = float(np.mean(np.abs(x)))
    ratio = variance / max(mean_abs * mean_abs, _EPS)
    shape = float(_SHAPES[np.argmin(np.abs(_GGD_RATIO - ratio))])
    return shape, variance


def _fit_aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    """Shape, mean, left and right variance of an asymmetric generalised Gaussian."""
    # One-sided second moments without boolean indexing (which copies; this
    # function dominates the feature time): squares of the clipped halves.
    square = x * x
    n_left, n_right = int(np.count_nonzero(x < 0)), int(np.count_nonzero(x > 0))
    left_var = float(np.square(np.minimum(x, 0.0)).sum()) / n_left if n_left else 0.0
    right_var = float(np.square(np.maximum(x, 0.0)).sum()) / n_right if n_right else 0.0
    left_std, right_std = np.sqrt(left_var), np.sqrt(right_var)
    # Moment matching with the asymmetry correction of Lasmar et al. (2009),
    # as in the reference code's estimateaggdparam.m.
    gamma_hat = left_std / max(right_std, _EPS)
    r_hat = float(np.mean(np.abs(x))) ** 2 / max(float(np.mean(square)), _EPS)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    shape = float(_SHAPES[np.argmin((_AGGD_RATIO - r_hat_norm) ** 2)])
    g1, g2, g3 = special.gamma(1 / shape), special.gamma(2 / shape), special.gamma(3 / shape)
    mean = float((right_std - left_std) * (g2 / g1) * np.sqrt(g1 / g3))
    return shape, mean, left_var, right_var


def _scale_features(lum: np.ndarray) -> list[float]:
    mscn = _mscn(lum)
    feats = list(_fit_ggd(mscn.ravel()))
    for shift in _SHIFTS:
        # np.roll wraps around like MATLAB's circshift in the reference code;
        # the one wrapped row/column is negligible at image sizes that matter.
        pair = mscn * np.roll(mscn, shift, axis=(0, 1))
        feats.extend(_fit_aggd(pair.ravel()))
    return feats


def brisque_features(image: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of an image (uint8 HxWx3 RGB or HxW greyscale).

    Float images are accepted but must be on the 0-255 scale. Returns a
    float64 vector, always finite; see :func:`feature_names` for the order.
    Raises :class:`NriqaError` for arrays that are not images or are smaller
    than 16 px on a side.
    """
    lum = _luminance(image)
    half = cv2.resize(lum, (lum.shape[1] // 2, lum.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return np.asarray(_scale_features(lum) + _scale_features(half), dtype=np.float64)


# --------------------------------------------------------------------------- #
# Batch feature extraction
# --------------------------------------------------------------------------- #


def _features_for_path(path: str | PathLike, in_worker: bool) -> np.ndarray:
    """Read one image with Pillow as RGB and compute its features."""
    from PIL import Image, UnidentifiedImageError

    if in_worker:
        # One image per worker process already saturates the cores we were
        # given; OpenCV's own thread pool would only oversubscribe them. (Not
        # done in the caller's process, where it would be a global side effect.)
        cv2.setNumThreads(1)
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise NriqaError(f"Cannot read image {path}: {exc}") from exc
    try:
        return brisque_features(rgb)
    except NriqaError as exc:
        raise NriqaError(f"{path}: {exc}") from exc


def features_for_paths(paths: Sequence[str | PathLike], n_jobs: int = 2, progress: bool = True) -> np.ndarray:
    """BRISQUE features for many image files, computed in parallel; shape ``(len(paths), 36)``.

    Rows are in the order of ``paths``. Images are read with Pillow and
    converted to RGB (palette, greyscale and RGBA files all work). Work is
    spread over ``n_jobs`` processes with joblib (``n_jobs=1`` runs in this
    process); a tqdm bar on stderr shows progress unless ``progress=False``.
    A file that cannot be read raises :class:`NriqaError` naming it.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    paths = list(paths)
    if not paths:
        return np.empty((0, N_FEATURES), dtype=np.float64)
    # return_as="generator" yields results in submission order as they finish,
    # which lets the bar advance while preserving row order.
    in_worker = n_jobs != 1
    tasks = (delayed(_features_for_path)(p, in_worker) for p in paths)
    results = Parallel(n_jobs=n_jobs, return_as="generator")(tasks)
    rows = list(tqdm(results, total=len(paths), desc="BRISQUE features", unit="img", disable=not progress))
    return np.vstack(rows)


# --------------------------------------------------------------------------- #
# Regressor
# --------------------------------------------------------------------------- #


class BrisqueSVR:
    """MOS regressor on BRISQUE features: standardise -> RBF SVR.

    The features are standardised because their scales differ by orders of
    magnitude (shapes ~1-10, variances ~1e-3) and an RBF kernel compares raw
    distances. The *target* is standardised too (via
    ``TransformedTargetRegressor``), so ``C`` and ``epsilon`` mean the same
    thing whatever the data set's MOS scale (1-5, 0-100, ...): ``epsilon=0.1``
    tolerates errors of a tenth of the MOS standard deviation.

    Defaults (``C=4``, ``gamma="scale"``, ``epsilon=0.1``) are conventional for
    BRISQUE-sized problems. With ``search=True``, ``fit`` instead picks ``C``
    and ``gamma`` from a small grid by 5-fold cross-validated SRCC with a
    fixed shuffle seed; the choice is exposed as ``best_params_``. SVR
    training is deterministic, so repeated fits give identical models.
    """

    #: The search grid: C on a log2 ladder, gamma as multiples of 1/n_features
    #: (what "scale" amounts to on standardised features).
    GRID = {
        "regressor__svr__C": [1.0, 4.0, 16.0],
        "regressor__svr__gamma": [0.5 / N_FEATURES, 1.0 / N_FEATURES, 2.0 / N_FEATURES],
    }

    def __init__(
        self,
        C: float = 4.0,
        gamma: float | str = "scale",
        epsilon: float = 0.1,
        search: bool = False,
        cv_seed: int = 0,
    ):
        self.C = C
        self.gamma = gamma
        self.epsilon = epsilon
        self.search = search
        self.cv_seed = cv_seed
        self.model_: TransformedTargetRegressor | None = None
        self.best_params_: dict[str, Any] = {}

    def _make_model(self) -> TransformedTargetRegressor:
        pipeline = Pipeline(
            [
                ("scale", StandardScaler()),
                ("svr", SVR(kernel="rbf", C=self.C, gamma=self.gamma, epsilon=self.epsilon)),
            ]
        )
        return TransformedTargetRegressor(regressor=pipeline, transformer=StandardScaler())

    @staticmethod
    def _check_features(features) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != N_FEATURES:
            raise NriqaError(f"Expected a (n_images, {N_FEATURES}) feature matrix, got shape {x.shape}.")
        if not np.all(np.isfinite(x)):
            raise NriqaError("Feature matrix contains NaN or infinite values.")
        return x

    def fit(self, features, mos) -> BrisqueSVR:
        """Fit on a ``(n, 36)`` feature matrix and ``n`` MOS values; returns ``self``."""
        x = self._check_features(features)
        y = np.asarray(mos, dtype=np.float64).ravel()
        if y.shape[0] != x.shape[0]:
            raise NriqaError(f"{x.shape[0]} feature rows but {y.shape[0]} MOS values.")
        if not np.all(np.isfinite(y)):
            raise NriqaError("MOS values contain NaN or infinite values.")
        if x.shape[0] < 2:
            raise NriqaError("Need at least two images to fit the baseline.")

        model = self._make_model()
        if self.search and x.shape[0] >= 10:
            search = GridSearchCV(
                model,
                self.GRID,
                scoring=make_scorer(srcc),
                cv=KFold(n_splits=5, shuffle=True, random_state=self.cv_seed),
                refit=True,
            )
            search.fit(x, y)
            self.model_ = search.best_estimator_
            self.best_params_ = {k.rsplit("__", 1)[-1]: v for k, v in search.best_params_.items()}
        else:
            self.model_ = model.fit(x, y)
            self.best_params_ = {"C": self.C, "gamma": self.gamma}
        self.best_params_["epsilon"] = self.epsilon
        return self

    def predict(self, features) -> np.ndarray:
        """Predicted MOS for a ``(n, 36)`` feature matrix (a single 36-vector also works)."""
        if self.model_ is None:
            raise NriqaError("BrisqueSVR.predict called before fit.")
        x = np.asarray(features, dtype=np.float64)
        x = self._check_features(x.reshape(1, -1) if x.ndim == 1 else x)
        return np.asarray(self.model_.predict(x), dtype=np.float64)


# --------------------------------------------------------------------------- #
# The pipeline's baseline (the `baseline` stage)
# --------------------------------------------------------------------------- #


def predict_test_split(splits: pd.DataFrame) -> pd.DataFrame:
    """The baseline fitted on the training split and scored on the test split of a
    ``splits.csv`` table (each row's file is ``root/path``): columns ``image`` and
    ``baseline_pred``, in the test split's order. Fitting is deterministic, so the same
    images give the same predictions.

    Where generated images sit beside a labelled dataset's own (``trainset.mix``), the baseline
    is fitted on the dataset's own training images only, as the classical recipe is: the CNN
    is then compared with BRISQUE + SVR at its best on that data, not with one diluted by
    labels from another source."""
    def files(rows):
        return [Path(root) / path for root, path in zip(rows["root"], rows["path"])]

    train = splits[splits["split"] == "train"]
    if "generated" in train and not train["generated"].all():
        train = train[~train["generated"].astype(bool)]
    test = splits[splits["split"] == "test"]
    model = BrisqueSVR().fit(features_for_paths(files(train)), train["mos"].to_numpy())
    return pd.DataFrame({"image": test["image"].to_numpy(),
                         "baseline_pred": model.predict(features_for_paths(files(test)))})
