"""The labeller: the opinion score people would give a distorted image, from the image, its
pristine reference and the kind of distortion.

People judge the *kind* of distortion as much as its strength: on TID2013, human MOS ranks
with MS-SSIM at 0.787, but with the median MOS of the image's (type, level) cell at 0.924.
One global curve from a full-reference measure to MOS cannot know that blur at 30 dB looks
worse than colour noise at 30 dB. So every type has its own curve: TID2013's per-level
(median PSNR, median MOS) points for that type (``shared/reference/tid2013_levels.csv``,
hard-coded below so the package never needs the file), interpolated piecewise-linearly in
PSNR and extended by the end segments' slopes for up to one level beyond levels 1 and 5.

The measure is PSNR over the three RGB channels, which sees colour errors that luma-only
measures miss (colour noise, saturation changes, chromatic aberration). Three types need
care because TID2013's PSNR does not order their levels:

* 15, local block-wise distortions: TID2013's PSNR is flat across levels (26.0-27.9 dB)
  while MOS drifts, so PSNR cannot place an image; it gets the type's median MOS.
* 17, contrast change: levels 1, 3, 5 reduce contrast and 2, 4 raise it, and people like
  the raised contrast (MOS 6.6, 6.4) far more than the reduced (5.6, 4.4, 3.4). The image's
  contrast against its reference picks the branch; each branch has its own curve.
* 18, change of colour saturation: TID2013 reports luma PSNR, which a saturation change
  leaves untouched, so its PSNR points are replaced by the RGB PSNR our generator's
  calibrated strengths give (median over the 25 default references).

Fidelity, measured on the human-label dev set (``shared/humanlabels``, 660 images, 11
types, real TID2013 MOS): SRCC 0.941 between these labels and people's scores, against 0.853
for MS-SSIM, the most a single global MS-SSIM curve can reach (`benchmarks/human_labels.py`).
"""

from __future__ import annotations

import numpy as np

from nriqa.errors import NriqaError

# type: ((median PSNR at levels 1..5), (median MOS at levels 1..5)), TID2013.
_TID2013_LEVELS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    1: ((37.86, 34.89, 31.85, 28.86, 25.88), (5.718, 5.167, 4.846, 4.250, 3.784)),
    2: ((43.62, 40.76, 37.77, 34.81, 31.79), (5.973, 5.864, 5.526, 5.098, 4.528)),
    3: ((37.84, 34.88, 31.84, 28.86, 25.89), (4.780, 4.227, 3.733, 3.194, 2.703)),
    4: ((37.45, 34.65, 31.68, 28.67, 25.76), (5.895, 5.821, 5.463, 5.128, 4.529)),
    5: ((37.78, 34.82, 29.86, 24.90, 20.00), (5.919, 5.651, 5.139, 4.167, 3.184)),
    6: ((37.45, 33.45, 30.30, 27.35, 24.34), (4.694, 4.353, 3.973, 3.568, 3.189)),
    7: ((37.94, 34.73, 31.77, 28.65, 25.17), (5.378, 4.750, 4.167, 3.452, 2.829)),
    8: ((37.67, 32.89, 29.00, 25.91, 23.76), (5.690, 5.056, 4.143, 3.233, 2.538)),
    9: ((38.04, 35.51, 32.27, 28.22, 23.00), (6.026, 5.865, 4.865, 3.500, 2.093)),
    10: ((37.51, 34.54, 31.09, 27.87, 25.76), (5.968, 5.737, 5.000, 3.278, 2.171)),
    11: ((35.16, 31.98, 28.95, 25.83, 22.78), (5.579, 5.156, 4.029, 2.632, 0.977)),
    12: ((35.85, 32.16, 28.44, 25.71, 22.36), (5.811, 5.595, 4.833, 3.800, 2.659)),
    13: ((34.68, 31.72, 28.56, 25.55, 22.50), (4.829, 4.053, 3.421, 2.892, 2.500)),
    14: ((34.24, 31.03, 28.26, 26.98, 24.98), (5.769, 6.000, 5.459, 4.622, 3.795)),
    15: ((26.79, 26.66, 26.37, 25.96, 27.86), (3.231, 3.324, 3.500, 3.676, 3.973)),
    16: ((33.88, 29.52, 23.46, 20.02, 17.54), (6.062, 6.054, 5.690, 5.200, 4.568)),
    17: ((35.72, 30.97, 27.81, 24.78, 21.79), (5.611, 6.622, 4.432, 6.364, 3.378)),
    # RGB PSNR of nriqa.distortions' calibrated saturation changes (see the module docstring).
    18: ((33.89, 28.92, 26.41, 24.43, 22.85), (5.135, 4.395, 4.237, 3.923, 3.767)),
    19: ((37.44, 34.46, 31.48, 28.46, 25.44), (5.541, 5.176, 4.700, 4.114, 3.667)),
    20: ((34.98, 31.86, 28.79, 25.77, 22.80), (5.842, 5.571, 5.171, 4.139, 3.270)),
    21: ((35.65, 32.71, 29.85, 26.96, 23.79), (5.553, 4.955, 4.256, 3.500, 2.513)),
    22: ((36.58, 33.15, 29.79, 26.62, 23.25), (5.714, 5.324, 4.526, 3.947, 2.794)),
    23: ((42.44, 37.42, 33.83, 29.55, 25.07), (6.054, 5.909, 5.611, 4.806, 2.757)),
    24: ((35.25, 32.11, 28.93, 25.86, 22.71), (5.773, 5.190, 3.974, 2.256, 0.727)),
}
_CONTRAST_REDUCED, _CONTRAST_RAISED = (0, 2, 4), (1, 3)  # level indices of type 17's branches
MOS_RANGE = (0.0, 9.0)  # TID2013's scale


def rgb_psnr(reference: np.ndarray, distorted: np.ndarray) -> float:
    """PSNR in dB over all RGB values (inf when identical)."""
    mse = float(np.mean((reference.astype(np.float64) - distorted.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(255.0**2 / mse)


def _curve(psnr: float, points_psnr, points_mos) -> float:
    """Piecewise-linear MOS(PSNR) through the points; beyond them the end slopes go on for
    at most one level's step, then hold."""
    order = np.argsort(points_psnr)
    x, y = np.asarray(points_psnr, float)[order], np.asarray(points_mos, float)[order]
    if len(x) == 1:
        return float(y[0])
    low = x[0] - (x[1] - x[0])
    high = x[-1] + (x[-1] - x[-2])
    psnr = float(np.clip(psnr, low, high))
    if psnr < x[0]:
        return float(y[0] + (psnr - x[0]) * (y[1] - y[0]) / (x[1] - x[0]))
    if psnr > x[-1]:
        return float(y[-1] + (psnr - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2]))
    return float(np.interp(psnr, x, y))


def pseudo_mos(distortion_type: int, reference: np.ndarray, distorted: np.ndarray) -> float:
    """The MOS people would give ``distorted`` (uint8 RGB), made from ``reference`` by a
    TID2013 distortion of ``distortion_type`` (1..24), on TID2013's 0..9 scale."""
    if distortion_type not in _TID2013_LEVELS:
        raise NriqaError(f"unknown distortion type {distortion_type!r}; TID2013 types are 1..24")
    psnr_points, mos_points = _TID2013_LEVELS[distortion_type]
    if distortion_type == 15:
        return float(np.median(mos_points))
    psnr = rgb_psnr(reference, distorted)
    if distortion_type == 17:
        raised = distorted.astype(np.float64).std() > reference.astype(np.float64).std()
        levels = _CONTRAST_RAISED if raised else _CONTRAST_REDUCED
        psnr_points = [psnr_points[i] for i in levels]
        mos_points = [mos_points[i] for i in levels]
    return float(np.clip(_curve(psnr, psnr_points, mos_points), *MOS_RANGE))
