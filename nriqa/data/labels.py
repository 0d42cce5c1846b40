"""The labeller: the opinion score people would give a distorted image, from the kind of
distortion and how strong it is.

People judge the *kind* of distortion as much as its strength: on all 3,000 TID2013 images,
human MOS ranks with MS-SSIM at 0.787, with PSNR mapped through each type's own curve at
0.897, but with the median MOS of the image's (type, level) cell at 0.924. So the label is
that cell median: TID2013's median MOS for the type at the level (``shared/reference/
tid2013_levels.csv``, hard-coded below so the package never needs the file), interpolated
linearly for the continuous strengths of the training set and extended by the end slopes up
to half a level beyond levels 1 and 5.

The label follows the distortion's level, not what it did to this content's pixels. By default
(``data.strength``/``trainset.strength``: parameter) a level is the distortion's parameter
(noise sigma, blur radius, JPEG quality); with ``psnr`` it is TID2013's PSNR for the level, the
strength searched per image (`nriqa.data.distortions.Distortion.matched`). A no-reference model
can see the parameter (noise in flat areas, blur at edges) but not the PSNR, which also depends
on content it cannot compare with: the earlier labels (RGB PSNR through each type's curve) put a
heavily compressed smooth photo above a lightly compressed textured one, and models trained on
them ranked JPEG2000 at -0.16..0.8 depending on the seed. Two types need care:

* 15, local block-wise distortions: our stand-in grows worse with level, while TID2013's MOS
  drifts up (3.2 -> 4.0); it gets the type's median.
* 17, contrast change: levels 1, 3, 5 reduce contrast and 2, 4 raise it, and people like the
  raised contrast (MOS 6.6, 6.4) far more than the reduced (5.6, 4.4, 3.4); each direction
  has its own curve.

Fidelity, measured on the human-label dev set (``shared/humanlabels``, 660 images, 11 types,
real TID2013 MOS): SRCC 0.951 between these labels and people's scores, against 0.941 for the
PSNR-curve labels and 0.853 for MS-SSIM (`experiments/human_labels.py`).
"""

from __future__ import annotations

import numpy as np

from nriqa.core.errors import NriqaError

# type: median MOS at levels 1..5, TID2013.
_TID2013_MOS: dict[int, tuple[float, ...]] = {
    1: (5.718, 5.167, 4.846, 4.250, 3.784),
    2: (5.973, 5.864, 5.526, 5.098, 4.528),
    3: (4.780, 4.227, 3.733, 3.194, 2.703),
    4: (5.895, 5.821, 5.463, 5.128, 4.529),
    5: (5.919, 5.651, 5.139, 4.167, 3.184),
    6: (4.694, 4.353, 3.973, 3.568, 3.189),
    7: (5.378, 4.750, 4.167, 3.452, 2.829),
    8: (5.690, 5.056, 4.143, 3.233, 2.538),
    9: (6.026, 5.865, 4.865, 3.500, 2.093),
    10: (5.968, 5.737, 5.000, 3.278, 2.171),
    11: (5.579, 5.156, 4.029, 2.632, 0.977),
    12: (5.811, 5.595, 4.833, 3.800, 2.659),
    13: (4.829, 4.053, 3.421, 2.892, 2.500),
    14: (5.769, 6.000, 5.459, 4.622, 3.795),
    15: (3.231, 3.324, 3.500, 3.676, 3.973),
    16: (6.062, 6.054, 5.690, 5.200, 4.568),
    17: (5.611, 6.622, 4.432, 6.364, 3.378),
    18: (5.135, 4.395, 4.237, 3.923, 3.767),
    19: (5.541, 5.176, 4.700, 4.114, 3.667),
    20: (5.842, 5.571, 5.171, 4.139, 3.270),
    21: (5.553, 4.955, 4.256, 3.500, 2.513),
    22: (5.714, 5.324, 4.526, 3.947, 2.794),
    23: (6.054, 5.909, 5.611, 4.806, 2.757),
    24: (5.773, 5.190, 3.974, 2.256, 0.727),
}
_CONTRAST_REDUCED, _CONTRAST_RAISED = (0, 2, 4), (1, 3)  # level indices of type 17's branches
_LEVEL_POSITIONS = (1.0, 2.0, 3.0, 4.0, 5.0)
MOS_RANGE = (0.0, 9.0)  # TID2013's scale
# An undistorted image: as good as TID2013's best distorted cell, level 1 of mean shift (6.06),
# which people barely tell from the original (raised contrast, which they prefer to it, aside).
# Without such images, a model that sees no distortion averages the weak levels of every type,
# some of which people dislike even when faint (impulse noise 4.7 at level 1), and scores clean
# images below mildly noisy ones.
PRISTINE_MOS = max(mos[0] for distortion_type, mos in _TID2013_MOS.items() if distortion_type != 17)


def _curve(x_value: float, points_x, points_y) -> float:
    """Piecewise-linear y(x) through the points (x ascending); beyond them the end slopes go on
    for at most one step, then hold."""
    x, y = np.asarray(points_x, float), np.asarray(points_y, float)
    x_value = float(np.clip(x_value, x[0] - (x[1] - x[0]), x[-1] + (x[-1] - x[-2])))
    if x_value < x[0]:
        return float(y[0] + (x_value - x[0]) * (y[1] - y[0]) / (x[1] - x[0]))
    if x_value > x[-1]:
        return float(y[-1] + (x_value - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2]))
    return float(np.interp(x_value, x, y))


def level_mos(distortion_type: int, position: float, raised_contrast: bool | None = None) -> float:
    """The MOS people give a TID2013 distortion of ``distortion_type`` (1..24) at ``position``
    on its level scale (1.0 is level 1, 5.0 level 5, continuous in between), on TID2013's 0..9
    scale. For contrast change, ``raised_contrast`` picks the branch (default: TID2013's, by
    the level's parity)."""
    if distortion_type not in _TID2013_MOS:
        raise NriqaError(f"unknown distortion type {distortion_type!r}; TID2013 types are 1..24")
    mos_points = _TID2013_MOS[distortion_type]
    if distortion_type == 15:
        return float(np.median(mos_points))
    positions = _LEVEL_POSITIONS
    if distortion_type == 17:
        if raised_contrast is None:
            raised_contrast = round(position) % 2 == 0
        levels = _CONTRAST_RAISED if raised_contrast else _CONTRAST_REDUCED
        positions, mos_points = [positions[i] for i in levels], [mos_points[i] for i in levels]
    return float(np.clip(_curve(position, positions, mos_points), *MOS_RANGE))
