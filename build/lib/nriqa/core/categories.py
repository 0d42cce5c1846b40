"""Verbal quality categories (Excellent ... Very Poor) from MOS: numpy only, so that a runtime
without SciPy (`nriqa.model.portable`) names categories exactly as evaluation does."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nriqa.core.errors import NriqaError

#: Verbal quality categories, best first. The last one is the catch-all below
#: the lowest threshold.
CATEGORY_NAMES = ["Excellent", "Good", "Average", "Poor", "Very Poor"]
_LOWEST_CATEGORY = CATEGORY_NAMES[-1]

#: An example threshold set (lower bounds, inclusive). Projects should pass
#: their own, matched to the MOS scale of their data set.
DEFAULT_THRESHOLDS: dict[str, float] = {"Excellent": 6.0, "Good": 5.0, "Average": 4.0, "Poor": 3.0}


def ordered_categories(thresholds: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    """Category names best-first and their lower bounds, ordered by value (not dict order)."""
    if not thresholds:
        raise NriqaError("Category thresholds are empty.")
    if _LOWEST_CATEGORY in thresholds:
        raise NriqaError(f"'{_LOWEST_CATEGORY}' is the catch-all category and cannot have a threshold.")
    items = sorted(thresholds.items(), key=lambda kv: float(kv[1]), reverse=True)
    bounds = np.array([float(v) for _, v in items])
    if not np.all(np.isfinite(bounds)) or len(np.unique(bounds)) != len(bounds):
        raise NriqaError(f"Category thresholds must be finite and distinct, got {dict(thresholds)}.")
    return [name for name, _ in items] + [_LOWEST_CATEGORY], bounds


def categorize(mos, thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS):
    """Map MOS values to category names; thresholds are inclusive lower bounds.

    With ``{"Excellent": 6.0, "Good": 5.0, "Average": 4.0, "Poor": 3.0}``,
    ``mos >= 6.0`` is "Excellent" (6.0 itself included), ``5.0 <= mos < 6.0``
    is "Good", and so on; anything below the lowest bound is "Very Poor".
    Thresholds are ordered by value, so dict order does not matter.

    An array-like gives a numpy array of ``str``; a scalar gives a plain
    ``str`` (the service categorises one prediction at a time). NaN has no
    category and raises :class:`NriqaError` rather than silently landing in
    "Very Poor".
    """
    names, bounds = ordered_categories(thresholds)
    values = np.asarray(mos, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise NriqaError("Cannot categorise NaN or infinite quality scores.")
    # The category index is the number of bounds strictly above the value
    # (0 -> best). Bounds are descending, so negate both sides to get the
    # ascending order searchsorted needs; side="left" does not count a bound
    # equal to the value, which makes the bounds inclusive (6.0 is Excellent).
    index = np.searchsorted(-bounds, -values, side="left")
    if values.ndim == 0:
        return names[int(index)]
    return np.asarray(names, dtype=str)[index]
