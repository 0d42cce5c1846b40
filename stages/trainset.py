"""DVC stage `trainset`: generated training images with labels from `nriqa.data.labels` (written atomically)."""

import os
from pathlib import Path

from nriqa.data.sources import staging
from nriqa.stage import load_params, stage_main
from nriqa.data.trainset import generate_training_set

OUT_DIR = Path("data/trainset")


@stage_main
def main():
    settings = load_params()["trainset"]
    types = settings["distortion_types"]
    with staging(OUT_DIR) as tmp:
        generate_training_set(tmp, num_images=int(settings["images"]),
                              image_size=tuple(settings["image_size"]), seed=int(settings["seed"]),
                              pristine_fraction=float(settings.get("pristine_fraction", 0.0)),
                              **({} if types == "all" else {"distortion_types": types}))
        os.rename(tmp, OUT_DIR)


if __name__ == "__main__":
    main()
