"""The DVC stages, each run as `python -m stages.<name>` (dvc.yaml).

This package is the pipeline's entry point, so it settles the process here, before any stage
imports TensorFlow or MLflow (`nriqa.core.runtime.configure`).
"""

from nriqa.core.runtime import configure

configure()
