"""Batch prediction: score many images with one model version and write JSONL predictions.

The inputs are the files under a folder or ``gs://`` prefix, or the instances of a JSONL file
(one ``{"bytes": {"b64": "..."}}`` per line, the endpoint's format, optionally with a ``"file"``
field that names it). Each input becomes one output line:
``{"file", "class_index", "class_name", "probabilities", "model_version"}``, or
``{"file", "error"}`` when it is not a decodable image (reported, never fatal).

Lines are appended batch by batch and flushed, so an interrupted run resumes from its output:
inputs that already have a prediction are skipped; failed ones and a line cut short are tried
again. Both the local scorer (``predict_to_jsonl``) and the Vertex AI batch prediction job
(``components.lib.targets.vertex_batch``) read and write this one format through here.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm import tqdm

from components.lib.serving.prediction import Predictions
from components.lib.serving.protocol import BadRequestError, InvalidImageError, instance_bytes
from components.lib.storage import filesystem, is_gcs

KEY_FIELD = "file"
"""The field of a JSONL instance (and of every output line) that names the input."""
JSONL_SUFFIX = ".jsonl"
DEFAULT_BATCH_SIZE = 32


class BatchPredictionError(ValueError):
    """Batch prediction cannot start; the message says what to change."""


class Scorer(Protocol):
    """What scores a batch of encoded images: ``ServingModel`` locally."""

    class_names: list[str]

    def predict(self, images: list[bytes]) -> Predictions: ...


@dataclass(frozen=True)
class Instance:
    """One input: its name and its encoded image, or why it could not be read."""

    key: str
    image: bytes = b""
    error: str = ""


@dataclass
class Summary:
    """What one run did; ``bad`` maps each input that failed to the reason."""

    output: str
    total: int
    already_done: int = 0
    scored: int = 0
    bad: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [
            f"{self.scored} predicted, {self.already_done} already in {self.output}, "
            f"{len(self.bad)} bad of {self.total} inputs"
        ]
        lines += [f"  bad: {key}: {reason}" for key, reason in sorted(self.bad.items())]
        return "\n".join(lines)


class InstanceSource:
    """The inputs named by a URI: a folder or ``gs://`` prefix of images, one image file, or a
    JSONL file of instances. Keys are stable across runs with the same URI."""

    def __init__(self, uri: str, exclude: str = "") -> None:
        """``exclude``: a local file never to read as an input (the output, when it lies
        inside the folder)."""
        self.uri = uri
        self._fs, path = filesystem(uri)
        if not self._fs.exists(path):
            raise BatchPredictionError(
                f"{uri} does not exist: give a folder, a gs:// prefix, an image or a JSONL "
                "file of instances"
            )
        self._lines: dict[str, str] = {}
        self._paths: dict[str, str] = {}
        if self._fs.isdir(path):
            root = path.rstrip("/")
            for found in sorted(self._fs.find(root)):
                relative = found[len(root) :].lstrip("/")
                if any(part.startswith(".") for part in relative.split("/")):
                    continue
                key = f"{uri.rstrip('/')}/{relative}"
                if exclude and not is_gcs(key) and os.path.abspath(key) == os.path.abspath(exclude):
                    continue
                self._paths[key] = found
        elif path.endswith(JSONL_SUFFIX):
            with self._fs.open(path, "rt") as file:
                for number, line in enumerate(file, start=1):
                    if line.strip():
                        self._lines[_line_key(uri, number, line)] = line
        else:
            self._paths[uri] = path
        if not self._paths and not self._lines:
            raise BatchPredictionError(f"{uri} holds no files to predict")

    @property
    def keys(self) -> list[str]:
        return list(self._paths) + list(self._lines)

    def read(self, keys: Iterable[str]) -> Iterator[Instance]:
        """The instances of ``keys``, in order; one that cannot be read carries its error."""
        for key in keys:
            try:
                if key in self._paths:
                    yield Instance(key, image=self._fs.cat_file(self._paths[key]))
                else:
                    yield Instance(key, image=instance_bytes(0, json.loads(self._lines[key])))
            except (OSError, BadRequestError, json.JSONDecodeError) as error:
                yield Instance(key, error=_reason(error))


def _line_key(uri: str, number: int, line: str) -> str:
    """A JSONL instance's ``file`` field when it has one, else ``URI#LINE``."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if isinstance(record, dict) and isinstance(record.get(KEY_FIELD), str):
        return record[KEY_FIELD]
    return f"{uri}#{number}"


def _reason(error: Exception) -> str:
    return str(error).replace("instance 0", "the instance").replace("instance(s) [0]", "it")


def prediction_record(
    key: str,
    class_index: int,
    probabilities: Sequence[float],
    class_names: Sequence[str],
    model_version: str,
) -> dict[str, Any]:
    """One output line of a prediction."""
    return {
        KEY_FIELD: key,
        "class_index": int(class_index),
        "class_name": class_names[int(class_index)],
        "probabilities": [round(float(p), 6) for p in probabilities],
        "model_version": model_version,
    }


def error_record(key: str, reason: str) -> dict[str, Any]:
    """One output line of an input that could not be predicted."""
    return {KEY_FIELD: key, "error": reason}


def resume(output: str, model_version: str) -> set[str]:
    """The keys that ``output`` already holds predictions of, by ``model_version``.

    Error lines (tried again) and a last line cut short by an interruption are dropped from the
    file. An output written by another model version is refused: mixing two models' predictions
    in one file would go unnoticed.
    """
    if not os.path.exists(output):
        return set()
    with open(output) as file:
        lines = file.read().splitlines()
    kept, done = [], set()
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the line being written when the run stopped
            raise BatchPredictionError(
                f"{output} line {number} is not JSON: is it a predictions file?"
            ) from None
        if "error" in record:
            continue
        if record.get("model_version") != model_version:
            raise BatchPredictionError(
                f"{output} holds predictions of {record.get('model_version')}, not of "
                f"{model_version}: write to another --output, or delete it"
            )
        kept.append(line)
        done.add(record[KEY_FIELD])
    if len(kept) != len(lines):
        _write_lines_atomic(output, kept)
    return done


def _write_lines_atomic(path: str, lines: list[str]) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(descriptor, "w") as file:
        file.writelines(f"{line}\n" for line in lines)
    os.replace(temporary, path)


class JsonlWriter:
    """Appends output lines, flushed after each batch, and counts them into a ``Summary``."""

    def __init__(self, summary: Summary) -> None:
        directory = os.path.dirname(os.path.abspath(summary.output))
        os.makedirs(directory, exist_ok=True)
        self.summary = summary
        self._file = open(summary.output, "a")  # noqa: SIM115 (closed by close())

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self._file.write(json.dumps(record) + "\n")
            if "error" in record:
                self.summary.bad[record[KEY_FIELD]] = record["error"]
            else:
                self.summary.scored += 1
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def progress_bar(summary: Summary, description: str, enabled: bool = True) -> tqdm:
    """A progress bar on stderr that starts at the inputs already done."""
    return tqdm(
        total=summary.total,
        initial=summary.already_done,
        unit="image",
        desc=description,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
    )


def predict_to_jsonl(
    scorer: Scorer,
    source: InstanceSource,
    output: str,
    model_version: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> Summary:
    """Score every input of ``source`` not yet in ``output`` with ``scorer``, in batches."""
    done = resume(output, model_version)
    pending = [key for key in source.keys if key not in done]
    summary = Summary(output, total=len(source.keys), already_done=len(source.keys) - len(pending))
    writer = JsonlWriter(summary)
    try:
        with progress_bar(summary, "predict", progress) as bar:
            for start in range(0, len(pending), batch_size):
                batch = list(source.read(pending[start : start + batch_size]))
                writer.write(_score(scorer, batch, model_version))
                bar.update(len(batch))
    finally:
        writer.close()
    return summary


def _score(scorer: Scorer, batch: list[Instance], model_version: str) -> list[dict[str, Any]]:
    """Output lines of ``batch``, in its order; undecodable images become error lines."""
    records = {item.key: error_record(item.key, item.error) for item in batch if item.error}
    readable = [item for item in batch if not item.error]
    while readable:
        try:
            predictions = scorer.predict([item.image for item in readable])
        except InvalidImageError as error:
            bad = set(error.indices)
            for index in bad:
                key = readable[index].key
                records[key] = error_record(key, "not a decodable JPEG/PNG/BMP/GIF image")
            readable = [item for index, item in enumerate(readable) if index not in bad]
            continue
        for item, index, probabilities in zip(
            readable, predictions.classes, predictions.probabilities, strict=True
        ):
            records[item.key] = prediction_record(
                item.key, index, probabilities, scorer.class_names, model_version
            )
        break
    return [records[item.key] for item in batch]
