"""The champion in portable forms (`nriqa.model.export`, `nriqa.model.portable`): ONNX and
TFLite files that score as the Keras model does, the same bytes for the same weights, files
that are checked before they are used, and scoring that needs neither TensorFlow nor Keras."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nriqa.core.errors import NriqaError
from tests.helpers import PROJECT, run, tool_env
from tests.service_helpers import make_tiny_model, score_cli, textured

CATEGORIES = {"Excellent": 6.0, "Good": 5.0, "Average": 4.0, "Poor": 3.0}


def export_tiny(model_dir: Path, folder: Path) -> Path:
    from nriqa.model.bundle import WEIGHTS, file_sha256, load_model
    from nriqa.model.export import export_portable

    model, info = load_model(model_dir)
    return export_portable(model, info, folder, categories=CATEGORIES,
                           source={"model_sha256": file_sha256(model_dir / WEIGHTS)})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny model (with the type head and its undistorted class) and its export in portable/."""
    model_dir = make_tiny_model(tmp_path_factory.mktemp("tiny"), max_crops=48)
    export_tiny(model_dir, model_dir / "portable")
    return model_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    paths = []
    for seed, (size, suffix) in enumerate([((96, 64), "png"), ((200, 150), "png"),
                                           ((40, 20), "png"), ((300, 97), "jpg")]):
        path = root / f"image{seed}.{suffix}"
        textured(seed, size).save(path)
        paths.append(path)
    return paths


def test_model_json_names_what_a_runtime_needs(tiny):
    info = json.loads((tiny / "portable" / "model.json").read_text())
    bundle = json.loads((tiny / "model.json").read_text())
    assert info["preprocessing"] == bundle["preprocessing"]
    assert info["mos_range"] == bundle["mos_range"]
    assert info["distortion_types"] == bundle["distortion_types"]
    assert info["categories"] == CATEGORIES
    assert info["columns"][0] == "mos" and len(info["columns"]) == 1 + len(info["distortion_types"])
    assert info["input"]["shape"] == [None, 32, 32, 3]
    for name in ("model.onnx", "model.tflite"):
        assert info["files"][name]["bytes"] == (tiny / "portable" / name).stat().st_size


def test_onnx_and_tflite_score_as_keras_does(tiny, images):
    from nriqa.model.bundle import load_model
    from nriqa.model.export import parity

    model, info = load_model(tiny)
    figures = parity(model, info["preprocessing"], images, tiny / "portable")
    assert figures["images"] == len(images)
    for runtime in ("onnx", "tflite"):
        assert figures[runtime]["passed"], figures
        assert figures[runtime]["max_abs_mos"] <= 1e-4
        assert figures[runtime]["type_mismatches"] == 0


def test_the_check_spreads_its_images_over_the_sorted_split():
    from nriqa.model.export import parity_sample

    # TID2013's names: "i" or "I", as the synthetic set keeps them
    paths = [Path(f"{'Ii'[kind % 2]}{ref:02d}_{kind:02d}_{level}.bmp")
             for ref in (3, 1, 2) for kind in range(1, 25) for level in range(1, 6)]
    sample = parity_sample(paths, 12)
    assert len(sample) == len(set(sample)) == 12
    assert sample[0].name == "i01_01_1.bmp" and sample[-1].name == "I03_24_5.bmp"
    assert [path.name[1:3] for path in sample] == ["01"] * 4 + ["02"] * 4 + ["03"] * 4
    assert sample == parity_sample(list(reversed(paths)), 12)  # the split's order does not matter
    assert parity_sample(paths, None) == parity_sample(paths, 1000)
    assert len(parity_sample(paths, None)) == len(paths)


def test_parity_fails_for_another_models_export(tiny, images, tmp_path):
    """The check can fail: the export of one model measured against another."""
    from nriqa.model.bundle import load_model
    from nriqa.model.export import check_parity, parity

    other = make_tiny_model(tmp_path / "other", max_crops=48, distortion_types=24)
    model, info = load_model(other)
    # Same architecture and seed; different weights on one layer.
    head = model.get_layer("mos")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 1.5, bias])
    figures = parity(model, info["preprocessing"], images, tiny / "portable")
    assert not figures["onnx"]["passed"] and not figures["tflite"]["passed"]
    with pytest.raises(NriqaError, match=r"does not score as the Keras model.*onnx: max"):
        check_parity(figures, tmp_path / "export.json")


def test_the_same_weights_give_the_same_bytes(tiny, tmp_path):
    """Two processes export the same model.keras: DVC sees the same files (tf2onnx names
    tensors from a process-wide counter and optimizes in a varying order; the export pins both)."""
    script = ("import sys; from pathlib import Path; from nriqa.core.runtime import configure; "
              "configure(); from tests.test_export import export_tiny; "
              "export_tiny(Path(sys.argv[1]), Path(sys.argv[2]))")
    for name in ("first", "second"):
        run([sys.executable, "-c", script, str(tiny), str(tmp_path / name)], cwd=PROJECT,
            env=tool_env(), timeout=300)
    for file in ("model.onnx", "model.tflite", "model.json"):
        assert (tmp_path / "first" / file).read_bytes() == (tmp_path / "second" / file).read_bytes(), file
    assert (tmp_path / "first" / "model.onnx").read_bytes() == (tiny / "portable" / "model.onnx").read_bytes()


def test_a_missing_or_altered_file_is_refused_by_name(tiny, tmp_path):
    from nriqa.model.portable import OnnxModel, TfliteModel

    folder = tmp_path / "portable"
    folder.mkdir()
    for name in ("model.json", "model.tflite"):
        (folder / name).write_bytes((tiny / "portable" / name).read_bytes())
    with pytest.raises(NriqaError, match=r"model\.onnx: missing"):
        OnnxModel.load(folder)
    onnx_bytes = bytearray((tiny / "portable" / "model.onnx").read_bytes())
    onnx_bytes[len(onnx_bytes) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(onnx_bytes))
    with pytest.raises(NriqaError, match=r"model\.onnx: sha256 .* altered or truncated"):
        OnnxModel.load(folder)
    (folder / "model.tflite").write_bytes((tiny / "portable" / "model.tflite").read_bytes()[:100])
    with pytest.raises(NriqaError, match=r"model\.tflite: sha256"):
        TfliteModel.load(folder)
    (folder / "model.json").write_text("{}")
    with pytest.raises(NriqaError, match=r"model\.json: not an exported model's"):
        TfliteModel.load(folder)


def test_package_refuses_the_export_of_another_model(tiny, tmp_path):
    from nriqa.ops.packaging import check_portable

    check_portable(tiny / "portable", tiny)  # its own: fine
    other = make_tiny_model(tmp_path / "other", max_crops=48, distortion_types=0)
    with pytest.raises(NriqaError, match=r"exported from model\.keras .* not from the .* being "
                                         r"packaged; run the export stage again"):
        check_portable(tiny / "portable", other)


def test_score_with_onnx_gives_the_keras_csv_without_tensorflow(tiny, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(images[0].read_bytes()[:100])
    keras_rows = _rows(score_cli([*map(str, images), str(broken), "--model-dir", str(tiny),
                                  "--runtime", "keras"], check=False))
    result = score_reporting_imports(*map(str, images), str(broken), "--runtime", "onnx",
                                     "--model-dir", str(tiny / "portable"))
    assert result.returncode == 1, result.stderr  # the broken file is skipped, the rest scored
    assert "loaded: []" in result.stderr
    assert "broken.png" in result.stderr
    onnx_rows = _rows(result)
    assert [row["path"] for row in onnx_rows] == [row["path"] for row in keras_rows]
    assert len(onnx_rows) == len(images)
    for ours, theirs in zip(onnx_rows, keras_rows):
        assert abs(float(ours["mos"]) - float(theirs["mos"])) <= 1e-3
        assert ours["category"] == theirs["category"]
        assert ours["distortion_1"] == theirs["distortion_1"]


def score_reporting_imports(*args: str):
    """`nriqa score ARGS` in one process that then reports whether TensorFlow or Keras loaded."""
    script = ("import sys; from nriqa.cli import main; code = main(sys.argv[1:]); "
              "sys.stderr.write('loaded: %s\\n' % sorted(m for m in ('tensorflow', 'keras') "
              "if m in sys.modules)); sys.exit(code)")
    return subprocess.run([sys.executable, "-c", script, "score", *args], cwd=PROJECT,
                          env=tool_env(), capture_output=True, text=True, timeout=300, check=False)


def test_score_runs_the_models_own_export_by_default_and_keras_otherwise(tiny, images, tmp_path):
    """`--runtime auto`: onnxruntime where the folder's portable/ was exported from its very
    model.keras, Keras where it was not (a retrained model beside an old export)."""
    onnx = score_reporting_imports(str(images[1]), "--model-dir", str(tiny))
    assert onnx.returncode == 0, onnx.stderr
    assert f"scoring with onnxruntime ({tiny / 'portable'})" in onnx.stderr
    assert "loaded: []" in onnx.stderr
    keras = score_cli([str(images[1]), "--model-dir", str(tiny), "--runtime", "keras"])
    assert abs(float(_rows(onnx)[0]["mos"]) - float(_rows(keras)[0]["mos"])) <= 1e-3

    retrained = make_tiny_model(tmp_path / "retrained", max_crops=48, distortion_types=0)
    shutil.copytree(tiny / "portable", retrained / "portable")
    stale = score_reporting_imports(str(images[1]), "--model-dir", str(retrained))
    assert stale.returncode == 0, stale.stderr
    assert "scoring with Keras (TensorFlow)" in stale.stderr
    assert "'keras'" in stale.stderr.splitlines()[-1]
    assert _rows(stale)[0]["distortion_1"] == ""  # the retrained model's: no type head


def _rows(result) -> list[dict]:
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_the_onnx_default_folder_is_named_when_missing(tmp_path, images):
    result = subprocess.run([sys.executable, "-m", "nriqa", "score", str(images[0]), "--runtime",
                             "onnx"], cwd=tmp_path, env=tool_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "models/portable/model.json: missing" in result.stderr


@pytest.mark.integration
def test_onnx_scoring_in_a_plain_numpy_pillow_onnxruntime_environment(tiny, images, tmp_path):
    """The documented minimal install: a fresh virtual environment with only onnxruntime, Pillow
    and numpy (at the project's pins) and this package's source."""
    pins = {line.split("==")[0]: line.strip() for line in
            (PROJECT / "requirements.txt").read_text().splitlines() if "==" in line}
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=300)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-qq", pins["onnxruntime"], pins["pillow"], pins["numpy"]],
        cwd=tmp_path, timeout=600)
    # The package from a copy of its source: pip builds in the source folder (build/).
    source = tmp_path / "source"
    shutil.copytree(PROJECT / "nriqa", source / "nriqa",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copyfile(PROJECT / name, source / name)
    run([python, "-m", "pip", "install", "-qq", "--no-deps", str(source)], cwd=tmp_path,
        timeout=600)
    script = ("import json, sys; from nriqa.model.portable import OnnxModel; "
              "rows = OnnxModel.load(sys.argv[1]).score(sys.argv[2:]); "
              "print(json.dumps({'rows': rows, 'modules': sorted(sys.modules)}))")
    result = run([python, "-c", script, str(tiny / "portable"), *map(str, images)],
                 cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=300)
    answer = json.loads(result.stdout)
    assert not {"tensorflow", "keras", "scipy", "pydantic", "tqdm"} & set(answer["modules"])
    from nriqa.model.portable import OnnxModel

    here = OnnxModel.load(tiny / "portable").score(images)
    assert [row["category"] for row in answer["rows"]] == [row["category"] for row in here]
    assert np.allclose([row["mos"] for row in answer["rows"]], [row["mos"] for row in here],
                       atol=1e-5)
