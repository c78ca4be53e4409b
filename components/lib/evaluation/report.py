"""A self-contained HTML evaluation report: what people open to see why a model was (not) deployed.

Pictures are embedded as base64 PNG/JPEG, so the one file renders in the Vertex Pipelines console
and in a local browser without any other file beside it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from components.lib.evaluation.metrics import Evaluation

THUMBNAIL_SIZE = 160
_STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
    ".grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:170px;font-size:12px}"
    ".deploy{color:#0a7d28}.reject{color:#b3261e}"
)


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def confusion_matrix_png(evaluation: Evaluation) -> str:
    """The confusion matrix as a base64 PNG: rows true classes, columns predicted, counts shown."""
    matrix = np.asarray(evaluation.confusion_matrix)
    names = evaluation.class_names
    figure = Figure(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1.5))
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color)
    return _png(figure)


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
    matrix = np.asarray(evaluation.confusion_matrix)
    precision, recall, f1 = evaluation.precision(), evaluation.recall(), evaluation.f1()
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{matrix[index].sum()}</td>"
        f"<td>{precision[name]:.4f}</td><td>{recall[name]:.4f}</td><td>{f1[name]:.4f}</td></tr>"
        for index, name in enumerate(evaluation.class_names)
    )
    return (
        "<table><tr><th>class</th><th>images</th><th>precision</th><th>recall</th><th>F1</th></tr>"
        f"{rows}</table>"
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


def build_report(
    evaluation: Evaluation,
    history: Mapping[str, list[float]],
    deploy: bool,
    reason: str,
    champion: Evaluation | None,
) -> str:
    """The whole report as one HTML page: decision, scores, confusion matrix, per-class table,
    training curves and the misclassified eval images with their true and predicted labels."""
    champion_text = f"{champion.accuracy:.4f}" if champion else "none serving"
    correct = int(np.trace(evaluation.confusion_matrix))
    curves = training_curves_png(history)
    curves_html = (
        f'<img id="training-curves" alt="training curves" src="data:image/png;base64,{curves}">'
        if curves
        else "<p>No training history was recorded with the model.</p>"
    )
    matrix = confusion_matrix_png(evaluation)
    verdict = '<b class="deploy">Deployed</b>' if deploy else '<b class="reject">Not deployed</b>'
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Evaluation report</title><style>{_STYLE}</style></head>
<body>
<h1>Evaluation report</h1>
<p id="decision">{verdict}: {html.escape(reason)}</p>
<table>
<tr><th>accuracy</th><td>{evaluation.accuracy:.4f} ({correct} of {evaluation.count})</td></tr>
<tr><th>macro F1</th><td>{evaluation.macro_f1:.4f}</td></tr>
<tr><th>champion accuracy</th><td>{champion_text}</td></tr>
</table>
<h2>Confusion matrix</h2>
<img id="confusion-matrix" alt="confusion matrix" src="data:image/png;base64,{matrix}">
<h2>Per class</h2>
{_per_class_table(evaluation)}
<h2>Training curves</h2>
{curves_html}
<h2>Misclassified eval images ({len(evaluation.misclassified)})</h2>
{_misclassified_grid(evaluation)}
</body></html>
"""
