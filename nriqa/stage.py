"""What every stage script shares: reading params.yaml and turning NriqaError into a clear exit."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import yaml

from nriqa.errors import NriqaError


def load_params(path: str | Path = "params.yaml") -> dict:
    return yaml.safe_load(Path(path).read_text())


def stage_main(main):
    """Run a stage's main(); a NriqaError prints `error: ...` and exits 1 without a traceback."""

    @functools.wraps(main)
    def run():
        try:
            main()
        except NriqaError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    return run
