"""A tracking server's password is read from the environment at use, never stored or printed."""

from __future__ import annotations

import pytest

from nriqa.core.errors import NriqaError
from nriqa.ops import tracking


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def test_credentials_move_from_the_uri_to_mlflows_variables():
    import os

    assert tracking.take_credentials("http://ann:s%40cret@host:5000/path") == "http://host:5000/path"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (
        "ann", "s@cret")
    assert tracking.take_credentials("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_the_resolved_uri_holds_no_password(monkeypatch, tmp_path):
    import os

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ann:SECRET@mlflow.example:443")
    assert tracking.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == "https://mlflow.example:443"
    assert "SECRET" not in os.environ["MLFLOW_TRACKING_URI"]
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "SECRET"


def test_an_unreachable_server_is_named_without_its_password(monkeypatch):
    from tests.helpers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ann:SECRET@127.0.0.1:{free_port()}")
    with pytest.raises(NriqaError, match="is unreachable") as error:
        tracking.check_reachable(tracking.resolve_tracking_uri("unused"), timeout=2)
    assert "SECRET" not in str(error.value) and "127.0.0.1" in str(error.value)
