"""params.yaml as typed sections: parsed once, every problem named by its key."""

from __future__ import annotations

import inspect

import pytest
import yaml

from nriqa.core.config import Config, load_config
from nriqa.core.errors import NriqaError
from tests.helpers import PROJECT, config


def test_params_yaml_parses_and_round_trips():
    parsed = load_config(PROJECT / "params.yaml")
    assert isinstance(parsed, Config)
    assert parsed.as_dict() == yaml.safe_load((PROJECT / "params.yaml").read_text())


@pytest.mark.parametrize("overrides, message", [
    ({"train": {"epochs": "ten"}}, "train.epochs: Input should be a valid integer"),
    ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than 0"),
    ({"train": {"eopchs": 3}}, "train.eopchs: Extra inputs are not permitted"),
    ({"model": {"backbone": "resnet"}}, "model.backbone: Input should be"),
    ({"model": {"backbone": "mobilenet_style", "weights": "imagenet"}}, "model.weights: imagenet"),
    ({"data": {"image_size": [512]}}, "data.image_size[1]: Field required"),
    ({"serve": {"max_pixels": -1}}, "serve.max_pixels: Input should be greater than 0"),
    ({"mlflow": {"force_promote": "maybe"}}, "mlflow.force_promote: Input should be a valid boolean"),
])
def test_a_bad_value_is_named_by_its_key(overrides, message):
    with pytest.raises(NriqaError, match="^params.yaml: ") as error:
        config(overrides)
    assert message in str(error.value)


def test_a_missing_key_and_a_missing_section_are_named(tmp_path):
    values = yaml.safe_load((PROJECT / "params.yaml").read_text())
    del values["predict"]["stride"], values["serve"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(NriqaError) as error:
        load_config(tmp_path / "params.yaml")
    assert "predict.stride: Field required" in str(error.value)
    assert "serve: Field required" in str(error.value)


@pytest.mark.parametrize("text, message", [(None, "missing"), ("data: [", "not valid YAML"),
                                           ("- a list", "not a mapping")])
def test_an_unreadable_file_is_named(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(NriqaError, match=f"{path}: {message}"):
        load_config(path)


def test_the_model_factory_has_no_defaults_of_its_own():
    """Its shape comes from params.yaml's model section only, so nothing can contradict it."""
    from nriqa.model.network import make_model

    defaults = {name for name, parameter in inspect.signature(make_model).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    assert defaults == {"initial_mos"}  # from the training labels, not a setting
