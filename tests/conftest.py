"""Shared fixtures. Plain helpers live in tests/helpers.py (clones, processes; benchmarks use it
too) and tests/service_helpers.py (tiny models, uploads, a served model); tests import those."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_PARAMS, VENV_BIN, make_clone, project_env, run


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A clone with tiny params on which `dvc repro` has run once; what it printed (stdout, then
    stderr) is in repro.log, which git ignores."""
    clone = make_clone(tmp_path_factory.mktemp("project"), TINY_PARAMS)
    result = run([str(VENV_BIN / "dvc"), "repro"], cwd=clone, env=project_env(clone))
    (clone / "repro.log").write_text(result.stdout + result.stderr)
    (clone / ".git" / "info").mkdir(exist_ok=True)
    with (clone / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write("/repro.log\n")
    return clone


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small untrained model with the distortion-type head (`service_helpers.make_tiny_model`)."""
    from tests.service_helpers import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A running `bentoml serve` of a packaged tiny model (`service_helpers.Server`), for test_service.py
    and test_webpage.py: started once per session, since start-up costs tens of seconds."""
    from tests.service_helpers import Server

    server = Server(tmp_path_factory.mktemp("served"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def served_plain(tmp_path_factory):
    """The same, for a model without the distortion-type head."""
    from tests.service_helpers import Server

    server = Server(tmp_path_factory.mktemp("served_plain"), distortion_types=0)
    yield server
    server.stop()
