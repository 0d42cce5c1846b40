"""`python -m nriqa score`: folders searched recursively, CSV and JSON, unreadable files skipped."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PROJECT, run, tool_env

TINY_PREPROCESSING = {"mode": "native", "resize": [224, 224], "crop_size": 32, "stride": 32,
                      "max_crops": 4}


def make_tiny_model(folder: Path) -> Path:
    """A small untrained model whose scores still depend on the image.

    Fresh weights give every image almost exactly the initial MOS, which would make score
    comparisons pass for any image; a large random output layer spreads them out.
    """
    import keras

    from nriqa.model import make_model

    keras.utils.set_random_seed(3)
    model = make_model(input_size=32, width=0.25, depth=2, head_units=(8,))
    head = model.get_layer("mos")
    kernel, bias = head.get_weights()
    head.set_weights([np.random.default_rng(3).normal(0, 3000.0, kernel.shape).astype("float32"),
                      bias])
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "model.json").write_text(json.dumps({"preprocessing": TINY_PREPROCESSING}))
    return folder


def textured(seed: int, size=(96, 64)) -> Image.Image:
    """A noisy, blurred-in-places picture, different for each seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 4 + 6 * (seed % 5), (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "nested" / "deeper").mkdir(parents=True)
    textured(1).save(root / "a.png")
    textured(2).save(root / "nested" / "b.JPG", quality=90)
    textured(3).convert("L").save(root / "nested" / "deeper" / "c.tiff")
    textured(4).save(root / "nested" / "d.webp")
    (root / "nested" / "broken.png").write_bytes((root / "a.png").read_bytes()[:200])
    (root / "notes.txt").write_text("not an image, and not picked up from a folder")
    return root


def score_cli(args: list[str], check: bool = True):
    return run([sys.executable, "-m", "nriqa", "score", *args], cwd=PROJECT,
               env=tool_env(TF_CPP_MIN_LOG_LEVEL="2"), check=check, timeout=300)


def test_folder_json_output_skips_and_names_broken_file(tiny_model, image_tree, tmp_path):
    out = tmp_path / "scores.json"
    result = score_cli([str(image_tree), "--model-dir", str(tiny_model), "--format", "json",
                        "--output", str(out)])
    rows = json.loads(out.read_text())
    names = [Path(row["path"]).relative_to(image_tree).as_posix() for row in rows]
    # Recursive, sorted, only image suffixes (any case); the broken file is skipped.
    assert names == ["a.png", "nested/b.JPG", "nested/d.webp", "nested/deeper/c.tiff"]
    assert "broken.png" in result.stderr and "truncated" in result.stderr
    assert "scored 4 of 5 images" in result.stderr
    assert all(isinstance(row["mos"], float) and row["category"] for row in rows)
    assert len({row["mos"] for row in rows}) == 4  # the scores depend on the image


def test_csv_to_stdout_matches_predict_mos(tiny_model, image_tree):
    from nriqa.imaging import decode_image
    from nriqa.predict import load_model, predict_mos

    files = [image_tree / "a.png", image_tree / "nested" / "b.JPG"]
    result = score_cli([*map(str, files), "--model-dir", str(tiny_model)])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["path"] for row in rows] == [str(f) for f in files]
    model, info = load_model(tiny_model)
    expected = predict_mos(model, [decode_image(f) for f in files], info["preprocessing"])
    np.testing.assert_allclose([float(row["mos"]) for row in rows], expected, atol=1e-5)


def test_nothing_scored_is_an_error(tiny_model, image_tree, tmp_path):
    result = score_cli([str(image_tree / "nested" / "broken.png"), str(tmp_path / "missing.jpg"),
                        "--model-dir", str(tiny_model)], check=False)
    assert result.returncode == 1
    assert "broken.png" in result.stderr and "missing.jpg: no such file" in result.stderr
    assert result.stdout == ""


def test_missing_model_folder_says_so(image_tree, tmp_path):
    result = score_cli([str(image_tree), "--model-dir", str(tmp_path)], check=False)
    assert result.returncode == 2
    assert "model.keras and model.json missing" in result.stderr
