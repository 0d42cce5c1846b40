"""DVC stage `fetch`: the raw dataset in its own layout, under data/raw (written atomically)."""

from pathlib import Path

from nriqa.data.sources import fetch_dataset
from nriqa.stage import load_params, stage_main

RAW_DIR = Path("data/raw")


@stage_main
def main():
    fetch_dataset(load_params()["data"], RAW_DIR)


if __name__ == "__main__":
    main()
