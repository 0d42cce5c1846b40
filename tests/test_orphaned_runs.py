"""A training killed without a word (kill -9, the OOM killer) leaves its MLflow run RUNNING; the
next training on the machine marks it KILLED."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from nriqa.ops import tracking


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_runs_whose_process_is_gone_are_marked_killed(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("orphans", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("orphans")
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name("orphans").experiment_id
    host = socket.gethostname()
    runs = {}
    for name, process in {"killed": f"{host} {dead_pid()}", "alive": f"{host} {os.getpid()}",
                          "elsewhere": f"another-host {dead_pid()}", "untagged": None}.items():
        run = client.create_run(experiment)  # RUNNING, as a killed training leaves it
        if process:
            client.set_tag(run.info.run_id, tracking.PROCESS_TAG, process)
        runs[name] = run.info.run_id

    ended = tracking.end_orphaned_runs()

    assert [run_id for run_id, _ in ended] == [runs["killed"]]
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"killed": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING",
                      "untagged": "RUNNING"}
