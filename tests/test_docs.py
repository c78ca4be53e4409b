"""The documentation stays true to the code: generated references, runnable snippets, links.

A shell block in README.md or docs/ that runs offline is marked by an HTML comment on the line
before its fence, ``<!-- run: GROUP -->`` (``<!-- run: GROUP slow -->`` for one that takes more
than a few seconds). The blocks of one group run in order, in one scratch folder that looks like
a clone's root (links to ``.venv``, ``docker``, the packages...; files a block writes stay in
the scratch folder), with ``bash -eo pipefail``; each must exit 0.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- run: (?P<group>[\w-]+)(?P<slow> slow)? -->\n```(?:bash|sh)\n", re.M)
# Entries of the clone that a snippet may read; pipeline.yaml is left out, so that a snippet that
# compiles writes its own copy in the scratch folder.
LINKED = ("bench", "components", "docker", "pipeline", "tests", "pyproject.toml", ".venv")
SNIPPET_TIMEOUT_S = {False: 60, True: 1800}


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_references_equal_the_code() -> None:
    """A parameter description or a command-line flag changed without regenerating fails here:
    run `python docs/gen_reference.py`."""
    assert load_generator().stale_pages() == []


def test_parameter_reference_lists_every_compiled_parameter() -> None:
    import yaml

    spec = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    compiled = spec["root"]["inputDefinitions"]["parameters"]
    page = (DOCS / "reference/parameters.md").read_text()
    listed = dict(re.findall(r"^\| `(\w+)` \| \w+ \| ([^|]+) \|", page, re.M))
    assert set(listed) == set(compiled)
    assert listed["min_accuracy"].strip() == f"`{compiled['min_accuracy']['defaultValue']}`"
    assert listed["epochs"].strip() == f"`{int(compiled['epochs']['defaultValue'])}`"


def test_cli_reference_is_each_commands_help() -> None:
    page = (DOCS / "reference/cli.md").read_text()
    assert "usage: python -m pipeline.serve" in page
    assert "--max-batch-size" in page
    assert "usage: python -m pipeline.run schedule" in page


def test_readme_is_a_front_door() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_docs_speak_of_no_issue_numbers() -> None:
    speaking = [
        f"{page.relative_to(ROOT)}: {match.group(0)}"
        for page in [*pages(), ROOT / "BENCHMARKS.md", ROOT / "ARCHITECTURE.md"]
        for match in re.finditer(r"\bissues? \d+", page.read_text(), re.I)
    ]
    assert speaking == []


def test_readme_links_reach_files() -> None:
    """The site build checks the manual's links; the README's are checked here."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [target for target in targets if "://" not in target]
    assert local, "the README links into the manual"
    assert [target for target in local if not (ROOT / target).exists()] == []


def snippet_groups() -> list:
    groups: dict[tuple[str, str], list[str]] = {}
    slow: set[tuple[str, str]] = set()
    for page in pages():
        text = page.read_text()
        for match in MARKER.finditer(text):
            key = (str(page.relative_to(ROOT)), match.group("group"))
            body = text[match.end() : text.index("\n```", match.end())]
            groups.setdefault(key, []).append(body)
            if match.group("slow"):
                slow.add(key)
    return [
        pytest.param(
            "\n".join(blocks),
            key in slow,
            id=f"{key[0]}:{key[1]}",
            marks=[pytest.mark.slow] if key in slow else [],
        )
        for key, blocks in groups.items()
    ]


def test_snippets_are_marked() -> None:
    ids = [group.id for group in snippet_groups()]
    assert "README.md:newcomer" in ids
    assert any(not group.marks for group in snippet_groups()), "some run in the fast tier"


@pytest.mark.parametrize(("script", "slow"), snippet_groups())
def test_snippet_runs(script: str, slow: bool, tmp_path: Path) -> None:
    for name in LINKED:
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    if not (tmp_path / ".venv").exists():  # tests run from another environment
        (tmp_path / ".venv").symlink_to(sys.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_CLASSIFIER_")}
    log = tmp_path / "snippet.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-eo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=SNIPPET_TIMEOUT_S[slow])
        finally:
            # what the snippet left running (a server started with &)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    assert code == 0, f"snippet exited {code}:\n{script}\n---\n{log.read_text()[-3000:]}"
