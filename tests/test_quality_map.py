"""The quality map's grid and its drawing (the service's and the CLI's), without a model."""

import numpy as np
import pytest

from nriqa.core.imaging import grid_corners
from nriqa.serving.quality_map import (
    LEGEND_HEIGHT,
    MAP_REACH_SPACINGS,
    RAMP,
    map_overlay,
    map_reach,
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


def test_each_pixel_is_the_mean_of_the_crops_covering_it_else_the_nearest_ones():
    values = map_values(GRID)
    assert values.shape == (50, 100)
    assert values[0, 0] == 1.0 and values[0, 99] == 8.0 and values[49, 50] == 4.0
    assert values[20, 25] == 2.5  # under the first and the third crop
    assert values[49, 0] == 1.0  # no crop scored there: the nearest one's score
    assert map_values(GRID, scale=0.5).shape == (25, 50)


def thinned_grid(width: int, height: int, scores) -> dict:
    """The quality map of a width x height image as params.yaml scores it: crops of 64 every
    64 pixels, thinned to 48."""
    corners = grid_corners(height, width, crop_size=64, stride=64, max_crops=48)
    return quality_map(width, height, corners, 64, scores(corners))


@pytest.mark.parametrize("width, height", [(768, 512), (4032, 3024)])
def test_a_thinned_grid_is_painted_without_stripes(width, height):
    """768x512 has 96 grid cells and 4032x3024 2,961, of which 48 are scored: a coarser grid of
    evenly spaced rows and columns, so the map has no bare cells between scored ones, and an
    image of one quality is one colour (thinning the row-by-row list of crops once left every
    other column bare, or whole regions of a large photo)."""
    uniform = thinned_grid(width, height, lambda corners: [5.0] * len(corners))
    assert (len(uniform["tops"]), len(uniform["lefts"])) == (6, 8)
    assert all(score == 5.0 for row in uniform["scores"] for score in row)
    np.testing.assert_array_equal(map_values(uniform, scale=0.25),
                                  np.full((round(height / 4), round(width / 4)), 5.0))


def test_points_far_from_every_scored_crop_are_not_guessed():
    # Two crops at one end of a long strip: past MAP_REACH_SPACINGS of their mean spacing,
    # nothing is painted.
    grid = quality_map(10_000, 100, [(0, 0), (36, 64)], 64, [3.0, 3.0])
    values = map_values(grid, scale=0.1)
    reach = MAP_REACH_SPACINGS * np.sqrt(10_000 * 100 / 2)
    assert map_reach(grid) == pytest.approx(reach)
    painted = ~np.isnan(values).all(axis=0)  # per column of the 1,000-wide map
    assert painted[:int(reach / 10) - 10].all() and not painted[int(reach / 10) + 20:].any()
    assert (values[~np.isnan(values)] == 3.0).all()


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
    np.testing.assert_array_equal(drawn[39, 0], ramp_colours(np.array(1.0), TID2013_SCALE))
    # Out of every scored crop's reach (a 400x32 frame scored at its two ends): the image.
    sparse = quality_map(400, 32, [(0, 0), (0, 368)], 32, [1.0, 8.0])
    drawn = np.asarray(map_overlay(np.full((32, 400, 3), 200, np.uint8), sparse, TID2013_SCALE))
    np.testing.assert_array_equal(drawn[16, 200], [200, 200, 200])
