"""The benchmark scripts' own logic, on tiny inputs: counts, ratios, targets, memory attribution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import backbones, input_pipeline, pipeline_steps, serve_latency
from bench.common import (
    GIB,
    MIB,
    Target,
    finish,
    format_table,
    measure_memory,
    percentile,
    ratio,
)
from tests.conftest import make_layout

FAKE_STEP_BYTES = 80 * MIB
# Stands in for `python -m pipeline.run --json`: one step subprocess, then the JSON summary.
FAKE_PIPELINE_RUN = f"""
import json, subprocess, sys
subprocess.run(
    [sys.executable, "-c", "import time; block = b'x' * {FAKE_STEP_BYTES}; time.sleep(0.5)",
     "--function_to_execute", "fake_step"],
    check=True,
)
print("step summary table")
print(json.dumps({{"step_seconds": {{"fake-step": 0.5}}}}))
"""


def test_percentile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.99) == 5.0
    assert percentile(values, 0.2) == 1.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_ratio_and_targets() -> None:
    assert ratio(6.0, 2.0) == 3.0
    assert ratio(1.0, 0.0) == float("inf")
    assert Target("speed-up", 3.0, 3.0, at_least=True).met
    assert not Target("speed-up", 2.9, 3.0, at_least=True).met
    assert Target("share", 0.2, 0.25, at_least=False).met
    assert not Target("share", 0.3, 0.25, at_least=False).met
    assert "MISSED" in Target("share", 0.3, 0.25, at_least=False).line()


def test_finish_prints_json_last_and_fails_on_a_missed_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    met = Target("a", 1.0, 2.0, at_least=False)
    missed = Target("b", 3.0, 2.0, at_least=False)

    assert finish("demo", {"figure": 1}, [met]) == 0
    assert finish("demo", {"figure": 1}, [met, missed]) == 1

    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["benchmark"] == "demo" and last["figure"] == 1
    assert [target["met"] for target in last["targets"]] == [True, False]
    assert last["all_targets_met"] is False
    assert last["machine"]["cpus"] >= 1


def test_format_table_aligns_columns() -> None:
    lines = format_table(("name", "n"), [("a", 1), ("longer", 22)]).splitlines()
    assert lines == ["name    n", "a       1", "longer  22"]


def test_measure_memory_sees_an_allocation_after_the_baseline() -> None:
    with measure_memory() as memory:
        block = b"x" * (64 * MIB)
    assert len(block) == 64 * MIB
    assert memory.growth_bytes >= 60 * MIB
    assert memory.peak_bytes >= memory.baseline_bytes + memory.growth_bytes


def test_input_pipeline_sides_read_every_image(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "raw")  # 2 classes x 4 images, in train and eval
    data_dir = input_pipeline.repeated_layout(layout, tmp_path / "data", repeat=2)
    assert len(list(data_dir.rglob("*.jpg"))) == 32

    pixels, labels = input_pipeline.load_with_loop(str(data_dir), image_size=32)
    assert pixels.shape == (32, 32, 32, 3) and pixels.dtype == "uint8"
    assert sorted(set(labels.tolist())) == [0, 1]

    records = str(tmp_path / "records")
    sides = {
        side: input_pipeline.measure_side(side, str(data_dir), records, 32, batch_size=5)
        for side in input_pipeline.SIDES
    }
    assert {side: result.images for side, result in sides.items()} == {
        "preprocess": 32,
        "loop": 32,
        "stream": 32,
    }
    assert all(result.seconds > 0 and result.peak_rss_bytes > 0 for result in sides.values())


@pytest.mark.slow
def test_input_pipeline_side_in_its_own_process(tmp_path: Path) -> None:
    data_dir = make_layout(tmp_path / "data")

    result = input_pipeline.measure_in_subprocess(
        "loop", str(data_dir), str(tmp_path / "records"), 32, 4
    )

    assert result.side == "loop" and result.images == 16
    # Its baseline includes TensorFlow, imported before it: hundreds of MiB.
    assert result.baseline_rss_bytes > 200 * MIB


def test_input_pipeline_compare_sets_the_issue_targets() -> None:
    loop = input_pipeline.SideResult("loop", 100, 1.0, 500 * MIB, 800 * MIB)
    fast_stream = input_pipeline.SideResult("stream", 100, 0.25, 500 * MIB, 600 * MIB)
    slow_stream = input_pipeline.SideResult("stream", 100, 0.5, 500 * MIB, 900 * MIB)

    figures, targets = input_pipeline.compare(loop, fast_stream)
    assert figures["speedup"] == 4.0
    assert figures["rss_growth_ratio"] == pytest.approx(100 / 300)
    assert all(target.met for target in targets)

    _, targets = input_pipeline.compare(loop, slow_stream)
    assert [target.met for target in targets] == [False, False]


def test_best_of_rounds_keeps_fastest_time_and_highest_peak() -> None:
    rounds = [
        input_pipeline.SideResult("loop", 10, 2.0, 100, 400),
        input_pipeline.SideResult("loop", 10, 1.0, 110, 300),
        input_pipeline.SideResult("loop", 10, 3.0, 120, 500),
    ]
    best = input_pipeline.best_of(rounds)
    assert (best.seconds, best.peak_rss_bytes, best.baseline_rss_bytes) == (1.0, 500, 120)


def test_step_of_reads_the_kfp_executor_argument() -> None:
    command = ["python3", "-m", "kfp.dsl.executor_main", "--function_to_execute", "train_model"]
    assert pipeline_steps.step_of(command) == "train-model"
    assert pipeline_steps.step_of(["python", "-m", "pipeline.run"]) is None
    assert pipeline_steps.step_of(["x", "--function_to_execute"]) is None


def test_run_measured_attributes_memory_to_the_step_process() -> None:
    result = pipeline_steps.run_measured([sys.executable, "-c", FAKE_PIPELINE_RUN], "fake")

    assert result.step_seconds == {"fake-step": 0.5}
    assert FAKE_STEP_BYTES <= result.peak_rss_bytes["fake-step"] < FAKE_STEP_BYTES + 100 * MIB
    assert pipeline_steps.ORCHESTRATOR in result.peak_rss_bytes
    assert result.largest_process_bytes >= FAKE_STEP_BYTES
    assert result.wall_seconds >= 0.5


def test_run_measured_fails_with_the_command() -> None:
    with pytest.raises(RuntimeError, match="exit status 3"):
        pipeline_steps.run_measured([sys.executable, "-c", "raise SystemExit(3)"], "broken")


def _run(label: str, wall: float, steps: dict[str, float], peaks: dict[str, int]):
    return pipeline_steps.RunResult(label, wall, steps, peaks, max(peaks.values()))


def test_pipeline_targets_on_warm_share_and_step_memory() -> None:
    cold = _run(
        "cold",
        200.0,
        {"train-model": 170.0, "evaluate-model": 10.0, "infra-validate": 10.0},
        {"train-model": GIB},
    )
    warm = _run("warm", 12.0, {"evaluate-model": 11.0}, {"evaluate-model": GIB // 2})

    table, figures, targets = pipeline_steps.evaluate(cold, warm)

    assert figures["warm_share"] == pytest.approx(0.06)
    assert figures["infra_validation_share"] == pytest.approx(0.05)
    assert figures["largest_step"] == "train-model"
    assert all(target.met for target in targets)
    assert "cached" in table and "whole command (wall)" in table

    slow_warm = _run("warm", 60.0, {"evaluate-model": 50.0}, {"evaluate-model": 5 * GIB})
    _, figures, targets = pipeline_steps.evaluate(cold, slow_warm)
    assert figures["largest_step"] == "evaluate-model"
    assert [target.met for target in targets] == [False, False, True]

    slow_infra = _run("cold", 200.0, {"infra-validate": 40.0}, {"infra-validate": GIB})
    _, figures, targets = pipeline_steps.evaluate(slow_infra, warm)
    assert figures["infra_validation_share"] == pytest.approx(0.2)
    assert targets[-1].met is False and "infra-validate" in targets[-1].name


def _cell(latency_s: float, images_per_second: float, wrong: int = 0) -> serve_latency.Cell:
    cell = serve_latency.Cell([latency_s] * 10, 10 / images_per_second, wrong)
    return cell


def test_the_batcher_cost_times_a_lone_request_both_ways_around_the_stand_in_call() -> None:
    lone = serve_latency.batcher_cost(rounds=1, requests=5, call_seconds=0.01)
    assert set(lone) == set(serve_latency.LONE_REQUEST)
    assert all(10 <= p50_ms < 1000 for p50_ms in lone.values()), lone


def test_serving_report_sets_the_issue_targets() -> None:
    results = {
        (serve_latency.OLD, 1): _cell(0.012, 80),
        (serve_latency.OLD, 8): _cell(0.090, 90),
        (serve_latency.UNBATCHED, 1): _cell(0.012, 80),
        (serve_latency.UNBATCHED, 8): _cell(0.080, 100),
        (serve_latency.BATCHED, 1): _cell(0.011, 85),
        (serve_latency.BATCHED, 8): _cell(0.040, 210),
    }
    table, targets = serve_latency.report(results)
    assert [target.met for target in targets] == [True, True, True]
    assert targets[0].measured == pytest.approx(2.1)
    assert "2.33x" in table  # batching at 8 clients against the old server

    results[(serve_latency.BATCHED, 8)] = _cell(0.040, 150, wrong=1)
    results[(serve_latency.BATCHED, 1)] = _cell(0.013, 75)
    _, targets = serve_latency.report(results)
    assert [target.met for target in targets] == [False, False, False]


def _has_commit(ref: str) -> bool:
    found = subprocess.run(["git", "cat-file", "-e", f"{ref}^{{commit}}"], cwd=serve_latency.ROOT)
    return found.returncode == 0


@pytest.mark.slow
def test_old_and_new_servers_answer_alike(
    demo_model_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    if not _has_commit(serve_latency.OLD_SERVER_REF):
        pytest.skip(f"this clone lacks {serve_latency.OLD_SERVER_REF}, the old server's commit")
    images = serve_latency.read_images(demo_data_dir / "eval", limit=4)
    path = serve_latency.deploy_locally(str(demo_model_dir), str(tmp_path / "state"))
    with serve_latency.servers(
        str(tmp_path / "state"), str(tmp_path), serve_latency.OLD_SERVER_REF
    ) as urls:
        assert list(urls) == [serve_latency.OLD, serve_latency.UNBATCHED, serve_latency.BATCHED]
        results = serve_latency.compare_servers(urls, path, images, requests=8, rounds=1)

    assert {key: len(cell.latencies) for key, cell in results.items()} == dict.fromkeys(results, 8)
    assert sum(cell.wrong_answers for cell in results.values()) == 0
    old_log = (tmp_path / "old.log").read_text()  # http.server's plain request lines
    assert '"POST /v1/projects/' in old_log and '"httpRequest"' not in old_log


def _training_run(backbone: str, seed: int, correct: int) -> backbones.TrainingRun:
    return backbones.TrainingRun(
        backbone, seed, 224, 4_000_000, 8.0, 12.0, 60.0, 4, 6, correct, 97, "/m", 16 * MIB, GIB
    )


def test_backbones_report_the_default_lowest_accuracy_over_seeds() -> None:
    default, other = backbones.DEFAULT_BACKBONE, "efficientnet-lite9"
    latency = {default: (20.0, 30.0), other: (40.0, 55.0)}
    good = [_training_run(default, 42, 96), _training_run(default, 1, 95)]

    text, targets = backbones.report([*good, _training_run(other, 42, 97)], latency)
    assert f"{default} (default)" in text and "0.9897 / 0.9794" in text
    assert "95.5/97" in text and "40.0" in text
    assert [(target.measured, target.met) for target in targets] == [(95 / 97, True)]

    _, targets = backbones.report([*good, _training_run(default, 7, 94)], latency)
    assert not targets[0].met  # 94/97 = 0.969 < 0.97
    assert backbones.report([_training_run(other, 42, 97)], latency)[1] == []
