"""DVC stage `fetch`: the raw dataset in its own layout (written atomically).

    python -m stages.fetch RAW_DIR
"""

import argparse
from pathlib import Path

from nriqa.core.config import load_config
from nriqa.core.stage import stage_main
from nriqa.data.sources import fetch_dataset


@stage_main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="where the dataset goes (data/raw)")
    args = parser.parse_args()
    fetch_dataset(load_config().data, args.raw_dir)


if __name__ == "__main__":
    main()
