"""Where the images and their labels come from: one small reader per kind of data source.

Every reader produces the same in-memory listing (``DatasetLayout``: split -> class -> files),
so validation, preprocessing and evaluation never know which kind it was. ``read_source`` is
the one place that picks the reader, from ``data_uri``:

- a folder: ``train/<class>/<image>``, and ``eval/<class>/<image>`` when it has one;
- ``*.jsonl``: Vertex AI's image classification import lines (``imageGcsUri``,
  ``classificationAnnotation.displayName``, ``dataItemResourceLabels`` ml_use);
- ``*.csv`` whose first row names ``file_column`` and ``label_column``: a label table (Kaggle
  style), the files relative to ``image_folder`` beside it;
- any other ``*.csv``: Vertex AI's import lines ``[ML_USE,]GCS_FILE_PATH,LABEL``.

Labels are display names, kept as written (trimmed, Unicode NFC), and class indices follow
their sorted order. When the source has no eval split, one is carved from train (stratified,
seeded, ``eval_fraction``). Rows that cannot be used are skipped and listed by line number
(``BadRow``); validation counts them as unusable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import posixpath
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace

import fsspec
from fsspec.core import url_to_fs

from components.lib.data.layout import (
    SPLITS,
    DataLayoutError,
    DatasetLayout,
    check_classes,
    content_id,
    copy_dataset,
    discover_layout,
    fingerprint_data,
    is_image_file,
    open_data_uri,
)
from components.lib.data.options import SourceOptions
from components.lib.data.splits import holdout
from components.lib.storage import filesystem, redact_uri

logger = logging.getLogger(__name__)

TRAIN, EVAL = SPLITS
FOLDER, VERTEX_CSV, VERTEX_JSONL, LABEL_CSV = "folder", "vertex_csv", "vertex_jsonl", "label_csv"
BAD_ROWS_FILE = "bad_rows.json"
SOURCE_FILE = "source.json"
ML_USE_KEY = "aiplatform.googleapis.com/ml_use"
ML_USE_SPLITS = {"training": TRAIN, "validation": TRAIN, "test": EVAL}
"""Vertex AI's ml_use values (any case). Validation rows join training: preprocessing holds out
its own validation split (``validation_fraction``) for early stopping."""
BAD_ROW_REASONS: dict[str, str] = {
    "malformed": "malformed line",
    "empty_label": "empty label",
    "missing_file": "the file does not exist",
    "duplicate": "the same file again",
}


@dataclass(frozen=True)
class BadRow:
    """A line of an import file that was skipped: its number (1-based), why, and what it says."""

    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {BAD_ROW_REASONS[self.reason]}: {self.detail}"


@dataclass(frozen=True)
class Source:
    """What a reader found: the listing, the file system its paths are on, skipped rows, and
    where the eval split came from (said in the run's log, report and summary)."""

    kind: str
    fs: fsspec.AbstractFileSystem
    layout: DatasetLayout
    bad_rows: tuple[BadRow, ...] = ()
    eval_split: str = ""

    def describe(self, data_uri: str) -> dict:
        return {"data_uri": redact_uri(data_uri), "kind": self.kind, "eval_split": self.eval_split}


@dataclass(frozen=True)
class _Row:
    line: int
    path: str
    label: str
    split: str


def display_name(label: str) -> str:
    """A label as a class name: trimmed, Unicode NFC (the same letters typed two ways are one
    class); any other text is kept, capitals, spaces and accents included."""
    return unicodedata.normalize("NFC", label.strip())


def read_source(data_uri: str, options: SourceOptions = SourceOptions()) -> Source:
    """Read ``data_uri`` with the reader of its kind; carve an eval split when it has none.

    Raises DataLayoutError, naming what to fix, when it cannot be read at all or a class has no
    image in a split.
    """
    shown = redact_uri(data_uri)
    fs, path = open_data_uri(data_uri)
    if fs.isdir(path):
        source = _read_folder(data_uri)
    elif not fs.isfile(path):
        raise DataLayoutError(
            f"data_uri {shown!r} does not exist; expected a folder (train/<class>/<image>, "
            "eval/<class>/<image> optional) or an import file (.csv or .jsonl)"
        )
    elif path.lower().endswith(".jsonl"):
        rows = _vertex_jsonl_rows(_text(fs, path))
        source = _read_import(shown, VERTEX_JSONL, rows, fs, posixpath.dirname(path))
    elif path.lower().endswith(".csv"):
        text = _text(fs, path)
        header = next(csv.reader(io.StringIO(text)), [])
        if {options.file_column, options.label_column} <= {cell.strip() for cell in header}:
            folder_fs, folder = _image_folder(fs, posixpath.dirname(path), options.image_folder)
            rows = _label_csv_rows(text, options)
            source = _read_import(shown, LABEL_CSV, rows, folder_fs, folder, match_stem=True)
        else:
            hint = (
                "; it was read as Vertex AI import lines [ML_USE,]GCS_FILE_PATH,LABEL: a label "
                f"table names its columns csv_file_column ({options.file_column!r}) and "
                f"csv_label_column ({options.label_column!r}) in its first row"
            )
            rows = _vertex_csv_rows(text)
            source = _read_import(shown, VERTEX_CSV, rows, fs, posixpath.dirname(path), hint=hint)
    else:
        raise DataLayoutError(
            f"data_uri {shown!r} is a file but not an import file: expected .csv (Vertex AI "
            "import lines, or a table with the columns csv_file_column and csv_label_column) "
            "or .jsonl (Vertex AI import lines)"
        )
    if EVAL not in source.layout.files:
        source = _carve_eval(source, options)
    check_classes(shown, source.layout.files)
    for row in source.bad_rows:
        logger.warning("skipped %s", row)
    logger.info("%s: %s; eval split: %s", source.kind, shown, source.eval_split)
    return source


def fingerprint_source(data_uri: str, options: SourceOptions = SourceOptions()) -> tuple[str, int]:
    """A hash of what training would read from ``data_uri``, and the number of images.

    Of a folder: its images' listing (``layout.fingerprint_data``). Of an import file: its own
    size and content id, and the path, size and content id of every image it lists (one listing
    per folder of them; no image is read). A changed import file, an added, removed or replaced
    image change it; the same data listed again does not.
    """
    fs, path = open_data_uri(data_uri)
    if fs.isdir(path):
        return fingerprint_data(data_uri)
    source = read_source(data_uri, options)
    paths = sorted(
        image
        for classes in source.layout.files.values()
        for images in classes.values()
        for image in images
    )
    listed: dict[str, dict] = {}
    for folder in sorted({posixpath.dirname(image) for image in paths}):
        for entry in source.fs.ls(folder, detail=True):
            listed[posixpath.normpath(entry["name"])] = entry
    own = fs.info(path)
    lines = [f"{source.kind}\t{own.get('size')}\t{content_id(own)}"]
    lines += [
        f"{image}\t{listed.get(image, {}).get('size')}\t{content_id(listed.get(image, {}))}"
        for image in paths
    ]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return f"sha256:{digest}", len(paths)


def download_dataset(
    data_uri: str,
    destination: str,
    options: SourceOptions = SourceOptions(),
    fingerprint: str = "",
) -> DatasetLayout:
    """Read ``data_uri`` (any source kind) and copy its images into ``destination`` in the folder
    layout, with the skipped rows (``bad_rows.json``) and where the data came from
    (``source.json``: the redacted URI, its kind and ``fingerprint``) beside them for
    validation and evaluation."""
    source = read_source(data_uri, options)
    copy = copy_dataset(source.fs, source.layout, destination)
    fs, root = filesystem(destination)
    with fs.open(f"{root.rstrip('/')}/{BAD_ROWS_FILE}", "w") as file:
        json.dump([asdict(row) for row in source.bad_rows], file, indent=2)
    with fs.open(f"{root.rstrip('/')}/{SOURCE_FILE}", "w") as file:
        json.dump({**source.describe(data_uri), "fingerprint": fingerprint}, file, indent=2)
    return copy


def _read_beside(dataset_uri: str, name: str) -> object | None:
    """The JSON file ``name`` that ``download_dataset`` wrote beside a copy; None when absent."""
    fs, root = filesystem(dataset_uri)
    path = f"{root.rstrip('/')}/{name}"
    if not fs.exists(path):
        return None
    with fs.open(path) as file:
        return json.load(file)


def read_bad_rows(dataset_uri: str) -> list[BadRow]:
    """The rows that ``download_dataset`` skipped (none for a folder, or an older copy)."""
    return [BadRow(**row) for row in _read_beside(dataset_uri, BAD_ROWS_FILE) or []]


def read_source_description(dataset_uri: str) -> dict:
    """What ``Source.describe`` recorded beside a copy; empty for a copy made without it."""
    return _read_beside(dataset_uri, SOURCE_FILE) or {}


def _read_folder(data_uri: str) -> Source:
    fs, layout = discover_layout(data_uri, eval_optional=True)
    has_eval = EVAL in layout.files
    return Source(FOLDER, fs, layout, eval_split="the eval/ folder" if has_eval else "")


def _carve_eval(source: Source, options: SourceOptions) -> Source:
    """Hold out ``eval_fraction`` of each class's training images as the eval split."""
    if not 0.0 < options.eval_fraction < 1.0:
        raise DataLayoutError(
            f"the data has no eval split, and eval_fraction ({options.eval_fraction}) must be "
            "between 0 and 1 (exclusive) to carve one from train"
        )
    too_few = sorted(name for name, paths in source.layout.files[TRAIN].items() if len(paths) < 2)
    if too_few:
        raise DataLayoutError(
            f"class(es) {too_few} have fewer than 2 images: carving an eval split needs at least "
            "2 per class (one to train on, one to evaluate); add images or give an eval split"
        )
    train, evaluation = {}, {}
    for name, paths in source.layout.files[TRAIN].items():
        train[name], evaluation[name] = holdout(
            paths, options.eval_fraction, f"eval-{options.seed}-{name}"
        )
    count = sum(len(paths) for paths in evaluation.values())
    note = (
        f"carved from train: {count} images, {options.eval_fraction:.0%} of each class "
        f"(eval_fraction {options.eval_fraction}, seed {options.seed})"
    )
    layout = replace(source.layout, files={TRAIN: train, EVAL: evaluation})
    return replace(source, layout=layout, eval_split=note)


def _text(fs: fsspec.AbstractFileSystem, path: str) -> str:
    try:
        return fs.cat_file(path).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataLayoutError(
            f"import file {path!r} is not UTF-8 text ({error}); save it as UTF-8"
        ) from None


def _vertex_csv_rows(text: str) -> Iterator[_Row | BadRow]:
    expected = "expected [ML_USE,]GCS_FILE_PATH,LABEL with ML_USE training, test or validation"
    reader = csv.reader(io.StringIO(text))
    try:
        for fields in reader:
            line = reader.line_num
            fields = [value.strip() for value in fields]
            while fields and not fields[-1]:
                fields.pop()
            if not fields:
                continue
            split = TRAIN
            if fields[0].lower() in ML_USE_SPLITS:
                split = ML_USE_SPLITS[fields.pop(0).lower()]
            if not fields:
                yield BadRow(line, "malformed", f"no file path: {expected}")
            elif len(fields) == 1:
                yield BadRow(line, "empty_label", fields[0])
            elif len(fields) == 2 and fields[0]:
                yield _Row(line, fields[0], fields[1], split)
            else:
                shown = ",".join(fields)
                yield BadRow(line, "malformed", f"{expected} (one label per image): {shown!r}")
    except csv.Error as error:
        yield BadRow(reader.line_num, "malformed", f"not CSV: {error}; the rest is not read")


def _vertex_jsonl_rows(text: str) -> Iterator[_Row | BadRow]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            yield BadRow(line, "malformed", f"not JSON ({error.msg}): {raw[:120]!r}")
            continue
        uri = record.get("imageGcsUri") if isinstance(record, dict) else None
        if not isinstance(uri, str) or not uri.strip():
            yield BadRow(line, "malformed", f'no "imageGcsUri" string: {raw[:120]!r}')
            continue
        annotation = record.get("classificationAnnotation") or {}
        labels = record.get("dataItemResourceLabels") or {}
        ml_use = labels.get(ML_USE_KEY, "training") if isinstance(labels, dict) else None
        label = annotation.get("displayName", "") if isinstance(annotation, dict) else None
        if "classificationAnnotations" in record:
            yield BadRow(line, "malformed", "multi-label annotations are not supported")
        elif not isinstance(label, str):
            yield BadRow(line, "malformed", f'"classificationAnnotation" is not an object: {uri}')
        elif not isinstance(ml_use, str) or ml_use.lower() not in ML_USE_SPLITS:
            yield BadRow(line, "malformed", f"ml_use {ml_use!r}: not training, test or validation")
        elif not label.strip():
            yield BadRow(line, "empty_label", uri)
        else:
            yield _Row(line, uri.strip(), label, ML_USE_SPLITS[ml_use.lower()])


def _image_folder(
    fs: fsspec.AbstractFileSystem, csv_folder: str, image_folder: str
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Where a label CSV's files are: ``image_folder`` (a URI, or a path relative to the CSV's
    folder), or the CSV's own folder when it is empty."""
    if "://" in image_folder:
        folder_fs, folder = url_to_fs(image_folder)
        return folder_fs, folder.rstrip("/")
    return fs, posixpath.normpath(posixpath.join(csv_folder, image_folder))


def _label_csv_rows(text: str, options: SourceOptions) -> Iterator[_Row | BadRow]:
    reader = csv.reader(io.StringIO(text))
    header = [cell.strip() for cell in next(reader)]
    file_index, label_index = header.index(options.file_column), header.index(options.label_column)
    try:
        for fields in reader:
            line = reader.line_num
            if not any(value.strip() for value in fields):
                continue
            if len(fields) != len(header):
                yield BadRow(
                    line, "malformed", f"{len(fields)} fields, the header has {len(header)}"
                )
                continue
            name, label = fields[file_index].strip(), fields[label_index]
            if not name:
                yield BadRow(line, "malformed", f"empty {options.file_column!r}")
            elif not label.strip():
                yield BadRow(line, "empty_label", name)
            else:
                yield _Row(line, name, label, TRAIN)
    except csv.Error as error:
        yield BadRow(reader.line_num, "malformed", f"not CSV: {error}; the rest is not read")


def _read_import(
    shown: str,
    kind: str,
    parsed: Iterable[_Row | BadRow],
    fs: fsspec.AbstractFileSystem,
    base: str,
    match_stem: bool = False,
    hint: str = "",
) -> Source:
    """Resolve each row's file (a URI, or a path relative to ``base`` on ``fs``), check that it
    exists, skip repeated files, and list the rest by split and class."""
    bad: list[BadRow] = []
    rows: list[tuple[_Row, fsspec.AbstractFileSystem, str]] = []
    for row in parsed:
        if isinstance(row, BadRow):
            bad.append(row)
            continue
        label = display_name(row.label)
        if "/" in label or label in (".", ".."):
            bad.append(BadRow(row.line, "malformed", f"label {label!r} cannot name a class"))
            continue
        row_fs, row_path = fs, posixpath.join(base, row.path)
        if "://" in row.path:
            try:
                row_fs, row_path = url_to_fs(row.path)
            except (ImportError, ValueError) as error:
                bad.append(BadRow(row.line, "malformed", f"cannot open {row.path}: {error}"))
                continue
        if rows and type(row_fs) is not type(rows[0][1]):
            bad.append(BadRow(row.line, "malformed", f"{row.path} is on another storage"))
            continue
        rows.append((replace(row, label=label), row_fs, posixpath.normpath(row_path)))
    files_fs = rows[0][1] if rows else fs
    found = _existing_files(files_fs, [row_path for _, _, row_path in rows], match_stem)
    files: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    first_line: dict[str, int] = {}
    for row, _, row_path in rows:
        resolved = found.get(row_path)
        if resolved is None:
            bad.append(BadRow(row.line, "missing_file", row.path))
        elif isinstance(resolved, list):
            bad.append(BadRow(row.line, "malformed", f"{row.path} matches {resolved}"))
        elif resolved in first_line:
            first = first_line[resolved]
            bad.append(BadRow(row.line, "duplicate", f"{row.path} (first at line {first})"))
        else:
            first_line[resolved] = row.line
            files[row.split][row.label].append(resolved)
    if not files.get(TRAIN):
        first = f", the first: {min(bad, key=lambda row: row.line)}" if bad else ""
        raise DataLayoutError(
            f"import file {shown!r} lists no usable training image ({len(bad)} bad rows{first})"
            + hint
        )
    listing = {split: dict(files[split]) for split in SPLITS if split in files}
    for split in listing:
        for name in set(listing[TRAIN]) | set(listing.get(EVAL, {})):
            listing[split].setdefault(name, [])
    has_eval = EVAL in listing
    layout = DatasetLayout(root=base, files=listing)
    eval_split = "the import file's test rows" if has_eval else ""
    return Source(kind, files_fs, layout, tuple(sorted(bad, key=lambda r: r.line)), eval_split)


def _existing_files(
    fs: fsspec.AbstractFileSystem, paths: list[str], match_stem: bool
) -> dict[str, str | list[str]]:
    """For each of ``paths`` that exists: the file's path on ``fs``, listing each folder once
    (one request per folder, not per file). With ``match_stem`` a path without an image
    extension also matches ``<path>.<image extension>`` (Kaggle ids name files without it); a
    list when several files match."""
    by_folder: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        by_folder[posixpath.dirname(path)].add(path)
    fs.invalidate_cache()  # gcsfs keeps listings per process: list what is there now
    found: dict[str, str | list[str]] = {}
    for folder, wanted in by_folder.items():
        try:
            present = {
                entry["name"].rstrip("/")
                for entry in fs.ls(folder or ".", detail=True)
                if entry["type"] == "file"
            }
        except (FileNotFoundError, NotADirectoryError):
            continue
        present = {posixpath.normpath(name) for name in present}
        stems: dict[str, list[str]] = defaultdict(list)
        if match_stem:
            for name in present:
                if is_image_file(name):
                    stems[posixpath.splitext(name)[0]].append(name)
        for path in wanted:
            if path in present:
                found[path] = path
            elif len(stems.get(path, [])) == 1:
                found[path] = stems[path][0]
            elif stems.get(path):
                found[path] = sorted(stems[path])
    return found
