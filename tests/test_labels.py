"""The labeller (`nriqa.labels`): per-type curves through TID2013's per-level facts."""

from __future__ import annotations

import numpy as np
import pytest

from nriqa.distortions import DISTORTIONS
from nriqa.errors import NriqaError
from nriqa.labels import _TID2013_LEVELS, pseudo_mos, rgb_psnr


def noisy_at_psnr(reference: np.ndarray, psnr: float) -> np.ndarray:
    """`reference` plus +/-d on every value, d chosen so that the RGB PSNR is `psnr` (no clipping)."""
    d = 255.0 / 10 ** (psnr / 20)
    signs = np.where(np.random.default_rng(0).random(reference.shape) < 0.5, -1.0, 1.0)
    return reference.astype(np.float64) + d * signs  # float: exact PSNR, no rounding


@pytest.fixture
def grey_reference() -> np.ndarray:
    return np.random.default_rng(1).integers(60, 190, (48, 64, 3)).astype(np.uint8)


@pytest.mark.parametrize("distortion_type", [1, 8, 10, 11, 22])
def test_tid2013_level_medians_map_to_their_median_mos(grey_reference, distortion_type):
    psnrs, mos = _TID2013_LEVELS[distortion_type]
    for level_psnr, level_mos in zip(psnrs, mos):
        distorted = noisy_at_psnr(grey_reference, level_psnr)
        assert rgb_psnr(grey_reference, distorted) == pytest.approx(level_psnr, abs=1e-6)
        assert pseudo_mos(distortion_type, grey_reference, distorted) == pytest.approx(level_mos, abs=1e-6)


def test_the_same_psnr_means_different_opinions_for_different_types(grey_reference):
    distorted = noisy_at_psnr(grey_reference, 29.0)
    by_type = {t: pseudo_mos(t, grey_reference, distorted) for t in (1, 3, 11)}
    # At 29 dB, people mind spatially correlated noise far more than white noise.
    assert by_type[1] > by_type[11] > by_type[3]
    assert by_type[1] - by_type[3] > 1.0


def test_labels_stay_on_the_scale_beyond_the_levels(grey_reference):
    for distortion_type in DISTORTIONS:
        for psnr in (60.0, 12.0):
            value = pseudo_mos(distortion_type, grey_reference, noisy_at_psnr(grey_reference, psnr))
            assert 0.0 <= value <= 9.0
        clean = pseudo_mos(distortion_type, grey_reference, grey_reference)  # infinite PSNR
        assert clean >= max(_TID2013_LEVELS[distortion_type][1]) - 1e-9 or distortion_type in (14, 15, 17)


def test_contrast_raised_is_liked_more_than_contrast_reduced(grey_reference):
    rng = np.random.default_rng(0)
    raised = DISTORTIONS[17].apply_strength(grey_reference, 1.3, rng)
    reduced = DISTORTIONS[17].apply_strength(grey_reference, 0.7, rng)
    assert pseudo_mos(17, grey_reference, raised) > pseudo_mos(17, grey_reference, reduced)


def test_colour_saturation_loss_is_not_scored_pristine(grey_reference):
    colourful = np.random.default_rng(2).integers(0, 255, (48, 64, 3)).astype(np.uint8)
    grey = DISTORTIONS[18].apply_strength(colourful, 0.1, np.random.default_rng(0))
    assert pseudo_mos(18, colourful, grey) < pseudo_mos(18, colourful, colourful) - 1.0


def test_unknown_type_is_refused(grey_reference):
    with pytest.raises(NriqaError, match="distortion type 25"):
        pseudo_mos(25, grey_reference, grey_reference)
