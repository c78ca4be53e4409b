"""Every pipeline parameter is checked against its allowed values before any work: by the CLI
(one line, exit 2) and by the pipeline's first step (a console run); the console descriptions
state the same ranges."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from components.lib.parameters import (
    CHOICES,
    RANGES,
    parameter_problems,
    state_dir_problem,
)
from components.parameters import check_parameters
from pipeline.run import main


def defaults(spec: dict) -> dict:
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    return {name: parameter.get("defaultValue") for name, parameter in parameters.items()}


def test_every_number_parameter_has_a_range_its_description_states(spec: dict) -> None:
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    numbers = {name for name, p in parameters.items() if p["parameterType"].startswith("NUMBER")}
    assert numbers == set(RANGES)
    for name, allowed in RANGES.items():
        description = " ".join(parameters[name]["description"].split())
        assert f"Allowed: {allowed.text()}" in description, name
    assert parameter_problems(defaults(spec)) == [], "the defaults are allowed"


def test_the_first_step_checks_what_the_table_holds(spec: dict) -> None:
    assert set(check_parameters.component_spec.inputs) == {
        *RANGES,
        *CHOICES,
        "data_uri",
        "local_state_dir",
    }
    root = spec["root"]["dag"]["tasks"]
    first = [name for name, task in root.items() if not task.get("dependentTasks")]
    assert first == ["check-parameters"], "every other step waits for the check"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"batch_size": 0}, "batch_size=0: expected a whole number, 1 to 4096"),
        ({"learning_rate": float("nan")}, "learning_rate=nan: expected more than 0, at most 1"),
        ({"image_size": 8}, "image_size=8: expected a whole number, 0, or 32 to 1024"),
        ({"eval_fraction": 1.0}, "eval_fraction=1.0: expected more than 0 and less than 1"),
        ({"seed": 2.5}, "seed=2.5: expected a whole number, 0 to 2147483647"),
        ({"target": "gke"}, "target='gke': choose one of local, vertex"),
        (
            {"backbone": "efficientnet-lite0", "fine_tune_from_block": 20},
            "fine_tune_from_block=20: efficientnet-lite0 has 16 blocks; expected 0 to 16",
        ),
    ],
)
def test_values_outside_their_range_are_named(values: dict, problem: str) -> None:
    assert parameter_problems(values) == [problem]


def test_the_step_fails_with_every_problem_in_one_line(spec: dict, tmp_path: Path) -> None:
    values = {name: value for name, value in defaults(spec).items() if name in RANGES}
    values |= {"batch_size": 0, "learning_rate": float("nan")}
    other = {"data_uri": "gs://b/d", "backbone": "efficientnet-lite0", "target": "local"}
    with pytest.raises(ValueError) as raised:
        check_parameters.python_func(**values, **other, local_state_dir=str(tmp_path))
    assert str(raised.value) == (
        "learning_rate=nan: expected more than 0, at most 1; batch_size=0: expected a whole "
        "number, 1 to 4096"
    )


def test_an_unusable_state_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    assert state_dir_problem(str(tmp_path / "a-file")) == (
        f"state folder {tmp_path / 'a-file'} is a file, not a folder"
    )
    under_a_file = tmp_path / "a-file" / "state"
    assert state_dir_problem(str(under_a_file)) == (
        f"state folder {under_a_file} cannot be written: Not a directory"
    )
    free = shutil.disk_usage(tmp_path).free
    assert state_dir_problem(str(tmp_path), min_free_bytes=free + 2**40).startswith(
        f"state folder {tmp_path} has "
    )
    assert state_dir_problem(str(tmp_path / "new")) is None and (tmp_path / "new").is_dir()


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in (root writes everywhere but in /sys)."""
    if os.geteuid() == 0:
        return Path("/sys/beer-state")
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    return folder / "state"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--param", "batch_size=0"], "error: --param batch_size=0: expected a whole number"),
        (["--param", "learning_rate=nan"], "error: --param learning_rate=nan: expected more"),
        (["--param", "image_size=8"], "error: --param image_size=8: expected a whole number, 0,"),
        (["--param", "fine_tune_from_block=17"], "error: fine_tune_from_block=17: efficientnet"),
        (["--state-dir", "{tmp}/a-file"], "error: --state-dir: state folder {tmp}/a-file is a "),
        (["--state-dir", "{read_only}"], "error: --state-dir: state folder {read_only} cannot be "),
    ],
)
def test_the_cli_refuses_bad_values_in_one_line_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("")
    places = {"tmp": tmp_path, "read_only": read_only_folder(tmp_path)}
    argv = [arg.format(**places) for arg in argv]
    state = [] if "--state-dir" in argv else ["--state-dir", str(tmp_path / "state")]

    assert main(["--local", *state, *argv]) == 2

    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(message.format(**places)), line
    assert not (tmp_path / "state" / "logs").exists(), "nothing ran"


def test_the_security_page_lists_every_range() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs/security.md").read_text()
    for name, allowed in RANGES.items():
        assert f"| `{name}` | {allowed.text()} |" in page, name
