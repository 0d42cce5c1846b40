"""The example images of the web page: a clean photo and distorted versions of it.

Made at package time (`nriqa.ops.packaging.save_to_store` puts them beside the model, so the Bento
carries them) from the project's own generator: a reference photo of `nriqa.data.synthetic` and
distortions of `nriqa.data.distortions`, the kinds of images the model was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from nriqa.core.taxonomy import type_name

REFERENCE = 2                # nriqa.data.synthetic's cup of coffee
IMAGE_SIZE = (320, 240)      # width, height: small enough for any serve.max_pixels in use
SEED = 12
# (TID2013 type, level): blur and noise cover the whole image; JPEG transmission errors are
# local, which the quality map shows.
DISTORTIONS = ((8, 4), (1, 4), (10, 5), (12, 5))
INDEX = "examples.json"


def write_examples(folder: str | Path) -> list[dict]:
    """Write the examples as PNG files and `examples.json` (file and title of each, in order)."""
    # lazy: the generator needs scikit-image, which the Bento (reading the index only) lacks
    from nriqa.data.distortions import distort
    from nriqa.data.synthetic import image_rng, load_reference

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean = load_reference(REFERENCE, IMAGE_SIZE)
    images = [("clean.png", "clean photo", clean)]
    for number, level in DISTORTIONS:
        distorted = distort(clean, number, level, image_rng(SEED, REFERENCE, number, level))
        images.append((f"type{number:02d}-level{level}.png",
                       f"{type_name(number)}, level {level} of 5", distorted))
    for file, _, image in images:
        Image.fromarray(image).save(folder / file)
    index = [{"file": file, "title": title} for file, title, _ in images]
    (folder / INDEX).write_text(json.dumps(index, indent=1))
    return index


def read_index(folder: str | Path) -> list[dict]:
    """The examples written to `folder`; none for a model packaged before there were any."""
    path = Path(folder) / INDEX
    return json.loads(path.read_text()) if path.is_file() else []
