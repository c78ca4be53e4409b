"""The summary of a local run: what the steps' outputs say (the evaluation read back as
``EvaluationSummary``), the figures an experiment records, and the lines printed at the end."""

from __future__ import annotations

from typing import Any

from components.lib.evaluation.summary import EvaluationSummary
from components.lib.serving.infra import ServingFigures
from components.lib.storage import redact_text
from components.lib.targets import needs_cloud
from components.lib.targets.naming import display_names
from components.lib.tuning.study import STUDY


def run_summary(
    outputs: dict[str, Any],
    values: dict[str, Any],
    endpoint: str | None,
    report: str,
    step_seconds: dict[str, float],
    state_dir: str,
    log: str,
) -> dict[str, Any]:
    """The run's summary (``--json`` prints it) from the pipeline's outputs and the parameter
    ``values`` it ran with: the evaluation, the decision, what was registered and served, the
    parameters and the figures an experiment records."""
    champion_accuracy = outputs["champion_accuracy"]
    evaluation = EvaluationSummary.from_dict(outputs["evaluation"])
    model_name, endpoint_name = registered_names(values)
    summary = {
        "accuracy": outputs["accuracy"],
        "accuracy_ci95": list(evaluation.accuracy_ci95),
        "eval_images": evaluation.eval_images,
        "eval_split": evaluation.eval_split,
        "champion_accuracy": champion_accuracy if champion_accuracy >= 0 else None,
        "champion_status": evaluation.champion_status,
        "champion": evaluation.champion,
        "paired_test": evaluation.paired_test,
        "temperature": evaluation.temperature,
        "ece_before": evaluation.ece_before,
        "ece_after": evaluation.ece_after,
        "calibration": evaluation.calibration,
        "tflite": evaluation.tflite,
        "min_accuracy": values["min_accuracy"],
        "gate_rule": evaluation.gate["rule"],
        "serving": evaluation.serving,
        # typed again: a whole number inside a step's dict output comes back as a float
        "trained_with": STUDY.chosen(evaluation.trained_with),
        "tuning_trials": values["tuning_trials"],
        "deployed": bool(outputs["deployed"]),
        "decision": outputs["decision"],
        "model_display_name": model_name,
        "endpoint_display_name": endpoint_name,
        "model_version": outputs["model_version"] or None,
        "endpoint": endpoint,
        "report": report,
        "step_seconds": step_seconds,
        "target": values["target"],
        "state_dir": state_dir,
        "log": log,
    }
    summary["params"] = run_params(values)
    summary["metrics"] = run_metrics(summary)
    return summary


def registered_names(values: dict[str, Any]) -> tuple[str, str]:
    """The display names the run registers and serves under, as its target step settled them."""
    return display_names(
        values["data_uri"], values["model_display_name"], values["endpoint_display_name"]
    )


def run_params(values: dict[str, Any]) -> dict[str, str | int | float]:
    """The run's pipeline parameters as an experiment records them (true/false as text; URIs
    redacted, as everywhere a run's parameters are written)."""
    return {
        name: str(value).lower()
        if isinstance(value, bool)
        else redact_text(value)
        if isinstance(value, str)
        else value
        for name, value in sorted(values.items())
        if value is not None
    }


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The run's final figures, as numbers: what an experiment compares runs by."""
    low, high = summary["accuracy_ci95"]
    metrics = {
        "accuracy": summary["accuracy"],
        "accuracy_ci95_low": low,
        "accuracy_ci95_high": high,
        "eval_images": summary["eval_images"],
        "champion_accuracy": summary["champion_accuracy"],
        "ece_before": summary["ece_before"],
        "ece_after": summary["ece_after"],
        "temperature": summary["temperature"],
        "deployed": summary["deployed"],
        **{
            name: summary["serving"][name]
            for name in ("latency_p95_ms", "model_mb", "load_seconds")
        },
    }
    return {name: float(value) for name, value in metrics.items() if value is not None}


def print_summary(summary: dict[str, Any]) -> None:
    steps = ", ".join(f"{step} {seconds:.1f}s" for step, seconds in summary["step_seconds"].items())
    low, high = summary["accuracy_ci95"]
    calibration = (
        f"ECE {summary['ece_before']:.4f} -> {summary['ece_after']:.4f} (temperature "
        f"{summary['temperature']:.3f}, 15 bins)"
        if summary["ece_before"] is not None
        else "not calibrated (no validation split)"
    )
    if summary.get("calibration"):
        calibration += f"; {summary['calibration']}"
    rows = [
        (
            "accuracy",
            f"{summary['accuracy']:.4f} on {summary['eval_images']} photos, 95% CI "
            f"{low:.4f}-{high:.4f} (required {summary['min_accuracy']})",
        ),
        ("eval split", summary["eval_split"] or "the eval split"),
        ("trained with", _trained_with(summary)),
        ("champion", summary["champion"]),
        ("calibration", calibration),
        ("serving", ServingFigures.from_dict(summary["serving"]).describe()),
        *(
            (
                f"tflite {edge['kind']}",
                f"{edge['accuracy']:.4f} ({edge['accuracy_change']:+.4f} vs the SavedModel), "
                f"{edge['size_bytes'] / 1e6:.2f} MB, {edge['file']}",
            )
            for edge in summary.get("tflite") or ()
        ),
        ("decision", summary["decision"]),
        (
            "names",
            f"model {summary['model_display_name']}, endpoint {summary['endpoint_display_name']}",
        ),
        ("model version", summary["model_version"] or "none registered"),
        ("endpoint", summary["endpoint"] or "none"),
        ("steps run", steps or "all cached"),
        ("report", summary["report"]),
    ]
    if summary.get("experiment"):
        rows.append(("experiment", f"{summary['experiment']}: {summary['experiment_run']}"))
    for label, value in rows:
        print(f"{label:<14} {value}")
    if summary["endpoint"] and not needs_cloud(summary["target"]):
        print(f"serve it with  python -m pipeline.serve --state-dir {summary['state_dir']}")


def _trained_with(summary: dict[str, Any]) -> str:
    """The tuned parameters the model was trained with, and where they came from."""
    chosen = ", ".join(f"{name} {value}" for name, value in summary["trained_with"].items())
    trials = summary["tuning_trials"]
    return f"{chosen} ({f'the best of {trials} trials' if trials else 'as given, not tuned'})"
