"""The drift report: one self-contained HTML page (plots embedded as PNG) and the verdict as
JSON, for people and for whatever decides to retrain."""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from components.lib.monitoring.drift import Verdict
from components.lib.monitoring.reference import Reference
from components.lib.monitoring.sampler import Sample
from components.lib.storage import filesystem, redact_uri

REPORT_FILE = "report.html"
VERDICT_FILE = "verdict.json"
_STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}img{max-width:100%}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}.drift{color:#b3261e}.ok{color:#0a7d28}"
)


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _projection(reference: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets on the pooled sample's first two principal components (normalised rows)."""
    pooled = np.concatenate([reference, sample]).astype(np.float64)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    centred = pooled - pooled.mean(0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ axes[:2].T
    return projected[: len(reference)], projected[len(reference) :]


def _figures(reference: Reference, sample: Sample) -> str:
    figure = Figure(figsize=(13, 3.8))
    plots = figure.subplots(1, 3)
    if len(sample.embeddings) and len(reference.embeddings):
        ref_xy, sample_xy = _projection(reference.embeddings, sample.embeddings)
        plots[0].scatter(*ref_xy.T, s=10, alpha=0.6, label="reference (training)")
        plots[0].scatter(*sample_xy.T, s=10, alpha=0.6, label="recent")
        plots[0].legend(fontsize=8)
    plots[0].set_title("Embeddings, first two principal components", fontsize=10)
    bins = np.linspace(0, 1, 21)
    plots[1].hist(reference.confidences, bins, density=True, alpha=0.6, label="validation")
    plots[1].hist(sample.confidences, bins, density=True, alpha=0.6, label="recent")
    plots[1].set_title("Confidence (top probability)", fontsize=10)
    plots[1].legend(fontsize=8)
    classes = len(reference.class_names)
    positions = np.arange(classes)
    for offset, (values, label) in enumerate(
        ((reference.classes, "validation"), (sample.classes, "recent"))
    ):
        shares = np.bincount(values.astype(int), minlength=classes)[:classes] / max(len(values), 1)
        plots[2].bar(positions + 0.4 * offset, shares, 0.4, label=label)
    plots[2].set_xticks(positions + 0.2, reference.class_names, rotation=30, fontsize=8)
    plots[2].set_title("Predicted-class mix", fontsize=10)
    plots[2].legend(fontsize=8)
    return f'<img alt="drift plots" src="data:image/png;base64,{_png(figure)}">'


def build_report(
    verdict: Verdict, reference: Reference, sample: Sample, facts: Mapping[str, str]
) -> str:
    """The HTML page: the verdict, the facts (which model, which sample), each test, the plots."""
    status = "drift" if verdict.drift else "ok"
    headline = (
        f"Drift: the recent photos do not look like the training photos (p = {verdict.p_value:.4g})"
        if verdict.drift
        else f"No drift detected (smallest p = {verdict.p_value:.4g})"
    )
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        f"<td>{'' if test.statistic is None else f'{test.statistic:.4g}'}</td>"
        f"<td>{'not run' if test.p_value is None else f'{test.p_value:.4g}'}</td></tr>"
        for name, test in verdict.tests.items()
    )
    fact_rows = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in facts.items()
    )
    class_rows = "".join(
        f"<tr><td>{html.escape(str(row['class']))}</td><td>{row['count']}</td>"
        f"<td>{row['spread']:.3f}</td></tr>"
        for row in reference.class_statistics()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Drift report</title>"
        f"<style>{_STYLE}</style></head><body><h1 class='{status}'>{html.escape(headline)}</h1>"
        f"<table class='facts'>{fact_rows}"
        f"<tr><th>reference size</th><td>{verdict.reference_size} embeddings, "
        f"{len(reference.confidences)} validation predictions</td></tr>"
        f"<tr><th>sample size</th><td>{verdict.sample_size}</td></tr>"
        f"<tr><th>rule</th><td>drift when a test's permutation p-value is below alpha / "
        f"{len(verdict.tests)} = {verdict.alpha / len(verdict.tests):.4g}</td></tr></table>"
        f"<h2>Tests</h2><table><tr><th>test</th><th>statistic</th><th>p-value</th></tr>{rows}"
        f"</table><h2>Plots</h2>{_figures(reference, sample)}"
        f"<h2>Reference embeddings by class</h2><table><tr><th>class</th><th>photos</th>"
        f"<th>mean distance to the class mean</th></tr>{class_rows}</table></body></html>"
    )


def write_report(
    folder: str,
    verdict: Verdict,
    reference: Reference,
    sample: Sample,
    facts: Mapping[str, str],
) -> dict[str, str]:
    """``report.html`` and ``verdict.json`` under ``folder`` (a folder or ``gs://``); their URIs."""
    fs, path = filesystem(folder)
    fs.makedirs(path, exist_ok=True)
    record = {
        **verdict.to_dict(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "facts": {key: redact_uri(str(value)) for key, value in facts.items()},
    }
    written = {}
    for name, text in (
        (REPORT_FILE, build_report(verdict, reference, sample, record["facts"])),
        (VERDICT_FILE, json.dumps(record, indent=2)),
    ):
        with fs.open(os.path.join(path, name), "w") as file:
            file.write(text)
        written[name] = f"{folder.rstrip('/')}/{name}"
    return written
