"""The web page at /ui in a real headless browser: upload an image, read the score off the page.

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
from test_service import served  # noqa: F401  the same running server as test_service.py

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


def test_upload_shows_score_and_category(served, browser, tmp_path):  # noqa: F811
    image = tmp_path / "holiday.jpg"
    textured(21).save(image, quality=90)
    expected = requests.post(f"{served.url}/score", timeout=60,
                             files={"image": (image.name, image.read_bytes())}).json()

    page = browser.new_page()
    page.goto(f"{served.url}/ui/", wait_until="networkidle")
    assert "image quality" in page.content()
    upload(page, image)
    # The category box fills in when the score arrives (the MOS box starts at 0).
    category = page.locator("#category textarea, #category input").first
    page.wait_for_function("el => el.value !== ''", arg=category.element_handle(),
                           timeout=60_000)
    assert category.input_value() == expected["category"]
    assert float(page.locator("#mos input").input_value()) == pytest.approx(expected["mos"],
                                                                            abs=1e-3)
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
