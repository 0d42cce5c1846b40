"""The web page at /ui in a real headless browser: upload an image, read the score and the
likeliest distortions off the page.

Playwright drives Debian's chromium (`make system-deps` installs it; `playwright install`
cannot download browsers here). The server is the one test_service.py starts.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import requests

from test_cli import textured
from test_service import served, served_plain  # noqa: F401  the servers test_service.py starts

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


def upload(page, path: Path) -> None:
    page.locator("#image-upload input[type=file]").set_input_files(str(path))


def score_on_page(server, browser, image: Path):
    """Upload `image` on the server's page; returns (the page, once its score is shown,
    and the `score` API's answer for the same image)."""
    expected = requests.post(f"{server.url}/score", timeout=60,
                             files={"image": (image.name, image.read_bytes())}).json()
    page = browser.new_page()
    page.goto(f"{server.url}/ui/", wait_until="networkidle")
    assert "image quality" in page.content()
    upload(page, image)
    # The category box fills in when the score arrives (the MOS box starts at 0).
    category = page.locator("#category textarea, #category input").first
    page.wait_for_function("el => el.value !== ''", arg=category.element_handle(),
                           timeout=60_000)
    assert category.input_value() == expected["category"]
    assert float(page.locator("#mos input").input_value()) == pytest.approx(expected["mos"],
                                                                            abs=1e-3)
    return page, expected


def test_upload_shows_score_category_and_distortions(served, browser, tmp_path):  # noqa: F811
    image = tmp_path / "holiday.jpg"
    textured(21).save(image, quality=90)
    page, expected = score_on_page(served, browser, image)
    assert len(expected["distortions"]) == 3
    # The three likeliest distortions, in the API's order, each with its probability in %.
    panel = page.locator("#distortions")
    panel.wait_for(state="visible", timeout=30_000)
    text = panel.inner_text()
    positions = [text.find(d["name"]) for d in expected["distortions"]]
    assert -1 not in positions and positions == sorted(positions), text
    for distortion in expected["distortions"]:
        assert f"{round(distortion['probability'] * 100)}%" in text, text
    page.close()


def test_no_distortions_shown_without_type_head(served_plain, browser, tmp_path):  # noqa: F811
    image = tmp_path / "holiday.jpg"
    textured(21).save(image, quality=90)
    page, expected = score_on_page(served_plain, browser, image)
    assert expected["distortions"] is None
    assert not page.locator("#distortions").is_visible()
    assert "Likeliest distortions" not in page.locator("body").inner_text()
    page.close()


def test_bad_upload_shows_the_error(served, browser, tmp_path):  # noqa: F811
    broken = tmp_path / "broken.png"
    buffer = io.BytesIO()
    textured(22).save(buffer, "PNG")
    broken.write_bytes(buffer.getvalue()[:300])

    page = browser.new_page()
    page.goto(f"{served.url}/ui/", wait_until="networkidle")
    upload(page, broken)
    page.get_by_text("truncated").first.wait_for(timeout=60_000)
    page.close()
