"""Is it the content or the distortion code? The dev set's references, distorted by our generator.

    .venv/bin/python -m experiments.generator_on_dev_references --model-dir models [--set DIR]

For every image of the human-label dev set, the generator (`nriqa.data.distortions`) makes the
same type on the same reference twice: at the level's calibrated parameter (what training
draws), and with the strength searched to give the dev image's own PSNR (so only the distortion's
look differs, not its strength). The model scores all three. Per (type, level) it prints people's
mean MOS, the labeller's, and the model's mean score on each version; then the SRCC against
people with each type's dev images swapped for the generator's PSNR-matched ones. Where the
model scores the generator's images as the labeller does but the dev images otherwise, the
distortion's look is what it has not learnt; where it scores both alike, it is the content. It
measures only: nothing here feeds training, the generator or calibration.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nriqa.core.runtime import configure


def position_for_psnr(distortion, psnr: float) -> float:
    """The level position whose TID2013 PSNR (`Distortion.psnr_at`) is `psnr`, within range."""
    from nriqa.data.distortions import MAX_POSITION, MIN_POSITION

    positions = np.linspace(MIN_POSITION, MAX_POSITION, 501)
    psnrs = np.array([distortion.psnr_at(float(p)) for p in positions])
    return float(positions[np.argmin(np.abs(psnrs - psnr))])


def main() -> None:
    from scipy.stats import spearmanr
    from skimage.metrics import peak_signal_noise_ratio

    from experiments.human_labels import scored_dev_set_from_command_line
    from nriqa.core.imaging import decode_image
    from nriqa.data.distortions import DISTORTIONS
    from nriqa.model.prediction import predict_mos

    args, model, info, scored = scored_dev_set_from_command_line(__doc__)
    preprocessing = info["preprocessing"]
    references = {path.stem[1:]: decode_image(path)
                  for path in (args.set / "reference_images").glob("I*.BMP")}
    generated, matched = [], []
    for row_number, row in enumerate(scored.itertuples()):
        reference = references[row.image[1:3]]
        dev_image = decode_image(args.set / row.path)
        distortion = DISTORTIONS[int(row.distortion)]
        rng = np.random.default_rng([2026, row_number])
        generated.append(distortion(reference, int(row.level), rng))
        position = position_for_psnr(distortion, peak_signal_noise_ratio(reference, dev_image))
        matched.append(distortion.matched(reference, position, seed=row_number))
    scored["generated"] = predict_mos(model, generated, preprocessing)
    scored["matched"] = predict_mos(model, matched, preprocessing)
    print(f"SRCC against people: dev images {spearmanr(scored['mos'], scored['pred'])[0]:.3f}, "
          f"generator's at the calibrated parameter {spearmanr(scored['mos'], scored['generated'])[0]:.3f}, "
          f"generator's at the dev image's PSNR {spearmanr(scored['mos'], scored['matched'])[0]:.3f}")
    for number in sorted(scored["distortion"].unique()):
        swapped = scored["pred"].where(scored["distortion"] != number, scored["matched"])
        print(f"type {number:2d}: its dev images swapped for the generator's PSNR-matched ones: "
              f"{spearmanr(scored['mos'], swapped)[0]:.3f}")
    cells = scored.groupby(["distortion", "level"])[["mos", "labeller", "pred", "generated", "matched"]]
    pd.set_option("display.width", 200)
    print(cells.mean().round(2).to_string())


if __name__ == "__main__":
    configure()
    main()
