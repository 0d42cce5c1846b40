"""The logged model as an MLflow pyfunc (`nriqa.model.pyfunc`): loaded from the registry alias in
a fresh process that is given nothing but the model URI (and the registry's address), it scores a
table of paths, URIs and bytes as the CLI scores the files, and a bad image gets an error row."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.batch_helpers import CORRUPT, cli_rows, register_champion, same_scores, write_pictures
from tests.helpers import tool_env

FRESH_PROCESS = """
import json, sys
import mlflow, pandas as pd
rows = json.loads(sys.argv[1])
frame = pd.DataFrame({"path": [r["path"] for r in rows],
                      "content": [bytes.fromhex(r["content"]) if r["content"] else None
                                  for r in rows]})
model = mlflow.pyfunc.load_model("models:/nriqa@champion")
import nriqa
out = model.predict(frame)
print(json.dumps({"rows": json.loads(out.to_json(orient="records")), "nriqa": nriqa.__file__,
                  "inputs": model.metadata.get_input_schema().input_names()}))
"""


def test_the_champion_scores_paths_uris_and_bytes_in_a_fresh_process(tiny_model, tmp_path):
    uri = register_champion(tiny_model, tmp_path / "store")
    pictures = write_pictures(tmp_path / "pictures", 6)
    expected = cli_rows(tiny_model, tmp_path / "pictures", tmp_path / "cli.jsonl")
    inputs = ([{"path": str(p), "content": None} for p in pictures]
              + [{"path": pictures[0].as_uri(), "content": None},
                 {"path": "upload.jpg", "content": pictures[0].read_bytes().hex()},
                 {"path": str(tmp_path / "missing.png"), "content": None}])
    # Only the model URI and the registry: run from an empty folder, nriqa not on PYTHONPATH.
    env = tool_env(MLFLOW_TRACKING_URI=uri)
    env.pop("PYTHONPATH", None)
    (tmp_path / "elsewhere").mkdir()
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(inputs)],
                          cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/nriqa/" in answer["nriqa"]  # the model's own copy of the package
    assert answer["inputs"] == ["path", "content"]
    rows = answer["rows"]
    assert [row["path"] for row in rows] == [row["path"] for row in inputs]
    assert {row["model_version"] for row in rows} == {"1"}
    for row in rows[:len(pictures) - 1]:
        assert row["error"] is None
        same_scores(row, expected[row["path"]])
    corrupt, by_uri, by_bytes, missing = rows[len(pictures) - 1:]
    assert CORRUPT in corrupt["error"] and corrupt["mos"] is None
    same_scores(by_uri, expected[str(pictures[0])])
    same_scores(by_bytes, expected[str(pictures[0])])
    assert "no such file" in missing["error"]
