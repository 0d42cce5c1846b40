"""The web page at /ui in a real headless browser against a real `bentoml serve`: upload an
image and read its preview, score on its scale, heat map, distortions and model off the page;
a damaged upload's message; a batch table that sorts; the example images.

Playwright drives Debian's chromium (`make system-deps` installs it; `playwright install`
cannot download browsers here). The servers are conftest.py's `served` and `served_plain`,
shared with test_service.py.
NRIQA_SCREENSHOT=docs/webpage.png keeps a screenshot of the page, an example scored, there
(the README's).
"""

from __future__ import annotations

import base64
import io
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
    # 320x240 has 80 cells of 32, thinned to the model's 48 crops.
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
    assert sum(score is None for row in grid["scores"] for score in row) == 80 - 48
    # Drawn as map_values paints it at the canvas's size: the thinned cells too, so not striped.
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
