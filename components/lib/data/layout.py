"""Find, check and copy a dataset in the folder layout: ``<root>/{train,eval}/<class>/<image>``.

The same code reads a local folder and a ``gs://`` bucket: fsspec picks the file system from the URI
(gcsfs for ``gs://``), so the layout rules cannot drift between the two. Every data source
(``sources.py``) ends as this listing, and the copy is always written in this layout, which is
what validation, preprocessing and evaluation read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from components.lib.storage import StorageSetupError, check_gcs, is_gcs, redact_uri

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "eval")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
IGNORED_FILES = "ignored_files.json"
"""Beside a copy: what the listing left out, by reason (a list: not images, in older copies)."""


class DataLayoutError(ValueError):
    """The data cannot be read as a dataset; the message says how to fix it."""


@dataclass(frozen=True)
class DatasetLayout:
    """Image paths per split and class (the in-memory listing every data source produces);
    classes in index order: their names sorted by Unicode code point, as Python sorts strings."""

    root: str
    files: Mapping[str, Mapping[str, list[str]]]
    ignored: tuple[str, ...] = ()
    """Files of the layout that are not images (relative to ``root``)."""
    broken: tuple[str, ...] = ()
    """Entries named like images that are not files: broken symbolic links (relative)."""

    @property
    def class_names(self) -> list[str]:
        return sorted(self.files[SPLITS[0]])

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {name: len(paths) for name, paths in sorted(classes.items())}
            for split, classes in self.files.items()
        }


def is_image_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


IMAGE, NOT_AN_IMAGE, BROKEN = "image", "not_an_image", "broken_link"


def entry_kind(relative: str, info: Mapping, sep: str = "/") -> str | None:
    """What a listed entry under a class folder (``relative`` to it, sub-folders included) is
    to the dataset: an IMAGE, a file that is NOT_AN_IMAGE, a BROKEN link (an entry that is no
    file: a symbolic link to nothing), or None when it does not count (hidden, in a hidden
    folder). The one rule of the fingerprint and of the listing, so their counts agree."""
    if any(part.startswith(".") for part in relative.split(sep)):
        return None
    if info.get("type") != "file":
        return BROKEN if is_image_file(relative) else NOT_AN_IMAGE
    return IMAGE if is_image_file(relative) else NOT_AN_IMAGE


def _join(fs: fsspec.AbstractFileSystem, *parts: str) -> str:
    return fs.sep.join(part.rstrip(fs.sep) for part in parts)


def open_data_uri(data_uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system of ``data_uri`` and the path in it (no trailing separator); a
    DataLayoutError, with any credentials in the URI redacted, when it cannot be opened; for
    ``gs://``, also when Cloud Storage cannot be reached or the credentials file is broken,
    naming that cause (``storage.check_gcs``)."""
    shown = redact_uri(data_uri)
    try:
        fs, path = url_to_fs(data_uri)
        if is_gcs(data_uri):
            check_gcs()
    except (ImportError, ValueError, StorageSetupError) as error:
        reason = str(error).replace(data_uri, shown)
        raise DataLayoutError(f"cannot open data_uri {shown!r}: {reason}") from None
    return fs, path.rstrip(fs.sep) or path


def _open_root(data_uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system of ``data_uri`` and its root folder; DataLayoutError if there is none."""
    fs, root = open_data_uri(data_uri)
    if not fs.isdir(root):
        raise DataLayoutError(
            f"data_uri {redact_uri(data_uri)!r} does not exist or is not a folder; expected a "
            f"folder holding {' and '.join(SPLITS)} sub-folders with one folder per class"
        )
    return fs, root


# What identifies a file's content without reading it, most telling first: a content hash
# (GCS, S3), a generation, else the time it was last written (a local file).
_CONTENT_KEYS = ("md5Hash", "crc32c", "ETag", "etag", "generation", "mtime", "LastModified")


def content_id(info: Mapping) -> str:
    """``key=value`` of the first of ``_CONTENT_KEYS`` that a listing entry carries."""
    return next((f"{key}={info[key]}" for key in _CONTENT_KEYS if info.get(key)), "")


def fingerprint_data(data_uri: str) -> tuple[str, int]:
    """A hash of what training would read under the folder ``data_uri``, and the number of images.

    One listing (no file is read): the path of every image of the layout (``entry_kind``:
    in sub-folders of a class folder too, not broken links) relative to
    ``data_uri``, its size and its content id (``_CONTENT_KEYS``). Adding, removing or replacing
    an image changes it; listing the same images again does not, so a pipeline step keyed on it
    is cached exactly while the data is unchanged.
    """
    fs, root = _open_root(data_uri)
    lines = []
    for path, info in sorted(fs.find(root, detail=True).items()):
        parts = path[len(root) + 1 :].split(fs.sep)
        if len(parts) < 3 or parts[0] not in SPLITS:
            continue
        if entry_kind(fs.sep.join(parts[2:]), info, fs.sep) != IMAGE:
            continue
        lines.append(f"{'/'.join(parts)}\t{info.get('size')}\t{content_id(info)}")
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return f"sha256:{digest}", len(lines)


def discover_layout(
    data_uri: str, eval_optional: bool = False
) -> tuple[fsspec.AbstractFileSystem, DatasetLayout]:
    """List every image under ``data_uri`` and check the layout before anything is copied.

    With ``eval_optional`` a folder without ``eval/`` lists its ``train`` split only (the data
    source then carves one). Raises DataLayoutError naming the missing or inconsistent part, so a
    wrong URI or a half-uploaded bucket fails in seconds instead of after training.
    """
    shown = redact_uri(data_uri)
    fs, root = _open_root(data_uri)

    files: dict[str, dict[str, list[str]]] = {}
    kinds: dict[str, list[str]] = {IMAGE: [], NOT_AN_IMAGE: [], BROKEN: []}
    ignored: list[str] = []
    broken: list[str] = []
    for split in SPLITS:
        split_dir = _join(fs, root, split)
        if split != SPLITS[0] and eval_optional and not fs.isdir(split_dir):
            continue
        if not fs.isdir(split_dir):
            raise DataLayoutError(
                f"split folder {split!r} is missing under {shown!r}; expected "
                f"<data_uri>/{split}/<class>/<image>"
            )
        class_dirs = sorted(
            entry["name"].rstrip(fs.sep)
            for entry in fs.ls(split_dir, detail=True)
            if entry["type"] == "directory"
        )
        if not class_dirs:
            raise DataLayoutError(f"split {split!r} under {shown!r} has no class folders")
        files[split] = {}
        for class_dir in class_dirs:
            for kind in kinds.values():
                kind.clear()
            for path, info in sorted(fs.find(class_dir, detail=True).items()):
                if kind := entry_kind(path[len(class_dir) + 1 :], info, fs.sep):
                    kinds[kind].append(path)
            files[split][class_dir.rsplit(fs.sep, 1)[-1]] = list(kinds[IMAGE])
            ignored += [path[len(root) + 1 :] for path in kinds[NOT_AN_IMAGE]]
            broken += [path[len(root) + 1 :] for path in kinds[BROKEN]]

    check_classes(shown, files)
    if broken:
        logger.warning("left out %d broken links: %s", len(broken), broken)
    layout = DatasetLayout(root=root, files=files, ignored=tuple(ignored), broken=tuple(broken))
    return fs, layout


def check_classes(data_uri: str, files: Mapping[str, Mapping[str, list[str]]]) -> None:
    """Every class has images in every split that ``files`` holds; DataLayoutError otherwise."""
    problems = []
    if all(split in files for split in SPLITS):
        reference, other = (set(files[split]) for split in SPLITS)
        for split, missing in ((SPLITS[1], reference - other), (SPLITS[0], other - reference)):
            if missing:
                problems.append(f"class(es) {sorted(missing)} missing from split {split!r}")
    for split, classes in files.items():
        empty = sorted(name for name, paths in classes.items() if not paths)
        if empty:
            problems.append(f"class(es) {empty} in split {split!r} hold no images")
    if problems:
        raise DataLayoutError(
            f"data under {data_uri!r} is not usable: " + "; ".join(problems) + ". Every class "
            f"needs images in both {' and '.join(SPLITS)} (extensions: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})."
        )


def target_names(paths: list[str], sep: str) -> list[str]:
    """File names for one class folder of the copy: each path's own name, prefixed with its
    position when another path of the class has the same name (import files may list
    ``a/1.jpg`` and ``b/1.jpg``), and given ``.jpg`` when it has no image extension (validation
    then judges the content, as for every other file)."""
    names = [path.rsplit(sep, 1)[-1] for path in paths]
    repeated = {name for name, count in Counter(names).items() if count > 1}
    return [
        (f"{index:06d}-{name}" if name in repeated else name)
        + ("" if is_image_file(name) else ".jpg")
        for index, name in enumerate(names)
    ]


def copy_dataset(
    fs: fsspec.AbstractFileSystem, layout: DatasetLayout, destination: str
) -> DatasetLayout:
    """Copy the images that ``layout`` lists (on ``fs``) into ``destination`` (a folder or
    ``gs://``) as ``<split>/<class>/<image>``; returns the layout of the copy.

    One bulk call for the whole dataset, which gcsfs runs as many concurrent requests: a
    bucket-to-bucket copy stays inside Cloud Storage (no bytes through this machine, nor one
    object at a time through the ``/gcs`` mount), a bucket-to-folder copy downloads in parallel.
    """
    target_fs, target_root = url_to_fs(destination)
    target_root = target_root.rstrip(target_fs.sep)
    total = sum(len(paths) for classes in layout.files.values() for paths in classes.values())
    logger.info("copying %d images of %d classes", total, len(layout.class_names))
    sources: list[str] = []
    copied: dict[str, dict[str, list[str]]] = {}
    for split, classes in layout.files.items():
        copied[split] = {}
        for class_name, paths in classes.items():
            target_dir = _join(target_fs, target_root, split, class_name)
            target_fs.makedirs(target_dir, exist_ok=True)
            sources += paths
            copied[split][class_name] = [
                _join(target_fs, target_dir, name) for name in target_names(paths, fs.sep)
            ]
        logger.info("%s: %s", split, layout.counts()[split])
    targets = [path for classes in copied.values() for paths in classes.values() for path in paths]
    if type(fs) is type(target_fs):
        fs.copy(sources, targets)
    elif isinstance(target_fs, LocalFileSystem):
        fs.get(sources, targets)
    else:
        target_fs.put(sources, targets)
    if layout.ignored:
        logger.warning(
            "ignored %d files that are not images: %s", len(layout.ignored), layout.ignored
        )
    with target_fs.open(_join(target_fs, target_root, IGNORED_FILES), "w") as file:
        json.dump({NOT_AN_IMAGE: list(layout.ignored), BROKEN: list(layout.broken)}, file, indent=2)
    return DatasetLayout(
        root=target_root, files=copied, ignored=layout.ignored, broken=layout.broken
    )
