"""Run a step's independent tasks in this process, or spread over machines with Apache Beam.

Preprocessing and the features step cut their work into tasks of one output shard each (a few
hundred images): a task reads its inputs, writes its one file and returns a small JSON summary,
so no task holds more than one shard whatever the size of the dataset, and tasks need nothing
from each other. That makes the same task function run two ways:

- ``beam_args`` empty: one task after another in this process, each using every core (tf.data's
  parallel maps); memory is that of one task.
- ``beam_args`` set (Beam's own command-line flags, as TFX's ``beam_pipeline_args``): a Beam
  pipeline over the tasks, on the runner they name: ``--runner=DirectRunner`` on this machine
  (``--direct_num_workers=N --direct_running_mode=multi_processing`` for N processes), or
  ``--runner=DataflowRunner --project=... --region=... --temp_location=gs://...
  --sdk_container_image=<the pipeline image>`` for as many Dataflow workers as the data needs.

The task list is written to a file that Beam reads, rather than embedded in the job: a million
images' paths would be larger than the job graph Dataflow accepts. Summaries come back the same
way, as JSON lines under the step's output folder.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from components.lib.storage import filesystem

logger = logging.getLogger(__name__)

Summary = dict[str, Any]
WORK_FOLDER = "_tasks"


def run_tasks(
    function: Callable[[dict[str, Any]], Summary],
    tasks: Sequence[dict[str, Any]],
    work_uri: str,
    beam_args: str = "",
    local_threads: int = 1,
) -> list[Summary]:
    """``function(task)`` for every task (JSON-serialisable dicts), here or on Beam; the
    summaries come back in no particular order. Here, ``local_threads`` tasks run at once (2 lets
    one task's reads overlap another's decoding). ``work_uri`` (a folder every Beam worker can
    reach, e.g. under the step's gs:// output) holds the task and summary files, removed after."""
    if not beam_args.strip():
        with ThreadPoolExecutor(local_threads) as pool:
            return list(pool.map(function, tasks))
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    fs, work = filesystem(f"{work_uri.rstrip('/')}/{WORK_FOLDER}")
    fs.makedirs(work, exist_ok=True)
    tasks_uri = f"{work_uri.rstrip('/')}/{WORK_FOLDER}/tasks.jsonl"
    summaries_prefix = f"{work_uri.rstrip('/')}/{WORK_FOLDER}/summaries"
    with fs.open(f"{work}/tasks.jsonl", "w") as file:
        file.writelines(json.dumps(task) + "\n" for task in tasks)
    options = PipelineOptions(shlex.split(beam_args))
    logger.info("running %d tasks on Apache Beam (%s)", len(tasks), beam_args)
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "ReadTasks" >> beam.io.ReadFromText(tasks_uri)
            # Spread the tasks over workers: one file's lines would otherwise stay on one.
            | "Spread" >> beam.Reshuffle()
            | "Run" >> beam.Map(lambda line: json.dumps(function(json.loads(line))))
            | "WriteSummaries" >> beam.io.WriteToText(summaries_prefix, ".jsonl")
        )
    summaries = []
    for path in sorted(fs.glob(f"{work}/summaries*.jsonl")):
        with fs.open(path) as file:
            summaries += [json.loads(line) for line in file if line.strip()]
    fs.rm(work, recursive=True)
    if len(summaries) != len(tasks):
        raise RuntimeError(f"Beam ran {len(summaries)} of {len(tasks)} tasks; see its log")
    return summaries
