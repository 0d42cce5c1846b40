"""`python -m nriqa score`: folders searched recursively, CSV and JSON lines written row by row,
files that fail skipped by name (exit 1), the three likeliest distortions beside each MOS, or
"no distortion stands out" (nothing for a model without the type head)."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service_helpers import (
    check_distortions,
    local_scores,
    make_tiny_model,
    read_jsonl,
    score_cli,
    textured,
)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    """A tiny model without the distortion-type head (trained on data without types)."""
    return make_tiny_model(tmp_path_factory.mktemp("plain_model"), distortion_types=0)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "nested" / "deeper").mkdir(parents=True)
    textured(1).save(root / "a.png")
    textured(2).save(root / "nested" / "b.JPG", quality=90)
    textured(3).convert("L").save(root / "nested" / "deeper" / "c.tiff")
    textured(4).save(root / "nested" / "d.webp")
    textured(10).save(root / "nested" / "clean.jpg", quality=90)  # no distortion stands out
    (root / "nested" / "broken.png").write_bytes((root / "a.png").read_bytes()[:200])
    (root / "notes.txt").write_text("not an image, and not picked up from a folder")
    return root


@pytest.mark.integration  # starts a Python process
def test_folder_jsonl_output_skips_and_names_broken_file(tiny_model, image_tree, tmp_path):
    out = tmp_path / "scores.jsonl"
    result = score_cli([str(image_tree), "--model-dir", str(tiny_model), "--format", "jsonl",
                        "--output", str(out)], check=False)
    assert result.returncode == 1  # one file failed
    rows = read_jsonl(out)
    names = [Path(row["path"]).relative_to(image_tree).as_posix() for row in rows]
    # Recursive, sorted, only image suffixes (any case); the broken file is skipped.
    assert names == ["a.png", "nested/b.JPG", "nested/clean.jpg", "nested/d.webp",
                     "nested/deeper/c.tiff"]
    assert "broken.png" in result.stderr and "truncated" in result.stderr
    assert "scored 5 of 6 images" in result.stderr
    assert all(isinstance(row["mos"], float) and row["category"] for row in rows)
    assert len({row["mos"] for row in rows}) == 5  # the scores depend on the image
    mos, probabilities = local_scores(tiny_model, [Path(row["path"]) for row in rows])
    np.testing.assert_allclose([row["mos"] for row in rows], mos, atol=1e-5)
    for row, image_probabilities in zip(rows, probabilities):
        assert set(row) == {"path", "mos", "category", "distortions", "distortion_note"}
        check_distortions(row["distortions"], row["distortion_note"], image_probabilities)
    assert [row["distortion_note"] for row in rows] == [
        None, None, "no distortion stands out", None, None]


CSV_HEADER = ["path", "mos", "category", "distortion_1", "p_1", "distortion_2", "p_2",
              "distortion_3", "p_3", "distortion_note"]


@pytest.mark.integration  # starts a Python process
def test_csv_to_stdout_matches_predict_mos(tiny_model, image_tree):
    from nriqa.core.taxonomy import type_name

    files = [image_tree / "a.png", image_tree / "nested" / "b.JPG",
             image_tree / "nested" / "clean.jpg"]
    result = score_cli([*map(str, files), "--model-dir", str(tiny_model)])
    reader = csv.DictReader(io.StringIO(result.stdout))
    rows = list(reader)
    assert reader.fieldnames == CSV_HEADER
    assert [row["path"] for row in rows] == [str(f) for f in files]
    expected, probabilities = local_scores(tiny_model, files)
    np.testing.assert_allclose([float(row["mos"]) for row in rows], expected, atol=1e-5)
    names = {type_name(number): number for number in range(25)}
    for row, image_probabilities in zip(rows, probabilities):
        check_distortions([{"type": names[row[f"distortion_{k}"]], "name": row[f"distortion_{k}"],
                            "probability": float(row[f"p_{k}"])} for k in (1, 2, 3)
                           if row[f"distortion_{k}"]], row["distortion_note"] or None,
                          image_probabilities)
    # No distortion stands out in the clean one: its type cells are empty, its note says so.
    assert [row["distortion_note"] for row in rows] == ["", "", "no distortion stands out"]
    assert all(rows[-1][column] == "" for column in CSV_HEADER[3:-1])


@pytest.mark.integration  # starts a Python process
def test_model_without_type_head_gives_no_distortions(plain_model, image_tree, tmp_path):
    files = [image_tree / "a.png", image_tree / "nested" / "d.webp"]
    expected, probabilities = local_scores(plain_model, files)
    assert probabilities is None
    out = tmp_path / "scores.jsonl"
    score_cli([*map(str, files), "--model-dir", str(plain_model), "--format", "jsonl",
               "--output", str(out)])
    rows = read_jsonl(out)
    assert [(row["distortions"], row["distortion_note"]) for row in rows] == [(None, None)] * 2
    np.testing.assert_allclose([row["mos"] for row in rows], expected, atol=1e-5)

    result = score_cli([*map(str, files), "--model-dir", str(plain_model)])
    reader = csv.DictReader(io.StringIO(result.stdout))
    rows = list(reader)
    assert reader.fieldnames == CSV_HEADER
    assert all(row[column] == "" for row in rows for column in CSV_HEADER[3:])
    np.testing.assert_allclose([float(row["mos"]) for row in rows], expected, atol=1e-5)


def test_quality_map_is_the_crop_scores_averaged_into_the_mos(tiny_model, image_tree):
    """One model pass gives the MOS and the map: the map's mean is the MOS."""
    from nriqa.core.imaging import crops_for_prediction, decode_image, prediction_layout
    from nriqa.model.bundle import load_model
    from nriqa.model.prediction import score_crop_sets, score_images
    from nriqa.serving.quality_map import quality_map

    model, info = load_model(tiny_model)
    preprocessing = dict(info["preprocessing"], max_crops=5)  # a thinned grid: 2x3 -> 2x2
    images = [decode_image(image_tree / "a.png"), decode_image(image_tree / "nested" / "b.JPG")]
    crop_sets = [crops_for_prediction(image, preprocessing) for image in images]
    mos, _, crop_scores = score_crop_sets(model, crop_sets)
    np.testing.assert_allclose(mos, score_images(model, crop_sets)[0], atol=1e-6)
    for image, image_mos, scores in zip(images, mos, crop_scores):
        width, height, corners = prediction_layout(image, preprocessing)
        grid = quality_map(width, height, corners, preprocessing["crop_size"], scores)
        values = [v for row in grid["scores"] for v in row if v is not None]
        assert len(values) == 4 and sum(row.count(None) for row in grid["scores"]) == 0
        assert np.mean(values) == pytest.approx(float(image_mos), abs=1e-5)


@pytest.mark.integration  # starts a Python process
def test_map_option_writes_one_png_per_image(tiny_model, image_tree, tmp_path):
    out, maps = tmp_path / "scores.jsonl", tmp_path / "maps"
    files = [image_tree / "a.png", image_tree / "nested" / "d.webp", image_tree / "a.png"]
    score_cli([*map(str, files), "--model-dir", str(tiny_model), "--format", "jsonl",
               "--output", str(out), "--map", str(maps)])
    rows = read_jsonl(out)
    # The same name twice gets a second file, not the first one overwritten.
    assert [Path(row["map"]).name for row in rows] == ["a.png", "d.png", "a-2.png"]
    for row in rows:
        with Image.open(row["path"]) as image, Image.open(row["map"]) as drawn:
            # The image's own size, with the colour legend below it.
            assert drawn.width == image.width and drawn.height > image.height
            assert drawn.mode == "RGB"
    assert sorted(p.name for p in maps.iterdir()) == ["a-2.png", "a.png", "d.png"]


@pytest.mark.integration  # starts a Python process
def test_nothing_scored_is_an_error(tiny_model, image_tree, tmp_path):
    result = score_cli([str(image_tree / "nested" / "broken.png"), str(tmp_path / "missing.jpg"),
                        "--model-dir", str(tiny_model)], check=False)
    assert result.returncode == 1
    assert "broken.png" in result.stderr and "missing.jpg: no such file" in result.stderr
    assert result.stdout == ""


@pytest.mark.integration  # starts a Python process
def test_missing_model_folder_says_so(image_tree, tmp_path):
    result = score_cli([str(image_tree), "--model-dir", str(tmp_path)], check=False)
    assert result.returncode == 2
    assert "model.keras and model.json missing" in result.stderr


class Crash(BaseException):
    """Stands for the process dying (a kill, a segfault in a decoder): not a file's error."""


def test_rows_already_scored_survive_a_crash(tiny_model, image_tree, tmp_path, monkeypatch):
    from nriqa.cli import main
    from nriqa.core import imaging
    from nriqa.model import prediction

    files = [image_tree / "a.png", image_tree / "nested" / "b.JPG"] * prediction.CHUNK
    real_decode, decoded = imaging.decode_image, []

    def decode_then_crash(path, **kwargs):
        decoded.append(path)
        if len(decoded) > prediction.CHUNK + 1:  # in the second chunk
            raise Crash()
        return real_decode(path, **kwargs)

    monkeypatch.setattr(imaging, "decode_image", decode_then_crash)
    out = tmp_path / "scores.jsonl"
    with pytest.raises(Crash):
        main(["score", *map(str, files), "--model-dir", str(tiny_model), "--format", "jsonl",
              "-o", str(out)])
    rows = read_jsonl(out)
    assert [row["path"] for row in rows] == [str(f) for f in files[:prediction.CHUNK]]


def test_maps_written_into_the_images_folder_never_replace_an_image(tiny_model, tmp_path):
    """`--map` pointed at the images' own folder: a.png's map would be a.png itself."""
    import json

    from nriqa.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    textured(1).save(photos / "a.png")
    textured(2).save(photos / "b.jpg")
    originals = {path.name: path.read_bytes() for path in photos.iterdir()}
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(photos), "--model-dir", str(tiny_model), "--map", str(photos),
                 "--format", "jsonl", "-o", str(out)]) == 0
    assert {name: (photos / name).read_bytes() for name in originals} == originals
    maps = {Path(row["path"]).name: Path(row["map"]).name
            for row in map(json.loads, out.read_text().splitlines())}
    assert maps == {"a.png": "a-2.png", "b.jpg": "b.png"}


def test_an_output_that_is_one_of_the_inputs_is_refused_untouched(tiny_model, tmp_path, capsys):
    """`-o` naming an input (as given, by another spelling, through a link, or found in a
    folder) would truncate that image before it is read: refused, exit 2, the image intact."""
    from nriqa.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    image = photos / "a.png"
    textured(1).save(image)
    original = image.read_bytes()
    (tmp_path / "link.png").symlink_to(image)
    for inputs, output in [([image], image), ([image], photos / "." / ".." / "photos" / "a.png"),
                           ([image], tmp_path / "link.png"), ([photos], image)]:
        status = main(["score", *map(str, inputs), "--model-dir", str(tiny_model),
                       "-o", str(output)])
        assert status == 2
        assert capsys.readouterr().err == (f"error: --output {output} is the input image {image}; "
                                           "write the scores to another file\n")
        assert image.read_bytes() == original
    assert main(["score", str(image), "--model-dir", str(tiny_model),
                 "-o", str(photos / "scores.csv")]) == 0


def test_any_error_on_one_file_is_named_and_the_rest_scored(tiny_model, image_tree, tmp_path,
                                                            monkeypatch, capsys):
    """Not only NriqaError: whatever a decoder raises for one file (here a KeyError, as PIL
    raises for some malformed TIFF tags) skips that file alone, and the exit status says so."""
    from nriqa.cli import main
    from nriqa.core import imaging

    bad = image_tree / "nested" / "b.JPG"
    real_decode = imaging.decode_image

    def decode(path, **kwargs):
        if Path(path) == bad:
            raise KeyError(274)
        return real_decode(path, **kwargs)

    monkeypatch.setattr(imaging, "decode_image", decode)
    out = tmp_path / "scores.csv"
    status = main(["score", str(image_tree / "a.png"), str(bad), str(image_tree / "nested" / "d.webp"),
                   "--model-dir", str(tiny_model), "-o", str(out)])
    assert status == 1
    err = capsys.readouterr().err
    assert f"skipped {bad}: KeyError: 274" in err and "scored 2 of 3 images; skipped 1" in err
    rows = list(csv.DictReader(out.open()))
    assert [Path(row["path"]).name for row in rows] == ["a.png", "d.webp"]


TF_BANNERS = ("oneDNN custom operations", "cuInit", "absl::InitializeLog", "cuda drivers",
              "rebuild TensorFlow", "cpu_feature_guard")


@pytest.mark.integration  # starts a Python process
def test_tensorflow_start_up_banners_are_not_shown(tiny_model, image_tree):
    result = score_cli([str(image_tree / "a.png"), str(image_tree / "nested" / "broken.png"),
                        "--model-dir", str(tiny_model)], check=False)
    assert result.returncode == 1
    assert not [banner for banner in TF_BANNERS if banner in result.stderr], result.stderr
    # What the user should see still shows.
    assert "broken.png" in result.stderr and "scored 1 of 2 images" in result.stderr


def test_only_the_known_banners_are_filtered(capfd):
    import os

    from nriqa.core.runtime import banner_pattern, filtered_stderr

    with filtered_stderr(banner_pattern(gpu_expected=False)):
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see ...\n"
                    b"E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
                    b"W0000 something.cc:1] a real warning\n")
        print("a Python warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == ["W0000 something.cc:1] a real warning", "a Python warning"]
    # With an NVIDIA driver installed a GPU is expected, so a cuInit failure is news.
    with filtered_stderr(banner_pattern(gpu_expected=True)):
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n")
    assert "cuInit" in capfd.readouterr().err


def test_one_error_path_gives_the_documented_exit_codes(capsys):
    """`nriqa.core.errors.reporting_errors` is the one NriqaError -> exit path of the CLI and the
    stages: 0 done, 1 some inputs failed, 2 nothing done (`error: ...` on stderr)."""
    from nriqa.cli import main
    from nriqa.core.errors import ExitCode, NriqaError, reporting_errors
    from nriqa.core.stage import stage_main

    assert [ExitCode.OK, ExitCode.PARTIAL, ExitCode.ERROR] == [0, 1, 2]

    def fails():
        raise NriqaError("params.yaml train.lr: must be positive")

    assert reporting_errors(lambda: None)() == 0
    assert reporting_errors(lambda: ExitCode.PARTIAL)() == 1
    assert reporting_errors(fails)() == 2
    assert capsys.readouterr().err == "error: params.yaml train.lr: must be positive\n"

    stage_main(lambda: None)()  # a stage that succeeds does not exit
    with pytest.raises(SystemExit) as stopped:
        stage_main(fails)()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: params.yaml train.lr: must be positive\n"

    with pytest.raises(SystemExit) as stopped:  # a usage error, as argparse reports it
        main(["score", "photo.jpg", "--format", "xml"])
    assert stopped.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


@pytest.mark.integration  # starts a process
def test_the_installed_nriqa_command_runs():
    """`make venv` installs the project (`pip install -e .`), and with it the `nriqa` command."""
    import subprocess

    from tests.helpers import VENV_BIN

    result = subprocess.run([str(VENV_BIN / "nriqa"), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: nriqa "), result.stderr
