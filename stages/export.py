"""DVC stage `export`: the champion as ONNX and TFLite, checked to score as the Keras model does.

    python -m stages.export --promotion reports/promotion.json --raw data/raw
        --splits data/processed/splits.csv --out models/portable --report reports/export.json

The champion is fetched and checked as the package stage fetches it (the registry version
promote recorded, from the store it used). Its portable files and model.json go to --out
(`nriqa.model.export`); then `export.check_images` test-split images (all, for null) are scored
by Keras, ONNX and TFLite, and the stage fails unless each portable MOS is within 1e-3 of
Keras's and every likeliest type is the same. The figures go to --report and, with the files, to
the champion's MLflow run.
"""

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from nriqa.core.config import load_config
from nriqa.core.stage import stage_main, write_json
from nriqa.model.bundle import WEIGHTS, file_sha256, load_model
from nriqa.model.export import check_parity, export_portable, parity, parity_sample
from nriqa.ops.packaging import fetch_champion, promoted_version
from nriqa.ops.tracking import log_export


@stage_main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotion", type=Path, required=True, help="promote's report")
    parser.add_argument("--raw", type=Path, required=True, help="the dataset (test images)")
    parser.add_argument("--splits", type=Path, required=True, help="the preprocess stage's splits.csv")
    parser.add_argument("--out", type=Path, required=True, help="folder for the exported files")
    parser.add_argument("--report", type=Path, required=True, help="the parity figures (JSON)")
    args = parser.parse_args()
    config = load_config()

    champion = promoted_version(args.promotion)
    splits = pd.read_csv(args.splits)
    test_paths = [args.raw / path for path in splits.loc[splits["split"] == "test", "path"]]
    checked = parity_sample(test_paths, config.export.check_images)
    with tempfile.TemporaryDirectory(prefix="nriqa-champion-") as folder:
        model_dir = fetch_champion(champion, Path(folder))
        model, info = load_model(model_dir)
        source = {"registered_model": champion.registered_model, "version": champion.version,
                  "mlflow_run_id": champion.run_id, "model_sha256": file_sha256(model_dir / WEIGHTS)}
        export_portable(model, info, args.out, categories=config.evaluate.categories, source=source)
        figures = parity(model, info["preprocessing"], checked, args.out)
    seconds = figures.pop("seconds")
    write_json(args.report, {"source": source, **figures})
    log_export(champion.run_id, {**figures, "seconds": seconds}, args.out, args.report)
    check_parity(figures, args.report)
    print(f"Exported {champion.model_uri} to {args.out}: ONNX max |ΔMOS| "
          f"{figures['onnx']['max_abs_mos']:.1e}, TFLite {figures['tflite']['max_abs_mos']:.1e} "
          f"over {figures['images']} of {len(test_paths)} test images; scoring took " +
          ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()))


if __name__ == "__main__":
    main()
