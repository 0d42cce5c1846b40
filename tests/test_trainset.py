"""The generated training set (`nriqa.data.trainset`) and continuous distortion strengths."""

from __future__ import annotations

import hashlib
import itertools
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nriqa.core.errors import NriqaError
from nriqa.data.distortions import DISTORTIONS, LEVELS, PSNR_TOLERANCE, TID2013_PSNR, _psnr
from nriqa.data.labels import PRISTINE_MOS
from nriqa.data.synthetic import REFERENCE_SOURCES
from nriqa.data.trainset import (
    TRAINING_PHOTOS,
    check_photos,
    generate_training_set,
    make_image,
    reference_crop,
)

pytestmark = pytest.mark.integration  # the Debian photos of `make system-deps`

TINY = dict(num_images=12, image_size=(64, 48), seed=3, pristine_fraction=0.0, progress=False)


@pytest.fixture(scope="module")
def tiny_trainset(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("trainset")
    generate_training_set(out_dir, **TINY)
    return out_dir


def digest(out_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(out_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out_dir.rglob("*")) if p.is_file()}


def test_index_and_images(tiny_trainset):
    index = pd.read_csv(tiny_trainset / "index.csv")
    assert list(index.columns) == ["image", "reference", "distortion", "level", "mos", "mos_std", "path"]
    assert len(index) == 12 and index["image"].is_unique
    assert index["mos"].between(0, 9).all() and index["level"].between(0.5, 5.5).all()
    assert set(index["distortion"]) <= set(DISTORTIONS)
    from PIL import Image

    for path in index["path"]:
        with Image.open(tiny_trainset / path) as image:
            assert image.size == (64, 48) and image.mode == "RGB"


def test_pristine_images_are_undistorted_untyped_and_labelled_best(tmp_path):
    index = generate_training_set(tmp_path, **{**TINY, "num_images": 40, "pristine_fraction": 0.3})
    pristine = index[index["distortion"] == 0]
    assert 5 <= len(pristine) <= 20  # 30% of 40, drawn per image
    assert pristine["level"].isna().all() and (pristine["mos"] == round(PRISTINE_MOS, 5)).all()
    assert PRISTINE_MOS > index.loc[index["distortion"] > 0, "mos"].quantile(0.9)
    for row in pristine.itertuples():
        # The photo crop itself: the same image as drawn without any pristine share.
        number = int(row.image[1:6])
        image, _ = make_image(TINY["seed"], number, TINY["image_size"], tuple(DISTORTIONS), 0.3)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / row.path)), image)
    with pytest.raises(NriqaError, match="pristine_fraction"):
        generate_training_set(tmp_path / "x", **{**TINY, "pristine_fraction": 1.0})


def test_same_seed_same_bytes_other_seed_other_images(tiny_trainset, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    again.mkdir(), other.mkdir()
    generate_training_set(again, **TINY)
    generate_training_set(other, **{**TINY, "seed": 4})
    assert digest(again) == digest(tiny_trainset)
    assert digest(other)["index.csv"] != digest(tiny_trainset)["index.csv"]


def test_training_photos_are_not_validation_or_test_content():
    # Validation and test references are cut from images inside Python packages; training
    # photos come from Debian packages. No file may serve both.
    references = {Path(str(resources.files(s.package).joinpath(s.path))).resolve() for s in REFERENCE_SOURCES}
    training = {path.resolve() for _, path in TRAINING_PHOTOS}
    assert not references & training
    hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in references}
    assert not hashes & {hashlib.sha256(p.read_bytes()).hexdigest() for p in training}


def test_missing_photos_name_the_debian_package():
    with pytest.raises(NriqaError, match="mate-backgrounds"):
        check_photos((("mate-backgrounds", Path("/nonexistent/photo.jpg")),))


@pytest.mark.parametrize("arguments", [{"num_images": 0}, {"image_size": (16, 64)},
                                       {"distortion_types": (25,)}])
def test_bad_arguments_raise(tmp_path, arguments):
    with pytest.raises(NriqaError):
        generate_training_set(tmp_path, **{**TINY, **arguments})


def test_continuous_strengths_meet_the_calibrated_levels():
    for distortion in DISTORTIONS.values():
        for level in LEVELS:
            raise_contrast = distortion.number == 17 and level % 2 == 0
            assert distortion.strength_at(float(level), raise_contrast) == pytest.approx(
                distortion.strength_for(level))
        between = distortion.strength_at(2.5)
        low, high = sorted(distortion.strength_at(p) for p in (2.0, 3.0))
        assert low <= between <= high
    with pytest.raises(NriqaError):
        DISTORTIONS[1].strength_at(6.0)


def test_every_type_accepts_the_whole_strength_range():
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3)).astype(np.uint8)
    for distortion in DISTORTIONS.values():
        for position in (0.5, 1.7, 5.5):
            for raise_contrast in (False, True):
                out = distortion.apply_strength(image, distortion.strength_at(position, raise_contrast),
                                                np.random.default_rng(1))
                assert out.shape == image.shape and out.dtype == np.uint8


def test_the_psnr_targets_fall_level_by_level():
    # The search steps towards lower PSNR for a stronger level: each type's targets must fall.
    for targets in TID2013_PSNR.values():
        assert all(a > b for a, b in itertools.pairwise(targets))
    # Block-wise distortions, contrast and saturation change keep their calibrated parameter.
    assert set(DISTORTIONS) - set(TID2013_PSNR) == {15, 17, 18}


@pytest.mark.parametrize("number", [1, 2, 8, 10, 11, 19])
def test_training_images_have_tid2013s_psnr_on_any_content(number):
    """A level is a loss of fidelity, as in TID2013, not a parameter: the calibrated JPEG2000
    ratio of level 1 leaves a smooth crop at 45 dB and a busy one at 30."""
    distortion = DISTORTIONS[number]
    crops = [reference_crop(np.random.default_rng([5, k]), (128, 96))[1] for k in range(6)]
    # JPEG's levels 1-2 (37.5, 34.5 dB) lie past quality 100 on busy crops: chroma subsampling
    # alone leaves the busiest default crops at 30-32 dB.
    for position in (3.0, 4.5) if number == 10 else (2.0, 3.0, 4.5):
        target = distortion.psnr_at(position)
        errors = [abs(_psnr(crop, distortion.matched(crop, position, seed=k)) - target)
                  for k, crop in enumerate(crops)]
        assert np.median(errors) <= PSNR_TOLERANCE, (position, errors)
        again = distortion.matched(crops[0], position, seed=0)
        np.testing.assert_array_equal(again, distortion.matched(crops[0], position, seed=0))
