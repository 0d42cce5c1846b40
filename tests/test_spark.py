"""`python -m nriqa score --engine spark` on a real local Spark (`local[2]`, Java and PySpark):
the same rows as the single-process CLI, a corrupt file's error row among them; a driver killed
part-way and rerun loses and duplicates nothing; a Python worker killed mid-task is retried
by Spark with the same result; and MLflow's own bridge, `spark_udf` on the registered pyfunc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.batch_helpers import CORRUPT, cli_rows, register_champion, same_scores, write_pictures
from tests.helpers import PROJECT, tool_env

pytestmark = pytest.mark.integration

PICTURES = 30


@pytest.fixture(scope="module")
def collection(tiny_model, tmp_path_factory):
    """The pictures (and a corrupt file), the CLI's rows for them, and a registry whose
    `nriqa@champion` is the same tiny model."""
    root = tmp_path_factory.mktemp("collection")
    pictures = write_pictures(root / "pictures", PICTURES)
    expected = cli_rows(tiny_model, root / "pictures", root / "cli.jsonl")
    uri = register_champion(tiny_model, root / "store")
    return {"root": root, "pictures": [str(p) for p in pictures], "expected": expected,
            "uri": uri, "model": tiny_model}


def job(collection, out: Path, *extra: str, master: str = "local[2]") -> list[str]:
    return [sys.executable, "-m", "nriqa", "score", str(collection["root"] / "pictures"),
            "--engine", "spark", "--master", master, "--out", str(out),
            "--model-uri", "models:/nriqa@champion",
            "--params", str(collection["root"] / "no-params.yaml"), *extra]


def job_env(collection) -> dict:
    return tool_env(MLFLOW_TRACKING_URI=collection["uri"])


def run_job(collection, out: Path, *extra: str, status: tuple = (1,)):
    """The job to its end; exit status 1 where it met the corrupt file, 0 where it did not
    (nothing left to score, or the corrupt file's row already in OUT)."""
    done = subprocess.run(job(collection, out, *extra), cwd=PROJECT, env=job_env(collection),
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode in status, done.stderr[-6000:]
    return done


def read_rows(out: Path) -> list[dict]:
    """OUT's rows as plain Python values (None where Parquet holds a null), in path order."""
    import pandas as pd

    rows = []
    for row in pd.read_parquet(out).to_dict(orient="records"):
        distortions = row["distortions"]
        row = {key: None if not isinstance(value, (list, dict)) and pd.isna(value) is True
               else value for key, value in row.items() if key != "distortions"}
        row["distortions"] = None if distortions is None else [dict(d) for d in distortions]
        row["run"] = str(row["run"])
        rows.append(row)
    return sorted(rows, key=lambda row: row["path"])


def check_rows(rows: list[dict], collection) -> None:
    """One row per input, no path twice, each scored as the CLI scored it."""
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == len(collection["pictures"])
    assert set(paths) == set(collection["pictures"])
    for row in rows:
        assert row["model_version"] == "1"
        if row["path"].endswith(CORRUPT):
            assert CORRUPT in row["error"] and row["mos"] is None
            continue
        assert row["error"] is None, row
        same_scores(row, collection["expected"][row["path"]])


def test_spark_scores_as_the_cli_and_a_rerun_scores_nothing(collection, tmp_path):
    out = tmp_path / "scores.parquet"
    first = run_job(collection, out)
    rows = read_rows(out)
    check_rows(rows, collection)
    assert len({row["run"] for row in rows}) == 1
    count = len(collection["pictures"])
    assert f"committed {count} of {count}" in first.stderr
    again = run_job(collection, out, status=(0,))
    assert f"{len(collection['pictures'])} already in" in again.stderr
    assert read_rows(out) == rows


def test_a_killed_driver_is_resumed_without_losing_or_repeating_a_row(collection, tmp_path):
    out = tmp_path / "scores.parquet"
    driver = subprocess.Popen(job(collection, out, "--commit-every", "8"), cwd=PROJECT,
                              env=job_env(collection), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("run=*/*.parquet")) and driver.poll() is None:
        assert time.monotonic() < deadline, "no commit within 300 s"
        time.sleep(0.1)
    # The driver dies without a word; the JVM it started goes with it (its process group).
    os.kill(driver.pid, signal.SIGKILL)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    kept = read_rows(out)
    assert 0 < len(kept) < len(collection["pictures"])
    resumed = run_job(collection, out, status=(0, 1))
    rows = read_rows(out)
    check_rows(rows, collection)
    runs = {row["run"] for row in rows}
    assert len(runs) == 2
    first_run = kept[0]["run"]
    assert [row for row in rows if row["run"] == first_run] == kept
    # The rerun scored only what the killed job had not committed.
    assert sum(row["run"] != first_run for row in rows) == len(collection["pictures"]) - len(kept)
    assert f"{len(kept)} already in" in resumed.stderr


def python_workers(root_pid: int) -> list:
    """The Python workers Spark's daemon forked under this driver (each runs tasks)."""
    import psutil

    try:
        processes = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    workers = []
    for process in processes:
        try:
            if ("pyspark.daemon" in " ".join(process.cmdline())
                    and "pyspark.daemon" in " ".join(process.parent().cmdline())):
                workers.append(process)
        except psutil.Error:
            continue
    return workers


def test_a_worker_killed_mid_task_is_retried_with_the_same_result(collection, tmp_path):
    out = tmp_path / "scores.parquet"
    # local[2,3]: two cores, and a task may fail three times before the job does.
    driver = subprocess.Popen(job(collection, out, master="local[2,3]"), cwd=PROJECT,
                              env=job_env(collection), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, killed = time.monotonic() + 300, None
    while killed is None and driver.poll() is None:
        assert time.monotonic() < deadline, "no Python worker within 300 s"
        workers = python_workers(driver.pid)
        if workers:
            # A worker exists only to run a task; the first one is still loading its model.
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    _, stderr = driver.communicate(timeout=600)
    assert killed is not None, "the job ended before a worker could be killed"
    assert driver.returncode == 1, stderr[-6000:]
    assert "Python worker exited unexpectedly" in stderr or "Lost task" in stderr, stderr[-6000:]
    check_rows(read_rows(out), collection)


SPARK_UDF = """
import json, sys
import mlflow
from pyspark.sql import SparkSession

spark = (SparkSession.builder.master("local[2]")
         .config("spark.pyspark.python", sys.executable).getOrCreate())
paths = json.loads(sys.argv[1])
frame = spark.createDataFrame([(p,) for p in paths], "path string")
score = mlflow.pyfunc.spark_udf(spark, "models:/nriqa@champion", env_manager="local")
rows = frame.select(score("path").alias("score")).select("score.*").toPandas()
print(rows.to_json(orient="records"))
spark.stop()
"""


def test_spark_udf_bridges_the_registered_pyfunc(collection):
    """MLflow's own bridge scores with the registered model as the CLI does."""
    paths = collection["pictures"][:8]
    done = subprocess.run([sys.executable, "-c", SPARK_UDF, json.dumps(paths)], cwd=PROJECT,
                          env=job_env(collection), capture_output=True, text=True, check=False,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [row["path"] for row in rows] == paths
    for row in rows:
        # spark_udf casts a struct's string fields with numpy (MLflow 3.17), so a null comes out
        # as a string ("None", "nan"): a reason the Spark engine writes its own rows (mapInPandas).
        row.update({key: None for key in ("distortion_note", "error")
                    if row[key] in ("nan", "None")})
        if row["path"].endswith(CORRUPT):
            assert row["error"]
        else:
            same_scores(row, collection["expected"][row["path"]])
