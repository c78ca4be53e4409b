"""``python -m pipeline.run --local``: the embedded demo default, typed parameters, clear errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.lib.serving.prediction import ServingModel
from components.lib.targets.local import EndpointRegistry, ModelRegistry
from pipeline.arguments import parse_params
from pipeline.run_summary import run_params
from pipeline.settings import UsageError
from tests.conftest import ROOT, make_layout, run_cli

RUN = [sys.executable, "-m", "pipeline.run", "--local"]
PARAMETERS = {
    "epochs": {"parameterType": "NUMBER_INTEGER"},
    "learning_rate": {"parameterType": "NUMBER_DOUBLE"},
    "data_uri": {"parameterType": "STRING"},
    "backbone": {"parameterType": "STRING"},
}


def test_params_are_typed_by_the_pipeline() -> None:
    values = parse_params(["epochs=3", "learning_rate=0.5", "data_uri=gs://b/x=y"], PARAMETERS)
    assert values == {"epochs": 3, "learning_rate": 0.5, "data_uri": "gs://b/x=y"}
    assert parse_params(["backbone=efficientnet-lite2"], PARAMETERS) == {
        "backbone": "efficientnet-lite2"
    }


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("epochs", "is not NAME=VALUE"),
        ("epoch=3", "'epoch' is not a pipeline parameter; known: backbone, data_uri, epochs"),
        ("epochs=three", "expected a whole number"),
        (
            "backbone=efficientnet-b0",
            "backbone='efficientnet-b0': choose one of efficientnet-lite0, efficientnet-lite1, "
            "efficientnet-lite2",
        ),
    ],
)
def test_bad_params_are_refused(assignment: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_params([assignment], PARAMETERS)


@pytest.mark.slow
def test_demo_default_runs_end_to_end_and_never_touches_the_beer_endpoint(
    tmp_path: Path,
) -> None:
    """The demo registers and serves under its own names: a beer model served in the same state
    folder keeps its endpoint and registry record byte for byte."""
    state = tmp_path / "state"
    beer_model = tmp_path / "beer-model"
    beer_model.mkdir()
    (beer_model / "saved_model.pb").write_bytes(b"never read by the demo run")
    version = ModelRegistry(str(state), "local-project", "europe-west1").upload_version(
        "beer-classifier", str(beer_model), {}, {}
    )
    EndpointRegistry(str(state), "local-project", "europe-west1").deploy(
        "beer-classifier-endpoint", version
    )
    beer_records = {
        path: path.read_bytes()
        for path in (
            state / "endpoints/beer-classifier-endpoint.json",
            state / "models/beer-classifier/model.json",
        )
    }

    result = run_cli("--local", "--state-dir", str(state), "--json", "--experiment", "demo-trials")

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["deployed"] is True
    assert summary["accuracy"] >= 0.9
    assert summary["champion_accuracy"] is None and summary["champion"] == "none served"
    assert "no champion serving: deploy" in summary["decision"]
    assert 'id="confusion-matrix"' in Path(summary["report"]).read_text()
    assert f"report         {summary['report']}" in result.stdout
    assert summary["trained_with"] == {
        "learning_rate": 0.01,
        "fine_tune_learning_rate": 0.0003,
        "fine_tune_from_block": 4,
        "backbone": "efficientnet-lite0",
    }
    assert (
        "trained with   learning_rate 0.01, fine_tune_learning_rate 0.0003, "
        "fine_tune_from_block 4, backbone efficientnet-lite0 (as given, not tuned)"
    ) in result.stdout
    assert summary["model_version"].endswith("/models/demo-classifier@1")
    assert summary["endpoint"] == (
        "projects/local-project/locations/europe-west1/endpoints/demo-classifier-endpoint"
    )
    assert "registered as 'demo-classifier' on endpoint 'demo-classifier-endpoint'" in (
        result.stderr
    )
    for path, content in beer_records.items():
        assert path.read_bytes() == content, path
    assert set(summary["step_seconds"]) == {
        "check-parameters",
        "fingerprint-data",
        "resolve-target",
        "plan-tuning",
        "given-hyperparameters",
        "download-data",
        "validate-data",
        "preprocess-data",
        "extract-features",
        "train-model",
        "evaluate-model",
        "infra-validate",
        "upload-model",
        "deploy-model",
    }
    assert "> train-model" in result.stderr and "epoch 1/" in result.stderr
    assert (tmp_path / "state/demo-data/train/1cat").is_dir()
    # The run's parameters and final metrics, in the summary and in the experiment.
    assert summary["params"]["model_display_name"] == "demo-classifier"
    assert summary["params"]["allow_class_change"] == "false"
    assert summary["metrics"]["accuracy"] == summary["accuracy"]
    assert summary["metrics"]["deployed"] == 1.0
    record = json.loads(Path(summary["experiment_run"]).read_text())
    assert Path(summary["experiment_run"]).parent == state / "experiments" / "demo-trials"
    assert (record["params"], record["metrics"]) == (summary["params"], summary["metrics"])
    assert f"experiment     demo-trials: {summary['experiment_run']}" in result.stdout
    # The registered version carries its evaluation, and its model its TensorBoard logs.
    [version] = json.loads((state / "models/demo-classifier/model.json").read_text())["versions"]
    [evaluation] = version["evaluations"]
    assert evaluation["metadata"]["eval_fingerprint"].startswith("sha256:")
    matrix = evaluation["metrics"]["confusionMatrix"]
    assert sum(map(sum, matrix["rows"])) == summary["eval_images"]
    assert (state / evaluation["metadata"]["row_based_metrics_path"]).is_file()
    logs = state / version["artifactUri"] / "tensorboard"
    assert list((logs / "train").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_missing_data_uri_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("--local", "--state-dir", str(tmp_path), "--data-uri", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "step fingerprint-data failed" in result.stderr, "the first step that reads the data"
    assert "DataLayoutError" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_too_many_bad_images_fail_clearly_naming_them(tmp_path: Path) -> None:
    data = make_layout(tmp_path / "data")
    (data / "train/1blue/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    result = run_cli("--local", "--state-dir", str(tmp_path / "state"), "--data-uri", str(data))
    assert result.returncode == 1
    assert "step validate-data failed" in result.stderr
    assert "1 of 17 files (5.9%) are unusable, more than the allowed 5%" in result.stderr
    assert "cannot be decoded: corrupt or truncated: 1: train/1blue/corrupt.jpg" in result.stderr


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_finished_steps(tmp_path: Path) -> None:
    state = tmp_path / "state"
    command = [*RUN, "--state-dir", str(state)]
    # A shell's background job starts with SIGINT ignored, and Python keeps it so: give the
    # run the default disposition that a terminal's Ctrl-C meets.
    first = subprocess.Popen(
        command,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in first.stderr:
        if line.startswith("> train-model"):
            os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: the whole process group
            break
    _, rest = first.communicate(timeout=120)
    assert first.returncode == 130
    assert "interrupted" in rest and "Traceback" not in rest
    assert not (state / "models").exists(), "the interrupted run registered nothing"

    result = run_cli("--local", "--json", "--state-dir", str(state))

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # resolve-target, independent of training, may have run before the interruption or not.
    assert set(summary["step_seconds"]) - {"resolve-target"} == {
        "check-parameters",
        "fingerprint-data",
        "train-model",
        "evaluate-model",
        "infra-validate",
        "upload-model",
        "deploy-model",
    }
    for step in ("download-data", "validate-data", "preprocess-data", "extract-features"):
        assert f"> {step}: cached" in result.stderr
    assert summary["deployed"] is True


@pytest.mark.slow
def test_two_runs_at_once_against_one_registry_record_both_versions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    quick = ["--param", "epochs=2", "--param", "fine_tune_epochs=0", "--no-cache"]
    runs = [
        subprocess.Popen(
            [*RUN, "--json", "--state-dir", str(state), "--param", f"seed={seed}", *quick],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    summaries = []
    for run in runs:
        out, err = run.communicate(timeout=1200)
        assert run.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))

    versions = sorted(summary["model_version"].rsplit("@", 1)[1] for summary in summaries)
    assert versions == ["1", "2"]
    record = json.loads((state / "models/demo-classifier/model.json").read_text())
    assert [v["versionId"] for v in record["versions"]] == ["1", "2"]
    assert len({v["sourceUri"] for v in record["versions"]}) == 2
    for version in record["versions"]:
        assert ServingModel(str(state / version["artifactUri"])).class_names[1] == "1cat"
    endpoint = json.loads((state / "endpoints/demo-classifier-endpoint.json").read_text())
    assert endpoint["deployedModels"][0]["modelVersionId"] in versions


def _run_json(*args: str) -> tuple[dict, str]:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.slow
def test_retraining_follows_the_data_under_one_uri(tmp_path: Path) -> None:
    from tests.conftest import write_image

    state, data = tmp_path / "state", make_layout(tmp_path / "mugs")
    command = [
        "--local",
        "--json",
        "--state-dir",
        str(state),
        "--data-uri",
        str(data),
        "--min-accuracy",
        "0",
        *("--param", "max_regression=1", "--param", "image_size=32"),
        *("--param", "epochs=2", "--param", "fine_tune_epochs=0"),
    ]
    endpoint_record = state / "endpoints/mugs-classifier-endpoint.json"
    first, _ = _run_json(*command)
    # Named after the data's folder, as no name was given.
    assert (first["model_display_name"], first["endpoint_display_name"]) == (
        "mugs-classifier",
        "mugs-classifier-endpoint",
    )
    assert first["model_version"].endswith("/models/mugs-classifier@1")
    served = endpoint_record.read_text()

    # The same images: every step up to train is cached; nothing is registered or redeployed.
    again, log = _run_json(*command)
    for step in ("download-data", "validate-data", "preprocess-data", "train-model"):
        assert f"> {step}: cached" in log
    assert set(again["step_seconds"]) == {
        "check-parameters",
        "fingerprint-data",
        "evaluate-model",
        "infra-validate",
        "upload-model",
        "deploy-model",
    }
    assert again["model_version"] == first["model_version"]
    assert "is this model already: not registered again" in log
    assert "already serves (not redeployed)" in log
    assert endpoint_record.read_text() == served, "the endpoint record was not rewritten"

    # One image more under the same URI: the data is downloaded and the model retrained.
    write_image(data / "train/0red/900.jpg", (180, 60, 60))
    retrained, log = _run_json(*command)
    assert {"download-data", "train-model"} <= set(retrained["step_seconds"])
    assert retrained["model_version"].endswith("@2")
    record = json.loads((state / "models/mugs-classifier/model.json").read_text())
    assert [v["versionId"] for v in record["versions"]] == ["1", "2"]
    assert json.loads(endpoint_record.read_text())["trafficSplit"] == {"mugs-classifier-v2": 100}


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_credentials_in_the_data_uri_reach_neither_the_log_nor_the_terminal(
    tmp_path: Path, verbose: bool
) -> None:
    """A signed URL with a password fails at its first step (nothing listens there); the run's
    log, its terminal output (``--verbose``: everything kfp.local prints) and every file under
    the state folder hold the URI redacted."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data_uri = (
        f"https://reader:PASSWORD@127.0.0.1:{port}/beers?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Credential=KEYID&X-Goog-Signature=SIGNATURE"
    )
    state = tmp_path / "state"
    flags = ["--verbose"] if verbose else []
    result = run_cli("--local", "--state-dir", str(state), "--data-uri", data_uri, *flags)

    assert result.returncode == 1
    assert "step fingerprint-data failed" in result.stderr
    [log] = (state / "logs").glob("run-*.log")
    assert f"https://127.0.0.1:{port}/beers?<redacted>" in log.read_text()
    written = [result.stdout, result.stderr]
    written += [path.read_text(errors="replace") for path in state.rglob("*") if path.is_file()]
    for secret in ("PASSWORD", "KEYID", "SIGNATURE", "reader:"):
        assert not [text for text in written if secret in text], secret


def test_the_summary_and_the_experiment_record_redacted_uris() -> None:
    params = run_params(
        {
            "data_uri": "gs://beers/data?X-Goog-Signature=SIGNATURE",
            "csv_image_folder": "https://reader:PASSWORD@host.example/images",
            "epochs": 3,
            "allow_class_change": False,
        }
    )
    assert params == {
        "allow_class_change": "false",
        "csv_image_folder": "https://host.example/images?<redacted>",
        "data_uri": "gs://beers/data?<redacted>",
        "epochs": 3,
    }
