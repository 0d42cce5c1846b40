"""Cross-dataset evaluation: `evaluate.external` entries, the figures, the reports, the stage's
early failure and `python -m nriqa evaluate`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from nriqa.core.errors import NriqaError
from nriqa.evaluation.external import (
    SUMMARY_COLUMNS,
    evaluate_folder,
    open_folder,
    open_folders,
    write_reports,
    write_summary,
)
from tests.helpers import PROJECT, config, run, tool_env
from tests.service_helpers import textured

TYPES = [1, 8, 10]


@pytest.fixture(scope="module")
def tid_folder(tmp_path_factory) -> Path:
    """18 images in TID2013's layout: 2 references x 3 types x 3 levels."""
    from nriqa.data.synthetic import generate_tid2013_like

    root = tmp_path_factory.mktemp("tid_like")
    generate_tid2013_like(root, num_references=2, image_size=(96, 64), distortion_types=TYPES,
                          levels=[1, 3, 5], seed=2013, progress=False)
    return root


@pytest.fixture(scope="module")
def koniq_folder(tmp_path_factory) -> Path:
    """6 photos in KonIQ-10k's layout: a score table and 1024x768/, no distortion types."""
    root = tmp_path_factory.mktemp("koniq_like")
    (root / "1024x768").mkdir()
    rows = ["image_name,MOS,SD"]
    for number in range(6):
        name = f"{1000 + number}.jpg"
        textured(10 + number).save(root / "1024x768" / name, quality=90)
        rows.append(f"{name},{1.5 + 0.5 * number},0.5")
    (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from nriqa.model.bundle import load_model

    return load_model(tiny_model)


@pytest.fixture(scope="module")
def tid_result(loaded, tid_folder):
    model, info = loaded
    return evaluate_folder(model, info["preprocessing"], open_folder(tid_folder, "tid2013", "tidlike"),
                           progress=False)


def evaluate_cli(args: list[str], check: bool = True):
    return run([sys.executable, "-m", "nriqa", "evaluate", *args], cwd=PROJECT,
               env=tool_env(TF_CPP_MIN_LOG_LEVEL="2"), check=check, timeout=300)


# --- The figures ---------------------------------------------------------------------------------

def test_metrics_agree_with_scipy_on_the_predictions(tid_result, loaded, tid_folder):
    from nriqa.core.imaging import decode_image
    from nriqa.model.prediction import predict_mos

    predictions = tid_result.predictions
    assert list(predictions.columns) == ["image", "distortion", "level", "mos", "pred"]
    assert len(predictions) == 2 * len(TYPES) * 3
    assert np.ptp(predictions["pred"]) > 0  # else every correlation is a meaningless 0.0

    # The predictions are predict_mos's, the function the test split and the service use.
    model, info = loaded
    paths = open_folder(tid_folder, "tid2013").index["path"]
    expected = predict_mos(model, [decode_image(tid_folder / p) for p in paths], info["preprocessing"])
    np.testing.assert_allclose(predictions["pred"], expected, rtol=1e-5)

    metrics = tid_result.metrics
    mos, pred = predictions["mos"], predictions["pred"]
    assert metrics["srcc"] == pytest.approx(stats.spearmanr(mos, pred)[0])
    assert metrics["krcc"] == pytest.approx(stats.kendalltau(mos, pred)[0])
    assert metrics["plcc"] == pytest.approx(stats.pearsonr(mos, pred)[0])
    assert metrics["images"] == len(predictions)
    assert {"plcc_logistic", "rmse", "rmse_logistic"} <= set(metrics)

    per_type = metrics["per_distortion_srcc"]
    assert sorted(per_type) == [f"type_{t:02d}" for t in TYPES]
    for kind, group in predictions.groupby("distortion"):
        assert per_type[f"type_{kind:02d}"] == pytest.approx(stats.spearmanr(group["mos"], group["pred"])[0])
    table = tid_result.per_distortion
    assert table["distortion"].tolist() == ["01", "08", "10"]
    assert table["images"].tolist() == [6, 6, 6]


def test_reports_and_flat_mlflow_names(tid_result, tmp_path):
    from nriqa.ops.tracking import evaluation_metrics

    written = write_reports("tidlike", tid_result, tmp_path)
    assert [p.name for p in written] == ["tidlike.csv", "tidlike_per_distortion.csv",
                                         "tidlike_type_accuracy.csv"]  # the model has a type head
    assert list(pd.read_csv(written[0]).columns) == ["image", "distortion", "level", "mos", "pred"]
    assert list(pd.read_csv(written[1]).columns) == ["distortion", "images", "srcc"]
    type_accuracy = pd.read_csv(written[2])
    assert list(type_accuracy.columns) == ["distortion", "level", "images", "top1", "top3"]
    assert type_accuracy.loc[type_accuracy["level"] == "all", "images"].tolist() == [6, 6, 6]

    flat = evaluation_metrics({"test": {"srcc": 0.5}, "external": {"tidlike": tid_result.metrics}})
    assert flat["test_srcc"] == 0.5
    assert flat["external.tidlike.srcc"] == tid_result.metrics["srcc"]
    assert flat["external.tidlike.images"] == len(tid_result.predictions)
    assert "external.tidlike.per_distortion_srcc.type_08" in flat


def test_summary_has_a_row_per_folder_and_a_header_without_any(tid_result, tmp_path):
    # Never an empty reports/external: DVC warns on an empty output folder.
    empty = pd.read_csv(write_summary({}, tmp_path))
    assert list(empty.columns) == SUMMARY_COLUMNS and empty.empty
    table = pd.read_csv(write_summary({"a": tid_result, "b": tid_result}, tmp_path))
    assert table["name"].tolist() == ["a", "b"]
    assert table["srcc"].tolist() == [round(tid_result.metrics["srcc"], 4)] * 2
    assert table["images"].tolist() == [len(tid_result.predictions)] * 2


def test_dataset_without_types_gets_no_per_type_figures(loaded, koniq_folder, tmp_path):
    model, info = loaded
    result = evaluate_folder(model, info["preprocessing"], open_folder(koniq_folder, "koniq10k"),
                             progress=False)
    assert result.metrics["images"] == 6
    assert result.metrics["srcc"] == pytest.approx(
        stats.spearmanr(result.predictions["mos"], result.predictions["pred"])[0])
    assert "per_distortion_srcc" not in result.metrics and result.per_distortion is None
    assert result.predictions["distortion"].isna().all()
    assert [p.name for p in write_reports("konlike", result, tmp_path)] == ["konlike.csv"]


# --- evaluate.external entries --------------------------------------------------------------------

GOOD = {"name": "humanlabels", "path": "data/external/humanlabels", "format": "tid2013"}


@pytest.mark.parametrize("entries, message", [
    ({"name": "a"}, "evaluate.external: Input should be a valid list"),
    (["humanlabels"], "evaluate.external[0]: Input should be a valid dictionary"),
    ([{**GOOD, "name": "human labels"}], "evaluate.external[0].name: String should match"),
    ([{**GOOD, "name": "a.b"}], "evaluate.external[0].name"),
    ([{**GOOD, "format": "live"}], "evaluate.external[0].format: Input should be"),
    ([{"name": "x", "format": "tid2013"}], "evaluate.external[0].path: Field required"),
    ([{**GOOD, "fromat": "tid2013"}], "evaluate.external[0].fromat: Extra inputs are not permitted"),
    ([GOOD, {**GOOD, "name": "HumanLabels"}], "evaluate.external[1].name 'HumanLabels' is used"),
])
def test_invalid_entries_are_rejected_naming_the_field(entries, message):
    with pytest.raises(NriqaError) as error:
        external_folders(entries)
    assert message in str(error.value)


def external_folders(entries):
    return config({"evaluate": {"external": entries}}).evaluate.external


def test_valid_entries_and_relative_paths(tid_folder):
    assert external_folders([]) == []
    entries = external_folders([{"name": "tidlike", "path": tid_folder.name, "format": "tid2013"}])
    [folder] = open_folders(entries, root=tid_folder.parent)
    assert (folder.name, folder.path, len(folder.index)) == ("tidlike", tid_folder, 18)


def test_missing_or_unreadable_folder_names_entry_and_path(tmp_path, koniq_folder):
    missing = tmp_path / "nowhere"
    with pytest.raises(NriqaError, match=r"evaluate.external\[0\] 'humanlabels'") as error:
        open_folders(external_folders([{**GOOD, "path": str(missing)}]), root=tmp_path)
    assert f"{missing} does not exist" in str(error.value)
    # A folder in another layout: the reader's own message, prefixed with the entry.
    with pytest.raises(NriqaError, match=r"'wrong' .*mos_with_names.txt is missing"):
        open_folders(external_folders([{"name": "wrong", "path": str(koniq_folder),
                                        "format": "tid2013"}]), tmp_path)


@pytest.mark.integration  # starts a Python process
def test_stage_stops_on_a_missing_folder_before_the_test_split(tmp_path):
    """Nothing to evaluate exists here (no model, no data): the stage must fail on the
    external entry, with a clear message, before it would have needed any of it."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["evaluate"]["external"] = [{"name": "elsewhere", "path": "missing/set", "format": "kadid10k"}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mlflow_run.json").write_text(json.dumps(
        {"run_id": "0" * 32, "experiment_id": "1", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
         "model_uri": "models:/m-0"}))
    stage = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["evaluate"]
    result = run([sys.executable, *stage["cmd"].split()[1:]], cwd=tmp_path, check=False,
                 env=tool_env(PYTHONPATH=str(PROJECT), TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    assert result.returncode == 2, result.stderr  # ExitCode.ERROR
    assert "Traceback" not in result.stderr
    assert f"error: evaluate.external[0] 'elsewhere' ({tmp_path / 'missing/set'}, kadid10k)" \
        in result.stderr
    assert "does not exist" in result.stderr


# --- python -m nriqa evaluate ---------------------------------------------------------------------

@pytest.mark.integration  # starts a Python process
def test_cli_prints_the_figures(tiny_model, tid_folder, tid_result):
    result = evaluate_cli([str(tid_folder), "--format", "tid2013", "--model-dir", str(tiny_model)])
    out = result.stdout
    assert f"{tid_folder} (tid2013, 18 images)" in out
    assert re.search(rf"^srcc +{tid_result.metrics['srcc']:.4f}$", out, re.MULTILINE)
    assert "SRCC per distortion type" in out and "distortion  images" in out
    assert "predict" in result.stderr and "18/18" in result.stderr  # the progress bar


@pytest.mark.integration  # starts a Python process
def test_cli_json(tiny_model, koniq_folder, loaded):
    result = evaluate_cli([str(koniq_folder), "--format", "koniq10k", "--model-dir", str(tiny_model),
                           "--json"])
    figures = json.loads(result.stdout)
    model, info = loaded
    expected = evaluate_folder(model, info["preprocessing"], open_folder(koniq_folder, "koniq10k"),
                               progress=False).metrics
    assert (figures["path"], figures["format"], figures["images"]) == (str(koniq_folder), "koniq10k", 6)
    for key in ("srcc", "krcc", "plcc", "plcc_logistic", "rmse", "rmse_logistic"):
        assert figures[key] == pytest.approx(expected[key], abs=1e-5), key
    assert "per_distortion_srcc" not in figures


@pytest.mark.integration  # starts a Python process
def test_cli_missing_folder(tiny_model, tmp_path):
    missing = tmp_path / "no_such_set"
    result = evaluate_cli([str(missing), "--format", "kadid10k", "--model-dir", str(tiny_model)],
                          check=False)
    assert result.returncode == 2  # ExitCode.ERROR
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert f"error: {missing} (kadid10k): dataset folder {missing} does not exist" in result.stderr
