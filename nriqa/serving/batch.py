"""`python -m nriqa score SRC... --engine spark --out OUT.parquet`: a collection scored on Spark.

Spark does the scheduling, the retries of failed tasks and the spreading over executors; this
module only says what to score and how. The driver lists the inputs (folders searched as the
CLI searches them, globs, or Parquet/CSV tables of paths or URIs), drops those already in OUT
(a left anti join on `path`: a rerun scores only what is missing), and scores the rest in
commits of `--commit-every` images. Each commit is one Spark job that appends its rows to OUT,
partitioned by run (`OUT/run=<id>/`), so a job killed part-way keeps every commit it finished,
and a commit is all or nothing (Spark's output committer), so no row is written twice.

The scoring is `mapInPandas` over the image paths: each Python worker loads the model once (a
bundle or an exported model, shipped to executors with `SparkContext.addFile`, the nriqa code
with `addPyFile`) and scores Arrow batches of `BATCH_IMAGES` rows through
`nriqa.model.pyfunc.ImageScorer`, the registered pyfunc's own code: the same decoding, crops
and model pass as the CLI, so the same MOS. A bad image gets an `error` in its row, never a
failed task; a worker that dies is Spark's to retry (`spark.task.maxFailures`, `local[N,F]`).
Rows carry the CLI's fields (path, mos, category, distortions, distortion_note, error), the
model's registered version and the run. PySpark is imported here only, and this module only
for `--engine spark`.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path

import nriqa
from nriqa.core.errors import ExitCode, NriqaError
from nriqa.core.runtime import configure
from nriqa.model.bundle import check_bundle, fetch_bundle
from nriqa.model.prediction import CHUNK
from nriqa.model.pyfunc import OUTPUT_COLUMNS, ImageScorer
from nriqa.ops.tracking import command_tracking_uri, registry_version
from nriqa.serving.scoring import _thresholds, find_images, scoring_export

# Rows per Arrow batch handed to a worker: a few of the model's chunks, so a batch fills the
# model's calls and a worker's memory holds one batch's crops.
BATCH_IMAGES = 4 * CHUNK
TABLE_SUFFIXES = (".parquet", ".csv")
ROW_SCHEMA = ("path string, mos double, category string, "
              "distortions array<struct<type: bigint, name: string, probability: double>>, "
              "distortion_note string, error string, model_version string")


# --- Inputs -------------------------------------------------------------------------------------

def is_uri(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and len(scheme) > 1


def list_inputs(sources: list[str]) -> list[str]:
    """Every image the sources name, each once, in order: a folder's image files (searched
    recursively, as the CLI does), a glob's files, a Parquet or CSV table's `path` column (or
    its first column), a file or URI as it is. Local paths are made absolute, so a rerun from
    another folder still finds them in OUT."""
    found: list[str] = []
    for source in sources:
        path = Path(source)
        if is_uri(source):
            found.append(source)
        elif path.suffix.lower() in TABLE_SUFFIXES and path.exists():
            found.extend(_table_paths(path))
        elif path.is_dir():
            found.extend(map(str, find_images([path])))
        elif glob.has_magic(source):
            found.extend(p for p in sorted(glob.glob(source, recursive=True)) if Path(p).is_file())
        else:
            found.append(source)  # a missing file gets its error row
    return list(dict.fromkeys(p if is_uri(p) else os.path.abspath(p) for p in found))


def _table_paths(path: Path) -> list[str]:
    import pandas as pd

    table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    if table.empty:
        return []
    column = "path" if "path" in table.columns else table.columns[0]
    return [str(value) for value in table[column].dropna()]


# --- The model ----------------------------------------------------------------------------------

def model_folder(args, workdir: str) -> Path:
    """The folder the executors load: the export or the bundle that --runtime, --model-dir and
    --model-uri name, as the single-process CLI would load it (`scoring_export`)."""
    export = scoring_export(args.runtime, args.model_uri, args.model_dir, args.params, workdir)
    if export is not None:
        return export
    if args.model_uri:
        return fetch_bundle(args.model_uri, Path(workdir) / "bundle",
                            tracking_uri=command_tracking_uri(args.params))
    folder = args.model_dir or Path("models")
    check_bundle(folder)  # fail here, not on every executor
    return folder


def registered_version(model_uri: str | None, params: Path) -> str | None:
    """The version number a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI stands for now
    (the rows record it; the alias may move later); None for a folder or another URI."""
    if not model_uri or not model_uri.startswith("models:/"):
        return None
    import mlflow

    tracking_uri = command_tracking_uri(params)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    version = registry_version(model_uri)
    return None if version is None else str(version.version)


# --- On the executors -----------------------------------------------------------------------------

_SCORERS: dict = {}


def _scorer(folder_name: str, thresholds: dict, version: str | None, threads: int) -> ImageScorer:
    """The model of this Python worker, loaded on its first batch and kept for the next ones."""
    key = (folder_name, version)
    if key not in _SCORERS:
        from pyspark import SparkFiles

        configure()  # the CLI's process settings: the same CPU kernels, so the same MOS
        # One task, `threads` cores: TensorFlow would otherwise take every core for each task.
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        _SCORERS[key] = ImageScorer.load(SparkFiles.get(folder_name), thresholds, version)
    return _SCORERS[key]


def score_batches(folder_name: str, thresholds: dict, version: str | None, threads: int):
    """The function `mapInPandas` runs: batches of paths in, batches of rows out."""
    def score(batches):
        scorer = _scorer(folder_name, thresholds, version, threads)
        for batch in batches:
            yield scorer.score_frame(batch)[list(OUTPUT_COLUMNS)]
    return score


# --- The job ------------------------------------------------------------------------------------

def start_spark(master: str | None):
    """A SparkSession: --master where given, else spark-submit's, else every local core."""
    from pyspark.sql import SparkSession

    # PySpark 4.3 warns on each use that it is not yet tested with pandas 3; the columns here
    # (strings, floats, lists of records) convert through Arrow alike in both.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                            category=FutureWarning)
    if (master or "local").startswith("local"):
        # Local Python workers run this interpreter (its packages), not the first python3 on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("nriqa score")
    if master:
        builder = builder.master(master)
    elif not os.environ.get("PYSPARK_GATEWAY_PORT"):  # not under spark-submit: this machine
        builder = builder.master("local[*]")
    spark = (builder
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", BATCH_IMAGES)
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .config("spark.python.worker.reuse", "true")  # one model load per worker
             .config("spark.ui.showConsoleProgress", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    return spark


def literal(path: Path) -> str:
    """`path` for Spark's readers, which take it as a glob: its glob characters escaped."""
    return re.sub(r"([\\[\]{}*?])", r"\\\1", str(path))


def done_paths(spark, out: Path):
    """OUT's paths as a one-column DataFrame, or None when OUT holds no rows yet."""
    if not any(out.glob("run=*/*.parquet")):
        return None
    return spark.read.parquet(literal(out)).select("path").distinct()


def pending_paths(spark, inputs: list[str], out: Path) -> list[str]:
    """The inputs not yet in OUT, in input order."""
    done = done_paths(spark, out)
    if done is None or not inputs:
        return inputs
    listed = spark.createDataFrame(list(enumerate(inputs)), "position long, path string")
    missing = listed.join(done, "path", "left_anti").orderBy("position").select("path")
    return [row.path for row in missing.toLocalIterator()]


def new_run_id() -> str:
    """Sortable by start time, unique across drivers."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def code_archive(workdir: str) -> str:
    """The nriqa package as a zip, so executors run the driver's code, installed or not."""
    package = Path(nriqa.__file__).parent
    staging = Path(workdir) / "code"
    shutil.copytree(package, staging / "nriqa",
                    ignore=shutil.ignore_patterns("__pycache__", "*.html"))
    return shutil.make_archive(str(Path(workdir) / "nriqa-code"), "zip", staging)


def run_batch(args) -> ExitCode:
    """`python -m nriqa score --engine spark`, its arguments parsed by `nriqa.cli`."""
    if args.output is None:
        raise NriqaError("--engine spark writes Parquet: name the folder with --out OUT.parquet")
    if args.map_dir is not None:
        raise NriqaError("--map is for the single-process engine; --engine spark writes rows only")
    out = Path(args.output)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", str(out)):
        raise NriqaError(f"--out {args.output}: a path, not a URI (the resume check reads OUT "
                         "through the local filesystem; mount remote storage)")
    if out.exists() and not out.is_dir():
        raise NriqaError(f"--out {out}: a file; the Spark engine writes a Parquet folder")
    inputs = list_inputs([str(source) for source in args.paths])
    if not inputs:
        raise NriqaError("no image files found in " + ", ".join(map(str, args.paths)))
    thresholds = _thresholds(args.params)
    version = registered_version(args.model_uri, args.params)
    commit_every = max(1, args.commit_every)
    with tempfile.TemporaryDirectory(prefix="nriqa-spark-") as workdir:
        folder = model_folder(args, workdir)
        spark = start_spark(args.master)
        try:
            context = spark.sparkContext
            context.addPyFile(code_archive(workdir))
            context.addFile(str(Path(folder).resolve()), recursive=True)
            threads = int(context.getConf().get("spark.task.cpus", "1"))
            score = score_batches(Path(folder).resolve().name, thresholds, version, threads)
            pending = pending_paths(spark, inputs, out)
            run_id = new_run_id()
            print(f"{len(inputs)} images, {len(inputs) - len(pending)} already in {out}; "
                  f"scoring {len(pending)} as run {run_id} on {context.master} "
                  f"({context.defaultParallelism} cores)", file=sys.stderr)
            scored = errors = 0
            started = time.perf_counter()
            for start in range(0, len(pending), commit_every):
                chunk = pending[start:start + commit_every]
                errors = commit(spark, chunk, score, run_id, out)
                scored += len(chunk)
                elapsed = time.perf_counter() - started
                print(f"committed {scored} of {len(pending)} ({scored / elapsed:.1f} images/s), "
                      f"{errors} could not be scored", file=sys.stderr)
        finally:
            spark.stop()
    if not pending:
        print(f"nothing to score: all {len(inputs)} images are in {out}", file=sys.stderr)
        return ExitCode.OK
    print(f"scored {scored - errors} of {len(pending)} images into {out}/run={run_id}"
          + (f"; {errors} could not be scored (their rows say why)" if errors else ""),
          file=sys.stderr)
    return ExitCode.PARTIAL if errors else ExitCode.OK


def commit(spark, paths: list[str], score, run_id: str, out: Path) -> int:
    """Score `paths` and append their rows to OUT in one Spark job; returns how many of the
    run's rows so far are errors."""
    from pyspark.sql import functions as F

    context = spark.sparkContext
    # Enough tasks to keep every core busy, and tasks of whole model batches.
    partitions = max(1, min(len(paths) // BATCH_IMAGES + 1, 4 * context.defaultParallelism))
    frame = spark.createDataFrame([(p,) for p in paths], "path string").repartition(partitions)
    rows = frame.mapInPandas(score, ROW_SCHEMA).withColumn("run", F.lit(run_id))
    rows.write.mode("append").partitionBy("run").parquet(str(out))
    written = spark.read.parquet(literal(out / f"run={run_id}"))
    return written.where(F.col("error").isNotNull()).count()
