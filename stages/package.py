"""DVC stage `package`: the MLflow champion -> BentoML model store -> a Bento; writes a report.

    python -m stages.package --promotion PROMOTION_JSON --report BENTO_JSON
    python -m stages.package --model-dir DIR [--run-id ID] [--version N] --report BENTO_JSON
    either with --portable DIR: the export stage's files, shipped in the model (portable/)

The champion is the exact registry version the promote stage recorded in its report
(`models:/<registered_model>/<version>`), not whatever the alias points at now, downloaded from
the tracking store promote used (not the one this shell or params.yaml names), and checked: the
version belongs to the champion's run, and its model.keras is the file that run's training
wrote (`nriqa.ops.packaging.fetch_champion`). So the labels name the weights that are served. `--model-dir DIR` packages a model bundle folder instead
(model.keras + model.json), for trying the service without a registry. Either way the model
store gets the bundle's files as they are (`nriqa.model.bundle`).

BentoML's store is the project's `bentoml_home/` unless BENTOML_HOME says otherwise, so that
`make serve` finds what this stage built.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BENTOML_HOME", str(PROJECT / "bentoml_home"))  # before bentoml is imported

from nriqa.core.config import load_config  # noqa: E402
from nriqa.core.stage import stage_main, write_json  # noqa: E402
from nriqa.ops.packaging import fetch_champion, package, promoted_version  # noqa: E402


@stage_main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--promotion", type=Path,
                        help="the promote stage's report, naming the champion to package")
    source.add_argument("--model-dir", type=Path,
                        help="package this model bundle folder instead of the MLflow champion")
    parser.add_argument("--run-id", default="", help="with --model-dir: its MLflow run id")
    parser.add_argument("--version", default="", help="with --model-dir: its registry version")
    parser.add_argument("--portable", type=Path,
                        help="the export stage's folder (model.onnx, model.tflite, model.json), "
                             "shipped in the model for the web page's scoring on the device")
    parser.add_argument("--report", type=Path, required=True,
                        help="what was built (reports/bento.json)")
    args = parser.parse_args()
    # `serve`, and the category thresholds (`evaluate.categories`) the service answers with.
    config = load_config(PROJECT / "params.yaml")

    if args.model_dir is not None:
        report = package(args.model_dir, run_id=args.run_id, version=args.version,
                         config=config, project_dir=PROJECT, portable_dir=args.portable)
    else:
        champion = promoted_version(args.promotion)
        with tempfile.TemporaryDirectory(prefix="nriqa-champion-") as folder:
            model_dir = fetch_champion(champion, Path(folder))
            report = package(model_dir, run_id=champion.run_id, version=champion.version,
                             config=config, project_dir=PROJECT, model_uri=champion.model_uri,
                             portable_dir=args.portable)
    write_json(args.report, report)
    print(f"Built Bento {report['bento_tag']} with model {report['model_tag']} "
          f"(MLflow run {report['mlflow_run_id'] or '-'}, version {report['registry_version'] or '-'})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
