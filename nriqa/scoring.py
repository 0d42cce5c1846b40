"""`python -m nriqa score PATH...`: score image files or folders with the local champion model.

Folders are searched recursively for image files (JPEG, PNG, BMP, WebP, TIFF). Scores come
from `nriqa.predict.predict_images`, the function behind `predict_mos` (which evaluation uses)
and the service, so the CLI, the reports and the service agree. Beside each MOS come the three
likeliest TID2013 distortion types (empty for a model without the distortion-type head).
A file that cannot be read is named on stderr and skipped; the exit status is non-zero only
when nothing could be scored.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import yaml

from nriqa.errors import NriqaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Images decoded and scored per model call: enough to batch crops well, few enough that
# large photos do not pile up in memory.
CHUNK = 32
# How many of the likeliest distortion types each row names.
TOP_DISTORTIONS = 3
CSV_FIELDS = ["path", "mos", "category"] + [
    f"{column}_{rank}" for rank in range(1, TOP_DISTORTIONS + 1)
    for column in ("distortion", "p")]


def add_score_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="score image files or folders with the trained model",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="image files and/or folders (searched recursively)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", type=Path, default=Path("models"),
                        help="folder with model.keras and model.json (default: models)")
    source.add_argument("--model-uri",
                        help="an MLflow model instead, e.g. models:/nriqa@champion")
    parser.add_argument("--format", choices=("csv", "json"), default="csv")
    parser.add_argument("--output", "-o", type=Path,
                        help="write the scores to this file instead of stdout")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="category thresholds (evaluate.categories) and the MLflow "
                             "tracking URI are read from here if it exists")
    parser.set_defaults(handler=run_score)


def find_images(paths: list[Path]) -> list[Path]:
    """Files as given (whatever their suffix); folders expanded to their image files, sorted."""
    found = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)  # decode_image reports a missing or unreadable file by name
    return found


def score_files(model, preprocessing: dict, files: list[Path], thresholds: dict,
                progress: bool = True) -> tuple[list[dict], list[str]]:
    """Score files in chunks; returns (rows in file order, error messages of skipped files).

    A row is `{"path", "mos", "category", "distortions"}`; `distortions` is the
    `nriqa.predict.top_distortions` list, or None when the model has no distortion-type head.
    """
    from tqdm import tqdm

    from nriqa.imaging import decode_image
    from nriqa.metrics import categorize
    from nriqa.predict import predict_images, top_distortions

    rows, errors = [], []
    with tqdm(total=len(files), unit="image", disable=not progress or len(files) < 2,
              file=sys.stderr) as bar:
        for start in range(0, len(files), CHUNK):
            names, images = [], []
            for path in files[start:start + CHUNK]:
                try:
                    images.append(decode_image(path))
                    names.append(path)
                except NriqaError as error:
                    errors.append(str(error))
                    bar.write(f"skipped {error}", file=sys.stderr)
            # One model pass per chunk gives both the MOS and the type probabilities.
            mos, probabilities = predict_images(model, images, preprocessing)
            for i, path in enumerate(names):
                rows.append({"path": str(path), "mos": round(float(mos[i]), 6),
                             "category": categorize(float(mos[i]), thresholds),
                             "distortions": None if probabilities is None else
                             top_distortions(probabilities[i], TOP_DISTORTIONS)})
            bar.update(len(files[start:start + CHUNK]))
    return rows, errors


def write_rows(rows: list[dict], fmt: str, stream) -> None:
    """JSON: the rows as they are (`distortions` a list or null). CSV: one column pair per
    likely distortion, `distortion_k` (its name) and `p_k` (its probability), empty when the
    model has no distortion-type head."""
    if fmt == "json":
        json.dump(rows, stream, indent=2)
        stream.write("\n")
    else:
        writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(_csv_row(row) for row in rows)


def _csv_row(row: dict) -> dict:
    flat = {key: row[key] for key in ("path", "mos", "category")}
    for rank, distortion in enumerate(row["distortions"] or [], start=1):
        flat[f"distortion_{rank}"] = distortion["name"]
        flat[f"p_{rank}"] = distortion["probability"]
    return flat  # DictWriter leaves the missing columns empty


def _settings(params_path: Path) -> tuple[dict, str | None]:
    from nriqa.metrics import DEFAULT_THRESHOLDS

    if not params_path.is_file():
        return dict(DEFAULT_THRESHOLDS), None
    params = yaml.safe_load(params_path.read_text()) or {}
    thresholds = params.get("evaluate", {}).get("categories") or DEFAULT_THRESHOLDS
    if "mlflow" not in params:
        return dict(thresholds), None  # MLflow then reads MLFLOW_TRACKING_URI itself
    from nriqa.tracking import resolve_tracking_uri

    return dict(thresholds), resolve_tracking_uri(params, params_path.resolve().parent)


def _load(args, tracking_uri: str | None, workdir: str):
    from nriqa.predict import load_model

    if args.model_uri:
        from nriqa.packaging import fetch_mlflow_model

        model_dir = fetch_mlflow_model(args.model_uri, workdir, tracking_uri=tracking_uri)
    else:
        from nriqa.packaging import check_model_dir

        model_dir = check_model_dir(args.model_dir)
    return load_model(model_dir)


def run_score(args) -> int:
    try:
        thresholds, tracking_uri = _settings(args.params)
        files = find_images(args.paths)
        if not files:
            raise NriqaError("no image files found in " + ", ".join(map(str, args.paths)))
        with tempfile.TemporaryDirectory(prefix="nriqa-model-") as workdir:
            model, info = _load(args, tracking_uri, workdir)
            rows, errors = score_files(model, info["preprocessing"], files, thresholds)
    except NriqaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if rows:
        if args.output:
            with args.output.open("w", newline="") as stream:
                write_rows(rows, args.format, stream)
        else:
            write_rows(rows, args.format, sys.stdout)
    print(f"scored {len(rows)} of {len(files)} images"
          + (f"; skipped {len(errors)} that could not be read" if errors else ""),
          file=sys.stderr)
    return 0 if rows else 1
