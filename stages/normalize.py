"""DVC stage `normalize`: resolve every scored name to a file and write data/interim/index.csv."""

from pathlib import Path

from nriqa.data.formats import build_index, dataset_format
from nriqa.stage import load_params, stage_main, write_json

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/interim")


@stage_main
def main():
    index, report = build_index(RAW_DIR, dataset_format(load_params()["data"]))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_json(OUT_DIR / "normalize_report.json", report)
    index.to_csv(OUT_DIR / "index.csv", index=False)
    print(f"index: {len(index)} images, {index['reference'].nunique()} references")


if __name__ == "__main__":
    main()
