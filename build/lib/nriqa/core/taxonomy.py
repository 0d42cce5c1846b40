"""TID2013's distortion types by number, and the type head's classes: what a prediction names.

The generator of these distortions (`nriqa.data.distortions`) is a separate, heavier module;
everything that only names a type reads it here.
"""

from __future__ import annotations

TYPE_NAMES: dict[int, str] = {
    1: "additive Gaussian noise",
    2: "additive noise in colour components",
    3: "spatially correlated noise",
    4: "masked noise",
    5: "high-frequency noise",
    6: "impulse noise",
    7: "quantization noise",
    8: "Gaussian blur",
    9: "image denoising",
    10: "JPEG compression",
    11: "JPEG2000 compression",
    12: "JPEG transmission errors",
    13: "JPEG2000 transmission errors",
    14: "non-eccentricity pattern noise",
    15: "local block-wise distortions of different intensity",
    16: "mean shift (intensity shift)",
    17: "contrast change",
    18: "change of colour saturation",
    19: "multiplicative Gaussian noise",
    20: "comfort noise",
    21: "lossy compression of noisy images",
    22: "image colour quantization with dither",
    23: "chromatic aberrations",
    24: "sparse sampling and reconstruction",
}
LEVELS = (1, 2, 3, 4, 5)  # TID2013's strengths, 1 the mildest
UNDISTORTED = "no distortion"  # the name of type 0, the type head's class after the 24 types


def head_types(classes: int) -> list[int]:
    """The TID2013 type of each type-head class, in column order: types 1..24, then, in a model
    with `model.undistorted_class`, 0 (an undistorted image)."""
    return [k + 1 if k < 24 else 0 for k in range(classes)]


def type_name(distortion: int) -> str:
    return TYPE_NAMES[distortion] if distortion else UNDISTORTED
