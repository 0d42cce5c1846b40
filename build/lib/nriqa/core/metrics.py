"""Evaluation metrics used in the image-quality-assessment literature.

A no-reference IQA model is judged by how well its scores agree with human
mean opinion scores (MOS). The field reports four numbers:

* **SRCC** (Spearman) and **KRCC** (Kendall) measure *prediction monotonicity*:
  does the model rank images the way people do?
* **PLCC** (Pearson) and **RMSE** measure *prediction accuracy*. Because a
  model's scale is arbitrary and often non-linearly related to MOS, VQEG
  (Video Quality Experts Group, Phase I/II final reports) prescribes mapping the
  predictions through a fitted 5-parameter logistic before computing them. We
  report both the raw and the logistic-mapped variants so results can be
  compared with papers either way.

Besides the correlations, the service and the reports bin MOS into verbal
quality categories ("Excellent" ... "Very Poor"); :func:`categorize` and
:func:`category_metrics` implement that binning and its confusion matrix.

Degenerate input is handled without NaNs or exceptions wherever a sensible
number exists (a constant predictor has correlation 0.0, a failed logistic fit
falls back to a linear one), because these functions run at the end of long
training stages and inside a web service, where a crash or a NaN in the
metrics file costs far more than a conservative value.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from nriqa.core.categories import DEFAULT_THRESHOLDS, categorize, ordered_categories
from nriqa.core.errors import NriqaError

__all__ = [
    "category_metrics",
    "fit_logistic",
    "logistic_5",
    "per_group_srcc",
    "quality_metrics",
    "rgb_psnr",
    "srcc",
]

# --------------------------------------------------------------------------- #
# Logistic mapping
# --------------------------------------------------------------------------- #


def logistic_5(x, b1, b2, b3, b4, b5):
    """VQEG's 5-parameter logistic: ``b1*(0.5 - 1/(1+exp(b2*(x-b3)))) + b4*x + b5``.

    ``1/(1+exp(z))`` is evaluated as ``expit(-z)`` so that large ``|z|`` (which
    the optimiser visits while searching) does not overflow.
    """
    x = np.asarray(x, dtype=np.float64)
    return b1 * (0.5 - special.expit(-b2 * (x - b3))) + b4 * x + b5


def _linear_params(pred: np.ndarray, mos: np.ndarray) -> np.ndarray:
    """A least-squares line ``mos ~ b4*pred + b5`` in logistic_5's parameter vector (b1=0)."""
    centre = float(np.mean(pred))
    if np.ptp(pred) == 0:
        # No spread in x: the best the mapping can do is predict the mean MOS.
        return np.array([0.0, 0.0, centre, 0.0, float(np.mean(mos))])
    slope, intercept = np.polyfit(pred, mos, 1)
    return np.array([0.0, 0.0, centre, float(slope), float(intercept)])


def fit_logistic(pred, mos) -> np.ndarray:
    """Fit :func:`logistic_5` mapping ``pred`` onto ``mos``; return ``[b1, ..., b5]``.

    The initial guess follows common practice in IQA code: amplitude ``b1`` is
    the MOS range (signed by the direction of the correlation, so decreasing
    relations start on the right branch), the inflection ``b3`` is the mean
    prediction, the slope ``b2`` is ``1/std(pred)``, and the linear term starts
    flat at the mean MOS.

    This function never raises for degenerate numeric input. If ``pred`` is
    constant, if ``curve_fit`` fails to converge or returns non-finite values,
    or if the logistic fits worse than a straight line (a local minimum; the
    line is a special case of the model), the least-squares *linear* fit is
    returned instead, expressed in the same parameter vector with ``b1 = 0``,
    so callers can always evaluate ``logistic_5(x, *params)``.
    Mismatched lengths or empty input are a caller bug and raise
    :class:`NriqaError`.
    """
    pred, mos = _as_pair(pred, mos, minimum=1)
    linear = _linear_params(pred, mos)
    if len(pred) < 5 or np.ptp(pred) == 0 or np.ptp(mos) == 0:
        # Five parameters need at least five points; constant data has no curve.
        return linear

    sign = 1.0 if np.corrcoef(pred, mos)[0, 1] >= 0 else -1.0
    guess = [
        sign * float(np.ptp(mos)),
        1.0 / float(np.std(pred)),
        float(np.mean(pred)),
        0.0,
        float(np.mean(mos)),
    ]
    try:
        with warnings.catch_warnings():
            # "Covariance could not be estimated" is irrelevant: we only use the point estimate.
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            params, _ = optimize.curve_fit(logistic_5, pred, mos, p0=guess, maxfev=20000)
    except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError):
        return linear
    if not np.all(np.isfinite(params)):
        return linear

    def sse(p):
        return float(np.sum((logistic_5(pred, *p) - mos) ** 2))

    return params if sse(params) <= sse(linear) else linear


# --------------------------------------------------------------------------- #
# Correlation metrics
# --------------------------------------------------------------------------- #


def _as_pair(mos, pred, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate two score vectors: same length, finite, at least ``minimum`` items."""
    a = np.asarray(mos, dtype=np.float64).ravel()
    b = np.asarray(pred, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise NriqaError(f"Score vectors differ in length: {a.size} vs {b.size}.")
    if a.size < minimum:
        raise NriqaError(f"Need at least {minimum} scores to compute metrics, got {a.size}.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise NriqaError("Scores contain NaN or infinite values; check the model's predictions.")
    return a, b


def _correlation(fn, a: np.ndarray, b: np.ndarray) -> float:
    """A scipy correlation coefficient, defined as 0.0 when either side is constant.

    A constant vector makes every correlation 0/0. Returning 0.0 ("no
    information") keeps metric files NaN-free and comparisons meaningful: a
    collapsed model scores worse than any model that ranks at all.
    """
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    value = float(fn(a, b)[0])
    return value if np.isfinite(value) else 0.0


def srcc(mos, pred) -> float:
    """Spearman's rank correlation of two score vectors; 0.0 when either is constant."""
    return _correlation(stats.spearmanr, np.asarray(mos, dtype=np.float64).ravel(),
                        np.asarray(pred, dtype=np.float64).ravel())


def rgb_psnr(reference: np.ndarray, distorted: np.ndarray) -> float:
    """PSNR in dB over all RGB values (inf when identical), the full-reference measure that
    calibrates the synthetic distortions' strengths (experiments/calibrate_synthetic.py)."""
    mse = float(np.mean((reference.astype(np.float64) - distorted.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(255.0**2 / mse)


def quality_metrics(mos, pred) -> dict[str, float]:
    """SRCC, KRCC, PLCC and RMSE of ``pred`` against ``mos``, raw and after logistic mapping.

    Keys: ``srcc``, ``krcc``, ``plcc``, ``rmse`` (computed on the raw
    predictions) and ``plcc_logistic``, ``rmse_logistic`` (computed after
    mapping the predictions through :func:`fit_logistic`, as in VQEG).
    SRCC/KRCC are invariant to the monotone mapping, so they appear once.

    Constant predictions (or constant MOS) give correlations of 0.0, not NaN;
    RMSE is still computed. All values are plain Python floats, ready for JSON
    and MLflow. At least two scores are required.
    """
    mos, pred = _as_pair(mos, pred, minimum=2)
    mapped = logistic_5(pred, *fit_logistic(pred, mos))
    return {
        "srcc": srcc(mos, pred),
        "krcc": _correlation(stats.kendalltau, mos, pred),
        "plcc": _correlation(stats.pearsonr, mos, pred),
        "rmse": float(np.sqrt(np.mean((mos - pred) ** 2))),
        "plcc_logistic": _correlation(stats.pearsonr, mos, mapped),
        "rmse_logistic": float(np.sqrt(np.mean((mos - mapped) ** 2))),
    }


def per_group_srcc(frame, group_col: str, mos_col: str = "mos", pred_col: str = "pred") -> dict[Any, float]:
    """SRCC within each value of ``group_col`` (e.g. distortion type), sorted by group.

    Groups with fewer than 3 rows are *skipped*: a rank correlation of one or
    two points is always +-1 and would only mislead. Groups whose MOS or
    predictions are constant get 0.0 (see :func:`quality_metrics`). Group keys
    are returned as plain Python scalars (numpy scalars are unwrapped) so the
    result can be dumped to JSON directly.
    """
    missing = [c for c in (group_col, mos_col, pred_col) if c not in frame.columns]
    if missing:
        raise NriqaError(f"Columns missing from the evaluation table: {', '.join(missing)}.")
    result: dict[Any, float] = {}
    for key, group in frame.groupby(group_col, sort=True):
        if len(group) < 3:
            continue
        mos, pred = _as_pair(group[mos_col], group[pred_col], minimum=3)
        key = key.item() if isinstance(key, np.generic) else key
        result[key] = srcc(mos, pred)
    return result


# --------------------------------------------------------------------------- #
# Quality categories
# --------------------------------------------------------------------------- #


def category_metrics(mos, pred, thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Accuracy and confusion matrix of predicted vs. true quality categories.

    Returns ``{"accuracy": float, "confusion": [[int]], "labels": [str]}``.
    Rows of ``confusion`` are the true (MOS) categories and columns the
    predicted ones, both in ``labels`` order (best first; this is
    :data:`CATEGORY_NAMES` for the standard names). The matrix is always
    square over all categories, including empty ones, so matrices from
    different runs line up.
    """
    from sklearn.metrics import (
        confusion_matrix,  # here: training imports this module for srcc
    )

    mos, pred = _as_pair(mos, pred, minimum=1)
    labels, _ = ordered_categories(thresholds)
    true_cat = categorize(mos, thresholds)
    pred_cat = categorize(pred, thresholds)
    matrix = confusion_matrix(true_cat, pred_cat, labels=labels)
    return {
        "accuracy": float(np.mean(true_cat == pred_cat)),
        "confusion": matrix.astype(int).tolist(),
        "labels": list(labels),
    }
