"""What every stage script shares: turning NriqaError into a clear exit, and
writing outputs so that a failed stage never leaves one a later stage would take as finished."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
from pathlib import Path

from nriqa.core.errors import NriqaError, reporting_errors


def stage_main(main):
    """Run a stage's main(); a NriqaError prints `error: ...` and exits with ExitCode.ERROR (2),
    without a traceback, as the command line does (`nriqa.core.errors.reporting_errors`)."""
    run = reporting_errors(main)

    @functools.wraps(main)
    def stage():
        if code := run():
            sys.exit(code)

    return stage


@contextlib.contextmanager
def written_aside(path: str | Path):
    """Yield a hidden sibling of `path` to write; it replaces `path` only if the block completes,
    so a reader sees the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.tmp")
    try:
        yield aside
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)


@contextlib.contextmanager
def staging(out_dir: Path):
    """A fresh ``.tmp-<name>`` sibling of ``out_dir``, always removed afterwards.

    Any previous ``out_dir`` is removed first: if this run fails, an output left over
    from other parameters must not pass for the one that was asked for.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / (".tmp-" + out_dir.name)
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier run
    if out_dir.is_symlink() or out_dir.is_file():
        out_dir.unlink()
    elif out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(*paths: str | Path) -> None:
    """Delete a previous run's outputs before writing new ones: if this run fails halfway, no
    old file is left beside new ones to pass for their partner (an old run id beside a new model)."""
    for path in map(Path, paths):
        path.unlink(missing_ok=True)


def read_json(path: Path, *, stage: str) -> dict:
    """The JSON object that the `stage` stage wrote to `path`; a NriqaError names the file and
    the stage to run when it is missing, not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise NriqaError(f"{path}: missing; run the {stage} stage first (`dvc repro {stage}`)")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NriqaError(f"{path}: not valid JSON ({error}); run the {stage} stage again") from error
    if not isinstance(value, dict):
        raise NriqaError(f"{path}: not a JSON object; run the {stage} stage again")
    return value


def write_json(path: Path, payload, sort_keys: bool = True) -> None:
    """Written aside and renamed: a crash never leaves half a JSON file. Keys sorted, unless
    the payload's own order matters (`dvc exp show` shows a metrics file's keys in file order)."""
    with written_aside(path) as aside:
        aside.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")
