"""The web page at /ui: a plain HTML page (`webpage.html`) that calls the service's own API.

The page posts uploads to `/score` (with `map=true`, for the heat map) and `/score_batch`, so
it scores exactly as the API does and shows the API's own error messages. This ASGI app only
serves the page, its example images, and previews: every upload is previewed as
`nriqa.core.imaging.decode_image` decodes it (TIFF and 16-bit files too, which browsers do not show,
upright as EXIF says, transparency on white), the pixels the model scores.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nriqa.core.categories import ordered_categories
from nriqa.core.errors import NriqaError
from nriqa.core.imaging import decode_image
from nriqa.data.examples import read_index
from nriqa.serving.quality_map import ramp

if TYPE_CHECKING:
    from nriqa.serving.api import UploadScorer
    from nriqa.serving.settings import ServingSettings

PAGE = Path(__file__).with_name("webpage.html")
PREVIEW_SIDE = 1024  # longest side of a preview; the page shows it at most this large


def page_config(settings: ServingSettings, examples: list[dict]) -> dict:
    """What the page's script needs: the scale, category bounds (best first), colours, model."""
    names, bounds = ordered_categories(settings.categories)
    return {"scale": list(settings.mos_range),
            "categories": [[name, float(bound)] for name, bound in zip(names, bounds)]
                          + [[names[-1], settings.mos_range[0]]],
            "ramp": [[mos, list(rgb)] for mos, rgb in ramp(settings.mos_range)],
            "model_version": settings.model_version, "mlflow_run_id": settings.mlflow_run_id,
            "model_tag": settings.model_tag, "max_batch_images": settings.max_batch_images,
            "examples": examples}


def preview_png(data: bytes, name: str, max_pixels: int) -> bytes:
    image = Image.fromarray(decode_image(data, name=name, max_pixels=max_pixels))
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


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
        return HTMLResponse(page()[0])

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

    return Starlette(routes=[Route("/", show_page), Route("/preview", preview, methods=["POST"]),
                             Route("/examples/{file}", show_example)])
