"""Check every image before training: skip what cannot be used, normalise what can, report both.

Real folders of photos hold corrupt files, stray documents, thumbnails, copies and images that
also sit in the eval split. Training on them silently skews the model and the accuracy gate, so
each file is checked, usable ones are written out in a form TensorFlow decodes the same way
everywhere (RGB, EXIF rotation applied), and the run fails only when too much is unusable.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
from fsspec.core import url_to_fs
from PIL import Image, ImageOps, UnidentifiedImageError

from components.lib.data.layout import (
    BROKEN,
    IGNORED_FILES,
    NOT_AN_IMAGE,
    SPLITS,
    discover_layout,
)
from components.lib.data.options import ValidationOptions
from components.lib.data.sources import (
    BAD_ROW_REASONS,
    SOURCE_FILE,
    BadRow,
    read_bad_rows,
)
from components.lib.storage import filesystem, read_files

logger = logging.getLogger(__name__)

REPORT_FILE = "validation.json"
SKIP_REASONS: dict[str, str] = {
    NOT_AN_IMAGE: "not an image file",
    BROKEN: "a broken link: names an image that is not there",
    "undecodable": "cannot be decoded: corrupt or truncated",
    "too_small": "smaller than the minimum image size",
    "too_large": "more pixels than the decode limit (a decompression bomb)",
    "duplicate": "the same image again in the same split",
    "leak": "also in the eval split (dropped from train so that eval stays unseen)",
}
CONVERSIONS: dict[str, str] = {
    "grayscale": "grayscale, converted to RGB",
    "cmyk": "CMYK, converted to RGB",
    "alpha": "transparency, composited on white",
    "palette": "palette colours, converted to RGB",
    "exif_rotated": "EXIF orientation, rotated upright",
    "other_format": "a format other than JPEG/PNG, re-encoded as PNG",
}
MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS
"""Pillow's own decompression-bomb threshold (89,478,485 pixels, about 9,459 x 9,459): a larger
image is skipped from its header, before any pixel is decoded; decoding one would take
hundreds of megabytes, and a bomb many gigabytes, on each of the step's threads."""
IMBALANCE_RATIO = 3.0
IO_THREADS = 16
READ_CHUNK = 64
MIN_CLASSES = 2


class DataValidationError(ValueError):
    """Too much of the data is unusable, a class has no usable image left, or there are fewer
    than two classes."""


@dataclass
class ValidationReport:
    """Usable images per split and class, every skipped or converted file by reason, and the
    import file's rows that were skipped (by line number)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    converted: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    warnings: list[str] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return sum(sum(classes.values()) for classes in self.counts.values())

    @property
    def unusable(self) -> int:
        return sum(len(paths) for paths in self.skipped.values()) + len(self.bad_rows)

    @property
    def unusable_share(self) -> float:
        total = self.usable + self.unusable
        return self.unusable / total if total else 0.0

    def skipped_counts(self) -> dict[str, int]:
        """Files and import rows skipped, counted by reason (in words); empty: none."""
        counts = _count_skipped(self.skipped)
        for reason, words in BAD_ROW_REASONS.items():
            rows = sum(row.reason == reason for row in self.bad_rows)
            if rows:
                counts[f"import file row, {words}"] = rows
        return counts

    def to_dict(self) -> dict:
        return {
            "counts": self.counts,
            "skipped": dict(self.skipped),
            "skipped_counts": self.skipped_counts(),
            "converted": dict(self.converted),
            "warnings": self.warnings,
            "bad_rows": [str(row) for row in self.bad_rows],
            "usable": self.usable,
            "unusable": self.unusable,
            "unusable_share": round(self.unusable_share, 4),
        }

    def summary_lines(self) -> list[str]:
        lines = [
            f"{self.usable} usable images, {self.unusable} skipped "
            f"({self.unusable_share:.1%} unusable)"
        ]
        for reason, paths in self.skipped.items():
            if not paths:
                continue
            lines.append(f"skipped, {SKIP_REASONS[reason]}: {len(paths)}: {', '.join(paths)}")
        for reason, words in BAD_ROW_REASONS.items():
            numbers = [str(row.line) for row in self.bad_rows if row.reason == reason]
            if numbers:
                lines.append(f"skipped row, {words}: {len(numbers)}: line {', '.join(numbers)}")
        for kind, paths in self.converted.items():
            lines.append(f"converted, {CONVERSIONS[kind]}: {len(paths)}")
        return lines + [f"warning: {warning}" for warning in self.warnings]

    def to_markdown(self) -> str:
        classes = sorted({name for split in self.counts.values() for name in split})
        rows = [
            "# Data validation",
            "",
            *[f"- {line}" for line in self.summary_lines()[:1] + self.warnings],
            "",
            "| class | " + " | ".join(self.counts) + " |",
            "| --- |" + " --- |" * len(self.counts),
            *[
                f"| {name} | "
                + " | ".join(str(self.counts[s].get(name, 0)) for s in self.counts)
                + " |"
                for name in classes
            ],
        ]
        if self.bad_rows:
            rows += ["", "## Skipped rows of the import file", ""]
            rows += [
                f"- line {row.line}: **{BAD_ROW_REASONS[row.reason]}**: `{row.detail}`"
                for row in self.bad_rows
            ]
        for title, groups, words in (
            ("Skipped files", self.skipped, SKIP_REASONS),
            ("Converted files", self.converted, CONVERSIONS),
        ):
            rows += ["", f"## {title}", ""]
            rows += [
                f"- **{words[key]}** ({len(paths)}): " + ", ".join(f"`{p}`" for p in paths)
                for key, paths in groups.items()
                if paths
            ] or ["none"]
        return "\n".join(rows) + "\n"


def _inspect(data: bytes, min_image_size: int) -> tuple[str | None, list[str], Image.Image | None]:
    """(skip reason or None, conversions needed, the upright RGB image if it must be rewritten)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                return "too_large", [], None
            image.load()
            fmt, mode = image.format, image.mode
            orientation = image.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(image) if orientation != 1 else image.copy()
    except UnidentifiedImageError:
        return "not_an_image", [], None
    except Image.DecompressionBombError:  # raised by open() itself past twice the threshold
        return "too_large", [], None
    except (OSError, SyntaxError, ValueError):
        return "undecodable", [], None
    if min(upright.size) < min_image_size:
        return "too_small", [], None
    conversions = []
    if mode in ("L", "LA", "I", "I;16", "1"):
        conversions.append("grayscale")
    if mode == "CMYK":
        conversions.append("cmyk")
    if mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
        conversions.append("alpha")
    if mode == "P":
        conversions.append("palette")
    if orientation != 1:
        conversions.append("exif_rotated")
    if fmt not in ("JPEG", "PNG"):
        conversions.append("other_format")
    if not conversions:
        return None, [], None
    if "alpha" in conversions:
        rgba = upright.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    else:
        rgb = upright.convert("RGB")
    return None, conversions, rgb


def _inspected(
    fs: fsspec.AbstractFileSystem,
    pool: ThreadPoolExecutor,
    paths: list[str],
    min_image_size: int,
) -> Iterator[tuple[str, bytes, tuple[str | None, list[str], Image.Image | None]]]:
    """``(path, bytes, _inspect(bytes))`` of every path in order, each file read once,
    concurrently (many requests in flight on gcsfs) a chunk at a time, and inspected on the
    pool's threads (Pillow decodes without holding the GIL): memory holds one chunk."""
    for start in range(0, len(paths), READ_CHUNK):
        chunk = paths[start : start + READ_CHUNK]
        data = read_files(fs, chunk)
        for path, content in zip(chunk, data, strict=True):
            if isinstance(content, OSError):
                raise OSError(f"cannot read {path}: {content}") from content
        inspected = pool.map(lambda item: _inspect(item, min_image_size), data)
        yield from zip(chunk, data, inspected, strict=True)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def validate_dataset(
    raw_dir: str,
    output_dir: str,
    report_path: str,
    min_image_size: int = ValidationOptions.min_image_size,
    max_unusable_share: float = ValidationOptions.max_unusable_share,
) -> ValidationReport:
    """Write the usable images of ``raw_dir`` to ``output_dir`` (same layout; folders or
    ``gs://``) and a Markdown report to ``report_path``. Reads each file once, in bulk, and
    checks and writes on a pool of threads.

    Raises DataValidationError, after writing the report, when more than ``max_unusable_share``
    of the files cannot be used or a class is left without images.
    """
    fs, layout = discover_layout(raw_dir)
    output_fs, output_root = url_to_fs(output_dir)
    output_root = output_root.rstrip("/")
    report = ValidationReport(bad_rows=read_bad_rows(raw_dir))
    source_path = f"{layout.root}/{SOURCE_FILE}"
    if fs.exists(source_path):
        output_fs.makedirs(output_root, exist_ok=True)
        output_fs.pipe_file(f"{output_root}/{SOURCE_FILE}", fs.cat_file(source_path))
    ignored_path = f"{layout.root}/{IGNORED_FILES}"
    if fs.exists(ignored_path):
        with fs.open(ignored_path) as file:
            ignored = json.load(file)
        if isinstance(ignored, list):  # a copy made before broken links were kept apart
            ignored = {NOT_AN_IMAGE: ignored}
        for reason, paths in ignored.items():
            if paths:
                report.skipped[reason].extend(paths)
    eval_hashes: set[str] = set()
    with ThreadPoolExecutor(IO_THREADS) as pool:
        for split in reversed(SPLITS):
            report.counts[split] = {}
            seen: set[str] = set()
            for class_name, paths in layout.files[split].items():
                usable = 0
                target_dir = f"{output_root}/{split}/{class_name}"
                output_fs.makedirs(target_dir, exist_ok=True)
                writes = []
                for path, data, (reason, conversions, rewritten) in _inspected(
                    fs, pool, paths, min_image_size
                ):
                    relative = path[len(layout.root) + 1 :]
                    digest = hashlib.sha256(data).hexdigest()
                    if reason is None and digest in seen:
                        reason = "duplicate"
                    elif reason is None and split == "train" and digest in eval_hashes:
                        reason = "leak"
                    if reason:
                        report.skipped[reason].append(relative)
                        continue
                    seen.add(digest)
                    usable += 1
                    for kind in conversions:
                        report.converted[kind].append(relative)
                    name = path.rsplit("/", 1)[-1]
                    if rewritten is not None:
                        name, data = os.path.splitext(name)[0] + ".png", _png(rewritten)
                    writes.append(pool.submit(output_fs.pipe_file, f"{target_dir}/{name}", data))
                for write in writes:
                    write.result()
                report.counts[split][class_name] = usable
            if split == "eval":
                eval_hashes = seen
    report.counts = {split: report.counts[split] for split in SPLITS}
    train_counts = report.counts["train"].values()
    if min(train_counts) and max(train_counts) / min(train_counts) > IMBALANCE_RATIO:
        report.warnings.append(
            f"class imbalance in train: {max(train_counts)} vs {min(train_counts)} images"
        )
    with output_fs.open(f"{output_root}/{REPORT_FILE}", "w") as file:
        json.dump(report.to_dict(), file, indent=2)
    os.makedirs(os.path.dirname(report_path) or ".", exist_ok=True)
    with open(report_path, "w") as file:
        file.write(report.to_markdown())
    for line in report.summary_lines():
        logger.info("%s", line)
    _check(report, max_unusable_share)
    return report


def read_skipped_counts(dataset_uri: str) -> dict[str, int] | None:
    """What validation skipped in the copy at ``dataset_uri``, counted by reason; None when no
    validation report is beside it. A report written before the counts were kept gives its
    skipped files' counts."""
    fs, root = filesystem(dataset_uri)
    path = f"{root.rstrip('/')}/{REPORT_FILE}"
    if not fs.exists(path):
        return None
    with fs.open(path) as file:
        report = json.load(file)
    if "skipped_counts" in report:
        return report["skipped_counts"]
    return _count_skipped(report["skipped"])


def _count_skipped(skipped: Mapping[str, list[str]]) -> dict[str, int]:
    """Skipped files counted by reason, in words, in ``SKIP_REASONS``' order."""
    return {words: len(skipped[key]) for key, words in SKIP_REASONS.items() if skipped.get(key)}


def _check(report: ValidationReport, max_unusable_share: float) -> None:
    classes = sorted(report.counts[SPLITS[0]])
    if len(classes) < MIN_CLASSES:
        raise DataValidationError(
            f"the data has {len(classes)} class {classes}: a classifier needs at least "
            f"{MIN_CLASSES} classes to tell apart. Add images of the other classes (a folder, or "
            "labelled rows, per class)"
        )
    empty = [
        f"{split}/{name}"
        for split, classes in report.counts.items()
        for name, count in classes.items()
        if count == 0
    ]
    problems = []
    if empty:
        problems.append(f"no usable image left in {', '.join(empty)}")
    if report.unusable_share > max_unusable_share:
        problems.append(
            f"{report.unusable} of {report.usable + report.unusable} files "
            f"({report.unusable_share:.1%}) are unusable, more than the allowed "
            f"{max_unusable_share:.0%} (max_unusable_share)"
        )
    if problems:
        raise DataValidationError(
            "; ".join(problems)
            + ". Fix or remove the files listed in the validation report:\n  "
            + "\n  ".join(report.summary_lines()[1:])
        )
