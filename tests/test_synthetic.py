"""The synthetic TID2013 generator: layout, naming quirks, determinism, distortions and labels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from nriqa.core.errors import NriqaError
from nriqa.data.distortions import DISTORTIONS, distort
from nriqa.data.synthetic import generate_tid2013_like, load_reference

TINY = dict(num_references=2, image_size=(96, 64), distortion_types=(1, 2, 11, 13, 17),
            levels=(1, 2, 3, 4, 5), seed=2013, progress=False)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("tid")
    generate_tid2013_like(out_dir, **TINY)
    return out_dir


def read_labels(out_dir: Path) -> tuple[list[str], list[float], list[float]]:
    pairs = [line.split() for line in (out_dir / "mos_with_names.txt").read_text().splitlines()]
    stds = [float(line) for line in (out_dir / "mos_std.txt").read_text().splitlines()]
    return [name for _, name in pairs], [float(mos) for mos, _ in pairs], stds


def digest(out_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(out_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out_dir.rglob("*")) if p.is_file()}


def test_layout_and_reference_names(tiny_dataset):
    assert sorted(p.name for p in (tiny_dataset / "reference_images").iterdir()) == ["I01.BMP", "i02.bmp"]
    assert len(list((tiny_dataset / "distorted_images").iterdir())) == 2 * 5 * 5
    from PIL import Image

    with Image.open(next((tiny_dataset / "distorted_images").iterdir())) as image:
        assert (image.format, image.mode, image.size) == ("BMP", "RGB", (96, 64))


def test_list_order_and_case_quirks(tiny_dataset):
    names, mos, stds = read_labels(tiny_dataset)
    assert len(names) == len(mos) == len(stds) == 50
    # Ordered by reference, type, level.
    assert [n.lower() for n in names[:6]] == ["i01_01_1.bmp", "i01_01_2.bmp", "i01_01_3.bmp", "i01_01_4.bmp", "i01_01_5.bmp", "i01_02_1.bmp"]
    uppercase = [n for n in names if n.startswith("I")]
    assert sorted(uppercase) == sorted(
        f"I{r:02d}_{t:02d}_1.{ext}" for r in (1, 2) for t, ext in ((1, "BMP"), (11, "BMP"), (13, "bmp"))
    )
    assert all(n == n.lower() for n in names if not n.startswith("I"))
    # Every listed name matches exactly one file, ignoring case, and some only ignoring case.
    on_disk = [p.name for p in (tiny_dataset / "distorted_images").iterdir()]
    for name in names:
        assert sum(f.lower() == name.lower() for f in on_disk) == 1
    assert len(set(names) - set(on_disk)) > 0
    assert all(line.split()[0].count(".") == 1 and len(line.split()[0].split(".")[1]) == 5 for line in (tiny_dataset / "mos_with_names.txt").read_text().splitlines())


def test_same_arguments_give_identical_bytes(tiny_dataset, tmp_path):
    generate_tid2013_like(tmp_path, **TINY)
    assert digest(tmp_path) == digest(tiny_dataset)


def test_subset_reproduces_the_same_images(tiny_dataset, tmp_path):
    generate_tid2013_like(tmp_path, **{**TINY, "num_references": 1, "distortion_types": (11,), "levels": (3,)})
    subset = digest(tmp_path / "distorted_images")
    full = digest(tiny_dataset / "distorted_images")
    assert subset == {name: full[name] for name in subset}


@pytest.fixture(scope="module")
def small_reference() -> np.ndarray:
    return load_reference(1, (96, 64))


@pytest.mark.parametrize("distortion_type", sorted(DISTORTIONS))
def test_each_type_distorts_more_at_level_5(small_reference, distortion_type):
    psnr = {}
    for level in (1, 5):
        # The same random draws at both levels, so only the strength differs.
        distorted = distort(small_reference, distortion_type, level, np.random.default_rng(7))
        assert distorted.shape == small_reference.shape and distorted.dtype == np.uint8
        assert not np.array_equal(distorted, small_reference)
        psnr[level] = peak_signal_noise_ratio(small_reference, distorted)
    assert psnr[5] < psnr[1]


def test_labels_are_on_the_mos_scale_and_fall_with_level(tiny_dataset):
    names, mos, _ = read_labels(tiny_dataset)
    assert all(0.0 <= m <= 9.0 for m in mos)
    by_level = {level: [m for n, m in zip(names, mos) if n[-5] == str(level)] for level in (1, 5)}
    assert np.mean(by_level[5]) < np.mean(by_level[1])


@pytest.mark.parametrize(
    "arguments",
    [
        {"num_references": 0},
        {"num_references": 26},
        {"distortion_types": (25,)},
        {"distortion_types": (0, 1)},
        {"levels": (6,)},
        {"levels": (0,)},
        {"image_size": (31, 64)},
        {"image_size": (96, 16)},
    ],
)
def test_bad_arguments_raise(tmp_path, arguments):
    with pytest.raises(NriqaError):
        generate_tid2013_like(tmp_path, **{**TINY, **arguments})


def test_distort_rejects_bad_inputs(small_reference):
    rng = np.random.default_rng(0)
    with pytest.raises(NriqaError):
        distort(small_reference, 25, 1, rng)
    with pytest.raises(NriqaError):
        distort(small_reference, 1, 6, rng)
    with pytest.raises(NriqaError):
        distort(small_reference[:20, :20], 1, 1, rng)


def test_each_image_has_tid2013s_psnr_for_its_level(tiny_dataset, tmp_path):
    """With `psnr_matched`, as TID2013 made its images; without (the default), the calibrated
    parameter, whose JPEG2000 misses it on these small references."""
    from nriqa.data.distortions import PSNR_TOLERANCE

    generate_tid2013_like(tmp_path, **{**TINY, "psnr_matched": True})
    for number in (1, 2, 11):
        for level in TINY["levels"]:
            name = f"i01_{number:02d}_{level}.bmp"
            target = DISTORTIONS[number].psnr_at(float(level))
            matched, plain = (_psnr_of(root, name) for root in (tmp_path, tiny_dataset))
            assert abs(matched - target) <= PSNR_TOLERANCE, (number, level, matched, target)
            if number == 11:
                assert abs(plain - target) > 2 * PSNR_TOLERANCE


def _psnr_of(root: Path, name: str) -> float:
    from PIL import Image

    stem = name.lower()
    path = next(p for p in (root / "distorted_images").iterdir() if p.name.lower() == stem)
    with Image.open(path) as image, Image.open(min((root / "reference_images").iterdir())) as ref:
        return peak_signal_noise_ratio(np.asarray(ref.convert("RGB")), np.asarray(image.convert("RGB")),
                                       data_range=255)
