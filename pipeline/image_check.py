"""``python -m pipeline.image_check ROLE``: fail an image's build, not its first run.

Each pipeline image runs the steps of one role (``components.images``). A step's body is all
that runs in the container (KFP ships the function's source, not its module), so what the image
must hold is what the bodies import. This imports, for every step of ``ROLE``, each module its
body imports, and exits 1 naming the step and the module that fails. The GPU image also loads
the CUDA libraries TensorFlow needs (``components.lib.modelling.accelerator``), which load
without a GPU. The serving image runs no step: its check creates the server's app as the server
does at start (the OpenAPI description is built from the routes' docstrings then).

With ``--distributions`` it then prints, as JSON, the installed distributions whose modules were
imported: ``tests/test_images.py`` runs it in the development environment, with what an image
leaves out made unimportable, and holds the image's lock to that list.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import sys
import textwrap
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING

import components
from components.images import PLACEHOLDERS, Role

PROJECT_PACKAGES = ("components", "pipeline")

if TYPE_CHECKING:
    from kfp.dsl.base_component import BaseComponent


def steps() -> Iterator[tuple[str, BaseComponent, Role]]:
    """Every step of ``components``: its name, component and the role of its image."""
    from kfp.dsl.base_component import BaseComponent

    roles = {PLACEHOLDERS.for_role(role): role for role in Role}
    for module_info in pkgutil.iter_modules(components.__path__):
        if module_info.ispkg or module_info.name == "images":
            continue
        module = importlib.import_module(f"components.{module_info.name}")
        for name, value in vars(module).items():
            if isinstance(value, BaseComponent) and value.python_func.__module__ == module.__name__:
                image = value.component_spec.implementation.container.image
                yield name, value, roles[image]


def body_imports(component: BaseComponent) -> list[str]:
    """The modules a step's body imports (``import x`` and ``from x import y``)."""
    return _imports(textwrap.dedent(inspect.getsource(component.python_func)))


def _imports(source: str) -> list[str]:
    modules: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    return sorted(set(modules))


def reachable_imports(modules: list[str]) -> list[str]:
    """``modules`` and every module the project's modules among them import, anywhere in their
    source (in a function too: the Vertex target and Pillow are imported where used), followed
    through the project's modules."""
    seen: set[str] = set()
    queue = list(modules)
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.partition(".")[0] not in PROJECT_PACKAGES:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin) as file:
            queue.extend(_imports(file.read()))
    return sorted(seen)


def check_gcs() -> list[str]:
    """Every image reads ``gs://`` through fsspec, whose implementation (gcsfs) is found by
    name, not imported: load it."""
    try:
        import fsspec

        fsspec.get_filesystem_class("gs")
    except Exception as error:
        return [f"gs:// through fsspec: {type(error).__name__}: {error}"]
    return []


def check_role(role: Role) -> list[str]:
    """What fails to import among the modules ``role``'s steps reach, one line each; any
    failure is the image's problem."""
    problems = check_gcs()
    for name, component, step_role in steps():
        if step_role is not role:
            continue
        for module in reachable_imports(body_imports(component)):
            try:
                importlib.import_module(module)
            except Exception as error:
                problems.append(f"step {name}: import {module}: {type(error).__name__}: {error}")
    return problems


def check_server() -> list[str]:
    """What fails when the server's app is created as ``python -m pipeline.serve`` creates it
    in a serving container (the model itself loads later, in the background)."""
    try:
        importlib.import_module("pipeline.serve")
        from components.lib.serving.app import create_app
        from components.lib.serving.routing import ContainerModel

        create_app(ContainerModel(storage_uri=""))
    except Exception as error:
        return [f"the server's app: {type(error).__name__}: {error}"]
    return check_gcs()


def imported_distributions() -> list[str]:
    """The installed distributions (but this project's) that the imported modules come from,
    by file: namespace packages such as ``google`` span many distributions."""
    owners = {
        os.path.realpath(distribution.locate_file(file)): distribution.metadata["Name"]
        for distribution in metadata.distributions()
        for file in distribution.files or ()
        if file.suffix in (".py", ".so")
    }
    names = {
        owners.get(os.path.realpath(module.__file__))
        for module in list(sys.modules.values())
        if getattr(module, "__file__", None)
    }
    return sorted(names - {None, metadata.metadata("image-classifier-pipeline")["Name"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.image_check",
        description="Check that this environment holds what one image role runs: every module "
        "its steps' bodies import (and, for gpu, the CUDA libraries); for serving, the "
        "server's app.",
    )
    parser.add_argument("role", choices=[role.value for role in Role])
    parser.add_argument(
        "--distributions",
        action="store_true",
        help="then print the imported distributions as JSON (for the locks' test)",
    )
    args = parser.parse_args(argv)
    role = Role(args.role)
    problems = check_server() if role is Role.SERVING else check_role(role)
    if role is Role.GPU:
        from components.lib.modelling.accelerator import cuda_problems

        problems.extend(cuda_problems())
    for problem in problems:
        print(f"image_check {role.value}: {problem}", file=sys.stderr)
    if not problems:
        print(f"image_check {role.value}: this image holds what its role runs", file=sys.stderr)
    if args.distributions:
        print(json.dumps(imported_distributions()))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
