"""What `score --engine spark` decides on the driver before Spark starts (`nriqa.serving.batch`):
the inputs it lists from folders, globs, tables and URIs, and the options it refuses. No Spark
here (tests/test_spark.py runs the job); the default engine never imports PySpark."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

from nriqa.serving.batch import list_inputs, literal
from tests.helpers import PROJECT, tool_env
from tests.service_helpers import textured


def test_folders_globs_tables_and_uris_are_listed_once_each_as_absolute_paths(tmp_path,
                                                                                monkeypatch):
    (tmp_path / "photos" / "nested").mkdir(parents=True)
    for name in ("a.png", "nested/b.jpg", "nested/c.png"):
        textured(1).save(tmp_path / "photos" / name)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    pd.DataFrame({"other": [1, 2], "path": ["photos/a.png", "s3://bucket/x.jpg"]}).to_parquet(
        tmp_path / "list.parquet")
    pd.DataFrame({"image": ["https://example.org/y.png"]}).to_csv(tmp_path / "list.csv",
                                                                 index=False)
    monkeypatch.chdir(tmp_path)
    listed = list_inputs(["photos", "photos/**/*.png", "list.parquet", "list.csv",
                          "file:///data/z.png", "missing.png"])
    photos = [os.path.abspath(f"photos/{name}")
              for name in ("a.png", "nested/b.jpg", "nested/c.png")]
    assert listed == [*photos, "s3://bucket/x.jpg", "https://example.org/y.png",
                      "file:///data/z.png", os.path.abspath("missing.png")]


def test_spark_reads_an_output_folder_with_glob_characters_literally():
    assert literal("/tmp/out[2]/{a,b}*?.parquet") == r"/tmp/out\[2\]/\{a,b\}\*\?.parquet"


def test_the_spark_engine_refuses_what_it_cannot_write_before_spark_starts(tmp_path):
    """No --out, --map, an --out that is a URI or a file: `error: ...`, exit 2, no JVM."""
    textured(1).save(tmp_path / "a.png")
    (tmp_path / "file.parquet").write_text("")
    for extra, words in ((["--format", "csv"], "--out OUT.parquet"),
                         (["--out", str(tmp_path / "o"), "--map", str(tmp_path / "m")], "--map"),
                         (["--out", "s3a://bucket/o"], "a path, not a URI"),
                         (["--out", str(tmp_path / "file.parquet")], "a file")):
        done = subprocess.run([sys.executable, "-m", "nriqa", "score", str(tmp_path / "a.png"),
                               "--engine", "spark", *extra], cwd=PROJECT, env=tool_env(),
                              capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and words in done.stderr, done.stderr


def test_the_default_engine_imports_no_pyspark():
    code = "import sys, nriqa.cli, nriqa.serving.scoring; print('pyspark' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, env=tool_env(),
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
