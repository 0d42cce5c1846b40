"""The shared image path: decoding every supported kind of file, the policy, the crop grid."""

import io

import numpy as np
import pytest
from PIL import Image

from nriqa.core.errors import NriqaError
from nriqa.core.imaging import (
    apply_policy,
    crops_for_prediction,
    decode_image,
    grid_corners,
    grid_crops,
    prediction_layout,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_round_trip(fmt):
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(encode(Image.fromarray(RGB), fmt, **kwargs))
    assert decoded.dtype == np.uint8 and decoded.shape == (40, 60, 3)
    np.testing.assert_array_equal(decoded, RGB)


# A PostScript file: Pillow would hand it to Ghostscript, a program, to draw it.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 60 40\n"
       b"0 0 moveto 60 40 lineto stroke showpage\n%%EOF\n")
OTHER_FORMATS = ["GIF", "TGA", "PCX", "ICO", "SGI", "QOI", "JPEG2000", "DDS", "PPM", "EPS"]


@pytest.mark.parametrize("fmt", OTHER_FORMATS)
def test_a_format_outside_the_five_is_refused_naming_them(fmt, tmp_path, monkeypatch):
    """Pillow knows some forty formats; only JPEG, PNG, BMP, WebP and TIFF are opened, and a
    file in another is refused before its decoder (for EPS, Ghostscript) runs."""
    from PIL import EpsImagePlugin

    launched = []

    def ghostscript(*args, **kwargs):
        launched.append(args)
        raise OSError("Ghostscript is not to run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    data = EPS if fmt == "EPS" else encode(Image.fromarray(RGB), fmt)
    path = tmp_path / "picture.jpg"  # the name does not matter, the content does
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(NriqaError) as refused:
            decode_image(source, name="picture.jpg")
        assert str(refused.value) == ("picture.jpg: not an image in a format we read "
                                      "(JPEG, PNG, BMP, WebP, TIFF)")
    assert not launched


def test_the_five_formats_are_read_and_a_cameras_multi_picture_jpeg_is_a_jpeg():
    from nriqa.core.imaging import IMAGE_FORMATS

    assert IMAGE_FORMATS == ("JPEG", "PNG", "BMP", "WEBP", "TIFF")
    image = Image.fromarray(RGB)
    for fmt in IMAGE_FORMATS:
        assert decode_image(encode(image, fmt)).shape == (40, 60, 3), fmt
    # MPO: a JPEG with more pictures after the first (phones write them); the first is read.
    mpo = encode(image, "MPO", save_all=True, append_images=[Image.new("RGB", (60, 40))])
    np.testing.assert_array_equal(decode_image(mpo), decode_image(encode(image, "JPEG")))


def decoded_as(image: Image.Image, fmt: str = "PNG") -> np.ndarray:
    decoded = decode_image(encode(image, fmt))
    assert decoded.dtype == np.uint8 and decoded.shape == (*image.size[::-1], 3)
    return decoded


def test_grayscale_and_one_bit_become_equal_channels():
    gray = np.asarray(Image.fromarray(RGB).convert("L"))
    np.testing.assert_array_equal(decoded_as(Image.fromarray(gray)), np.dstack([gray] * 3))
    bits = Image.fromarray(RGB[..., 0] > 127)  # mode "1"
    assert bits.mode == "1"
    np.testing.assert_array_equal(decoded_as(bits), np.dstack([np.where(RGB[..., 0] > 127, 255, 0)] * 3))


def test_palette_pixels_are_their_palette_colours():
    image = Image.fromarray(RGB).quantize(colors=16)
    assert image.mode == "P"
    palette = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(decoded_as(image), palette[np.asarray(image)])


def test_cmyk_is_converted_as_pillow_converts_it():
    cmyk = Image.fromarray(RNG.integers(0, 256, (40, 60, 4), dtype=np.uint8), mode="CMYK")
    ink = np.asarray(cmyk, dtype=float)
    # Pillow's (12) conversion: each colour is what its ink and the black ink leave of white.
    expected = (255 - ink[..., :3]) * (255 - ink[..., 3:]) / 255
    assert np.abs(decoded_as(cmyk, "TIFF") - expected).max() <= 0.5


def test_sixteen_bit_is_scaled_not_clipped():
    values = RNG.integers(0, 65536, (40, 60), dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    expected = np.round(values / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(decoded_as(image), np.dstack([expected] * 3))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_partial_alpha_is_composited_on_white(mode):
    """Documented in decode_image: alpha blends each pixel with white, alpha/255 of the colour."""
    colour = RGB if mode == "RGBA" else np.dstack([np.asarray(Image.fromarray(RGB).convert("L"))] * 3)
    alpha = RNG.integers(0, 256, (40, 60), dtype=np.uint8)
    layers = [colour[..., 0]] if mode == "LA" else [colour[..., i] for i in range(3)]
    image = Image.fromarray(np.dstack([*layers, alpha]), mode=mode)
    expected = (colour * (alpha[..., None] / 255.0) + 255.0 * (1 - alpha[..., None] / 255.0))
    difference = np.abs(decoded_as(image).astype(float) - expected)
    assert difference.max() <= 1.0  # Pillow's integer rounding


def test_rgba_transparency_is_composited_on_white():
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    assert (decode_image(encode(Image.fromarray(rgba), "PNG")) == 255).all()


def test_exif_orientation_is_applied():
    image = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.shape == (60, 40, 3)


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"this is not an image", "not an image"),
    (encode(Image.fromarray(RGB), "PNG")[:200], "damaged or truncated"),
    (encode(Image.fromarray(RGB[:1, :1]), "PNG"), "too small"),
])
def test_bad_input_names_the_problem(payload, message):
    with pytest.raises(NriqaError, match=message):
        decode_image(payload, name="upload.png")


def test_pixel_limit():
    with pytest.raises(NriqaError, match="more than the limit"):
        decode_image(encode(Image.fromarray(RGB), "PNG"), max_pixels=1000)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(NriqaError, match="missing.png: no such file"):
        decode_image(tmp_path / "missing.png")


def test_small_images_are_padded_not_upscaled():
    padded = apply_policy(RGB[:20, :30], mode="native", resize=(0, 0), crop_size=32)
    assert padded.shape == (32, 32, 3)
    np.testing.assert_array_equal(padded[6:26, 1:31], RGB[:20, :30])


def test_resize_policy():
    assert apply_policy(RGB, mode="resize", resize=(48, 36), crop_size=32).shape == (36, 48, 3)
    with pytest.raises(NriqaError, match="preprocess.mode"):
        apply_policy(RGB, mode="stretch", resize=(48, 36), crop_size=32)


def test_grid_covers_the_edges_and_respects_the_cap():
    image = np.arange(100 * 70 * 3, dtype=np.uint32).reshape(100, 70, 3).astype(np.uint8)
    crops = grid_crops(image, crop_size=32, stride=32, max_crops=100)
    assert crops.shape == (4 * 3, 32, 32, 3)  # tops 0,32,64,68 × lefts 0,32,38
    np.testing.assert_array_equal(crops[-1], image[68:, 38:])
    # Past the cap: evenly spaced rows and columns, as many crops as fit (2 x 2 of the 4 x 3).
    thinned = grid_crops(image, crop_size=32, stride=32, max_crops=5)
    assert len(thinned) == 4
    np.testing.assert_array_equal(thinned[-1], image[68:, 38:])


@pytest.mark.parametrize("height, width, shape", [(3000, 4000, (6, 8)), (512, 768, (6, 8)),
                                                  (384, 512, (6, 8)), (8, 200_000, (1, 48)),
                                                  (4000, 64, (48, 1))])
def test_a_thinned_grid_still_covers_the_whole_image(height, width, shape):
    """A large photo's crops are a coarser grid over all of it, from edge to edge, not a few
    diagonal lines of the full grid (what thinning the row-by-row list of crops gave)."""
    corners = grid_corners(height, width, crop_size=64, stride=64, max_crops=48)
    tops, lefts = sorted({t for t, _ in corners}), sorted({left for _, left in corners})
    assert (len(tops), len(lefts)) == shape and len(corners) == shape[0] * shape[1]
    assert (tops[0], tops[-1]) == (0, max(0, height - 64))
    assert (lefts[0], lefts[-1]) == (0, max(0, width - 64))
    assert corners == [(t, left) for t in tops for left in lefts]  # row by row
    for positions in (tops, lefts):  # evenly spaced: each gap within a stride of the mean one
        if len(positions) > 2:
            assert np.diff(positions).max() <= np.diff(positions).mean() + 64


@pytest.mark.parametrize("shape", [(10, 12, 3), (300, 90, 3), (64, 64, 3)])
def test_prediction_crops_for_odd_sizes(shape):
    preprocessing = {"mode": "native", "resize": [64, 64], "crop_size": 32, "stride": 32,
                     "max_crops": 8}
    crops = crops_for_prediction(np.zeros(shape, np.uint8), preprocessing)
    assert crops.shape[1:] == (32, 32, 3) and 1 <= len(crops) <= 8


@pytest.mark.parametrize("mode, shape", [("native", (100, 70, 3)), ("native", (20, 300, 3)),
                                         ("native", (300, 400, 3)), ("resize", (90, 50, 3))])
def test_layout_says_where_each_scored_crop_lies(mode, shape):
    """The quality map places each crop score where `prediction_layout` says its crop is: the
    corners must name exactly the crops that are scored, in their order, thinning included."""
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    preprocessing = {"mode": mode, "resize": [80, 60], "crop_size": 32, "stride": 32,
                     "max_crops": 7}
    crops = crops_for_prediction(image, preprocessing)
    width, height, corners = prediction_layout(image, preprocessing)
    frame = apply_policy(image, mode=mode, resize=(80, 60), crop_size=32)
    assert (width, height) == ((80, 60) if mode == "resize" else (shape[1], shape[0]))
    assert len(corners) == len(crops)
    for crop, (top, left) in zip(crops, corners):  # a short side's one crop covers all of it
        np.testing.assert_array_equal(crop, frame[top:top + 32, left:left + 32])


def test_thin_image_is_cropped_without_a_padded_copy():
    """An 8-pixel-high strip gives the crops of its padded grid, but padding is per crop: the
    whole strip padded to the crop height would take 4x its memory."""
    import tracemalloc

    strip = RNG.integers(0, 256, (8, 200_000, 3), dtype=np.uint8)
    preprocessing = {"mode": "native", "resize": [64, 64], "crop_size": 32, "stride": 32,
                     "max_crops": 4}
    tracemalloc.start()
    crops = crops_for_prediction(strip, preprocessing)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < strip.nbytes / 4, f"cropping took {peak} bytes for a {strip.nbytes}-byte strip"
    padded = apply_policy(strip, mode="native", resize=(0, 0), crop_size=32)
    np.testing.assert_array_equal(crops, grid_crops(padded, crop_size=32, stride=32, max_crops=4))


def _png_chunk_offset(data: bytes, kind: bytes) -> int:
    """Where the length field of the first `kind` chunk starts."""
    return data.index(kind) - 4


@pytest.mark.parametrize("where", ["checksum", "pixels"])
def test_png_with_a_broken_checksum_is_damaged(where):
    data = bytearray(encode(Image.fromarray(RGB), "PNG"))
    start = _png_chunk_offset(bytes(data), b"IDAT")
    length = int.from_bytes(data[start:start + 4], "big")
    # The IDAT's stored CRC, or a byte of its compressed pixels, which Pillow leaves unchecked.
    position = start + 8 + length if where == "checksum" else start + 8 + length // 2
    data[position] ^= 0xFF
    with pytest.raises(NriqaError, match="cracked.png: the file is damaged .*'IDAT'"):
        decode_image(bytes(data), name="cracked.png")


@pytest.mark.parametrize("mode, key", [("L", 7), ("RGB", (7, 8, 9))])
def test_colour_key_transparency_composites_on_white(mode, key):
    """A tRNS colour key makes those pixels clear, as alpha 0 does in RGBA."""
    pixels = RGB.copy()
    pixels[:10] = (7, 8, 9)
    image = Image.fromarray(pixels).convert(mode) if mode == "L" else Image.fromarray(pixels)
    if mode == "L":
        image.putpixel((0, 0), 7)
        pixels = np.asarray(image)
    decoded = decode_image(encode(image, "PNG", transparency=key))
    clear = pixels == key if mode == "L" else (pixels == key).all(axis=2)
    assert clear.any() and (decoded[clear] == 255).all()
    kept = np.asarray(image.convert("RGB"))[~clear]
    np.testing.assert_array_equal(decoded[~clear], kept)


# Peak resident memory of one decode, in a fresh process, per pixel of the image.
PEAK_SCRIPT = """
import resource, sys
from nriqa.core.imaging import decode_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = decode_image(sys.argv[1], max_pixels=10**9)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024 / (image.shape[0] * image.shape[1]))
"""


@pytest.mark.integration  # starts Python processes
@pytest.mark.parametrize("kind", ["RGBA PNG", "RGB JPEG", "grayscale PNG"])
def test_decoding_stays_within_its_stated_memory_per_pixel(tmp_path, kind):
    """The service budgets DECODE_BYTES_PER_PIXEL per pixel of each upload being decoded; a
    transparent PNG used to take 26 (a white canvas and RGBA and RGB copies at full size)."""
    import subprocess
    import sys

    from nriqa.serving.api import DECODE_BYTES_PER_PIXEL

    side = 4000  # 16 megapixels: the per-pixel cost, not the interpreter's, dominates
    if kind == "RGBA PNG":
        pixels = np.zeros((side, side, 4), np.uint8)
        pixels[..., 0], pixels[..., 3] = 200, np.arange(side, dtype=np.uint8)[:, None]
        path = tmp_path / "worst.png"
        Image.fromarray(pixels, "RGBA").save(path, compress_level=1)
    elif kind == "RGB JPEG":
        path = tmp_path / "photo.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)).save(path)
    else:
        path = tmp_path / "gray.png"
        Image.fromarray(np.full((side, side), 90, np.uint8)).save(path, compress_level=1)
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True,
                            text=True, check=True, timeout=300)
    assert float(result.stdout.split()[-1]) <= DECODE_BYTES_PER_PIXEL
