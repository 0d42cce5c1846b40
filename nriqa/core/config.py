"""params.yaml as typed, validated sections: parsed once by each entry point (`load_config`),
then each library function takes the section it needs.

Every key is required and none has a default here: params.yaml is the one place that holds
the defaults. A missing, unknown or mistyped key stops the entry point with one message that
names the key (`params.yaml: model.depth: Input should be a valid integer, got 'eight'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from nriqa.core.errors import NriqaError

PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    # Unknown keys are errors (a typo must not pass silently); sections are read-only.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    source: Literal["synthetic", "tid2013", "kadid10k", "koniq10k", "local"]
    format: Literal["tid2013", "kadid10k", "koniq10k"]
    path: str | None
    url: str | dict[str, str] | None
    md5: str | dict[str, str] | None
    cache_dir: str | None
    seed: int
    num_references: PositiveInt
    image_size: tuple[int, int]
    distortion_types: Literal["all"] | list[int]
    levels: list[int]
    strength: Literal["psnr", "parameter"]


class TrainsetConfig(Section):
    images: PositiveInt
    image_size: tuple[int, int]
    seed: int
    distortion_types: Literal["all"] | list[int]
    pristine_fraction: float
    strength: Literal["psnr", "parameter"]
    shrink: tuple[float, float]
    mix: Literal["auto"] | bool


class PreprocessConfig(Section):
    seed: int
    split: dict[Literal["train", "val", "test"], float]
    mode: Literal["native", "resize"]
    resize: tuple[int, int]
    shards: PositiveInt


class ModelConfig(Section):
    backbone: Literal["efficientnet_lite0", "mobilenet_style", "mobilenet_v2", "mobilenet_v3_small"]
    weights: Literal["imagenet"] | None
    pooling: Literal["last", "stages"]
    freeze: bool
    fusion: bool
    input_size: PositiveInt
    input_norm: Literal["lcn", "none"]
    lcn_epsilon: float
    width: float
    depth: PositiveInt
    dropout: float
    head_units: tuple[int, ...]
    distortion_types: int
    undistorted_class: bool
    mos_head: Literal["per_type", "direct"]

    @model_validator(mode="after")
    def consistent(self) -> ModelConfig:
        if self.weights and self.backbone == "mobilenet_style":
            raise ValueError("model.weights: imagenet weights exist for efficientnet_lite0 (offline) "
                             "and the keras.applications backbones (which download them)")
        if self.undistorted_class and self.distortion_types not in (0, 24):
            raise ValueError(f"model.undistorted_class needs the type head of all 24 TID2013 types "
                             f"(model.distortion_types: 24), got {self.distortion_types}")
        return self


class TrainConfig(Section):
    seed: int
    epochs: PositiveInt
    patience: PositiveInt
    batch_size: PositiveInt
    crops_per_image: PositiveInt
    lr: float
    backbone_lr_scale: float
    loss: Literal["mse", "mae", "huber"]
    type_loss_weight: float
    own_type_loss_weight: Annotated[float, Field(ge=0)]
    average_from: Annotated[float, Field(ge=0, lt=1)] | None  # null: the best epoch's weights
    dataset_share: Annotated[float, Field(gt=0, lt=1)] | None  # null: in proportion to the numbers
    val_images: PositiveInt
    threads: int | None
    strategy: Literal["none", "mirrored", "multi_worker"]


class PredictConfig(Section):
    stride: PositiveInt
    max_crops: PositiveInt


class ExternalFolder(Section):
    # The name becomes a file name (reports/external/<name>.csv) and part of metric keys
    # (external.<name>.srcc), so it must be safe in both: no dots, slashes or spaces.
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
    path: str  # relative to the project root
    format: Literal["tid2013", "kadid10k", "koniq10k"]


class EvaluateConfig(Section):
    categories: dict[str, float]
    external: list[ExternalFolder]

    @model_validator(mode="after")
    def unique_names(self) -> EvaluateConfig:
        seen = set()
        for number, entry in enumerate(self.external):
            # Case-insensitively: on a case-insensitive disk A.csv and a.csv are one file.
            if entry.name.lower() in seen:
                raise ValueError(f"evaluate.external[{number}].name {entry.name!r} is used by an "
                                 "earlier entry; names must be unique")
            seen.add(entry.name.lower())
        return self


class ExportConfig(Section):
    check_images: PositiveInt | None  # null: every test-split image


class MlflowConfig(Section):
    tracking_uri: str
    experiment: str
    registered_model: str
    force_promote: bool


class ServeConfig(Section):
    bento_name: str
    max_upload_bytes: PositiveInt
    max_pixels: PositiveInt
    max_batch_images: PositiveInt
    max_batch_pixels: PositiveInt
    max_batch_size: PositiveInt


class Config(Section):
    data: DataConfig
    trainset: TrainsetConfig
    preprocess: PreprocessConfig
    model: ModelConfig
    train: TrainConfig
    predict: PredictConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    mlflow: MlflowConfig
    serve: ServeConfig

    def as_dict(self) -> dict:
        """Plain YAML types, as params.yaml holds them: for MLflow's params and model.json."""
        return self.model_dump(mode="json")


def parse_config(values: dict, source: str = PARAMS_FILE) -> Config:
    """`values` (params.yaml's content) as a Config; a NriqaError names each bad key."""
    try:
        return Config.model_validate(values)
    except ValidationError as error:
        problems = [f"{_key(problem['loc'])}: {problem['msg']}"
                    + ("" if problem["type"] in ("missing", "value_error") else f", got {problem['input']!r}")
                    for problem in error.errors()]
        raise NriqaError(f"{source}: " + "; ".join(problems)) from None


def _key(location: tuple) -> str:
    """("evaluate", "external", 0, "name") -> evaluate.external[0].name"""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location).lstrip(".")


def load_config(path: str | Path = PARAMS_FILE) -> Config:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise NriqaError(f"{path}: missing; the project's settings live there") from None
    except yaml.YAMLError as error:
        raise NriqaError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise NriqaError(f"{path}: not a mapping of sections")
    return parse_config(values, str(path))
