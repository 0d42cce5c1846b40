"""The labeller (`nriqa.data.labels`): TID2013's median MOS per (type, level), continuous in level."""

from __future__ import annotations

import numpy as np
import pytest

from nriqa.core.errors import NriqaError
from nriqa.data.distortions import DISTORTIONS, MAX_POSITION, MIN_POSITION
from nriqa.data.labels import _TID2013_MOS, level_mos


@pytest.mark.parametrize("distortion_type", [1, 2, 8, 10, 11, 22])
def test_each_level_gets_tid2013s_median_mos(distortion_type):
    for level, median in enumerate(_TID2013_MOS[distortion_type], start=1):
        assert level_mos(distortion_type, level) == pytest.approx(median, abs=1e-9)


def test_between_levels_the_label_is_interpolated():
    first, second = _TID2013_MOS[11][2:4]
    assert level_mos(11, 3.25) == pytest.approx(0.75 * first + 0.25 * second)


def test_the_same_level_means_different_opinions_for_different_types():
    # Level 5: people mind JPEG2000 far more than colour noise.
    assert level_mos(2, 5) - level_mos(11, 5) > 3.0


def test_labels_stay_on_the_scale_and_fall_beyond_the_levels():
    for distortion_type in DISTORTIONS:
        for position in np.linspace(MIN_POSITION, MAX_POSITION, 21):
            assert 0.0 <= level_mos(distortion_type, float(position), raised_contrast=False) <= 9.0
    # Half a level beyond: the end slopes go on (weaker than level 1 is better, stronger than 5 worse).
    assert level_mos(11, MIN_POSITION) > level_mos(11, 1) > level_mos(11, 5) > level_mos(11, MAX_POSITION)


def test_contrast_raised_is_liked_more_than_contrast_reduced():
    for position in (1.0, 2.5, 5.0):
        assert level_mos(17, position, raised_contrast=True) > level_mos(17, position, raised_contrast=False)
    # Integer levels follow TID2013's directions: 2 and 4 raise.
    assert level_mos(17, 2) == pytest.approx(_TID2013_MOS[17][1])
    assert level_mos(17, 3) == pytest.approx(_TID2013_MOS[17][2])


def test_local_blockwise_distortions_get_the_types_median():
    assert {level_mos(15, level) for level in (1, 3, 5)} == {float(np.median(_TID2013_MOS[15]))}


def test_unknown_type_is_refused():
    with pytest.raises(NriqaError, match="distortion type 25"):
        level_mos(25, 3.0)
