"""DVC stage `promote`: register the trained model; it takes the `champion` alias only if its
test SRCC beats the current champion's on the same test set, or if `mlflow.force_promote` is
true (see `nriqa.ops.registry`)."""

from pathlib import Path

from nriqa.ops import registry, tracking
from nriqa.stage import load_params, stage_main, write_json

REPORT = Path("reports/promotion.json")


@stage_main
def main():
    params = load_params()
    pointer = tracking.open_pointer(Path("models/mlflow_run.json"))
    report = registry.promote(pointer, params["mlflow"]["registered_model"],
                              force=bool(params["mlflow"].get("force_promote", False)))
    REPORT.parent.mkdir(exist_ok=True)
    write_json(REPORT, report)
    verdict = "promoted to champion" if report["promoted"] else "not promoted"
    print(f"{report['registered_model']} v{report['candidate_version']} "
          f"(test SRCC {report['candidate_srcc']:.4f}): {verdict}, {report['reason']}; "
          f"champion is v{report['champion_version']}")


if __name__ == "__main__":
    main()
