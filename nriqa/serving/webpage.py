"""The web page at /ui: a plain HTML page (`webpage.html`, its script `webpage.js` and style
`webpage.css`) that calls the service's own API, or scores on the device.

The page posts uploads to `/score` (with `map=true`, for the heat map) and `/score_batch`, so
it scores exactly as the API does and shows the API's own error messages. This ASGI app only
serves the page, its example images, and previews: every upload is previewed as
`nriqa.core.imaging.decode_image` decodes it (TIFF and 16-bit files too, which browsers do not show,
upright as EXIF says, transparency on white), the pixels the model scores.

"Score on this device" (`ondevice.js`) runs the exported model (`portable/model.onnx` of the
stored model, `nriqa.model.export`) in the browser with onnxruntime-web's WebAssembly build,
both served from here (`/ui/portable/`, `/ui/runtime/`), so the image is never uploaded. Every
response carries a Content-Security-Policy that lets the page load only from this origin.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import io
import json
from collections.abc import Callable
from inspect import signature
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nriqa.core.categories import ordered_categories
from nriqa.core.errors import NriqaError
from nriqa.core.imaging import FORMAT_NAMES, MIN_SIDE, decode_image
from nriqa.core.taxonomy import TYPE_NAMES, type_name
from nriqa.data.examples import read_index
from nriqa.model.portable import INFO, ONNX_FILE, PORTABLE_FORMAT
from nriqa.model.prediction import (
    NO_STANDOUT_NOTE,
    STANDOUT_MIN_PROBABILITY,
    STANDOUT_MIN_TIMES_UNIFORM,
    likely_distortions,
)
from nriqa.ops.packaging import RUNTIME_FILES, RUNTIME_PATH
from nriqa.serving.quality_map import MAP_REACH_SPACINGS, ramp

if TYPE_CHECKING:
    from nriqa.serving.api import UploadScorer
    from nriqa.serving.settings import ServingSettings

PAGE = Path(__file__).with_name("webpage.html")
# The page's script and style, beside it: files, so that the Content-Security-Policy need not
# allow inline code.
ASSETS = {"webpage.js": "text/javascript", "ondevice.js": "text/javascript",
          "webpage.css": "text/css", "favicon.svg": "image/svg+xml"}
PREVIEW_SIDE = 1024  # longest side of a preview; the page shows it at most this large

# onnxruntime-web's WebAssembly build, beside the `nriqa` package, in the project as in the Bento.
RUNTIME_DIR = Path(__file__).resolve().parents[2] / RUNTIME_PATH
RUNTIME_TYPES = {file: "application/wasm" if file.endswith(".wasm") else "text/javascript"
                 for file in RUNTIME_FILES}
# What the page reads of the stored model's exported form (not the TFLite file).
PORTABLE_FILES = {INFO: "application/json", ONNX_FILE: "application/octet-stream"}

# Only this origin: the page's own script and style, its images (examples, and previews the page
# makes as blob: URLs from pixels decoded in the browser), fetches of the API and the model, and
# WebAssembly compiled from the runtime's binary ('wasm-unsafe-eval' allows that and no eval()).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' blob:; connect-src 'self'; worker-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# No cross-origin isolation (COOP and COEP), which would let the runtime use several threads:
# on small crops one thread was faster (docs/serving.md, "Scoring on this device").
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def page_config(settings: ServingSettings, examples: list[dict]) -> dict:
    """What the page's script needs: the scale, category bounds (best first), colours, how far
    the map paints a crop's score, model, and what scoring on the device needs besides the
    exported model."""
    names, bounds = ordered_categories(settings.categories)
    return {"scale": list(settings.mos_range),
            "categories": [[name, float(bound)] for name, bound in zip(names, bounds)]
                          + [[names[-1], settings.mos_range[0]]],
            "ramp": [[mos, list(rgb)] for mos, rgb in ramp(settings.mos_range)],
            "map_reach_spacings": MAP_REACH_SPACINGS,
            "model_version": settings.model_version, "mlflow_run_id": settings.mlflow_run_id,
            "model_tag": settings.model_tag, "max_batch_images": settings.max_batch_images,
            "examples": examples, "on_device": on_device_config(settings)}


def on_device_config(settings: ServingSettings) -> dict:
    """For `ondevice.js`: why it cannot run here (None when it can), and the rules it shares with
    the server, from the one place each is kept."""
    return {"unavailable": on_device_unavailable(settings.portable_dir),
            "portable_format": PORTABLE_FORMAT, "min_side": MIN_SIDE,
            "format_names": FORMAT_NAMES,
            # The number of each type the head names (nriqa.core.taxonomy), as the API gives it.
            "type_numbers": {type_name(number): number for number in (0, *TYPE_NAMES)},
            # When the API lists distortions, and how many (nriqa.model.prediction).
            "distortions": {"listed": signature(likely_distortions).parameters["count"].default,
                            "min_probability": STANDOUT_MIN_PROBABILITY,
                            "min_times_uniform": STANDOUT_MIN_TIMES_UNIFORM,
                            "note": NO_STANDOUT_NOTE}}


def on_device_unavailable(portable_dir: Path, runtime_dir: Path = RUNTIME_DIR) -> str | None:
    """Why the page cannot score on the device with this service, or None."""
    if not all((portable_dir / file).is_file() for file in PORTABLE_FILES):
        return ("the served model was packaged without its exported form (package it with "
                "`python -m stages.package --portable`)")
    if not all((runtime_dir / file).is_file() for file in RUNTIME_FILES):
        return ("the service was built without onnxruntime-web (run `make node`, which runs "
                "`npm ci`, before packaging)")
    return None


def preview_png(data: bytes, name: str, max_pixels: int) -> bytes:
    image = Image.fromarray(decode_image(data, name=name, max_pixels=max_pixels))
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@functools.lru_cache(maxsize=16)
def _encoded(path: Path, size: int, mtime_ns: int) -> tuple[str, bytes | None]:
    """A file's ETag (its sha256) and gzip encoding (None where gzip saves under a tenth), made
    once per version of the file: the runtime's binary shrinks from 14 MB to 4 MB."""
    data = path.read_bytes()
    packed = gzip.compress(data, compresslevel=6, mtime=0)
    return f'"{hashlib.sha256(data).hexdigest()[:32]}"', (
        packed if len(packed) < 0.9 * len(data) else None)


async def send_file(request: Request, path: Path, media_type: str) -> Response:
    """A file, gzipped where the browser accepts it; revalidated by its ETag on each load (304),
    so a browser keeps the runtime and the model until they change."""
    if not path.is_file():
        return JSONResponse({"error": f"no file {path.name} here"}, status_code=404)
    stat = path.stat()
    tag, packed = await asyncio.to_thread(_encoded, path, stat.st_size, stat.st_mtime_ns)
    headers = {"ETag": tag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if packed is not None and "gzip" in request.headers.get("accept-encoding", ""):
        return Response(packed, media_type=media_type,
                        headers={**headers, "Content-Encoding": "gzip"})
    return FileResponse(path, media_type=media_type, headers=headers)


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response of the page app (pure ASGI: it wraps file and
    streaming responses as they are)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def webpage_app(scorer: Callable[[], UploadScorer]) -> Starlette:
    """The page app of the running service: `scorer` gives its `UploadScorer`, whose settings the
    page shows and whose decoding threads make the previews. Asked at the first request, since
    the app is built before the service has started."""

    @functools.cache
    def page() -> tuple[str, Path, set[str]]:
        settings = scorer().settings
        examples = read_index(settings.examples_dir)
        # The configuration is JSON inside a <script>; "</" must not end that element early.
        config = json.dumps(page_config(settings, examples)).replace("</", "<\\/")
        return (PAGE.read_text().replace("__CONFIG__", config), settings.examples_dir,
                {example["file"] for example in examples})

    async def show_page(request: Request) -> HTMLResponse:
        # Its script and style by absolute path, whether the page was opened as /ui or /ui/.
        return HTMLResponse(page()[0].replace("__ROOT__", request.scope.get("root_path", "")))

    async def show_asset(request: Request) -> Response:
        file = request.url.path.rsplit("/", 1)[-1]  # one of ASSETS: each has its own route
        return await send_file(request, PAGE.with_name(file), ASSETS[file])

    async def show_runtime(request: Request) -> Response:
        file = request.path_params["file"]
        if file not in RUNTIME_TYPES:
            return JSONResponse({"error": f"no runtime file {file}"}, status_code=404)
        return await send_file(request, RUNTIME_DIR / file, RUNTIME_TYPES[file])

    async def show_portable(request: Request) -> Response:
        file = request.path_params["file"]
        if file not in PORTABLE_FILES:
            return JSONResponse({"error": f"no exported model file {file}"}, status_code=404)
        return await send_file(request, scorer().settings.portable_dir / file,
                               PORTABLE_FILES[file])

    async def show_example(request: Request) -> Response:
        _, examples_dir, files = page()
        file = request.path_params["file"]
        if file not in files:
            return JSONResponse({"error": f"no example image {file}"}, status_code=404)
        return FileResponse(examples_dir / file, media_type="image/png")

    async def preview(request: Request) -> Response:
        name = request.query_params.get("name", "upload")[:200]
        data = await request.body()  # UploadGuard has capped its size
        running = scorer()
        try:
            png = await asyncio.get_running_loop().run_in_executor(
                running.decoder, preview_png, data, name, running.settings.max_pixels)
        except Exception as error:  # a decoder bug on hostile bytes is still a bad image
            message = str(error) if isinstance(error, NriqaError) else (
                f"{name}: cannot decode this image ({type(error).__name__})")
            return JSONResponse({"error": message}, status_code=400)
        return Response(png, media_type="image/png")

    return Starlette(
        routes=[Route("/", show_page), Route("/preview", preview, methods=["POST"]),
                Route("/examples/{file}", show_example),
                *(Route(f"/{file}", show_asset) for file in ASSETS),
                Route("/runtime/{file}", show_runtime), Route("/portable/{file}", show_portable)],
        middleware=[Middleware(SecurityHeaders)])
