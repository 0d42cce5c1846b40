"""`python -m nriqa score PATH...`: score image files or folders with the local champion model.

Folders are searched recursively for image files (JPEG, PNG, BMP, WebP, TIFF). Scores come
from `nriqa.model.prediction.score_images` on `nriqa.model.imaging.crops_for_prediction`, the two steps of
`predict_images` (behind `predict_mos`, which evaluation uses) and of the service, so the CLI,
the reports and the service agree. Beside each MOS come the three likeliest TID2013 distortion
types (empty for a model without the distortion-type head). `--map DIR` also writes each
image's quality map (`nriqa.serving.quality_map`: its crop scores, whose mean is its MOS) over the image
as DIR/<name>.png, with a 0..9 colour legend along the bottom.
Rows are written as they are scored (CSV, or JSON lines with `--format jsonl`), so a crash
keeps what was done. A file that fails for any reason is named on stderr and skipped; the exit
status is 1 if any file failed, 2 if nothing could start (no files, no model).
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import yaml

from nriqa.errors import NriqaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Images scored per model call: enough to batch crops well. Only their crops (at most
# predict.max_crops each) wait for the call, never the decoded images.
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
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                        help="csv (default) or jsonl, one JSON object per line; each row is "
                             "written as soon as it is scored")
    parser.add_argument("--output", "-o", type=Path,
                        help="write the scores to this file instead of stdout")
    parser.add_argument("--map", type=Path, metavar="DIR", dest="map_dir",
                        help="also write each image's quality map over it as DIR/<name>.png "
                             "(the JSON lines rows name the file)")
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
                on_error, progress: bool = True, map_dir: Path | None = None) -> Iterator[dict]:
    """Yield one row per scored file, in file order, as each chunk is scored.

    Files are decoded only when their chunk comes up, and each decoded image is reduced to its
    crops at once, so memory holds one image and one chunk of crops, however many files there
    are. A file that fails for any reason is passed to `on_error(path, message)` and skipped.
    A row is `{"path", "mos", "category", "distortions"}`; `distortions` is the
    `nriqa.model.prediction.top_distortions` list, or None when the model has no distortion-type head.
    With `map_dir`, each image's quality map is written there and the row's `map` names it.
    """
    from tqdm import tqdm

    from nriqa.model.imaging import crops_for_prediction, decode_image
    from nriqa.evaluation.metrics import categorize
    from nriqa.model.prediction import score_crop_sets, top_distortions

    maps = MapWriter(map_dir, preprocessing) if map_dir is not None else None

    with tqdm(total=len(files), unit="image", disable=not progress or len(files) < 2,
              file=sys.stderr) as bar:
        for start in range(0, len(files), CHUNK):
            chunk = files[start:start + CHUNK]
            names, crop_sets = [], []
            for path in chunk:
                try:
                    image = decode_image(path)
                    crops = crops_for_prediction(image, preprocessing)
                    if maps is not None:
                        maps.keep(image)
                    crop_sets.append(crops)
                    names.append(path)
                except Exception as error:  # noqa: BLE001  one bad file must not stop the rest
                    on_error(path, _describe(path, error))
            try:
                # One model pass per chunk gives the MOS, the type probabilities and the map.
                mos, probabilities, crop_scores = score_crop_sets(model, crop_sets)
            except Exception as error:  # noqa: BLE001
                for path in names:
                    on_error(path, _describe(path, error))
                names = []
                if maps is not None:
                    maps.pending.clear()
            for i, path in enumerate(names):
                row = {"path": str(path), "mos": round(float(mos[i]), 6),
                       "category": categorize(float(mos[i]), thresholds),
                       "distortions": None if probabilities is None else
                       top_distortions(probabilities[i], TOP_DISTORTIONS)}
                if maps is not None:
                    row["map"] = str(maps.write(path, crop_scores[i]))
                yield row
            bar.update(len(chunk))


class MapWriter:
    """Writes quality maps as PNGs into one folder, one per image, named after it.

    Between decoding and scoring it keeps a small copy of each image (the map's resolution,
    `nriqa.serving.quality_map.MAX_MAP_SIDE`) and its crop layout, not the decoded image; `write`
    takes them in the order `keep` got them.
    """

    def __init__(self, folder: Path, preprocessing: dict):
        self.folder, self.preprocessing = folder, preprocessing
        self.pending: list[tuple] = []
        self.used: set[str] = set()
        folder.mkdir(parents=True, exist_ok=True)

    def keep(self, image) -> None:
        from PIL import Image

        from nriqa.model.imaging import prediction_layout
        from nriqa.serving.quality_map import MAX_MAP_SIDE

        small = Image.fromarray(image)
        small.thumbnail((MAX_MAP_SIDE, MAX_MAP_SIDE))
        self.pending.append((small, prediction_layout(image, self.preprocessing)))

    def write(self, path: Path, crop_scores) -> Path:
        import numpy as np

        from nriqa.serving.quality_map import map_overlay, quality_map

        small, (width, height, corners) = self.pending.pop(0)
        grid = quality_map(width, height, corners, self.preprocessing["crop_size"], crop_scores)
        name, number = f"{path.stem}.png", 1
        while name in self.used:  # two images with one name, from different folders
            number += 1
            name = f"{path.stem}-{number}.png"
        self.used.add(name)
        target = self.folder / name
        map_overlay(np.asarray(small), grid).save(target)
        return target


def _describe(path: Path, error: Exception) -> str:
    # NriqaError messages name the file already; anything else gets its name and its type.
    if isinstance(error, NriqaError):
        return str(error)
    return f"{path}: {type(error).__name__}: {error}"


class RowWriter:
    """Writes each row as it comes and flushes it, so rows already scored survive a crash.

    JSON lines (`jsonl`): each row as it is (`distortions` a list or null). CSV: one column pair
    per likely distortion, `distortion_k` (its name) and `p_k` (its probability), empty when the
    model has no distortion-type head; the header comes with the first row.
    """

    def __init__(self, fmt: str, stream):
        self.stream = stream
        self.csv = csv.DictWriter(stream, fieldnames=CSV_FIELDS) if fmt == "csv" else None
        self.rows = 0

    def write(self, row: dict) -> None:
        if self.csv is None:
            self.stream.write(json.dumps(row) + "\n")
        else:
            if not self.rows:
                self.csv.writeheader()
            self.csv.writerow(_csv_row(row))
        self.rows += 1
        self.stream.flush()


def _csv_row(row: dict) -> dict:
    flat = {key: row[key] for key in ("path", "mos", "category")}
    for rank, distortion in enumerate(row["distortions"] or [], start=1):
        flat[f"distortion_{rank}"] = distortion["name"]
        flat[f"p_{rank}"] = distortion["probability"]
    return flat  # DictWriter leaves the missing columns empty


def _settings(params_path: Path) -> tuple[dict, str | None]:
    from nriqa.evaluation.metrics import DEFAULT_THRESHOLDS

    if not params_path.is_file():
        return dict(DEFAULT_THRESHOLDS), None
    params = yaml.safe_load(params_path.read_text()) or {}
    thresholds = params.get("evaluate", {}).get("categories") or DEFAULT_THRESHOLDS
    if "mlflow" not in params:
        return dict(thresholds), None  # MLflow then reads MLFLOW_TRACKING_URI itself
    from nriqa.ops.tracking import resolve_tracking_uri

    return dict(thresholds), resolve_tracking_uri(params, params_path.resolve().parent)


def _load(args, tracking_uri: str | None, workdir: str):
    from nriqa.model.bundle import fetch_bundle, load_model

    if args.model_uri:
        return load_model(fetch_bundle(args.model_uri, workdir, tracking_uri=tracking_uri))
    return load_model(args.model_dir)


def _open_output(path: Path | None):
    return contextlib.nullcontext(sys.stdout) if path is None else path.open("w", newline="")


def run_score(args) -> int:
    from tqdm import tqdm

    failed = []

    def skip(path: Path, message: str) -> None:
        failed.append(path)
        tqdm.write(f"skipped {message}", file=sys.stderr)  # above the progress bar

    try:
        thresholds, tracking_uri = _settings(args.params)
        files = find_images(args.paths)
        if not files:
            raise NriqaError("no image files found in " + ", ".join(map(str, args.paths)))
        with tempfile.TemporaryDirectory(prefix="nriqa-model-") as workdir:
            model, info = _load(args, tracking_uri, workdir)
            with _open_output(args.output) as stream:
                writer = RowWriter(args.format, stream)
                for row in score_files(model, info["preprocessing"], files, thresholds, skip,
                                       map_dir=args.map_dir):
                    writer.write(row)
    except NriqaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"scored {writer.rows} of {len(files)} images"
          + (f"; skipped {len(failed)} that could not be scored" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0
