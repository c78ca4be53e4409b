"""The drift monitor on Vertex AI (the emulator): the served version's reference in its
gs:// artifact, its request samples where the upload told the server to write them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.lib.monitoring.reference import Reference, write_reference
from components.lib.monitoring.sampler import (
    RequestSampler,
    SamplingSettings,
    requests_root,
    sampling_destination,
)
from components.lib.targets import endpoint_registry, model_registry
from pipeline.monitor import main
from tests.conftest import VERTEX_LOCATION, VERTEX_PROJECT, upload_folder
from tests.vertex_emulator import VertexEmulator

pytestmark = pytest.mark.vertex_emulator
PREBUILT = "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


def test_the_monitor_reads_the_served_versions_reference_and_samples_in_gcs(
    vertex_emulator: VertexEmulator,
    emulated_gcs,
    colour_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    rng = np.random.default_rng(0)
    artifact = upload_folder(emulated_gcs, colour_models["v1"], "run/train/model", "bucket")
    write_reference(
        artifact,
        Reference(
            ["0red", "1blue", "2green"],
            rng.normal(size=(100, 16)).astype(np.float32),
            rng.integers(0, 3, 100),
            rng.uniform(0.5, 1, 60).astype(np.float32),
            rng.integers(0, 3, 60),
        ),
    )
    version = model_registry(
        "vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, PREBUILT
    ).upload_version("beer", artifact, {}, {})
    served = endpoint_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION).deploy(
        "beer-endpoint", version
    )
    deployed = served["deployedModels"][0]["id"]
    destination = sampling_destination(requests_root(artifact), deployed)
    assert destination == f"gs://bucket/run/train/requests/{deployed}"
    sampler = RequestSampler(SamplingSettings(destination))
    shifted = rng.normal(size=(40, 16)) + 0.5
    sampler.observe(shifted, rng.dirichlet(np.ones(3), 40), [b""] * 40)
    sampler.flush()

    where = ["--target", "vertex", "--project", VERTEX_PROJECT, "--location", VERTEX_LOCATION]
    report = str(tmp_path / "report")
    status = main([*where, "--endpoint", "beer-endpoint", "--report-dir", report, "--json"])
    captured = capsys.readouterr()
    assert status == 3, captured.err
    verdict = json.loads(captured.out.strip().splitlines()[-1])
    assert verdict["drift"] and verdict["sample_size"] == 40 and verdict["reference_size"] == 100
    assert (tmp_path / "report" / "report.html").exists()
