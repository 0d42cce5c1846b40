"""The nriqa BentoML service: upload an image, get its predicted MOS, quality category, likeliest
distortions and, with `map=true`, its quality map; or use the web page at /ui.

`bentoml serve service:NRIQA`, or the built Bento. The work is in `nriqa.serving`: settings
(model tag, limits, overrides NRIQA_<KEY>), middleware (upload checks), api (uploads to scores,
batched across requests), webpage. The model and its settings are read from the BentoML model
store when the service starts, not when this file is imported.
"""

from pathlib import Path

from nriqa.core.runtime import configure

configure()  # before BentoML, TensorFlow and MLflow load: the service is an entry point

import bentoml  # noqa: E402
from starlette.responses import Response

from nriqa.serving.api import UploadScorer
from nriqa.serving.middleware import UploadGuard, upload_names
from nriqa.serving.responses import ImageError, Score
from nriqa.serving.settings import ServingSettings, model_tag
from nriqa.serving.webpage import webpage_app


def running_scorer() -> UploadScorer:
    return bentoml.get_current_service().scorer


def running_settings() -> ServingSettings:
    return running_scorer().settings


def answer(ctx: bentoml.Context, result):
    """An API's answer: an API with a `ctx` parameter gets the status of ctx.response, whatever
    the response it returns says, so a client error's own status (a 4xx) is set there too."""
    if isinstance(result, Response):
        ctx.response.status_code = result.status_code
    return result


@bentoml.service(name="nriqa", traffic={"timeout": 120})
@bentoml.asgi_app(webpage_app(running_scorer), path="/ui")
class NRIQA:
    """Image quality scoring: `score` one image, `score_batch` many, or use the page at /ui."""

    bento_model = bentoml.models.BentoModel(model_tag(Path(__file__).parent))

    def __init__(self) -> None:
        self.scorer = UploadScorer.for_model(type(self).bento_model)

    @bentoml.api
    async def score(self, image: Path, ctx: bentoml.Context, map: bool = False) -> Score:
        """Score one uploaded image (multipart field `image`); with `map` true (a form field,
        curl -F map=true) also its quality map: the crop scores its MOS is the mean of."""
        (name,) = upload_names([image], ctx.request.scope)  # the client's, for errors
        return answer(ctx, await self.scorer.score(image, with_map=map, name=name))

    @bentoml.api
    async def score_batch(self, images: list[Path], ctx: bentoml.Context
                          ) -> list[Score | ImageError]:
        """Score many uploaded images (repeated multipart field `images`), in order.

        An image that cannot be scored gets `{"error": ...}` in its place; the others are
        still scored.
        """
        return answer(ctx, await self.scorer.score_batch(
            images, upload_names(images, ctx.request.scope)))


NRIQA.add_asgi_middleware(UploadGuard, settings=running_settings)
