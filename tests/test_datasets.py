"""Indexing datasets: tiny fixtures in each dataset's real layout, real image files.

The TID2013 fixture reproduces the quirks of the real score list: mostly
lowercase names, some uppercase ones ending ``.BMP``, and a disk whose case
does not always agree with the list.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from nriqa.core.errors import NriqaError
from nriqa.data.formats import INDEX_COLUMNS, build_index, dataset_format
from tests.helpers import data_config


def image(path: Path, shade: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".bmp": "BMP", ".png": "PNG", ".jpg": "JPEG"}[path.suffix.lower()]
    Image.new("RGB", (8, 6), (shade, shade, shade)).save(path, format=fmt)


# --------------------------------------------------------------------------
# TID2013
# --------------------------------------------------------------------------

# (score-list name, name on disk or None, mos, std)
TID_ENTRIES = [
    ("i01_01_2.bmp", "i01_01_2.bmp", 4.9, 0.5),  # lowercase both
    ("I01_01_1.BMP", "i01_01_1.bmp", 5.5, 0.4),  # uppercase list, lowercase disk
    ("i01_11_1.bmp", "I01_11_1.BMP", 5.2, 0.3),  # lowercase list, uppercase disk
    ("I02_13_1.bmp", "I02_13_1.bmp", 5.0, 0.6),  # uppercase both
    ("i02_24_5.bmp", "i02_24_5.bmp", 1.2, 0.9),
]


def write_tid(root: Path, entries=TID_ENTRIES, extra_files=(), std_lines=None) -> Path:
    lines = [f"{mos:.5f} {listed}" for listed, _, mos, _ in entries]
    (root / "distorted_images").mkdir(parents=True)
    (root / "reference_images").mkdir()
    (root / "mos_with_names.txt").write_text("\r\n".join(lines) + "\r\n")  # the real files are CRLF
    stds = std_lines if std_lines is not None else [f"{std:.5f}" for *_, std in entries]
    (root / "mos_std.txt").write_text("\n".join(stds) + "\n")
    for shade, (_, on_disk, _, _) in enumerate(entries):
        if on_disk:
            image(root / "distorted_images" / on_disk, shade * 20)
    for name in extra_files:
        image(root / "distorted_images" / name)
    image(root / "reference_images" / "I01.BMP")
    return root


def test_tid2013_names_resolve_case_insensitively(tmp_path):
    root = write_tid(tmp_path / "raw", extra_files=["i03_01_1.bmp"])

    index, report = build_index(root, "tid2013")

    assert list(index.columns) == INDEX_COLUMNS
    assert list(index["image"]) == ["I01_01_2.bmp", "I01_01_1.bmp", "I01_11_1.bmp", "I02_13_1.bmp",
                                    "I02_24_5.bmp"]
    # path is whatever the disk says, relative to the root, so it can be opened.
    assert list(index["path"]) == [f"distorted_images/{d}" for _, d, _, _ in TID_ENTRIES]
    assert all((root / p).is_file() for p in index["path"])
    assert list(index["reference"]) == ["I01", "I01", "I01", "I02", "I02"]
    assert list(index["distortion"]) == [1, 1, 11, 13, 24]
    assert list(index["level"]) == [2, 1, 1, 1, 5]
    assert index["mos"].tolist() == pytest.approx([4.9, 5.5, 5.2, 5.0, 1.2])
    assert index["mos_std"].tolist() == pytest.approx([0.5, 0.4, 0.3, 0.6, 0.9])
    assert str(index["distortion"].dtype) == "Int64"

    assert report["unscored"] == ["i03_01_1.bmp"]  # reported, not fatal
    assert report["unmatched"] == report["duplicates"] == report["unparsable"] == []
    assert report["counts"] == {"scored": 5, "indexed": 5, "files": 6, "unmatched": 0, "unscored": 1,
                                "duplicates": 0, "unparsable": 0}


def test_tid2013_missing_file_is_named(tmp_path):
    entries = TID_ENTRIES + [("i02_05_3.bmp", None, 3.0, 0.7)]
    root = write_tid(tmp_path / "raw", entries)
    with pytest.raises(NriqaError, match=r"1 scored images have no file in .*distorted_images: i02_05_3\.bmp"):
        build_index(root, "tid2013")


def test_tid2013_two_files_differing_only_in_case_are_duplicates(tmp_path):
    root = write_tid(tmp_path / "raw", extra_files=["I01_01_2.BMP"])
    with pytest.raises(NriqaError) as err:
        build_index(root, "tid2013")
    message = str(err.value)
    assert "do not resolve to exactly one file" in message
    assert "I01_01_2.BMP" in message and "i01_01_2.bmp" in message


def test_tid2013_name_listed_twice_is_a_duplicate(tmp_path):
    entries = TID_ENTRIES + [("I01_01_2.BMP", None, 4.8, 0.5)]
    root = write_tid(tmp_path / "raw", entries)
    with pytest.raises(NriqaError, match=r"I01_01_2\.BMP \(listed twice\)"):
        build_index(root, "tid2013")


def test_tid2013_unparsable_line_and_mismatched_std_file(tmp_path):
    entries = TID_ENTRIES + [("reference.bmp", "reference.bmp", 3.0, 0.7)]
    root = write_tid(tmp_path / "a", entries)
    with pytest.raises(NriqaError, match=r"cannot be parsed: mos_with_names\.txt line 6"):
        build_index(root, "tid2013")

    root = write_tid(tmp_path / "b", std_lines=["0.5", "0.4"])
    with pytest.raises(NriqaError, match=r"mos_std\.txt has 2 values but .* lists 5"):
        build_index(root, "tid2013")


def test_error_lists_at_most_ten_names_and_the_count(tmp_path):
    entries = [(f"i{r:02d}_01_1.bmp", None, 3.0, 0.5) for r in range(1, 16)]
    root = write_tid(tmp_path / "raw", entries)
    with pytest.raises(NriqaError) as err:
        build_index(root, "tid2013")
    message = str(err.value)
    assert message.count(".bmp") == 10
    assert "15 scored images have no file" in message and "and 5 more" in message


def test_missing_layout_is_named(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(NriqaError, match="mos_with_names.txt"):
        build_index(tmp_path / "raw", "tid2013")
    with pytest.raises(NriqaError, match="does not exist"):
        build_index(tmp_path / "nowhere", "tid2013")
    with pytest.raises(NriqaError, match="unknown dataset format"):
        build_index(tmp_path / "raw", "live")


# --------------------------------------------------------------------------
# KADID-10k
# --------------------------------------------------------------------------


def write_kadid(root: Path) -> Path:
    rows = [("I01_01_01.png", "I01.png", 4.57, 0.25), ("I01_25_05.png", "I01.png", 1.21, 0.16),
            ("I81_10_03.png", "I81.png", 3.02, 1.0)]
    table = pd.DataFrame(rows, columns=["dist_img", "ref_img", "dmos", "var"])
    root.mkdir(parents=True)
    table.to_csv(root / "dmos.csv", index=False)
    for dist, ref, *_ in rows:
        image(root / "images" / dist)
        image(root / "images" / ref)  # references live in images/ too
    image(root / "images" / "I82_01_01.png")  # an image nobody scored
    return root


def test_kadid10k_adapter(tmp_path):
    root = write_kadid(tmp_path / "kadid10k")

    index, report = build_index(root, "kadid10k")

    assert list(index["image"]) == ["I01_01_01.png", "I01_25_05.png", "I81_10_03.png"]
    assert list(index["reference"]) == ["I01", "I01", "I81"]
    assert list(index["distortion"]) == [1, 25, 10]
    assert list(index["level"]) == [1, 5, 3]
    assert index["mos"].tolist() == pytest.approx([4.57, 1.21, 3.02])
    assert index["mos_std"].tolist() == pytest.approx([0.5, 0.4, 1.0])  # sqrt(var)
    assert list(index["path"]) == ["images/I01_01_01.png", "images/I01_25_05.png", "images/I81_10_03.png"]
    # The pristine references are expected extras; only the stray image is reported.
    assert report["unscored"] == ["I82_01_01.png"]


def test_kadid10k_missing_column_is_named(tmp_path):
    root = tmp_path / "kadid10k"
    (root / "images").mkdir(parents=True)
    (root / "dmos.csv").write_text("dist_img,ref_img,score\nI01_01_01.png,I01.png,4\n")
    with pytest.raises(NriqaError, match=r"dmos\.csv lacks the column\(s\) dmos, var"):
        build_index(root, "kadid10k")


# --------------------------------------------------------------------------
# KonIQ-10k
# --------------------------------------------------------------------------


def test_koniq10k_adapter(tmp_path):
    root = tmp_path / "koniq10k"
    root.mkdir()
    # The real header, quoted as in the published CSV.
    (root / "koniq10k_scores_and_distributions.csv").write_text(
        '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"\n'
        '"10004473376.jpg",0,0,25,73,7,105,3.828571429,0.527278135,77.38364271\n'
        '"10007357496.jpg",0,3,45,47,1,96,3.479166667,0.580003993,68.99457672\n'
    )
    image(root / "1024x768" / "10004473376.jpg")
    image(root / "1024x768" / "10007357496.jpg")

    index, report = build_index(root, "koniq10k")

    assert list(index["image"]) == ["10004473376.jpg", "10007357496.jpg"]
    assert list(index["reference"]) == ["10004473376", "10007357496"]  # each its own content
    assert index["distortion"].isna().all() and index["level"].isna().all()
    assert index["mos"].tolist() == pytest.approx([3.828571429, 3.479166667])
    assert index["mos_std"].tolist() == pytest.approx([0.527278135, 0.580003993])
    assert list(index["path"]) == ["1024x768/10004473376.jpg", "1024x768/10007357496.jpg"]
    assert report["counts"]["indexed"] == 2 and report["unscored"] == []

    # Nullable integers write as empty cells, which is what "no distortion" means.
    csv = index.to_csv(index=False).splitlines()[1]
    assert csv.startswith("10004473376.jpg,10004473376,,,")
    assert not math.isnan(index["mos"][0])


# --------------------------------------------------------------------------
# Which reader for which params
# --------------------------------------------------------------------------


@pytest.mark.parametrize("params, fmt", [
    ({"source": "synthetic"}, "tid2013"),
    ({"source": "tid2013"}, "tid2013"),
    ({"source": "kadid10k"}, "kadid10k"),
    ({"source": "koniq10k", "format": "tid2013"}, "koniq10k"),  # format only matters for local
    ({"source": "local", "format": "kadid10k"}, "kadid10k"),
])
def test_dataset_format(params, fmt):
    assert dataset_format(data_config(**params)) == fmt


def test_unknown_source_or_format_names_the_field(tmp_path):
    with pytest.raises(NriqaError, match="data.format"):
        data_config(source="local", format=None)
    with pytest.raises(NriqaError, match="data.source"):
        data_config(source="imagenet")
