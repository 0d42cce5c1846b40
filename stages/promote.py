"""DVC stage `promote`: register the trained model; it takes the `champion` alias only if its
test SRCC beats the current champion's on the same test set, or if `mlflow.force_promote` is
true (see `nriqa.ops.registry`).

    python -m stages.promote POINTER_JSON METRICS_JSON REPORT_JSON --model-info MODEL_JSON

The candidate's SRCC is the one in its metrics file; the champion's comes from the registry.
Its model card (`nriqa.ops.model_card`) becomes its version's description, and the registered
model's while it is the champion.
"""

import argparse
from pathlib import Path

from nriqa.core.config import load_config
from nriqa.core.errors import NriqaError
from nriqa.core.stage import read_json, stage_main, write_json
from nriqa.data.formats import uses_trainset
from nriqa.model.bundle import check_info
from nriqa.ops import registry, tracking
from nriqa.ops.model_card import model_card


@stage_main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pointer", type=Path, help="the training's run (models/mlflow_run.json)")
    parser.add_argument("metrics", type=Path, help="its test metrics (reports/metrics.json)")
    parser.add_argument("report", type=Path, help="the decision (reports/promotion.json)")
    parser.add_argument("--model-info", type=Path, required=True,
                        help="the trained model's model.json (models/model.json), for its card")
    args = parser.parse_args()
    config = load_config()
    srcc = candidate_srcc(args.metrics)
    pointer = tracking.open_pointer(args.pointer)
    card = model_card(
        info=check_info(read_json(args.model_info, stage="train"), args.model_info),
        metrics=read_json(args.metrics, stage="evaluate"),
        categories=config.evaluate.categories, source=config.data.source,
        mixed=uses_trainset(config.trainset.mix, config.data), backbone=config.model.backbone,
        weights=config.model.weights, run_id=pointer["run_id"])
    report = registry.promote(pointer, config.mlflow.registered_model, srcc,
                              force=config.mlflow.force_promote, card=card)
    write_json(args.report, report)
    verdict = "promoted to champion" if report["promoted"] else "not promoted"
    print(f"{report['registered_model']} v{report['candidate_version']} "
          f"(test SRCC {report['candidate_srcc']:.4f}): {verdict}, {report['reason']}; "
          f"champion is v{report['champion_version']}")


def candidate_srcc(metrics_path: Path) -> float:
    """`test.srcc` of the evaluate stage's metrics file."""
    try:
        srcc = read_json(metrics_path, stage="evaluate")["test"]["srcc"]
    except (KeyError, TypeError) as error:
        raise NriqaError(f"{metrics_path}: has no test.srcc ({type(error).__name__}: {error}); "
                         "run the evaluate stage again") from error
    if not isinstance(srcc, (int, float)):
        raise NriqaError(f"{metrics_path}: test.srcc must be a number, got {srcc!r}")
    return float(srcc)


if __name__ == "__main__":
    main()
