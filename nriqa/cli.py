"""The command line, `python -m nriqa COMMAND`:

  runs      compare the experiment's MLflow runs, best test SRCC first (nriqa.ops.runs)
  score     score image files or folders with the trained model (nriqa.serving.scoring)
  evaluate  measure the model against one labelled dataset folder (nriqa.evaluation.external)

Exit status (nriqa.core.errors.ExitCode), the same for every command and for the pipeline's stages:
0 done; 1 done, but some inputs failed (each named on stderr); 2 nothing done: a usage error or
a problem with the input, params or environment, printed as `error: ...`.

Each command's logic lives in its module; this file only parses arguments. Those modules are
imported when their command runs, so `runs` and `--help` do not pay for TensorFlow or SciPy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nriqa.core.errors import reporting_errors
from nriqa.core.runtime import configure
from nriqa.data.formats import FORMATS


def main(argv: list[str] | None = None) -> int:
    configure()
    args = parser().parse_args(argv)  # a usage error exits 2 here, as argparse does
    return reporting_errors(args.handler)(args)


def parser() -> argparse.ArgumentParser:
    # The commands and the exit status; the notes below them are for developers.
    root = argparse.ArgumentParser(prog="nriqa",
                                   description="\n\n".join(__doc__.split("\n\n")[:3]),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)
    add_runs(commands)
    add_score(commands)
    add_evaluate(commands)
    return root


def runs(args) -> None:
    # lazy: MLflow loads only for this command
    from nriqa.ops.runs import runs_table

    print(runs_table(args.params, args.experiment, args.max_results))


def score(args) -> int:
    if args.engine == "spark":
        # lazy: PySpark (and a Java runtime) only for the Spark engine
        from nriqa.serving.batch import run_batch

        return run_batch(args)
    # lazy: TensorFlow loads only for this command
    from nriqa.serving.scoring import run_score

    return run_score(args)


def evaluate(args) -> int:
    # lazy: TensorFlow loads only for this command
    from nriqa.evaluation.external import run_evaluate

    return run_evaluate(args)


def add_runs(commands) -> None:
    command = commands.add_parser(
        "runs", help="compare the experiment's MLflow runs, best test SRCC first",
        description="The experiment's runs, best test SRCC first, with the params that differ "
                    "between them. Uses MLFLOW_TRACKING_URI, else params.yaml's mlflow section.")
    command.add_argument("--max-results", type=int, default=10, help="runs to show (default 10)")
    command.add_argument("--experiment", default=None,
                         help="experiment name (default: mlflow.experiment in params.yaml)")
    command.add_argument("--params", default="params.yaml", help="the project's params file")
    command.set_defaults(handler=runs)


def add_model_source(command) -> None:
    """--model-dir or --model-uri: the model `score` and `evaluate` load, the same way."""
    source = command.add_mutually_exclusive_group()
    source.add_argument("--model-dir", type=Path,
                        help="folder with model.keras and model.json (default: models)")
    source.add_argument("--model-uri", help="an MLflow model instead, e.g. models:/nriqa@champion")


def add_score(commands) -> None:
    command = commands.add_parser(
        "score", help="score image files or folders with the trained model",
        description="Score image files or folders (searched recursively for JPEG, PNG, BMP, "
                    "WebP and TIFF files) with the trained model: MOS, category and the three "
                    "likeliest distortion types per image, written as each is scored. A file "
                    "that cannot be scored is named on stderr and skipped (exit status 1).")
    command.add_argument("paths", nargs="+", metavar="PATH",
                         help="image files and/or folders (searched recursively); with --engine "
                              "spark also globs, URIs, and Parquet or CSV tables of paths or URIs "
                              "(their `path` column, else the first)")
    add_model_source(command)
    command.add_argument("--runtime", choices=("auto", "keras", "onnx"), default="auto",
                         help="auto (default): onnx when the model's checked export is at hand "
                              "(models/portable/ exported from models/model.keras, or "
                              "--model-uri's run's portable/), else keras; keras: the model "
                              "through TensorFlow; onnx: its export (model.onnx and model.json; "
                              "--model-dir default models/portable, or --model-uri's run's "
                              "portable/) through onnxruntime, without loading TensorFlow")
    command.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                         help="csv (default) or jsonl, one JSON object per line; each row is "
                              "written as soon as it is scored")
    command.add_argument("--output", "-o", "--out", type=Path,
                         help="write the scores to this file instead of stdout; with --engine "
                              "spark, the Parquet folder the rows are appended to (required)")
    command.add_argument("--engine", choices=("local", "spark"), default="local",
                         help="local (default): this process; spark: a Spark job "
                              "(nriqa.serving.batch; needs PySpark and Java) that appends to "
                              "--out, partitioned by run, and skips images already there")
    command.add_argument("--master", default=None,
                         help="with --engine spark: local[N], local[N,RETRIES], spark://HOST:PORT, "
                              "yarn... (default: spark-submit's, else local[*])")
    command.add_argument("--commit-every", type=int, default=10_000, metavar="N",
                         help="with --engine spark: images per commit to --out, the most a "
                              "killed job loses (default 10000)")
    command.add_argument("--map", type=Path, metavar="DIR", dest="map_dir",
                         help="also write each image's quality map over it as DIR/<name>.png "
                              "(the JSON lines rows name the file)")
    command.add_argument("--params", type=Path, default=Path("params.yaml"),
                         help="category thresholds (evaluate.categories) and the MLflow "
                              "tracking URI are read from here if it exists")
    command.set_defaults(handler=score)


def add_evaluate(commands) -> None:
    command = commands.add_parser(
        "evaluate", help="measure the model against one labelled dataset folder",
        description="SRCC, KRCC, PLCC and RMSE of the model's scores against the human MOS of "
                    "a dataset folder, and SRCC per distortion type where the dataset has types; "
                    "the figures the evaluate stage reports for evaluate.external.")
    command.add_argument("path", type=Path, metavar="PATH",
                         help="the dataset folder, laid out as the original distribution")
    command.add_argument("--format", required=True, choices=FORMATS, help="the folder's layout")
    add_model_source(command)
    command.add_argument("--json", action="store_true", help="print the figures as JSON")
    command.add_argument("--params", type=Path, default=Path("params.yaml"),
                         help="the MLflow tracking URI is read from here if it exists")
    command.set_defaults(handler=evaluate)
