"""DVC stage `preprocess`: content-disjoint splits and model-ready TFRecord shards.

The generated training set (`trainset` stage) joins the training split when the dataset's
labels are on its scale (TID2013's 0..9: the synthetic and TID2013-layout sets). With the
synthetic dataset it replaces that dataset's training share: every synthetic reference goes
to validation or test, so no validation or test content is ever trained on.

    python -m stages.preprocess RAW_DIR TRAINSET_DIR INDEX_CSV OUT_DIR
"""

import argparse
from pathlib import Path

import pandas as pd

from nriqa.core.config import load_config
from nriqa.core.stage import stage_main, staging, write_json
from nriqa.data.formats import dataset_format, uses_trainset
from nriqa.data.shards import split_by_reference, write_shards
from nriqa.data.trainset import INDEX_NAME


@stage_main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="the dataset (data/raw)")
    parser.add_argument("trainset_dir", type=Path, help="the generated images (data/trainset)")
    parser.add_argument("index", type=Path, help="the dataset's index (data/interim/index.csv)")
    parser.add_argument("out_dir", type=Path, help="shards, splits.csv, summary.json (data/processed)")
    args = parser.parse_args()
    raw_dir, trainset_dir, out_dir = args.raw_dir, args.trainset_dir, args.out_dir
    config = load_config()
    settings = config.preprocess
    with_trainset = uses_trainset(config.trainset.mix, config.data)
    ratios = dict(settings.split)
    if with_trainset and config.data.source == "synthetic":
        ratios["train"] = 0.0
    index = split_by_reference(pd.read_csv(args.index), ratios, settings.seed)
    # The type head speaks TID2013's 24 types; KADID-10k numbers its 25 differently and
    # KonIQ-10k has none, so their images train the MOS only (their `distortion` stays for
    # the per-type tables).
    tid2013_types = dataset_format(config.data) == "tid2013"
    index = index.assign(root=str(raw_dir), type_label=index["distortion"] if tid2013_types else None,
                         generated=False)
    if with_trainset:
        generated = pd.read_csv(trainset_dir / INDEX_NAME)
        generated = generated.assign(split="train", root=str(trainset_dir),
                                     type_label=generated["distortion"], generated=True)
        index = pd.concat([index, generated], ignore_index=True)
    with staging(out_dir) as tmp:  # renamed at the end: a failed run leaves no half-written shards
        summary = write_shards(index, tmp, mode=settings.mode, resize=list(settings.resize),
                               crop_size=config.model.input_size, shards=settings.shards)
        index.to_csv(tmp / "splits.csv", index=False)
        write_json(tmp / "summary.json", summary)
        tmp.rename(out_dir)
    print({split: info["images"] for split, info in summary.items()})


if __name__ == "__main__":
    main()
