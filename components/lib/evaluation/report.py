"""A self-contained HTML evaluation report: what people open to see why a model was (not) deployed.

Pictures are embedded as base64 PNG/JPEG, so the one file renders in the Vertex Pipelines console
and in a local browser without any other file beside it.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from components.lib.data.sources import read_source_description
from components.lib.data.validation import read_skipped_counts
from components.lib.evaluation.edge import EdgeScore
from components.lib.evaluation.metrics import (
    Champion,
    Decision,
    Evaluation,
    GateRule,
)
from components.lib.storage import redact_uri

THUMBNAIL_SIZE = 160
MANY_CLASSES = 12
"""Past this many classes the confusion matrix is a heat map that fits the page (no counts
in its cells), with the most confused pairs and the classes sorted by accuracy beside it."""
PAGE_WIDTH_PX = 900
"""Width of the many-class heat map: it fits a laptop's browser and the console's viewer."""
TOP_CONFUSIONS = 15
_STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}img{max-width:100%}"
    "table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
    ".grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:170px;font-size:12px}"
    ".deploy{color:#0a7d28}.reject{color:#b3261e}.facts td{text-align:left;max-width:60em}"
)


@dataclass(frozen=True)
class Provenance:
    """What a report is about: which data (``data_uri`` redacted, and the fingerprint of its
    images), which model (its registry version; empty: not registered yet), when, and what
    validation skipped (count by reason; None: not known)."""

    data_uri: str = ""
    fingerprint: str = ""
    model_version: str = ""
    model_uri: str = ""
    evaluated_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
    )
    skipped: Mapping[str, int] | None = None

    @classmethod
    def of(cls, dataset_uri: str, model_uri: str, model_version: str = "") -> Provenance:
        """The provenance of evaluating ``model_uri`` on the validated copy at ``dataset_uri``,
        now."""
        source = read_source_description(dataset_uri)
        return cls(
            data_uri=source.get("data_uri", ""),
            fingerprint=source.get("fingerprint", ""),
            model_version=model_version,
            model_uri=model_uri,
            skipped=read_skipped_counts(dataset_uri),
        )

    def facts(self) -> dict[str, str]:
        """The report's rows that say which data, model and time it is for."""
        data = redact_uri(self.data_uri) or "not recorded"
        if self.fingerprint:
            data += f" (fingerprint {self.fingerprint})"
        version = self.model_version or (
            "not registered yet (the upload step registers it when the gate passes)"
        )
        if self.skipped is None:
            skipped = "not recorded"
        else:
            skipped = "; ".join(f"{n} {reason}" for reason, n in self.skipped.items()) or "none"
        utc = self.evaluated_at.astimezone(datetime.timezone.utc)
        return {
            "data": data,
            "model version": version,
            "model artifact": self.model_uri or "not recorded",
            "evaluated at": f"{utc:%Y-%m-%d %H:%M:%S} UTC",
            "validation skipped": skipped,
        }


def _png(figure: Figure, tight: bool = True) -> str:
    """``figure`` as base64 PNG at 100 dpi; ``tight=False`` keeps its size in pixels exactly."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight" if tight else None)
    return base64.b64encode(buffer.getvalue()).decode()


def confusion_matrix_png(evaluation: Evaluation) -> str:
    """The confusion matrix as a base64 PNG: rows true classes, columns predicted; counts in
    the cells up to ``MANY_CLASSES`` classes, past them the ``confusion_heatmap``."""
    if len(evaluation.class_names) > MANY_CLASSES:
        return _png(confusion_heatmap(evaluation), tight=False)
    matrix = np.asarray(evaluation.confusion_matrix)
    names = evaluation.class_names
    figure = Figure(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1.5))
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    # Class names are folder names, shown as written: "$...$" is not matplotlib math here.
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right", parse_math=False)
    axes.set_yticks(range(len(names)), names, parse_math=False)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color)
    return _png(figure)


def row_shares(matrix: np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix as shares of its true class's photos (0 for no photos)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def confusion_heatmap(evaluation: Evaluation) -> Figure:
    """The confusion matrix of many classes as a ``PAGE_WIDTH_PX``-wide heat map: each cell
    coloured by its share of the true class's photos (so small and large classes compare; a
    square-root scale, so that a few confused photos show), no numbers in the cells, axes by
    class number (the per-class table names them)."""
    shares = row_shares(np.asarray(evaluation.confusion_matrix))
    side = PAGE_WIDTH_PX / 100
    figure = Figure(figsize=(side, side * 0.9), layout="constrained")
    axes = figure.subplots()
    norm = PowerNorm(0.5, vmin=0, vmax=1)
    image = axes.imshow(shares, cmap="viridis", norm=norm, interpolation="nearest")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    axes.set_xlabel("predicted class (number)")
    axes.set_ylabel("true class (number)")
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class's photos")
    return figure


def top_confusions(evaluation: Evaluation, count: int = TOP_CONFUSIONS) -> list[tuple[int, int]]:
    """The ``count`` (true, predicted) class pairs with the most photos classified wrong, most
    first (ties: the larger share of the true class first, then by class number)."""
    matrix = np.asarray(evaluation.confusion_matrix)
    shares = row_shares(matrix)
    pairs = [
        (int(true), int(predicted))
        for true, predicted in zip(*np.nonzero(matrix), strict=True)
        if true != predicted
    ]
    pairs.sort(key=lambda pair: (-matrix[pair], -shares[pair], pair))
    return pairs[:count]


def _top_confusions_table(evaluation: Evaluation) -> str:
    matrix = np.asarray(evaluation.confusion_matrix)
    shares, names = row_shares(matrix), evaluation.class_names
    pairs = top_confusions(evaluation)
    if not pairs:
        return "<p>None: every eval image is classified correctly.</p>"
    rows = "".join(
        f"<tr><td>{true}</td><th>{html.escape(names[true])}</th><td>{predicted}</td>"
        f"<th>{html.escape(names[predicted])}</th><td>{matrix[true, predicted]}</td>"
        f"<td>{shares[true, predicted]:.0%}</td></tr>"
        for true, predicted in pairs
    )
    return (
        '<table id="top-confusions"><tr><th>#</th><th>true class</th><th>#</th>'
        "<th>predicted as</th><th>photos</th><th>share of the true class</th></tr>"
        f"{rows}</table>"
    )


def training_curves_png(history: Mapping[str, list[float]]) -> str | None:
    """Loss and accuracy per epoch, the head phase followed by fine-tuning; None without history."""
    if not history:
        return None
    figure = Figure(figsize=(11, 4))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values: list[float] = []
            for phase in ("head", "fine_tune"):
                values += history.get(f"{phase}_{prefix}{metric}", [])
            if values:
                label = "validation" if prefix else "train"
                axes.plot(range(1, len(values) + 1), values, style, label=label)
        head_epochs = len(history.get(f"head_{metric}", []))
        if head_epochs and f"fine_tune_{metric}" in history:
            axes.axvline(head_epochs + 0.5, color="grey", linestyle=":", label="fine-tuning starts")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(metric)
        axes.legend()
    return _png(figure)


def _thumbnail(path: str) -> str:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


def _per_class_table(evaluation: Evaluation) -> str:
    """Precision, recall (the class's accuracy) and F1 per class with its photo count; past
    ``MANY_CLASSES`` sorted by accuracy, the worst first, with the numbers the heat map uses."""
    matrix = np.asarray(evaluation.confusion_matrix)
    precision, recall, f1 = evaluation.precision(), evaluation.recall(), evaluation.f1()
    order = list(range(len(evaluation.class_names)))
    many = len(order) > MANY_CLASSES
    if many:
        names = evaluation.class_names
        order.sort(key=lambda index: (recall[names[index]], -matrix[index].sum(), index))
    rows = "".join(
        f"<tr>{f'<td>{index}</td>' if many else ''}<th>{html.escape(name)}</th>"
        f"<td>{matrix[index].sum()}</td><td>{precision[name]:.4f}</td><td>{recall[name]:.4f}</td>"
        f"<td>{f1[name]:.4f}</td></tr>"
        for index, name in ((index, evaluation.class_names[index]) for index in order)
    )
    return (
        f'<table id="per-class"><tr>{"<th>#</th>" if many else ""}<th>class</th><th>images</th>'
        "<th>precision</th><th>recall (accuracy)</th><th>F1</th></tr>"
        f"{rows}</table>"
    )


def _edge_table(evaluation: Evaluation, edge: Sequence[EdgeScore]) -> str:
    """The TFLite models beside the SavedModel: accuracy on the same photos, change, size."""
    rows = "".join(
        f"<tr><th>{html.escape(score.model.kind)}</th><td>{html.escape(score.model.file)}</td>"
        f"<td>{score.model.size_bytes / 1e6:.2f} MB</td>"
        f"<td>{score.evaluation.accuracy:.4f} ({score.evaluation.correct} of "
        f"{score.evaluation.count})</td>"
        f"<td>{score.evaluation.accuracy - evaluation.accuracy:+.4f}</td></tr>"
        for score in edge
    )
    return (
        '<table id="edge-models"><tr><th>model</th><th>file</th><th>size</th><th>accuracy</th>'
        "<th>vs SavedModel</th></tr>"
        f"<tr><th>SavedModel</th><td>(served)</td><td></td><td>{evaluation.accuracy:.4f} "
        f"({evaluation.correct} of {evaluation.count})</td><td></td></tr>{rows}</table>"
    )


def _misclassified_grid(evaluation: Evaluation) -> str:
    if not evaluation.misclassified:
        return "<p>None: every eval image is classified correctly.</p>"
    figures = "".join(
        f'<figure class="mistake"><img alt="{html.escape(item.path)}" '
        f'src="data:image/jpeg;base64,{_thumbnail(item.path)}">'
        f"<figcaption>true: <b>{html.escape(item.true_class)}</b><br>"
        f"predicted: <b>{html.escape(item.predicted_class)}</b> ({item.confidence:.2f})<br>"
        f"{html.escape(item.path.rsplit('/', 1)[-1])}</figcaption></figure>"
        for item in evaluation.misclassified
    )
    return f'<div class="grid">{figures}</div>'


def calibration_text(evaluation: Evaluation) -> str:
    """ECE before and after the model's temperature scaling, in words."""
    after = evaluation.calibration_error()
    if after is None:
        return "not measured"
    before = evaluation.uncalibrated_error()
    if evaluation.calibration_decision:  # it says whether the temperature was applied and why
        scaled = f"{before:.4f} before, {after:.4f} after scaling" if before != after else after
        return f"eval ECE {scaled} (15 bins); {evaluation.calibration_decision}"
    if before is None:
        return f"ECE {after:.4f} (15 bins); the model applies no temperature scaling"
    return (
        f"ECE {before:.4f} before, {after:.4f} after temperature scaling "
        f"(T = {evaluation.temperature:.3f}, fitted on the validation split; 15 bins)"
    )


def build_report(
    evaluation: Evaluation,
    history: Mapping[str, list[float]],
    decision: Decision,
    champion: Champion,
    rule: GateRule,
    eval_split: str = "",
    provenance: Provenance | None = None,
    edge: Sequence[EdgeScore] = (),
) -> str:
    """The whole report as one HTML page: decision, which data, model and time it is for and
    what validation skipped (``provenance``), scores with their confidence interval, the
    champion and the paired test, calibration, the gate rule, confusion matrix, per-class
    table, the TFLite models exported with it (``edge``), training curves and the misclassified
    eval images with their true and predicted labels. Past ``MANY_CLASSES`` classes the matrix
    is a heat map, followed by the most confused pairs, and the per-class table is sorted by
    accuracy."""
    low, high = evaluation.accuracy_interval
    comparison = decision.comparison.describe() if decision.comparison else "none"
    facts = {
        **(provenance or Provenance()).facts(),
        "accuracy": f"{evaluation.accuracy:.4f} ({evaluation.correct} of {evaluation.count}); "
        f"95% confidence interval {low:.4f} to {high:.4f} (Wilson)",
        "macro F1": f"{evaluation.macro_f1:.4f}",
        "eval split": eval_split or "the eval split",
        "champion": champion.describe(),
        "paired test": comparison,
        "calibration": calibration_text(evaluation),
        "gate rule": rule.describe(),
    }
    rows = "".join(
        f'<tr id="{name.replace(" ", "-")}"><th>{name}</th><td>{html.escape(value)}</td></tr>'
        for name, value in facts.items()
    )
    curves = training_curves_png(history)
    curves_html = (
        f'<img id="training-curves" alt="training curves" src="data:image/png;base64,{curves}">'
        if curves
        else "<p>No training history was recorded with the model.</p>"
    )
    matrix = confusion_matrix_png(evaluation)
    confusions = (
        f"<h2>Most confused pairs</h2>\n{_top_confusions_table(evaluation)}"
        if len(evaluation.class_names) > MANY_CLASSES
        else ""
    )
    edge_html = f"<h2>Edge models (TFLite)</h2>\n{_edge_table(evaluation, edge)}" if edge else ""
    # The reason ends in the verdict ("...: deploy"), so it is not said again before it.
    verdict = f'<b class="{"deploy" if decision.deploy else "reject"}">Decision</b>'
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Evaluation report</title><style>{_STYLE}</style></head>
<body>
<h1>Evaluation report</h1>
<p id="decision">{verdict}: {html.escape(decision.reason)}</p>
<table class="facts">{rows}</table>
<h2>Confusion matrix</h2>
<img id="confusion-matrix" alt="confusion matrix" src="data:image/png;base64,{matrix}">
{confusions}
<h2>Per class</h2>
{_per_class_table(evaluation)}
{edge_html}
<h2>Training curves</h2>
{curves_html}
<h2>Misclassified eval images ({len(evaluation.misclassified)})</h2>
{_misclassified_grid(evaluation)}
</body></html>
"""
