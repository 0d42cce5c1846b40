"""A tiny `dvc repro` prints no warning. Each one it printed came from a small misuse by the
project's code, not from the libraries: Keras fit with its default shuffle=True on a
tf.data stream, and running out of data at the end of the first epoch (a stream of unknown
length, whose failed extra step still advanced the optimizer's step count and the dropout
seed); an interleave with `deterministic` but no `num_parallel_calls`; MLflow's dataset
source given as a string it could read two ways, and its hint on the split table's integer
columns; DVC's warning on an empty output folder (reports/external).

The warnings are raised inside the libraries (`warnings.warn` names their modules, not
nriqa's), so a `PYTHONWARNINGS=error::UserWarning:nriqa` filter would not catch them: the
test reads what the stages printed instead."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration

# Python's warnings ("file.py:74: UserWarning: ..."), Keras's "Your input ran out of data",
# MLflow's "Hint: ..." and DVC's "WARNING: ..." lines.
WARNING_LINE = re.compile(r"\w*Warning: |\bWARNING: |ran out of data|\bHint: ")


def test_a_tiny_reproduction_prints_no_warning(tiny_project):
    log = (tiny_project / "repro.log").read_text()
    assert "Running stage 'package'" in log  # the whole pipeline ran, and printed here
    warnings = [line for line in log.splitlines() if WARNING_LINE.search(line)]
    assert not warnings, "dvc repro printed:\n" + "\n".join(warnings)
