"""The quality map: where in an image the quality is poor.

An image's MOS is the mean of its crops' scores (`nriqa.model.prediction.score_crop_sets`); the map is
those same scores laid out where their crops lie, so it costs no second pass over the model
and its mean is the MOS. `quality_map` gives it as a grid (the service's `map=true`),
`map_overlay` draws it over the image as a heat map (the CLI's `--map DIR`); the web page draws
it the same way, with the same colours (`ramp`), along the served model's MOS scale (its
model.json's `mos_range`: 0..9 for TID2013, 1..5 for KADID-10k and KonIQ-10k).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Heat-map colours, red (poor) to green (good): (fraction of the MOS scale, RGB) stops.
RAMP = ((0.0, (165, 0, 38)), (1 / 3, (244, 109, 67)), (0.5, (254, 224, 139)),
        (2 / 3, (166, 217, 106)), (1.0, (26, 152, 80)))
# Longest side the CLI draws its map at; a map finer than its crops shows nothing more.
MAX_MAP_SIDE = 1024
LEGEND_HEIGHT = 14  # pixels: the colour scale under the map, labelled lowest, MOS, highest


def ramp(mos_range) -> list[tuple[float, tuple[int, int, int]]]:
    """`RAMP`'s stops as (MOS, RGB) on the scale `mos_range` = (lowest, highest)."""
    lowest, highest = mos_range
    return [(lowest + fraction * (highest - lowest), rgb) for fraction, rgb in RAMP]


def quality_map(width: int, height: int, corners: list[tuple[int, int]], crop_size: int,
                crop_scores) -> dict:
    """The crop scores on their grid, as `nriqa.core.imaging.prediction_layout` places them.

    `scores[i][j]` is the MOS of the crop whose top-left corner is (`tops[i]`, `lefts[j]`) in
    the width x height frame the crops were cut from; None where the grid was thinned
    (predict.max_crops). The mean of the scores is the image's MOS.
    """
    tops = sorted({top for top, _ in corners})
    lefts = sorted({left for _, left in corners})
    scores: list[list[float | None]] = [[None] * len(lefts) for _ in tops]
    for (top, left), score in zip(corners, crop_scores, strict=True):
        scores[tops.index(top)][lefts.index(left)] = round(float(score), 6)
    return {"width": width, "height": height, "crop_size": crop_size, "tops": tops,
            "lefts": lefts, "scores": scores}


def map_values(grid: dict, scale: float = 1.0) -> np.ndarray:
    """Per pixel of the frame (scaled by `scale`), the mean score of the crops covering it;
    NaN where no scored crop does."""
    height, width = (max(1, round(grid[side] * scale)) for side in ("height", "width"))
    total, count = np.zeros((height, width)), np.zeros((height, width))
    size = grid["crop_size"] * scale
    for top, row in zip(grid["tops"], grid["scores"]):
        for left, score in zip(grid["lefts"], row):
            if score is not None:
                box = (slice(round(top * scale), round(top * scale + size)),
                       slice(round(left * scale), round(left * scale + size)))
                total[box] += score
                count[box] += 1
    with np.errstate(invalid="ignore"):
        return total / count


def ramp_colours(values: np.ndarray, mos_range) -> np.ndarray:
    """RGB uint8 colours of MOS values along `ramp(mos_range)` (values outside it are clipped)."""
    stops, colours = (np.array(column, dtype=np.float64) for column in zip(*ramp(mos_range)))
    values = np.clip(values, *mos_range)
    return np.stack([np.interp(values, stops, colours[:, channel]) for channel in range(3)],
                    axis=-1).round().astype(np.uint8)


def map_overlay(image: np.ndarray, grid: dict, mos_range, opacity: float = 0.55) -> Image.Image:
    """The heat map over `image` (the image scored, or a smaller copy), with its colour scale
    along the bottom. The map is stretched from its frame onto the image, which is the frame
    itself (preprocess.mode native) or what was resized to it (resize)."""
    height, width = image.shape[:2]
    scale = min(1.0, MAX_MAP_SIDE / max(grid["width"], grid["height"]))
    values = np.asarray(Image.fromarray(map_values(grid, scale).astype(np.float32))
                        .resize((width, height), Image.Resampling.NEAREST))
    covered = ~np.isnan(values)[..., None]
    heat = ramp_colours(np.nan_to_num(values), mos_range)
    blended = np.where(covered, (1 - opacity) * image + opacity * heat, image)
    legend = ramp_colours(np.linspace(*mos_range, width), mos_range)[None].repeat(LEGEND_HEIGHT, 0)
    drawn = Image.fromarray(np.concatenate([blended.round().astype(np.uint8), legend]))
    draw = ImageDraw.Draw(drawn)
    for text, anchor, x in ((f"{mos_range[0]:g}", "lm", 2), ("MOS", "mm", width // 2),
                            (f"{mos_range[1]:g}", "rm", width - 2)):
        draw.text((x, height + LEGEND_HEIGHT // 2), text, fill="black", anchor=anchor)
    return drawn
