"""The nriqa BentoML service: upload an image, get its predicted MOS, quality category,
likeliest distortions and, with `map=true`, its quality map.

One service (`bentoml serve service:NRIQA`, or the built Bento): it decodes uploads with
`nriqa.model.imaging`, cuts each image's crop grid, answers bad input with a 4xx, serves the web page
at /ui (`nriqa.serving.webpage`, which calls this API), and scores with the Keras model loaded in the
same worker. `ModelBatcher` merges the images of concurrent requests into one model call. (A
second, batchable BentoML service behind `bentoml.depends` did this before; its HTTP client
dropped calls in flight each time it renewed its session and once stalled a request for 120 s,
and moving crops between processes cost throughput: issue 13, BENCHMARKS.md.)

Configuration: the model comes from NRIQA_MODEL_TAG (default `nriqa:latest`). The serving
limits and category thresholds were baked into that model's metadata at package time
(params.yaml `serve` and `evaluate.categories`); NRIQA_<KEY> overrides serve.<key>
(NRIQA_MAX_UPLOAD_BYTES, NRIQA_MAX_PIXELS, NRIQA_MAX_BATCH_IMAGES, ...). The page's example
images were made then too and lie beside the model (`nriqa.data.examples`).
"""

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import bentoml
import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from nriqa.errors import NriqaError
from nriqa.model.imaging import crops_for_prediction, decode_image, prediction_layout
from nriqa.evaluation.metrics import categorize
from nriqa.ops.packaging import EXAMPLES_DIR, SERVE_KEYS
from nriqa.model.prediction import top_distortions
from nriqa.serving.quality_map import quality_map
from nriqa.serving.webpage import webpage_app


def _model_tag() -> str:
    """NRIQA_MODEL_TAG, else the model a built Bento was packaged with, else `nriqa:latest`.

    BentoML 1.4 keeps a Bento's models in the shared model store, where `nriqa:latest` is
    the newest model packaged, not necessarily this Bento's; the package stage records the
    exact tag in the Bento's labels, and `bento.yaml` sits beside the Bento's `src/`.
    """
    if tag := os.environ.get("NRIQA_MODEL_TAG"):
        return tag
    bento_yaml = Path(__file__).resolve().parent.parent / "bento.yaml"
    if bento_yaml.is_file():
        labels = yaml.safe_load(bento_yaml.read_text()).get("labels") or {}
        if labels.get("model_tag"):
            return labels["model_tag"]
    return "nriqa:latest"


MODEL_TAG = _model_tag()


def load_settings(model_tag: str) -> dict:
    """What the service needs besides the weights: lineage, limits, preprocessing, thresholds.

    Read when this module is imported, because the upload limits configure the middleware
    that is added then.
    """
    try:
        stored = bentoml.models.get(model_tag)
    except bentoml.exceptions.NotFound as error:
        raise NriqaError(f"model {model_tag} is not in the BentoML model store (BENTOML_HOME="
                         f"{os.environ.get('BENTOML_HOME', '~/bentoml')}); run `dvc repro package` "
                         "or set NRIQA_MODEL_TAG") from error
    metadata = stored.info.metadata
    limits = dict(metadata["serve"])
    for key in SERVE_KEYS:
        if (value := os.environ.get(f"NRIQA_{key.upper()}")) is not None:
            limits[key] = int(value)
        elif key not in limits:  # packaged before the limit existed
            raise NriqaError(f"model {stored.tag} was packaged without serve.{key}; package it "
                             f"again (`dvc repro package`) or set NRIQA_{key.upper()}")
    model_json = json.loads(Path(stored.path_of("model.json")).read_text())
    return {
        "model_tag": str(stored.tag),
        "model_version": str(metadata.get("registry_version", "")),
        "mlflow_run_id": str(metadata.get("mlflow_run_id", "")),
        "categories": dict(metadata["categories"]),
        "preprocessing": model_json["preprocessing"],
        "examples_dir": Path(stored.path) / EXAMPLES_DIR,
        **limits,
    }


SETTINGS = load_settings(MODEL_TAG)


class ModelBatcher:
    """Scores the crop sets of concurrent requests together, one model call at a time.

    While a call runs on the model thread, the images of the requests that arrive queue up;
    the next call takes them all (up to `max_images`). So the batch grows with the load and
    no request waits for a timer. It runs in the HTTP worker's own process: no second
    service, no copy of the crops over a socket.
    """

    def __init__(self, model, max_images: int) -> None:
        self.model, self.max_images = model, max_images
        self.queue: list[tuple[np.ndarray, asyncio.Future]] = []
        self.draining: asyncio.Task | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def score(self, crop_sets: list[np.ndarray]) -> list[tuple]:
        """(MOS, distortion-type probabilities or None, crop scores) per image, as
        `score_crop_sets` gives them."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in crop_sets]
        self.queue.extend(zip(crop_sets, futures))
        if self.draining is None or self.draining.done():
            self.draining = loop.create_task(self._drain())
        return await asyncio.gather(*futures)

    async def _drain(self) -> None:
        from nriqa.model.prediction import score_crop_sets

        loop = asyncio.get_running_loop()
        while self.queue:
            batch, self.queue = self.queue[:self.max_images], self.queue[self.max_images:]
            try:
                mos, probabilities, crop_scores = await loop.run_in_executor(
                    self.thread, score_crop_sets, self.model, [crops for crops, _ in batch])
            except Exception as error:  # each waiting request answers with it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for i, (_, future) in enumerate(batch):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result((float(mos[i]),
                                       None if probabilities is None else probabilities[i],
                                       crop_scores[i]))


class Distortion(BaseModel):
    type: int = Field(description="TID2013 distortion type, 1..24")
    name: str = Field(description="the distortion type's name (nriqa.data.distortions.DISTORTIONS)")
    probability: float = Field(description="the model's probability that this is the distortion")


class QualityMap(BaseModel):
    """The crop scores whose mean is the MOS, where their crops lie (`nriqa.serving.quality_map`)."""

    width: int = Field(description="width of the frame the crops were cut from: the image as "
                                   "scored (preprocess.mode resize: after resizing)")
    height: int = Field(description="height of that frame")
    crop_size: int = Field(description="side of each square crop, in frame pixels")
    tops: list[int] = Field(description="top edge of each row of crops")
    lefts: list[int] = Field(description="left edge of each column of crops")
    scores: list[list[float | None]] = Field(
        description="scores[i][j]: MOS of the crop at (tops[i], lefts[j]); null where the grid "
                    "was thinned to predict.max_crops. Their mean is `mos`.")


class Score(BaseModel):
    mos: float = Field(description="predicted mean opinion score")
    category: str = Field(description="quality category of the MOS (params.yaml evaluate.categories)")
    distortions: list[Distortion] | None = Field(
        description="the three likeliest TID2013 distortion types, likeliest first; null when "
                    "the model has no distortion-type head")
    model_version: str = Field(description="MLflow registry version of the model")
    mlflow_run_id: str = Field(description="MLflow run that trained the model")
    quality_map: QualityMap | None = Field(
        default=None, description="with map=true: the crop scores averaged into `mos`")


class ImageError(BaseModel):
    error: str = Field(description="why this image could not be scored")


class InputError(Exception):
    """Bad input from the client; becomes a JSON `{"error": ...}` with a 4xx status."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status

    def response(self) -> JSONResponse:
        # Returned rather than raised: BentoML 1.4 wraps raised 4xx messages in a list.
        return JSONResponse({"error": str(self)}, status_code=self.status)


class UploadGuard:
    """ASGI middleware: check an upload's size and shape before BentoML parses it.

    * Bodies over the upload limit get 413 before they are read; bodies without a
      Content-Length (chunked) get 411, so every accepted body has a known, bounded size.
    * On the scoring APIs, anything but multipart/form-data gets 415, and the form must hold
      only file parts in the API's field. BentoML 1.4 answers a text part there (it tries
      to download it as a URL) or a file in an unknown field with a 500; this turns them
      into a 400 that says what to send. The API's options (`map`) are the text parts allowed.
    """

    FILE_FIELDS = {"/score": "image", "/score_batch": "images"}
    OPTION_FIELDS = {"/score": ("map",)}

    def __init__(self, app, max_bytes: int, max_files: int) -> None:
        self.app, self.max_bytes, self.max_files = app, max_bytes, max_files

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            self._check_length(scope)
            path = scope["path"].rstrip("/")
            field = self.FILE_FIELDS.get(path)
            if field is not None:
                body = await self._read_body(receive)
                await self._check_form(scope, body, field, self.OPTION_FIELDS.get(path, ()),
                                       self.max_files)
                receive = _replay(body, receive)
        except InputError as error:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_length(self, scope) -> None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is None:
            if b"chunked" in headers.get(b"transfer-encoding", b""):
                raise InputError("send the upload with a Content-Length header",
                                 HTTPStatus.LENGTH_REQUIRED)
        elif not length.isdigit() or int(length) > self.max_bytes:
            raise InputError(f"the upload is {length.decode(errors='replace')} bytes, more than "
                             f"the limit of {self.max_bytes}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    async def _read_body(self, receive) -> bytes:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InputError("the client went away")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:  # a client that sent more than its Content-Length said
                raise InputError(f"the upload is over the limit of {self.max_bytes} bytes",
                                 HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    async def _check_form(scope, body: bytes, field: str, options: tuple[str, ...],
                          max_files: int) -> None:
        from starlette.datastructures import Headers, UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        headers = Headers(scope=scope)
        if headers.get("content-type", "").split(";")[0].strip() != "multipart/form-data":
            raise InputError(f"send the image as a multipart/form-data upload in the field "
                             f"`{field}` (e.g. curl -F {field}=@photo.jpg)",
                             HTTPStatus.UNSUPPORTED_MEDIA_TYPE)

        async def stream():
            yield body

        try:
            form = await MultiPartParser(headers, stream(), max_files=max_files).parse()
        except MultiPartException as error:
            if error.message.startswith("Too many files"):
                raise InputError(f"more than {max_files} images in one request, the limit "
                                 "(serve.max_batch_images); send them in several requests",
                                 HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from error
            raise InputError(f"malformed multipart upload: {error.message}") from error
        try:
            for name, value in form.multi_items():
                if name in options:
                    if isinstance(value, UploadFile) or value.lower() not in ("true", "false"):
                        raise InputError(f"the option `{name}` must be true or false")
                    continue
                if name != field:
                    raise InputError(f"unexpected form field `{name}`; send the image(s) in "
                                     f"the field `{field}`")
                if not isinstance(value, UploadFile):
                    raise InputError(f"the field `{field}` must be a file upload, not text "
                                     f"(e.g. curl -F {field}=@photo.jpg)")
                if len(value.filename or "") > 200 or "\0" in (value.filename or ""):
                    raise InputError("the upload's filename is too long or not printable")
            if not form.getlist(field):
                raise InputError(f"no image in the request; send it in the field `{field}`")
            if field == "image" and len(form.getlist(field)) > 1:
                raise InputError("`score` takes one image; use `score_batch` for several")
        finally:
            await form.close()


def _replay(body: bytes, receive):
    """A `receive` that hands the already-read body to the app, then defers to the client."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# Decoding runs outside the event loop, a few images at a time: a decoded image can take
# max_pixels * 3 bytes, so this bounds the memory a burst of large uploads can claim.
_decoder = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="decode")


def _crops(path: Path, name: str) -> tuple[np.ndarray, tuple]:
    """The crop grid of one uploaded file and where its crops lie (`prediction_layout`);
    every failure is the client's bad input."""
    try:
        image = decode_image(path, name=name, max_pixels=SETTINGS["max_pixels"])
        return (crops_for_prediction(image, SETTINGS["preprocessing"]),
                prediction_layout(image, SETTINGS["preprocessing"]))
    except NriqaError as error:
        raise InputError(str(error)) from error
    except MemoryError as error:
        raise InputError(f"{name}: too large to score with the memory free now; send a "
                         "smaller image", HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from error
    except Exception as error:  # a decoder bug on hostile bytes is still a bad image
        raise InputError(f"{name}: cannot decode this image ({type(error).__name__}: {error})"
                         ) from error


def _header_pixels(path: Path) -> int:
    """Width x height as the file's header states it; 0 for what is not an image (its own
    error comes when it is decoded)."""
    try:
        with Image.open(path) as image:
            return image.width * image.height
    except Exception:
        return 0


def _upload_name(path: Path) -> str:
    # BentoML keeps each upload in a NamedTemporaryFile whose name is "tmp" + 8 random
    # characters + the client's filename; error messages should name the client's file.
    return path.name[11:] if path.name.startswith("tmp") and len(path.name) > 11 else "upload"


@bentoml.service(name="nriqa", traffic={"timeout": 120})
@bentoml.asgi_app(webpage_app(SETTINGS, _decoder), path="/ui")
class NRIQA:
    """Image quality scoring: `score` one image, `score_batch` many, or use the page at /ui."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from nriqa.model.prediction import load_model

        model, _ = load_model(self.bento_model.path)
        self.batcher = ModelBatcher(model, SETTINGS["max_batch_size"])

    @bentoml.api
    async def score(self, image: Path, map: bool = False) -> Score:
        """Score one uploaded image (multipart field `image`); with `map` true (a form field,
        curl -F map=true) also its quality map: the crop scores its MOS is the mean of."""
        try:
            (result,) = await self.score_paths([(image, _upload_name(image))], with_map=map)
        except InputError as error:
            return error.response()
        if isinstance(result, ImageError):
            return InputError(result.error).response()
        return result

    @bentoml.api
    async def score_batch(self, images: list[Path]) -> list[Score | ImageError]:
        """Score many uploaded images (repeated multipart field `images`), in order.

        An image that cannot be scored gets `{"error": ...}` in its place; the others are
        still scored.
        """
        if not images:
            return InputError("no images in the request (send them as `images` fields)").response()
        # UploadGuard has capped the number of files; this caps the decoding work. Images over
        # the per-image limit are refused unread, so they cost nothing.
        pixels = sum(n for n in map(_header_pixels, images) if n <= SETTINGS["max_pixels"])
        if pixels > SETTINGS["max_batch_pixels"]:
            return InputError(
                f"the images of this request have {pixels} pixels in all, more than the limit "
                f"of {SETTINGS['max_batch_pixels']} per request (serve.max_batch_pixels); send "
                "fewer or smaller images per request", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            ).response()
        return await self.score_paths([(path, _upload_name(path)) for path in images])

    async def score_paths(self, uploads: list[tuple[Path, str]],
                          with_map: bool = False) -> list[Score | ImageError]:
        """Decode and crop in threads, then score with the other requests' images."""
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(_decoder, _crops, path, name) for path, name in uploads]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, InputError):
                raise outcome
        good = [crops for crops, _ in (o for o in outcomes if not isinstance(o, Exception))]
        scores = iter(await self.batcher.score(good) if good else [])
        return [ImageError(error=str(outcome)) if isinstance(outcome, Exception)
                else self._score(next(scores), outcome[1] if with_map else None)
                for outcome in outcomes]

    @staticmethod
    def _score(output: tuple, layout: tuple | None) -> Score:
        """The answer for one image; with its crop layout, the quality map too."""
        mos, probabilities, crop_scores = output
        distortions = None  # a model without the distortion-type head: nothing to say
        if probabilities is not None:
            distortions = [Distortion(**entry) for entry in top_distortions(probabilities)]
        grid = None
        if layout is not None:
            width, height, corners = layout
            grid = QualityMap(**quality_map(width, height, corners,
                                            SETTINGS["preprocessing"]["crop_size"], crop_scores))
        return Score(mos=round(mos, 6), category=categorize(mos, SETTINGS["categories"]),
                     distortions=distortions, model_version=SETTINGS["model_version"],
                     mlflow_run_id=SETTINGS["mlflow_run_id"], quality_map=grid)


NRIQA.add_asgi_middleware(UploadGuard, max_bytes=SETTINGS["max_upload_bytes"],
                          max_files=SETTINGS["max_batch_images"])
