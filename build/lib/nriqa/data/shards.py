"""Content-disjoint splits and the model-ready TFRecord shards that training reads.

Splitting is by reference content: every distorted version of one reference lands in the
same split, because random per-image splits let the network see the test content during
training and inflate the scores. Images are decoded once (`nriqa.core.imaging`) and stored as
raw uint8 pixels after the preprocess policy, so training only crops and flips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from nriqa.core.errors import NriqaError
from nriqa.core.imaging import apply_policy, crops_for_prediction, decode_image

SPLITS = ("train", "val", "test")


def split_by_reference(index: pd.DataFrame, ratios: dict, seed: int) -> pd.DataFrame:
    """Add a `split` column; whole references are assigned, in a seeded random order."""
    total = sum(float(ratios[s]) for s in SPLITS)
    if total <= 0 or any(float(ratios[s]) < 0 for s in SPLITS):
        raise NriqaError(f"preprocess.split: ratios must be non-negative and not all zero, got {ratios}")
    references = np.array(sorted(index["reference"].astype(str).unique()))
    wanted = [s for s in SPLITS if float(ratios[s]) > 0]
    if len(references) < len(wanted):
        raise NriqaError(f"preprocess: {len(references)} reference contents cannot make "
                         f"{len(wanted)} content-disjoint splits")
    np.random.default_rng(seed).shuffle(references)
    n_val = max(1, round(len(references) * float(ratios["val"]) / total))
    n_test = max(1, round(len(references) * float(ratios["test"]) / total))
    if float(ratios["train"]) == 0:  # every content goes to val and test
        n_test = len(references) - n_val
    n_train = len(references) - n_val - n_test
    if n_train < 1 and float(ratios["train"]) > 0:
        raise NriqaError("preprocess.split: no reference content is left for training")
    assignment = {ref: "train" for ref in references[:n_train]}
    assignment.update({ref: "val" for ref in references[n_train:n_train + n_val]})
    assignment.update({ref: "test" for ref in references[n_train + n_val:]})
    out = index.copy()
    out["split"] = out["reference"].astype(str).map(assignment)
    return out


def write_shards(index: pd.DataFrame, out_dir: Path, *, mode: str, resize, crop_size: int,
                 shards: int) -> dict:
    """Decode every image once (from its `root` folder and `path`) and write
    `{split}-{k}-of-{n}.tfrecord` with its `mos` and `type_label`; returns a summary."""
    import tensorflow as tf

    summary = {}
    for split in SPLITS:
        rows = index[index["split"] == split].reset_index(drop=True)
        writers = [tf.io.TFRecordWriter(str(out_dir / f"{split}-{k:02d}-of-{shards:02d}.tfrecord"))
                   for k in range(shards)]
        for i, row in tqdm(rows.iterrows(), total=len(rows), desc=f"shards {split}", unit="img"):
            image = decode_image(Path(row["root"]) / row["path"], name=row["image"])
            image = apply_policy(image, mode=mode, resize=resize, crop_size=crop_size)
            # deterministic=True: protobuf map order otherwise varies between processes.
            writers[i % shards].write(_example(image, row).SerializeToString(deterministic=True))
        for writer in writers:
            writer.close()
        summary[split] = {"images": int(len(rows)),
                          "references": sorted(rows["reference"].astype(str).unique().tolist())}
    return summary


def _example(image: np.ndarray, row):
    import tensorflow as tf

    def _bytes(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    return tf.train.Example(features=tf.train.Features(feature={
        "pixels": _bytes(image.tobytes()),
        "height": _int(image.shape[0]),
        "width": _int(image.shape[1]),
        "mos": tf.train.Feature(float_list=tf.train.FloatList(value=[float(row["mos"])])),
        "image": _bytes(str(row["image"]).encode()),
        # The TID2013 type the type head learns; 0 where there is none (KADID-10k, KonIQ-10k).
        "distortion": _int(0 if pd.isna(row["type_label"]) else row["type_label"]),
    }))


def read_split(shard_dir: Path, split: str):
    """A tf.data.Dataset of (uint8 HxWx3 image, float32 mos, image name, int64 distortion type,
    0 where unknown) for one split."""
    import tensorflow as tf

    files = sorted(str(p) for p in Path(shard_dir).glob(f"{split}-*.tfrecord"))
    if not files:
        raise NriqaError(f"{shard_dir}: no {split} shards; run the preprocess stage")
    spec = {"pixels": tf.io.FixedLenFeature([], tf.string),
            "height": tf.io.FixedLenFeature([], tf.int64),
            "width": tf.io.FixedLenFeature([], tf.int64),
            "mos": tf.io.FixedLenFeature([], tf.float32),
            "image": tf.io.FixedLenFeature([], tf.string),
            "distortion": tf.io.FixedLenFeature([], tf.int64, default_value=0)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        pixels = tf.io.decode_raw(example["pixels"], tf.uint8)
        image = tf.reshape(pixels, tf.stack([example["height"], example["width"], 3]))
        return image, example["mos"], example["image"], example["distortion"]

    return (tf.data.Dataset.from_tensor_slices(files)
            # Sequential (no num_parallel_calls), hence in a fixed order.
            .interleave(tf.data.TFRecordDataset, cycle_length=len(files))
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def load_split_arrays(shard_dir: Path, split: str):
    """A split in memory: (list of images, mos array, names, distortion types) in shard order."""
    images, mos, names, types = [], [], [], []
    for image, score, name, distortion in read_split(shard_dir, split).as_numpy_iterator():
        images.append(image)
        mos.append(score)
        names.append(name.decode())
        types.append(distortion)
    return images, np.array(mos, dtype=np.float32), names, np.array(types, dtype=np.int64)


def example_crops(shard_dir: Path, preprocessing: dict, count: int = 1) -> np.ndarray:
    """A real input for the model: the first crop(s) of the first validation image."""
    image, *_ = next(read_split(shard_dir, "val").take(1).as_numpy_iterator())
    return crops_for_prediction(image, preprocessing)[:count].astype(np.float32)
