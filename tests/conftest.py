"""Shared fixtures; the plain helpers live in tests/helpers.py and are re-exported here, so
tests may import them from either."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import (PROJECT, TINY_PARAMS, VENV_BIN, free_port, make_clone,  # noqa: F401
                     merge, project_env, run, stop_process_group, tool_env, write_tiny_shards)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A clone with tiny params on which `dvc repro` has run once."""
    clone = make_clone(tmp_path_factory.mktemp("project"), TINY_PARAMS)
    run([str(VENV_BIN / "dvc"), "repro"], cwd=clone, env=project_env(clone))
    return clone
