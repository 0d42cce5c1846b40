"""The scoring APIs' work: uploaded files in, a `Score` or a client error out.

Each upload is decoded and cut into its crop grid in a thread (`nriqa.core.imaging`, the same
path training and the CLI use); every failure there is the client's bad input and becomes a
4xx or, in a batch, that image's `{"error": ...}`. The crops go through the model together
with the other requests' (`nriqa.serving.batching`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.responses import JSONResponse

from nriqa.core.categories import categorize
from nriqa.core.errors import NriqaError
from nriqa.core.imaging import (
    IMAGE_FORMATS,
    crops_for_prediction,
    decode_image,
    prediction_layout,
)
from nriqa.core.runtime import usable_cpus
from nriqa.model.bundle import load_model
from nriqa.model.prediction import score_crop_sets, top_distortions
from nriqa.serving.batching import ModelBatcher
from nriqa.serving.quality_map import quality_map
from nriqa.serving.responses import (
    Distortion,
    ImageError,
    InputError,
    QualityMap,
    Score,
)
from nriqa.serving.settings import ServingSettings, serving_settings, stored_model

# Peak memory of decoding one image (`decode_image`), in bytes per pixel: Pillow's 4-byte pixels,
# a conversion, the 3-byte RGB array, the decoder's buffers (tests/test_imaging.py measures it).
DECODE_BYTES_PER_PIXEL = 12
# How many images of the largest size allowed (serve.max_pixels) may be decoded at once.
DECODE_BUDGET = 2


class MemoryBudget:
    """At most `limit` bytes held at once across requests; a holder waits for its share."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, amount: int):
        amount = min(amount, self.limit)
        async with self.changed:
            await self.changed.wait_for(lambda: self.used + amount <= self.limit)
            self.used += amount
        try:
            yield
        finally:
            async with self.changed:
                self.used -= amount
                self.changed.notify_all()


class UploadScorer:
    """Scores uploaded files for the service's APIs; holds what they share once it has started:
    the settings, the model's batcher and the decoding threads (the web page's previews use
    them too)."""

    def __init__(self, score_crop_sets: Callable, settings: ServingSettings) -> None:
        self.settings = settings
        self.batcher = ModelBatcher(score_crop_sets, settings.max_batch_size)
        # Decoding runs outside the event loop, one thread per CPU this process may use, and
        # never more than DECODE_BUDGET images' worth of decoding memory at once.
        self.decoder = ThreadPoolExecutor(max_workers=usable_cpus(), thread_name_prefix="decode")
        self.decoding = MemoryBudget(DECODE_BUDGET * settings.max_pixels * DECODE_BYTES_PER_PIXEL)

    @classmethod
    def for_model(cls, bento_model) -> UploadScorer:
        """Load the model a `bentoml.models.BentoModel` names, and its settings."""
        stored = stored_model(bento_model)
        model, info = load_model(stored.path)
        return cls(functools.partial(score_crop_sets, model), serving_settings(stored, info))

    async def score(self, image: Path, with_map: bool = False,
                    name: str = "upload") -> Score | JSONResponse:
        """One uploaded file's score; a 400 (413) if it cannot be scored, its message naming
        the file `name` (the client's, `nriqa.serving.middleware.upload_names`)."""
        (result,) = await self.score_uploads([(image, name, header_pixels(image))], with_map)
        # An image too large for the memory free now stays a 413, not a 400.
        return result.response() if isinstance(result, InputError) else result

    async def score_batch(self, images: list[Path], names: list[str] | None = None
                          ) -> list[Score | ImageError] | JSONResponse:
        """Each file's score or error, in order; a 400 (413) for the request as a whole. Errors
        name each file by `names` (the client's), else "upload"."""
        if not images:
            return InputError("no images in the request (send them as `images` fields)").response()
        # UploadGuard has capped the number of files; this caps the decoding work. Images over
        # the per-image limit are refused unread, so they cost nothing.
        limit = self.settings.max_batch_pixels
        sizes = [header_pixels(path) for path in images]
        pixels = sum(n for n in sizes if n <= self.settings.max_pixels)
        if pixels > limit:
            return InputError(
                f"the images of this request have {pixels} pixels in all, more than the limit "
                f"of {limit} per request (serve.max_batch_pixels); send fewer or smaller images "
                "per request", HTTPStatus.REQUEST_ENTITY_TOO_LARGE).response()
        results = await self.score_uploads(list(zip(images, names or ["upload"] * len(images),
                                                    sizes, strict=True)))
        return [ImageError(error=str(result)) if isinstance(result, InputError) else result
                for result in results]

    async def score_uploads(self, uploads: list[tuple[Path, str, int]],
                            with_map: bool = False) -> list[Score | InputError]:
        """Decode and crop (path, client's name, `header_pixels`) uploads in threads, then score
        with the other requests' images; a file that cannot be scored gets its `InputError`."""
        outcomes = await asyncio.gather(*(self.decoded(*upload) for upload in uploads),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, InputError):
                raise outcome
        good = [crops for crops, _ in (o for o in outcomes if not isinstance(o, InputError))]
        scores = iter(await self.batcher.score(good) if good else [])
        return [outcome if isinstance(outcome, InputError)
                else self.answer(next(scores), outcome[1] if with_map else None)
                for outcome in outcomes]

    async def decoded(self, path: Path, name: str, pixels: int) -> tuple[np.ndarray, tuple]:
        """`crops` in a decoding thread, once the memory its decoding takes is free."""
        cost = min(pixels, self.settings.max_pixels) * DECODE_BYTES_PER_PIXEL
        async with self.decoding.hold(cost):
            return await asyncio.get_running_loop().run_in_executor(self.decoder, self.crops,
                                                                    path, name)

    def crops(self, path: Path, name: str) -> tuple[np.ndarray, tuple]:
        """The crop grid of one uploaded file and where its crops lie (`prediction_layout`);
        every failure is the client's bad input."""
        preprocessing = self.settings.preprocessing
        try:
            image = decode_image(path, name=name, max_pixels=self.settings.max_pixels)
            return (crops_for_prediction(image, preprocessing),
                    prediction_layout(image, preprocessing))
        except NriqaError as error:
            raise InputError(str(error)) from error
        except MemoryError as error:
            raise InputError(f"{name}: too large to score with the memory free now; send a "
                             "smaller image", HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from error
        except Exception as error:  # a decoder bug on hostile bytes is still a bad image
            raise InputError(f"{name}: cannot decode this image ({type(error).__name__}: {error})"
                             ) from error

    def answer(self, output: tuple, layout: tuple | None) -> Score:
        """The answer for one image from its model output; with its crop layout, its quality
        map too."""
        mos, probabilities, crop_scores = output
        distortions = None  # a model without the distortion-type head: nothing to say
        if probabilities is not None:
            distortions = [Distortion(**entry) for entry in top_distortions(probabilities)]
        grid = None
        if layout is not None:
            width, height, corners = layout
            grid = QualityMap(**quality_map(width, height, corners,
                                            self.settings.preprocessing["crop_size"], crop_scores))
        return Score(mos=round(mos, 6), category=categorize(mos, self.settings.categories),
                     distortions=distortions, model_version=self.settings.model_version,
                     mlflow_run_id=self.settings.mlflow_run_id, quality_map=grid)


def header_pixels(path: Path) -> int:
    """Width x height as the file's header states it; 0 for what is not an image in one of
    `IMAGE_FORMATS` (its own error comes when it is decoded)."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            return image.width * image.height
    except Exception:
        return 0
