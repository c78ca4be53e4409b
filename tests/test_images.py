"""The images the pipeline runs in: the rule that names them from one URI, what each must hold
(its steps' imports come from its lock), no placeholder in a spec compiled for a registry, and
no silent CPU training on a machine whose GPU TensorFlow cannot use.

The built images themselves are run in tests/test_containers.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from components.images import PLACEHOLDERS, ImageError, ImageSet, Role, is_placeholder
from tests.test_docker import locked_versions

USER_IMAGE = "us-docker.pkg.dev/acme-ml/pipes/image-classifier:1.2"
DIGEST = "sha256:" + "ab" * 32
ROLE_LOCKS = {
    Role.CPU: "cpu-requirements.lock",
    Role.LIGHT: "light-requirements.lock",
    Role.SERVING: "serving-requirements.lock",
}
VENV_BUNDLED = {"pip", "setuptools"}
"""What ``python -m venv`` puts in every image's venv, apart from the lock."""
OPTIONAL = {
    "pysocks": "urllib3's SOCKS proxies, used only when installed",
    "zstandard": "urllib3's zstd decoding, used only when installed",
    "scipy": "TensorFlow's legacy Keras tries scipy.sparse and goes on without it",
    "sniffio": "anyio tells it the async library in use when it is installed",
}
"""Imported here when installed, and harmlessly missing from an image (a try/except import)."""


def test_the_images_are_named_beside_the_gpu_image() -> None:
    images = ImageSet.beside(USER_IMAGE)
    assert images == ImageSet(
        gpu=USER_IMAGE,
        cpu="us-docker.pkg.dev/acme-ml/pipes/image-classifier-cpu:1.2",
        light="us-docker.pkg.dev/acme-ml/pipes/image-classifier-light:1.2",
        serving="us-docker.pkg.dev/acme-ml/pipes/image-classifier-serving:1.2",
    )
    # A registry with a port, no tag; one image named apart.
    other = ImageSet.beside("localhost:5000/img", serving="eu.gcr.io/p/server:3")
    assert (other.light, other.serving) == ("localhost:5000/img-light", "eu.gcr.io/p/server:3")


def test_a_digest_pinned_image_needs_the_others_named() -> None:
    pinned = f"us-docker.pkg.dev/acme-ml/pipes/image-classifier@{DIGEST}"
    with pytest.raises(ImageError, match="cpu, light, serving"):
        ImageSet.beside(pinned)
    named = {role: f"eu.gcr.io/p/{role}@{DIGEST}" for role in ("cpu", "light", "serving")}
    assert ImageSet.beside(pinned, **named).light == named["light"]


def test_placeholders_live_in_a_domain_nobody_can_own() -> None:
    for role in Role:
        assert PLACEHOLDERS.for_role(role).startswith("registry.invalid/")
        assert is_placeholder(PLACEHOLDERS.for_role(role))
    assert not is_placeholder(USER_IMAGE)
    assert ImageSet.beside(USER_IMAGE).placeholders() == []


def test_compile_for_a_registry_leaves_no_placeholder_anywhere(tmp_path: Path) -> None:
    from pipeline.compile import main

    output = tmp_path / "p.yaml"
    main(["--image", USER_IMAGE, "--output", str(output)])
    text = output.read_text()
    assert "registry.invalid" not in text and "your-project" not in text
    spec = yaml.safe_load(text)
    serving = spec["root"]["inputDefinitions"]["parameters"]["serving_image"]["defaultValue"]
    assert serving == "us-docker.pkg.dev/acme-ml/pipes/image-classifier-serving:1.2"


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--image", PLACEHOLDERS.gpu],
        ["--image", USER_IMAGE, "--light-image", PLACEHOLDERS.light],
    ],
    ids=["no-image", "placeholder", "placeholder-light"],
)
def test_compile_refuses_placeholders_unless_asked(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.compile import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--output", str(tmp_path / "p.yaml"), *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "docker/build.sh" in error or "placeholder" in error
    assert not (tmp_path / "p.yaml").exists()


def test_the_checked_in_spec_is_the_deliberate_placeholder_compile() -> None:
    from pipeline.run_templates import spec_images

    spec = yaml.safe_load((Path(__file__).parent.parent / "pipeline.yaml").read_text())
    assert {image for image in spec_images(spec) if "registry.invalid" in image} == {
        PLACEHOLDERS.gpu,
        PLACEHOLDERS.cpu,
        PLACEHOLDERS.light,
        PLACEHOLDERS.serving,
    }


def test_a_default_run_pulls_the_light_image_for_most_steps() -> None:
    from bench.images import default_run_images

    spec = yaml.safe_load((Path(__file__).parent.parent / "pipeline.yaml").read_text())
    steps = default_run_images(spec)
    assert sorted(steps) == sorted(
        [PLACEHOLDERS.gpu] * 2
        + [PLACEHOLDERS.cpu] * 2
        + [PLACEHOLDERS.light] * 9
        + [PLACEHOLDERS.serving]  # infra validation
    )


def lock_gaps(imported: list[str], lock: str) -> list[str]:
    """The imported distributions that ``lock`` does not install."""
    locked = set(locked_versions(lock)) | VENV_BUNDLED | set(OPTIONAL)
    if "tensorflow-cpu" in locked:
        locked.add("tensorflow")  # the development environment's build of the same version
    return sorted(name for name in map(canonicalize_name, imported) if name not in locked)


@pytest.mark.slow
@pytest.mark.parametrize("role", list(ROLE_LOCKS), ids=lambda role: role.value)
def test_what_each_image_runs_comes_from_its_lock(role: Role) -> None:
    """Every distribution that the role's steps (or the server) import, here, is in the image's
    lock: a package missing from it fails the image at start, not the tests."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.image_check", role.value, "--distributions"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert imported
    assert lock_gaps(imported, ROLE_LOCKS[role]) == []
    if role is Role.SERVING:
        # The server's OpenAPI description needs PyYAML: a lock without it fails here.
        assert "PyYAML" in imported
        assert lock_gaps(imported, "serving-requirements.lock") == []


def test_a_lock_without_a_served_module_is_named(tmp_path: Path) -> None:
    """The comparison the test above makes, on the serving image that crashed at start: its
    lock had no PyYAML."""
    assert lock_gaps(["PyYAML", "starlette"], "serving-requirements.lock") == []
    assert lock_gaps(
        ["PyYAML", "starlette", "google-cloud-aiplatform"], "serving-requirements.lock"
    ) == ["google-cloud-aiplatform"]
    old = tmp_path / "lock"
    old.write_text("starlette==1.0\n")
    assert "pyyaml" in lock_gaps(["PyYAML", "starlette"], str(old.resolve()))


def test_a_step_on_a_machine_with_an_unusable_gpu_fails_instead_of_training_on_the_cpu(
    tmp_path: Path,
) -> None:
    from components.lib.modelling.accelerator import (
        GPUUnavailableError,
        gpu_devices,
        require_usable_gpu,
    )

    require_usable_gpu(str(tmp_path))  # no GPU here: the CPU is what was asked for
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidia0").touch()
    (tmp_path / "dev" / "nvidiactl").touch()
    assert gpu_devices(str(tmp_path)) == [str(tmp_path / "dev" / "nvidia0")]
    with pytest.raises(GPUUnavailableError, match="sees none, so it would train on the CPU"):
        require_usable_gpu(str(tmp_path))


def test_cuda_problems_name_the_libraries_that_do_not_load() -> None:
    """The development environment has TensorFlow without the CUDA wheels: the GPU image's
    build check names what is missing (in the GPU image it finds nothing)."""
    from components.lib.modelling.accelerator import CUDA_LIBRARIES, cuda_problems

    problems = "\n".join(cuda_problems())
    assert "libcudnn.so.9 does not load" in problems
    assert all(library in problems for library in CUDA_LIBRARIES if "cudnn" in library)


@pytest.mark.slow
def test_the_gpu_images_backbone_check_passes_here() -> None:
    """The GPU Dockerfile's build check (every backbone whose weights the image packages, built
    with them) as the build runs it, in this environment: a backbone it cannot build fails
    here, not first in a 15-minute image build."""
    dockerfile = (Path(__file__).resolve().parent.parent / "docker" / "Dockerfile").read_text()
    [code] = re.findall(r'python -c "(from components[^"]*)"', dockerfile.replace("\\\n", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backbones and ImageNet weights load: efficientnet-lite0" in result.stdout


def test_steps_in_images_never_run_as_root(tmp_path: Path) -> None:
    from pipeline.local_runner import DOCKER, RunnerError, kfp_runner

    if tmp_path.stat().st_uid != 0:
        pytest.skip("needs a folder of root's: the tests run as root in CI")
    with pytest.raises(RunnerError, match="belongs to root"):
        kfp_runner(DOCKER, str(tmp_path), str(tmp_path / "pipeline_root"))
    assert not (tmp_path / "pipeline_root").exists()
