"""Scoring on the device against scoring on the server, in headless Chromium, one image at a time.

    .venv/bin/python -m benchmarks.bench_browser [--bento nriqa:latest] [--images 24]
        [--screenshot docs/ondevice.png]

Serves the Bento that `dvc repro` built (BENTOML_HOME, default the project's bentoml_home/),
opens the web page, and scores `--images` 512x384 PNGs (bench_cli's images) through the page:
first with "Score on this device" ticked (onnxruntime-web, nothing uploaded), then on the server.
Each mode's time per image is the wall time from choosing the file to the score shown, and for
the device mode also the page's own count (`#scored-by`: decoding, crops and model). Prints
the medians, the largest MOS difference between the two modes, and what the browser downloads
for the device mode (as sent, and unpacked).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

from benchmarks.bench_cli import write_images
from nriqa.core.runtime import configure
from tests.helpers import VENV_BIN, free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
DEVICE_FILES = ("/ui/portable/model.onnx", "/ui/portable/model.json",
                "/ui/runtime/ort.wasm.min.mjs", "/ui/runtime/ort-wasm-simd-threaded.mjs",
                "/ui/runtime/ort-wasm-simd-threaded.wasm")


def serve(bento: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": os.environ.get("BENTOML_HOME", str(ROOT / "bentoml_home"))}
    process = subprocess.Popen([str(VENV_BIN / "bentoml"), "serve", bento, "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"bentoml serve exited: {log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/ui/portable/model.json", timeout=30).status_code == 200:
                return process, url
        except requests.RequestException:  # not listening yet, or still starting its workers
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not start")


def score_all(page, paths: list[Path], where: str) -> tuple[list[float], list[float], list[float]]:
    """(the page's own ms per image, wall ms per image, MOS) for each file, one after the other."""
    own, wall, mos = [], [], []
    for path in paths:
        start = time.perf_counter()
        page.locator("#files").set_input_files(str(path))
        line = page.locator("#scored-by", has_text=f"{path.name}: scored on {where}")
        line.wait_for(timeout=120_000)
        wall.append((time.perf_counter() - start) * 1000)
        counted = re.search(r"in (\d+) ms", line.inner_text())  # the device mode counts its own
        own.append(float(counted.group(1)) if counted else float("nan"))
        mos.append(json.loads(page.locator("#answer-json").text_content())["mos"])
    return own, wall, mos


def downloads(url: str) -> list[tuple[str, int, int]]:
    sizes = []
    for path in DEVICE_FILES:
        raw = requests.get(f"{url}{path}", timeout=60, stream=True,
                           headers={"Accept-Encoding": "gzip"}).raw
        sent = raw.read(decode_content=False)
        unpacked = requests.get(f"{url}{path}", timeout=60).content
        sizes.append((path, len(sent), len(unpacked)))
    return sizes


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bento", default="nriqa:latest")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--screenshot", type=Path, help="keep a screenshot of the device mode here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch, "images")
        folder.mkdir()
        jpegs = write_images(folder, args.images)
        paths = []
        for jpeg in jpegs:  # PNG: the browser's decoder and Pillow's then give the same pixels
            paths.append(jpeg.with_suffix(".png"))
            Image.open(jpeg).save(paths[-1])
        process, url = serve(args.bento, Path(scratch, "serve.log"))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                    headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1100, "height": 1000})
                page.goto(f"{url}/ui/", wait_until="networkidle")
                page.locator("#on-device").check()
                page.locator("#device-status", has_text="Ready").wait_for(timeout=120_000)
                device = score_all(page, paths, "this device")
                if args.screenshot:  # 256 colours: a small PNG for the docs
                    shot = Image.open(io.BytesIO(page.screenshot(full_page=True)))
                    shot.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
                        args.screenshot, optimize=True)
                page.locator("#on-device").uncheck()
                server = score_all(page, paths, "the server")
                browser.close()
            sizes = downloads(url)
        finally:
            stop_process_group(process)
    print(f"scored on this device: median {statistics.median(device[0]):.0f} ms per image by the "
          f"page's count (decoding, crops, model), {statistics.median(device[1]):.0f} ms from "
          "choosing the file to the score shown")
    print(f"scored on the server: median {statistics.median(server[1]):.0f} ms from choosing the "
          "file to the score shown")
    print(f"largest MOS difference, device vs server: "
          f"{max(abs(a - b) for a, b in zip(device[2], server[2])):.2e} over {len(paths)} images")
    for path, sent, unpacked in sizes:
        print(f"{path}: {unpacked / 1e6:.2f} MB, sent as {sent / 1e6:.2f} MB")


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
