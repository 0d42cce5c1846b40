"""The one image path shared by preprocess, train, evaluate, the service and the CLI.

`decode_image` turns a file in one of `IMAGE_FORMATS` into an 8-bit RGB array; `apply_policy` applies the
preprocess policy (native resolution or a whole-image resize) and makes sure a crop fits;
`grid_crops` cuts the fixed set of crops whose mean prediction is an image's score.
Training draws random crops from the same `apply_policy` output, so the network sees the
same pixels everywhere. Normalization (scaling, local contrast normalization) lives inside
the Keras model, so nothing here depends on the network.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from nriqa.core.errors import NriqaError

if TYPE_CHECKING:  # numpy and Pillow are all this module loads (nriqa.model.portable)
    from nriqa.core.config import Config

# Guards against decompression bombs; the service passes its own configured limit.
DEFAULT_MAX_PIXELS = 64_000_000
MIN_SIDE = 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The formats read, as Pillow names them (`Image.open(..., formats=IMAGE_FORMATS)`): the
# datasets' (TID2013 BMP, KADID-10k PNG, KonIQ-10k JPEG) and the documented ones. A file in any
# other format Pillow knows (GIF, TGA, ICO, JPEG 2000, EPS, which Ghostscript would draw...) is
# refused before its decoder runs. A camera's multi-picture JPEG (MPO) opens as a JPEG.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")
FORMAT_NAMES = "JPEG, PNG, BMP, WebP, TIFF"


def decode_image(source: str | Path | bytes, *, name: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file or bytes to an HxWx3 uint8 RGB array, upright as its EXIF says.

    Grayscale, palette, RGBA and colour-keyed transparency (composited on white), CMYK and
    16-bit images are converted. Every problem raises NriqaError naming the image: empty,
    not an image in one of `IMAGE_FORMATS`, damaged (a PNG checksum), truncated, too many
    pixels, too small.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "upload")
    if isinstance(source, bytes):
        if not source:
            raise NriqaError(f"{label}: the file is empty (0 bytes)")
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise NriqaError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise NriqaError(f"{label}: the file is empty (0 bytes)")
        stream = path.open("rb")
    try:
        _check_png_checksums(stream, label)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream, formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise NriqaError(f"{label}: {width}x{height} has {width * height} pixels, "
                                     f"more than the limit of {max_pixels}")
                image.load()  # decode now, so truncated data fails here and not later
                ImageOps.exif_transpose(image, in_place=True)  # a copy otherwise, even when upright
                array = _to_rgb8(image)
    except NriqaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise NriqaError(f"{label}: refused as a possible decompression bomb ({error})") from error
    except Image.UnidentifiedImageError as error:
        raise NriqaError(f"{label}: not an image in a format we read ({FORMAT_NAMES})"
                         ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise NriqaError(f"{label}: the image data is damaged or truncated ({error})") from error
    finally:
        stream.close()
    if min(array.shape[:2]) < MIN_SIDE:
        raise NriqaError(f"{label}: {array.shape[1]}x{array.shape[0]} is too small to judge; "
                         f"both sides must be at least {MIN_SIDE} pixels")
    return array


def _check_png_checksums(stream, label: str) -> None:
    """Refuse a PNG whose chunk checksums do not match: Pillow checks the chunks before the
    image data but not the image data (IDAT) itself, so damaged pixels would be scored."""
    if stream.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE:
        while len(header := stream.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            crc = zlib.crc32(kind)
            while length and (block := stream.read(min(length, 1 << 20))):
                crc, length = zlib.crc32(block, crc), length - len(block)
            stored = stream.read(4)
            if length or len(stored) < 4:
                break  # truncated: the decoder says so
            if crc != int.from_bytes(stored, "big"):
                raise NriqaError(f"{label}: the file is damaged (the checksum of its PNG "
                                 f"{kind.decode('latin-1')!r} chunk does not match)")
            if kind == b"IEND":
                break
    stream.seek(0)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float grayscale: scale the used range to 8 bits instead of clipping it.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.round(values / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    # "transparency" in info: a palette entry or (L, RGB) a colour key that PNG's tRNS marks clear.
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return _on_white(image if image.mode == "RGBA" else image.convert("RGBA"))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # no extra copy


# Rows composited at a time: the full-size copies (white canvas, RGBA and RGB conversions) that
# Image.alpha_composite makes cost 0.9 GB at 40 megapixels; strips keep the extra memory small.
_STRIP_ROWS = 256


def _on_white(rgba: Image.Image) -> np.ndarray:
    """An RGBA image composited on white, written strip by strip into the one RGB array."""
    width, height = rgba.size
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, _STRIP_ROWS):
        strip = np.asarray(rgba.crop((0, top, width, min(top + _STRIP_ROWS, height))), np.uint16)
        alpha = strip[..., 3:]
        # Rounded as Pillow's alpha_composite rounds: colour * a + white * (255 - a), over 255.
        out[top:top + len(strip)] = (strip[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return out


def apply_policy(image: np.ndarray, *, mode: str, resize: tuple[int, int] | list[int],
                 crop_size: int) -> np.ndarray:
    """Apply the preprocess policy, then reflect-pad so that at least one crop fits.

    `native` keeps every pixel (resizing smooths away noise and blocking artefacts);
    `resize` scales the whole image to `resize` (width, height). Padding rather than
    upscaling keeps the texture of small images intact.
    """
    return pad_to_crop(scale_policy(image, mode=mode, resize=resize), crop_size)


def scale_policy(image: np.ndarray, *, mode: str, resize: tuple[int, int] | list[int]) -> np.ndarray:
    """The preprocess policy without the padding: `native` as is, `resize` to (width, height)."""
    if mode == "resize":
        width, height = resize
        return np.asarray(Image.fromarray(image).resize((int(width), int(height)),
                                                        Image.Resampling.BICUBIC))
    if mode != "native":
        raise NriqaError(f"preprocess.mode: unknown policy {mode!r} (expected native or resize)")
    return image


def pad_to_crop(image: np.ndarray, crop_size: int) -> np.ndarray:
    """Reflect-pad each side shorter than `crop_size` up to it, evenly on both ends."""
    pad_h = max(0, crop_size - image.shape[0])
    pad_w = max(0, crop_size - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                               (0, 0)), mode="symmetric")
    return image


def grid_crops(image: np.ndarray, *, crop_size: int, stride: int, max_crops: int) -> np.ndarray:
    """A deterministic grid of crops covering the image, evenly thinned to at most `max_crops`.

    A side shorter than a crop is padded crop by crop, after thinning: the crops equal those
    of the whole padded image, but a long thin image (8x5,000,000) is never copied padded.
    """
    corners = grid_corners(image.shape[0], image.shape[1], crop_size=crop_size, stride=stride,
                           max_crops=max_crops)
    return np.stack([pad_to_crop(image[t:t + crop_size, l:l + crop_size], crop_size)
                     for t, l in corners])


def grid_corners(height: int, width: int, *, crop_size: int, stride: int,
                 max_crops: int) -> list[tuple[int, int]]:
    """(top, left) of each crop `grid_crops` cuts from a height x width image, in its order: the
    grid of crops every `stride` pixels (and flush with the far edges), row by row.

    A grid of more than `max_crops` keeps evenly spaced rows and columns of it, as many crops as
    fit, in the shape closest to the whole grid's: the crops still cover the whole image (a
    12-megapixel photo's 48 crops are a 6 x 8 grid, not a few diagonal lines of it).
    """
    tops = _positions(height, crop_size, stride)
    lefts = _positions(width, crop_size, stride)
    if len(tops) * len(lefts) > max_crops:
        rows, columns = _thinned_shape(len(tops), len(lefts), max_crops)
        tops, lefts = evenly_spaced(tops, rows), evenly_spaced(lefts, columns)
    return [(top, left) for top in tops for left in lefts]


def _thinned_shape(rows: int, columns: int, max_crops: int) -> tuple[int, int]:
    """The most cells, at most `max_crops`, of a rows x columns grid, in the shape most like it
    (the smallest ratio of the two aspect ratios; on a tie, fewer rows). Integers only, so the
    web page (ondevice.js) makes the same choice."""
    best = (1, min(columns, max_crops))
    for r in range(2, rows + 1):
        c = min(columns, max_crops // r)
        if c == 0:
            break
        if r * c > best[0] * best[1] or (
                r * c == best[0] * best[1] and _less_skewed((r, c), best, rows, columns)):
            best = (r, c)
    return best


def _less_skewed(shape, other, rows: int, columns: int) -> bool:
    """Whether r x c is closer in aspect to rows x columns than `other` is, compared exactly:
    the skew of r x c is max(c * rows, r * columns) / min(c * rows, r * columns)."""
    def skew(r, c):
        a, b = c * rows, r * columns
        return max(a, b), min(a, b)

    (n1, d1), (n2, d2) = skew(*shape), skew(*other)
    return n1 * d2 < n2 * d1


def _positions(length: int, crop: int, stride: int) -> list[int]:
    last = max(0, length - crop)
    positions = list(range(0, last + 1, stride))
    if positions[-1] != last:
        positions.append(last)  # cover the far edge too
    return positions


def evenly_spaced(items: list, count: int) -> list:
    """`count` of `items`, evenly spaced, the first and the last included."""
    keep = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in keep]


def crops_for_prediction(image: np.ndarray, preprocessing: dict) -> np.ndarray:
    """The crops a trained model scores for one decoded image (see `preprocessing_config`)."""
    scaled = scale_policy(image, mode=preprocessing["mode"], resize=preprocessing["resize"])
    return grid_crops(scaled, crop_size=preprocessing["crop_size"],
                      stride=preprocessing["stride"], max_crops=preprocessing["max_crops"])


def prediction_layout(image: np.ndarray, preprocessing: dict) -> tuple[int, int, list]:
    """Where `crops_for_prediction`'s crops lie: (width, height) of the frame they are cut
    from (the image after the preprocess policy) and their (top, left) corners in it, in order."""
    if preprocessing["mode"] == "resize":
        width, height = (int(side) for side in preprocessing["resize"])
    else:
        height, width = image.shape[:2]
    return width, height, grid_corners(height, width, crop_size=preprocessing["crop_size"],
                                       stride=preprocessing["stride"],
                                       max_crops=preprocessing["max_crops"])


def preprocessing_config(config: Config) -> dict:
    """The slice of params.yaml that prediction needs; saved beside every model (model.json)."""
    return {
        "mode": config.preprocess.mode,
        "resize": list(config.preprocess.resize),
        "crop_size": config.model.input_size,
        "stride": config.predict.stride,
        "max_crops": config.predict.max_crops,
    }
