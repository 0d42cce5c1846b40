"""`python -m nriqa score PATH...`: score image files or folders with the local champion model.

Folders are searched recursively for image files (`nriqa.data.formats.IMAGE_SUFFIXES`). Scores
come from `nriqa.model.prediction.score_paths`, as the evaluate stage's do, on the crops and
model pass the service uses too, so the CLI, the reports and the service agree. Beside each
MOS come the three likeliest TID2013 distortion types when one stands out, else "no distortion
stands out" (`nriqa.model.prediction.likely_distortions`; empty for a model without the
distortion-type head). `--map DIR` also writes each
image's quality map (`nriqa.serving.quality_map`: its crop scores, whose mean is its MOS) over the image
as DIR/<name>.png, with a 0..9 colour legend along the bottom.
Rows are written as they are scored (CSV, or JSON lines with `--format jsonl`), so a crash
keeps what was done; an output file that is one of the input images is refused before anything
is opened (`check_output`), since opening it would empty the image. A file that fails for any reason is named on stderr and skipped; the exit
status (`nriqa.core.errors.ExitCode`) is 1 if any file failed, 2 if nothing could start (no files, no
model). Its arguments are parsed in `nriqa.cli`.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from nriqa.core.categories import DEFAULT_THRESHOLDS, categorize
from nriqa.core.config import load_config
from nriqa.core.errors import ExitCode, NriqaError
from nriqa.core.imaging import prediction_layout
from nriqa.data.formats import IMAGE_SUFFIXES
from nriqa.model.portable import ONNX_FILE, OnnxModel
from nriqa.model.prediction import likely_distortions, score_paths
from nriqa.ops.packaging import check_portable
from nriqa.ops.tracking import named_export, open_named_model
from nriqa.serving.quality_map import MAX_MAP_SIDE, map_overlay, quality_map

# How many of the likeliest distortion types each row names.
TOP_DISTORTIONS = 3
CSV_FIELDS = ["path", "mos", "category"] + [
    f"{column}_{rank}" for rank in range(1, TOP_DISTORTIONS + 1)
    for column in ("distortion", "p")] + ["distortion_note"]


def scoring_export(runtime: str, model_uri: str | None, model_dir: Path | None, params_path: Path,
                   workdir: str) -> Path | None:
    """The exported model `score` runs with `--runtime`, or None for the Keras model.

    onnx: the export the command names (`named_export`; missing is an error). auto: the same,
    when it is at hand and is of the model that Keras would load (`--model-dir`'s `portable/`,
    the export stage's, exported from that folder's model.keras; a folder that is an export
    itself; the `portable/` artifacts of `--model-uri`'s run), and onnxruntime is installed;
    else the Keras model. Both score alike (the export stage checks it), onnxruntime about 2.7
    times as fast on a CPU (BENCHMARKS.md).
    """
    if runtime == "onnx":
        return named_export(model_uri, model_dir, params_path, workdir)
    if runtime != "auto" or importlib.util.find_spec("onnxruntime") is None:
        return None
    try:
        if model_uri:
            return named_export(model_uri, None, params_path, workdir)
        folder = model_dir or Path("models")
        if (folder / ONNX_FILE).is_file():
            return folder
        check_portable(folder / "portable", folder)
        return folder / "portable"
    except NriqaError:
        return None


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
                on_error, progress: bool = True, map_dir: Path | None = None, *,
                mos_range: tuple[float, float]) -> Iterator[dict]:
    """Yield one row per scored file, in file order, as `nriqa.model.prediction.score_paths`
    scores each chunk (so memory holds one chunk of crops, however many files there are).

    A file that fails for any reason is passed to `on_error(path, message)` and skipped.
    A row is `{"path", "mos", "category", "distortions", "distortion_note"}`, the last two as
    `nriqa.model.prediction.likely_distortions` gives them (both None without a type head).
    With `map_dir`, each image's quality map is written there, coloured along `mos_range` (the
    model.json's), and the row's `map` names it.
    """
    maps = MapWriter(map_dir, preprocessing, mos_range, files) if map_dir is not None else None
    for scored in score_paths(model, preprocessing, files, progress=progress,
                              keep=maps.keep if maps is not None else None):
        if scored.error is not None:
            on_error(scored.path, _describe(scored.path, scored.error))
            continue
        distortions, note = likely_distortions(scored.probabilities, TOP_DISTORTIONS)
        row = {"path": str(scored.path), "mos": round(float(scored.mos), 6),
               "category": categorize(float(scored.mos), thresholds),
               "distortions": distortions, "distortion_note": note}
        if maps is not None:
            row["map"] = str(maps.write(scored.path, scored.kept, scored.crop_scores))
        yield row


class MapWriter:
    """Writes quality maps as PNGs into one folder, one per image, named after it.

    Between decoding and scoring, `keep` reduces each image to a small copy (the map's
    resolution, `nriqa.serving.quality_map.MAX_MAP_SIDE`) and its crop layout; `write` draws
    the map from that and the image's crop scores.
    """

    def __init__(self, folder: Path, preprocessing: dict, mos_range, inputs: list[Path] = ()):
        self.folder, self.preprocessing, self.mos_range = folder, preprocessing, mos_range
        self.used: set[str] = set()
        # A map never takes the place of an input image (--map into the images' own folder).
        self.inputs = {identity for identity in map(_identity, inputs) if identity}
        folder.mkdir(parents=True, exist_ok=True)

    def keep(self, image) -> tuple:
        from PIL import Image

        small = Image.fromarray(image)
        small.thumbnail((MAX_MAP_SIDE, MAX_MAP_SIDE))
        return small, prediction_layout(image, self.preprocessing)

    def write(self, path: Path, kept: tuple, crop_scores) -> Path:
        import numpy as np

        small, (width, height, corners) = kept
        grid = quality_map(width, height, corners, self.preprocessing["crop_size"], crop_scores)
        name, number = f"{path.stem}.png", 1
        while name in self.used or _identity(self.folder / name) in self.inputs:
            number += 1
            name = f"{path.stem}-{number}.png"
        self.used.add(name)
        target = self.folder / name
        map_overlay(np.asarray(small), grid, self.mos_range).save(target)
        return target


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode): the file however it is spelled; None where there is none."""
    with contextlib.suppress(OSError):
        found = path.stat()
        return found.st_dev, found.st_ino
    return None


def _describe(path: Path, error: Exception) -> str:
    # NriqaError messages name the file already; anything else gets its name and its type.
    if isinstance(error, NriqaError):
        return str(error)
    return f"{path}: {type(error).__name__}: {error}"


class RowWriter:
    """Writes each row as it comes and flushes it, so rows already scored survive a crash.

    JSON lines (`jsonl`): each row as it is (`distortions` a list or null). CSV: one column pair
    per likely distortion, `distortion_k` (its name) and `p_k` (its probability), then
    `distortion_note`; empty where there is nothing to say (none stands out: the note says so;
    a model without the distortion-type head: all empty). The header comes with the first row.
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
    flat = {key: row[key] for key in ("path", "mos", "category", "distortion_note")}
    for rank, distortion in enumerate(row["distortions"] or [], start=1):
        flat[f"distortion_{rank}"] = distortion["name"]
        flat[f"p_{rank}"] = distortion["probability"]
    return flat  # DictWriter leaves the missing columns empty


def _thresholds(params_path: Path) -> dict:
    """The category thresholds of params.yaml's `evaluate.categories`, else the defaults."""
    return dict(load_config(params_path).evaluate.categories if params_path.is_file()
                else DEFAULT_THRESHOLDS)


def _open_output(path: Path | None):
    return contextlib.nullcontext(sys.stdout) if path is None else path.open("w", newline="")


def check_output(output: Path | None, files: list[Path]) -> None:
    """Refuse an output file that is one of the input images, however it is spelled (another
    path, a symbolic or hard link): opening it for writing would empty the image before it is
    read. Checked before anything is opened."""
    target = _identity(output) if output is not None else None
    for path in files if target else ():
        if _identity(path) == target:  # a missing input is reported when it is scored
            raise NriqaError(f"--output {output} is the input image {path}; write the "
                             "scores to another file")


def run_score(args) -> ExitCode:
    """`python -m nriqa score`, its arguments parsed by `nriqa.cli`."""
    from tqdm import tqdm

    failed = []

    def skip(path: Path, message: str) -> None:
        failed.append(path)
        tqdm.write(f"skipped {message}", file=sys.stderr)  # above the progress bar

    thresholds = _thresholds(args.params)
    files = find_images([Path(path) for path in args.paths])
    if not files:
        raise NriqaError("no image files found in " + ", ".join(map(str, args.paths)))
    check_output(args.output, files)
    with tempfile.TemporaryDirectory(prefix="nriqa-model-") as workdir:
        export = scoring_export(args.runtime, args.model_uri, args.model_dir, args.params,
                                workdir)
        if export is not None:
            model = OnnxModel.load(export)
            info = model.info
        else:
            model, info = open_named_model(args.model_uri, args.model_dir, args.params, workdir)
        print(f"scoring with onnxruntime ({export})" if export is not None else
              "scoring with Keras (TensorFlow)", file=sys.stderr)
        with _open_output(args.output) as stream:
            writer = RowWriter(args.format, stream)
            for row in score_files(model, info["preprocessing"], files, thresholds, skip,
                                   map_dir=args.map_dir, mos_range=tuple(info["mos_range"])):
                writer.write(row)
    print(f"scored {writer.rows} of {len(files)} images"
          + (f"; skipped {len(failed)} that could not be scored" if failed else ""),
          file=sys.stderr)
    return ExitCode.PARTIAL if failed else ExitCode.OK
