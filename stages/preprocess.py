"""DVC stage `preprocess`: content-disjoint splits and model-ready TFRecord shards."""

import shutil
from pathlib import Path

import pandas as pd

from nriqa.shards import split_by_reference, write_json, write_shards
from nriqa.stage import load_params, stage_main

RAW_DIR = Path("data/raw")
INDEX = Path("data/interim/index.csv")
OUT_DIR = Path("data/processed")


@stage_main
def main():
    params = load_params()
    settings = params["preprocess"]
    index = split_by_reference(pd.read_csv(INDEX), settings["split"], int(settings["seed"]))
    # Built aside and renamed at the end: a failed run leaves no half-written shards behind.
    staging = OUT_DIR.with_name(".tmp-processed")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        summary = write_shards(index, RAW_DIR, staging, mode=settings["mode"],
                               resize=settings["resize"],
                               crop_size=int(params["model"]["input_size"]),
                               shards=int(settings["shards"]))
        index.to_csv(staging / "splits.csv", index=False)
        write_json(staging / "summary.json", summary)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    staging.rename(OUT_DIR)
    print({split: info["images"] for split, info in summary.items()})


if __name__ == "__main__":
    main()
