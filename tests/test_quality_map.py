"""The quality map's grid and its drawing (the service's and the CLI's), without a model."""

import numpy as np

from nriqa.serving.quality_map import (
    LEGEND_HEIGHT,
    RAMP,
    map_overlay,
    map_values,
    quality_map,
    ramp,
    ramp_colours,
)

# A 100x50 frame: crops of 32 at three of the grid's six corners (the others thinned away).
GRID = quality_map(100, 50, [(0, 0), (0, 68), (18, 20)], 32, [1.0, 8.0, 4.0])


def test_grid_has_the_scores_where_their_crops_lie_and_null_where_thinned():
    assert GRID["tops"] == [0, 18] and GRID["lefts"] == [0, 20, 68]
    assert GRID["scores"] == [[1.0, None, 8.0], [None, 4.0, None]]


def test_each_pixel_is_the_mean_of_the_crops_covering_it():
    values = map_values(GRID)
    assert values.shape == (50, 100)
    assert values[0, 0] == 1.0 and values[0, 99] == 8.0 and values[49, 50] == 4.0
    assert values[20, 25] == 2.5  # under the first and the third crop
    assert np.isnan(values[49, 0])  # no crop scored there
    assert map_values(GRID, scale=0.5).shape == (25, 50)


TID2013_SCALE, KADID_SCALE = (0.0, 9.0), (1.0, 5.0)


def test_ramp_runs_red_to_green_over_the_models_scale():
    np.testing.assert_array_equal(ramp_colours(np.array([-1.0, 0.0, 9.0, 12.0]), TID2013_SCALE),
                                  [RAMP[0][1], RAMP[0][1], RAMP[-1][1], RAMP[-1][1]])
    # A KADID-10k model's 1..5: its middle (3) gets the colour of TID2013's middle (4.5).
    assert [mos for mos, _ in ramp(KADID_SCALE)] == [1.0, 1 + 4 / 3, 3.0, 1 + 8 / 3, 5.0]
    np.testing.assert_array_equal(ramp_colours(np.array(3.0), KADID_SCALE),
                                  ramp_colours(np.array(4.5), TID2013_SCALE))


def test_overlay_stretches_the_map_onto_the_image_and_adds_the_scale():
    # A 2:1 frame drawn onto a 3:1 image, as preprocess.mode resize scores it.
    image = np.full((40, 120, 3), 200, np.uint8)
    drawn = np.asarray(map_overlay(image, GRID, TID2013_SCALE, opacity=1.0))
    assert drawn.shape == (40 + LEGEND_HEIGHT, 120, 3)
    np.testing.assert_array_equal(drawn[0, 0], ramp_colours(np.array(1.0), TID2013_SCALE))
    np.testing.assert_array_equal(drawn[0, 119], ramp_colours(np.array(8.0), TID2013_SCALE))
    np.testing.assert_array_equal(drawn[39, 0], [200, 200, 200])  # not covered: the image
