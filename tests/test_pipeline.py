"""The real `dvc repro` on a tiny dataset in a temporary git clone."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from nriqa.core.config import load_config
from tests.helpers import VENV_BIN, project_env, run

pytestmark = pytest.mark.integration  # `dvc repro` in clones

DVC = str(VENV_BIN / "dvc")


def test_every_stage_output_exists(tiny_project):
    for path in ["data/raw/mos_with_names.txt", "data/interim/index.csv",
                 "data/processed/splits.csv", "data/processed/summary.json",
                 "models/model.keras", "models/model.json", "reports/metrics.json",
                 "reports/predictions.csv", "reports/per_distortion.csv",
                 "reports/type_accuracy.csv",
                 "reports/train_history.csv", "reports/figures/scatter.png"]:
        assert (tiny_project / path).stat().st_size > 0, path


def test_export_checks_the_champions_portable_forms_and_ships_them(tiny_project):
    """export runs after promote and before package: the champion as ONNX and TFLite, scored
    against Keras on the test split (`export.check_images` of it), logged to the champion's run
    and shipped in the Bento's model."""
    import mlflow

    report = json.loads((tiny_project / "reports/export.json").read_text())
    promotion = json.loads((tiny_project / "reports/promotion.json").read_text())
    splits = pd.read_csv(tiny_project / "data/processed/splits.csv")
    test_images = int((splits["split"] == "test").sum())
    assert report["images"] == min(test_images, load_config(tiny_project / "params.yaml")
                                   .export.check_images) > 0
    assert report["source"]["mlflow_run_id"] == promotion["champion_run_id"]
    for runtime in ("onnx", "tflite"):
        assert report[runtime]["passed"] and report[runtime]["max_abs_mos"] <= 1e-3, report
        assert report[runtime]["type_mismatches"] == 0
    portable = json.loads((tiny_project / "models/portable/model.json").read_text())
    assert portable["source"] == report["source"]
    client = mlflow.MlflowClient(tracking_uri=promotion["tracking_uri"])
    logged = {item.path for item in client.list_artifacts(promotion["champion_run_id"], "portable")}
    assert logged == {"portable/model.onnx", "portable/model.tflite", "portable/model.json"}
    metrics = client.get_run(promotion["champion_run_id"]).data.metrics
    assert metrics["export.onnx.max_abs_mos"] == report["onnx"]["max_abs_mos"]
    bento = json.loads((tiny_project / "reports/bento.json").read_text())
    stored = (tiny_project / "bentoml_home/models" / bento["model_tag"].replace(":", "/")
              / "portable" / "model.onnx")
    assert stored.read_bytes() == (tiny_project / "models/portable/model.onnx").read_bytes()


def test_index_holds_every_generated_image(tiny_project):
    index = pd.read_csv(tiny_project / "data/interim/index.csv")
    assert len(index) == 3 * 4 * 3
    assert list(index.columns) == ["image", "reference", "distortion", "level", "mos",
                                   "mos_std", "path"]
    assert index["mos"].between(0, 9).all()


def test_splits_share_no_reference(tiny_project):
    splits = pd.read_csv(tiny_project / "data/processed/splits.csv")
    by_split = {name: set(group["reference"]) for name, group in splits.groupby("split")}
    assert set(by_split) == {"train", "val", "test"}
    assert not by_split["test"] & (by_split["train"] | by_split["val"])
    assert not by_split["train"] & by_split["val"]


def test_training_uses_only_generated_images(tiny_project):
    # With the synthetic dataset, every one of its references is validation or test content;
    # training sees only the generated set, cut from other photos (tests/test_trainset.py).
    splits = pd.read_csv(tiny_project / "data/processed/splits.csv")
    train = splits[splits["split"] == "train"]
    assert len(train) == 24 and set(train["root"]) == {"data/trainset"}
    assert set(splits.loc[splits["split"] != "train", "root"]) == {"data/raw"}
    # The flag that train.dataset_share reads: generated images, and only those.
    assert train["generated"].all() and not splits.loc[splits["split"] != "train", "generated"].any()
    raw = pd.read_csv(tiny_project / "data/interim/index.csv")
    assert set(raw["reference"]) == set(splits.loc[splits["split"] != "train", "reference"])
    summary = json.loads((tiny_project / "data/processed/summary.json").read_text())
    assert summary["train"]["images"] == 24


def test_type_head_is_trained_and_measured(tiny_project):
    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())["test"]
    assert 0.0 <= metrics["distortion_accuracy"] <= metrics["distortion_top3_accuracy"] <= 1.0
    predictions = pd.read_csv(tiny_project / "reports/predictions.csv")
    assert predictions["pred_distortion"].between(1, 24).all()
    assert (tiny_project / "reports/figures/distortion_confusion.png").stat().st_size > 0


def test_metrics_are_finite(tiny_project):
    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())
    for section in ("test", "baseline"):
        for key in ("srcc", "krcc", "plcc", "rmse", "plcc_logistic", "rmse_logistic"):
            assert math.isfinite(metrics[section][key]), f"{section}.{key}"
    shown = run([DVC, "metrics", "show", "--json"], cwd=tiny_project, env=project_env(tiny_project)).stdout
    assert "srcc" in shown


def test_experiments_are_compared_on_the_test_figures_first(tiny_project):
    """`dvc exp show` takes its columns from the metrics files in file order: only
    reports/metrics.json is a metric (normalize_report.json is an output), test.srcc leading."""
    env = project_env(tiny_project)
    shown = json.loads(run([DVC, "metrics", "show", "--json"], cwd=tiny_project, env=env).stdout)
    assert {path for rev in shown.values() for path in rev["data"]} == {"reports/metrics.json"}
    assert (tiny_project / "data/interim/normalize_report.json").is_file()
    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())
    assert (next(iter(metrics)), next(iter(metrics["test"]))) == ("test", "srcc")
    header = run([DVC, "exp", "show", "--csv"], cwd=tiny_project, env=env).stdout.splitlines()[0]
    assert next(column for column in header.split(",") if "." in column) == "test.srcc"


# The tiny CNN cannot be held to a learning threshold: its 12 training steps leave every
# BatchNormalization's moving variance near its initial 1 while the activations' is ~100x
# smaller, so in inference its output hardly depends on the image (a range under 1e-4 on the
# test split). tests/test_model.py checks that the network learns. The checks below hold the
# reports to the predictions instead, recomputed here with scipy.

def test_predictions_are_the_test_split_on_the_mos_scale(tiny_project):
    splits = pd.read_csv(tiny_project / "data/processed/splits.csv")
    test = splits[splits["split"] == "test"].set_index("image")
    predictions = pd.read_csv(tiny_project / "reports/predictions.csv").set_index("image")
    assert sorted(predictions.index) == sorted(test.index) and len(predictions) == 12
    assert np.allclose(predictions["mos"], test.loc[predictions.index, "mos"], atol=1e-4)
    for column in ("pred", "baseline_pred"):
        assert predictions[column].between(0, 9).all(), column  # TID2013's MOS scale


def expected_category(mos: float, thresholds: dict) -> str:
    passed = [(bound, name) for name, bound in thresholds.items() if mos >= bound]
    return max(passed)[1] if passed else "Very Poor"


def test_categories_follow_the_thresholds(tiny_project):
    thresholds = yaml.safe_load((tiny_project / "params.yaml").read_text())["evaluate"]["categories"]
    predictions = pd.read_csv(tiny_project / "reports/predictions.csv")
    for value_column, category_column in (("mos", "category"), ("pred", "predicted_category")):
        expected = [expected_category(v, thresholds) for v in predictions[value_column]]
        assert list(predictions[category_column]) == expected, category_column
    assert len(set(predictions["category"])) >= 3  # the test split spans several categories
    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())["test"]
    agree = (predictions["category"] == predictions["predicted_category"]).mean()
    assert metrics["category_accuracy"] == pytest.approx(agree, abs=1e-4)


def test_reported_metrics_are_those_of_the_predictions(tiny_project):
    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())
    predictions = pd.read_csv(tiny_project / "reports/predictions.csv")
    mos, baseline = predictions["mos"], predictions["baseline_pred"]
    assert metrics["baseline"]["srcc"] == pytest.approx(stats.spearmanr(mos, baseline)[0], abs=2e-3)
    assert metrics["baseline"]["krcc"] == pytest.approx(stats.kendalltau(mos, baseline)[0], abs=2e-3)
    assert metrics["baseline"]["plcc"] == pytest.approx(stats.pearsonr(mos, baseline)[0], abs=2e-3)
    for section, column in (("baseline", "baseline_pred"), ("test", "pred")):
        rmse = float(np.sqrt(np.mean((mos - predictions[column]) ** 2)))
        assert metrics[section]["rmse"] == pytest.approx(rmse, abs=2e-3), section
    assert metrics["test"]["images"] == len(predictions)
    assert metrics["test"]["srcc_gain_over_baseline"] == pytest.approx(
        metrics["test"]["srcc"] - metrics["baseline"]["srcc"], abs=2e-4)


def test_per_distortion_table_is_per_distortion(tiny_project):
    table = pd.read_csv(tiny_project / "reports/per_distortion.csv", dtype={"distortion": str})
    predictions = pd.read_csv(tiny_project / "reports/predictions.csv")
    metrics = json.loads((tiny_project / "reports/metrics.json").read_text())
    assert list(table["distortion"]) == ["01", "08", "10", "17"]
    for row in table.itertuples():
        rows = predictions[predictions["distortion"] == int(row.distortion)]
        assert len(rows) == 3
        assert row.baseline_srcc == pytest.approx(
            stats.spearmanr(rows["mos"], rows["baseline_pred"])[0], abs=2e-3), row.distortion
        assert row.cnn_srcc == metrics["test_per_distortion_srcc"][f"type_{row.distortion}"]


def test_second_repro_runs_nothing(tiny_project):
    assert "up to date" in run([DVC, "status"], cwd=tiny_project, env=project_env(tiny_project)).stdout.lower()
    again = run([DVC, "repro"], cwd=tiny_project, env=project_env(tiny_project)).stdout
    assert "Running stage" not in again


@pytest.mark.parametrize("module, stage", [("nriqa/data/shards.py", "train"),
                                           ("nriqa/model/network.py", "evaluate"),
                                           ("nriqa/ops/tracking.py", "package")])
def test_dvc_status_sees_a_change_to_a_module_a_stage_imports(tiny_project, module, stage):
    """Modules once missing from dvc.yaml (tests/test_dvc_deps.py keeps all of
    them listed): changing one makes its stage stale, not "up to date"."""
    path = tiny_project / module
    original = path.read_text()
    path.write_text(original + "\n# changed\n")
    try:
        status = json.loads(run([DVC, "status", "--json"], cwd=tiny_project,
                                env=project_env(tiny_project)).stdout)
    finally:
        path.write_text(original)
    changed = {dep for entry in status.get(stage, []) if isinstance(entry, dict)
               for dep in entry.get("changed deps", {})}
    assert changed & {module, "nriqa"}, status.get(stage)


def test_data_stages_rebuild_identical_outputs(tiny_project):
    for stage in ("fetch", "trainset", "normalize", "preprocess", "baseline"):
        run([DVC, "repro", "--force", "--single-item", stage], cwd=tiny_project,
            env=project_env(tiny_project))
    # Byte-identical outputs leave everything downstream up to date.
    assert "up to date" in run([DVC, "status"], cwd=tiny_project,
                               env=project_env(tiny_project)).stdout.lower()


def test_same_params_give_the_same_metrics(tiny_project):
    before = (tiny_project / "reports/metrics.json").read_text()
    run([DVC, "repro", "--force", "train", "evaluate", "--single-item"], cwd=tiny_project, env=project_env(tiny_project))
    assert (tiny_project / "reports/metrics.json").read_text() == before


def test_a_model_change_reuses_the_baseline(tiny_project):
    """The baseline stage's predictions depend on the data alone: a new CNN is evaluated
    against them without fitting the baseline again, and its numbers stay the same."""
    baseline_before = json.loads((tiny_project / "reports/metrics.json").read_text())["baseline"]
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] / 2
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run([DVC, "status", "--json"], cwd=tiny_project,
                            env=project_env(tiny_project)).stdout)
    assert "train" in status and "baseline" not in status
    output = run([DVC, "repro"], cwd=tiny_project, env=project_env(tiny_project)).stdout
    assert "Running stage 'train'" in output and "Running stage 'evaluate'" in output
    assert "Running stage 'baseline'" not in output
    assert json.loads((tiny_project / "reports/metrics.json").read_text())["baseline"] == baseline_before


def test_preprocess_param_reruns_only_what_follows(tiny_project):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["preprocess"]["seed"] = params["preprocess"]["seed"] + 1
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run([DVC, "repro"], cwd=tiny_project, env=project_env(tiny_project)).stdout
    assert "Running stage 'preprocess'" in output
    assert "Running stage 'train'" in output and "Running stage 'baseline'" in output
    assert "Running stage 'fetch'" not in output
    assert "Running stage 'normalize'" not in output


def test_external_folder_in_the_evaluate_stage(tiny_project):
    # The clone's own data/raw stands in for an external folder: a check of the plumbing
    # (params -> metrics.json, reports/external, MLflow), not of the model, which trained on part
    # of it. Changing `evaluate` params reruns evaluate alone.
    import mlflow

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["evaluate"]["external"] = [{"name": "selfcheck", "path": "data/raw", "format": "tid2013"}]
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run([DVC, "repro", "evaluate"], cwd=tiny_project, env=project_env(tiny_project)).stdout
    assert "Running stage 'evaluate'" in output and "Running stage 'train'" not in output

    external = json.loads((tiny_project / "reports/metrics.json").read_text())["external"]["selfcheck"]
    assert external["images"] == 3 * 4 * 3 and math.isfinite(external["srcc"])
    assert sorted(external["per_distortion_srcc"]) == ["type_01", "type_08", "type_10", "type_17"]
    predictions = pd.read_csv(tiny_project / "reports/external/selfcheck.csv")
    assert list(predictions.columns) == ["image", "distortion", "level", "mos", "pred"]
    assert (tiny_project / "reports/external/selfcheck_per_distortion.csv").stat().st_size > 0
    assert (tiny_project / "reports/external/selfcheck_type_accuracy.csv").stat().st_size > 0

    pointer = json.loads((tiny_project / "models/mlflow_run.json").read_text())
    logged = mlflow.MlflowClient(pointer["tracking_uri"]).get_run(pointer["run_id"]).data.metrics
    assert math.isclose(logged["external.selfcheck.srcc"], external["srcc"], rel_tol=1e-9)
