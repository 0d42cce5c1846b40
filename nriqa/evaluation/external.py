"""Cross-dataset evaluation: how the model scores labelled folders it never trained on.

`evaluate.external` in params.yaml lists such folders (`{name, path, format}`), and
`python -m nriqa evaluate PATH --format ...` measures one of them. Both go through the same
three steps the test split does, so the numbers are comparable with `test.*`:

1. the folder is indexed by the dataset readers (`nriqa.data.formats.build_index`);
2. its images are scored by `nriqa.evaluation.report.score_index`, i.e.
   `nriqa.model.prediction.score_paths`, the CLI's scoring loop;
3. SRCC, PLCC, ... come from `nriqa.core.metrics.quality_metrics`, and SRCC per distortion type from
   `per_group_srcc` where the dataset has types (KonIQ-10k has none, so it gets no such table).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nriqa.core.config import ExternalFolder
from nriqa.core.errors import NriqaError
from nriqa.core.metrics import per_group_srcc, quality_metrics
from nriqa.data.formats import build_index
from nriqa.evaluation.report import (
    distortion_accuracy_table,
    distortion_metrics,
    score_index,
)
from nriqa.ops.tracking import open_named_model

PREDICTION_COLUMNS = ["image", "distortion", "level", "mos", "pred"]
# reports/external/all-folders.csv: no folder's name has a hyphen, so none can overwrite it.
SUMMARY_FILE = "all-folders.csv"
SUMMARY_COLUMNS = ["name", "images", "srcc", "krcc", "plcc", "rmse", "plcc_logistic",
                   "rmse_logistic"]


@dataclass
class LabelledFolder:
    """One dataset folder to measure the model on, already indexed."""
    name: str
    path: Path
    format: str
    index: pd.DataFrame = field(repr=False)
    label: str = ""  # how error messages name it

    def __post_init__(self):
        self.label = self.label or f"{self.path} ({self.format})"


@dataclass
class ExternalResult:
    predictions: pd.DataFrame  # PREDICTION_COLUMNS, one row per image
    metrics: dict  # quality_metrics keys, images, and per_distortion_srcc where there are types
    per_distortion: pd.DataFrame | None  # distortion, images, srcc; None without types
    type_accuracy: pd.DataFrame | None = None  # `report.distortion_accuracy_table`


def open_folders(entries: list[ExternalFolder], root: Path) -> list[LabelledFolder]:
    """Index every folder of `evaluate.external`, relative paths taken from `root`.

    Meant to run before anything slow, so a mistyped path costs seconds, not an evaluation.
    """
    folders = []
    for number, entry in enumerate(entries):
        path = root / entry.path  # an absolute entry.path stays itself
        label = f"evaluate.external[{number}] {entry.name!r} ({path}, {entry.format})"
        folders.append(open_folder(path, entry.format, name=entry.name, label=label))
    return folders


def open_folder(path: Path, fmt: str, name: str = "", label: str = "") -> LabelledFolder:
    """Index one labelled folder; every problem becomes a NriqaError that names it."""
    label = label or f"{path} ({fmt})"
    try:
        index, _ = build_index(Path(path), fmt)
    except NriqaError as error:
        raise NriqaError(f"{label}: {error}") from error
    except OSError as error:  # permissions, a broken link: not a dataset problem build_index knows
        raise NriqaError(f"{label}: cannot be read ({error})") from error
    return LabelledFolder(name or Path(path).name, Path(path), fmt, index, label)


# --- Scoring and metrics ------------------------------------------------------------------------

def evaluate_folder(model, preprocessing: dict, folder: LabelledFolder,
                    progress: bool = True) -> ExternalResult:
    """Score every image of the folder and measure the scores against its MOS."""
    try:
        scored = score_index(model, preprocessing, folder.index, folder.path,
                             desc=f"predict {folder.name}", progress=progress)
        metrics = quality_metrics(scored["mos"], scored["pred"])
    except NriqaError as error:  # an unreadable image, too few images
        raise NriqaError(f"{folder.label}: {error}") from error
    metrics["images"] = int(len(scored))
    type_accuracy = None
    if folder.format == "tid2013":  # the head speaks TID2013's type numbers, not KADID-10k's
        metrics.update(distortion_metrics(scored))
        type_accuracy = distortion_accuracy_table(scored)

    per_distortion = None
    # Only datasets made by distorting references have types; for the others (KonIQ-10k) an
    # empty table would suggest a measurement that was never possible.
    if scored["distortion"].notna().any():
        srcc = per_group_srcc(scored, "distortion")  # groups under 3 images are left out
        counts = scored.groupby("distortion").size()
        metrics["per_distortion_srcc"] = {f"type_{int(k):02d}": v for k, v in srcc.items()}
        per_distortion = pd.DataFrame({"distortion": [f"{int(k):02d}" for k in srcc],
                                       "images": [int(counts[k]) for k in srcc],
                                       "srcc": [round(v, 4) for v in srcc.values()]})
    return ExternalResult(scored[PREDICTION_COLUMNS], metrics, per_distortion, type_accuracy)


def write_reports(name: str, result: ExternalResult, out_dir: Path) -> list[Path]:
    """reports/external/<name>.csv and, where there are types, <name>_per_distortion.csv and
    (TID2013's types, a type head) <name>_type_accuracy.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{name}.csv"]
    result.predictions.round(4).to_csv(written[0], index=False)
    if result.per_distortion is not None:
        written.append(out_dir / f"{name}_per_distortion.csv")
        result.per_distortion.to_csv(written[-1], index=False)
    if result.type_accuracy is not None:
        written.append(out_dir / f"{name}_type_accuracy.csv")
        result.type_accuracy.to_csv(written[-1], index=False)
    return written


def write_summary(results: dict[str, ExternalResult], out_dir: Path) -> Path:
    """reports/external/all-folders.csv: a row of metrics per folder, only the header with
    `evaluate.external: []`, so that the declared output is never an empty folder (which DVC
    reports with a warning on every run)."""
    path = out_dir / SUMMARY_FILE
    rows = [{"name": name, **{key: result.metrics[key] for key in SUMMARY_COLUMNS[1:]}}
            for name, result in results.items()]
    pd.DataFrame(rows, columns=SUMMARY_COLUMNS).round(4).to_csv(path, index=False)
    return path


def reset_dir(out_dir: Path) -> None:
    """An empty folder: reports of a dataset since removed from params.yaml must not linger."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)


# --- `python -m nriqa evaluate PATH --format ...` -----------------------------------------------

def run_evaluate(args) -> None:
    """`python -m nriqa evaluate`, its arguments parsed by `nriqa.cli`; the model is loaded
    exactly as `python -m nriqa score` loads it."""
    # Indexed first: a wrong path or format fails before the model is loaded.
    folder = open_folder(args.path, args.format)
    with tempfile.TemporaryDirectory(prefix="nriqa-model-") as workdir:
        model, info = open_named_model(args.model_uri, args.model_dir, args.params, workdir,
                                       runtime=args.runtime)
        result = evaluate_folder(model, info["preprocessing"], folder)
    if args.json:
        print(json.dumps({"path": str(args.path), "format": args.format, **result.metrics},
                         indent=2))
    else:
        print(format_result(folder, result))


def format_result(folder: LabelledFolder, result: ExternalResult) -> str:
    overall = {key: value for key, value in result.metrics.items() if key != "per_distortion_srcc"}
    lines = [f"{folder.path} ({folder.format}, {result.metrics['images']} images)", ""]
    lines += [f"{key:<25} {value:.4f}" if isinstance(value, float) else f"{key:<25} {value}"
              for key, value in overall.items()]
    if result.per_distortion is not None:
        lines += ["", "SRCC per distortion type",
                  result.per_distortion.to_string(index=False, float_format="%.4f")]
    return "\n".join(lines)
