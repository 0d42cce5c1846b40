"""DVC stage `baseline`: the BRISQUE + SVR baseline fitted on the training split, and its predicted
MOS for each test image (nriqa/evaluation/baseline.py). A stage of its own so that evaluate
reads these predictions instead of fitting the baseline again after every CNN change."""

import argparse
from pathlib import Path

import pandas as pd

from nriqa.core.stage import stage_main, written_aside
from nriqa.evaluation.baseline import predict_test_split


@stage_main
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=Path, required=True,
                        help="splits.csv of the preprocess stage (files are root/path)")
    parser.add_argument("--out", type=Path, required=True,
                        help="CSV to write: image, baseline_pred (the test split, in order)")
    args = parser.parse_args()
    predictions = predict_test_split(pd.read_csv(args.splits))
    with written_aside(args.out) as aside:
        # Floats at full precision: evaluate's metrics must not depend on a rounding here.
        predictions.to_csv(aside, index=False)


if __name__ == "__main__":
    main()
