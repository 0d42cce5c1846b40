"""The web page at /ui in a real headless browser against a real `bentoml serve`: upload an
image and read its preview, score on its scale, heat map, distortions and model off the page;
a damaged upload's message; a batch table that sorts; the example images.

Playwright drives Debian's chromium (`make system-deps` installs it; `playwright install`
cannot download browsers here). The servers are conftest.py's `served` and `served_plain`,
shared with test_service.py.
NRIQA_SCREENSHOT=docs/webpage.png keeps a screenshot of the page, an example scored, there
(the README's); NRIQA_SCREENSHOT_ON_DEVICE=docs/ondevice.png one of an example scored on the
device.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from nriqa.serving.quality_map import map_values, ramp_colours
from tests.service_helpers import MAX_UPLOAD_BYTES, encode, textured

pytestmark = pytest.mark.integration  # a `bentoml serve` process and Chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make system-deps`")
    with sync_playwright() as playwright:
        # --no-sandbox: chromium's sandbox cannot start as root (containers, CI).
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(server, browser, path: str = "/ui/"):
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.goto(f"{server.url}{path}", wait_until="networkidle")
    assert "image quality" in page.title()
    return page


def upload(page, *paths: Path) -> None:
    page.locator("#files").set_input_files([str(path) for path in paths])


def api_score(server, path: Path) -> dict:
    response = requests.post(f"{server.url}/score", timeout=60, data={"map": "true"},
                             files={"image": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    return response.json()


def check_score_shown(page, expected: dict) -> None:
    page.locator("#score").wait_for(state="visible", timeout=60_000)
    assert page.locator("#mos").inner_text() == f"{expected['mos']:.2f}"
    assert page.locator("#scale").inner_text() == "MOS on the 0–9 scale"
    # The gauge marks params.yaml's category bounds (evaluate.categories) on the scale.
    assert page.locator("#gauge-ticks").inner_text().split() == ["0", "3", "4", "5", "6", "9"]
    assert page.locator("#gauge .band").count() == 5
    category = page.locator("#category")
    assert category.inner_text() == expected["category"]
    assert category.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"


def drawn_map(page) -> np.ndarray:
    """The heat map's canvas as RGBA pixels."""
    url = page.evaluate("document.getElementById('heatmap').toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def test_upload_shows_preview_score_map_and_model(served, browser, tmp_path):
    # TIFF, which browsers cannot show: the preview is the image as the service decodes it.
    # 320x240 has 80 cells of 32, thinned to the model's 48 crops (6 x 8).
    image = tmp_path / "holiday.tiff"
    textured(21, (320, 240)).save(image)
    expected = api_score(served, image)
    page = open_page(served, browser)
    # Nothing is shown before there is a score.
    assert page.locator("#single").is_hidden() and page.locator("#score").is_hidden()
    assert "Model version 3" in page.locator("#model-info").inner_text()
    assert "MLflow run run-abc123" in page.locator("#model-info").inner_text()

    upload(page, image)
    check_score_shown(page, expected)
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 320
    # The heat map is drawn over the preview, with its legend.
    assert page.locator("#heatmap").is_visible() and page.locator("#legend").is_visible()
    grid = expected["quality_map"]
    # 8 x 10 cells thinned to evenly spaced rows and columns: a complete 6 x 8 grid.
    assert (len(grid["tops"]), len(grid["lefts"])) == (6, 8)
    assert all(score is not None for row in grid["scores"] for score in row)
    # Drawn as map_values paints it at the canvas's size: every pixel, so not striped.
    drawn = drawn_map(page)
    values = map_values(grid, scale=drawn.shape[1] / grid["width"])
    assert values.shape == drawn.shape[:2] and not np.isnan(values).any()
    assert (drawn[..., 3] > 0).all()
    colour_error = np.abs(drawn[..., :3].astype(int) - ramp_colours(values, (0.0, 9.0))).max(-1)
    assert (colour_error <= 3).mean() > 0.99  # pixels on a border may round the other way
    page.locator("#show-map").uncheck()
    assert page.locator("#heatmap").is_hidden()
    page.locator("#show-map").check()

    # The three likeliest distortions, in the API's order, each with its probability in %.
    text = page.locator("#distortions").inner_text()
    positions = [text.find(d["name"]) for d in expected["distortions"]]
    assert -1 not in positions and positions == sorted(positions), text
    for distortion in expected["distortions"]:
        assert f"{round(distortion['probability'] * 100)}%" in text, text
    assert page.locator("#distortion-note").is_hidden()
    page.close()


def test_no_distortion_standing_out_is_said_not_listed(served, browser, tmp_path):
    image = tmp_path / "clean.jpg"
    textured(10).save(image, quality=90)  # the tiny model's "no distortion" is likeliest
    expected = api_score(served, image)
    assert expected["distortions"] == []
    assert expected["distortion_note"] == "no distortion stands out"
    page = open_page(served, browser)
    upload(page, image)
    check_score_shown(page, expected)
    assert page.locator("#distortion-note").inner_text() == "No distortion stands out."
    assert page.locator("#distortion-list").is_hidden()
    assert page.locator("#distortion-list li").count() == 0
    page.close()


def test_no_distortions_shown_without_type_head(served_plain, browser, tmp_path):
    image = tmp_path / "holiday.jpg"
    textured(21).save(image, quality=90)
    expected = api_score(served_plain, image)
    assert expected["distortions"] is None
    page = open_page(served_plain, browser)
    upload(page, image)
    check_score_shown(page, expected)
    assert page.locator("#distortions").is_hidden()
    assert "Likeliest distortions" not in page.locator("body").inner_text()
    page.close()


TRUNCATED_PNG = encode(textured(22), "PNG")[:300]
BAD_UPLOADS = [  # (file name, its bytes, the start of the message the page shows)
    ("broken.png", TRUNCATED_PNG, "broken.png: the image data is damaged or truncated"),
    ("notes.jpg", b"just some text", "notes.jpg: not an image in a format we read"),
    ("huge.bmp", b"BM" + bytes(MAX_UPLOAD_BYTES), "the upload is "),
]


@pytest.mark.parametrize("name, content, message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_upload_shows_the_api_message(served, browser, tmp_path,
                                          name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    page = open_page(served, browser)
    upload(page, path)
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=60_000)
    assert error.inner_text().startswith(message), error.inner_text()
    assert page.locator("#single").is_hidden() and page.locator("#score").is_hidden()
    page.close()


def test_preview_and_examples_refuse_bad_requests(served):
    response = requests.post(f"{served.url}/ui/preview?name=broken.png", data=TRUNCATED_PNG,
                             timeout=30)
    assert response.status_code == 400
    assert response.json()["error"].startswith("broken.png: the image data is damaged")
    response = requests.get(f"{served.url}/ui/examples/model.keras", timeout=30)
    assert response.status_code == 404 and "no example image" in response.json()["error"]


def test_several_files_give_a_sortable_table(served, browser, tmp_path):
    paths = []
    for seed in (30, 31, 32):
        paths.append(tmp_path / f"photo{seed}.png")
        textured(seed).save(paths[-1])
    paths.insert(1, tmp_path / "notes.png")
    paths[1].write_text("not an image")
    expected = {path.name: api_score(served, path) for path in paths if path.name != "notes.png"}
    page = open_page(served, browser)
    upload(page, *paths)
    rows = page.locator("#batch-table tbody tr")
    rows.first.wait_for(timeout=60_000)

    def table() -> list[list[str]]:
        return [row.split("\t") for row in rows.all_inner_texts()]

    assert [row[0] for row in table()] == [path.name for path in paths]  # upload order
    for name, mos, category in table():
        if name == "notes.png":
            assert mos == "–" and "not an image in a format we read" in category
        else:
            assert float(mos) == pytest.approx(expected[name]["mos"], abs=1e-3)
            assert category == expected[name]["category"]
    by_mos = sorted(expected, key=lambda name: expected[name]["mos"])
    page.locator("#batch-table th", has_text="MOS").click()
    assert [row[0] for row in table()] == by_mos + ["notes.png"]  # unscored files stay last
    page.locator("#batch-table th", has_text="MOS").click()
    assert [row[0] for row in table()] == by_mos[::-1] + ["notes.png"]
    page.locator("#batch-table th", has_text="File").click()
    assert [row[0] for row in table()] == sorted(expected) + ["notes.png"]
    assert page.locator("#single").is_hidden()
    page.close()


def test_example_images_score_in_one_click(served, browser, tmp_path):
    page = open_page(served, browser, "/ui")  # as the README gives it, without the slash
    buttons = page.locator("#examples button")
    assert buttons.count() == 5
    assert buttons.first.inner_text() == "clean photo"
    # JPEG transmission errors are local: the map shows where.
    example = tmp_path / "type12-level5.png"
    download = requests.get(f"{served.url}/ui/examples/{example.name}", timeout=30)
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    example.write_bytes(download.content)
    expected = api_score(served, example)
    buttons.filter(has_text="JPEG transmission errors").click()
    check_score_shown(page, expected)
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 320
    assert page.locator("#heatmap").is_visible()
    if os.environ.get("NRIQA_SCREENSHOT"):
        page.screenshot(path=os.environ["NRIQA_SCREENSHOT"], full_page=True)
    page.close()


# --- Scoring on this device ----------------------------------------------------------------------

PAGE_PATHS = {"/ui", "/ui/", "/ui/webpage.css", "/ui/webpage.js", "/ui/ondevice.js", "/ui/favicon.svg"}
ON_DEVICE_PATHS = {"/ui/portable/model.json", "/ui/portable/model.onnx",
                   "/ui/runtime/ort.wasm.min.mjs", "/ui/runtime/ort-wasm-simd-threaded.mjs",
                   "/ui/runtime/ort-wasm-simd-threaded.wasm"}


def recorded(page) -> list:
    """Every request the page makes from now on."""
    requests_made = []
    page.on("request", lambda request: requests_made.append(request))
    return requests_made


def score_on_device(page) -> None:
    page.locator("#on-device").check()
    page.locator("#device-status", has_text="Ready").or_(page.locator("#notice")).first.wait_for(
        timeout=120_000)
    assert page.locator("#notice").is_hidden(), page.locator("#notice").inner_text()


def shown_answer(page, name: str, where: str) -> dict:
    """The answer shown for `name`, once it is (its scored-by line names the file and where)."""
    page.locator("#scored-by", has_text=f"{name}: scored on {where}").wait_for(timeout=120_000)
    return json.loads(page.locator("#answer-json").text_content())


def save_screenshot(page, path: str) -> None:
    """The page as shown, in 256 colours: a small PNG for the docs."""
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True)))
    shot.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def check_same_answer(device: dict, server: dict) -> None:
    assert device["mos"] == pytest.approx(server["mos"], abs=0.01)
    assert device["category"] == server["category"]
    assert device["distortion_note"] == server["distortion_note"]  # "no distortion stands out"
    if server["distortions"] is None:
        assert device["distortions"] is None
    else:
        assert [d["type"] for d in device["distortions"]] == [d["type"] for d in server["distortions"]]
        assert [d["name"] for d in device["distortions"]] == [d["name"] for d in server["distortions"]]
        for mine, theirs in zip(device["distortions"], server["distortions"]):
            assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-3)
    ours, theirs = device["quality_map"], server["quality_map"]
    assert {k: ours[k] for k in ("width", "height", "crop_size", "tops", "lefts")} == {
        k: theirs[k] for k in ("width", "height", "crop_size", "tops", "lefts")}
    np.testing.assert_allclose(np.array(ours["scores"], dtype=float),
                               np.array(theirs["scores"], dtype=float), atol=1e-3)
    assert (device["model_version"], device["mlflow_run_id"]) == (
        server["model_version"], server["mlflow_run_id"])


def test_examples_and_an_upload_score_on_the_device_without_sending_the_image(
        served, browser, tmp_path):
    page = open_page(served, browser)
    requests_made = recorded(page)
    score_on_device(page)
    milliseconds, answers = {}, []
    buttons = page.locator("#examples button")
    for i in range(buttons.count()):
        file = buttons.nth(i).locator("img").get_attribute("src").rsplit("/", 1)[-1]
        example = tmp_path / file
        example.write_bytes(requests.get(f"{served.url}/ui/examples/{file}", timeout=30).content)
        buttons.nth(i).click()
        answers.append(shown_answer(page, file, "this device"))
        check_same_answer(answers[-1], api_score(served, example))
        assert page.locator("#mos").inner_text() == f"{api_score(served, example)['mos']:.2f}"
        assert page.locator("#heatmap").is_visible()
        milliseconds[file] = page.locator("#scored-by").inner_text()
        if file == "type12-level5.png" and os.environ.get("NRIQA_SCREENSHOT_ON_DEVICE"):
            save_screenshot(page, os.environ["NRIQA_SCREENSHOT_ON_DEVICE"])
    # Files of the user's: the case where the bytes exist nowhere but in the browser. One with
    # transparency (composited on white), one of weak features (no distortion stands out).
    photo = tmp_path / "private.png"
    pixels = np.asarray(textured(40, (200, 120)).convert("RGBA")).copy()
    pixels[:, :100, 3] = np.linspace(0, 255, 100).round().astype(np.uint8)
    Image.fromarray(pixels).save(photo)
    plain = tmp_path / "plain.png"
    textured(10).save(plain)
    for path in (photo, plain):
        upload(page, path)
        answers.append(shown_answer(page, path.name, "this device"))
        check_same_answer(answers[-1], api_score(served, path))
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 96
    # Both answers of the type head were compared: distortions listed, and none standing out.
    assert {bool(answer["distortions"]) for answer in answers} == {True, False}
    secret = photo.read_bytes()

    origin = served.url
    for request in requests_made:
        if request.url.startswith(f"blob:{origin}/"):
            continue  # the preview, made in the page from the decoded pixels
        assert request.url.startswith(f"{origin}/"), f"a request to another origin: {request.url}"
        path = request.url[len(origin):]
        assert request.method == "GET" and not request.post_data_buffer, (request.method, path)
        assert (path in PAGE_PATHS | ON_DEVICE_PATHS or path.startswith("/ui/examples/")), path
        assert photo.name not in path and plain.name not in path
    assert not any(secret[:64] in (request.post_data_buffer or b"") for request in requests_made)
    assert {request.url[len(origin):] for request in requests_made} >= ON_DEVICE_PATHS

    # Measured, not asserted: what a browser downloads once (as sent, gzipped), the time per image.
    for path in sorted(ON_DEVICE_PATHS):
        raw = requests.get(f"{origin}{path}", timeout=60, stream=True).raw
        sent = raw.read(decode_content=False)
        gzipped = raw.headers.get("content-encoding") == "gzip"
        size = len(gzip.decompress(sent)) if gzipped else len(sent)
        print(f"{path}: {size / 1e6:.3f} MB, sent as {len(sent) / 1e6:.3f} MB")
    print("\n".join(milliseconds.values()))
    page.close()


def test_several_files_score_on_the_device_in_a_table(served, browser, tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "notes.png", tmp_path / "b.png"]
    textured(50).save(paths[0])
    paths[1].write_text("not an image")
    textured(51, (40, 20)).save(paths[2])  # smaller than a crop: padded as the server pads
    page = open_page(served, browser)
    requests_made = recorded(page)
    score_on_device(page)
    upload(page, *paths)
    page.locator("#status", has_text="no image was uploaded").wait_for(timeout=120_000)
    rows = [row.split("\t") for row in page.locator("#batch-table tbody tr").all_inner_texts()]
    assert [row[0] for row in rows] == ["a.png", "notes.png", "b.png"]
    for name, mos, category in (rows[0], rows[2]):
        expected = api_score(served, tmp_path / name)
        assert float(mos) == pytest.approx(expected["mos"], abs=0.01)
        assert category == expected["category"]
    assert rows[1][2] == ("notes.png: not an image in a format we read "
                          "(JPEG, PNG, BMP, WebP, TIFF)")
    assert not [r.url for r in requests_made if r.method != "GET"]
    page.close()


def test_on_the_device_without_the_type_head(served_plain, browser, tmp_path):
    image = tmp_path / "holiday.png"
    textured(21).save(image)
    page = open_page(served_plain, browser)
    score_on_device(page)
    upload(page, image)
    check_same_answer(shown_answer(page, image.name, "this device"), api_score(served_plain, image))
    assert page.locator("#distortions").is_hidden()
    page.close()


def test_without_the_runtime_the_page_says_so_and_scores_on_the_server(served, browser, tmp_path):
    page = open_page(served, browser)
    # The WebAssembly binary cannot be fetched (a proxy dropping it, a network error).
    page.route("**/ort-wasm-simd-threaded.wasm", lambda route: route.abort())
    page.locator("#on-device").check()
    notice = page.locator("#notice")
    notice.wait_for(state="visible", timeout=120_000)
    assert notice.inner_text().startswith("Scoring on this device is not available: ")
    assert notice.inner_text().endswith("Images are scored on the server instead.")
    assert not page.locator("#on-device").is_checked()
    example = tmp_path / "clean.png"
    example.write_bytes(requests.get(f"{served.url}/ui/examples/clean.png", timeout=30).content)
    page.locator("#examples button").first.click()
    shown = shown_answer(page, "clean.png", "the server")
    expected = api_score(served, example)
    assert shown["mos"] == expected["mos"] and shown["category"] == expected["category"]
    check_score_shown(page, expected)
    page.close()


def test_the_page_loads_only_from_its_own_origin(served, browser):
    """The Content-Security-Policy is on the page, and the page runs under it, scoring on the
    device and on the server: no violation."""
    response = requests.get(f"{served.url}/ui/", timeout=30)
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self' 'wasm-unsafe-eval'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    page = browser.new_page()
    messages = []
    page.on("console", lambda message: messages.append(message.text))
    page.goto(f"{served.url}/ui/", wait_until="networkidle")
    score_on_device(page)
    page.locator("#examples button").first.click()
    shown_answer(page, "clean.png", "this device")
    page.locator("#on-device").uncheck()
    page.locator("#examples button").first.click()
    shown_answer(page, "clean.png", "the server")
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 320  # a blob: URL
    assert not [text for text in messages if "Content Security Policy" in text], messages
    page.close()


def test_the_pages_crop_grid_is_the_servers(served, browser):
    """ondevice.js's grid, thinning (numpy's round half to even included) against
    nriqa.core.imaging.grid_corners, over sizes around the crop and thinning to 1..48 crops."""
    from nriqa.core.imaging import grid_corners

    cases = [{"height": height, "width": width, "crop_size": 32, "stride": stride, "max_crops": most}
             for height in (8, 31, 32, 33, 64, 100, 240) for width in (8, 40, 96, 200, 333)
             for stride in (16, 32) for most in (1, 2, 5, 7, 48)]
    page = open_page(served, browser)
    page_grids = page.evaluate("""async (cases) => {
        const {gridCorners} = await import(new URL('ondevice.js', document.baseURI.replace(/\\/?$/, '/')).href);
        return cases.map((c) => gridCorners(c.height, c.width, c));
    }""", cases)
    for case, page_grid in zip(cases, page_grids, strict=True):
        expected = grid_corners(case["height"], case["width"], crop_size=32,
                                stride=case["stride"], max_crops=case["max_crops"])
        assert [tuple(corner) for corner in page_grid] == expected, case
    page.close()
