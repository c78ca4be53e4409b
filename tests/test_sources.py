"""Every data source kind ends as the same listing: folders with and without an eval split,
Vertex AI import files (CSV and JSONL), label tables; display names; every kind of bad row."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from components.lib.data.layout import DataLayoutError
from components.lib.data.sources import (
    FOLDER,
    LABEL_CSV,
    VERTEX_CSV,
    VERTEX_JSONL,
    SourceOptions,
    download_dataset,
    fingerprint_source,
    read_source,
    read_source_description,
)
from components.lib.data.validation import DataValidationError, validate_dataset
from tests.conftest import make_layout, write_image

NAMES = {"0red": "Rouge Été", "1blue": "blue sky", "2green": "Green"}
"""Display names with an accent, a space and capitals; sorted: Green, Rouge Été, blue sky."""


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """10 training and 3 eval photos per colour class, in the folder layout."""
    root = make_layout(tmp_path / "photos", {"0red": 10, "1blue": 10, "2green": 10})
    for name in NAMES:
        for extra in (root / "eval" / name).glob("*.jpg"):
            if int(extra.stem) >= 3:
                extra.unlink()
    return root


def vertex_csv_lines(root: Path, with_ml_use: bool = True) -> list[str]:
    lines = []
    for split, ml_use in (("train", "training"), ("eval", "test")):
        for folder, label in NAMES.items():
            for photo in sorted((root / split / folder).glob("*.jpg")):
                prefix = (
                    f"{ml_use.upper() if folder == '1blue' else ml_use}," if with_ml_use else ""
                )
                if with_ml_use or split == "train":
                    lines.append(f"{prefix}{photo},{label}")
    return lines


def test_folder_with_train_and_eval_is_read_as_it_is(photos: Path) -> None:
    source = read_source(str(photos))
    assert source.kind == FOLDER and source.eval_split == "the eval/ folder"
    assert source.layout.counts() == {
        "train": {"0red": 10, "1blue": 10, "2green": 10},
        "eval": {"0red": 3, "1blue": 3, "2green": 3},
    }
    assert source.bad_rows == ()


def test_train_only_folder_carves_a_stratified_seeded_eval_split(photos: Path) -> None:
    shutil.rmtree(photos / "eval")
    (photos / "train/2green/010.jpg").write_bytes((photos / "train/2green/000.jpg").read_bytes())
    write_image(photos / "train/2green/011.jpg", (40, 200, 40))  # 12 green photos

    source = read_source(str(photos), SourceOptions(eval_fraction=0.25, seed=7))

    assert source.layout.counts() == {
        "train": {"0red": 8, "1blue": 8, "2green": 9},
        "eval": {"0red": 2, "1blue": 2, "2green": 3},
    }
    assert source.eval_split == (
        "carved from train: 7 images, 25% of each class (eval_fraction 0.25, seed 7)"
    )
    train, evaluation = source.layout.files["train"], source.layout.files["eval"]
    for name in NAMES:
        assert not set(train[name]) & set(evaluation[name])
    again = read_source(str(photos), SourceOptions(eval_fraction=0.25, seed=7))
    assert again.layout.files == source.layout.files
    other_seed = read_source(str(photos), SourceOptions(eval_fraction=0.25, seed=8))
    assert other_seed.layout.files["eval"] != evaluation


def test_carving_needs_a_fraction_and_two_photos_per_class(photos: Path) -> None:
    shutil.rmtree(photos / "eval")
    with pytest.raises(DataLayoutError, match=r"eval_fraction \(0.0\) must be between 0 and 1"):
        read_source(str(photos), SourceOptions(eval_fraction=0.0))
    for photo in sorted((photos / "train/1blue").glob("*.jpg"))[1:]:
        photo.unlink()
    with pytest.raises(DataLayoutError, match=r"class\(es\) \['1blue'\] have fewer than 2"):
        read_source(str(photos))


def test_vertex_csv_with_ml_use_keeps_display_names_in_sorted_order(
    photos: Path, tmp_path: Path
) -> None:
    import_file = tmp_path / "import.csv"
    import_file.write_text("\n".join(vertex_csv_lines(photos)) + "\n")

    source = read_source(str(import_file))

    assert source.kind == VERTEX_CSV and source.eval_split == "the import file's test rows"
    assert source.layout.class_names == ["Green", "Rouge Été", "blue sky"]
    assert source.layout.counts()["eval"] == {"Green": 3, "Rouge Été": 3, "blue sky": 3}
    assert source.layout.files["train"]["Rouge Été"][0] == str(photos / "train/0red/000.jpg")


def test_vertex_csv_rows_without_ml_use_train_and_an_eval_split_is_carved(
    photos: Path, tmp_path: Path
) -> None:
    import_file = tmp_path / "import.csv"
    relative = [line.replace(f"{photos}/", "") for line in vertex_csv_lines(photos, False)]
    (photos / "import.csv").write_text("\n".join(relative))  # paths relative to the file
    import_file.write_text("\n".join(vertex_csv_lines(photos, with_ml_use=False)))

    for path in (import_file, photos / "import.csv"):
        source = read_source(str(path), SourceOptions(eval_fraction=0.2))
        assert source.layout.counts() == {
            "train": {"Green": 8, "Rouge Été": 8, "blue sky": 8},
            "eval": {"Green": 2, "Rouge Été": 2, "blue sky": 2},
        }
        assert source.eval_split.startswith("carved from train: 6 images")


def test_vertex_jsonl(photos: Path, tmp_path: Path) -> None:
    lines = []
    for split, ml_use in (("train", "training"), ("eval", "test")):
        for folder, label in NAMES.items():
            for photo in sorted((photos / split / folder).glob("*.jpg")):
                lines.append(
                    {
                        "imageGcsUri": str(photo),
                        "classificationAnnotation": {"displayName": label},
                        "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": ml_use},
                    }
                )
    del lines[0]["dataItemResourceLabels"]  # no ml_use: training
    import_file = tmp_path / "import.jsonl"
    import_file.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines))

    source = read_source(str(import_file))

    assert source.kind == VERTEX_JSONL and source.bad_rows == ()
    assert source.layout.counts() == {
        "train": {"Green": 10, "Rouge Été": 10, "blue sky": 10},
        "eval": {"Green": 3, "Rouge Été": 3, "blue sky": 3},
    }


def test_label_csv_with_a_column_mapping_and_ids_without_extensions(tmp_path: Path) -> None:
    """Kaggle style: train.csv (id, breed) beside a folder of <id>.jpg / <id>.png."""
    rows = ["image_id,breed,width"]
    for index in range(8):
        colour = (200, 40, 40) if index % 2 else (40, 40, 200)
        fmt = "PNG" if index == 3 else "JPEG"
        suffix = ".png" if index == 3 else ".jpg"
        write_image(tmp_path / "images" / f"img{index}{suffix}", colour, fmt=fmt)
        rows.append(f"img{index},{'Red Fox' if index % 2 else 'Blue Jay'},48")
    (tmp_path / "train.csv").write_text("\n".join(rows))
    options = SourceOptions(file_column="image_id", label_column="breed", image_folder="images")

    source = read_source(str(tmp_path / "train.csv"), options)

    assert source.kind == LABEL_CSV and source.bad_rows == ()
    assert source.layout.class_names == ["Blue Jay", "Red Fox"]
    assert sum(source.layout.counts()["train"].values()) == 6  # 2 carved as eval
    listed = [path for paths in source.layout.files["train"].values() for path in paths]
    listed += [path for paths in source.layout.files["eval"].values() for path in paths]
    assert str(tmp_path / "images/img3.png") in listed


def test_label_csv_without_the_columns_is_read_as_vertex_and_says_what_it_expected(
    tmp_path: Path,
) -> None:
    (tmp_path / "train.csv").write_text("image_id,breed\nimg0,Blue Jay\n")
    with pytest.raises(DataLayoutError, match="lists no usable training image") as raised:
        read_source(str(tmp_path / "train.csv"))
    assert "line 1: the file does not exist: image_id" in str(raised.value)
    assert "csv_file_column ('file') and csv_label_column ('label')" in str(raised.value)


def bad_row_lines(photos: Path) -> tuple[list[str], dict[str, int]]:
    """A Vertex CSV of the photos with one bad row of each kind; kind -> its line number."""
    lines = vertex_csv_lines(photos)
    bad = {
        "missing_file": f"training,{photos}/train/0red/nowhere.jpg,Rouge Été",
        "empty_label": f"training,{photos}/train/0red/000.jpg,",
        "duplicate": lines[0],
        "malformed": f"train,{photos}/train/0red/001.jpg,Rouge Été,extra",
    }
    numbers = {}
    for kind, line in bad.items():
        lines.insert(5, line)
        numbers = {name: number + (number >= 6) for name, number in numbers.items()}
        numbers[kind] = 6
    return lines, numbers


def test_every_kind_of_bad_row_is_skipped_and_listed_by_line_number(
    photos: Path, tmp_path: Path
) -> None:
    lines, numbers = bad_row_lines(photos)
    lines.insert(0, '{"imageGcsUri": "json in a csv"}')  # malformed, line 1
    numbers = {kind: number + 1 for kind, number in numbers.items()}
    import_file = tmp_path / "import.csv"
    import_file.write_text("\n".join(lines))

    raw = download_dataset(str(import_file), str(tmp_path / "raw"))

    assert raw.counts()["train"] == {"Green": 10, "Rouge Été": 10, "blue sky": 10}
    assert (tmp_path / "raw/train/Rouge Été/000.jpg").is_file()
    report = validate_dataset(
        str(tmp_path / "raw"), str(tmp_path / "clean"), str(tmp_path / "report.md"), 32, 0.2
    )
    assert {row.reason: row.line for row in report.bad_rows if row.line > 1} == numbers
    assert report.bad_rows[0].line == 1
    assert report.unusable == 5 and report.usable == 39
    markdown = (tmp_path / "report.md").read_text()
    assert f"- line {numbers['missing_file']}: **the file does not exist**: `{photos}" in markdown
    assert f"- line {numbers['empty_label']}: **empty label**" in markdown
    assert f"- line {numbers['duplicate']}: **the same file again**" in markdown
    assert "(first at line 2)" in markdown
    assert f"- line {numbers['malformed']}: **malformed line**" in markdown
    clean = json.loads((tmp_path / "clean/validation.json").read_text())
    assert len(clean["bad_rows"]) == 5 and clean["unusable"] == 5

    with pytest.raises(DataValidationError) as raised:
        validate_dataset(
            str(tmp_path / "raw"), str(tmp_path / "again"), str(tmp_path / "r.md"), 32, 0.05
        )
    assert "5 of 44 files (11.4%) are unusable, more than the allowed 5%" in str(raised.value)
    assert f"skipped row, the file does not exist: 1: line {numbers['missing_file']}" in str(
        raised.value
    )


def test_bad_jsonl_rows_by_kind(photos: Path, tmp_path: Path) -> None:
    good = {"imageGcsUri": str(photos / "train/0red/000.jpg")}
    lines = [
        json.dumps({**good, "classificationAnnotation": {"displayName": "Red"}}),
        "{not json",
        json.dumps({**good, "classificationAnnotation": {"displayName": "  "}}),
        json.dumps(
            {
                "imageGcsUri": str(photos / "none.jpg"),
                "classificationAnnotation": {"displayName": "Red"},
            }
        ),
        json.dumps({**good, "classificationAnnotation": {"displayName": "Red"}}),
        json.dumps({**good, "classificationAnnotations": [{"displayName": "a"}]}),
        json.dumps(
            {
                "imageGcsUri": str(photos / "train/0red/001.jpg"),
                "classificationAnnotation": {"displayName": "Red"},
                "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": "holdout"},
            }
        ),
    ]
    lines.append(
        json.dumps(
            {
                "imageGcsUri": str(photos / "train/0red/002.jpg"),
                "classificationAnnotation": {"displayName": "Red"},
            }
        )
    )
    for index in range(1, 4):
        lines.append(
            json.dumps(
                {
                    "imageGcsUri": str(photos / f"train/1blue/00{index}.jpg"),
                    "classificationAnnotation": {"displayName": "Blue"},
                }
            )
        )
    (tmp_path / "import.jsonl").write_text("\n".join(lines))

    source = read_source(str(tmp_path / "import.jsonl"))

    assert [(row.line, row.reason) for row in source.bad_rows] == [
        (2, "malformed"),
        (3, "empty_label"),
        (4, "missing_file"),
        (5, "duplicate"),
        (6, "malformed"),
        (7, "malformed"),
    ]
    assert "multi-label" in source.bad_rows[4].detail and "holdout" in source.bad_rows[5].detail


def test_bad_label_csv_rows(tmp_path: Path) -> None:
    for index in range(4):
        write_image(tmp_path / f"{index}.jpg", (200, 40, 40))
    (tmp_path / "labels.csv").write_text(
        "file,label\n0,Red\n1,Blue\n2,Red\n3,Blue\n0,Red\n9,Red\n,Red\n3\n1,\n2,Red/Orange\n"
    )
    source = read_source(str(tmp_path / "labels.csv"))
    assert [(row.line, row.reason) for row in source.bad_rows] == [
        (6, "duplicate"),
        (7, "missing_file"),
        (8, "malformed"),
        (9, "malformed"),
        (10, "empty_label"),
        (11, "malformed"),
    ]


def test_one_class_is_refused_at_validation(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "one", {"0red": 6})
    raw = tmp_path / "raw"
    download_dataset(str(root), str(raw))
    with pytest.raises(DataValidationError, match=r"the data has 1 class \['0red'\]: a classifier"):
        validate_dataset(str(raw), str(tmp_path / "clean"), str(tmp_path / "report.md"))


def test_files_of_the_same_name_from_two_folders_are_both_kept(tmp_path: Path) -> None:
    for folder in ("a", "b", "c"):
        for index in range(2):
            write_image(tmp_path / folder / f"{index}.jpg", (200, 40, 40))
            write_image(tmp_path / folder / f"blue{index}", (40, 40, 200))  # no extension
    lines = [f"{tmp_path}/{f}/{i}.jpg,Red" for f in "ab" for i in range(2)]
    lines += [f"{tmp_path}/{f}/blue{i},Blue" for f in "ab" for i in range(2)]
    lines += [f"test,{tmp_path}/c/0.jpg,Red", f"test,{tmp_path}/c/blue0,Blue"]
    (tmp_path / "import.csv").write_text("\n".join(lines))

    copy = download_dataset(str(tmp_path / "import.csv"), str(tmp_path / "raw"))

    assert copy.counts() == {"train": {"Blue": 4, "Red": 4}, "eval": {"Blue": 1, "Red": 1}}
    assert sorted(p.name for p in (tmp_path / "raw/train/Red").iterdir()) == [
        "000000-0.jpg",
        "000001-1.jpg",
        "000002-0.jpg",
        "000003-1.jpg",
    ]
    assert sorted(p.name for p in (tmp_path / "raw/eval/Blue").iterdir()) == ["blue0.jpg"]
    report = validate_dataset(
        str(tmp_path / "raw"), str(tmp_path / "clean"), str(tmp_path / "r.md")
    )
    assert report.counts["train"] == {"Blue": 4, "Red": 4}


def test_download_step_records_the_source_and_its_eval_split(photos: Path, tmp_path: Path) -> None:
    """The step's own function: a train/-only folder is copied with a carved eval split, and the
    artifact's metadata and source.json say so (evaluate and the run summary read it)."""
    from kfp import dsl

    from components.download import download_data
    from components.fingerprint import fingerprint_data

    shutil.rmtree(photos / "eval")
    raw = dsl.Dataset(name="raw", uri=str(tmp_path / "raw"), metadata={})
    columns = {"csv_file_column": "file", "csv_label_column": "label", "csv_image_folder": ""}
    fingerprint = fingerprint_data.python_func(data_uri=str(photos), **columns)

    download_data.python_func(
        data_uri=str(photos),
        data_fingerprint=fingerprint,
        eval_fraction=0.3,
        seed=1,
        raw_data=raw,
        **columns,
    )

    note = "carved from train: 9 images, 30% of each class (eval_fraction 0.3, seed 1)"
    assert raw.metadata["source_kind"] == FOLDER and raw.metadata["eval_split"] == note
    assert fingerprint.startswith("sha256:") and raw.metadata["fingerprint"] == fingerprint
    assert raw.metadata["counts"]["eval"] == {"0red": 3, "1blue": 3, "2green": 3}
    assert len(list((tmp_path / "raw/eval").rglob("*.jpg"))) == 9
    assert read_source_description(str(tmp_path / "raw"))["eval_split"] == note


def test_the_fingerprint_of_an_import_file_follows_the_file_and_its_images(
    photos: Path, tmp_path: Path
) -> None:
    import_file = tmp_path / "import.csv"
    lines = vertex_csv_lines(photos)
    import_file.write_text("\n".join(lines))
    first, count = fingerprint_source(str(import_file))
    assert count == 39 and fingerprint_source(str(import_file))[0] == first

    import_file.write_text("\n".join(lines[:-1]))  # one row fewer
    fewer, count = fingerprint_source(str(import_file))
    assert fewer != first and count == 38

    photo = photos / "train/0red/000.jpg"
    photo.write_bytes(photo.read_bytes() + b"\0")
    os.utime(photo, (1, 1))  # a replaced image: new size and modification time
    assert fingerprint_source(str(import_file))[0] != fewer
