"""DVC stage `trainset`: generated training images with labels from `nriqa.data.labels` (written atomically).

    python -m stages.trainset OUT_DIR
"""

import argparse
import os
from pathlib import Path

from nriqa.core.config import load_config
from nriqa.core.stage import stage_main, staging
from nriqa.data.trainset import generate_training_set


@stage_main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="the generated images and their index (data/trainset)")
    args = parser.parse_args()
    settings = load_config().trainset
    types = settings.distortion_types
    with staging(args.out_dir) as tmp:
        generate_training_set(tmp, num_images=settings.images,
                              image_size=settings.image_size, seed=settings.seed,
                              pristine_fraction=settings.pristine_fraction,
                              psnr_matched=settings.strength == "psnr", shrink=settings.shrink,
                              **({} if types == "all" else {"distortion_types": types}))
        os.rename(tmp, args.out_dir)


if __name__ == "__main__":
    main()
