"""Shared fixtures: small datasets made on the fly, the real beer photos, a trained demo model."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from components.lib.evaluation.rule import GateRule
from components.lib.targets.base import DEFAULT_SERVING, Serving

if TYPE_CHECKING:
    from components.lib.artifacts import VertexEndpoint

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# gcsfs would otherwise call the Storage Control gRPC API, which the GCS emulator does not serve;
# it reads this when it is first imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m pipeline.run ARGS`` from the project root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def write_image(path: Path, color: tuple[int, int, int], size: int = 48, fmt: str = "JPEG") -> None:
    """A small photo-like image: a solid colour with noise, so classes are separable."""
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    pixels = np.clip(np.array(color) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def make_layout(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """``root/{train,eval}/<class>/NNN.jpg`` with two classes by default."""
    colors = {"0red": (200, 40, 40), "1blue": (40, 40, 200), "2green": (40, 200, 40)}
    per_class = per_class or {"0red": 4, "1blue": 4}
    for split in ("train", "eval"):
        for name, count in per_class.items():
            for index in range(count):
                write_image(root / split / name / f"{index:03d}.jpg", colors[name])
    return root


def jpeg_bytes(color: tuple[int, int, int], size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def add_bad_files(root: Path, first: str, second: str) -> dict[str, str]:
    """Mix one unusable file of every kind into the train split of two classes of a layout;
    returns kind -> path relative to the layout."""
    train = root / "train" / first
    good = sorted(train.iterdir())[0].read_bytes()
    (train / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    (train / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (train / "text.jpg").write_text("this is a text file named like a photo")
    (train / "notes.txt").write_text("a stray document")
    write_image(train / "tiny.jpg", (200, 40, 40), size=10)
    (train / "copy.jpg").write_bytes(good)
    shutil.copy(
        sorted((root / "eval" / second).iterdir())[0], root / "train" / second / "leaked.jpg"
    )
    return {
        "corrupt": f"train/{first}/corrupt.jpg",
        "truncated": f"train/{first}/truncated.jpg",
        "text": f"train/{first}/text.jpg",
        "notes": f"train/{first}/notes.txt",
        "tiny": f"train/{first}/tiny.jpg",
        "copy": f"train/{first}/copy.jpg",
        "leaked": f"train/{second}/leaked.jpg",
    }


def convert_photos(class_dir: Path) -> dict[str, str]:
    """Replace five photos of a class folder with the same photos as grayscale, CMYK, transparent
    PNG, EXIF-rotated and WebP files; returns conversion kind -> new file name."""
    photos = sorted(class_dir.glob("*.jpg"))[:5]
    images = [Image.open(photo).convert("RGB") for photo in photos]
    for photo in photos:
        photo.unlink()
    stems = [photo.stem for photo in photos]
    names = {
        "grayscale": f"{stems[0]}.png",
        "cmyk": f"{stems[1]}.jpg",
        "alpha": f"{stems[2]}.png",
        "exif_rotated": f"{stems[3]}.jpg",
        "other_format": f"{stems[4]}.webp",
    }
    images[0].convert("L").save(class_dir / names["grayscale"])
    images[1].convert("CMYK").save(class_dir / names["cmyk"], quality=95)
    images[2].convert("RGBA").save(class_dir / names["alpha"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees: viewers rotate it back upright
    images[3].transpose(Image.Transpose.ROTATE_90).save(
        class_dir / names["exif_rotated"], exif=exif, quality=95
    )
    images[4].save(class_dir / names["other_format"], lossless=True)
    return names


def scored(right: list[bool], classes: tuple[str, ...] = ("a", "b")):
    """An Evaluation of photos ``p000.jpg``, ... (all of the first class) that the model got
    right where ``right`` says so, with the probabilities it served."""
    from components.lib.evaluation.metrics import Evaluation

    wrong = sum(not r for r in right)
    matrix = [[len(right) - wrong, wrong, *[0] * (len(classes) - 2)]]
    matrix += [[0] * len(classes) for _ in classes[1:]]
    probabilities = np.full((len(right), len(classes)), 0.1 / (len(classes) - 1))
    probabilities[np.arange(len(right)), np.where(right, 0, 1)] = 0.9
    return Evaluation(
        list(classes),
        matrix,
        photos=tuple(f"p{index:03d}.jpg" for index in range(len(right))),
        labels=(0,) * len(right),
        probabilities=probabilities,
    )


def eval_photos(data_dir: Path) -> list[tuple[Path, int]]:
    """The eval split's photos with their class index (classes in sorted order)."""
    classes = sorted(path.name for path in (data_dir / "eval").iterdir())
    return [
        (photo, index)
        for index, name in enumerate(classes)
        for photo in sorted((data_dir / "eval" / name).glob("*.jpg"))
    ]


def predict_in_batches(
    url: str, photos: list[tuple[Path, int]], size: int = 16
) -> Iterator[tuple[dict, list[tuple[Path, int]]]]:
    """POST ``photos`` to a predict URL of Vertex's protocol, ``size`` per request; yields each
    answer's body with the photos it is for."""
    import requests

    for start in range(0, len(photos), size):
        batch = photos[start : start + size]
        instances = [
            {"bytes": {"b64": base64.b64encode(path.read_bytes()).decode()}} for path, _ in batch
        ]
        response = requests.post(url, json={"instances": instances}, timeout=120)
        assert response.status_code == 200, response.text
        yield response.json(), batch


def evaluation_summary(**fields: Any) -> dict[str, Any]:
    """The evaluate step's summary output, as upload reads it, with ``fields`` set."""
    from components.lib.evaluation.summary import EvaluationSummary

    defaults = {
        "accuracy_ci95": (0.9, 0.99),
        "correct": 95,
        "eval_images": 100,
        "eval_split": "",
        "champion": "",
        "eval_fingerprint": "sha256:0",
    }
    return EvaluationSummary(**{**defaults, **fields}).to_dict()


def evaluation_artifact(folder: Path):
    """The evaluate step's ``model_evaluation`` output for a model that got 2 of 3 photos right,
    as the upload step reads it."""
    from kfp import dsl

    from components.lib.evaluation.model_evaluation import write_model_evaluation

    evaluation = dataclasses.replace(scored([True, True, False]), fingerprint="sha256:" + "a" * 64)
    write_model_evaluation(evaluation, "", str(folder), str(folder))
    return dsl.Artifact(uri=str(folder))


@pytest.fixture
def layout_dir(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "data")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The pipeline freshly compiled, as a dict (test_defaults and test_templates override it:
    the checked-in file, and a compile with a pushed image)."""
    import yaml

    from pipeline.compile import compile_pipeline

    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    compile_pipeline(str(path))
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def beer_data_dir() -> Path:
    """The real beer photos (``BEER_DATA_DIR``, set by .ci/run from ../shared/data/beers)."""
    path = os.environ.get("BEER_DATA_DIR")
    if not path or not Path(path, "train").is_dir():
        pytest.skip("BEER_DATA_DIR is not set to the beer photos (.ci/run sets it)")
    return Path(path)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from components.lib.data.demo import make_demo_dataset

    return Path(make_demo_dataset(str(tmp_path_factory.mktemp("demo") / "data")))


def _train_demo_model(work: Path, demo_data_dir: Path, config) -> Path:
    from components.lib.data.records import preprocess_dataset
    from components.lib.modelling.model import export_serving_model, train_classifier

    dataset = preprocess_dataset(str(demo_data_dir), str(work / "records"), image_size=96)
    trained = train_classifier(dataset, config)
    export_serving_model(
        trained.model, dataset.class_names, dataset.image_size, str(work / "model")
    )
    shutil.rmtree(work / "records")
    return work / "model"


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory, demo_data_dir: Path) -> Path:
    """A classifier trained briefly on the demo dataset and exported as a serving SavedModel."""
    from components.lib.modelling.model import TrainingConfig

    return _train_demo_model(
        tmp_path_factory.mktemp("demo-model"),
        demo_data_dir,
        TrainingConfig(epochs=3, fine_tune_epochs=0),
    )


@pytest.fixture(scope="session")
def backbone_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real ImageNet backbone under an untrained, seeded five-class head, exported for
    serving at 160 px: real photo features and spread-out probabilities, without training."""
    import keras

    from components.lib.modelling.model import build_classifier, export_serving_model

    keras.utils.set_random_seed(7)
    model = build_classifier(num_classes=5, image_size=160, dropout=0.2)
    model_dir = tmp_path_factory.mktemp("backbone-model") / "model"
    export_serving_model(model, [f"{index}class" for index in range(5)], 160, str(model_dir))
    return model_dir


@pytest.fixture(scope="session")
def backbone_serving(backbone_model_dir: Path):
    """``backbone_model_dir`` loaded as the evaluate step and the local endpoint load it."""
    from components.lib.serving.prediction import ServingModel

    return ServingModel(str(backbone_model_dir))


def sample_photos() -> dict[str, bytes]:
    """Photos that are always here (scikit-image's samples, of several sizes and formats), by
    name: the stand-in for the beer photos when ``BEER_DATA_DIR`` is not set."""
    import skimage.data

    photos = {}
    for name, fmt in (
        ("chelsea", "JPEG"),
        ("coffee", "JPEG"),
        ("astronaut", "PNG"),
        ("rocket", "JPEG"),
    ):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, format=fmt)
        photos[f"{name}.{fmt.lower()}"] = buffer.getvalue()
    return photos


def beer_photos(beer_data_dir: Path, per_class: int) -> dict[str, bytes]:
    """The first ``per_class`` eval photos of each beer, by path relative to the data."""
    return {
        str(path.relative_to(beer_data_dir)): path.read_bytes()
        for class_dir in sorted((beer_data_dir / "eval").iterdir())
        for path in sorted(class_dir.glob("*.jpg"))[:per_class]
    }


VERTEX_PROJECT = "test-project"
VERTEX_LOCATION = "europe-west4"
VERTEX_TARGET = {"target": "vertex", "project": VERTEX_PROJECT, "location": VERTEX_LOCATION}
"""The steps' target parameters for Vertex AI (the emulator)."""
SERVING_BUDGETS = {
    name: getattr(GateRule, name)
    for name in ("max_latency_p95_ms", "max_model_size_mb", "max_load_seconds")
}
"""The evaluate step's serving budget parameters, at the pipeline's defaults."""


def deploy_step(
    version: str, endpoint: str, artifact_uri: str, serving: Serving = DEFAULT_SERVING
) -> tuple[str, VertexEndpoint]:
    """The deploy step's own function on Vertex AI with ``serving``'s settings (the pipeline's
    defaults unless given): the endpoint's resource name and the step's output artifact."""
    from components.deploy import deploy_model
    from components.lib.artifacts import VertexEndpoint

    artifact = VertexEndpoint(uri=artifact_uri)
    endpoint_name = deploy_model.python_func(
        model_version=version,
        endpoint_display_name=endpoint,
        local_state_dir="",
        vertex_endpoint=artifact,
        **dataclasses.asdict(serving),
        **VERTEX_TARGET,
    )
    return endpoint_name, artifact


VERTEX_ROOT_URI = "gs://image-classifier-root/runs"
VERTEX_IMAGE = (
    f"{VERTEX_LOCATION}-docker.pkg.dev/{VERTEX_PROJECT}/image-classifier/image-classifier:0.1.0"
)
VERTEX_SETTINGS = [
    "--project",
    VERTEX_PROJECT,
    "--region",
    VERTEX_LOCATION,
    "--pipeline-root",
    VERTEX_ROOT_URI,
    "--image",
    VERTEX_IMAGE,
]


@pytest.fixture
def no_ambient_vertex_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Vertex settings come only from what each test gives: no environment, no config file;
    commands log under ``tmp_path``."""
    from pipeline.settings import SETTINGS

    for name in SETTINGS:
        monkeypatch.delenv(f"IMAGE_CLASSIFIER_{name.upper()}", raising=False)
    monkeypatch.setenv("IMAGE_CLASSIFIER_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("IMAGE_CLASSIFIER_STATE_DIR", str(tmp_path / "state"))


_COMPILED: dict[tuple, str] = {}


@pytest.fixture
def compiled_once(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """``pipeline.run`` compiles the pipeline once per (resources, image) in a test session
    rather than once per command: the same spec, half a second less each time
    (tests/test_pipeline_spec.py checks a fresh compile)."""
    import pipeline.run_local
    import pipeline.run_templates
    import pipeline.run_vertex
    from pipeline.compile import compile_pipeline

    def compiled(output: str, *args, **kwargs) -> str:
        key = (args, tuple(sorted(kwargs.items())))
        if key not in _COMPILED:
            fresh = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
            _COMPILED[key] = compile_pipeline(str(fresh), *args, **kwargs)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        shutil.copyfile(_COMPILED[key], output)
        return output

    for module in (pipeline.run_local, pipeline.run_templates, pipeline.run_vertex):
        monkeypatch.setattr(module, "compile_pipeline", compiled)


@pytest.fixture(scope="session")
def service_account_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A service account key file with a throw-away RSA key: credentials that load offline."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path_factory.mktemp("credentials") / "key.json"
    account = f"pipeline@{VERTEX_PROJECT}.iam.gserviceaccount.com"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": VERTEX_PROJECT,
                "private_key_id": "0" * 40,
                "private_key": pem,
                "client_email": account,
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return path


@pytest.fixture(scope="session")
def vertex_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate the SDK's TLS channel trusts (gRPC reads the roots file once per process)."""
    from tests.vertex_emulator import write_self_signed_certificate

    cert, key = write_self_signed_certificate(tmp_path_factory.mktemp("tls"))
    os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(cert)
    return cert, key


def _point_sdk_at(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's aiplatform SDK talks to ``localhost:port``, anonymously.

    The SDK's calls that would leave this machine (Resource Manager, the pipeline root bucket
    check) are replaced; nothing else is.
    """
    from google.api_core.future import polling
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform import initializer, pipeline_jobs
    from google.cloud.aiplatform.utils import gcs_utils, resource_manager_utils

    from components.lib.targets import vertex

    monkeypatch.setattr(initializer, "global_config", initializer._Config())
    monkeypatch.setattr(resource_manager_utils, "get_project_number", lambda *_, **__: 1234)
    monkeypatch.setattr(
        gcs_utils,
        "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
        lambda **_: None,
    )
    monkeypatch.setattr(pipeline_jobs, "_JOB_WAIT_TIME", 0.05)
    monkeypatch.setattr(vertex, "RETRY_FIRST_DELAY_S", 0.01)
    # The emulator's long-running operations take a fraction of a second, not minutes: they
    # are polled every 50 ms rather than after 1 s, 2.5 s, 4.75 s, ... (the client's default).
    every_50_ms = polling.DEFAULT_POLLING.with_delay(initial=0.05, multiplier=1.0)
    result = polling.PollingFuture.result

    def polled_often(future, timeout=polling.PollingFuture._DEFAULT_VALUE, retry=None, **given):
        return result(future, timeout, retry, given.get("polling") or every_50_ms)

    monkeypatch.setattr(polling.PollingFuture, "result", polled_often)
    # aiplatform.init is bound to the configuration object that this test replaced.
    initializer.global_config.init(
        project=VERTEX_PROJECT,
        location=VERTEX_LOCATION,
        api_endpoint=f"localhost:{port}",
        credentials=AnonymousCredentials(),
    )


def pushed_images() -> tuple[str, ...]:
    """The images the tests' models name, as pushed to the emulated Artifact Registry: the
    project's serving image as the tests compile it and, in the container tier, the serving
    image .ci/images.sh built. The emulator refuses any other image that is not Google's; a
    test that uses another pushes it (``emulator.images.push``)."""
    from components.images import PLACEHOLDERS
    from tests.vertex_emulator.serving import SERVING_IMAGE_ENV

    built = os.environ.get(SERVING_IMAGE_ENV)
    return (PLACEHOLDERS.serving, *([built] if built else []))


@contextlib.contextmanager
def running_vertex_emulator(
    tls: tuple[Path, Path], gcs_url: str, mount_root: Path, monkeypatch: pytest.MonkeyPatch
):
    """A Vertex AI emulator on loopback over the GCS emulator at ``gcs_url``, which this
    process's SDK talks to (processes it starts: with ``IMAGE_CLASSIFIER_VERTEX_EMULATOR_HOST``, see
    ``emulator_host``).

    ``mount_root`` (exported as ``IMAGE_CLASSIFIER_GCS_MOUNT_ROOT``) stands in for the ``/gcs/``
    FUSE mount: what is written under ``<root>/<bucket>/`` reaches the GCS emulator before the
    emulator reads it.
    """
    from components.lib.storage import GCS_MOUNT_ROOT_ENV
    from pipeline.submit import IAM_ENDPOINT_ENV
    from tests.artifact_registry import ContainerImages
    from tests.vertex_emulator import CloudStorage, VertexEmulator

    emulator = VertexEmulator(
        projects=[VERTEX_PROJECT],
        storage=CloudStorage(gcs_url, mount_root=str(mount_root)),
        operation_delay_s=0.02,  # not done at once, so the client polls; soon done
        images=ContainerImages(*pushed_images()),
    ).start(*tls)
    _point_sdk_at(emulator.port, monkeypatch)
    monkeypatch.setenv(GCS_MOUNT_ROOT_ENV, str(mount_root))
    monkeypatch.setenv(IAM_ENDPOINT_ENV, f"http://127.0.0.1:{emulator.rest_port}")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def vertex_emulator(
    vertex_tls: tuple[Path, Path],
    gcs_emulator: str,
    emulated_gcs,
    service_account_key: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
):
    """A fresh Vertex AI emulator for this test (``running_vertex_emulator``). A service
    account key is in place, as a user's would be, though the SDK calls anonymously."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_key))
    mount_root = tmp_path_factory.mktemp("gcs-mount")
    with running_vertex_emulator(vertex_tls, gcs_emulator, mount_root, monkeypatch) as emulator:
        yield emulator


def emulator_host(emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes started from now on (kfp.local's steps, CLIs) call ``emulator`` too."""
    from components.lib.targets.vertex import EMULATOR_HOST_ENV
    from pipeline.submit import IAM_ENDPOINT_ENV

    monkeypatch.setenv(EMULATOR_HOST_ENV, f"localhost:{emulator.port}")
    monkeypatch.setenv(IAM_ENDPOINT_ENV, f"http://127.0.0.1:{emulator.rest_port}")


@pytest.fixture(scope="session")
def colour_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny SavedModels (``tests/serving_models.py``): v1 tells red, blue and green apart, v2
    answers in reverse, TF Serving cannot serve ``broken``, and ``no-model`` has only the class
    names."""
    from tests.serving_models import colour_model, unservable_model

    root = tmp_path_factory.mktemp("colour-models")
    models = {
        "v1": colour_model(root / "v1"),
        "v2": colour_model(root / "v2", reverse=True),
        "broken": unservable_model(root / "broken"),
        "no-model": root / "no-model",
    }
    models["no-model"].mkdir()
    shutil.copy(models["v1"] / "class_names.json", models["no-model"])
    return models


@pytest.fixture
def stored(emulated_gcs, colour_models: dict[str, Path], request: pytest.FixtureRequest):
    """``stored("v1")``: that colour model copied to a gs:// folder of the GCS emulator."""
    test = re.sub(r"[^a-zA-Z0-9_-]+", "-", request.node.name)

    def store(which: str) -> str:
        return upload_folder(emulated_gcs, colour_models[which], f"{test}/{which}", "beer-models")

    return store


@pytest.fixture(scope="session")
def weak_model_dir(tmp_path_factory: pytest.TempPathFactory, demo_data_dir: Path) -> Path:
    """A model trained for one epoch at a learning rate too small to learn: a weak challenger."""
    from components.lib.modelling.model import TrainingConfig

    return _train_demo_model(
        tmp_path_factory.mktemp("weak-model"),
        demo_data_dir,
        TrainingConfig(epochs=1, learning_rate=1e-7, fine_tune_epochs=0),
    )


GCS_BUCKET = "beer-data"


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """``gcp-storage-emulator`` on loopback, in memory; yields its URL."""
    from tests.vertex_emulator import start_gcs_emulator

    process, url = start_gcs_emulator()
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def emulated_gcs(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch):
    """Clients of this test (google-cloud-storage, gcsfs via fsspec) talk to the emulator;
    no ``/gcs`` mount holds anything (``IMAGE_CLASSIFIER_GCS_MOUNT_ROOT`` points at an empty
    folder)."""
    import fsspec
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setenv("IMAGE_CLASSIFIER_GCS_MOUNT_ROOT", "/nonexistent-gcs-mount")
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon", "endpoint_url": gcs_emulator})
    # The emulator serves one connection at a time: one request in flight keeps gcsfs from
    # stalling on connections the emulator has not accepted yet.
    monkeypatch.setitem(fsspec.config.conf, "gather_batch_size", 1)
    fsspec.filesystem("gs").clear_instance_cache()
    return storage.Client(credentials=AnonymousCredentials(), project="test")


def gcs_emulator_client(gcs_url: str):
    """A google-cloud-storage client of the GCS emulator at ``gcs_url``, without credentials:
    for module fixtures, which cannot use ``emulated_gcs``'s per-test settings."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs_url},
    )


def upload_folder(client, folder: Path, prefix: str, bucket_name: str = GCS_BUCKET) -> str:
    """Upload every file under ``folder`` to ``gs://<bucket>/<prefix>/``; returns that URI."""
    bucket = client.lookup_bucket(bucket_name) or client.create_bucket(bucket_name)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(folder)}").upload_from_filename(str(path))
    return f"gs://{bucket_name}/{prefix}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end and emulator tests are slow by nature: ``-m "not slow"`` leaves them out."""
    for item in items:
        if item.get_closest_marker("e2e") or item.get_closest_marker("vertex_emulator"):
            item.add_marker(pytest.mark.slow)
