"""What the API answers: a score per image (the OpenAPI schemas), or a client error as a 4xx."""

from __future__ import annotations

from http import HTTPStatus

from pydantic import BaseModel, Field
from starlette.responses import JSONResponse


class Distortion(BaseModel):
    type: int = Field(description="TID2013 distortion type, 1..24; 0: no distortion")
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
