"""The packaged Bento served by a real `bentoml serve` process, called over HTTP.

One server for this module and test_webpage.py (start-up costs tens of seconds): the `served`
fixture of conftest.py (`service_helpers.Server`: a tiny model packaged into a temporary BentoML home, its
Bento served on a free port with small limits). Its model has the distortion-type head; a second,
`served_plain`, started only for the tests that need it, serves a model without one.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from tests.helpers import PROJECT
from tests.service_helpers import (
    MAX_BATCH_IMAGES,
    MAX_BATCH_PIXELS,
    MAX_UPLOAD_BYTES,
    check_distortions,
    encode,
    good_images,
    local_scores,
    png_claiming,
    png_with_broken_checksum,
    score_cli,
    textured,
)

pytestmark = pytest.mark.integration  # a `bentoml serve` process


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, data in good_images().items():
        (folder / name).write_bytes(data)
    return folder


def test_packaging_labels_model_and_bento(served):
    report = served.report
    assert report["mlflow_run_id"] == "run-abc123" and report["registry_version"] == "3"
    name, version = report["model_tag"].split(":")
    model_yaml = yaml.safe_load((served.root / "bentoml_home" / "models" / name / version
                                 / "model.yaml").read_text())
    assert model_yaml["labels"] == {"mlflow_run_id": "run-abc123", "registry_version": "3"}
    assert model_yaml["metadata"]["serve"]["max_batch_size"] == 64  # params.yaml, baked in
    stored = served.root / "bentoml_home" / "models" / name / version
    for file in ("model.keras", "model.json"):  # the bundle's files as they are
        assert (stored / file).read_bytes() == (served.model_dir / file).read_bytes(), file
    name, version = report["bento_tag"].split(":")
    bento_yaml = yaml.safe_load((served.root / "bentoml_home" / "bentos" / name / version
                                 / "bento.yaml").read_text())
    assert bento_yaml["labels"]["model_tag"] == report["model_tag"]
    assert bento_yaml["labels"]["mlflow_run_id"] == "run-abc123"
    models = [m["tag"] for svc in bento_yaml["services"] for m in svc["models"]]
    assert models == [report["model_tag"]]


def test_bentofile_pins_match_requirements():
    pins = dict(line.split("==") for line in (PROJECT / "requirements.txt").read_text().split("\n")
                if "==" in line and not line.startswith("#"))
    bentofile = yaml.safe_load((PROJECT / "bentofile.yaml").read_text())
    for requirement in bentofile["python"]["packages"]:
        package, version = requirement.split("==")
        assert pins.get(package) == version, f"bentofile.yaml pins {requirement}"


def test_score_every_supported_format(served, corpus):
    for path in sorted(corpus.iterdir()):
        response = served.score(path.name, path.read_bytes())
        assert response.status_code == 200, (path.name, response.text)
        body = response.json()
        assert set(body) == {"mos", "category", "distortions", "distortion_note",
                             "model_version", "mlflow_run_id", "quality_map"}
        assert body["quality_map"] is None  # only asked for with map=true
        assert body["model_version"] == "3" and body["mlflow_run_id"] == "run-abc123"
        assert body["category"] in {"Excellent", "Good", "Average", "Poor", "Very Poor"}
        check_distortions(body["distortions"], body["distortion_note"])


def test_score_matches_predict_mos_and_type_probabilities(served, corpus):
    """The served MOS is `predict_mos`'s and the distortions are the model's likeliest types,
    when one stands out; when none does (photo.jpg and gray.png: "no distortion" is the
    likeliest), the answer says so and lists none."""
    paths = [corpus / name for name in ("photo.jpg", "photo.png", "gray.png", "rotated.jpg")]
    mos, probabilities = local_scores(served.model_dir, paths)
    notes = []
    for path, expected, image_probabilities in zip(paths, mos, probabilities):
        body = served.score(path.name, path.read_bytes()).json()
        assert body["mos"] == pytest.approx(float(expected), abs=1e-4), path.name
        check_distortions(body["distortions"], body["distortion_note"], image_probabilities)
        notes.append(body["distortion_note"])
    assert notes == ["no distortion stands out", None, "no distortion stands out", None]


def test_quality_map_is_the_crops_averaged_into_the_score(served, corpus):
    """`map=true` returns the crop scores whose mean is the MOS, where the crops lie; the same
    score as without it (one model pass gives both)."""
    from nriqa.core.imaging import decode_image, prediction_layout

    preprocessing = json.loads((served.model_dir / "model.json").read_text())["preprocessing"]
    uploads = {name: (corpus / name).read_bytes() for name in ("photo.png", "rotated.jpg",
                                                                "gray16.png")}
    uploads["large.png"] = encode(textured(7, (320, 240)), "PNG")  # 80 crops, thinned to 48
    for name, data in uploads.items():
        response = served.score(name, data, data={"map": "true"})
        assert response.status_code == 200, response.text
        body = response.json()
        grid = body["quality_map"]
        values = [v for row in grid["scores"] for v in row if v is not None]
        assert np.mean(values) == pytest.approx(body["mos"], abs=1e-5), name
        assert body["mos"] == pytest.approx(served.score(name, data).json()["mos"], abs=1e-5)
        width, height, corners = prediction_layout(decode_image(data), preprocessing)
        assert (grid["width"], grid["height"], grid["crop_size"]) == (width, height, 32)
        assert len(values) == len(corners) <= preprocessing["max_crops"]
        assert [(top, left) for i, top in enumerate(grid["tops"])
                for j, left in enumerate(grid["lefts"]) if grid["scores"][i][j] is not None
                ] == corners
    assert served.score("a.png", data, data={"map": "false"}).json()["quality_map"] is None


def test_model_without_type_head_gives_null_distortions(served_plain, corpus):
    names = ["photo.jpg", "photo.png"]
    mos, probabilities = local_scores(served_plain.model_dir, [corpus / n for n in names])
    assert probabilities is None
    single = served_plain.score(names[0], (corpus / names[0]).read_bytes())
    assert single.status_code == 200, single.text
    assert "distortions" in single.json() and single.json()["distortions"] is None
    assert single.json()["distortion_note"] is None
    batch = requests.post(f"{served_plain.url}/score_batch", timeout=60,
                          files=[("images", (n, (corpus / n).read_bytes())) for n in names])
    assert batch.status_code == 200, batch.text
    results = batch.json()
    assert [r["distortions"] for r in results] == [None, None]
    assert [single.json()["mos"]] + [r["mos"] for r in results] == pytest.approx(
        [float(mos[0]), *map(float, mos)], abs=1e-4)


def test_score_batch_keeps_order_and_reports_bad_images(served, corpus):
    names = ["photo.png", "photo.jpg", "gray.png"]
    files = [("images", (name, (corpus / name).read_bytes())) for name in names]
    files.insert(1, ("images", ("notes.txt", b"hello, world")))
    response = requests.post(f"{served.url}/score_batch", files=files, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()
    assert len(results) == 4
    assert results[1] == {"error": "notes.txt: not an image in a format we read "
                                   "(JPEG, PNG, BMP, WebP, TIFF)"}
    singles = [served.score(name, (corpus / name).read_bytes()).json() for name in names]
    scored = [results[0], results[2], results[3]]
    assert [r["mos"] for r in scored] == pytest.approx([s["mos"] for s in singles], abs=1e-4)
    for result, single in zip(scored, singles):
        check_distortions(result["distortions"], result["distortion_note"])
        assert result["distortion_note"] == single["distortion_note"]
        assert [d["type"] for d in result["distortions"]] == [
            d["type"] for d in single["distortions"]]
        assert [d["probability"] for d in result["distortions"]] == pytest.approx(
            [d["probability"] for d in single["distortions"]], abs=1e-3)


BAD_INPUTS = [
    # (case, request keyword arguments, expected status, words the error message must contain)
    ("text file", {"files": {"image": ("notes.txt", b"just some text")}}, 400, "not an image"),
    ("truncated PNG", {"files": {"image": ("cut.png", encode(textured(1), "PNG")[:300])}},
     400, "truncated"),
    ("truncated JPEG", {"files": {"image": ("cut.jpg", encode(textured(1), "JPEG")[:500])}},
     400, "truncated"),
    ("zero bytes", {"files": {"image": ("empty.jpg", b"")}}, 400, "empty"),
    ("broken PNG checksum", {"files": {"image": ("cracked.png", png_with_broken_checksum())}},
     400, "cracked.png: the file is damaged"),
    ("1x1 image", {"files": {"image": ("dot.png", encode(Image.new("RGB", (1, 1)), "PNG"))}},
     400, "too small"),
    ("decompression bomb", {"files": {"image": ("bomb.png", png_claiming(50_000, 50_000))}},
     400, "decompression bomb"),
    ("over the pixel limit", {"files": {"image": ("big.png", png_claiming(400, 300))}},
     400, "more than the limit of 100000"),
    ("oversize upload", {"files": {"image": ("huge.bmp", b"BM" + bytes(MAX_UPLOAD_BYTES))}},
     413, "more than the limit of 2000000"),
    ("text instead of a file", {"files": {"image": (None, "http://example.com/x.jpg")}},
     400, "must be a file upload"),
    ("wrong field", {"files": {"picture": ("a.png", encode(textured(1), "PNG"))}},
     400, "unexpected form field `picture`"),
    ("map not true or false", {"files": {"image": ("a.png", encode(textured(1), "PNG"))},
                               "data": {"map": "please"}}, 400, "`map` must be true or false"),
    ("two images to score", {"files": [("image", ("a.png", encode(textured(1), "PNG")))] * 2},
     400, "use `score_batch`"),
    ("JSON body", {"json": {"image": "/etc/passwd"}}, 415, "multipart/form-data"),
    ("no body", {}, 415, "multipart/form-data"),
]


@pytest.mark.parametrize("case, request_kwargs, status, words", BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_a_4xx_with_a_message(served, case, request_kwargs, status, words):
    response = requests.post(f"{served.url}/score", timeout=60, **request_kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


# 85 x "日" and 150 x "é": under 200 characters, but each over 255 bytes in UTF-8, the most a
# file name may have on Linux.
LONG_NAMES = ["日" * 85 + ".jpg", "é" * 150 + ".jpg"]


@pytest.mark.parametrize("name", LONG_NAMES, ids=["85 x 日", "150 x é"])
def test_a_long_utf8_file_name_is_scored_and_named_in_errors(served, name):
    """BentoML kept each upload in a temporary file named after the client's file name, and a
    name over 255 bytes made that a 500. Client names never reach the disk now: the image is
    scored, and an error names it (shortened to 100 characters)."""
    image = encode(textured(7), "JPEG", quality=90)
    shown = name if len(name) <= 100 else name[:79] + "…" + name[-20:]
    response = served.score(name, image)
    assert response.status_code == 200, response.text
    assert response.json()["mos"] == served.score("short.jpg", image).json()["mos"]
    response = served.score(name, b"not an image")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == (f"{shown}: not an image in a format we read "
                                        "(JPEG, PNG, BMP, WebP, TIFF)")
    response = requests.post(f"{served.url}/score_batch", timeout=60,
                             files=[("images", ("short.jpg", image)), ("images", (name, b"")),
                                    ("images", (name, image))])
    assert response.status_code == 200, response.text
    good, bad, also_good = response.json()
    assert bad == {"error": f"{shown}: the file is empty (0 bytes)"}
    assert good["mos"] == also_good["mos"]


def test_bad_batches(served):
    response = requests.post(f"{served.url}/score_batch", timeout=60,
                             files={"comment": (None, "no images here")})
    assert response.status_code == 400 and "unexpected form field" in response.json()["error"]
    response = requests.post(f"{served.url}/score_batch", timeout=60,
                             files=[("images", ("bomb.png", png_claiming(50_000, 50_000))),
                                    ("images", ("empty.png", b""))])
    assert response.status_code == 200
    assert ["decompression bomb" in response.json()[0]["error"],
            "empty" in response.json()[1]["error"]] == [True, True]


def test_score_batch_caps_files_and_pixels(served):
    small = encode(textured(3), "PNG")  # 96x64
    response = requests.post(f"{served.url}/score_batch", timeout=60,
                             files=[("images", (f"{i}.png", small))
                                    for i in range(MAX_BATCH_IMAGES + 1)])
    assert response.status_code == 413, response.text
    assert f"more than {MAX_BATCH_IMAGES} images in one request" in response.json()["error"]
    wide = encode(textured(4, (300, 200)), "PNG")  # each within the per-image pixel limit
    response = requests.post(f"{served.url}/score_batch", timeout=60,
                             files=[("images", (f"{i}.png", wide)) for i in range(4)])
    assert response.status_code == 413, response.text
    assert (f"240000 pixels in all, more than the limit of {MAX_BATCH_PIXELS}"
            in response.json()["error"])
    response = requests.post(f"{served.url}/score_batch", timeout=60,
                             files=[("images", (f"{i}.png", wide)) for i in range(3)])
    assert response.status_code == 200 and len(response.json()) == 3, response.text


def test_colour_key_transparency_scores_like_alpha(served):
    """Pixels that a PNG's tRNS colour key marks clear score as RGBA's clear pixels do: on white."""
    gray = textured(6).convert("L")
    key = int(np.median(np.asarray(gray)))
    alpha = Image.fromarray(np.where(np.asarray(gray) == key, 0, 255).astype(np.uint8))
    rgba = gray.convert("RGBA")
    rgba.putalpha(alpha)
    keyed = served.score("keyed.png", encode(gray, "PNG", transparency=key))
    composited = served.score("alpha.png", encode(rgba, "PNG"))
    assert keyed.status_code == composited.status_code == 200, (keyed.text, composited.text)
    assert keyed.json()["mos"] == pytest.approx(composited.json()["mos"], abs=1e-4)
    opaque = served.score("opaque.png", encode(gray, "PNG")).json()["mos"]
    assert abs(opaque - keyed.json()["mos"]) > 1e-3  # the key changed what was scored


def test_still_serving_after_bad_input(served):
    log_start = len(served.logs())
    for _, request_kwargs, _, _ in BAD_INPUTS:
        requests.post(f"{served.url}/score", timeout=60, **request_kwargs)
    assert served.process.poll() is None
    assert served.score("ok.png", encode(textured(5), "PNG")).status_code == 200
    new_logs = served.logs()[log_start:]
    assert not re.search(r"Traceback|status=5\d\d", new_logs), new_logs[-4000:]


def test_concurrent_clients_match_the_cli(served, corpus, tmp_path):
    """384 requests from 16 clients, every one answered right.

    More than 300, because the model service that `bentoml.depends` reached dropped the calls in
    flight each time its client renewed its session, every 100 calls."""
    paths = sorted(corpus.iterdir())
    out = tmp_path / "cli.jsonl"
    score_cli([str(corpus), "--model-dir", str(served.model_dir), "--format", "jsonl",
               "--output", str(out)])
    cli_rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {Path(row["path"]).name: row["mos"] for row in cli_rows}
    cli_types = {Path(row["path"]).name: [d["type"] for d in row["distortions"]]
                 for row in cli_rows}
    assert len(expected) == len(paths)

    def client(index: int) -> list[tuple[str, int, float | None, list[int]]]:
        with requests.Session() as session:
            results = []
            for request in range(24):
                path = paths[(index + request) % len(paths)]
                response = session.post(f"{served.url}/score", timeout=120,
                                        files={"image": (path.name, path.read_bytes())})
                body = response.json() if response.ok else {}
                results.append((path.name, response.status_code, body.get("mos"),
                                [d["type"] for d in body.get("distortions") or []]))
            return results

    with ThreadPoolExecutor(16) as pool:
        results = [r for rs in pool.map(client, range(16)) for r in rs]
    assert len(results) == 384
    failures = [status for _, status, _, _ in results if status != 200]
    assert not failures, (failures, re.findall(r"(?m)^\w*Error.*$", served.logs())[-20:])
    for name, _, mos, types in results:
        assert mos == pytest.approx(expected[name], abs=1e-4), name
        # Batched with other requests or not, the same likeliest types as the CLI.
        assert types == cli_types[name], name
