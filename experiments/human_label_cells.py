"""Where a model loses people on the human-label dev set: cells, references and types.

    .venv/bin/python -m experiments.human_label_cells --model-dir models [--set DIR]

Scores the dev set (through `nriqa.evaluation.report.score_index`, as `human_labels` does) and
prints: the SRCC if each (type, level) cell's mean score stood for every image in it (what the
cells' order alone allows), the SRCC with each reference's mean offset from the labeller removed
(what content bias costs), the SRCC of the 55 cell means against people's, the SRCC with one type's
scores replaced by the labeller's (what fixing that type would gain), and the cell means beside the
labeller's and people's. With a per-type MOS head, a second pass through a model that exposes the
per-type outputs gives the SRCC if the type head were always right (each image scored by its own
type's MOS). It measures only: nothing here feeds training or calibration.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nriqa.core.runtime import configure


def main() -> None:
    from scipy.stats import spearmanr

    from experiments.human_labels import scored_dev_set_from_command_line

    args, model, info, scored = scored_dev_set_from_command_line(__doc__)
    reference = scored["image"].str[:3].str.lower()

    def srcc(pred) -> float:
        return float(spearmanr(scored["mos"], pred)[0])

    offset = (scored["pred"] - scored["labeller"]).groupby(reference).transform("mean")
    cells = scored.groupby(["distortion", "level"])["pred"].transform("mean")
    print(f"model {srcc(scored['pred']):.3f}   labeller {srcc(scored['labeller']):.3f}   "
          f"cell means {srcc(cells):.3f}   reference offsets removed {srcc(scored['pred'] - offset):.3f}")
    means = scored.groupby(["distortion", "level"])[["pred", "labeller", "mos"]].mean()
    print(f"the 55 cell means against people's: model {spearmanr(means['mos'], means['pred'])[0]:.3f}, "
          f"labeller {spearmanr(means['mos'], means['labeller'])[0]:.3f}")
    if any(layer.name == "mos_per_type" for layer in model.layers):
        own_type = own_type_mos(model, info["preprocessing"], scored, args.set)
        print(f"each image scored by its own type's MOS (a type head always right): {srcc(own_type):.3f}")
    for number, rows in scored.groupby("distortion"):
        fixed = scored["pred"].where(scored["distortion"] != number, scored["labeller"])
        print(f"type {number:2d}: SRCC within {spearmanr(rows['mos'], rows['pred'])[0]:.3f}, "
              f"overall with the labeller's scores for it {srcc(fixed):.3f}")
    print(means.unstack().round(2).to_string())


def own_type_mos(model, preprocessing: dict, scored: pd.DataFrame, root: Path) -> list[float]:
    """Each image's mean over its crops of the per-type MOS output for its true type."""
    import keras

    from nriqa.core import imaging
    from nriqa.model.prediction import predict_crops

    per_type = keras.Model(model.inputs, model.get_layer("mos_per_type").output)
    scores = []
    for path, number in zip(scored["path"], scored["distortion"]):
        crops = imaging.crops_for_prediction(imaging.decode_image(root / path), preprocessing)
        scores.append(float(predict_crops(per_type, crops)[:, int(number) - 1].mean()))
    return scores


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    pd.set_option("display.width", 200)
    main()
