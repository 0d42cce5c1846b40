"""DVC stage `normalize`: resolve every scored name to a file and write the index table.

    python -m stages.normalize RAW_DIR INDEX_CSV REPORT_JSON
"""

import argparse
from pathlib import Path

from nriqa.core.config import load_config
from nriqa.core.stage import stage_main, write_json, written_aside
from nriqa.data.formats import build_index, dataset_format


@stage_main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="the dataset in its own layout (data/raw)")
    parser.add_argument("index", type=Path, help="the index to write (data/interim/index.csv)")
    parser.add_argument("report", type=Path,
                        help="what was resolved and what not (data/interim/normalize_report.json)")
    args = parser.parse_args()
    index, report = build_index(args.raw_dir, dataset_format(load_config().data))
    write_json(args.report, report)
    with written_aside(args.index) as aside:
        index.to_csv(aside, index=False)
    print(f"index: {len(index)} images, {index['reference'].nunique()} references")


if __name__ == "__main__":
    main()
