"""What a local run prints per step: the steps' own messages, not the libraries' chatter."""

from __future__ import annotations

import io

from pipeline.progress import StepProgress


def test_step_messages_are_shown_and_chatter_is_not() -> None:
    console, log = io.StringIO(), io.StringIO()
    progress = StepProgress(log, console)

    progress.write(
        "Executing task 'train-model'\n"
        "    [KFP Executor 2026-11-21 10:00:00,000 INFO]: Looking for component `train_model`\n"
        "    [KFP Executor 2026-11-21 10:00:01,000 INFO]: Sharding callback duration: 12\n"
        "    [KFP Executor 2026-11-21 10:00:02,000 INFO]: head epoch 1/2: loss=1.0\n"
        "    [KFP Executor 2026-11-21 10:00:03,000 WARNING]: few images\n"
        "Task 'train-model' finished with status SUCCESS\n"
    )

    shown = console.getvalue().splitlines()
    assert shown[0] == "> train-model"
    assert shown[1:3] == [
        "  train-model: head epoch 1/2: loss=1.0",
        "  train-model: WARNING: few images",
    ]
    assert shown[3].startswith("  train-model done in ")
    assert "Sharding callback duration" in log.getvalue()  # kept in the full log
    assert progress.step_seconds.keys() == {"train-model"}


def test_credentials_in_uris_never_reach_the_log_or_the_console() -> None:
    """A signed URL or a password in a URI is redacted in every line, even one written in
    pieces, in the log and in --verbose's console alike."""
    for verbose in (False, True):
        console, log = io.StringIO(), io.StringIO()
        progress = StepProgress(log, console, verbose=verbose)
        with progress.capturing():
            print("Executing task 'fingerprint-data'")
            print('    {"data_uri": "https://reader:PASSWORD@host.example/d', end="")
            print('ata?X-Goog-Signature=SIGNATURE&X-Goog-Credential=KEY"}', end="")
        written = log.getvalue() + console.getvalue()
        assert '"data_uri": "https://host.example/data?<redacted>"}' in log.getvalue()
        for secret in ("PASSWORD", "SIGNATURE", "KEY", "reader"):
            assert secret not in written, (secret, verbose)
