"""Helpers shared by the serving tests (test_cli, test_service, test_webpage, test_serving;
their fixtures are in conftest.py): tiny models, test pictures and uploads, the
`python -m nriqa score` command, and a packaged model served by a real `bentoml serve`."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import (
    PROJECT,
    VENV_BIN,
    config,
    free_port,
    model_config,
    run,
    stop_process_group,
    tool_env,
)

# The tiny model's "no distortion" logit bias: the likeliest class for an image of weak features.
UNDISTORTED_BIAS = 7.5
TINY_PREPROCESSING = {"mode": "native", "resize": [224, 224], "crop_size": 32, "stride": 32,
                      "max_crops": 4}


def make_tiny_model(folder: Path, distortion_types: int = 24, max_crops: int = 4,
                    undistorted_class: bool = True) -> Path:
    """A small untrained model whose scores still depend on the image.

    Fresh weights give every image almost exactly the initial MOS, which would make score
    comparisons pass for any image; a large random output layer spreads them out. The same
    for the distortion-type logits (with `distortion_types` > 0), so the type probabilities
    are far from uniform and their order is clear. With a type head, it has the optional
    "no distortion" class too (`model.undistorted_class`), so the service and the CLI are tested
    on it; the pipeline tests train the default head. That class's bias makes it the likeliest
    for some test pictures (those of weakest features, `textured(10)` among them: no distortion
    stands out), while for the others one type stands out, so both answers are tested.
    """
    import keras

    from nriqa.model.bundle import save_bundle
    from nriqa.model.network import make_model

    keras.utils.set_random_seed(3)
    model = make_model(model_config(input_size=32, width=0.25, depth=2, head_units=(8,), distortion_types=distortion_types, undistorted_class=undistorted_class and bool(distortion_types)))
    for seed, name in enumerate(["mos", "distortion_logits"][:1 + bool(distortion_types)], 3):
        head = model.get_layer(name)
        kernel, bias = head.get_weights()
        if name == "distortion_logits" and undistorted_class:
            bias[-1] = UNDISTORTED_BIAS
        spread = 3000.0 if name == "mos" else 30000.0
        head.set_weights([np.random.default_rng(seed).normal(0, spread, kernel.shape)
                          .astype("float32"), bias])
    preprocessing = dict(TINY_PREPROCESSING, max_crops=max_crops)
    return save_bundle(model, folder, {"preprocessing": preprocessing, "mos_range": [0.0, 9.0]})


def textured(seed: int, size=(96, 64)) -> Image.Image:
    """A noisy, blurred-in-places picture, different for each seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 4 + 6 * (seed % 5), (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def check_distortions(distortions, note, probabilities=None, atol: float = 1e-3) -> None:
    """Either three `{type, name, probability}`, likeliest first, named as
    nriqa.data.distortions names them (type 0: "no distortion"), and no note; or, when no
    distortion stands out, none and the note saying so. With `probabilities` (the image's type
    probabilities from `score_images`): the answer `distortion_stands_out` gives them, each
    probability the model's for that type, and no type left out likelier."""
    from nriqa.core.taxonomy import head_types, type_name
    from nriqa.model.prediction import NO_STANDOUT_NOTE, distortion_stands_out

    if probabilities is not None:
        assert bool(distortions) == distortion_stands_out(probabilities), (distortions, note)
    if distortions == []:
        assert note == NO_STANDOUT_NOTE
        return
    assert note is None
    assert isinstance(distortions, list) and len(distortions) == 3, distortions
    for entry in distortions:
        assert set(entry) == {"type", "name", "probability"}
        assert entry["type"] in range(25) and entry["name"] == type_name(entry["type"])
        assert 0.0 <= entry["probability"] <= 1.0
    shown = [entry["probability"] for entry in distortions]
    assert shown == sorted(shown, reverse=True)
    assert len({entry["type"] for entry in distortions}) == 3
    if probabilities is not None:
        column = {t: k for k, t in enumerate(head_types(len(probabilities)))}
        for entry in distortions:
            assert entry["probability"] == pytest.approx(probabilities[column[entry["type"]]],
                                                         abs=atol)
        left_out = np.delete(probabilities, [column[entry["type"]] for entry in distortions])
        assert left_out.max() <= shown[-1] + atol


def local_scores(model_dir: Path, files: list[Path]):
    """(MOS, type probabilities or None) computed in this process, the reference values."""
    from nriqa.core.imaging import crops_for_prediction, decode_image
    from nriqa.model.bundle import load_model
    from nriqa.model.prediction import score_images

    model, info = load_model(model_dir)
    return score_images(model, [crops_for_prediction(decode_image(f), info["preprocessing"])
                                for f in files])


def score_cli(args: list[str], check: bool = True):
    return run([sys.executable, "-m", "nriqa", "score", *args], cwd=PROJECT,
               env=tool_env(), check=check, timeout=300)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- The served model ----------------------------------------------------------------------------

MAX_PIXELS = 100_000          # NRIQA_MAX_PIXELS for the test server
MAX_UPLOAD_BYTES = 2_000_000  # NRIQA_MAX_UPLOAD_BYTES for the test server
MAX_BATCH_IMAGES = 4          # NRIQA_MAX_BATCH_IMAGES for the test server
MAX_BATCH_PIXELS = 200_000    # NRIQA_MAX_BATCH_PIXELS for the test server


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def good_images() -> dict[str, bytes]:
    """Every format and colour mode the service promises to read."""
    rotated = textured(16, (64, 96))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    gray16 = Image.fromarray((np.asarray(textured(13).convert("L"), dtype=np.uint16) * 257))
    return {
        "photo.jpg": encode(textured(10), "JPEG", quality=90),
        "photo.png": encode(textured(11), "PNG"),
        "photo.bmp": encode(textured(12), "BMP"),
        "photo.webp": encode(textured(13), "WEBP", quality=90),
        "photo.tiff": encode(textured(14), "TIFF"),
        "gray.png": encode(textured(15).convert("L"), "PNG"),
        "rgba.png": encode(textured(17).convert("RGBA"), "PNG"),
        "palette.png": encode(textured(18).convert("P"), "PNG"),
        "gray16.png": encode(gray16, "PNG"),
        "cmyk.jpg": encode(textured(19).convert("CMYK"), "JPEG"),
        "rotated.jpg": encode(rotated, "JPEG", exif=exif),
    }


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def png_with_broken_checksum() -> bytes:
    """A good PNG whose image data (IDAT) checksum has one byte flipped."""
    data = bytearray(encode(textured(2), "PNG"))
    start = data.index(b"IDAT") - 4
    data[start + 8 + int.from_bytes(data[start:start + 4], "big")] ^= 0xFF
    return bytes(data)


def export_tiny_model(model_dir: Path, folder: Path) -> Path:
    """The model in `model_dir` exported as the export stage exports the champion (model.onnx,
    model.tflite, model.json), traced to its model.keras by sha256 as packaging checks."""
    from nriqa.model.bundle import WEIGHTS, file_sha256, load_model
    from nriqa.model.export import export_portable

    model, info = load_model(model_dir)
    return export_portable(model, info, folder, categories=config().evaluate.categories,
                           source={"mlflow_run_id": "run-abc123", "version": "3",
                                   "model_sha256": file_sha256(model_dir / WEIGHTS)})


class Server:
    """A tiny model packaged with `python -m stages.package --model-dir` into a temporary BentoML
    home, its Bento served by `bentoml serve` on a free port, with the small limits above (env
    overrides) so the limit cases are cheap. With `portable` (the default), the model's export
    is packaged too (`--portable`), for the web page's scoring on the device."""

    def __init__(self, root: Path, distortion_types: int = 24, portable: bool = True):
        self.root = root
        # Up to 48 crops an image, as params.yaml has it: the example images' quality maps
        # are then thinned grids (test_webpage.py).
        self.model_dir = make_tiny_model(root / "model", distortion_types=distortion_types,
                                         max_crops=48)
        self.portable_dir = export_tiny_model(self.model_dir, root / "portable") if portable else None
        self.env = tool_env(BENTOML_HOME=str(root / "bentoml_home"), TF_CPP_MIN_LOG_LEVEL="2",
                            NRIQA_MAX_PIXELS=str(MAX_PIXELS),
                            NRIQA_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
                            NRIQA_MAX_BATCH_IMAGES=str(MAX_BATCH_IMAGES),
                            NRIQA_MAX_BATCH_PIXELS=str(MAX_BATCH_PIXELS))
        portable_args = ["--portable", str(self.portable_dir)] if portable else []
        run([sys.executable, "-m", "stages.package", "--model-dir", str(self.model_dir),
             "--run-id", "run-abc123", "--version", "3", *portable_args,
             "--report", str(root / "bento.json")],
            cwd=PROJECT, env=self.env, timeout=600)
        self.report = json.loads((root / "bento.json").read_text())
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = (root / "serve.log").open("w")
        # Its own process group, so teardown stops the server and all its workers.
        self.process = subprocess.Popen(
            [str(VENV_BIN / "bentoml"), "serve", self.report["bento_tag"], "--host", "127.0.0.1",
             "--port", str(port)], cwd=root, env=self.env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_until_scoring()

    def _wait_until_scoring(self, timeout: float = 300) -> None:
        # /readyz answers before the model worker has loaded; a real request proves both are up.
        image = encode(textured(0), "PNG")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"bentoml serve exited:\n{self.logs()[-6000:]}")
            try:
                if requests.post(f"{self.url}/score", files={"image": ("x.png", image)},
                                 timeout=30).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
        raise AssertionError(f"the service did not answer in {timeout}s:\n{self.logs()[-6000:]}")

    def logs(self) -> str:
        self.log.flush()
        return (self.root / "serve.log").read_text()

    def stop(self) -> None:
        stop_process_group(self.process)
        self.log.close()

    def score(self, name: str, content: bytes, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/score", files={"image": (name, content)}, timeout=60,
                             **kwargs)
