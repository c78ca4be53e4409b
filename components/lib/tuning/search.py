"""The study run in one process, trial after trial: what a run tunes where no Vertex AI tuning
job can run its trials (kfp.local). Random search over ``STUDY``, seeded, ``trials`` in all."""

from __future__ import annotations

import logging
import random

from components.lib.tuning.settings import TrialSettings
from components.lib.tuning.study import STUDY, Study, Trial, described, trials_table
from components.lib.tuning.trial import TrialData, run_trial

logger = logging.getLogger(__name__)


def search(
    raw_data: str,
    work_dir: str,
    settings: TrialSettings,
    trials: int,
    study: Study = STUDY,
) -> list[Trial]:
    """Run ``trials`` trials with parameters drawn from ``study`` (seeded by the settings'
    seed, so the same run draws the same trials) on the images under ``raw_data``, preparing
    the data under ``work_dir``; returns the trials in order."""
    if trials < 1:
        raise ValueError(f"a search needs at least one trial, got {trials}")
    rng = random.Random(settings.seed)
    data = TrialData(raw_data, work_dir, settings)
    results: list[Trial] = []
    for index in range(1, trials + 1):
        parameters = study.sample(rng)
        logger.info("trial %d/%d: %s", index, trials, described(parameters))
        result = run_trial(data, settings, parameters, str(index))
        logger.info(
            "trial %d/%d: %s %.4f in %.0f s",
            index,
            trials,
            study.metric,
            result.metric,
            result.seconds,
        )
        results.append(result)
    logger.info(
        "prepared the data in %s",
        ", ".join(f"{what} {seconds:.0f} s" for what, seconds in data.seconds.items()),
    )
    for line in trials_table(results, study).splitlines():
        logger.info("%s", line)
    return results
